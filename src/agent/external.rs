//! The company's own agent over plain HTTP.
//!
//! # The contract
//!
//! For every question the bot sends one `POST` to `AGENT_URL` (exactly that URL, no path
//! added) with `Content-Type: application/json` and
//! `Authorization: Bearer <the asker's short-lived Databricks access token>`. The agent
//! calls Databricks with that token, so it sees what the asker may see and nothing more; it
//! must not store it (it expires within the hour anyway).
//!
//! ```json
//! {
//!   "question": "How many orders did we ship last week?",
//!   "user": {
//!     "slack_team_id": "T0123ABCD",
//!     "slack_user_id": "U0123ABCD",
//!     "databricks_user_id": "1234567890",
//!     "databricks_user_name": "ada@example.com",
//!     "databricks_host": "https://dbc-123.cloud.databricks.com"
//!   },
//!   "thread": { "channel": "C0123ABCD", "thread_ts": "1712345678.000100" },
//!   "conversation": null
//! }
//! ```
//!
//! The request also carries an `Idempotency-Key` header: the same on every try of one
//! question (a retry after a timeout, a 5xx, or a refreshed token), different for every
//! question. An agent that acts (writes, sends, orders) should do so once per key.
//!
//! `thread.thread_ts` is `null` for a direct message outside a thread. `conversation` is
//! `null` on the first question in a thread; on a follow-up from the same person in the
//! same thread it is whatever the agent returned as `conversation` last time, so the agent
//! can keep its own thread state through the bot (an id, recent turns — never a secret:
//! the bot stores it in its database).
//!
//! A `2xx` answer is a JSON object:
//!
//! ```json
//! {
//!   "text": "We shipped 1,234 orders.",
//!   "blocks": [ { "type": "section", "text": { "type": "mrkdwn", "text": "*1,234*" } } ],
//!   "suggestions": ["And the week before?"],
//!   "conversation": { "turns": 3 }
//! }
//! ```
//!
//! - `text` (required, not blank) is the answer; it is also Slack's notification text.
//! - `blocks` (optional) is Slack Block Kit posted with it; at most [`MAX_BLOCKS`] blocks
//!   of kinds Slack knows. Blocks that cannot be read are dropped as a whole (logged) and
//!   `text` is still posted.
//! - `suggestions` (optional) are follow-up questions, offered as buttons.
//! - `conversation` (optional, any JSON up to [`MAX_CONVERSATION_BYTES`]) is handed back
//!   on the next question in the thread; absent or `null` forgets it.
//!
//! Anything else is an error, told to the asker in plain words:
//!
//! | The agent answers | The asker is told |
//! |---|---|
//! | a timeout ([`crate::agent::EXTERNAL_AGENT_TIMEOUT`]), or `504` | "your agent did not answer in time" (retried later) |
//! | no connection, `429`, other `5xx` | "your agent is unavailable right now" (retried later; `Retry-After` seconds honoured) |
//! | `401` with `WWW-Authenticate: Bearer error="invalid_token"` | nothing yet: Databricks refused the token, so the bot refreshes it and sends the request once more (same `Idempotency-Key`) |
//! | any other `401` or `403` | "your agent refused the request" |
//! | any other status | "your agent could not handle the request" |
//! | `2xx` that is not such JSON, or without `text` | "your agent sent an answer I could not read" |
//!
//! # Streaming
//!
//! The request says `Accept: application/json, text/event-stream`. An agent that wants its
//! answer shown as it is written answers `2xx` with `Content-Type: text/event-stream` and
//! sends server-sent events, each an `event:` name and one `data:` line of JSON, ended by a
//! blank line:
//!
//! ```text
//! event: status
//! data: {"status": "Counting orders…"}
//!
//! event: delta
//! data: {"text": "We shipped "}
//!
//! event: delta
//! data: {"text": "1,234 orders."}
//!
//! event: answer
//! data: {"suggestions": ["And the week before?"], "conversation": {"turns": 3}}
//!
//! ```
//!
//! - `delta` `{"text": "…"}`: the next piece of the answer's text, shown as it comes.
//! - `status` `{"status": "…"}`: what the agent is doing, shown while the person waits.
//! - `answer`: the same JSON object as a whole answer; it ends the stream. Its `text` may
//!   be left out, and the deltas are the text. If given, it should begin with everything
//!   the deltas wrote (the rest is added after them); one that does not is added after
//!   them and a blank line, so nothing already shown is taken back.
//! - `error` `{"error": "<said to the person>", "retryable": false}`: ends the stream with
//!   the agent's own words (at most 500 characters); retried later only if `retryable`.
//! - Any other event (or data without a name) is ignored, so the format can grow.
//!
//! Once the stream has begun the agent may have acted, so nothing is asked again: a stream
//! that ends without `answer`, or sends nothing for [`IDLE_TIMEOUT`], is "your agent
//! stopped answering". The whole answer, streamed or not, still has
//! [`crate::agent::EXTERNAL_AGENT_TIMEOUT`].
//!
//! The `invalid_token` signal is RFC 6750's (§3.1) for "the bearer token you sent is
//! expired or revoked": the bearer the bot sends *is* the Databricks token, so an agent
//! whose Databricks call was refused with 401 passes that on this way. Without it a 401 is
//! the agent refusing the bot (say, its own gateway), which a fresh Databricks token would
//! not change.
//!
//! The transport rules here (timeouts, status meanings, bounded bodies, redacted logs) are
//! shared with the [`adk`](super::adk) backend.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, RETRY_AFTER, WWW_AUTHENTICATE};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use slack_morphism::prelude::SlackBlock;
use url::Url;

use crate::agent::sse::{self, Event, Events, Interrupted};
use crate::agent::{Agent, AgentAnswer, AgentError, AgentRequest, Progress};
use crate::telemetry;

/// Said to the asker when the agent is down, overloaded or unreachable.
pub(crate) const UNAVAILABLE: &str = "your agent is unavailable right now";
/// Said to the asker when the agent took longer than the client's timeout.
pub(crate) const TIMED_OUT: &str = "your agent did not answer in time";
/// Said to the asker when the agent answered 401/403 (the agent refusing, not Databricks).
pub(crate) const REFUSED: &str = "your agent refused the request";
/// Said to the asker for any other unexpected status.
pub(crate) const NOT_HANDLED: &str = "your agent could not handle the request";
/// Said to the asker when a success status came with a body we cannot use.
pub(crate) const UNREADABLE: &str = "your agent sent an answer I could not read";
/// Said to the asker when the agent reports an error without words of its own for them.
pub(crate) const AGENT_ERROR: &str = "your agent ran into a problem answering";
/// Said to the asker when a streamed answer went quiet, broke, or ended unfinished: the
/// agent may have acted, so it is not asked again.
pub(crate) const STOPPED: &str = "your agent stopped answering";
/// Longest a streamed answer may go without a byte.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest error message of the agent's passed on to the asker, in characters.
const MAX_ERROR_CHARS: usize = 500;

/// The most of an agent's answer the bot reads; a larger one is refused as unreadable.
const MAX_REPLY_BYTES: usize = 4 * 1024 * 1024;
/// Characters of an error body kept in a log line.
const LOG_EXCERPT_CHARS: usize = 300;
/// Slack posts at most 50 blocks in one message.
pub const MAX_BLOCKS: usize = 50;
/// The header naming one question across its tries.
const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
/// The largest `conversation` kept for the next question (serialised JSON); larger ones are
/// dropped with a warning so a runaway agent cannot bloat the bot's database.
pub const MAX_CONVERSATION_BYTES: usize = 64 * 1024;

/// The company's agent behind `AGENT_URL`, asked as the person (see the module docs).
pub struct HttpAgent {
    http: reqwest::Client,
    url: Url,
    idle_timeout: Duration,
}

impl HttpAgent {
    /// An agent at `url`, called with `http` (which carries the timeouts and must not
    /// follow redirects: the request carries a bearer token).
    pub fn new(http: reqwest::Client, url: Url) -> Self {
        Self {
            http,
            url,
            idle_timeout: IDLE_TIMEOUT,
        }
    }

    /// The same agent with another idle limit for streamed answers (tests use a short one).
    pub fn with_idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// A streamed answer (see the module docs), read event by event within the idle limit.
    async fn read_stream(
        &self,
        mut response: reqwest::Response,
        progress: &dyn Progress,
    ) -> Result<AgentAnswer, AgentError> {
        let mut events = Events::new(MAX_REPLY_BYTES);
        let mut stream = Streamed::default();
        loop {
            let chunk = match sse::next_chunk(&mut response, self.idle_timeout).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(Interrupted::Idle) => {
                    tracing::warn!(
                        agent = "http",
                        idle_secs = self.idle_timeout.as_secs_f64(),
                        "the agent sent nothing for too long mid-answer; not asked again, as it may have acted"
                    );
                    return Err(AgentError::Failed(STOPPED.into()));
                }
                Err(Interrupted::Broken(error)) => {
                    let error = error.without_url();
                    tracing::warn!(agent = "http", error = %error, "the agent's stream broke mid-answer; not asked again");
                    let said = if error.is_timeout() { TIMED_OUT } else { STOPPED };
                    return Err(AgentError::Failed(said.into()));
                }
            };
            let read = events.feed(&chunk).map_err(|_| {
                tracing::warn!(
                    agent = "http",
                    limit = MAX_REPLY_BYTES,
                    "one of the agent's events is too large"
                );
                AgentError::Failed(UNREADABLE.into())
            })?;
            for event in read {
                if let Some(outcome) = stream.take(event, progress).await {
                    return outcome;
                }
            }
        }
        if let Some(event) = events.finish()
            && let Some(outcome) = stream.take(event, progress).await
        {
            return outcome;
        }
        tracing::warn!(agent = "http", "the agent's stream ended without an answer event");
        Err(AgentError::Failed(STOPPED.into()))
    }
}

/// A streamed answer as its events arrive.
#[derive(Default)]
struct Streamed {
    /// Every `delta` so far: the start of the answer's text.
    written: String,
}

impl Streamed {
    /// Reads one event; the outcome once the stream has one (an `answer` or an `error`).
    async fn take(&mut self, event: Event, progress: &dyn Progress) -> Option<Result<AgentAnswer, AgentError>> {
        match event.name.as_deref() {
            Some("delta") => {
                let delta: Delta = match data_of(&event) {
                    Ok(delta) => delta,
                    Err(error) => return Some(Err(error)),
                };
                if self.written.len() + delta.text.len() > MAX_REPLY_BYTES {
                    tracing::warn!(
                        agent = "http",
                        limit = MAX_REPLY_BYTES,
                        "the agent's answer is too large"
                    );
                    return Some(Err(AgentError::Failed(UNREADABLE.into())));
                }
                self.written.push_str(&delta.text);
                progress.writing(&delta.text).await;
                None
            }
            Some("status") => {
                match data_of::<Status>(&event) {
                    Ok(status) => progress.working_on(status.status.trim()).await,
                    Err(error) => return Some(Err(error)),
                }
                None
            }
            Some("answer") => Some(data_of::<Answer>(&event).and_then(|answer| {
                let text = streamed_text(&self.written, answer.text.as_deref()).ok_or_else(|| {
                    tracing::warn!(agent = "http", "the agent's streamed answer has no text");
                    AgentError::Failed(UNREADABLE.into())
                })?;
                Ok(answer_of(answer, text))
            })),
            Some("error") => Some(Err(match data_of::<Failure>(&event) {
                Ok(failure) => failure.said(),
                Err(error) => error,
            })),
            // Events this bot does not know yet (or plain `data:` ones) are left for later.
            _ => None,
        }
    }
}

/// An event's data as `T`, or "could not read" (logged).
fn data_of<T: DeserializeOwned>(event: &Event) -> Result<T, AgentError> {
    serde_json::from_str(&event.data).map_err(|error| {
        tracing::warn!(agent = "http", event = ?event.name, error = %error, "one of the agent's events is not the JSON expected");
        AgentError::Failed(UNREADABLE.into())
    })
}

/// A streamed answer's text: what the deltas wrote, then whatever the `answer` event's
/// `text` adds. A `text` that does not begin with the written words contradicts what was
/// shown, so it follows them after a blank line rather than replacing them. `None` if
/// there are no words at all.
fn streamed_text(written: &str, text: Option<&str>) -> Option<String> {
    let text = text.unwrap_or_default();
    let whole = if written.is_empty() {
        text.trim().to_owned()
    } else {
        match text.strip_prefix(written) {
            Some(rest) => format!("{written}{}", rest.trim_end()),
            None if text.trim().is_empty() => written.to_owned(),
            None => format!("{written}\n\n{}", text.trim()),
        }
    };
    (!whole.trim().is_empty()).then_some(whole)
}

/// `data` of an `event: delta`.
#[derive(Deserialize)]
struct Delta {
    text: String,
}

/// `data` of an `event: status`.
#[derive(Deserialize)]
struct Status {
    status: String,
}

/// `data` of an `event: error`.
#[derive(Deserialize)]
struct Failure {
    error: Option<String>,
    #[serde(default)]
    retryable: bool,
}

impl Failure {
    /// What the asker is told: the agent's own words (bounded), later again if it says so.
    fn said(self) -> AgentError {
        let words: String = self
            .error
            .as_deref()
            .map(str::trim)
            .filter(|words| !words.is_empty())
            .unwrap_or(AGENT_ERROR)
            .chars()
            .take(MAX_ERROR_CHARS)
            .collect();
        tracing::warn!(
            agent = "http",
            retryable = self.retryable,
            "the agent reported an error mid-answer"
        );
        if self.retryable {
            AgentError::transient(words)
        } else {
            AgentError::Failed(words)
        }
    }
}

/// What the agent is sent.
#[derive(Serialize)]
struct Question<'a> {
    question: &'a str,
    user: Asker<'a>,
    thread: Where<'a>,
    conversation: Option<&'a serde_json::Value>,
}

#[derive(Serialize)]
struct Asker<'a> {
    slack_team_id: &'a str,
    slack_user_id: &'a str,
    databricks_user_id: &'a str,
    databricks_user_name: &'a str,
    databricks_host: &'a str,
}

#[derive(Serialize)]
struct Where<'a> {
    channel: &'a str,
    thread_ts: Option<&'a str>,
}

/// What the agent answers. `blocks` and `suggestions` stay raw so that a bad one costs only
/// itself, not the whole answer.
#[derive(Deserialize)]
struct Answer {
    text: Option<String>,
    blocks: Option<serde_json::Value>,
    suggestions: Option<serde_json::Value>,
    conversation: Option<serde_json::Value>,
}

#[async_trait]
impl Agent for HttpAgent {
    fn name(&self) -> &str {
        "your agent"
    }

    async fn answer(&self, request: &AgentRequest, progress: &dyn Progress) -> Result<AgentAnswer, AgentError> {
        progress.working_on("Asking your agent…").await;
        let context = &request.context;
        let question = Question {
            question: &request.question,
            user: Asker {
                slack_team_id: context.team.as_str(),
                slack_user_id: context.user.as_str(),
                databricks_user_id: &context.databricks_user_id,
                databricks_user_name: &context.databricks_user_name,
                databricks_host: context.host.as_str(),
            },
            thread: Where {
                channel: &request.thread.channel,
                thread_ts: request.thread.thread_ts.as_deref(),
            },
            conversation: request.conversation.as_ref(),
        };
        let bearer = context.bearer();
        let (mut token, version) = bearer.current();
        let mut renewed = false;
        let reply = loop {
            let call = traced(self.http.post(self.url.clone()))
                .bearer_auth(token.expose_secret())
                .header(IDEMPOTENCY_KEY, &request.key)
                .header(ACCEPT, "application/json, text/event-stream")
                .json(&question);
            let response = call.send().await.map_err(|error| transport_error("http", error))?;
            if response.status().is_success() && is_event_stream(response.headers()) {
                return self.read_stream(response, progress).await;
            }
            let reply = Reply::read("http", response).await?;
            if reply.status == StatusCode::UNAUTHORIZED && says_invalid_token(&reply.headers) {
                tracing::info!(agent = "http", "the agent says Databricks refused the access token");
                // Sent once more with a renewed token and the same key.
                if !renewed && let Some(fresh) = bearer.after_refusal(version).await {
                    renewed = true;
                    token = fresh;
                    continue;
                }
                return Err(AgentError::Unauthorized);
            }
            break reply;
        };
        if !reply.status.is_success() {
            return Err(reply.failure("http", &token));
        }
        let answer: Answer = reply.json("http", &token)?;
        let text = answer.text.as_deref().map(str::trim).unwrap_or_default();
        if text.is_empty() {
            tracing::warn!(agent = "http", "the agent's answer has no text");
            return Err(AgentError::Failed(UNREADABLE.into()));
        }
        let text = text.to_owned();
        Ok(answer_of(answer, text))
    }
}

/// The answer with `text` and the rest of what the agent sent, each part checked.
fn answer_of(answer: Answer, text: String) -> AgentAnswer {
    AgentAnswer {
        text,
        blocks: answer.blocks.map(blocks).unwrap_or_default(),
        suggestions: answer.suggestions.map(suggestions).unwrap_or_default(),
        conversation: answer.conversation.and_then(conversation),
        ..AgentAnswer::default()
    }
}

/// Whether the agent answered with server-sent events.
fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().to_ascii_lowercase().starts_with("text/event-stream"))
}

/// Whether a 401 carries RFC 6750's `error="invalid_token"` for the bearer we sent.
fn says_invalid_token(headers: &HeaderMap) -> bool {
    headers.get_all(WWW_AUTHENTICATE).iter().any(|value| {
        value.to_str().is_ok_and(|value| {
            let value = value.trim_start();
            value
                .get(..6)
                .is_some_and(|scheme| scheme.eq_ignore_ascii_case("bearer"))
                && value
                    .to_ascii_lowercase()
                    .replace(' ', "")
                    .contains("error=\"invalid_token\"")
        })
    })
}

/// The agent's Block Kit, or none at all if any block is not one Slack would accept: a
/// half-kept layout reads worse than the plain text.
fn blocks(raw: serde_json::Value) -> Vec<SlackBlock> {
    let parsed: Vec<SlackBlock> = match serde_json::from_value(raw) {
        Ok(parsed) => parsed,
        Err(error) => {
            tracing::warn!(agent = "http", error = %error, "the agent's blocks are not a list of blocks; posting its text only");
            return Vec::new();
        }
    };
    // slack-morphism keeps any block it cannot model as `Unknown` rather than failing, but
    // Slack refuses a message with such a block, so one bad block spoils them all.
    if let Some(index) = parsed.iter().position(|block| matches!(block, SlackBlock::Unknown(_))) {
        tracing::warn!(
            agent = "http",
            index,
            "one of the agent's blocks is not valid Block Kit; posting its text only"
        );
        return Vec::new();
    }
    // A button or menu of the agent's would be clicked at *this* bot, which would act on
    // it as the person who clicked (and could collide with our own action ids).
    if let Some(index) = parsed.iter().position(is_interactive) {
        tracing::warn!(
            agent = "http",
            index,
            "one of the agent's blocks is interactive; posting its text only"
        );
        return Vec::new();
    }
    // Slack refuses a whole message for one over-long text, losing the answer with it.
    if let Some(index) = parsed.iter().position(|block| !within_text_limits(block)) {
        tracing::warn!(
            agent = "http",
            index,
            "one of the agent's blocks has a text longer than Slack allows; posting its text only"
        );
        return Vec::new();
    }
    if markdown_characters(&parsed) > MARKDOWN_BLOCK_LIMIT {
        tracing::warn!(
            agent = "http",
            "the agent's markdown blocks hold more text than Slack takes in one message; posting its text only"
        );
        return Vec::new();
    }
    if parsed.len() > MAX_BLOCKS {
        tracing::warn!(
            agent = "http",
            count = parsed.len(),
            "the agent sent more blocks than Slack posts; posting its text only"
        );
        return Vec::new();
    }
    parsed
}

/// Characters a `markdown` block may carry (its one text), against 3000 for other texts.
/// Slack's reference gives 12,000 per block; a guide reads it as 12,000 for all of a
/// message's markdown blocks together (unconfirmed), so both are held to.
const MARKDOWN_BLOCK_LIMIT: usize = 12_000;

/// Whether every text in `block` is within Slack's limits: 12,000 characters in a
/// `markdown` block, 150 in a header, 3000 for section and context texts.
fn within_text_limits(block: &SlackBlock) -> bool {
    fn texts_fit(value: &serde_json::Value, limit: usize) -> bool {
        match value {
            serde_json::Value::Object(map) => map.iter().all(|(key, value)| match value {
                serde_json::Value::String(text) if key == "text" => text.chars().count() <= limit,
                other => texts_fit(other, limit),
            }),
            serde_json::Value::Array(items) => items.iter().all(|item| texts_fit(item, limit)),
            _ => true,
        }
    }
    let limit = match block {
        SlackBlock::Header(_) => 150,
        SlackBlock::Markdown(_) => MARKDOWN_BLOCK_LIMIT,
        _ => 3000,
    };
    serde_json::to_value(block).is_ok_and(|json| texts_fit(&json, limit))
}

/// Characters in all of `blocks`' markdown blocks together.
fn markdown_characters(blocks: &[SlackBlock]) -> usize {
    blocks
        .iter()
        .filter_map(|block| match block {
            SlackBlock::Markdown(markdown) => Some(markdown.text.chars().count()),
            _ => None,
        })
        .sum()
}

/// Whether `block` holds anything a person can click or fill in.
fn is_interactive(block: &SlackBlock) -> bool {
    let json = serde_json::to_string(block).unwrap_or_default();
    [
        "\"action_id\"",
        "\"type\":\"actions\"",
        "\"type\":\"input\"",
        "\"accessory\"",
    ]
    .iter()
    .any(|marker| json.contains(marker))
}

/// The agent's follow-up questions, blank ones left out.
fn suggestions(raw: serde_json::Value) -> Vec<String> {
    match serde_json::from_value::<Vec<String>>(raw) {
        Ok(list) => list
            .into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        Err(error) => {
            tracing::warn!(agent = "http", error = %error, "the agent's suggestions are not a list of strings; ignored");
            Vec::new()
        }
    }
}

/// The agent's thread state to hand back next time, unless it is `null` or too large.
fn conversation(raw: serde_json::Value) -> Option<serde_json::Value> {
    if raw.is_null() {
        return None;
    }
    let size = serde_json::to_string(&raw).map_or(usize::MAX, |s| s.len());
    if size > MAX_CONVERSATION_BYTES {
        tracing::warn!(
            agent = "http",
            size,
            limit = MAX_CONVERSATION_BYTES,
            "the agent's conversation state is too large to keep; the next question starts without it"
        );
        return None;
    }
    Some(raw)
}

/// `call` with the W3C `traceparent` of the current span when traces are exported, so
/// the company's agent can continue the question's trace.
pub(crate) fn traced(call: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match telemetry::traceparent() {
        Some(traceparent) => call.header(telemetry::TRACEPARENT, traceparent),
        None => call,
    }
}

/// A whole, size-bounded answer from the company's agent, whatever its status.
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    body: Vec<u8>,
}

/// Sends `call` and reads the answer, mapping what went wrong on the way (no connection, a
/// timeout, a body too large) to what the asker is told. `agent` names the backend in logs.
pub(crate) async fn exchange(agent: &'static str, call: reqwest::RequestBuilder) -> Result<Reply, AgentError> {
    let response = traced(call)
        .send()
        .await
        .map_err(|error| transport_error(agent, error))?;
    Reply::read(agent, response).await
}

impl Reply {
    /// The whole of `response`, bounded.
    async fn read(agent: &'static str, mut response: reqwest::Response) -> Result<Self, AgentError> {
        let status = response.status();
        let headers = response.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|error| transport_error(agent, error))? {
            if body.len() + chunk.len() > MAX_REPLY_BYTES {
                tracing::warn!(
                    agent,
                    status = status.as_u16(),
                    limit = MAX_REPLY_BYTES,
                    "the agent's answer is too large"
                );
                return Err(AgentError::Failed(UNREADABLE.into()));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Reply { status, headers, body })
    }
}

fn transport_error(agent: &'static str, error: reqwest::Error) -> AgentError {
    // The URL may carry the agent's own key in its query: keep it out of the logs.
    let error = error.without_url();
    if error.is_timeout() {
        tracing::warn!(agent, error = %error, "the agent did not answer in time");
        AgentError::transient(TIMED_OUT)
    } else {
        tracing::warn!(agent, error = %error, "could not reach the agent");
        AgentError::transient(UNAVAILABLE)
    }
}

impl Reply {
    /// A reply read some other way (ADK's stream, when it answers an error status).
    pub(crate) fn new(status: StatusCode, headers: HeaderMap, body: Vec<u8>) -> Self {
        Self { status, headers, body }
    }

    /// The body as `T`, or "could not read" (logged).
    pub(crate) fn json<T: DeserializeOwned>(&self, agent: &'static str, token: &SecretString) -> Result<T, AgentError> {
        serde_json::from_slice(&self.body).map_err(|error| {
            tracing::warn!(
                agent,
                error = %error,
                body = %self.excerpt(token),
                "the agent's answer is not the JSON expected"
            );
            AgentError::Failed(UNREADABLE.into())
        })
    }

    /// What a non-success status means for the asker (logged with the start of the body).
    pub(crate) fn failure(&self, agent: &'static str, token: &SecretString) -> AgentError {
        tracing::warn!(
            agent,
            status = self.status.as_u16(),
            body = %self.excerpt(token),
            "the agent answered with an error status"
        );
        match self.status.as_u16() {
            504 => AgentError::Transient {
                reason: TIMED_OUT.into(),
                retry_after: self.retry_after(),
            },
            429 | 500..=599 => AgentError::Transient {
                reason: UNAVAILABLE.into(),
                retry_after: self.retry_after(),
            },
            401 | 403 => AgentError::Failed(REFUSED.into()),
            _ => AgentError::Failed(NOT_HANDLED.into()),
        }
    }

    /// `Retry-After` in seconds (the HTTP-date form is rare from APIs and ignored).
    fn retry_after(&self) -> Option<Duration> {
        crate::databricks::api::parse_retry_after(self.headers.get(RETRY_AFTER)?.to_str().ok()?)
    }

    /// The start of the body for a log line, with the asker's token cut out: agents
    /// (FastAPI's 422 among them) may echo the request, and ADK's carries the token.
    fn excerpt(&self, token: &SecretString) -> String {
        let body = String::from_utf8_lossy(&self.body);
        // Exposed only to find and remove it.
        let secret = token.expose_secret();
        let redacted = if secret.is_empty() {
            body.into_owned()
        } else {
            body.replace(secret, "[redacted]")
        };
        redacted.chars().take(LOG_EXCERPT_CHARS).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bearer_invalid_token_challenge_means_the_token_was_refused() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(WWW_AUTHENTICATE, value.parse().unwrap());
            says_invalid_token(&headers)
        };
        assert!(with(r#"Bearer error="invalid_token""#));
        assert!(with(
            r#"Bearer realm="agent", error="invalid_token", error_description="expired""#
        ));
        assert!(with(r#"bearer error = "invalid_token""#));
        assert!(!with(r#"Bearer realm="agent""#));
        assert!(!with(r#"Bearer error="insufficient_scope""#));
        assert!(!with(r#"Basic realm="agent", error="invalid_token""#));
        assert!(!says_invalid_token(&HeaderMap::new()));
    }

    #[test]
    fn blank_suggestions_are_left_out_and_a_bad_list_is_ignored() {
        let raw = serde_json::json!(["  Next week? ", "", "   "]);
        assert_eq!(suggestions(raw), ["Next week?"]);
        assert!(suggestions(serde_json::json!("not a list")).is_empty());
    }

    #[test]
    fn a_null_or_oversized_conversation_is_not_kept() {
        assert_eq!(conversation(serde_json::Value::Null), None);
        let big = serde_json::Value::String("x".repeat(MAX_CONVERSATION_BYTES));
        assert_eq!(conversation(big), None);
        let small = serde_json::json!({"id": 1});
        assert_eq!(conversation(small.clone()), Some(small));
    }
}
