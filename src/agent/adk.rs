//! The company's own agent on a Google ADK `api_server` (`adk api_server`, or
//! `get_fast_api_app` behind its own server).
//!
//! # The contract
//!
//! Each person gets the ADK `user_id` `<slack team id>:<slack user id>` (stable, not an
//! email), and each Slack thread an ADK session of theirs:
//!
//! 1. The first question in a thread creates the session:
//!    `POST {AGENT_URL}/apps/{ADK_APP_NAME}/users/{user_id}/sessions` with body `{}`; ADK
//!    answers with the session, whose `id` the bot keeps for the thread
//!    ([`AgentAnswer::conversation`] = `{"session_id": "<id>"}`).
//! 2. Every question, the first included, is one
//!    `POST {AGENT_URL}/run`:
//!
//!    ```json
//!    {
//!      "app_name": "<ADK_APP_NAME>",
//!      "user_id": "T0123ABCD:U0123ABCD",
//!      "session_id": "<id>",
//!      "new_message": { "role": "user", "parts": [ { "text": "<the question>" } ] },
//!      "state_delta": {
//!        "temp:databricks_token": "<the asker's short-lived access token>",
//!        "temp:databricks_host": "https://dbc-123.cloud.databricks.com"
//!      }
//!    }
//!    ```
//!
//!    The agent's tools read `tool_context.state["temp:databricks_token"]` and
//!    `["temp:databricks_host"]` and call Databricks as the asker. ADK applies `temp:`
//!    state for the current invocation only and never persists it (recent ADK releases;
//!    older ones dropped `temp:` keys from `state_delta` before the agent could read them).
//! 3. ADK answers with the run's events (a JSON list). The answer is the text of the
//!    last event that is a final response of an agent: authored by anything but `user`,
//!    not `partial`, without function calls or responses; `thought` parts are left out.
//!    Several text parts of that event are joined with blank lines.
//! 4. If the kept session is gone (ADK restarted with in-memory sessions, or it expired),
//!    `/run` answers `404` `{"detail": "Session not found…"}`: the bot creates a new
//!    session and asks once more, once.
//!
//! No `Authorization` header is sent to ADK: the token travels only in `state_delta`.
//! Failures are told as for the [`http`](super::http) backend (timeouts and 5xx retried
//! later, 401/403 "your agent refused the request", an unreadable list or one without an
//! answer "your agent sent an answer I could not read"); an ADK event carrying an
//! `errorCode` and no answer is "your agent ran into a problem answering".

use async_trait::async_trait;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::json;
use url::Url;

use crate::agent::external::{Reply, UNREADABLE, exchange};
use crate::agent::{Agent, AgentAnswer, AgentError, AgentRequest, Progress};

/// The `state_delta` key carrying the asker's access token.
pub const TOKEN_STATE_KEY: &str = "temp:databricks_token";
/// The `state_delta` key carrying the asker's workspace URL.
pub const HOST_STATE_KEY: &str = "temp:databricks_host";

/// Said to the asker when ADK reports an error instead of an answer (a blocked or failed
/// model call).
const AGENT_ERROR: &str = "your agent ran into a problem answering";

/// An app on an ADK `api_server` at `url` (see the module docs).
pub struct Adk {
    http: reqwest::Client,
    url: Url,
    app_name: String,
}

impl Adk {
    /// The ADK app `app_name` served at `url`, called with `http` (which carries the
    /// timeouts and follows no redirects).
    pub fn new(http: reqwest::Client, url: Url, app_name: String) -> Self {
        Self { http, url, app_name }
    }

    /// `self.url` with `segments` appended to its path.
    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.url.clone();
        url.path_segments_mut()
            .expect("AGENT_URL is an http(s) URL, which has a path")
            .pop_if_empty()
            .extend(segments);
        url
    }

    /// A new session of `user_id` in this app; its id.
    async fn create_session(&self, user_id: &str, token: &SecretString) -> Result<String, AgentError> {
        let url = self.endpoint(&["apps", &self.app_name, "users", user_id, "sessions"]);
        let reply = exchange("adk", self.http.post(url).json(&json!({}))).await?;
        if !reply.status.is_success() {
            return Err(reply.failure("adk", token));
        }
        let session: Session = reply.json("adk", token)?;
        if session.id.is_empty() {
            tracing::warn!(agent = "adk", "ADK created a session without an id");
            return Err(AgentError::Failed(UNREADABLE.into()));
        }
        tracing::info!(agent = "adk", session_id = %session.id, "created an ADK session");
        Ok(session.id)
    }

    /// One run of the agent in `session_id`; `None` if ADK no longer has that session.
    async fn run(&self, request: &AgentRequest, user_id: &str, session_id: &str) -> Result<Option<Reply>, AgentError> {
        let context = &request.context;
        let token = &context.access_token;
        let body = Run {
            app_name: &self.app_name,
            user_id,
            session_id,
            new_message: Message {
                role: "user",
                parts: [TextPart {
                    text: &request.question,
                }],
            },
            state_delta: json!({
                TOKEN_STATE_KEY: token.expose_secret(),
                HOST_STATE_KEY: context.host.as_str(),
            }),
        };
        let reply = exchange("adk", self.http.post(self.endpoint(&["run"])).json(&body)).await?;
        if reply.status == StatusCode::NOT_FOUND && reply.mentions("session not found") {
            tracing::info!(agent = "adk", session_id, "ADK no longer has the thread's session");
            return Ok(None);
        }
        if !reply.status.is_success() {
            return Err(reply.failure("adk", token));
        }
        Ok(Some(reply))
    }
}

/// What this backend keeps for a thread.
#[derive(Deserialize)]
struct Kept {
    session_id: String,
}

/// The part of ADK's `Session` the bot reads.
#[derive(Deserialize)]
struct Session {
    id: String,
}

/// ADK's `RunAgentRequest` (snake_case; ADK accepts it alongside camelCase).
#[derive(Serialize)]
struct Run<'a> {
    app_name: &'a str,
    user_id: &'a str,
    session_id: &'a str,
    new_message: Message<'a>,
    state_delta: serde_json::Value,
}

/// A `google.genai` `Content` with one text part.
#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    parts: [TextPart<'a>; 1],
}

#[derive(Serialize)]
struct TextPart<'a> {
    text: &'a str,
}

/// The part of an ADK `Event` the bot reads. ADK writes camelCase; snake_case is accepted
/// too, as some deployments serialise without aliases.
#[derive(Deserialize)]
struct Event {
    author: Option<String>,
    content: Option<Content>,
    partial: Option<bool>,
    #[serde(rename = "errorCode", alias = "error_code")]
    error_code: Option<serde_json::Value>,
    #[serde(rename = "errorMessage", alias = "error_message")]
    error_message: Option<String>,
}

#[derive(Deserialize)]
struct Content {
    parts: Option<Vec<Part>>,
}

#[derive(Deserialize)]
struct Part {
    text: Option<String>,
    thought: Option<bool>,
    #[serde(rename = "functionCall", alias = "function_call")]
    function_call: Option<serde_json::Value>,
    #[serde(rename = "functionResponse", alias = "function_response")]
    function_response: Option<serde_json::Value>,
}

impl Event {
    fn parts(&self) -> &[Part] {
        self.content
            .as_ref()
            .and_then(|content| content.parts.as_deref())
            .unwrap_or_default()
    }

    /// ADK's `Event.is_final_response()`, less the long-running-tool cases: an agent's
    /// complete turn that calls no tool.
    fn is_final_agent_response(&self) -> bool {
        self.author.as_deref().is_some_and(|author| author != "user")
            && self.partial != Some(true)
            && !self
                .parts()
                .iter()
                .any(|part| part.function_call.is_some() || part.function_response.is_some())
    }

    /// The event's visible text (thoughts left out), or `None` if there is none.
    fn text(&self) -> Option<String> {
        let texts: Vec<&str> = self
            .parts()
            .iter()
            .filter(|part| part.thought != Some(true))
            .filter_map(|part| part.text.as_deref().map(str::trim))
            .filter(|text| !text.is_empty())
            .collect();
        (!texts.is_empty()).then(|| texts.join("\n\n"))
    }
}

/// The answer in a run's events (see the module docs).
fn answer_of(events: &[Event]) -> Result<String, AgentError> {
    if let Some(text) = events
        .iter()
        .rev()
        .filter(|event| event.is_final_agent_response())
        .find_map(Event::text)
    {
        return Ok(text);
    }
    if let Some(event) = events
        .iter()
        .rev()
        .find(|event| event.error_code.is_some() || event.error_message.is_some())
    {
        tracing::warn!(
            agent = "adk",
            author = event.author.as_deref().unwrap_or_default(),
            error_code = %event.error_code.clone().unwrap_or_default(),
            error_message = event.error_message.as_deref().unwrap_or_default(),
            "ADK reported an error instead of an answer"
        );
        return Err(AgentError::Failed(AGENT_ERROR.into()));
    }
    tracing::warn!(
        agent = "adk",
        events = events.len(),
        "ADK's run has no final text from the agent"
    );
    Err(AgentError::Failed(UNREADABLE.into()))
}

#[async_trait]
impl Agent for Adk {
    fn name(&self) -> &str {
        "your ADK agent"
    }

    async fn answer(&self, request: &AgentRequest, progress: &dyn Progress) -> Result<AgentAnswer, AgentError> {
        progress.working_on("Asking your agent…").await;
        let token = &request.context.access_token;
        let user_id = format!("{}:{}", request.context.team, request.context.user);
        let kept = request
            .conversation
            .clone()
            .and_then(|kept| serde_json::from_value::<Kept>(kept).ok())
            .map(|kept| kept.session_id)
            .filter(|id| !id.is_empty());
        let (mut session_id, mut fresh) = match kept {
            Some(id) => (id, false),
            None => (self.create_session(&user_id, token).await?, true),
        };
        let reply = loop {
            match self.run(request, &user_id, &session_id).await? {
                Some(reply) => break reply,
                None if !fresh => {
                    session_id = self.create_session(&user_id, token).await?;
                    fresh = true;
                }
                None => {
                    tracing::warn!(agent = "adk", session_id, "ADK lost a session it had just created");
                    return Err(AgentError::Failed(UNREADABLE.into()));
                }
            }
        };
        let events: Vec<Event> = reply.json("adk", token)?;
        Ok(AgentAnswer {
            text: answer_of(&events)?,
            conversation: Some(json!({ "session_id": session_id })),
            ..AgentAnswer::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(raw: serde_json::Value) -> Vec<Event> {
        serde_json::from_value(raw).unwrap()
    }

    #[test]
    fn the_answer_is_the_last_final_text_of_an_agent() {
        let run = events(json!([
            {"author": "user", "content": {"role": "user", "parts": [{"text": "question"}]}},
            {"author": "data_agent", "content": {"role": "model", "parts": [
                {"text": "Let me look.", "thought": true},
                {"text": "Checking…"},
                {"functionCall": {"name": "run_sql", "args": {}}}
            ]}},
            {"author": "data_agent", "content": {"role": "user", "parts": [
                {"functionResponse": {"name": "run_sql", "response": {"rows": 3}}}
            ]}},
            {"author": "data_agent", "content": {"role": "model", "parts": [
                {"text": "thinking", "thought": true},
                {"text": "Three rows."},
                {"text": "Nothing else."}
            ]}},
            {"author": "data_agent", "content": {"role": "model", "parts": []}}
        ]));
        assert_eq!(answer_of(&run).unwrap(), "Three rows.\n\nNothing else.");
    }

    #[test]
    fn an_error_event_without_an_answer_is_the_agents_problem() {
        let run = events(json!([{"author": "data_agent", "errorCode": "SAFETY", "errorMessage": "blocked"}]));
        assert_eq!(answer_of(&run), Err(AgentError::Failed(AGENT_ERROR.into())));
        assert_eq!(answer_of(&[]), Err(AgentError::Failed(UNREADABLE.into())));
    }

    #[test]
    fn endpoints_keep_the_base_path_and_escape_segments() {
        let adk = |base: &str| Adk::new(reqwest::Client::new(), Url::parse(base).unwrap(), "app".into());
        assert_eq!(
            adk("https://a.example/").endpoint(&["run"]).as_str(),
            "https://a.example/run"
        );
        assert_eq!(
            adk("https://a.example/adk/")
                .endpoint(&["apps", "app", "users", "T1:U1", "sessions"])
                .as_str(),
            "https://a.example/adk/apps/app/users/T1:U1/sessions"
        );
        assert_eq!(
            adk("https://a.example/adk").endpoint(&["run"]).as_str(),
            "https://a.example/adk/run"
        );
    }
}
