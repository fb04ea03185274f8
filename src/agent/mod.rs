//! Agents answer a linked person's question as that person.
//!
//! The [`Agent`] trait is the seam between the Slack side (which knows who asked, where,
//! and in which thread) and whatever produces the answer. Every backend gets a
//! [`UserContext`] with the asker's short-lived access token for this one answer and never
//! stores it. Backends live in their own modules; [`from_config`] picks one.

pub mod adk;
pub mod external;
pub mod genie;
pub mod llm;
pub mod sse;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use slack_morphism::prelude::SlackBlock;

use crate::config::{AgentConfig, AgentKind};
use crate::databricks::api::ApiError;

pub use crate::databricks::broker::UserContext;
pub use crate::databricks::sql::Table;
pub use crate::databricks::{Progress, Unwatched};

/// A question to answer, who asked it, and where.
#[derive(Debug, Clone)]
pub struct AgentRequest {
    /// The question, with the bot's mention removed.
    pub question: String,
    /// The asker: Slack and Databricks identities and a short-lived access token.
    pub context: UserContext,
    /// The Slack conversation the answer goes to.
    pub thread: Thread,
    /// What this agent kept about this person's conversation in this thread after its
    /// previous answer ([`AgentAnswer::conversation`]); `None` in a new thread.
    pub conversation: Option<serde_json::Value>,
    /// The same on every try of one question (its job and the message that asked), so an
    /// agent can tell a retry from a new question (the http agent's `Idempotency-Key`).
    pub key: String,
    /// On a later try of the question, when it was first taken up (Unix seconds): an
    /// earlier try may have reached the agent before it failed or the bot stopped, so an
    /// agent that takes no idempotency key (Genie) looks for it before asking again.
    /// `None` on the first try.
    pub retry_since: Option<i64>,
}

/// Where in Slack a question was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thread {
    pub channel: String,
    /// The thread's root message, or `None` for a direct message outside a thread.
    pub thread_ts: Option<String>,
}

/// An answer. `text` is the agent's prose (Markdown-ish; escaped when posted), the rest is
/// optional structure the Slack side renders.
#[derive(Debug, Clone, Default)]
pub struct AgentAnswer {
    pub text: String,
    /// The SQL that produced `table`, shown to the person.
    pub sql: Option<String>,
    pub table: Option<Table>,
    /// Follow-up questions, offered as buttons.
    pub suggestions: Vec<String>,
    /// Block Kit of the agent's own (the `http` agent may send it), posted under `text`.
    pub blocks: Vec<SlackBlock>,
    /// What to keep for the next question in the same thread (a Genie conversation id,
    /// an ADK session, recent turns). Never a token.
    pub conversation: Option<serde_json::Value>,
}

impl AgentAnswer {
    /// A plain-text answer.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            ..Self::default()
        }
    }
}

/// Why an agent could not answer. Every `String` here is said to the person: plain words,
/// no internals (those go to the logs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// Databricks refused the access token (401, or 403 "Invalid access token"): the
    /// caller refreshes once and asks again.
    #[error("Databricks refused the access token")]
    Unauthorized,
    /// Databricks says the person may not see this (403 `PERMISSION_DENIED`): their real
    /// answer, not a failure of the bot.
    #[error("no access: {0}")]
    NoAccess(String),
    /// Worth trying again later (timeouts, 5xx, rate limits, a warehouse starting).
    #[error("{reason}")]
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Will not work on retry.
    #[error("{0}")]
    Failed(String),
}

impl AgentError {
    /// A transient failure without a hint of when to retry.
    pub fn transient(reason: impl Into<String>) -> Self {
        Self::Transient {
            reason: reason.into(),
            retry_after: None,
        }
    }
}

impl From<ApiError> for AgentError {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::InvalidToken => Self::Unauthorized,
            ApiError::PermissionDenied(message) => Self::NoAccess(message),
            ApiError::RateLimited { retry_after } => Self::Transient {
                reason: "Databricks is rate limiting requests right now".into(),
                retry_after,
            },
            ApiError::Timeout => Self::transient("Databricks did not answer in time"),
            ApiError::Transient(_) => Self::transient("Databricks is temporarily unavailable"),
            ApiError::Rejected { message, .. } => Self::Failed(format!("Databricks refused the request: {message}")),
            ApiError::Unexpected(_) => Self::Failed("Databricks gave an answer I could not read".into()),
        }
    }
}

/// Something that answers questions.
#[async_trait]
pub trait Agent: Send + Sync + 'static {
    /// A short name for the "Answered with …" line (e.g. "Genie").
    fn name(&self) -> &str;

    /// Answers `request`, telling `progress` what it is doing.
    async fn answer(&self, request: &AgentRequest, progress: &dyn Progress) -> Result<AgentAnswer, AgentError>;
}

/// The agent `config` asks for (validated: what the kind needs is set).
pub fn from_config(config: &AgentConfig) -> Arc<dyn Agent> {
    let databricks = crate::databricks::api::http_client;
    let required = |value: &Option<String>| value.clone().expect("validated by Config::load");
    let url = || config.agent_url.clone().expect("validated by Config::load");
    match config.kind {
        AgentKind::Genie => Arc::new(genie::Genie::new(databricks(), config.genie_spaces.clone())),
        AgentKind::Llm => Arc::new(llm::Llm::new(
            databricks(),
            required(&config.serving_endpoint),
            config.warehouse_id.clone(),
            (!config.genie_spaces.is_empty()).then(|| config.genie_spaces.clone()),
        )),
        AgentKind::Http => Arc::new(external::HttpAgent::new(external_client(), url())),
        AgentKind::Adk => Arc::new(adk_of(config).expect("validated by Config::load")),
    }
}

/// The ADK agent `config` asks for, if it asks for one (also for its version probe).
pub fn adk_of(config: &AgentConfig) -> Option<adk::Adk> {
    match (config.kind, &config.agent_url, &config.adk_app_name) {
        (AgentKind::Adk, Some(url), Some(app)) => Some(adk::Adk::new(adk::client(), url.clone(), app.clone())),
        _ => None,
    }
}

/// The HTTP client for the company's own agent: it may think for a while, but not forever.
fn external_client() -> reqwest::Client {
    crate::outbound::client(EXTERNAL_AGENT_TIMEOUT)
}

/// Longest the company's own agent may take to answer.
pub const EXTERNAL_AGENT_TIMEOUT: Duration = Duration::from_secs(120);
