//! Configuration: read once from the environment (and an optional `.env`), validated into
//! typed values, secrets held in `secrecy` types.
//!
//! Every problem is collected before failing, so one run names everything that needs
//! fixing. Messages name the variable and what is expected — never the value, which may be
//! a secret.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::crypto::{ClientCertificate, Vault, VaultKey};
use crate::domain::{WorkspaceHost, is_secure_or_loopback};

mod traces;
pub use traces::{OtlpProtocol, TraceExport, TraceSampler, Traces, traces};

/// Every variable the bot reads. `.env.example` and the README document each one.
pub const VARIABLES: &[&str] = &[
    "BIND_ADDR",
    "METRICS_BIND_ADDR",
    "TRUSTED_PROXIES",
    "PUBLIC_BASE_URL",
    "DATABASE_URL",
    "TOKEN_ENCRYPTION_KEYS",
    "SLACK_BOT_TOKEN",
    "SLACK_SIGNING_SECRET",
    "SLACK_APP_TOKEN",
    "SLACK_API_URL",
    "SLACK_CLIENT_ID",
    "SLACK_CLIENT_SECRET",
    "SLACK_OIDC_ISSUER",
    "ASSISTANT_PROMPTS",
    "DATABRICKS_HOST",
    "DATABRICKS_CLIENT_ID",
    "DATABRICKS_CLIENT_SECRET",
    "DATABRICKS_SCOPES",
    "DATABRICKS_OIDC_DISCOVERY_URL",
    "DATABRICKS_AUTH",
    "ENTRA_TENANT_ID",
    "ENTRA_CLIENT_ID",
    "ENTRA_CLIENT_SECRET",
    "ENTRA_CLIENT_CERTIFICATE",
    "ENTRA_API_SCOPE",
    "ENTRA_AUTHORITY_URL",
    "IDP_ISSUER",
    "IDP_CLIENT_ID",
    "IDP_CLIENT_SECRET",
    "IDP_SCOPES",
    "IDP_AUDIENCE",
    "LINK_IDENTITY_CHECK",
    "LINK_IDENTITY_CHECK_NONE_ACKNOWLEDGED",
    "AGENT",
    "GENIE_SPACE_ID",
    "GENIE_SPACES",
    "GENIE_SPACES_FILE",
    "DATABRICKS_SERVING_ENDPOINT",
    "DATABRICKS_WAREHOUSE_ID",
    "AGENT_URL",
    "ADK_APP_NAME",
    "ANSWER_VISIBILITY",
    "CHARTS",
    "WORKER_CONCURRENCY",
    "WORKER_PER_USER_LIMIT",
    "SHUTDOWN_DRAIN_SECONDS",
    "LOG_FORMAT",
    "RUST_LOG",
    "OTEL_SDK_DISABLED",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_EXPORTER",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
];

const DEFAULT_DATABASE_URL: &str = "sqlite://data/bot.db";
const DEFAULT_SCOPES: &str = "all-apis offline_access openid email profile";
const DEFAULT_IDP_SCOPES: &str = "openid email profile offline_access";
const DEFAULT_ENTRA_AUTHORITY: &str = "https://login.microsoftonline.com";

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The variable at fault.
    pub var: &'static str,
    /// What is expected of it.
    pub expected: String,
}

/// All problems found in one pass. Displayed as one message, one line per problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError(pub Vec<Problem>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "configuration is invalid ({} problem(s)):", self.0.len())?;
        for p in &self.0 {
            writeln!(f, "  - {}: {}", p.var, p.expected)?;
        }
        write!(f, "See .env.example for every variable and its meaning.")
    }
}

/// A snapshot of the environment: process variables over those of a `.env` file.
#[derive(Clone, Default)]
pub struct Env(HashMap<String, String>);

impl Env {
    /// The process environment, with `.env` (if present in the working directory) filling
    /// in variables the process does not set.
    pub fn from_process() -> Result<Self, ConfigError> {
        let mut vars = HashMap::new();
        match dotenvy::from_filename_iter(".env") {
            Ok(iter) => {
                for item in iter {
                    let (k, v) = item.map_err(|_| {
                        ConfigError(vec![Problem {
                            var: ".env",
                            expected: "each line must be KEY=value (the file could not be parsed)".into(),
                        }])
                    })?;
                    vars.insert(k, v);
                }
            }
            Err(e) if e.not_found() => {}
            Err(_) => {
                return Err(ConfigError(vec![Problem {
                    var: ".env",
                    expected: "must be readable when present".into(),
                }]));
            }
        }
        vars.extend(std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))));
        Ok(Self(vars))
    }

    /// An environment from explicit pairs (tests, embedding).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Self(pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }

    /// A variable's value; empty values count as unset.
    pub fn get(&self, var: &str) -> Option<&str> {
        debug_assert!(VARIABLES.contains(&var), "{var} is read but not listed in VARIABLES");
        self.0.get(var).map(|v| v.trim()).filter(|v| !v.is_empty())
    }
}

/// Collects problems while reading variables.
struct Reader<'a> {
    env: &'a Env,
    problems: Vec<Problem>,
}

impl<'a> Reader<'a> {
    fn new(env: &'a Env) -> Self {
        Self {
            env,
            problems: Vec::new(),
        }
    }

    fn problem(&mut self, var: &'static str, expected: impl Into<String>) {
        self.problems.push(Problem {
            var,
            expected: expected.into(),
        });
    }

    fn optional(&self, var: &str) -> Option<String> {
        self.env.get(var).map(str::to_owned)
    }

    fn required(&mut self, var: &'static str, expected: &str) -> Option<String> {
        let value = self.optional(var);
        if value.is_none() {
            self.problem(var, format!("is required: {expected}"));
        }
        value
    }

    fn secret(&self, var: &str) -> Option<SecretString> {
        self.env.get(var).map(|v| SecretString::from(v.to_owned()))
    }

    fn required_secret(&mut self, var: &'static str, expected: &str) -> Option<SecretString> {
        let value = self.secret(var);
        if value.is_none() {
            self.problem(var, format!("is required: {expected}"));
        }
        value
    }

    /// A URL we will call or send people to: https, or http on loopback only.
    fn url(&mut self, var: &'static str, default: Option<&str>) -> Option<Url> {
        let raw = self.optional(var).or_else(|| default.map(str::to_owned))?;
        match Url::parse(&raw) {
            Ok(url) if !url.username().is_empty() || url.password().is_some() => {
                self.problem(var, "must not contain credentials");
                None
            }
            Ok(url) if is_secure_or_loopback(&url) => Some(url),
            Ok(_) => {
                self.problem(
                    var,
                    "must be an https:// URL (plain http:// is allowed only for localhost/127.0.0.1/[::1])",
                );
                None
            }
            Err(_) => {
                self.problem(var, "must be an absolute URL such as https://example.com");
                None
            }
        }
    }

    fn choice<T: Copy>(&mut self, var: &'static str, choices: &[(&str, T)]) -> Option<T> {
        let raw = self.optional(var)?;
        let found = choices
            .iter()
            .find(|(name, _)| raw.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v);
        if found.is_none() {
            let names: Vec<_> = choices.iter().map(|(n, _)| *n).collect();
            self.problem(var, format!("must be one of: {}", names.join(", ")));
        }
        found
    }

    /// A whole number in `range`, or `default` when unset.
    fn number(&mut self, var: &'static str, default: u32, range: std::ops::RangeInclusive<u32>) -> u32 {
        let Some(raw) = self.optional(var) else {
            return default;
        };
        match raw.parse::<u32>() {
            Ok(n) if range.contains(&n) => n,
            _ => {
                self.problem(
                    var,
                    format!("must be a whole number from {} to {}", range.start(), range.end()),
                );
                default
            }
        }
    }

    fn finish<T>(self, value: impl FnOnce() -> T) -> Result<T, ConfigError> {
        if self.problems.is_empty() {
            Ok(value())
        } else {
            Err(ConfigError(self.problems))
        }
    }
}

/// Where the bot keeps its state.
#[derive(Clone)]
pub enum DatabaseConfig {
    /// An embedded SQLite file (created with mode 0600 in a 0700 directory).
    Sqlite { path: PathBuf },
    /// A shared Postgres database; the URL may carry a password, so it is a secret.
    Postgres { url: SecretString },
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite { path } => f.debug_struct("Sqlite").field("path", path).finish(),
            Self::Postgres { .. } => f.write_str("Postgres { url: [redacted] }"),
        }
    }
}

impl DatabaseConfig {
    /// Reads `DATABASE_URL` (default `sqlite://data/bot.db`).
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let mut r = Reader::new(env);
        let db = read_database(&mut r);
        r.finish(|| db.expect("no problem means a value"))
    }
}

fn read_database(r: &mut Reader<'_>) -> Option<DatabaseConfig> {
    let raw = r
        .optional("DATABASE_URL")
        .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
    if let Some(rest) = raw.strip_prefix("sqlite://").or_else(|| raw.strip_prefix("sqlite:")) {
        let path = rest.split('?').next().unwrap_or_default();
        if path.is_empty() || path == ":memory:" {
            r.problem(
                "DATABASE_URL",
                "a sqlite URL must name a file, e.g. sqlite://data/bot.db",
            );
            return None;
        }
        return Some(DatabaseConfig::Sqlite {
            path: PathBuf::from(path),
        });
    }
    if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
        if Url::parse(&raw).is_err() {
            r.problem("DATABASE_URL", "is not a valid postgres:// URL");
            return None;
        }
        return Some(DatabaseConfig::Postgres {
            url: SecretString::from(raw),
        });
    }
    r.problem(
        "DATABASE_URL",
        "must start with sqlite:// (embedded, the default) or postgres://",
    );
    None
}

fn read_vault(r: &mut Reader<'_>) -> Option<Vault> {
    const VAR: &str = "TOKEN_ENCRYPTION_KEYS";
    let raw = r.required_secret(VAR, "a comma-separated list of id:base64key entries (32-byte keys; `keys generate` makes one); the first is primary")?;
    let mut keys: Vec<VaultKey> = Vec::new();
    let mut ok = true;
    for (i, entry) in raw.expose_secret().split(',').enumerate() {
        let entry = entry.trim();
        if entry.is_empty() {
            r.problem(VAR, format!("entry {} is empty", i + 1));
            ok = false;
            continue;
        }
        match VaultKey::parse(&SecretString::from(entry.to_owned())) {
            Ok(key) if keys.iter().any(|k| k.id() == key.id()) => {
                r.problem(
                    VAR,
                    format!("key id `{}` appears more than once; ids must be unique", key.id()),
                );
                ok = false;
            }
            Ok(key) => keys.push(key),
            Err(e) => {
                r.problem(VAR, format!("entry {} {e}", i + 1));
                ok = false;
            }
        }
    }
    (ok && !keys.is_empty()).then(|| Vault::new(keys))
}

/// `DATABASE_URL` and `TOKEN_ENCRYPTION_KEYS`: what `keys rotate` needs.
pub fn vault_and_database(env: &Env) -> Result<(DatabaseConfig, Vault), ConfigError> {
    let mut r = Reader::new(env);
    let db = read_database(&mut r);
    let vault = read_vault(&mut r);
    r.finish(|| (db.expect("validated"), vault.expect("validated")))
}

/// How a person's Slack and Databricks identities are checked to be the same human.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityCheck {
    /// Slack profile email must equal a Databricks email or userName.
    Email,
    /// Sign in with Slack must prove the browser belongs to the asker.
    SlackOidc,
    /// Both of the above.
    SlackOidcAndEmail,
    /// No check (only for workspaces where this is acceptable by policy).
    None,
}

/// Which agent answers questions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentKind {
    Genie,
    Llm,
    Http,
    Adk,
}

impl AgentKind {
    /// The `AGENT` value naming this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentKind::Genie => "genie",
            AgentKind::Llm => "llm",
            AgentKind::Http => "http",
            AgentKind::Adk => "adk",
        }
    }
}

/// Where answers go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerVisibility {
    /// A public reply in the thread.
    Thread,
    /// An ephemeral reply with a "Share" button.
    Private,
    /// Private in channels shared with other organisations (Slack Connect), in the thread
    /// elsewhere: an answer shows the asker's data to everyone who can read the thread.
    Auto,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

impl LogFormat {
    /// `LOG_FORMAT`, defaulting to pretty on a terminal and JSON elsewhere. Unknown values
    /// fall back to the default here; `Config::load` reports them.
    pub fn from_env(env: &Env) -> Self {
        match env.get("LOG_FORMAT").map(str::to_ascii_lowercase).as_deref() {
            Some("json") => Self::Json,
            Some("pretty") => Self::Pretty,
            _ if std::io::IsTerminal::is_terminal(&std::io::stderr()) => Self::Pretty,
            _ => Self::Json,
        }
    }
}

/// Slack settings.
#[derive(Debug, Clone)]
pub struct SlackConfig {
    /// `SLACK_BOT_TOKEN` (`xoxb-…`).
    pub bot_token: SecretString,
    /// `SLACK_SIGNING_SECRET`; required unless Socket Mode is on.
    pub signing_secret: Option<SecretString>,
    /// `SLACK_APP_TOKEN` (`xapp-…`); its presence turns on Socket Mode.
    pub app_token: Option<SecretString>,
    /// `SLACK_API_URL`, the Web API base without a trailing slash.
    pub api_url: Url,
    /// `SLACK_CLIENT_ID`/`SLACK_CLIENT_SECRET`: Sign in with Slack during linking.
    pub oidc_client: Option<(String, SecretString)>,
    /// `SLACK_OIDC_ISSUER`.
    pub oidc_issuer: Url,
    /// `ASSISTANT_PROMPTS`: the suggested prompts of a new assistant thread (up to four).
    pub assistant_prompts: Vec<String>,
}

/// Databricks settings.
#[derive(Debug, Clone)]
pub struct DatabricksConfig {
    /// `DATABRICKS_HOST`, the workspace origin.
    pub host: WorkspaceHost,
    /// `DATABRICKS_AUTH` and its mode's settings.
    pub auth: DatabricksAuth,
}

/// How a person's Databricks access token is obtained (`DATABRICKS_AUTH`).
#[derive(Debug, Clone)]
pub enum DatabricksAuth {
    /// `databricks-oauth` (the default): Databricks OAuth U2M with an app connection.
    DatabricksOAuth(AppConnection),
    /// `entra-obo`: Entra ID sign-in, then on-behalf-of for Azure Databricks.
    EntraObo(EntraConfig),
    /// `token-federation`: any OIDC IdP, then the workspace's RFC 8693 token exchange.
    TokenFederation(IdpConfig),
}

/// The Databricks app connection (`databricks-oauth`).
#[derive(Debug, Clone)]
pub struct AppConnection {
    /// `DATABRICKS_CLIENT_ID` of the app connection.
    pub client_id: String,
    /// `DATABRICKS_CLIENT_SECRET`; set for a confidential client.
    pub client_secret: Option<SecretString>,
    /// `DATABRICKS_SCOPES`, split on whitespace.
    pub scopes: Vec<String>,
    /// `DATABRICKS_OIDC_DISCOVERY_URL`.
    pub discovery_url: Url,
}

/// The Entra ID app registration (`entra-obo`).
#[derive(Debug, Clone)]
pub struct EntraConfig {
    /// `ENTRA_TENANT_ID`.
    pub tenant_id: String,
    /// `ENTRA_CLIENT_ID`: the bot's app registration.
    pub client_id: String,
    /// `ENTRA_CLIENT_SECRET`, or the certificate in `ENTRA_CLIENT_CERTIFICATE`.
    pub credential: ClientCredential,
    /// `ENTRA_API_SCOPE`: the bot's own API scope people sign in for; by default
    /// `api://{ENTRA_CLIENT_ID}/access_as_user`.
    pub api_scope: String,
    /// `ENTRA_AUTHORITY_URL`: `https://login.microsoftonline.com`, or a sovereign cloud's.
    pub authority_url: Url,
}

impl EntraConfig {
    /// The tenant's OpenID Connect discovery document (v2.0 endpoints).
    pub fn discovery_url(&self) -> Url {
        let base = self.authority_url.as_str().trim_end_matches('/');
        Url::parse(&format!(
            "{base}/{}/v2.0/.well-known/openid-configuration",
            self.tenant_id
        ))
        .expect("an authority URL joins a tenant path")
    }
}

/// How the bot proves to Entra ID that it is its app registration.
#[derive(Clone)]
pub enum ClientCredential {
    /// A client secret.
    Secret(SecretString),
    /// A certificate: a signed client assertion per request (`private_key_jwt`).
    Certificate(ClientCertificate),
}

impl std::fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientCredential::Secret(_) => f.write_str("Secret([redacted])"),
            ClientCredential::Certificate(certificate) => certificate.fmt(f),
        }
    }
}

/// The company's OpenID Connect provider (`token-federation`).
#[derive(Debug, Clone)]
pub struct IdpConfig {
    /// `IDP_ISSUER`; discovery at `{IDP_ISSUER}/.well-known/openid-configuration`.
    pub issuer: Url,
    /// `IDP_CLIENT_ID`.
    pub client_id: String,
    /// `IDP_CLIENT_SECRET`; unset for a public client.
    pub client_secret: Option<SecretString>,
    /// `IDP_SCOPES`, split on whitespace.
    pub scopes: Vec<String>,
    /// `IDP_AUDIENCE`: when set, asked for as `audience`, and the access token (issued for
    /// it) is what is exchanged; otherwise the id_token is.
    pub audience: Option<String>,
}

impl IdpConfig {
    /// The issuer's OpenID Connect discovery document.
    pub fn discovery_url(&self) -> Url {
        let base = self.issuer.as_str().trim_end_matches('/');
        Url::parse(&format!("{base}/.well-known/openid-configuration")).expect("an issuer URL joins a path")
    }
}

/// Which Genie space answers in which channel: `GENIE_SPACES` (or the file
/// `GENIE_SPACES_FILE`), entries `channel=space` separated by commas or new lines, `*`
/// naming the default; `GENIE_SPACE_ID` is the default too. Lines starting with `#` are
/// comments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GenieSpaces {
    by_channel: std::collections::BTreeMap<String, String>,
    default: Option<String>,
}

impl GenieSpaces {
    /// One space everywhere.
    pub fn everywhere(space_id: &str) -> Self {
        Self {
            by_channel: Default::default(),
            default: Some(space_id.to_owned()),
        }
    }

    /// Reads `text`; an error names the entry that is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut spaces = Self::default();
        let entries = text
            .split([',', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty() && !e.starts_with('#'));
        for entry in entries {
            let (channel, space) = entry
                .split_once('=')
                .map(|(c, s)| (c.trim(), s.trim()))
                .ok_or_else(|| format!("entry `{entry}` is not channel=space"))?;
            let channel_ok = channel == "*"
                || (channel.len() >= 3
                    && channel.starts_with(['C', 'G', 'D'])
                    && channel.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()));
            if !channel_ok {
                return Err(format!(
                    "entry `{entry}`: `{channel}` is not a channel id (C…, G… or D…) or *"
                ));
            }
            if space.is_empty() || !space.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(format!("entry `{entry}`: `{space}` is not a Genie space id"));
            }
            let duplicate = if channel == "*" {
                spaces.default.replace(space.to_owned()).is_some()
            } else {
                spaces.by_channel.insert(channel.to_owned(), space.to_owned()).is_some()
            };
            if duplicate {
                return Err(format!("entry `{entry}`: `{channel}` is mapped twice"));
            }
        }
        Ok(spaces)
    }

    /// The space that answers in `channel`: its own, else the default.
    pub fn for_channel(&self, channel: &str) -> Option<&str> {
        self.by_channel
            .get(channel)
            .or(self.default.as_ref())
            .map(String::as_str)
    }

    /// The space of channels without one of their own.
    pub fn default_space(&self) -> Option<&str> {
        self.default.as_deref()
    }

    /// Every channel with a space of its own.
    pub fn channels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.by_channel.iter().map(|(c, s)| (c.as_str(), s.as_str()))
    }

    /// Whether `space_id` is one of the configured spaces.
    pub fn contains(&self, space_id: &str) -> bool {
        self.default.as_deref() == Some(space_id) || self.by_channel.values().any(|s| s == space_id)
    }

    /// Whether no space is configured at all.
    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.by_channel.is_empty()
    }
}

/// Agent settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `AGENT`, or inferred from what is configured.
    pub kind: AgentKind,
    /// `GENIE_SPACES` (or `GENIE_SPACES_FILE`), with `GENIE_SPACE_ID` as the default.
    pub genie_spaces: GenieSpaces,
    pub serving_endpoint: Option<String>,
    pub warehouse_id: Option<String>,
    pub agent_url: Option<Url>,
    pub adk_app_name: Option<String>,
}

/// The whole, validated configuration of `serve` and `check`.
#[derive(Debug, Clone)]
pub struct Config {
    /// `BIND_ADDR`.
    pub bind_addr: SocketAddr,
    /// `METRICS_BIND_ADDR`: when set, `/metrics` is served only there, with the probes.
    pub metrics_bind_addr: Option<SocketAddr>,
    /// `TRUSTED_PROXIES`: the reverse proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<IpNet>,
    /// `PUBLIC_BASE_URL`, without a trailing slash.
    pub public_base_url: Url,
    /// `DATABASE_URL`.
    pub database: DatabaseConfig,
    /// `TOKEN_ENCRYPTION_KEYS`.
    pub vault: Vault,
    pub slack: SlackConfig,
    pub databricks: DatabricksConfig,
    /// `LINK_IDENTITY_CHECK`.
    pub identity_check: IdentityCheck,
    pub agent: AgentConfig,
    /// `ANSWER_VISIBILITY`.
    pub answer_visibility: AnswerVisibility,
    /// `CHARTS` (default on): draw a chart of results that call for one.
    pub charts: bool,
    /// `WORKER_CONCURRENCY`: questions this process works on at once.
    pub worker_concurrency: u32,
    /// `WORKER_PER_USER_LIMIT`: questions of one person worked on at once.
    pub worker_per_user_limit: u32,
    /// `SHUTDOWN_DRAIN_SECONDS`: how long in-flight work may take to finish once shutdown
    /// begins.
    pub drain_deadline: Duration,
}

impl Config {
    /// Reads and validates every variable, reporting all problems at once.
    pub fn load(env: &Env) -> Result<Self, ConfigError> {
        let mut r = Reader::new(env);
        let server = read_server(&mut r);
        let exposure = read_exposure(&mut r);
        let database = read_database(&mut r);
        let vault = read_vault(&mut r);
        let slack = read_slack(&mut r);
        let databricks = read_databricks(&mut r);
        let identity_check = read_identity_check(&mut r, slack.as_ref());
        let agent = read_agent(&mut r);
        let workers = read_workers(&mut r);
        check_log_format(&mut r);

        r.finish(|| {
            let (server, workers) = (server.expect("validated"), workers.expect("validated"));
            Config {
                bind_addr: server.bind_addr,
                metrics_bind_addr: exposure.metrics_bind_addr,
                trusted_proxies: exposure.trusted_proxies,
                public_base_url: server.public_base_url,
                database: database.expect("validated"),
                vault: vault.expect("validated"),
                slack: slack.expect("validated"),
                databricks: databricks.expect("validated"),
                identity_check: identity_check.expect("validated"),
                agent: agent.expect("validated"),
                answer_visibility: workers.answer_visibility,
                charts: workers.charts,
                worker_concurrency: workers.concurrency,
                worker_per_user_limit: workers.per_user_limit,
                drain_deadline: workers.drain_deadline,
            }
        })
    }
}

/// Where the bot listens and the address people reach it at.
struct ServerSettings {
    bind_addr: SocketAddr,
    public_base_url: Url,
}

/// `BIND_ADDR` (default `127.0.0.1:3000`) and `PUBLIC_BASE_URL`, which must be a bare
/// origin since link and OAuth callback URLs are built from it.
fn read_server(r: &mut Reader<'_>) -> Option<ServerSettings> {
    let bind_addr = read_bind_addr(r);
    let public_base_url = if r.optional("PUBLIC_BASE_URL").is_none() {
        r.problem("PUBLIC_BASE_URL", "is required: the bot's public https:// address, e.g. https://bot.example.com (link and OAuth callback URLs are built from it)");
        None
    } else {
        r.url("PUBLIC_BASE_URL", None).and_then(|u| {
            if u.path() != "/" || u.query().is_some() {
                r.problem(
                    "PUBLIC_BASE_URL",
                    "must be an origin without path or query, e.g. https://bot.example.com",
                );
                None
            } else {
                Some(u)
            }
        })
    };
    Some(ServerSettings {
        bind_addr: bind_addr?,
        public_base_url: public_base_url?,
    })
}

/// `BIND_ADDR`, default `127.0.0.1:3000`.
fn read_bind_addr(r: &mut Reader<'_>) -> Option<SocketAddr> {
    match r.optional("BIND_ADDR") {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 3000))),
        Some(raw) => raw.parse().ok().or_else(|| {
            r.problem(
                "BIND_ADDR",
                "must be an address and port such as 127.0.0.1:3000 or 0.0.0.0:8080",
            );
            None
        }),
    }
}

/// Where a health probe reaches the bot running with `env`: `BIND_ADDR`, with an
/// unspecified address (`0.0.0.0`, `[::]`) replaced by loopback. Nothing else is read, so
/// a probe works with only the variables the bot was started with.
pub fn probe_addr(env: &Env) -> Result<SocketAddr, ConfigError> {
    let mut r = Reader::new(env);
    let addr = read_bind_addr(&mut r);
    r.finish(|| {
        let mut addr = addr.expect("validated");
        if addr.ip().is_unspecified() {
            let loopback: std::net::IpAddr = match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            };
            addr.set_ip(loopback);
        }
        addr
    })
}

/// What is exposed where: the metrics listener and the proxies trusted to name clients.
struct Exposure {
    metrics_bind_addr: Option<SocketAddr>,
    trusted_proxies: Vec<IpNet>,
}

/// `METRICS_BIND_ADDR` (unset: `/metrics` is on `BIND_ADDR`) and `TRUSTED_PROXIES`, a
/// comma list of addresses and CIDR ranges (unset: no proxy is trusted, LNK-06). A bad
/// entry is named by its position; these are not secrets, but the rule stays the same.
fn read_exposure(r: &mut Reader<'_>) -> Exposure {
    let metrics_bind_addr = r.optional("METRICS_BIND_ADDR").and_then(|raw| {
        raw.parse().ok().or_else(|| {
            r.problem(
                "METRICS_BIND_ADDR",
                "must be an address and port such as 127.0.0.1:9090",
            );
            None
        })
    });
    let mut trusted_proxies = Vec::new();
    for (n, entry) in r.optional("TRUSTED_PROXIES").unwrap_or_default().split(',').enumerate() {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        match entry
            .parse::<IpNet>()
            .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from))
        {
            Ok(net) => trusted_proxies.push(net),
            Err(_) => r.problem(
                "TRUSTED_PROXIES",
                format!(
                    "entry {} must be an IP address or CIDR range, e.g. 10.0.0.0/8,192.168.1.10",
                    n + 1
                ),
            ),
        }
    }
    Exposure {
        metrics_bind_addr,
        trusted_proxies,
    }
}

/// `LINK_IDENTITY_CHECK`, defaulting to `slack-oidc+email` when Sign in with Slack is
/// configured and to `email` otherwise; the slack-oidc checks need Sign in with Slack.
fn read_identity_check(r: &mut Reader<'_>, slack: Option<&SlackConfig>) -> Option<IdentityCheck> {
    let slack_oidc_configured = slack.is_some_and(|s| s.oidc_client.is_some());
    let identity_check = r
        .choice(
            "LINK_IDENTITY_CHECK",
            &[
                ("email", IdentityCheck::Email),
                ("slack-oidc", IdentityCheck::SlackOidc),
                ("slack-oidc+email", IdentityCheck::SlackOidcAndEmail),
                ("none", IdentityCheck::None),
            ],
        )
        .or(Some(if slack_oidc_configured {
            IdentityCheck::SlackOidcAndEmail
        } else {
            IdentityCheck::Email
        }));
    if matches!(
        identity_check,
        Some(IdentityCheck::SlackOidc | IdentityCheck::SlackOidcAndEmail)
    ) && !slack_oidc_configured
        && r.optional("SLACK_CLIENT_ID").is_none()
    {
        r.problem(
            "LINK_IDENTITY_CHECK",
            "slack-oidc needs SLACK_CLIENT_ID and SLACK_CLIENT_SECRET (Sign in with Slack)",
        );
    }
    // LNK-01: without a check, whoever opens a link binds whatever Databricks account they
    // sign in with to the Slack user the link was for. That is only ever a deliberate choice.
    if identity_check == Some(IdentityCheck::None)
        && r.optional("LINK_IDENTITY_CHECK_NONE_ACKNOWLEDGED").as_deref() != Some("yes")
    {
        r.problem(
            "LINK_IDENTITY_CHECK_NONE_ACKNOWLEDGED",
            "`yes` with LINK_IDENTITY_CHECK=none, which lets whoever opens a person's link connect any Databricks \
             account to that person's Slack user",
        );
    }
    identity_check
}

/// Where answers go and how many questions are worked on at once.
struct WorkerSettings {
    answer_visibility: AnswerVisibility,
    charts: bool,
    concurrency: u32,
    per_user_limit: u32,
    drain_deadline: Duration,
}

/// `ANSWER_VISIBILITY` (default `auto`), `WORKER_CONCURRENCY` (default 8, 1–256),
/// `WORKER_PER_USER_LIMIT` (default 2, 1–16) and `SHUTDOWN_DRAIN_SECONDS` (default 20,
/// 1–600). A bad value is reported and its default kept.
fn read_workers(r: &mut Reader<'_>) -> Option<WorkerSettings> {
    let answer_visibility = r
        .choice(
            "ANSWER_VISIBILITY",
            &[
                ("auto", AnswerVisibility::Auto),
                ("thread", AnswerVisibility::Thread),
                ("private", AnswerVisibility::Private),
            ],
        )
        .unwrap_or(AnswerVisibility::Auto);
    let charts = r.choice("CHARTS", &[("on", true), ("off", false)]).unwrap_or(true);
    let concurrency = r.number("WORKER_CONCURRENCY", 8, 1..=256);
    let per_user_limit = r.number("WORKER_PER_USER_LIMIT", 2, 1..=16);
    let drain_seconds = r.number("SHUTDOWN_DRAIN_SECONDS", 20, 1..=600);
    Some(WorkerSettings {
        answer_visibility,
        charts,
        concurrency,
        per_user_limit,
        drain_deadline: Duration::from_secs(drain_seconds.into()),
    })
}

/// `LOG_FORMAT` is read by telemetry before anything else ([`LogFormat::from_env`], which
/// falls back to its default); it is validated here so a typo is reported.
fn check_log_format(r: &mut Reader<'_>) {
    r.choice(
        "LOG_FORMAT",
        &[("pretty", LogFormat::Pretty), ("json", LogFormat::Json)],
    );
}

/// `ASSISTANT_PROMPTS`, `|`-separated; Slack shows at most four.
fn read_assistant_prompts(r: &mut Reader<'_>) -> Vec<String> {
    const DEFAULT: &str = "How many orders did we ship last week?|Which tables can I read in main.sales?|\
                           Show revenue by region for this quarter";
    let raw = r.optional("ASSISTANT_PROMPTS").unwrap_or_else(|| DEFAULT.to_owned());
    let prompts: Vec<String> = raw
        .split('|')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    if prompts.len() > 4 {
        r.problem("ASSISTANT_PROMPTS", "must hold at most four prompts, separated by |");
    }
    prompts
}

/// The `SLACK_*` variables. Without an app token (HTTP mode) the signing secret is
/// required; Sign in with Slack needs both its client id and secret.
fn read_slack(r: &mut Reader<'_>) -> Option<SlackConfig> {
    let bot_token = r.required_secret(
        "SLACK_BOT_TOKEN",
        "the app's bot token (xoxb-…) from Slack's OAuth & Permissions page",
    );
    if bot_token
        .as_ref()
        .is_some_and(|t| !t.expose_secret().starts_with("xoxb-"))
    {
        r.problem("SLACK_BOT_TOKEN", "must be a bot token starting with xoxb-");
    }
    let app_token = r.secret("SLACK_APP_TOKEN");
    if app_token
        .as_ref()
        .is_some_and(|t| !t.expose_secret().starts_with("xapp-"))
    {
        r.problem(
            "SLACK_APP_TOKEN",
            "must be an app-level token starting with xapp- (or be unset for HTTP mode)",
        );
    }
    let signing_secret = if app_token.is_none() {
        r.required_secret(
            "SLACK_SIGNING_SECRET",
            "the request signing secret from Slack's Basic Information page (needed for HTTP events)",
        )
    } else {
        r.secret("SLACK_SIGNING_SECRET")
    };
    let api_url = r.url("SLACK_API_URL", Some("https://slack.com/api"));
    let oidc_client = match (r.optional("SLACK_CLIENT_ID"), r.secret("SLACK_CLIENT_SECRET")) {
        (Some(id), Some(secret)) => Some((id, secret)),
        (None, None) => None,
        (Some(_), None) => {
            r.problem(
                "SLACK_CLIENT_SECRET",
                "is required when SLACK_CLIENT_ID is set (Sign in with Slack)",
            );
            None
        }
        (None, Some(_)) => {
            r.problem(
                "SLACK_CLIENT_ID",
                "is required when SLACK_CLIENT_SECRET is set (Sign in with Slack)",
            );
            None
        }
    };
    let oidc_issuer = r.url("SLACK_OIDC_ISSUER", Some("https://slack.com"));
    let assistant_prompts = read_assistant_prompts(r);
    Some(SlackConfig {
        bot_token: bot_token?,
        signing_secret,
        app_token,
        api_url: api_url?,
        oidc_client,
        oidc_issuer: oidc_issuer?,
        assistant_prompts,
    })
}

/// `DATABRICKS_HOST` and `DATABRICKS_AUTH` with its mode's variables.
fn read_databricks(r: &mut Reader<'_>) -> Option<DatabricksConfig> {
    let host = r
        .required("DATABRICKS_HOST", "the workspace URL, e.g. https://dbc-1234.cloud.databricks.com")
        .and_then(|raw| match WorkspaceHost::parse(&raw) {
            Ok(h) => Some(h),
            Err(_) => {
                r.problem("DATABRICKS_HOST", "must be a workspace origin such as https://dbc-1234.cloud.databricks.com (https://, no path; plain http only for loopback)");
                None
            }
        });
    #[derive(Clone, Copy)]
    enum Mode {
        DatabricksOAuth,
        EntraObo,
        TokenFederation,
    }
    let mode = r
        .choice(
            "DATABRICKS_AUTH",
            &[
                ("databricks-oauth", Mode::DatabricksOAuth),
                ("entra-obo", Mode::EntraObo),
                ("token-federation", Mode::TokenFederation),
            ],
        )
        .unwrap_or(Mode::DatabricksOAuth);
    let auth = match mode {
        Mode::DatabricksOAuth => read_app_connection(r, host.as_ref()).map(DatabricksAuth::DatabricksOAuth),
        Mode::EntraObo => read_entra(r).map(DatabricksAuth::EntraObo),
        Mode::TokenFederation => read_idp(r).map(DatabricksAuth::TokenFederation),
    };
    Some(DatabricksConfig {
        host: host?,
        auth: auth?,
    })
}

/// The `DATABRICKS_*` variables of the app connection. The discovery URL defaults to the
/// workspace's own, and the scopes must allow a refresh token.
fn read_app_connection(r: &mut Reader<'_>, host: Option<&WorkspaceHost>) -> Option<AppConnection> {
    let client_id = r.required("DATABRICKS_CLIENT_ID", "the client id of the Databricks app connection");
    let client_secret = r.secret("DATABRICKS_CLIENT_SECRET");
    let scopes = scopes_with_offline_access(r, "DATABRICKS_SCOPES", DEFAULT_SCOPES, "Databricks");
    let default_discovery = host.map(|h| h.url("/oidc/.well-known/oauth-authorization-server"));
    let discovery_url = r.url("DATABRICKS_OIDC_DISCOVERY_URL", default_discovery.as_deref());
    Some(AppConnection {
        client_id: client_id?,
        client_secret,
        scopes,
        discovery_url: discovery_url?,
    })
}

/// `var` split on whitespace (`default` when unset), which must ask for a refresh token.
fn scopes_with_offline_access(r: &mut Reader<'_>, var: &'static str, default: &str, issuer: &str) -> Vec<String> {
    let scopes: Vec<String> = r
        .optional(var)
        .unwrap_or_else(|| default.to_owned())
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if !scopes.iter().any(|s| s == "offline_access") {
        r.problem(
            var,
            format!("must include offline_access (without it {issuer} issues no refresh token)"),
        );
    }
    scopes
}

/// The `ENTRA_*` variables of `entra-obo`.
fn read_entra(r: &mut Reader<'_>) -> Option<EntraConfig> {
    let tenant_id = r
        .required(
            "ENTRA_TENANT_ID",
            "the directory (tenant) id of the Entra ID app registration",
        )
        .filter(|tenant| {
            // It becomes a path segment of every Entra URL.
            let plain = tenant
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
            if !plain {
                r.problem(
                    "ENTRA_TENANT_ID",
                    "must be a tenant id (a GUID) or a verified domain name",
                );
            }
            plain
        });
    let client_id = r.required(
        "ENTRA_CLIENT_ID",
        "the application (client) id of the bot's Entra ID app registration",
    );
    let credential = match (r.secret("ENTRA_CLIENT_SECRET"), r.optional("ENTRA_CLIENT_CERTIFICATE")) {
        (Some(secret), None) => Some(ClientCredential::Secret(secret)),
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            Ok(pem) => match ClientCertificate::from_pem(&pem) {
                Ok(certificate) => Some(ClientCredential::Certificate(certificate)),
                Err(why) => {
                    r.problem(
                        "ENTRA_CLIENT_CERTIFICATE",
                        format!("must be a PEM file with an RSA private key and its certificate; it {why}"),
                    );
                    None
                }
            },
            Err(_) => {
                r.problem("ENTRA_CLIENT_CERTIFICATE", "must be the path of a readable PEM file");
                None
            }
        },
        (Some(_), Some(_)) => {
            r.problem(
                "ENTRA_CLIENT_CERTIFICATE",
                "must not be set together with ENTRA_CLIENT_SECRET: choose one",
            );
            None
        }
        (None, None) => {
            r.problem(
                "ENTRA_CLIENT_SECRET",
                "is required: a client secret of the app registration, or set ENTRA_CLIENT_CERTIFICATE \
                 (on-behalf-of needs a confidential client)",
            );
            None
        }
    };
    let api_scope = r
        .optional("ENTRA_API_SCOPE")
        .or_else(|| client_id.as_ref().map(|id| format!("api://{id}/access_as_user")));
    let authority_url = r.url("ENTRA_AUTHORITY_URL", Some(DEFAULT_ENTRA_AUTHORITY));
    Some(EntraConfig {
        tenant_id: tenant_id?,
        client_id: client_id?,
        credential: credential?,
        api_scope: api_scope?,
        authority_url: authority_url?,
    })
}

/// The `IDP_*` variables of `token-federation`.
fn read_idp(r: &mut Reader<'_>) -> Option<IdpConfig> {
    let issuer = r.url("IDP_ISSUER", None);
    if issuer.is_none() && r.optional("IDP_ISSUER").is_none() {
        r.problem(
            "IDP_ISSUER",
            "is required: the OpenID Connect issuer URL of the company's identity provider",
        );
    }
    let client_id = r.required(
        "IDP_CLIENT_ID",
        "the client id the bot is registered with at the identity provider",
    );
    let client_secret = r.secret("IDP_CLIENT_SECRET");
    let scopes = scopes_with_offline_access(r, "IDP_SCOPES", DEFAULT_IDP_SCOPES, "the identity provider");
    let audience = r.optional("IDP_AUDIENCE");
    if audience.is_none() && !scopes.iter().any(|s| s == "openid") {
        r.problem(
            "IDP_SCOPES",
            "must include openid when IDP_AUDIENCE is unset (the id_token is what Databricks is given)",
        );
    }
    Some(IdpConfig {
        issuer: issuer?,
        client_id: client_id?,
        client_secret,
        scopes,
        audience,
    })
}

/// `GENIE_SPACES` or `GENIE_SPACES_FILE`, with `GENIE_SPACE_ID` as the default.
fn read_genie_spaces(r: &mut Reader<'_>) -> GenieSpaces {
    let (text, var) = match (r.optional("GENIE_SPACES"), r.optional("GENIE_SPACES_FILE")) {
        (Some(_), Some(_)) => {
            r.problem(
                "GENIE_SPACES_FILE",
                "must not be set together with GENIE_SPACES: choose one",
            );
            return GenieSpaces::default();
        }
        (Some(text), None) => (text, "GENIE_SPACES"),
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            Ok(text) => (text, "GENIE_SPACES_FILE"),
            Err(_) => {
                r.problem("GENIE_SPACES_FILE", "must be the path of a readable file");
                return GenieSpaces::default();
            }
        },
        (None, None) => (String::new(), "GENIE_SPACES"),
    };
    let mut spaces = match GenieSpaces::parse(&text) {
        Ok(spaces) => spaces,
        Err(why) => {
            r.problem(
                var,
                format!("must map channels to Genie spaces (C0SALES=01ef…,*=01ee…); {why}"),
            );
            return GenieSpaces::default();
        }
    };
    if let Some(default) = r.optional("GENIE_SPACE_ID") {
        if spaces.default.is_some() {
            r.problem(
                "GENIE_SPACE_ID",
                format!("must not be set when {var} names a default (*)"),
            );
        }
        spaces.default = Some(default);
    }
    spaces
}

fn read_agent(r: &mut Reader<'_>) -> Option<AgentConfig> {
    let explicit = r.choice(
        "AGENT",
        &[
            ("genie", AgentKind::Genie),
            ("llm", AgentKind::Llm),
            ("http", AgentKind::Http),
            ("adk", AgentKind::Adk),
        ],
    );
    let agent = AgentConfig {
        kind: AgentKind::Genie,
        genie_spaces: read_genie_spaces(r),
        serving_endpoint: r.optional("DATABRICKS_SERVING_ENDPOINT"),
        warehouse_id: r.optional("DATABRICKS_WAREHOUSE_ID"),
        agent_url: r.url("AGENT_URL", None),
        adk_app_name: r.optional("ADK_APP_NAME"),
    };
    let has_url = r.optional("AGENT_URL").is_some();
    let kind = explicit.or({
        // Inferred from what is configured, most specific first.
        if has_url && agent.adk_app_name.is_some() {
            Some(AgentKind::Adk)
        } else if has_url {
            Some(AgentKind::Http)
        } else if agent.serving_endpoint.is_some() {
            Some(AgentKind::Llm)
        } else if !agent.genie_spaces.is_empty() {
            Some(AgentKind::Genie)
        } else {
            None
        }
    });
    match kind {
        Some(AgentKind::Genie) if agent.genie_spaces.is_empty() => r.problem(
            "GENIE_SPACE_ID",
            "is required for AGENT=genie: the id of the Genie space to ask (or map channels with GENIE_SPACES)",
        ),
        Some(AgentKind::Llm) if agent.serving_endpoint.is_none() => r.problem(
            "DATABRICKS_SERVING_ENDPOINT",
            "is required for AGENT=llm: the name of a chat model serving endpoint",
        ),
        Some(AgentKind::Http | AgentKind::Adk) if !has_url => r.problem(
            "AGENT_URL",
            "is required for AGENT=http and AGENT=adk: the agent's base URL",
        ),
        Some(AgentKind::Adk) if agent.adk_app_name.is_none() => {
            r.problem("ADK_APP_NAME", "is required for AGENT=adk: the ADK app to run")
        }
        // ADK's api_server refuses other app names (and the name goes into URL paths).
        Some(AgentKind::Adk)
            if !agent
                .adk_app_name
                .as_deref()
                .is_some_and(|n| n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')) =>
        {
            r.problem(
                "ADK_APP_NAME",
                "must be letters, digits and underscores only, as ADK requires",
            )
        }
        Some(_) => {}
        None => r.problem(
            "AGENT",
            "is not set and no agent is configured: set GENIE_SPACE_ID (Genie), DATABRICKS_SERVING_ENDPOINT \
             (the built-in llm agent), or AGENT_URL (your own agent; with ADK_APP_NAME for Google ADK)",
        ),
    }
    Some(AgentConfig { kind: kind?, ..agent })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn minimal() -> Vec<(&'static str, &'static str)> {
        vec![
            ("PUBLIC_BASE_URL", "https://bot.example.com"),
            ("TOKEN_ENCRYPTION_KEYS", KEY),
            ("SLACK_BOT_TOKEN", "xoxb-test-token"),
            ("SLACK_SIGNING_SECRET", "signing-secret-canary"),
            ("DATABRICKS_HOST", "https://dbc-1.cloud.databricks.com"),
            ("DATABRICKS_CLIENT_ID", "client-id"),
            ("GENIE_SPACE_ID", "01ef-space"),
        ]
    }

    fn with(overrides: &[(&'static str, &'static str)]) -> Env {
        let mut pairs = minimal();
        for (k, v) in overrides {
            pairs.retain(|(key, _)| key != k);
            pairs.push((k, v));
        }
        Env::from_pairs(pairs)
    }

    fn problems(env: &Env) -> Vec<&'static str> {
        Config::load(env).unwrap_err().0.iter().map(|p| p.var).collect()
    }

    #[test]
    fn a_minimal_environment_gets_the_documented_defaults() {
        let c = Config::load(&with(&[])).unwrap();
        assert_eq!(c.bind_addr.to_string(), "127.0.0.1:3000");
        assert!(matches!(&c.database, DatabaseConfig::Sqlite { path } if path == &PathBuf::from("data/bot.db")));
        assert_eq!(c.slack.api_url.as_str(), "https://slack.com/api");
        let DatabricksAuth::DatabricksOAuth(app) = &c.databricks.auth else {
            panic!("databricks-oauth is the default")
        };
        assert_eq!(app.scopes, ["all-apis", "offline_access", "openid", "email", "profile"]);
        assert_eq!(
            app.discovery_url.as_str(),
            "https://dbc-1.cloud.databricks.com/oidc/.well-known/oauth-authorization-server"
        );
        assert_eq!(c.identity_check, IdentityCheck::Email);
        assert_eq!(c.answer_visibility, AnswerVisibility::Auto);
        assert_eq!(c.agent.kind, AgentKind::Genie);
        assert_eq!(c.vault.primary_key_id().as_str(), "k1");
    }

    #[test]
    fn an_empty_environment_names_every_required_variable_at_once() {
        let vars = problems(&Env::default());
        for var in [
            "PUBLIC_BASE_URL",
            "TOKEN_ENCRYPTION_KEYS",
            "SLACK_BOT_TOKEN",
            "SLACK_SIGNING_SECRET",
            "DATABRICKS_HOST",
            "DATABRICKS_CLIENT_ID",
        ] {
            assert!(vars.contains(&var), "{var} missing from {vars:?}");
        }
    }

    #[test]
    fn socket_mode_does_not_need_a_signing_secret() {
        let mut env = with(&[("SLACK_APP_TOKEN", "xapp-1-test")]);
        env.0.remove("SLACK_SIGNING_SECRET");
        assert!(Config::load(&env).is_ok());
    }

    // LNK-06: no proxy is trusted unless named; a bad entry is named by variable and position.
    #[test]
    fn metrics_listener_and_trusted_proxies_are_off_unless_set_and_validated() {
        let c = Config::load(&with(&[])).unwrap();
        assert_eq!((c.metrics_bind_addr, c.trusted_proxies.len()), (None, 0));
        let c = Config::load(&with(&[
            ("METRICS_BIND_ADDR", "127.0.0.1:9090"),
            ("TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1,2001:db8::/32"),
        ]))
        .unwrap();
        assert_eq!(c.metrics_bind_addr.unwrap().to_string(), "127.0.0.1:9090");
        assert_eq!(c.trusted_proxies.len(), 3);
        assert!(c.trusted_proxies[1].contains(&"192.0.2.1".parse::<std::net::IpAddr>().unwrap()));
        let env = with(&[
            ("METRICS_BIND_ADDR", "9090"),
            ("TRUSTED_PROXIES", "10.0.0.0/8,proxy.internal"),
        ]);
        let error = Config::load(&env).unwrap_err();
        assert_eq!(
            error.0.iter().map(|p| p.var).collect::<Vec<_>>(),
            ["METRICS_BIND_ADDR", "TRUSTED_PROXIES"]
        );
        assert!(error.0[1].expected.starts_with("entry 2 "), "{error}");
    }

    #[test]
    fn plain_http_is_refused_except_on_loopback() {
        assert_eq!(
            problems(&with(&[("SLACK_API_URL", "http://slack.internal/api")])),
            ["SLACK_API_URL"]
        );
        assert_eq!(
            problems(&with(&[("DATABRICKS_HOST", "http://dbc.example.com")])),
            ["DATABRICKS_HOST"]
        );
        assert_eq!(
            problems(&with(&[("PUBLIC_BASE_URL", "http://bot.example.com")])),
            ["PUBLIC_BASE_URL"]
        );
        let local = with(&[
            ("SLACK_API_URL", "http://127.0.0.1:9/api"),
            ("DATABRICKS_HOST", "http://localhost:9"),
            ("PUBLIC_BASE_URL", "http://[::1]:3000"),
        ]);
        assert!(Config::load(&local).is_ok());
    }

    #[test]
    fn bad_keys_are_each_named_without_their_value() {
        let env = with(&[(
            "TOKEN_ENCRYPTION_KEYS",
            "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=,k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=,k2:c2hvcnQ=,k3:%%%",
        )]);
        let err = Config::load(&env).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.0.len(), 3, "{text}");
        assert!(text.contains("appears more than once"));
        assert!(text.contains("entry 3 decodes to 5 bytes"));
        assert!(text.contains("entry 4 is not valid base64"));
        assert!(!text.contains("c2hvcnQ") && !text.contains("AAECAw"), "{text}");
    }

    #[test]
    fn unknown_database_schemes_and_bad_enums_are_reported_together() {
        let env = with(&[
            ("DATABASE_URL", "mysql://db/bot"),
            ("ANSWER_VISIBILITY", "loud"),
            ("LINK_IDENTITY_CHECK", "vibes"),
            ("DATABRICKS_SCOPES", "all-apis"),
            ("BIND_ADDR", "nowhere"),
            ("WORKER_CONCURRENCY", "0"),
        ]);
        let mut vars = problems(&env);
        vars.sort();
        assert_eq!(
            vars,
            [
                "ANSWER_VISIBILITY",
                "BIND_ADDR",
                "DATABASE_URL",
                "DATABRICKS_SCOPES",
                "LINK_IDENTITY_CHECK",
                "WORKER_CONCURRENCY"
            ]
        );
    }

    #[test]
    fn agents_are_inferred_and_their_requirements_checked() {
        let c = Config::load(&with(&[("GENIE_SPACE_ID", "01ef")])).unwrap();
        assert_eq!(c.agent.kind, AgentKind::Genie);
        let c = Config::load(&with(&[
            ("AGENT_URL", "https://agent.example.com"),
            ("ADK_APP_NAME", "a"),
        ]))
        .unwrap();
        assert_eq!(c.agent.kind, AgentKind::Adk);
        let c = Config::load(&with(&[("DATABRICKS_SERVING_ENDPOINT", "chat")])).unwrap();
        assert_eq!(
            c.agent.kind,
            AgentKind::Llm,
            "more specific than the Genie space of the minimal env"
        );
        let none = Env::from_pairs(minimal().into_iter().filter(|(k, _)| *k != "GENIE_SPACE_ID"));
        assert_eq!(
            problems(&none),
            ["AGENT"],
            "a clear start-up error when no agent is configured"
        );
        assert_eq!(problems(&with(&[("AGENT", "llm")])), ["DATABRICKS_SERVING_ENDPOINT"]);
        assert_eq!(problems(&with(&[("AGENT", "adk")])), ["AGENT_URL"]);
        assert_eq!(
            problems(&with(&[
                ("AGENT_URL", "https://agent.example.com"),
                ("ADK_APP_NAME", "../admin")
            ])),
            ["ADK_APP_NAME"]
        );
    }

    // LNK-01 (issue 12): no identity check is only ever a deliberate choice.
    #[test]
    fn no_identity_check_needs_its_own_acknowledgement() {
        assert_eq!(
            problems(&with(&[("LINK_IDENTITY_CHECK", "none")])),
            ["LINK_IDENTITY_CHECK_NONE_ACKNOWLEDGED"]
        );
        assert_eq!(
            problems(&with(&[
                ("LINK_IDENTITY_CHECK", "none"),
                ("LINK_IDENTITY_CHECK_NONE_ACKNOWLEDGED", "true")
            ])),
            ["LINK_IDENTITY_CHECK_NONE_ACKNOWLEDGED"],
            "only the exact word"
        );
        let c = Config::load(&with(&[
            ("LINK_IDENTITY_CHECK", "none"),
            ("LINK_IDENTITY_CHECK_NONE_ACKNOWLEDGED", "yes"),
        ]))
        .unwrap();
        assert_eq!(c.identity_check, IdentityCheck::None);
    }

    #[test]
    fn slack_sign_in_needs_both_halves_and_changes_the_default_check() {
        assert_eq!(
            problems(&with(&[("SLACK_CLIENT_ID", "123.456")])),
            ["SLACK_CLIENT_SECRET"]
        );
        let c = Config::load(&with(&[("SLACK_CLIENT_ID", "123.456"), ("SLACK_CLIENT_SECRET", "s")])).unwrap();
        assert_eq!(c.identity_check, IdentityCheck::SlackOidcAndEmail);
        assert_eq!(
            problems(&with(&[("LINK_IDENTITY_CHECK", "slack-oidc")])),
            ["LINK_IDENTITY_CHECK"]
        );
    }

    #[test]
    fn every_variable_is_documented_in_env_example_and_the_readme() {
        let example = include_str!("../../.env.example");
        let readme = include_str!("../../README.md");
        for var in VARIABLES {
            assert!(example.contains(&format!("{var}=")), "{var} missing from .env.example");
            assert!(readme.contains(&format!("`{var}`")), "{var} missing from README.md");
        }
    }

    // CRY-08: configuration holds its secrets in secret types; debug output redacts them.
    #[test]
    fn debug_output_redacts_every_secret() {
        let env = with(&[
            ("DATABRICKS_CLIENT_SECRET", "dbx-secret-canary"),
            ("DATABASE_URL", "postgres://u:pg-password-canary@localhost/db"),
        ]);
        let shown = format!("{:?}", Config::load(&env).unwrap());
        for canary in [
            "signing-secret-canary",
            "dbx-secret-canary",
            "pg-password-canary",
            "xoxb-test-token",
            "AAECAw",
        ] {
            assert!(!shown.contains(canary), "{canary} in {shown}");
        }
    }

    #[test]
    fn entra_obo_needs_its_registration_and_not_the_app_connection() {
        let env = with(&[("DATABRICKS_AUTH", "entra-obo")]);
        assert_eq!(
            problems(&env),
            ["ENTRA_TENANT_ID", "ENTRA_CLIENT_ID", "ENTRA_CLIENT_SECRET"]
        );
        let c = Config::load(&with(&[
            ("DATABRICKS_AUTH", "Entra-OBO"),
            ("DATABRICKS_CLIENT_ID", ""),
            ("ENTRA_TENANT_ID", "72f988bf-86f1-41af-91ab-2d7cd011db47"),
            ("ENTRA_CLIENT_ID", "bot-app"),
            ("ENTRA_CLIENT_SECRET", "entra-secret-canary"),
        ]))
        .unwrap();
        let DatabricksAuth::EntraObo(entra) = &c.databricks.auth else {
            panic!()
        };
        assert_eq!(entra.api_scope, "api://bot-app/access_as_user");
        assert_eq!(
            entra.discovery_url().as_str(),
            "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0/.well-known/openid-configuration"
        );
        assert!(!format!("{c:?}").contains("entra-secret-canary"));
        assert_eq!(
            problems(&with(&[
                ("DATABRICKS_AUTH", "entra-obo"),
                ("ENTRA_TENANT_ID", "../evil"),
                ("ENTRA_CLIENT_ID", "bot-app"),
                ("ENTRA_CLIENT_SECRET", "s"),
            ])),
            ["ENTRA_TENANT_ID"]
        );
    }

    #[test]
    fn entra_obo_takes_a_secret_or_a_certificate_but_not_both() {
        let certificate = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/entra/client-certificate.pem"
        );
        let entra = |extra: &[(&'static str, &'static str)]| {
            let mut pairs = vec![
                ("DATABRICKS_AUTH", "entra-obo"),
                ("ENTRA_TENANT_ID", "contoso.onmicrosoft.com"),
                ("ENTRA_CLIENT_ID", "bot-app"),
            ];
            pairs.extend_from_slice(extra);
            with(&pairs)
        };
        let c = Config::load(&entra(&[("ENTRA_CLIENT_CERTIFICATE", certificate)])).unwrap();
        let DatabricksAuth::EntraObo(e) = &c.databricks.auth else {
            panic!()
        };
        let ClientCredential::Certificate(cert) = &e.credential else {
            panic!()
        };
        assert_eq!(cert.thumbprint().len(), 43, "base64url SHA-256");
        assert!(!format!("{c:?}").contains("PRIVATE"));
        assert_eq!(
            problems(&entra(&[
                ("ENTRA_CLIENT_CERTIFICATE", certificate),
                ("ENTRA_CLIENT_SECRET", "s")
            ])),
            ["ENTRA_CLIENT_CERTIFICATE"]
        );
        assert_eq!(
            problems(&entra(&[("ENTRA_CLIENT_CERTIFICATE", "/nonexistent/cert.pem")])),
            ["ENTRA_CLIENT_CERTIFICATE"]
        );
        let public_only = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/entra/client-certificate.pub.pem"
        );
        assert_eq!(
            problems(&entra(&[("ENTRA_CLIENT_CERTIFICATE", public_only)])),
            ["ENTRA_CLIENT_CERTIFICATE"]
        );
    }

    #[test]
    fn genie_spaces_map_channels_and_a_malformed_entry_is_named() {
        let c = Config::load(&with(&[
            ("GENIE_SPACE_ID", ""),
            ("GENIE_SPACES", "C0SALES=01ef-sales, C0FIN=01f0-fin,*=01ee-all"),
        ]))
        .unwrap();
        let spaces = &c.agent.genie_spaces;
        assert_eq!(spaces.for_channel("C0SALES"), Some("01ef-sales"));
        assert_eq!(spaces.for_channel("C0OTHER"), Some("01ee-all"));
        assert!(spaces.contains("01f0-fin") && !spaces.contains("nope"));
        assert_eq!(c.agent.kind, AgentKind::Genie);
        // GENIE_SPACE_ID is the default beside a mapping without one.
        let c = Config::load(&with(&[("GENIE_SPACES", "C0SALES=01ef-sales")])).unwrap();
        assert_eq!(c.agent.genie_spaces.for_channel("C0OTHER"), Some("01ef-space"));

        for (entry, named) in [
            ("C0SALES", "`C0SALES` is not channel=space"),
            ("sales=01ef", "`sales` is not a channel id"),
            ("C0SALES=01ef,C0SALES=01f0", "mapped twice"),
            ("C0SALES=01 ef", "is not a Genie space id"),
        ] {
            let error = Config::load(&with(&[("GENIE_SPACES", entry)])).unwrap_err();
            assert_eq!(error.0[0].var, "GENIE_SPACES", "{entry}");
            assert!(error.0[0].expected.contains(named), "{entry}: {}", error.0[0].expected);
        }
        assert_eq!(
            problems(&with(&[("GENIE_SPACES", "*=01ee")])),
            ["GENIE_SPACE_ID"],
            "two defaults"
        );
        let file = std::env::temp_dir().join(format!("genie-spaces-{}.txt", std::process::id()));
        std::fs::write(&file, "# sales\nC0SALES=01ef-sales\n\n*=01ee-all\n").unwrap();
        let c = Config::load(&with(&[
            ("GENIE_SPACE_ID", ""),
            ("GENIE_SPACES_FILE", &*Box::leak(file.to_str().unwrap().into())),
        ]))
        .unwrap();
        std::fs::remove_file(&file).unwrap();
        assert_eq!(c.agent.genie_spaces.for_channel("C0SALES"), Some("01ef-sales"));
        assert_eq!(c.agent.genie_spaces.default_space(), Some("01ee-all"));
    }

    #[test]
    fn token_federation_needs_an_issuer_and_a_token_to_exchange() {
        assert_eq!(
            problems(&with(&[("DATABRICKS_AUTH", "token-federation")])),
            ["IDP_ISSUER", "IDP_CLIENT_ID"]
        );
        let base = [
            ("DATABRICKS_AUTH", "token-federation"),
            ("IDP_ISSUER", "https://corp.okta.com/oauth2/default"),
            ("IDP_CLIENT_ID", "bot"),
        ];
        let c = Config::load(&with(&base)).unwrap();
        let DatabricksAuth::TokenFederation(idp) = &c.databricks.auth else {
            panic!()
        };
        assert_eq!(idp.scopes, ["openid", "email", "profile", "offline_access"]);
        assert_eq!(
            idp.discovery_url().as_str(),
            "https://corp.okta.com/oauth2/default/.well-known/openid-configuration"
        );
        let mut no_refresh = base.to_vec();
        no_refresh.push(("IDP_SCOPES", "openid email"));
        assert_eq!(problems(&with(&no_refresh)), ["IDP_SCOPES"]);
        let mut no_subject = base.to_vec();
        no_subject.push(("IDP_SCOPES", "email offline_access"));
        assert_eq!(problems(&with(&no_subject)), ["IDP_SCOPES"]);
        assert_eq!(
            problems(&with(&[("DATABRICKS_AUTH", "saml"), ("DATABRICKS_CLIENT_ID", "x")])),
            ["DATABRICKS_AUTH"]
        );
    }
}
