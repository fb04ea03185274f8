//! A Databricks Genie space, asked as the person.
//!
//! A new Slack thread starts a Genie conversation; later questions in the thread are
//! follow-ups in the same conversation (its id is what this agent keeps), so Genie sees
//! the context. Genie answers asynchronously: the message is polled with backoff, within
//! a bound, until it is final. A completed message becomes prose, the SQL Genie wrote, the
//! first rows of its result and suggested follow-up questions.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use tokio::time::Instant;

use crate::agent::{Agent, AgentAnswer, AgentError, AgentRequest, Progress};
use crate::config::GenieSpaces;
use crate::databricks::api::{ApiError, Databricks};
use crate::databricks::genie::{
    GenieMessage, GenieSpace, MessageError, MessageRef, MessageStatus, QueryAttachment, QueryResult,
};

const ASKING: &str = "Asking Genie…";
const RUNNING_QUERY: &str = "Running query…";
const WAREHOUSE_STARTING: &str = "Waiting for the SQL warehouse to start…";

/// Passing failures in a row a poll may have before the answer fails.
const POLL_BLIPS: u32 = 3;

/// Longest of Genie's own failure messages passed on to the person.
const MAX_REASON_CHARS: usize = 500;

/// How patiently Genie is polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Wait before the first poll; doubled after every poll up to `longest_wait`.
    pub first_wait: Duration,
    pub longest_wait: Duration,
    /// Longest one answer may take, from asking to the last row read.
    pub bound: Duration,
}

impl Default for Timing {
    /// 1 s doubling to 10 s, for at most 10 minutes (Databricks suggests a 10-minute
    /// timeout with backoff for Genie clients).
    fn default() -> Self {
        Self {
            first_wait: Duration::from_secs(1),
            longest_wait: Duration::from_secs(10),
            bound: Duration::from_secs(600),
        }
    }
}

/// Answers with the Genie space of the question's channel (`GENIE_SPACES`). A thread
/// stays with the space its conversation started in.
pub struct Genie {
    http: reqwest::Client,
    spaces: GenieSpaces,
    timing: Timing,
}

impl Genie {
    /// Asks the channel's space through `http` (see [`crate::databricks::api::http_client`]).
    pub fn new(http: reqwest::Client, spaces: GenieSpaces) -> Self {
        Self {
            http,
            spaces,
            timing: Timing::default(),
        }
    }

    /// The space that answers `request`: the one its thread's conversation is in (while
    /// that space is still configured), else the channel's.
    fn space_for<'r>(&'r self, request: &'r AgentRequest) -> Result<&'r str, AgentError> {
        let kept = request
            .conversation
            .as_ref()
            .and_then(|kept| kept.get("space_id"))
            .and_then(|space| space.as_str())
            .filter(|space| self.spaces.contains(space));
        kept.or_else(|| self.spaces.for_channel(&request.thread.channel))
            .ok_or_else(|| {
                AgentError::Failed("no Genie space answers in this channel; ask your Slack admin to map one".into())
            })
    }

    /// The same agent, polling with `timing`.
    pub fn with_timing(self, timing: Timing) -> Self {
        Self { timing, ..self }
    }

    /// Asks the question: as a follow-up in the thread's conversation if there is one
    /// still to be had, else in a new conversation.
    async fn ask(&self, space: &GenieSpace<'_>, request: &AgentRequest) -> Result<MessageRef, AgentError> {
        let kept = kept_conversation(request.conversation.as_ref(), space.id());
        // An earlier try may have asked already and then failed, or the bot stopped, before
        // Genie's answer was kept: that message is the answer, not a reason to ask twice.
        if let Some(since) = request.retry_since {
            let since = since * 1000;
            let earlier = match kept {
                Some(conversation_id) => asked_in(space, conversation_id, &request.question, since).await,
                None => started_with(space, &request.question, since).await,
            };
            if let Some(at) = earlier {
                return Ok(at);
            }
        }
        let asked_at = now_millis();
        if let Some(conversation_id) = kept {
            match space.send_message(conversation_id, &request.question).await {
                Ok(message) if !message.id().is_empty() => {
                    return Ok(MessageRef {
                        conversation_id: conversation_id.to_owned(),
                        message_id: message.id().to_owned(),
                    });
                }
                Ok(_) => return Err(unreadable()),
                // Genie forgets conversations (deleted, or expired): start afresh.
                Err(error) if is_gone(&error) => {
                    tracing::info!(space_id = %space.id(), "the thread's Genie conversation is gone; starting anew");
                }
                Err(error) if answer_may_be_lost(&error) => {
                    return match asked_in(space, conversation_id, &request.question, asked_at).await {
                        Some(at) => Ok(at),
                        None => Err(error.into()),
                    };
                }
                Err(error) => return Err(error.into()),
            }
        }
        match space.start_conversation(&request.question).await {
            Ok(started) => started.message_ref().ok_or_else(unreadable),
            Err(error) if answer_may_be_lost(&error) => match started_with(space, &request.question, asked_at).await {
                Some(at) => Ok(at),
                None => Err(error.into()),
            },
            Err(error) => Err(error.into()),
        }
    }

    /// Polls the message until Genie stops working on it.
    async fn finished(
        &self,
        space: &GenieSpace<'_>,
        at: &MessageRef,
        shown: &mut Shown<'_>,
        backoff: &mut Backoff,
    ) -> Result<GenieMessage, AgentError> {
        let mut blips = 0;
        loop {
            backoff.pause().await?;
            let Some(message) = polled(space.message(at).await, &mut blips)? else {
                continue;
            };
            tracing::debug!(status = ?message.status, message_id = %at.message_id, "Genie message polled");
            if message.status.is_final() {
                return Ok(message);
            }
            shown
                .show(match message.status {
                    MessageStatus::PendingWarehouse => WAREHOUSE_STARTING,
                    MessageStatus::ExecutingQuery => RUNNING_QUERY,
                    _ => ASKING,
                })
                .await;
        }
    }

    /// The result of the message's query, run again first if it expired.
    async fn query_result(
        &self,
        space: &GenieSpace<'_>,
        at: &MessageRef,
        attachment_id: &str,
        expired: bool,
        shown: &mut Shown<'_>,
        mut backoff: Backoff,
    ) -> Result<QueryResult, AgentError> {
        let mut blips = 0;
        let mut latest = if expired {
            shown.show(RUNNING_QUERY).await;
            // Not retried on a passing failure: it runs the query.
            Some(space.execute_query(at, attachment_id).await?)
        } else {
            polled(space.query_result(at, attachment_id).await, &mut blips)?
        };
        loop {
            match latest {
                Some(result) if !result.is_running() => return Ok(result),
                Some(ref result) => {
                    let pending = result
                        .statement_response
                        .as_ref()
                        .is_some_and(|s| s.status.state == "PENDING");
                    shown
                        .show(if pending { WAREHOUSE_STARTING } else { RUNNING_QUERY })
                        .await;
                }
                None => {}
            }
            backoff.pause().await?;
            latest = polled(space.query_result(at, attachment_id).await, &mut blips)?;
        }
    }

    /// A final message as the person's answer.
    async fn answer_of(
        &self,
        space: &GenieSpace<'_>,
        at: &MessageRef,
        message: GenieMessage,
        shown: &mut Shown<'_>,
        backoff: Backoff,
    ) -> Result<AgentAnswer, AgentError> {
        let expired = match message.status {
            MessageStatus::Completed => false,
            MessageStatus::QueryResultExpired => true,
            MessageStatus::Cancelled => return Err(AgentError::Failed("the question was cancelled in Genie".into())),
            _ => return Err(failure(message.error.as_ref())),
        };
        let mut prose = Vec::new();
        let mut suggestions: Vec<String> = Vec::new();
        let mut query: Option<(&str, &QueryAttachment)> = None;
        for attachment in &message.attachments {
            if let Some(text) = &attachment.text {
                if text.is_follow_up_question() {
                    suggestions.push(text.content.clone());
                } else if !text.content.trim().is_empty() {
                    prose.push(text.content.trim());
                }
            }
            if let Some(suggested) = &attachment.suggested_questions {
                suggestions.extend(suggested.questions.iter().cloned());
            }
            if let (Some(q), None) = (&attachment.query, &query) {
                query = Some((attachment.attachment_id.as_str(), q));
            }
        }
        let mut answer = AgentAnswer {
            text: prose.join("\n\n"),
            suggestions: distinct(suggestions),
            conversation: Some(json!({
                "conversation_id": at.conversation_id,
                "space_id": space.id(),
                // The answer's message, which a thumbs up or down rates.
                "message_id": at.message_id,
            })),
            ..AgentAnswer::default()
        };
        if let Some((attachment_id, q)) = query {
            if answer.text.is_empty() {
                answer.text = [&q.description, &q.title]
                    .into_iter()
                    .map(|s| s.trim())
                    .find(|s| !s.is_empty())
                    .unwrap_or_default()
                    .to_owned();
            }
            answer.sql = Some(q.query.trim().to_owned()).filter(|sql| !sql.is_empty());
            if !attachment_id.is_empty() {
                let result = self
                    .query_result(space, at, attachment_id, expired, shown, backoff)
                    .await?;
                if let Some(statement) = result.statement_response {
                    match statement.failure() {
                        Some(why) => {
                            answer.text = join_paragraphs(&answer.text, &format!("The query failed: {why}"));
                        }
                        None => answer.table = statement.into_table(),
                    }
                }
            }
        }
        if answer.text.is_empty() {
            answer.text = if answer.table.is_some() {
                "Here is what Genie found.".into()
            } else {
                "Genie finished without an answer.".into()
            };
        }
        Ok(answer)
    }
}

#[async_trait]
impl Agent for Genie {
    fn name(&self) -> &str {
        "Genie"
    }

    async fn answer(&self, request: &AgentRequest, progress: &dyn Progress) -> Result<AgentAnswer, AgentError> {
        let context = &request.context;
        let bearer = context.bearer();
        let db = Databricks::new(&self.http, &context.host, &bearer);
        let space = GenieSpace::new(db, self.space_for(request)?);
        let mut backoff = Backoff::new(self.timing);
        let mut shown = Shown { progress, last: None };
        shown.show(ASKING).await;
        let at = self.ask(&space, request).await?;
        tracing::info!(
            space_id = %space.id(),
            conversation_id = %at.conversation_id,
            message_id = %at.message_id,
            "asked Genie"
        );
        let message = self.finished(&space, &at, &mut shown, &mut backoff).await?;
        if let Some(error) = &message.error {
            tracing::warn!(
                status = ?message.status,
                error_type = %error.kind,
                message_id = %at.message_id,
                "Genie did not answer"
            );
        }
        // The result is read with its own backoff, under the same bound.
        backoff.restart();
        self.answer_of(&space, &at, message, &mut shown, backoff).await
    }
}

/// What the person was last told; repeats are not sent.
struct Shown<'p> {
    progress: &'p dyn Progress,
    last: Option<&'static str>,
}

impl Shown<'_> {
    async fn show(&mut self, status: &'static str) {
        if self.last != Some(status) {
            self.last = Some(status);
            self.progress.working_on(status).await;
        }
    }
}

/// Waits between polls: doubling, capped, and never past the bound.
#[derive(Clone, Copy)]
struct Backoff {
    timing: Timing,
    deadline: Instant,
    wait: Duration,
}

impl Backoff {
    fn new(timing: Timing) -> Self {
        Self {
            timing,
            deadline: Instant::now() + timing.bound,
            wait: timing.first_wait,
        }
    }

    /// Back to the first, short wait (the deadline stays).
    fn restart(&mut self) {
        self.wait = self.timing.first_wait;
    }

    /// Waits before the next poll, or fails once the bound has passed. The last wait is
    /// cut short so that one poll happens right at the bound.
    async fn pause(&mut self) -> Result<(), AgentError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            // Not transient: asking again would put the question to Genie a second time.
            return Err(AgentError::Failed(format!(
                "Genie did not finish within {}",
                spoken(self.timing.bound)
            )));
        }
        tokio::time::sleep(self.wait.min(left)).await;
        self.wait = (self.wait * 2).min(self.timing.longest_wait);
        Ok(())
    }
}

/// A poll's outcome, or `None` after a passing failure (a 5xx, a timeout, a rate limit
/// outlasting the client's own waits): polls only read, so trying again is safe and
/// beats failing the answer, whose retry would ask Genie the question a second time.
fn polled<T>(outcome: Result<T, ApiError>, blips: &mut u32) -> Result<Option<T>, AgentError> {
    match outcome {
        Ok(value) => {
            *blips = 0;
            Ok(Some(value))
        }
        Err(error @ (ApiError::Transient(_) | ApiError::Timeout | ApiError::RateLimited { .. }))
            if *blips < POLL_BLIPS =>
        {
            *blips += 1;
            tracing::warn!(error = %error, "polling Genie failed; polling again");
            Ok(None)
        }
        Err(error) => Err(error.into()),
    }
}

/// A failed message's error in the person's terms.
fn failure(error: Option<&MessageError>) -> AgentError {
    let kind = error.map(|e| e.kind.as_str()).unwrap_or_default();
    let said = error.map(|e| shortened(e.error.trim())).unwrap_or_default();
    let permission_words = ["PERMISSION_DENIED", "INSUFFICIENT_PERMISSIONS"];
    if kind.starts_with("RATE_LIMIT") {
        // Genie limits questions per workspace; it surfaces as a failed message, not a 429.
        AgentError::transient("Genie is busy right now; please ask again in a minute")
    } else if kind == "RETRYABLE_PROCESSING_EXCEPTION" {
        AgentError::transient("Genie had a temporary problem")
    } else if kind == "WAREHOUSE_ACCESS_MISSING_EXCEPTION" {
        AgentError::NoAccess(if said.is_empty() {
            "you cannot use the SQL warehouse this Genie space runs on".into()
        } else {
            said
        })
    } else if permission_words.iter().any(|w| said.contains(w)) {
        AgentError::NoAccess(said)
    } else if said.is_empty() {
        AgentError::Failed("Genie could not answer and did not say why".into())
    } else {
        AgentError::Failed(format!("Genie could not answer: {said}"))
    }
}

/// Whether a follow-up failed because the conversation no longer exists.
fn is_gone(error: &ApiError) -> bool {
    matches!(error, ApiError::Rejected { status, code, .. } if *status == 404 || code == "RESOURCE_DOES_NOT_EXIST")
}

fn unreadable() -> AgentError {
    ApiError::Unexpected("Genie answered without a message id".into()).into()
}

/// `text`, cut to [`MAX_REASON_CHARS`].
fn shortened(text: &str) -> String {
    match text.char_indices().nth(MAX_REASON_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

fn join_paragraphs(first: &str, second: &str) -> String {
    if first.is_empty() {
        second.to_owned()
    } else {
        format!("{first}\n\n{second}")
    }
}

/// Non-empty questions, each once, in order.
fn distinct(questions: Vec<String>) -> Vec<String> {
    let mut seen = Vec::new();
    for question in questions {
        let question = question.trim();
        if !question.is_empty() && !seen.iter().any(|s: &String| s == question) {
            seen.push(question.to_owned());
        }
    }
    seen
}

/// `bound` the way a person would say it ("10 minutes", "45 seconds").
fn spoken(bound: Duration) -> String {
    let plural = |n: u64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    match bound.as_secs() {
        0 => plural(bound.as_millis() as u64, "millisecond"),
        s if s % 60 == 0 => plural(s / 60, "minute"),
        s => plural(s, "second"),
    }
}

/// Whether a failed ask may still have reached Genie: the answer was lost (a timeout, a
/// reset connection) or a gateway failed after passing the request on. Asking again would
/// put the question to Genie twice, so it is looked up first.
fn answer_may_be_lost(error: &ApiError) -> bool {
    matches!(error, ApiError::Timeout | ApiError::Transient(_))
}

/// How far back (and, for clock skew, forward) a message counts as the one just asked.
const ASKED_WINDOW_MS: i64 = 2 * 60 * 1000;

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The message asking `question` that Genie received in `conversation_id` around
/// `asked_at`, if a lost answer hid it.
/// The conversation id kept for this thread, if it is one of `space_id`'s (a kept
/// conversation without a space is from before spaces were kept: the channel's).
fn kept_conversation<'c>(kept: Option<&'c serde_json::Value>, space_id: &str) -> Option<&'c str> {
    let kept = kept?;
    let same_space = match kept.get("space_id") {
        None => true,
        Some(kept_space) => kept_space.as_str() == Some(space_id),
    };
    let id = kept.get("conversation_id")?.as_str()?;
    (same_space && !id.is_empty()).then_some(id)
}

async fn asked_in(space: &GenieSpace<'_>, conversation_id: &str, question: &str, asked_at: i64) -> Option<MessageRef> {
    let messages = space.messages(conversation_id).await.ok()?;
    let found = messages
        .iter()
        .filter(|m| m.content == question && m.created_timestamp >= asked_at - ASKED_WINDOW_MS && !m.id().is_empty())
        .max_by_key(|m| m.created_timestamp)?;
    tracing::info!("Genie has the question already (an earlier try, or a lost answer); not asking again");
    Some(MessageRef {
        conversation_id: conversation_id.to_owned(),
        message_id: found.id().to_owned(),
    })
}

/// The conversation Genie started for `question` around `asked_at`, if a lost answer hid
/// it: Genie titles a conversation with its first question (cut to 255 characters).
async fn started_with(space: &GenieSpace<'_>, question: &str, asked_at: i64) -> Option<MessageRef> {
    let title: String = question.chars().take(255).collect();
    let conversations = space.recent_conversations().await.ok()?;
    let conversation = conversations
        .iter()
        .filter(|c| c.title == title && c.created_timestamp >= asked_at - ASKED_WINDOW_MS)
        .max_by_key(|c| c.created_timestamp)?;
    asked_in(space, &conversation.conversation_id, question, asked_at).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_said_in_plain_words() {
        assert_eq!(spoken(Duration::from_secs(600)), "10 minutes");
        assert_eq!(spoken(Duration::from_secs(60)), "1 minute");
        assert_eq!(spoken(Duration::from_secs(90)), "90 seconds");
        assert_eq!(spoken(Duration::from_millis(200)), "200 milliseconds");
    }

    #[test]
    fn long_reasons_are_cut() {
        let long = "x".repeat(MAX_REASON_CHARS + 10);
        assert_eq!(shortened(&long).chars().count(), MAX_REASON_CHARS + 1);
        assert_eq!(shortened("short"), "short");
    }

    #[test]
    fn suggestions_are_distinct_and_non_empty() {
        let questions = vec!["a".into(), " ".into(), "a ".into(), "b".into()];
        assert_eq!(distinct(questions), vec!["a".to_string(), "b".to_string()]);
    }
}
