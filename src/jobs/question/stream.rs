//! An answer shown as the agent writes it, through Slack's `chat.startStream`,
//! `chat.appendStream` and `chat.stopStream`.
//!
//! - The stream starts with the first words the agent writes ([`Progress::writing`]), as
//!   a reply in the question's thread; the "Thinking…" placeholder above it is removed.
//!   Until then, progress shows as in any answer.
//! - Appends are throttled: one at most every [`APPEND_EVERY`], sooner only once
//!   [`APPEND_CHARS`] characters wait. Whatever waits at the end goes with the stop,
//!   followed by the answer's tables, SQL and buttons ([`super::delivery`]).
//! - A 429 or a failure on an append keeps its text for a later append (after the wait
//!   Slack asked for) or for the stop: text is never dropped.
//! - Where a stream cannot be used — a private answer, a DM outside a thread, or Slack
//!   refusing to start one — nothing has been shown yet, and the answer is posted as
//!   before, replacing the placeholder.
//! - An agent failing part-way stops the stream with the failure in words, never leaving
//!   it open; so does the next try of a job whose worker died mid-stream.
//! - The agent's text is Markdown, sent as Slack's `markdown_text`. Every `<` is followed
//!   by a zero-width space, so nothing an agent writes can become a mention (`<!here>`,
//!   `<@U…>`) or a disguised link, whether or not Slack reads those in streamed Markdown.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::delivery::{Outbox, Shown};
use super::{Question, Questions};
use crate::agent::Progress;
use crate::slack::api::SlackApiError;
use crate::store::jobs::Job;

/// Shortest time between two appends while fewer than [`APPEND_CHARS`] characters wait.
const APPEND_EVERY: Duration = Duration::from_millis(300);
/// Characters waiting that are sent without waiting for [`APPEND_EVERY`].
const APPEND_CHARS: usize = 200;
/// How long to hold appends after a failure that named no wait.
const APPEND_BACKOFF: Duration = Duration::from_secs(1);

/// A stream kept with the job: its message, and (once the agent answered) the answer's
/// text Slack does not have yet, sent with the stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct KeptStream {
    pub(super) ts: String,
    #[serde(default)]
    pub(super) rest: String,
}

/// The agent's progress, streaming its text into the thread once it writes.
pub(super) struct Streaming<'a> {
    questions: &'a Questions,
    job: &'a Job,
    q: &'a Question,
    thread_ts: String,
    shown: Shown,
    /// Where status words go until the agent writes (the placeholder, or the assistant
    /// thread's status).
    status: &'a dyn Progress,
    /// The placeholder the stream replaces.
    placeholder: Option<String>,
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    phase: Phase,
    /// Everything the agent wrote.
    written: String,
    /// How much of `written` Slack has.
    sent: usize,
    last_append: Option<Instant>,
    /// No append before this (Slack asked to wait, or failed).
    not_before: Option<Instant>,
}

#[derive(Default)]
enum Phase {
    /// Nothing written yet.
    #[default]
    Waiting,
    /// Streaming into message `ts`.
    Live(String),
    /// Slack refused an append for good: the rest waits for the stop of message `ts`.
    Held(String),
    /// Slack would not start a stream: the answer is posted as before.
    Refused,
}

/// A stream the agent wrote into, once it finished: what Slack shows and what it does not
/// have yet.
pub(super) struct Streamed {
    pub(super) ts: String,
    shown: String,
    unsent: String,
}

impl<'a> Streaming<'a> {
    /// Streaming for `q`'s answer, or `None` where a stream cannot be used: a private
    /// answer, or no thread to reply in (a DM outside one).
    pub(super) fn new(
        questions: &'a Questions,
        job: &'a Job,
        q: &'a Question,
        shown: Shown,
        status: &'a dyn Progress,
        placeholder: Option<String>,
    ) -> Option<Self> {
        let thread_ts = q.answer_thread().filter(|_| shown == Shown::InThread)?.to_owned();
        Some(Self {
            questions,
            job,
            q,
            thread_ts,
            shown,
            status,
            placeholder,
            state: tokio::sync::Mutex::new(State::default()),
        })
    }

    /// The stream, once the agent is done, if it wrote into one.
    pub(super) async fn finish(&self) -> Option<Streamed> {
        let state = self.state.lock().await;
        let ts = match &state.phase {
            Phase::Live(ts) | Phase::Held(ts) => ts.clone(),
            Phase::Waiting | Phase::Refused => return None,
        };
        Some(Streamed {
            ts,
            shown: state.written[..state.sent].to_owned(),
            unsent: state.written[state.sent..].to_owned(),
        })
    }

    /// Starts the stream with `text`, removes the placeholder and keeps the stream with
    /// the job (a later try stops it if this one dies).
    async fn start(&self, state: &mut State) {
        let slack = &self.questions.slack;
        let recipient = (!self.q.is_dm).then_some((&self.q.team, &self.q.user));
        let text = safe(&state.written);
        match slack
            .start_stream(&self.q.channel, &self.thread_ts, recipient, &text)
            .await
        {
            Ok(ts) => {
                tracing::info!("streaming the answer as the agent writes it");
                state.sent = state.written.len();
                state.last_append = Some(Instant::now());
                state.phase = Phase::Live(ts.clone());
                self.questions
                    .remove_placeholder(self.q, self.placeholder.as_deref())
                    .await;
                let kept = Outbox {
                    stream: Some(KeptStream {
                        ts,
                        rest: String::new(),
                    }),
                    shown: Some(self.shown),
                    ..Outbox::default()
                };
                if let Err(error) = self.questions.keep(self.job, &kept).await {
                    tracing::warn!(error = %error, "could not keep a stream with its job");
                }
            }
            Err(error) => {
                tracing::info!(error = %error, "Slack would not stream the answer; it is posted when complete");
                state.phase = Phase::Refused;
            }
        }
    }

    /// Appends what waits, unless the throttle or Slack's last answer says to wait.
    async fn append_if_due(&self, state: &mut State, ts: &str) {
        let now = Instant::now();
        let waiting = &state.written[state.sent..];
        let due = waiting.chars().count() >= APPEND_CHARS
            || state
                .last_append
                .is_none_or(|at| now.duration_since(at) >= APPEND_EVERY);
        if waiting.is_empty() || !due || state.not_before.is_some_and(|at| now < at) {
            return;
        }
        match self
            .questions
            .slack
            .append_stream(&self.q.channel, ts, &safe(waiting))
            .await
        {
            Ok(()) => {
                state.sent = state.written.len();
                state.last_append = Some(now);
                state.not_before = None;
            }
            Err(error) if error.is_transient() => {
                let wait = match &error {
                    SlackApiError::RateLimited { retry_after } => retry_after.unwrap_or(APPEND_BACKOFF),
                    _ => APPEND_BACKOFF,
                };
                tracing::info!(error = %error, wait_ms = wait.as_millis() as u64, "an append waits");
                state.not_before = Some(now + wait);
            }
            Err(error) => {
                tracing::warn!(error = %error, "Slack refused an append; the rest of the text goes when the stream stops");
                state.phase = Phase::Held(ts.to_owned());
            }
        }
    }
}

#[async_trait]
impl Progress for Streaming<'_> {
    async fn working_on(&self, status: &str) {
        // Once text shows, it shows the progress.
        if matches!(self.state.lock().await.phase, Phase::Waiting | Phase::Refused) {
            self.status.working_on(status).await;
        }
    }

    async fn writing(&self, text: &str) {
        let mut state = self.state.lock().await;
        state.written.push_str(text);
        match &state.phase {
            Phase::Waiting if !state.written.trim().is_empty() => self.start(&mut state).await,
            Phase::Live(ts) => {
                let ts = ts.clone();
                self.append_if_due(&mut state, &ts).await;
            }
            Phase::Waiting | Phase::Held(_) | Phase::Refused => {}
        }
    }
}

impl Streamed {
    /// What to keep for the stop: the answer's text less what Slack shows. An agent whose
    /// answer does not begin with what it wrote has its whole answer added below, so
    /// nothing is lost.
    pub(super) fn kept(self, answer: &str) -> KeptStream {
        let rest = match answer.strip_prefix(self.shown.as_str()) {
            Some(rest) => rest.to_owned(),
            None => {
                tracing::warn!("the agent's answer does not begin with the text it streamed; adding it whole");
                format!("{}\n\n{answer}", self.unsent)
            }
        };
        KeptStream { ts: self.ts, rest }
    }

    /// Stops the stream with what Slack does not have yet and `words` saying why it ends
    /// here.
    pub(super) async fn interrupt(self, questions: &Questions, q: &Question, words: &str) {
        let kept = KeptStream {
            ts: self.ts,
            rest: self.unsent,
        };
        kept.interrupt(questions, q, words).await;
    }
}

impl KeptStream {
    /// Stops the stream with its `rest` and then `words` saying why it ends here; if Slack
    /// will not take those, with nothing more, so it is never left open. Logged, not
    /// raised: the stream is a nicety beside telling the person.
    pub(super) async fn interrupt(&self, questions: &Questions, q: &Question, words: &str) {
        let last = safe(&format!("{}\n\n{words}", self.rest));
        let slack = &questions.slack;
        let Err(error) = slack.stop_stream(&q.channel, &self.ts, &last, None).await else {
            return;
        };
        tracing::info!(error = %error, "could not stop an interrupted stream with its last words");
        if let Err(error) = slack.stop_stream(&q.channel, &self.ts, "", None).await {
            tracing::info!(error = %error, "could not stop an interrupted stream");
        }
    }
}

/// Markdown an agent wrote, unable to mention anyone: a zero-width space after each `<`.
pub(super) fn safe(markdown: &str) -> String {
    markdown.replace('<', "<\u{200B}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_an_agent_writes_becomes_a_mention_or_a_slack_link() {
        let written = safe("ping <!here> and <@U0ADMIN> or <https://evil.example|docs> where a < b");
        assert!(!written.contains("<!"), "{written}");
        assert!(!written.contains("<@"), "{written}");
        assert!(!written.contains("<h"), "{written}");
        assert_eq!(
            written.replace('\u{200B}', ""),
            "ping <!here> and <@U0ADMIN> or <https://evil.example|docs> where a < b"
        );
    }

    #[test]
    fn the_rest_is_what_slack_does_not_show_and_nothing_is_lost_when_an_agent_contradicts_itself() {
        let streamed = |shown: &str, unsent: &str| Streamed {
            ts: "1.2".into(),
            shown: shown.into(),
            unsent: unsent.into(),
        };
        assert_eq!(
            streamed("Revenue rose", " 4%").kept("Revenue rose 4% in Q3.").rest,
            " 4% in Q3."
        );
        assert_eq!(streamed("Revenue rose", "").kept("Revenue rose").rest, "");
        assert_eq!(
            streamed("Revenue fell", " 2").kept("Revenue rose 4%.").rest,
            " 2\n\nRevenue rose 4%."
        );
    }
}
