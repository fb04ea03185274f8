//! `OTEL_*`: whether and where traces are exported, read from OpenTelemetry's standard
//! variables (the part of them that applies to one OTLP/HTTP trace exporter).
//!
//! Export is on when an OTLP endpoint is set (or `OTEL_TRACES_EXPORTER=otlp`), and off
//! with `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`, whatever else is set. A
//! per-signal variable (`OTEL_EXPORTER_OTLP_TRACES_*`) wins over its general one, as the
//! specification says. Header values are secrets (collector API keys): they are held in
//! `SecretString` and never echoed.
//!
//! Traces are optional, and platforms inject `OTEL_*` into every pod: a problem with them
//! never stops the bot. `serve` logs it and runs without traces; `check` names it.

use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use super::{ConfigError, Env, Reader};
use crate::domain::is_secure_or_loopback;

/// Where OTLP/HTTP sends traces when only `OTEL_TRACES_EXPORTER=otlp` is set.
const DEFAULT_ENDPOINT: &str = "http://localhost:4318/v1/traces";
const DEFAULT_SERVICE_NAME: &str = "databricks-slack-bot";

/// How traces are exported.
#[derive(Debug, Clone)]
pub struct TraceExport {
    /// The full URL spans are POSTed to (…`/v1/traces`).
    pub endpoint: Url,
    pub protocol: OtlpProtocol,
    /// Headers sent with every export (say, a vendor's API key).
    pub headers: Vec<(String, SecretString)>,
    /// Longest one export may take.
    pub timeout: Duration,
    /// `service.name`.
    pub service_name: String,
    /// More resource attributes (`OTEL_RESOURCE_ATTRIBUTES`), `service.name` excepted.
    pub resource: Vec<(String, String)>,
    pub sampler: TraceSampler,
    /// Spans waiting for export at most; more are dropped and counted.
    pub queue_size: usize,
    /// Spans sent in one export at most.
    pub batch_size: usize,
    /// Longest a finished span waits for its batch.
    pub schedule_delay: Duration,
}

/// The OTLP/HTTP encoding. gRPC is not built in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Protobuf,
    Json,
}

impl OtlpProtocol {
    /// The name `OTEL_EXPORTER_OTLP_PROTOCOL` gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::Protobuf => "http/protobuf",
            OtlpProtocol::Json => "http/json",
        }
    }
}

/// Which traces are recorded: `OTEL_TRACES_SAMPLER` and its argument.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceSampler {
    /// Follow the caller's decision when a trace was started elsewhere (`parentbased_*`).
    pub parent_based: bool,
    /// The share of new traces recorded: 1 for `always_on`, 0 for `always_off`.
    pub ratio: f64,
    /// The variable's value, for `check`.
    pub name: &'static str,
}

/// `OTEL_TRACES_SAMPLER`'s values, each as the name it is read as.
const SAMPLERS: &[(&str, &str)] = &[
    ("always_on", "always_on"),
    ("always_off", "always_off"),
    ("traceidratio", "traceidratio"),
    ("parentbased_always_on", "parentbased_always_on"),
    ("parentbased_always_off", "parentbased_always_off"),
    ("parentbased_traceidratio", "parentbased_traceidratio"),
];

const fn sampler(parent_based: bool, ratio: f64, name: &'static str) -> TraceSampler {
    TraceSampler {
        parent_based,
        ratio,
        name,
    }
}

/// Whether traces are exported.
#[derive(Debug, Clone)]
pub enum Traces {
    /// Not exported, and why (for `check`).
    Off(&'static str),
    On(Box<TraceExport>),
}

/// The trace export `env` asks for, or every problem with its `OTEL_*` variables.
pub fn traces(env: &Env) -> Result<Traces, ConfigError> {
    let mut r = Reader::new(env);
    let traces = read_traces(&mut r);
    r.finish(|| traces.expect("validated"))
}

/// Reads and validates the `OTEL_*` variables (none but the switches when export is
/// switched off).
fn read_traces(r: &mut Reader<'_>) -> Option<Traces> {
    let disabled = r.choice("OTEL_SDK_DISABLED", &[("true", true), ("false", false)]);
    let exporter = r.choice("OTEL_TRACES_EXPORTER", &[("otlp", true), ("none", false)]);
    if disabled == Some(true) {
        return Some(Traces::Off("OTEL_SDK_DISABLED=true"));
    }
    if exporter == Some(false) {
        return Some(Traces::Off("OTEL_TRACES_EXPORTER=none"));
    }
    let endpoint = read_endpoint(r);
    let protocol = read_protocol(r);
    let headers = read_headers(r, endpoint.as_ref());
    let timeout_var = per_signal(r, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT");
    let timeout = r.number(timeout_var, 10_000, 1..=600_000);
    let service_name = r
        .optional("OTEL_SERVICE_NAME")
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
    let resource = read_resource(r);
    let sampler = read_sampler(r);
    let schedule_delay = r.number("OTEL_BSP_SCHEDULE_DELAY", 5_000, 1..=600_000);
    let queue_size = r.number("OTEL_BSP_MAX_QUEUE_SIZE", 2_048, 1..=1_000_000);
    let batch_size = r.number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, 1..=1_000_000);
    if batch_size > queue_size {
        r.problem(
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
            "must not be larger than OTEL_BSP_MAX_QUEUE_SIZE",
        );
    }
    if exporter.is_none() && endpoint.is_none() {
        return Some(Traces::Off("OTEL_EXPORTER_OTLP_ENDPOINT is not set"));
    }
    Some(Traces::On(Box::new(TraceExport {
        endpoint: match endpoint {
            Some(endpoint) => endpoint,
            None => Url::parse(DEFAULT_ENDPOINT).expect("a valid URL"),
        },
        protocol: protocol?,
        headers: headers?,
        timeout: Duration::from_millis(timeout.into()),
        service_name,
        resource: resource?,
        sampler: sampler?,
        queue_size: queue_size as usize,
        batch_size: batch_size as usize,
        schedule_delay: Duration::from_millis(schedule_delay.into()),
    })))
}

/// The per-signal variable when it is set, else the general one.
fn per_signal(r: &Reader<'_>, signal: &'static str, general: &'static str) -> &'static str {
    if r.optional(signal).is_some() { signal } else { general }
}

/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as it is, or `OTEL_EXPORTER_OTLP_ENDPOINT` with
/// `v1/traces` appended to its path.
fn read_endpoint(r: &mut Reader<'_>) -> Option<Url> {
    let var = per_signal(r, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT");
    let raw = r.optional(var)?;
    let url = match Url::parse(&raw) {
        Ok(url) if !url.username().is_empty() || url.password().is_some() => {
            r.problem(
                var,
                "must not contain credentials (send them with OTEL_EXPORTER_OTLP_HEADERS)",
            );
            return None;
        }
        Ok(url) if url.query().is_some() || url.fragment().is_some() => {
            // It is logged and shown by `check`: a key belongs in the headers.
            r.problem(
                var,
                "must not have a query or fragment (send keys with OTEL_EXPORTER_OTLP_HEADERS)",
            );
            return None;
        }
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => url,
        _ => {
            r.problem(
                var,
                "must be an http:// or https:// URL such as http://otel-collector:4318",
            );
            return None;
        }
    };
    if var == "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" {
        return Some(url);
    }
    let mut base = url;
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", base.path()));
    }
    base.join("v1/traces").ok()
}

fn read_protocol(r: &mut Reader<'_>) -> Option<OtlpProtocol> {
    let var = per_signal(r, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL");
    match r.optional(var).as_deref() {
        None | Some("http/protobuf") => Some(OtlpProtocol::Protobuf),
        Some("http/json") => Some(OtlpProtocol::Json),
        Some("grpc") => {
            r.problem(
                var,
                "grpc is not built in: use http/protobuf (a collector's port 4318) or http/json",
            );
            None
        }
        Some(_) => {
            r.problem(var, "must be http/protobuf or http/json");
            None
        }
    }
}

/// `name=value` pairs, comma separated, each value percent-encoded; sent only over https
/// (or to loopback), since they usually carry a collector's API key.
fn read_headers(r: &mut Reader<'_>, endpoint: Option<&Url>) -> Option<Vec<(String, SecretString)>> {
    let var = per_signal(r, "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS");
    let headers = read_pairs(r, var, "name=value", |name, value| {
        reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok()
            && reqwest::header::HeaderValue::from_str(value).is_ok()
    })?;
    if endpoint.is_some_and(|url| !is_secure_or_loopback(url)) && !headers.is_empty() {
        r.problem(
            var,
            "would be sent in the clear: the OTLP endpoint must be https:// (or on loopback) when headers are set",
        );
        return None;
    }
    let headers = headers
        .into_iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), SecretString::from(value)))
        .collect();
    Some(headers)
}

/// `OTEL_RESOURCE_ATTRIBUTES`: `key=value` pairs, comma separated, values percent-encoded.
/// `service.name` among them gives way to `OTEL_SERVICE_NAME`, which always sets it.
fn read_resource(r: &mut Reader<'_>) -> Option<Vec<(String, String)>> {
    let mut attributes = read_pairs(r, "OTEL_RESOURCE_ATTRIBUTES", "key=value", |key, _| !key.is_empty())?;
    attributes.retain(|(key, _)| key != "service.name");
    Some(attributes)
}

/// `var` as the specification's list of `key=value` pairs, comma separated, each value
/// percent-encoded and each pair one that `accepts`; empty when unset. An entry that is
/// not one is a problem named by its position (never its value, which may be secret).
fn read_pairs(
    r: &mut Reader<'_>,
    var: &'static str,
    shape: &str,
    accepts: impl Fn(&str, &str) -> bool,
) -> Option<Vec<(String, String)>> {
    let Some(raw) = r.optional(var) else {
        return Some(Vec::new());
    };
    let mut pairs = Vec::new();
    let mut valid = true;
    for (n, entry) in raw.split(',').enumerate() {
        let pair = entry.split_once('=').and_then(|(key, value)| {
            let key = key.trim();
            let value = percent_encoding::percent_decode_str(value.trim()).decode_utf8().ok()?;
            accepts(key, &value).then(|| (key.to_owned(), value.into_owned()))
        });
        match pair {
            Some(pair) => pairs.push(pair),
            None => {
                valid = false;
                r.problem(
                    var,
                    format!("entry {} must be {shape}, the value percent-encoded", n + 1),
                );
            }
        }
    }
    valid.then_some(pairs)
}

/// `OTEL_TRACES_SAMPLER` (default `parentbased_always_on`) with `OTEL_TRACES_SAMPLER_ARG`,
/// the ratio of the `*traceidratio` samplers (default 1).
fn read_sampler(r: &mut Reader<'_>) -> Option<TraceSampler> {
    let name = match r.optional("OTEL_TRACES_SAMPLER") {
        None => "parentbased_always_on",
        Some(_) => r.choice("OTEL_TRACES_SAMPLER", SAMPLERS)?,
    };
    let ratio = if name.ends_with("always_off") { 0.0 } else { 1.0 };
    let mut sampler = sampler(name.starts_with("parentbased_"), ratio, name);
    let ratio = r.optional("OTEL_TRACES_SAMPLER_ARG");
    if sampler.name.ends_with("traceidratio")
        && let Some(raw) = ratio
    {
        match raw.parse::<f64>() {
            Ok(ratio) if (0.0..=1.0).contains(&ratio) => sampler.ratio = ratio,
            _ => {
                r.problem("OTEL_TRACES_SAMPLER_ARG", "must be a number from 0 to 1, e.g. 0.25");
                return None;
            }
        }
    }
    Some(sampler)
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn read(pairs: &[(&str, &str)]) -> Result<Traces, ConfigError> {
        traces(&Env::from_pairs(pairs.iter().copied()))
    }

    fn export(pairs: &[(&str, &str)]) -> TraceExport {
        match read(pairs).unwrap() {
            Traces::On(export) => *export,
            Traces::Off(why) => panic!("export is off: {why}"),
        }
    }

    fn off(pairs: &[(&str, &str)]) -> &'static str {
        match read(pairs).unwrap() {
            Traces::On(export) => panic!("export is on: {export:?}"),
            Traces::Off(why) => why,
        }
    }

    /// The variables named by the problems, and the whole message.
    fn refused(pairs: &[(&str, &str)]) -> (Vec<&'static str>, String) {
        let error = read(pairs).unwrap_err();
        (error.0.iter().map(|p| p.var).collect(), error.to_string())
    }

    #[test]
    fn export_is_off_unless_an_endpoint_or_the_otlp_exporter_is_named() {
        assert_eq!(off(&[]), "OTEL_EXPORTER_OTLP_ENDPOINT is not set");
        assert_eq!(
            off(&[("OTEL_SERVICE_NAME", "bot")]),
            "OTEL_EXPORTER_OTLP_ENDPOINT is not set"
        );
        let default = export(&[("OTEL_TRACES_EXPORTER", "otlp")]);
        assert_eq!(default.endpoint.as_str(), "http://localhost:4318/v1/traces");
        assert_eq!(default.protocol, OtlpProtocol::Protobuf);
        assert_eq!(default.service_name, "databricks-slack-bot");
        assert_eq!(default.timeout, Duration::from_secs(10));
        assert_eq!((default.queue_size, default.batch_size), (2_048, 512));
        assert_eq!(default.schedule_delay, Duration::from_secs(5));
        assert_eq!(default.sampler, sampler(true, 1.0, "parentbased_always_on"));
        // Switched off, nothing else is read: a bad value elsewhere does not matter.
        for (switch, value) in [("OTEL_SDK_DISABLED", "true"), ("OTEL_TRACES_EXPORTER", "none")] {
            let why = off(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                (switch, value),
            ]);
            assert_eq!(why, format!("{switch}={value}"));
        }
    }

    #[test]
    fn the_base_endpoint_gets_the_traces_path_and_the_per_signal_one_is_used_as_it_is() {
        for (base, expected) in [
            ("http://collector:4318", "http://collector:4318/v1/traces"),
            ("https://otlp.example.com/", "https://otlp.example.com/v1/traces"),
            (
                "https://otlp.example.com/tenant-7",
                "https://otlp.example.com/tenant-7/v1/traces",
            ),
        ] {
            let e = export(&[("OTEL_EXPORTER_OTLP_ENDPOINT", base)]);
            assert_eq!(e.endpoint.as_str(), expected, "{base}");
        }
        let e = export(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://ingest.example.com/otlp/spans",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "30000"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "2500"),
        ]);
        assert_eq!(e.endpoint.as_str(), "https://ingest.example.com/otlp/spans");
        assert_eq!(e.protocol, OtlpProtocol::Json);
        assert_eq!(e.timeout, Duration::from_millis(2_500));
    }

    #[test]
    fn headers_are_decoded_secrets_and_never_echoed_when_malformed() {
        let e = export(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otlp.example.com"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "Api-Key=CANARY%20key, x-tenant = blue"),
        ]);
        let headers: Vec<(&str, &str)> = e.headers.iter().map(|(k, v)| (k.as_str(), v.expose_secret())).collect();
        assert_eq!(headers, [("api-key", "CANARY key"), ("x-tenant", "blue")]);
        assert!(
            !format!("{e:?}").contains("CANARY"),
            "headers are redacted in debug output"
        );

        let (vars, message) = refused(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otlp.example.com"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                "api-key=ok,CANARY-no-equals-sign,bad name=x",
            ),
        ]);
        assert_eq!(vars, ["OTEL_EXPORTER_OTLP_TRACES_HEADERS"; 2]);
        assert!(message.contains("entry 2") && message.contains("entry 3"), "{message}");
        assert!(!message.contains("CANARY"), "{message}");
    }

    #[test]
    fn headers_are_refused_over_plain_http_except_on_loopback() {
        let (vars, message) = refused(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector.internal:4318"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=CANARY"),
        ]);
        assert_eq!(vars, ["OTEL_EXPORTER_OTLP_HEADERS"]);
        assert!(
            message.contains("in the clear") && !message.contains("CANARY"),
            "{message}"
        );
        export(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=x"),
        ]);
        export(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector.internal:4318")]);
    }

    #[test]
    fn every_misconfigured_variable_is_named_at_once() {
        let (vars, message) = refused(&[
            ("OTEL_SDK_DISABLED", "yes"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,nonsense"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_BSP_SCHEDULE_DELAY", "-1"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512"),
        ]);
        assert_eq!(
            vars,
            [
                "OTEL_SDK_DISABLED",
                "OTEL_TRACES_EXPORTER",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                "OTEL_EXPORTER_OTLP_TIMEOUT",
                "OTEL_RESOURCE_ATTRIBUTES",
                "OTEL_TRACES_SAMPLER",
                "OTEL_BSP_SCHEDULE_DELAY",
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
            ]
        );
        assert!(message.contains("grpc is not built in"), "{message}");
        for leaky in [
            "https://user:CANARY@otlp.example.com",
            "https://otlp.example.com/v1/traces?key=CANARY",
        ] {
            let (vars, message) = refused(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", leaky)]);
            assert_eq!(vars, ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]);
            assert!(!message.contains("CANARY"), "{message}");
        }
    }

    #[test]
    fn samplers_resource_and_batching_are_read() {
        let e = export(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318"),
            ("OTEL_SERVICE_NAME", "slack-bot-eu"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=ignored,deployment.environment=prod,team=data%20eng",
            ),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "16"),
        ]);
        assert_eq!(e.service_name, "slack-bot-eu");
        assert_eq!(
            e.resource,
            [
                ("deployment.environment".to_owned(), "prod".to_owned()),
                ("team".to_owned(), "data eng".to_owned())
            ]
        );
        assert_eq!(e.sampler, sampler(true, 0.25, "parentbased_traceidratio"));
        assert_eq!((e.queue_size, e.batch_size), (64, 16));
        assert_eq!(e.schedule_delay, Duration::from_millis(200));
        let off = export(&[("OTEL_TRACES_EXPORTER", "otlp"), ("OTEL_TRACES_SAMPLER", "always_off")]);
        assert_eq!(off.sampler.ratio, 0.0);
        let (vars, _) = refused(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ]);
        assert_eq!(vars, ["OTEL_TRACES_SAMPLER_ARG"]);
    }
}
