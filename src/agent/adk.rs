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
//! 2. Every question, the first included, is one `POST {AGENT_URL}/run_sse`:
//!
//!    ```json
//!    {
//!      "app_name": "<ADK_APP_NAME>",
//!      "user_id": "T0123ABCD:U0123ABCD",
//!      "session_id": "<id>",
//!      "new_message": { "role": "user", "parts": [ { "text": "<the question>" } ] },
//!      "streaming": true,
//!      "state_delta": {
//!        "temp:databricks_token": "<the asker's short-lived access token>",
//!        "temp:databricks_host": "https://dbc-123.cloud.databricks.com"
//!      }
//!    }
//!    ```
//!
//!    The agent's tools read `tool_context.state["temp:databricks_token"]` and
//!    `["temp:databricks_host"]` and call Databricks as the asker. ADK applies `temp:`
//!    state for the current invocation only and never persists it.
//! 3. ADK streams the run's events as server-sent events, `data: <event JSON>\n\n` each
//!    (`streaming: true` adds `partial` events as the model writes). The answer is the text
//!    of the last event that is a final response of an agent: authored by anything but
//!    `user`, not `partial`, without function calls or responses; `thought` parts are left
//!    out. Several text parts of that event are joined with blank lines.
//!
//!    A `partial` event carries only the words new since the one before, not all so far:
//!    in SSE mode `Gemini.generate_content_async(stream=True)` (google/adk-python
//!    `src/google/adk/models/google_llm.py`, read at commit 7c670f6) marks each streamed
//!    chunk with text `partial` as it comes and adds its text to a running total, which it
//!    yields afterwards as one complete event (before a function call, or at
//!    `finish_reason` STOP); `tests/fixtures/adk/run-sse-streamed.json` shows the same on
//!    the wire. So the bot writes each partial event's text (thoughts left out) as it
//!    arrives ([`Progress::writing`]). Words written before a tool call were shown, so the
//!    answer begins with everything written, turns apart by a blank line, followed by
//!    whatever of the final text was not written.
//! 4. If the kept session is gone (ADK restarted with in-memory sessions, or it expired),
//!    `/run_sse` answers `404` `{"detail": "Session not found…"}` before running anything:
//!    the bot creates a new session and asks once more, once.
//!
//! # Which ADK
//!
//! google-adk (Python) **1.27.0 or later, but not 2.0.x or 2.1.x** ([`supports`]). Read in
//! the released wheels: `BaseSessionService.append_event` first applies `temp:` keys of an
//! event's `state_delta` to the in-memory session (`_apply_temp_state`) in 1.27.0
//! (google/adk-python PR #4501, closing issues #3047 and #3399); before that it dropped
//! them, so the token never reached a tool. `/run_sse` forwards `state_delta` to the runner
//! since 1.7.0. ADK 2.0.0 and 2.1.0 run a root `LlmAgent` on the node runner, which dropped
//! `state_delta` (issue #5763, fixed in 2.2.0 by PR #5767). 1.27.0 itself was yanked from
//! PyPI, so 1.27.1 is the first to install. `GET /version` (1.25.0 and later) tells the
//! version; [`Adk::probe_version`] reads it at start-up and in `check`.
//!
//! # Failures
//!
//! No `Authorization` header is sent to ADK: the token travels only in `state_delta`, so
//! a 401 from ADK is its own gateway refusing the bot, which a renewed Databricks token
//! would not change (a Databricks refusal inside a tool comes back as an error event).
//! Failures before ADK answered are told as for the [`http`](super::external) backend (timeouts
//! and 5xx retried later, 401/403 "your agent refused the request"). Once the stream has
//! begun the agent is acting, so nothing is retried: [`IDLE_TIMEOUT`] without a byte, or a
//! broken connection, is "your agent stopped answering" — asking again could repeat what
//! the agent already did. There is no limit on a run that keeps sending events. A run that
//! ends without a final text is "your agent finished without an answer", or "your agent
//! ran into a problem answering" if ADK reported an error (an event's `errorCode`, or the
//! `{"error": …}` frame ADK sends when the run raised); a stream that is not ADK's events is
//! "your agent sent an answer I could not read".

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::time::timeout;
use url::Url;

use crate::agent::external::{AGENT_ERROR, Reply, STOPPED, TIMED_OUT, UNAVAILABLE, UNREADABLE, exchange, traced};
use crate::agent::sse::{self, Events, Interrupted};
use crate::agent::{Agent, AgentAnswer, AgentError, AgentRequest, Progress};

/// The `state_delta` key carrying the asker's access token.
pub const TOKEN_STATE_KEY: &str = "temp:databricks_token";
/// The `state_delta` key carrying the asker's workspace URL.
pub const HOST_STATE_KEY: &str = "temp:databricks_host";

/// Longest ADK may stay silent: before it answers a request, and between two pieces of a
/// run's stream. A run may take as long as it keeps sending events.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest the start-up version probe waits.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a TCP/TLS connection to ADK may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of one server-sent event (or of an error body) the bot holds.
const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// Said to the asker when a run ended without a final text.
const NO_ANSWER: &str = "your agent finished without an answer";

/// An app on an ADK `api_server` at `url` (see the module docs).
pub struct Adk {
    http: reqwest::Client,
    url: Url,
    app_name: String,
    idle_timeout: Duration,
}

/// The HTTP client for ADK: no redirects (the request carries a token), a connect timeout,
/// and no total timeout, since a run is bounded by [`IDLE_TIMEOUT`] between events instead.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .expect("a reqwest client with rustls builds")
}

impl Adk {
    /// The ADK app `app_name` served at `url`, called with `http` (see [`client`]).
    pub fn new(http: reqwest::Client, url: Url, app_name: String) -> Self {
        Self {
            http,
            url,
            app_name,
            idle_timeout: IDLE_TIMEOUT,
        }
    }

    /// The same app with another idle limit (tests use a short one).
    pub fn with_idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout;
        self
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

    /// What `GET {AGENT_URL}/version` says about the ADK serving this app. Never fails:
    /// anything but a readable version is [`VersionReport::Unknown`].
    pub async fn probe_version(&self) -> VersionReport {
        let call = self.http.get(self.endpoint(&["version"]));
        let reply = match timeout(PROBE_TIMEOUT, exchange("adk", call)).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(error)) => return VersionReport::Unknown(format!("GET /version failed: {error}")),
            Err(_) => return VersionReport::Unknown("GET /version did not answer in time".into()),
        };
        if reply.status == StatusCode::NOT_FOUND {
            return VersionReport::Unknown(
                "ADK has no GET /version (added in google-adk 1.25.0, so this one is probably older)".into(),
            );
        }
        if !reply.status.is_success() {
            return VersionReport::Unknown(format!("GET /version answered {}", reply.status.as_u16()));
        }
        #[derive(Deserialize)]
        struct Served {
            version: String,
        }
        let Ok(served) = reply.json::<Served>("adk", &SecretString::from(String::new())) else {
            return VersionReport::Unknown("GET /version did not name a version".into());
        };
        match parse_version(&served.version) {
            Some(version) if supports(version) => VersionReport::Supported(served.version),
            Some(_) => VersionReport::Unsupported(served.version),
            None => VersionReport::Unknown(format!("GET /version named {:?}", served.version)),
        }
    }

    /// A new session of `user_id` in this app; its id.
    async fn create_session(&self, user_id: &str, token: &SecretString) -> Result<String, AgentError> {
        let url = self.endpoint(&["apps", &self.app_name, "users", user_id, "sessions"]);
        let call = exchange("adk", self.http.post(url).json(&json!({})));
        let Ok(reply) = timeout(self.idle_timeout, call).await else {
            tracing::warn!(agent = "adk", "ADK did not create a session in time");
            return Err(AgentError::transient(TIMED_OUT));
        };
        let reply = reply?;
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

    /// One run of the agent in `session_id`: its answer, or `None` if ADK no longer has
    /// that session.
    async fn run(
        &self,
        request: &AgentRequest,
        user_id: &str,
        session_id: &str,
        progress: &dyn Progress,
    ) -> Result<Option<String>, AgentError> {
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
            // Partial events while the model writes keep a long answer within the idle limit.
            streaming: true,
            state_delta: json!({
                TOKEN_STATE_KEY: token.expose_secret(),
                HOST_STATE_KEY: context.host.as_str(),
            }),
        };
        let call = traced(self.http.post(self.endpoint(&["run_sse"]))).json(&body).send();
        let mut response = match timeout(self.idle_timeout, call).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => return Err(not_started(error)),
            Err(_) => {
                tracing::warn!(agent = "adk", "ADK did not start the run in time");
                return Err(AgentError::transient(TIMED_OUT));
            }
        };
        let status = response.status();
        if !status.is_success() {
            let headers = response.headers().clone();
            let body = self.error_body(&mut response).await;
            if status == StatusCode::NOT_FOUND && body.to_ascii_lowercase().contains("session not found") {
                tracing::info!(agent = "adk", session_id, "ADK no longer has the thread's session");
                return Ok(None);
            }
            return Err(Reply::new(status, headers, body.into_bytes()).failure("adk", token));
        }
        // From here on the agent is running: whatever breaks is not worth a second run.
        let mut events = EventStream::default();
        loop {
            let chunk = match sse::next_chunk(&mut response, self.idle_timeout).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(Interrupted::Broken(error)) => {
                    tracing::warn!(agent = "adk", error = %error.without_url(), events = events.seen, "ADK's stream broke mid-run; not asked again");
                    return Err(AgentError::Failed(STOPPED.into()));
                }
                Err(Interrupted::Idle) => {
                    tracing::warn!(
                        agent = "adk",
                        idle_secs = self.idle_timeout.as_secs_f64(),
                        events = events.seen,
                        "ADK sent nothing for too long mid-run; not asked again, as a second run could repeat what the agent did"
                    );
                    return Err(AgentError::Failed(STOPPED.into()));
                }
            };
            for words in events.feed(&chunk)? {
                progress.writing(&words).await;
            }
        }
        if let Some(words) = events.end()? {
            progress.writing(&words).await;
        }
        events.answer().map(Some)
    }

    /// The start of a refusal's body, read within the idle limit (empty if it cannot be).
    async fn error_body(&self, response: &mut reqwest::Response) -> String {
        let mut body = Vec::new();
        while let Ok(Ok(Some(chunk))) = timeout(self.idle_timeout, response.chunk()).await {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_FRAME_BYTES {
                break;
            }
        }
        String::from_utf8_lossy(&body).into_owned()
    }
}

/// What the start-up probe learned about the ADK behind `AGENT_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionReport {
    /// A google-adk version that gives the agent the asker's token (see the module docs).
    Supported(String),
    /// A google-adk version whose agent would not see the asker's token.
    Unsupported(String),
    /// No version could be read: why.
    Unknown(String),
}

impl VersionReport {
    /// Logs the report once: a warning unless the version is supported.
    pub fn log(&self) {
        match self {
            Self::Supported(version) => tracing::info!(agent = "adk", version, "ADK version supported"),
            Self::Unsupported(version) => tracing::warn!(
                agent = "adk",
                version,
                "this ADK does not give the agent the asker's temp: token; use google-adk 1.27.1 to 1.39.x, or 2.2.0 or later"
            ),
            Self::Unknown(why) => tracing::warn!(
                agent = "adk",
                why,
                "could not tell the ADK version; it needs google-adk 1.27.1 to 1.39.x, or 2.2.0 or later"
            ),
        }
    }
}

impl fmt::Display for VersionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Supported(version) => write!(f, "ok (google-adk {version})"),
            Self::Unsupported(version) => write!(
                f,
                "WARNING: google-adk {version} does not give the agent the asker's token; use 1.27.1 to 1.39.x, or 2.2.0 or later"
            ),
            Self::Unknown(why) => write!(
                f,
                "WARNING: version unknown ({why}); it needs google-adk 1.27.1+ (not 2.0/2.1)"
            ),
        }
    }
}

/// `major.minor.patch` of a google-adk version (`1.27.1`, `2.2.0rc1`); a missing patch is 0.
fn parse_version(version: &str) -> Option<(u64, u64, u64)> {
    let mut numbers = version.trim().trim_start_matches('v').split('.').map(|part| {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u64>().ok()
    });
    let major = numbers.next()??;
    let minor = numbers.next()??;
    let patch = numbers.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

/// Whether google-adk `version` gives the agent `temp:` state from `/run_sse`'s
/// `state_delta` (see the module docs for the sources).
pub fn supports(version: (u64, u64, u64)) -> bool {
    version >= (1, 27, 0) && !((2, 0, 0)..(2, 2, 0)).contains(&version)
}

/// A failure to get any answer from ADK: worth asking again later.
fn not_started(error: reqwest::Error) -> AgentError {
    // The URL may carry the agent's own key in its query: keep it out of the logs.
    let error = error.without_url();
    if error.is_timeout() {
        tracing::warn!(agent = "adk", error = %error, "ADK did not answer in time");
        AgentError::transient(TIMED_OUT)
    } else {
        tracing::warn!(agent = "adk", error = %error, "could not reach ADK");
        AgentError::transient(UNAVAILABLE)
    }
}

/// A run's server-sent events as they arrive, keeping only what the answer needs.
struct EventStream {
    events: Events,
    /// Events read so far.
    seen: usize,
    /// Everything written from partial events, turns apart by a blank line.
    written: String,
    /// Whether the current model turn has written anything.
    turn_wrote: bool,
    /// Where in `written` the current turn's words begin.
    turn_start: usize,
    /// The text of the last final agent response.
    answer: Option<String>,
    /// When its turn wrote, the part of that text its partial events did not write.
    answer_rest: Option<String>,
    /// The last error ADK reported, for the log.
    error: Option<String>,
}

impl Default for EventStream {
    fn default() -> Self {
        Self {
            events: Events::new(MAX_FRAME_BYTES),
            seen: 0,
            written: String::new(),
            turn_wrote: false,
            turn_start: 0,
            answer: None,
            answer_rest: None,
            error: None,
        }
    }
}

impl EventStream {
    /// Takes in `chunk`, reading every event it completes; the prose to show, in order.
    fn feed(&mut self, chunk: &[u8]) -> Result<Vec<String>, AgentError> {
        let events = self.events.feed(chunk).map_err(|_| {
            tracing::warn!(
                agent = "adk",
                limit = MAX_FRAME_BYTES,
                "one of ADK's events is too large"
            );
            AgentError::Failed(UNREADABLE.into())
        })?;
        let mut written = Vec::new();
        for event in events {
            written.extend(self.read(&event.data)?);
        }
        Ok(written)
    }

    /// Reads the last event when the stream ended without the blank line that closes it
    /// (ADK ends every event with one; a last one without it still counts).
    fn end(&mut self) -> Result<Option<String>, AgentError> {
        let events = std::mem::replace(&mut self.events, Events::new(0));
        match events.finish() {
            Some(event) => self.read(&event.data),
            None => Ok(None),
        }
    }

    /// Reads one event's data; the prose it adds, if any.
    fn read(&mut self, data: &str) -> Result<Option<String>, AgentError> {
        let event: Event = serde_json::from_str(data).map_err(|error| {
            tracing::warn!(agent = "adk", error = %error, "one of ADK's events is not the JSON expected");
            AgentError::Failed(UNREADABLE.into())
        })?;
        self.seen += 1;
        if let Some(error) = event.error_report() {
            self.error = Some(error);
            return Ok(None);
        }
        if event.partial == Some(true) {
            let words = event.partial_text();
            if words.is_empty() || !event.is_agents() {
                return Ok(None);
            }
            let piece = if !self.turn_wrote && !self.written.is_empty() {
                format!("\n\n{words}")
            } else {
                words
            };
            if !self.turn_wrote {
                self.turn_start = self.written.len() + piece.len() - piece.trim_start_matches('\n').len();
            }
            self.turn_wrote = true;
            self.written.push_str(&piece);
            return Ok(Some(piece));
        }
        // A complete event ends the model's turn: the aggregate of its partial events, a
        // tool call, or a tool's answer.
        if event.is_final_agent_response()
            && let Some(text) = event.text()
        {
            // ADK's aggregate is the partial events' words joined; whatever it holds
            // beyond them still belongs to the answer.
            let shown = self.written[self.turn_start..].trim();
            self.answer_rest = self.turn_wrote.then(|| match text.strip_prefix(shown) {
                Some(rest) => rest.to_owned(),
                None => format!("\n\n{text}"),
            });
            self.answer = Some(text);
        }
        self.turn_wrote = false;
        Ok(None)
    }

    /// The run's answer once its stream has ended (see the module docs).
    fn answer(self) -> Result<String, AgentError> {
        if let Some(answer) = self.answer {
            return Ok(match (self.written.is_empty(), self.answer_rest) {
                (true, _) => answer,
                (false, Some(rest)) => self.written + &rest,
                (false, None) => format!("{}\n\n{answer}", self.written),
            });
        }
        if let Some(error) = self.error {
            tracing::warn!(agent = "adk", error, "ADK reported an error instead of an answer");
            return Err(AgentError::Failed(AGENT_ERROR.into()));
        }
        tracing::warn!(
            agent = "adk",
            events = self.seen,
            "ADK's run ended without a final text from the agent"
        );
        Err(AgentError::Failed(NO_ANSWER.into()))
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
    streaming: bool,
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
    /// The whole frame when the run raised: `{"error": "<exception>"}`.
    error: Option<serde_json::Value>,
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

    /// Whether an agent wrote this event (not the person's question).
    fn is_agents(&self) -> bool {
        self.author.as_deref().is_some_and(|author| author != "user")
    }

    /// A partial event's new words, as they are: its text parts that are not thoughts.
    fn partial_text(&self) -> String {
        self.parts()
            .iter()
            .filter(|part| part.thought != Some(true))
            .filter_map(|part| part.text.as_deref())
            .collect()
    }

    /// ADK's `Event.is_final_response()`, less the long-running-tool cases: an agent's
    /// complete turn that calls no tool.
    fn is_final_agent_response(&self) -> bool {
        self.is_agents()
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

    /// The error this event reports, for the log: an `errorCode`/`errorMessage`, the
    /// `{"error": …}` frame, or the `system` event newer ADK sends when the run raised.
    fn error_report(&self) -> Option<String> {
        if let Some(error) = &self.error {
            return Some(error.to_string());
        }
        if self.error_code.is_some() || self.error_message.is_some() {
            return Some(format!(
                "{} {}",
                self.error_code.clone().unwrap_or_default(),
                self.error_message.as_deref().unwrap_or_default()
            ));
        }
        if self.author.as_deref() == Some("system") {
            return self.text().filter(|text| text.starts_with("Error:"));
        }
        None
    }
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
        let text = loop {
            match self.run(request, &user_id, &session_id, progress).await? {
                Some(text) => break text,
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
        Ok(AgentAnswer {
            text,
            conversation: Some(json!({ "session_id": session_id })),
            ..AgentAnswer::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a stream of `events`, framed as ADK frames them, writes and answers.
    fn streamed_writing(events: serde_json::Value) -> (Vec<String>, Result<String, AgentError>) {
        let mut stream = EventStream::default();
        let mut written = Vec::new();
        for event in events.as_array().unwrap() {
            match stream.feed(format!("data: {event}\n\n").as_bytes()) {
                Ok(words) => written.extend(words),
                Err(error) => return (written, Err(error)),
            }
        }
        (written, stream.answer())
    }

    /// What a stream of `events`, framed as ADK frames them, answers.
    fn streamed(events: serde_json::Value) -> Result<String, AgentError> {
        streamed_writing(events).1
    }

    #[test]
    fn the_answer_is_the_last_final_text_of_an_agent() {
        let run = json!([
            {"author": "user", "content": {"role": "user", "parts": [{"text": "question"}]}},
            {"author": "data_agent", "content": {"role": "model", "parts": [
                {"text": "Let me look.", "thought": true},
                {"text": "Checking…"},
                {"functionCall": {"name": "run_sql", "args": {}}}
            ]}},
            {"author": "data_agent", "content": {"role": "user", "parts": [
                {"functionResponse": {"name": "run_sql", "response": {"rows": 3}}}
            ]}},
            {"author": "data_agent", "partial": true, "content": {"role": "model", "parts": [{"text": "Three"}]}},
            {"author": "data_agent", "content": {"role": "model", "parts": [
                {"text": "thinking", "thought": true},
                {"text": "Three rows."},
                {"text": "Nothing else."}
            ]}},
            {"author": "data_agent", "content": {"role": "model", "parts": []}}
        ]);
        assert_eq!(streamed(run).unwrap(), "Three rows.\n\nNothing else.");
    }

    #[test]
    fn an_error_without_an_answer_is_the_agents_problem_and_silence_is_no_answer() {
        let agent_error = Err(AgentError::Failed(AGENT_ERROR.into()));
        assert_eq!(
            streamed(json!([{"author": "data_agent", "errorCode": "SAFETY", "errorMessage": "blocked"}])),
            agent_error
        );
        assert_eq!(streamed(json!([{"error": "boom"}])), agent_error);
        assert_eq!(
            streamed(json!([{"author": "system", "content": {"role": "model", "parts": [{"text": "Error: boom"}]}}])),
            agent_error
        );
        let partial_only = json!([{"author": "data_agent", "partial": true, "content": {"parts": [{"text": "Thr"}]}}]);
        assert_eq!(streamed(partial_only), Err(AgentError::Failed(NO_ANSWER.into())));
        assert_eq!(streamed(json!([])), Err(AgentError::Failed(NO_ANSWER.into())));
    }

    #[test]
    fn events_split_across_chunks_or_ended_with_crlf_are_read_whole() {
        let event = json!({"author": "a", "content": {"parts": [{"text": "Whole."}]}}).to_string();
        let wire = format!(": comment\r\n\r\ndata: {event}\r\n\r\n");
        let mut stream = EventStream::default();
        for byte in wire.as_bytes() {
            stream.feed(std::slice::from_ref(byte)).unwrap();
        }
        assert_eq!(stream.end().unwrap(), None);
        assert_eq!(stream.answer().unwrap(), "Whole.");
        let mut unterminated = EventStream::default();
        unterminated.feed(format!("data: {event}").as_bytes()).unwrap();
        assert_eq!(unterminated.end().unwrap(), None);
        assert_eq!(unterminated.answer().unwrap(), "Whole.");
        let mut garbage = EventStream::default();
        assert_eq!(
            garbage.feed(b"data: <html>\n\n"),
            Err(AgentError::Failed(UNREADABLE.into()))
        );
    }

    // A turn that wrote and then called a tool was shown: the answer keeps its words.
    #[test]
    fn partial_words_are_written_as_they_come_and_the_answer_begins_with_all_of_them() {
        let partial = |text: &str| json!({"author": "data_agent", "partial": true, "content": {"role": "model", "parts": [{"text": text}]}});
        let whole =
            |text: &str| json!({"author": "data_agent", "content": {"role": "model", "parts": [{"text": text}]}});
        let run = json!([
            {"author": "user", "content": {"role": "user", "parts": [{"text": "question"}]}},
            {"author": "data_agent", "partial": true, "content": {"role": "model", "parts": [{"text": "pondering", "thought": true}]}},
            partial("Let me "),
            partial("count."),
            whole("Let me count."),
            {"author": "data_agent", "content": {"role": "model", "parts": [{"functionCall": {"name": "run_sql", "args": {}}}]}},
            {"author": "data_agent", "content": {"role": "user", "parts": [{"functionResponse": {"name": "run_sql", "response": {}}}]}},
            partial("Three "),
            partial("rows."),
            whole("Three rows.")
        ]);
        let (written, answer) = streamed_writing(run);
        assert_eq!(written, ["Let me ", "count.", "\n\nThree ", "rows."]);
        assert_eq!(answer.unwrap(), "Let me count.\n\nThree rows.");

        let unstreamed_ending = json!([partial("Looking."), whole("Looking."), whole("Done.")]);
        assert_eq!(streamed(unstreamed_ending).unwrap(), "Looking.\n\nDone.");
    }

    #[test]
    fn adk_versions_from_1_27_are_supported_except_2_0_and_2_1() {
        let supported = |v: &str| supports(parse_version(v).unwrap());
        assert!(supported("1.27.0") && supported("1.27.1") && supported("1.39.1"));
        assert!(supported("2.2.0") && supported("2.13.0") && supported("10.0"));
        assert!(!supported("1.26.0") && !supported("1.4.2") && !supported("0.5.0"));
        assert!(!supported("2.0.0") && !supported("2.1.0") && !supported("2.0.0rc1"));
        assert_eq!(parse_version("1.27.1"), Some((1, 27, 1)));
        assert_eq!(parse_version("2.2.0rc1"), Some((2, 2, 0)));
        assert_eq!(parse_version("latest"), None);
        assert_eq!(parse_version("1"), None);
    }

    #[test]
    fn endpoints_keep_the_base_path_and_escape_segments() {
        let adk = |base: &str| Adk::new(reqwest::Client::new(), Url::parse(base).unwrap(), "app".into());
        assert_eq!(
            adk("https://a.example/").endpoint(&["run_sse"]).as_str(),
            "https://a.example/run_sse"
        );
        assert_eq!(
            adk("https://a.example/adk/")
                .endpoint(&["apps", "app", "users", "T1:U1", "sessions"])
                .as_str(),
            "https://a.example/adk/apps/app/users/T1:U1/sessions"
        );
        assert_eq!(
            adk("https://a.example/adk").endpoint(&["run_sse"]).as_str(),
            "https://a.example/adk/run_sse"
        );
    }
}
