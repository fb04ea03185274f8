//! Where a queued question becomes an answer — or a private "Connect Databricks" prompt.
//!
//! Each question goes prepare → ask → publish:
//! - **prepare**: an empty one gets help; bots and people from another organisation are
//!   turned away; anyone without a working link gets a fresh single-use link, privately,
//!   with the question kept to answer after linking;
//! - **ask**: the agent answers as the person, its progress shown in a "Thinking…"
//!   placeholder in the thread;
//! - **publish**: the answer is rendered and kept with the job, then posted where it was
//!   asked ([`delivery`]).

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use slack_morphism::prelude::*;
use tracing::Instrument;
use url::Url;

use crate::agent::{Agent, AgentAnswer, AgentError, AgentRequest, Progress, Thread, Unwatched, UserContext};
use crate::clock::SharedClock;
use crate::config::AnswerVisibility;
use crate::crypto::random_token;
use crate::databricks::broker::{BrokerError, TokenBroker};
use crate::domain::{PersonIn, TeamId, UserId};
use crate::jobs::breaker::{Breaker, OPEN_SECONDS};
use crate::jobs::feedback::FeedbackTarget;
use crate::jobs::worker::{Done, JobError};
use crate::linking::offer_link;
use crate::metrics::{AnswerOutcome, Metrics};
use crate::services::Services;
use crate::slack::api::{Membership, SlackApi};
use crate::slack::chart;
use crate::slack::messages::{self, Invitation};
use crate::slack::render::{self, Attribution};
use delivery::{Outbox, Placeholder, Shown, ThreadStatus};
use stream::{Streamed, Streaming};

mod delivery;
mod stream;
use crate::store::Store;
use crate::store::jobs::Job;
use crate::store::private_answers::NewPrivateAnswer;

/// How long what we learned about a Slack user (bot? another organisation?) is trusted.
const USER_CACHE_TTL_SECONDS: i64 = 3600;
/// How long whether a channel is shared with another organisation is believed.
const CHANNEL_CACHE_TTL_SECONDS: i64 = 600;

/// Further questions within this many seconds of a prompt wait for the same link.
const PROMPT_QUIET_SECONDS: i64 = 60;

/// The last words of a stream whose agent failed for good (the person hears why privately).
const STREAM_FAILED: &str = "_I could not finish this answer; the reason was sent privately._";

/// Why there is no CSV under an answer whose table did not fit.
const CSV_NOT_ATTACHED: &str = "the full result could not be attached as a file; ask for fewer rows";

/// A question, as queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Question {
    pub team: TeamId,
    pub user: UserId,
    pub channel: String,
    /// The message that asked.
    pub ts: String,
    /// The thread the message was posted in, if any.
    pub thread_ts: Option<String>,
    /// The question text, bot mention removed; empty means "show help".
    pub text: String,
    pub is_dm: bool,
    /// The bot's own user id when the event told us.
    pub bot_user_id: Option<String>,
    /// Set for a `/databricks` question: every reply goes privately through it.
    #[serde(default)]
    pub response_url: Option<Url>,
}

impl Question {
    /// Where the answer goes: in channels always a thread (the question's, or one started
    /// on it); in a DM the conversation itself unless the question was in a thread; a
    /// slash command's answer is not in a thread.
    pub fn answer_thread(&self) -> Option<&str> {
        match (&self.thread_ts, self.is_dm) {
            _ if self.response_url.is_some() => None,
            (Some(thread), _) => Some(thread),
            (None, false) => Some(&self.ts),
            (None, true) => None,
        }
    }

    /// The thread of a direct message asked in one: where an assistant thread can be.
    fn dm_thread(&self) -> Option<&str> {
        self.thread_ts
            .as_deref()
            .filter(|_| self.is_dm && self.response_url.is_none())
    }

    /// The asker in the conversation the answer goes to (the key of the thread's kept
    /// conversation, and where a kept question is answered after linking).
    pub fn person(&self) -> PersonIn<'_> {
        PersonIn {
            team: &self.team,
            user: &self.user,
            channel: &self.channel,
            thread_ts: self.answer_thread(),
        }
    }
}

/// Answers questions.
pub struct Questions {
    store: Store,
    slack: SlackApi,
    broker: Arc<TokenBroker>,
    agent: Arc<dyn Agent>,
    public_base_url: Url,
    visibility: AnswerVisibility,
    charts: bool,
    clock: SharedClock,
    askers: Mutex<HashMap<(TeamId, UserId), (Membership, i64)>>,
    /// Whether each channel is shared with another organisation, and since when known.
    shared_channels: Mutex<HashMap<String, (bool, i64)>>,
    metrics: Arc<Metrics>,
    breaker: Breaker,
}

/// How an answer run ended, short of telling the person.
enum Ending {
    /// The answer went out; the outbox took the placeholder over.
    Delivered,
    /// Nothing to say (a bot asked).
    Quiet,
    /// Tell the person this, privately.
    Tell(SlackMessageContent),
    /// No usable token: the question waits until they connect (or they hear why not).
    NoToken(BrokerError),
}

/// What prepare hands to ask.
struct Prepared {
    context: UserContext,
    conversation: Option<serde_json::Value>,
    /// Where the answer will go.
    shown: Shown,
}

/// What ask hands to publish.
struct Answered {
    answer: AgentAnswer,
    /// The token the answer was made with (refreshed if Databricks refused the first).
    context: UserContext,
    started: Instant,
    shown: Shown,
    /// The stream the agent wrote its text into, if it did.
    streamed: Option<Streamed>,
}

impl Questions {
    /// A handler answering with `agent`, its answers shown `visibility` by default (with a
    /// chart of results that call for one, unless `charts` is off) and counted in the
    /// service's metrics.
    pub fn new(services: &Services, agent: Arc<dyn Agent>, visibility: AnswerVisibility, charts: bool) -> Self {
        Self {
            store: services.store.clone(),
            slack: services.slack.clone(),
            broker: services.broker.clone(),
            agent,
            public_base_url: services.public_base_url.clone(),
            visibility,
            charts,
            clock: services.clock.clone(),
            askers: Mutex::new(HashMap::new()),
            shared_channels: Mutex::new(HashMap::new()),
            metrics: services.metrics.clone(),
            breaker: Breaker::default(),
        }
    }

    fn record(&self, outcome: AnswerOutcome, started: Instant) {
        let seconds = started.elapsed().as_secs_f64();
        self.metrics.record_answer(self.agent.name(), outcome, seconds);
    }

    /// Runs a question's job: answers it, or resumes posting an answer an earlier run
    /// made but could not finish posting.
    pub async fn run(&self, job: &Job, q: &Question) -> Result<Done, JobError> {
        let outbox = match job.outbox.as_deref() {
            Some(kept) => serde_json::from_str::<Outbox>(kept)
                .map_err(|e| JobError::Permanent(format!("unreadable answer outbox: {e}")))?,
            None => Outbox::default(),
        };
        if outbox.answered {
            let sent = usize::try_from(job.outbox_sent).unwrap_or(0);
            self.resume(job, q, &outbox, sent).await
        } else {
            // The worker of an earlier try died while the agent wrote: its stream is
            // closed before the question is asked again.
            if let Some(stream) = &outbox.stream {
                stream.interrupt(self, q, "_Interrupted. Answering again below…_").await;
            }
            self.answer(job, q, outbox.placeholder).await
        }
    }

    /// Asks the agent and posts its answer. `kept` is the placeholder an earlier run of
    /// this job left in the thread (it failed for a moment, or its worker died), which is
    /// reused rather than joined by another.
    async fn answer(&self, job: &Job, q: &Question, kept: Option<String>) -> Result<Done, JobError> {
        // The placeholder this run answers for. A step that hands it on — to the outbox
        // with the answer, or to the next try — takes it; what is left is removed here,
        // the one place, before the person is told anything.
        let mut placeholder = kept;
        let ending = self.prepare_ask_publish(job, q, &mut placeholder).await;
        self.remove_placeholder(q, placeholder.as_deref()).await;
        match ending? {
            Ending::Delivered | Ending::Quiet => Ok(Done::Finished),
            Ending::Tell(content) => {
                self.reply_privately(q, content).await?;
                Ok(Done::Finished)
            }
            Ending::NoToken(error) => self.without_token(q, error).await,
        }
    }

    async fn prepare_ask_publish(
        &self,
        job: &Job,
        q: &Question,
        placeholder: &mut Option<String>,
    ) -> Result<Ending, JobError> {
        let prepared = match self.prepare(q).await? {
            ControlFlow::Continue(prepared) => prepared,
            ControlFlow::Break(ending) => return Ok(ending),
        };
        let answered = match self.ask(job, q, prepared, placeholder).await? {
            ControlFlow::Continue(answered) => answered,
            ControlFlow::Break(ending) => return Ok(ending),
        };
        self.publish(job, q, answered, placeholder).await
    }

    /// Who asks, and with which token: help for an empty question, nothing for bots, a
    /// refusal for other organisations, the person's token and the thread's conversation
    /// for everyone else.
    async fn prepare(&self, q: &Question) -> Result<ControlFlow<Ending, Prepared>, JobError> {
        if q.text.is_empty() {
            return Ok(ControlFlow::Break(Ending::Tell(messages::help(
                q.bot_user_id.as_deref(),
            ))));
        }
        match self.asker(q).await? {
            Membership::Bot => {
                tracing::info!("question from a bot ignored");
                return Ok(ControlFlow::Break(Ending::Quiet));
            }
            Membership::External => return Ok(ControlFlow::Break(Ending::Tell(messages::external_user_refusal()))),
            Membership::Member => {}
        }
        let context = match self.user_context(q, None).await {
            Ok(context) => context,
            Err(error) => return Ok(ControlFlow::Break(Ending::NoToken(error))),
        };
        let conversation = self
            .store
            .conversation(q.person(), self.agent.name())
            .await?
            .and_then(|kept| serde_json::from_str(&kept).ok());
        let shown = self.visibility(q).await;
        Ok(ControlFlow::Continue(Prepared {
            context,
            conversation,
            shown,
        }))
    }

    /// The asker's token from the broker, renewable mid-answer through it.
    async fn user_context(&self, q: &Question, refused_version: Option<i64>) -> Result<UserContext, BrokerError> {
        let context = self.broker.user_context(&q.team, &q.user, refused_version).await?;
        Ok(UserContext {
            renew: Some(self.broker.renewal(&q.team, &q.user)),
            ..context
        })
    }

    /// Asks the agent, showing its progress in the placeholder (private answers go
    /// without one: an ephemeral message cannot be updated).
    async fn ask(
        &self,
        job: &Job,
        q: &Question,
        prepared: Prepared,
        placeholder: &mut Option<String>,
    ) -> Result<ControlFlow<Ending, Answered>, JobError> {
        // REL-04: while the agent keeps failing, questions wait in the queue, not on it.
        if let Some(seconds) = self.breaker.open_for(self.clock.now()) {
            tracing::info!(retry_in_s = seconds, "the agent keeps failing; the question waits");
            placeholder.take();
            return Err(JobError::Transient {
                reason: "Databricks is not answering right now".into(),
                retry_after: Some(Duration::from_secs(seconds.unsigned_abs())),
            });
        }
        // In an assistant thread, progress is the thread's status, not a message.
        let status = self.assistant_status(q).await;
        let showing = match prepared.shown {
            _ if status.is_some() => None,
            Shown::InThread => match Placeholder::show(&self.slack, q, placeholder.as_deref()).await {
                Ok(showing) => Some(showing),
                Err(error) => {
                    // Slack failed for a moment: the retry shows it again.
                    placeholder.take();
                    return Err(error);
                }
            },
            Shown::Privately => None,
        };
        if let Some(showing) = &showing
            && placeholder.replace(showing.ts.clone()).as_deref() != Some(showing.ts.as_str())
        {
            // Kept with the job: a retry, or another worker after a crash, reuses it.
            let waiting = Outbox {
                placeholder: Some(showing.ts.clone()),
                shown: Some(prepared.shown),
                ..Outbox::default()
            };
            self.keep(job, &waiting).await?;
        }
        let status: &dyn Progress = match (&status, &showing) {
            (Some(status), _) => status,
            (None, Some(showing)) => showing,
            (None, None) => &Unwatched,
        };
        let shown = prepared.shown;
        let streaming = Streaming::new(self, job, q, shown, status, placeholder.clone());
        let progress: &dyn Progress = match &streaming {
            Some(streaming) => streaming,
            None => status,
        };
        let started = Instant::now();
        let asked = self.ask_agent(job, q, prepared, progress).await;
        let streamed = match &streaming {
            Some(streaming) => streaming.finish().await,
            None => None,
        };
        if streamed.is_some() {
            // The stream took the placeholder's place, and removed it.
            placeholder.take();
        }
        match &asked {
            Err(Unanswered::Agent(AgentError::Transient { reason, .. })) => {
                let now = self.clock.now();
                if self.breaker.failed(now) {
                    self.metrics.breaker_open_until(now + OPEN_SECONDS);
                    tracing::warn!(
                        reason,
                        pause_s = OPEN_SECONDS,
                        "the agent failed again and again; questions wait before asking it again"
                    );
                }
            }
            Err(Unanswered::Token(_)) => {}
            Ok(_) | Err(Unanswered::Agent(_)) => self.breaker.succeeded(),
        }
        let error = match asked {
            Ok((answer, context)) => {
                return Ok(ControlFlow::Continue(Answered {
                    answer,
                    context,
                    started,
                    shown,
                    streamed,
                }));
            }
            Err(Unanswered::Token(error)) => {
                if let Some(streamed) = streamed {
                    let words = match &error {
                        BrokerError::Transient(_) | BrokerError::Store(_) => {
                            "_Interrupted: Databricks sign-in is not answering. I'll try again in a moment._"
                        }
                        _ => STREAM_FAILED,
                    };
                    self.end_stream(job, q, streamed, words, shown).await?;
                }
                return Ok(ControlFlow::Break(Ending::NoToken(error)));
            }
            Err(Unanswered::Agent(error)) => error,
        };
        if let Some(streamed) = streamed {
            let words = match &error {
                AgentError::Transient { reason, .. } => format!("_Interrupted: {reason}. I'll try again in a moment._"),
                _ => STREAM_FAILED.to_owned(),
            };
            self.end_stream(job, q, streamed, &words, shown).await?;
        }
        let outcome = match &error {
            AgentError::NoAccess(_) => AnswerOutcome::NoAccess,
            AgentError::Transient { .. } => AnswerOutcome::Retry,
            AgentError::Failed(_) | AgentError::Unauthorized => AnswerOutcome::Failed,
        };
        self.record(outcome, started);
        let reference = job.reference();
        match error {
            AgentError::Unauthorized => Err(JobError::Permanent(
                "Databricks refused a freshly refreshed token".into(),
            )),
            AgentError::Transient { reason, retry_after } => {
                // The retry takes the placeholder over; meanwhile it says why it waits.
                if let Some(showing) = &showing
                    && placeholder.is_some()
                {
                    showing.working_on(Placeholder::RETRYING).await;
                    placeholder.take();
                }
                Err(JobError::Transient { reason, retry_after })
            }
            AgentError::NoAccess(databricks_says) => {
                tracing::info!(reference, "Databricks denied the person access; told them");
                Ok(ControlFlow::Break(Ending::Tell(messages::no_access(
                    &databricks_says,
                    &reference,
                ))))
            }
            AgentError::Failed(reason) => {
                tracing::warn!(reference, reason, "the agent could not answer; told the person");
                Ok(ControlFlow::Break(Ending::Tell(messages::could_not_answer(
                    &reason, &reference,
                ))))
            }
        }
    }

    /// Ends a stream whose answer failed with `words`, and forgets it: the next try starts
    /// afresh, with a placeholder of its own.
    async fn end_stream(
        &self,
        job: &Job,
        q: &Question,
        streamed: Streamed,
        words: &str,
        shown: Shown,
    ) -> Result<(), JobError> {
        streamed.interrupt(self, q, words).await;
        let closed = Outbox {
            shown: Some(shown),
            ..Outbox::default()
        };
        self.keep(job, &closed).await
    }

    /// Renders the answer, keeps it with the job (which takes the placeholder over) and
    /// posts it — unless the person disconnected meanwhile (TOK-07).
    async fn publish(
        &self,
        job: &Job,
        q: &Question,
        answered: Answered,
        placeholder: &mut Option<String>,
    ) -> Result<Ending, JobError> {
        let Answered {
            mut answer,
            context,
            started,
            shown,
            streamed,
        } = answered;
        // The text already shown goes no further than the stream; the rest of the answer
        // ends it.
        let stream = streamed.map(|streamed| streamed.kept(&std::mem::take(&mut answer.text)));
        if !self.still_linked(q).await? {
            self.remove_stream(q, stream.as_ref()).await;
            self.record(AnswerOutcome::Dropped, started);
            tracing::info!("the person disconnected while their question was answered; answer dropped");
            return Ok(Ending::Tell(messages::dropped_after_disconnect()));
        }
        self.record(AnswerOutcome::Answered, started);
        let now = self.clock.now();
        // Losing the thread's context is better than asking the agent all over again.
        if let Some(kept) = &answer.conversation
            && let Err(error) = self
                .store
                .save_conversation(q.person(), self.agent.name(), &kept.to_string(), now)
                .await
        {
            tracing::warn!(error = %error, "could not keep the thread's conversation");
        }
        if let Err(error) = self.store.touch_link(&q.team, &q.user, now).await {
            tracing::warn!(error = %error, "could not record when a link was last used");
        }
        let by = Attribution {
            databricks_user: &context.databricks_user_name,
            agent: self.agent.name(),
        };
        let rendered = match shown {
            // A private answer to a mention can be shared in its channel by its asker.
            Shown::Privately if !q.is_dm && q.response_url.is_none() => {
                let share_id = random_token();
                let public = render::answer(&answer, &by, q.answer_thread(), None, Some(job.id));
                let content = serde_json::to_string(&public.messages).expect("messages serialise");
                let kept = NewPrivateAnswer {
                    id: share_id.expose_secret(),
                    team: &q.team,
                    user: &q.user,
                    channel: &q.channel,
                    thread_ts: q.answer_thread(),
                    content: &content,
                };
                self.store.keep_private_answer(&kept, now).await?;
                render::answer(
                    &answer,
                    &by,
                    q.answer_thread(),
                    Some(share_id.expose_secret()),
                    Some(job.id),
                )
            }
            _ => render::answer(&answer, &by, q.answer_thread(), None, Some(job.id)),
        };
        let outbox = Outbox {
            answered: true,
            placeholder: placeholder.clone(),
            stream,
            messages: rendered.messages,
            csv: rendered.csv,
            chart: answer.table.as_ref().filter(|_| self.charts).and_then(chart::chart),
            shown: Some(shown),
        };
        let target = FeedbackTarget::of(self.agent.name(), answer.conversation.as_ref());
        let target = serde_json::to_string(&target).expect("a feedback target serialises");
        self.store.keep_feedback_target(job.id, &target).await?;
        self.keep(job, &outbox).await?;
        placeholder.take();
        self.deliver(job, q, &outbox, 0).await?;
        Ok(Ending::Delivered)
    }

    /// The status of `q`'s assistant thread, shown, when `q` was asked in one (and titling
    /// the thread with its first question). `None` elsewhere, or when Slack refuses the
    /// status: a placeholder message is shown instead.
    async fn assistant_status(&self, q: &Question) -> Option<ThreadStatus<'_>> {
        let thread = q.dm_thread()?;
        let needs_title = match self.store.assistant_thread_needs_title(&q.channel, thread).await {
            Ok(known) => known?,
            Err(error) => {
                tracing::warn!(error = %error, "could not look up an assistant thread");
                return None;
            }
        };
        match ThreadStatus::show(&self.slack, &q.channel, thread, &q.text, needs_title).await {
            Ok(status) => Some(status),
            Err(error) => {
                tracing::info!(error = %error, "Slack refused an assistant thread status; showing a placeholder");
                None
            }
        }
    }

    /// Runs the agent. Agents renew a refused token themselves and send the refused call
    /// again ([`crate::databricks::bearer`]); a refusal that still reaches here is asked
    /// about once more at the broker, so a grant that died meanwhile brings a prompt.
    async fn ask_agent(
        &self,
        job: &Job,
        q: &Question,
        prepared: Prepared,
        progress: &dyn Progress,
    ) -> Result<(AgentAnswer, UserContext), Unanswered> {
        let Prepared {
            context, conversation, ..
        } = prepared;
        let request = AgentRequest {
            question: q.text.clone(),
            context: context.clone(),
            thread: Thread {
                channel: q.channel.clone(),
                thread_ts: q.answer_thread().map(str::to_owned),
            },
            conversation,
            key: format!("{}:{}", job.reference(), q.ts),
            retry_since: (job.attempts > 1).then_some(job.created_at),
        };
        let span = tracing::info_span!(
            "agent",
            agent = self.agent.name(),
            otel.status_code = tracing::field::Empty,
        );
        let answered = self.agent.answer(&request, progress).instrument(span.clone()).await;
        if answered.is_err() {
            span.record("otel.status_code", "error");
        }
        match answered {
            Ok(answer) => Ok((answer, context)),
            Err(AgentError::Unauthorized) => match self.user_context(q, Some(context.version)).await {
                Err(error) => Err(Unanswered::Token(error)),
                Ok(_) => Err(Unanswered::Agent(AgentError::Unauthorized)),
            },
            Err(error) => Err(Unanswered::Agent(error)),
        }
    }

    /// What to do when the broker has no token for the asker.
    async fn without_token(&self, q: &Question, error: BrokerError) -> Result<Done, JobError> {
        match error {
            BrokerError::NotLinked => self.park_until_connected(q, Invitation::First).await,
            BrokerError::NeedsRelink { why, .. } => self.park_until_connected(q, Invitation::Again { why }).await,
            BrokerError::Transient(reason) => {
                tracing::warn!(reason, "no access token for now");
                Err(JobError::transient("Databricks sign-in is temporarily unavailable"))
            }
            BrokerError::Store(error) => Err(error.into()),
            // Operator problems: retrying will not help, so the person is told at once;
            // the cause is in the logs under the same reference.
            BrokerError::Misconfigured(_) => {
                let reason =
                    "the bot's connection to Databricks is misconfigured; your Slack admin can see why in the logs";
                self.reply_privately(q, messages::could_not_answer(reason, "oauth-client"))
                    .await?;
                Ok(Done::Finished)
            }
            BrokerError::Unreadable(_) => {
                let reason = "your stored Databricks connection cannot be read (its encryption key is missing, \
                              or it was altered); your Slack admin can see why in the logs";
                self.reply_privately(q, messages::could_not_answer(reason, "token-vault"))
                    .await?;
                Ok(Done::Finished)
            }
        }
    }

    /// Whether the asker is a person of this organisation, asking Slack once an hour.
    async fn asker(&self, q: &Question) -> Result<Membership, JobError> {
        let key = (q.team.clone(), q.user.clone());
        let now = self.clock.now();
        if let Some((asker, at)) = self.askers.lock().expect("not poisoned").get(&key)
            && now - at < USER_CACHE_TTL_SECONDS
        {
            return Ok(*asker);
        }
        let asker = self.slack.membership(&q.team, &q.user).await?;
        self.askers.lock().expect("not poisoned").insert(key, (asker, now));
        Ok(asker)
    }

    /// Parks the question until the person connects, sending a private prompt with a
    /// fresh single-use link — one prompt for a burst of questions, not one each.
    async fn park_until_connected(&self, q: &Question, invitation: Invitation) -> Result<Done, JobError> {
        let offer = offer_link(
            &self.store,
            &self.public_base_url,
            q.person(),
            self.clock.now(),
            PROMPT_QUIET_SECONDS,
        )
        .await?;
        if let Some(offer) = offer {
            let prompt = messages::connect_prompt(&offer.url, invitation);
            if let Err(error) = self.reply_privately(q, prompt).await {
                // Nobody saw this link: void it so the retry sends a new one.
                let _ = self
                    .store
                    .fail_pending_link(&offer.id_hash, "prompt not delivered", None)
                    .await;
                return Err(error);
            }
        }
        Ok(Done::Parked)
    }

    /// Shows that a question waits behind the person's others: a placeholder saying so in
    /// the thread (the run that answers it takes it over), or the assistant thread's
    /// status. Private answers get nothing until they start: an ephemeral message cannot
    /// be taken over. Kept with the job, so it is shown once.
    pub async fn announce_waiting(&self, job: &Job, q: &Question) {
        if let Err(error) = self.show_waiting(job, q).await {
            tracing::info!(error = %error, "could not record that a question was shown waiting");
        }
    }

    /// Shows the wait where it can; whatever Slack says, the job is marked as told, so one
    /// that cannot be shown is not tried again on every pass.
    async fn show_waiting(&self, job: &Job, q: &Question) -> Result<(), JobError> {
        let mut outbox = Outbox::default();
        if let Err(error) = self.show_wait(q, &mut outbox).await {
            tracing::info!(error = %error, "could not show that a question waits");
        }
        let kept = serde_json::to_string(&outbox).expect("an outbox serialises");
        if !self.store.keep_waiting_outbox(job, &kept).await? {
            // A worker took the question meanwhile and shows its own progress.
            self.remove_placeholder(q, outbox.placeholder.as_deref()).await;
        }
        Ok(())
    }

    /// Posts the wait's placeholder (into `outbox`) or sets the assistant thread's status.
    async fn show_wait(&self, q: &Question, outbox: &mut Outbox) -> Result<(), JobError> {
        if !q.text.is_empty() && self.asker(q).await? == Membership::Member {
            let shown = self.visibility(q).await;
            let assistant_thread = q.dm_thread();
            let in_assistant_thread = match assistant_thread {
                Some(thread) => self
                    .store
                    .assistant_thread_needs_title(&q.channel, thread)
                    .await?
                    .is_some(),
                None => false,
            };
            match (shown, assistant_thread) {
                (Shown::InThread, Some(thread)) if in_assistant_thread => {
                    self.slack
                        .set_assistant_status(&q.channel, thread, Placeholder::QUEUED)
                        .await?;
                }
                (Shown::InThread, _) => {
                    let ts = self
                        .slack
                        .post_message(&q.channel, q.answer_thread(), messages::working(Placeholder::QUEUED))
                        .await?;
                    outbox.placeholder = Some(ts);
                }
                (Shown::Privately, _) => {}
            }
            outbox.shown = Some(shown);
        }
        Ok(())
    }

    /// Tells the person their question failed, once retries ran out, removing what is
    /// left of its placeholder.
    pub async fn give_up(&self, job: &Job, q: &Question, error: &JobError, reference: &str) {
        let why = match error {
            JobError::Transient { reason, .. } => format!("{reason}; please try again in a few minutes"),
            JobError::Permanent(_) => "something went wrong on my side".to_owned(),
        };
        // How far this run got, as kept with the job.
        let outbox = match self.store.job_outbox(job).await {
            Ok(kept) => kept.and_then(|(kept, sent)| {
                let outbox = serde_json::from_str::<Outbox>(&kept).ok()?;
                Some((outbox, usize::try_from(sent).unwrap_or(0)))
            }),
            Err(e) => {
                tracing::warn!(error = %e, reference, "could not read how far an answer got");
                None
            }
        };
        if let Some((outbox, sent)) = &outbox {
            self.remove_placeholder(q, outbox.placeholder_at(*sent)).await;
            if let Some(stream) = outbox.stream_at(*sent) {
                stream.interrupt(self, q, STREAM_FAILED).await;
            }
        }
        let reason = match outbox {
            Some((outbox, sent)) if outbox.answered && sent >= outbox.messages.len() => CSV_NOT_ATTACHED.to_owned(),
            Some((_, sent)) if sent > 0 => format!("the rest of the answer could not be posted: {why}"),
            _ => why,
        };
        if let Err(e) = self
            .reply_privately(q, messages::could_not_answer(&reason, reference))
            .await
        {
            tracing::error!(error = %e, reference, "could not tell the person their question failed");
        }
    }
}

/// Why an agent run ended without an answer.
enum Unanswered {
    /// No usable token (after Databricks refused the one we had).
    Token(BrokerError),
    Agent(AgentError),
}
