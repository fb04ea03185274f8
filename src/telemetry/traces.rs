//! Traces: the `tracing` spans of this crate exported over OTLP/HTTP when `OTEL_*` asks
//! for it ([`TraceExport`]), and the W3C trace context that ties one question's spans
//! together across the job queue and into the company's agent.
//!
//! Export never holds up an answer. A finished span goes into a bounded queue
//! (`OTEL_BSP_MAX_QUEUE_SIZE`) that one thread of its own, `trace-export`, sends to the
//! collector in batches. When the queue is full the span is dropped and counted
//! (`trace_spans_dropped_total{reason="queue_full"}`); a batch the collector refuses or
//! does not take within `OTEL_EXPORTER_OTLP_TIMEOUT` is dropped too
//! (`reason="export_failed"`), with one warning until an export succeeds again. The
//! SDK's own batch processor drops the same way but only logs how many, so this one is
//! ours.
//!
//! What spans carry is decided where they are made: ids, routes, API names, outcomes.
//! Never a token, an OAuth code, a question or an answer; and log events, whose fields
//! are a log line's, are never exported.

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter as _, SpanProcessor};
use secrecy::{ExposeSecret, SecretString};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{Layer, filter};

use crate::config::{OtlpProtocol, TraceExport, TraceSampler};
use crate::metrics::{SpanDrop, count_dropped_spans};
use crate::outbound;

/// This crate's spans, as `tracing` names their targets.
const CRATE: &str = env!("CARGO_CRATE_NAME");
/// The W3C header naming a span's trace and the span itself.
pub const TRACEPARENT: &str = "traceparent";
/// Longest the SDK's own flush and shutdown calls wait for the queue.
const SDK_FLUSH: Duration = Duration::from_secs(2);
/// Most of a collector's answer read: it is a small status message.
const MAX_ANSWER: usize = 64 * 1024;

/// What the export thread is handed.
enum Message {
    Span(Box<SpanData>),
    /// Export what came before, then say so.
    Flush(mpsc::Sender<()>),
}

/// The export queue, set once its thread runs: while it is, spans are worth describing
/// and traces worth continuing ([`describe_span`], [`traceparent`]), and [`flush`] has
/// something to wait for.
static QUEUE: OnceLock<SyncSender<Message>> = OnceLock::new();

/// The layer that makes this crate's spans OpenTelemetry spans and exports them as
/// `export` says, with the thread that sends them.
pub(super) fn layer<S>(export: &TraceExport) -> impl Layer<S>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let (queue, spans) = mpsc::sync_channel(export.queue_size);
    let resource = resource(export);
    let thread = ExportThread::new(export, resource.clone());
    let started = std::thread::Builder::new()
        .name("trace-export".into())
        .spawn(move || thread.run(&spans));
    match started {
        // Only now is there a trace to continue (see `traceparent`).
        Ok(_) => drop(QUEUE.set(queue.clone())),
        Err(error) => tracing::warn!(error = %error, "could not start the trace export thread; no traces are exported"),
    }
    let provider = SdkTracerProvider::builder()
        .with_span_processor(SpanQueue { spans: queue })
        .with_sampler(sampler(export.sampler))
        .with_resource(resource)
        .build();
    // Only this crate's spans at INFO: never an event, whose fields (a log line's) are not
    // vetted for export the way span fields are.
    let only_spans = filter::filter_fn(|metadata| {
        metadata.is_span() && metadata.target().starts_with(CRATE) && *metadata.level() <= tracing::Level::INFO
    });
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(env!("CARGO_PKG_NAME")))
        .with_threads(false)
        .with_location(false)
        .with_tracked_inactivity(false)
        .with_filter(only_spans)
}

fn resource(export: &TraceExport) -> Resource {
    Resource::builder_empty()
        .with_attributes(
            export
                .resource
                .iter()
                .map(|(key, value)| KeyValue::new(key.clone(), value.clone())),
        )
        .with_service_name(export.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

fn sampler(sampler: TraceSampler) -> Sampler {
    let root = match sampler.ratio {
        ratio if ratio >= 1.0 => Sampler::AlwaysOn,
        ratio if ratio <= 0.0 => Sampler::AlwaysOff,
        ratio => Sampler::TraceIdRatioBased(ratio),
    };
    if sampler.parent_based {
        Sampler::ParentBased(Box::new(root))
    } else {
        root
    }
}

/// Waits until the spans finished so far are exported (or dropped), for at most `within`.
/// Whether they were.
pub(super) fn flush(within: Duration) -> bool {
    QUEUE.get().is_none_or(|queue| flush_queue(queue, within))
}

fn flush_queue(queue: &SyncSender<Message>, within: Duration) -> bool {
    let until = Instant::now() + within;
    let (done, exported) = mpsc::channel();
    let mut message = Message::Flush(done);
    loop {
        match queue.try_send(message) {
            Ok(()) => break,
            Err(TrySendError::Full(again)) if Instant::now() < until => {
                message = again;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return false,
        }
    }
    exported
        .recv_timeout(until.saturating_duration_since(Instant::now()))
        .is_ok()
}

/// The W3C `traceparent` of the current span, when traces are exported and there is one:
/// what a job keeps to continue its question's trace, and what the company's agent is
/// sent to continue it further.
pub fn traceparent() -> Option<String> {
    QUEUE.get()?;
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Tells trace backends what `span` is: its `otel.kind` (`server`, `client`, `consumer`,
/// `internal`) and `otel.name`, which the span declares `Empty`. Only while traces are
/// exported: logs need neither, and some of these spans are made thousands of times a
/// second.
pub fn describe_span(span: &tracing::Span, kind: &'static str, name: impl FnOnce() -> String) {
    if QUEUE.get().is_some() {
        span.record("otel.kind", kind);
        span.record("otel.name", name());
    }
}

/// Makes `span` a child of the span `traceparent` names (kept with a job when its
/// question was acknowledged), so the job's spans join the question's trace, and links it
/// to that span as well (backends that draw a queue's consumer apart from its producer
/// follow the link). A missing or unreadable one leaves `span` where it is, starting a
/// trace of its own.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    use opentelemetry::trace::TraceContextExt;

    let Some(traceparent) = traceparent else {
        return;
    };
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    if parent.has_active_span() {
        let acknowledged = parent.span().span_context().clone();
        if span.set_parent(parent).is_ok() {
            span.add_link(acknowledged);
        }
    }
}

/// The span processor: each finished span into the queue, or counted as dropped.
#[derive(Debug)]
struct SpanQueue {
    spans: SyncSender<Message>,
}

impl SpanProcessor for SpanQueue {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.spans.try_send(Message::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => count_dropped_spans(SpanDrop::QueueFull, 1),
            // The export thread is gone (its exporter could not be built).
            Err(TrySendError::Disconnected(_)) => count_dropped_spans(SpanDrop::ExportFailed, 1),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        if flush_queue(&self.spans, SDK_FLUSH) {
            Ok(())
        } else {
            Err(OTelSdkError::Timeout(SDK_FLUSH))
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        if flush_queue(&self.spans, timeout) {
            Ok(())
        } else {
            Err(OTelSdkError::Timeout(timeout))
        }
    }
}

/// The export thread: what it needs to build its exporter and batch spans.
struct ExportThread {
    endpoint: String,
    protocol: Protocol,
    collector: Arc<Collector>,
    timeout: Duration,
    resource: Resource,
    batch_size: usize,
    delay: Duration,
}

impl ExportThread {
    fn new(export: &TraceExport, resource: Resource) -> Self {
        Self {
            endpoint: export.endpoint.to_string(),
            protocol: match export.protocol {
                OtlpProtocol::Protobuf => Protocol::HttpBinary,
                OtlpProtocol::Json => Protocol::HttpJson,
            },
            collector: Arc::new(Collector::new(export)),
            timeout: export.timeout,
            resource,
            batch_size: export.batch_size,
            delay: export.schedule_delay,
        }
    }

    /// The exporter, sending through [`Collector`].
    fn exporter(&self) -> Result<opentelemetry_otlp::SpanExporter, String> {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_shared_http_client(self.collector.clone())
            .with_endpoint(&self.endpoint)
            .with_protocol(self.protocol)
            .with_timeout(self.timeout)
            .build()
            .map_err(|error| error.to_string())?;
        exporter.set_resource(&self.resource);
        Ok(exporter)
    }

    /// Sends spans as they come until the process ends: a batch when it is full, when
    /// the oldest span in it has waited `delay`, or when a flush asks. Exports run one at a
    /// time on a runtime of this thread's own.
    fn run(self, queue: &Receiver<Message>) {
        let built = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| error.to_string())
            .and_then(|runtime| Ok((runtime, self.exporter()?)));
        let (runtime, exporter) = match built {
            Ok(built) => built,
            Err(error) => {
                // Dropping the queue's receiver: every span from now on counts as dropped.
                tracing::warn!(error = %error, "could not build the trace exporter; no traces are exported");
                return;
            }
        };
        let mut out = Exporting {
            runtime,
            timeout: self.timeout,
            exporter,
            batch: Vec::with_capacity(self.batch_size),
            failing: false,
        };
        let mut due = Instant::now() + self.delay;
        loop {
            match queue.recv_timeout(due.saturating_duration_since(Instant::now())) {
                Ok(Message::Span(span)) => {
                    if out.batch.is_empty() {
                        due = Instant::now() + self.delay;
                    }
                    out.batch.push(*span);
                    if out.batch.len() >= self.batch_size {
                        out.send();
                    }
                }
                Ok(Message::Flush(done)) => {
                    out.send();
                    let _ = done.send(());
                }
                Err(RecvTimeoutError::Timeout) => {
                    out.send();
                    due = Instant::now() + self.delay;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    out.send();
                    return;
                }
            }
        }
    }
}

/// The batch being filled, and the exporter it goes out through.
struct Exporting {
    runtime: tokio::runtime::Runtime,
    timeout: Duration,
    exporter: opentelemetry_otlp::SpanExporter,
    batch: Vec<SpanData>,
    /// Whether the last export failed: one warning per run of failures.
    failing: bool,
}

impl Exporting {
    fn send(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let capacity = self.batch.capacity();
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(capacity));
        let spans = batch.len() as u64;
        // The timer is made inside the runtime, which it needs.
        let exported = self
            .runtime
            .block_on(async { tokio::time::timeout(self.timeout, self.exporter.export(batch)).await });
        match exported.unwrap_or(Err(OTelSdkError::Timeout(self.timeout))) {
            Ok(()) => self.failing = false,
            Err(error) => {
                count_dropped_spans(SpanDrop::ExportFailed, spans);
                if !self.failing {
                    tracing::warn!(error = %error, spans, "trace export failed; spans are dropped until it succeeds again");
                }
                self.failing = true;
            }
        }
    }
}

/// The exporter's HTTP client: the client every outbound call is made with (no redirect:
/// the headers may hold an API key), the validated `OTEL_*` headers, answers read up to
/// [`MAX_ANSWER`]. Of the exporter's own headers only those describing the body are kept:
/// it also adds `OTEL_EXPORTER_OTLP_*HEADERS` from the process environment itself, which
/// would bypass the configuration (`.env`, precedence, validation).
#[derive(Debug)]
struct Collector {
    client: reqwest::Client,
    headers: Vec<(String, SecretString)>,
}

impl Collector {
    fn new(export: &TraceExport) -> Self {
        Self {
            client: outbound::client(export.timeout),
            headers: export.headers.clone(),
        }
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Collector {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<opentelemetry_http::Response<opentelemetry_http::Bytes>, opentelemetry_http::HttpError> {
        use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, USER_AGENT};

        let (parts, body) = request.into_parts();
        let mut call = self.client.request(parts.method, parts.uri.to_string()).body(body);
        for name in [CONTENT_TYPE, CONTENT_ENCODING, USER_AGENT] {
            if let Some(value) = parts.headers.get(&name) {
                call = call.header(name, value);
            }
        }
        for (name, value) in &self.headers {
            call = call.header(name.as_str(), value.expose_secret());
        }
        let mut response = call.send().await?;
        let mut answer = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if answer.len() + chunk.len() > MAX_ANSWER {
                return Err(Box::new(opentelemetry_http::ResponseBodyTooLarge::new()));
            }
            answer.extend_from_slice(&chunk);
        }
        let mut answered = opentelemetry_http::Response::builder()
            .status(response.status())
            .body(opentelemetry_http::Bytes::from(answer))?;
        *answered.headers_mut() = std::mem::take(response.headers_mut());
        Ok(answered)
    }
}

/// Sends the collector an export with no spans in it, as `check` does, the way the
/// exporter sends: whether it takes one (with the headers and within the timeout `export`
/// names).
pub async fn probe_collector(export: &TraceExport) -> Result<(), String> {
    use opentelemetry_http::HttpClient;

    // An empty ExportTraceServiceRequest: no bytes in protobuf, `{}` in JSON.
    let (content_type, body) = match export.protocol {
        OtlpProtocol::Protobuf => ("application/x-protobuf", ""),
        OtlpProtocol::Json => ("application/json", "{}"),
    };
    let request = opentelemetry_http::Request::post(export.endpoint.as_str())
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(opentelemetry_http::Bytes::from_static(body.as_bytes()))
        .map_err(|error| error.to_string())?;
    let response = Collector::new(export).send_bytes(request).await.map_err(|error| {
        match error.downcast_ref::<reqwest::Error>() {
            Some(error) if error.is_timeout() => "no answer in time".to_owned(),
            Some(error) if error.is_connect() => "no connection".to_owned(),
            Some(error) => error.to_string(),
            None => error.to_string(),
        }
    })?;
    match response.status() {
        status if status.is_success() => Ok(()),
        status => Err(format!("answered {status}")),
    }
}
