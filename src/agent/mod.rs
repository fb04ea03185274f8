//! Agents answer a linked person's question as that person.
//!
//! The [`Agent`] trait is the seam between the Slack side (which knows who asked, where,
//! and in which thread) and whatever produces the answer. Backends live in their own
//! modules.

use async_trait::async_trait;

pub use crate::databricks::broker::UserContext;

/// A question to answer, and who asked it.
#[derive(Debug, Clone)]
pub struct AgentRequest {
    /// The question, with the bot's mention removed.
    pub question: String,
    /// The asker: Slack and Databricks identities and a short-lived access token.
    pub context: UserContext,
}

/// An answer, as plain text (mrkdwn is escaped when posted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentAnswer {
    pub text: String,
}

/// Why an agent could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// Worth trying again later (timeouts, 5xx, rate limits).
    #[error("the agent is temporarily unavailable: {0}")]
    Transient(String),
    /// Will not work on retry; the person is told.
    #[error("the agent could not answer: {0}")]
    Failed(String),
    /// Databricks refused the access token (401, or 403 "Invalid access token"): the
    /// caller refreshes once and asks again.
    #[error("Databricks refused the access token")]
    Unauthorized,
    /// No agent backend is configured for this deployment.
    #[error("no agent is configured")]
    NotConfigured,
}

/// Something that answers questions.
#[async_trait]
pub trait Agent: Send + Sync + 'static {
    /// Answers `request`.
    async fn answer(&self, request: &AgentRequest) -> Result<AgentAnswer, AgentError>;
}

/// The agent of a deployment that has none configured (`AGENT` unset and nothing to
/// infer it from): every question gets a clear "not configured" reply.
#[derive(Debug, Default)]
pub struct Unconfigured;

#[async_trait]
impl Agent for Unconfigured {
    async fn answer(&self, _request: &AgentRequest) -> Result<AgentAnswer, AgentError> {
        Err(AgentError::NotConfigured)
    }
}
