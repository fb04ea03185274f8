//! Where a queued question becomes an answer — or a private "Connect Databricks" prompt.
//!
//! For each question: an empty one gets help; bots and people from another organisation
//! are turned away; a linked person's question goes to the agent and the answer is posted
//! where it was asked; anyone else gets a fresh single-use link, privately, with the
//! question kept to answer after linking.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use slack_morphism::prelude::*;
use url::Url;

use crate::agent::{Agent, AgentAnswer, AgentError, AgentRequest, Progress, Thread, Unwatched, UserContext};
use crate::clock::SharedClock;
use crate::config::AnswerVisibility;
use crate::crypto::random_token;
use crate::databricks::broker::{BrokerError, TokenBroker};
use crate::domain::{PersonIn, TeamId, UserId};
use crate::jobs::breaker::{Breaker, OPEN_SECONDS};
use crate::jobs::worker::{Done, JobError, JobHandler};
use crate::linking::offer_link;
use crate::metrics::{AnswerOutcome, Metrics};
use crate::slack::api::{FileUpload, SlackApi};
use crate::slack::messages;
use crate::slack::render::{self, Attribution};
use crate::store::Store;
use crate::store::jobs::Job;
use crate::store::private_answers::NewPrivateAnswer;

/// The `jobs.kind` of a question.
pub const QUESTION_JOB: &str = "question";

/// How long what we learned about a Slack user (bot? another organisation?) is trusted.
const USER_CACHE_TTL_SECONDS: i64 = 3600;

/// Further questions within this many seconds of a prompt wait for the same link.
const PROMPT_QUIET_SECONDS: i64 = 60;

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
}

/// What we know about an asker from `users.info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asker {
    Person,
    Bot,
    /// From another organisation (a Slack Connect channel).
    External,
}

/// Answers questions.
pub struct Questions {
    store: Store,
    slack: SlackApi,
    broker: Arc<TokenBroker>,
    agent: Arc<dyn Agent>,
    public_base_url: Url,
    visibility: AnswerVisibility,
    clock: SharedClock,
    askers: Mutex<HashMap<(TeamId, UserId), (Asker, i64)>>,
    metrics: Arc<Metrics>,
    breaker: Breaker,
}

impl Questions {
    /// A handler posting through `slack`, answering with `agent`, building links on
    /// `public_base_url`.
    pub fn new(
        store: Store,
        slack: SlackApi,
        broker: Arc<TokenBroker>,
        agent: Arc<dyn Agent>,
        public_base_url: Url,
        visibility: AnswerVisibility,
        clock: SharedClock,
    ) -> Self {
        Self {
            store,
            slack,
            broker,
            agent,
            public_base_url,
            visibility,
            clock,
            askers: Mutex::new(HashMap::new()),
            metrics: Arc::new(Metrics::new()),
            breaker: Breaker::default(),
        }
    }

    /// Counts answers in `metrics` (shown at `/metrics`).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    fn record(&self, outcome: AnswerOutcome, started: Instant) {
        let seconds = started.elapsed().as_secs_f64();
        self.metrics.record_answer(self.agent.name(), outcome, seconds);
    }

    /// Asks the agent and posts its answer. `kept` is the placeholder an earlier run of
    /// this job left in the thread (it failed for a moment, or its worker died), which is
    /// reused rather than joined by another.
    async fn answer(&self, job: &Job, q: &Question, kept: Option<String>) -> Result<Done, JobError> {
        if q.text.is_empty() {
            self.reply_privately(q, messages::help(q.bot_user_id.as_deref()))
                .await?;
            return Ok(Done::Finished);
        }
        match self.asker(q).await? {
            Asker::Bot => {
                tracing::info!("question from a bot ignored");
                return Ok(Done::Finished);
            }
            Asker::External => {
                self.reply_privately(q, messages::external_user_refusal()).await?;
                return Ok(Done::Finished);
            }
            Asker::Person => {}
        }
        let context = match self.broker.user_context(&q.team, &q.user, None).await {
            Ok(context) => context,
            Err(error) => {
                self.remove_placeholder(q, kept.as_deref()).await;
                return self.without_token(q, error).await;
            }
        };
        let key = PersonIn {
            team: &q.team,
            user: &q.user,
            channel: &q.channel,
            thread_ts: q.answer_thread(),
        };
        let conversation = self
            .store
            .conversation(key, self.agent.name())
            .await?
            .and_then(|kept| serde_json::from_str(&kept).ok());
        // REL-04: while the agent keeps failing, questions wait in the queue, not on it.
        if let Some(seconds) = self.breaker.open_for(self.clock.now()) {
            tracing::info!(retry_in_s = seconds, "the agent keeps failing; the question waits");
            return Err(JobError::Transient {
                reason: "Databricks is not answering right now".into(),
                retry_after: Some(Duration::from_secs(seconds.unsigned_abs())),
            });
        }
        // Progress is shown in a placeholder in the thread; private answers go without
        // one (an ephemeral message cannot be updated).
        let placeholder = match self.visibility(q) {
            AnswerVisibility::Thread => Some(Placeholder::show(&self.slack, q, kept.as_deref()).await?),
            AnswerVisibility::Private => None,
        };
        if let Some(shown) = placeholder.as_ref().filter(|p| kept.as_deref() != Some(p.ts.as_str())) {
            // Kept with the job: a retry, or another worker after a crash, reuses it.
            let waiting = Outbox {
                placeholder: Some(shown.ts.clone()),
                ..Outbox::default()
            };
            if let Err(error) = self.keep(job, &waiting).await {
                self.remove_placeholder(q, Some(&shown.ts)).await;
                return Err(error);
            }
        }
        let progress: &dyn Progress = match &placeholder {
            Some(placeholder) => placeholder,
            None => &Unwatched,
        };
        let started = Instant::now();
        let asked = self.ask_agent(q, context, conversation, progress).await;
        match &asked {
            Err(Unanswered::Agent(AgentError::Transient { reason, .. })) => {
                if self.breaker.failed(self.clock.now()) {
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
        let (answer, context) = match asked {
            Ok(answered) => answered,
            Err(unanswered) => {
                match (&unanswered, &placeholder) {
                    // The retry takes the placeholder over; meanwhile it says why it waits.
                    (Unanswered::Agent(AgentError::Transient { .. }), Some(shown)) => {
                        shown.working_on(Placeholder::RETRYING).await;
                    }
                    _ => {
                        self.remove_placeholder(q, placeholder.as_ref().map(|p| p.ts.as_str()))
                            .await;
                    }
                }
                if let Unanswered::Agent(error) = &unanswered {
                    let outcome = match error {
                        AgentError::NoAccess(_) => AnswerOutcome::NoAccess,
                        AgentError::Transient { .. } => AnswerOutcome::Retry,
                        AgentError::Failed(_) | AgentError::Unauthorized => AnswerOutcome::Failed,
                    };
                    self.record(outcome, started);
                }
                return self.unanswered(job, q, unanswered).await;
            }
        };
        let placeholder = placeholder.map(|placeholder| placeholder.ts);
        let still_linked = match self.still_linked(q).await {
            Ok(linked) => linked,
            Err(error) => {
                self.remove_placeholder(q, placeholder.as_deref()).await;
                return Err(error);
            }
        };
        if !still_linked {
            self.record(AnswerOutcome::Dropped, started);
            return self.drop_answer(q, placeholder.as_deref()).await;
        }
        self.record(AnswerOutcome::Answered, started);
        let now = self.clock.now();
        // Losing the thread's context is better than asking the agent all over again.
        if let Some(kept) = &answer.conversation
            && let Err(error) = self
                .store
                .save_conversation(key, self.agent.name(), &kept.to_string(), now)
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
        let rendered = match self.visibility(q) {
            // A private answer to a mention can be shared in its channel by its asker.
            AnswerVisibility::Private if !q.is_dm && q.response_url.is_none() => {
                let share_id = random_token();
                let public = render::answer(&answer, &by, q.answer_thread(), None);
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
                render::answer(&answer, &by, q.answer_thread(), Some(share_id.expose_secret()))
            }
            _ => render::answer(&answer, &by, q.answer_thread(), None),
        };
        let outbox = Outbox {
            answered: true,
            placeholder,
            messages: rendered.messages,
            csv: rendered.csv,
        };
        if let Err(error) = self.keep(job, &outbox).await {
            self.remove_placeholder(q, outbox.placeholder.as_deref()).await;
            return Err(error);
        }
        self.deliver(job, q, &outbox, 0).await?;
        Ok(Done::Finished)
    }

    /// Posts what an earlier run of this job left undelivered; the agent is not asked
    /// again.
    async fn resume(&self, job: &Job, q: &Question, outbox: &Outbox, sent: usize) -> Result<Done, JobError> {
        tracing::info!(sent, of = outbox.messages.len(), "resuming an answer's delivery");
        if !self.still_linked(q).await? {
            return self.drop_answer(q, outbox.placeholder_at(sent)).await;
        }
        self.deliver(job, q, outbox, sent).await?;
        Ok(Done::Finished)
    }

    /// TOK-07: whether the asker still has the connection their answer was made with.
    async fn still_linked(&self, q: &Question) -> Result<bool, JobError> {
        Ok(self.store.find_link(&q.team, &q.user).await?.is_some())
    }

    /// Drops an answer made with a connection the person has since removed, and tells
    /// them why.
    async fn drop_answer(&self, q: &Question, placeholder: Option<&str>) -> Result<Done, JobError> {
        tracing::info!("the person disconnected while their question was answered; answer dropped");
        self.remove_placeholder(q, placeholder).await;
        self.reply_privately(q, messages::dropped_after_disconnect()).await?;
        Ok(Done::Finished)
    }

    /// Runs the agent; when Databricks refuses the token, refreshes it once and asks once
    /// more.
    async fn ask_agent(
        &self,
        q: &Question,
        mut context: UserContext,
        conversation: Option<serde_json::Value>,
        progress: &dyn Progress,
    ) -> Result<(AgentAnswer, UserContext), Unanswered> {
        let mut refused_once = false;
        loop {
            let request = AgentRequest {
                question: q.text.clone(),
                context: context.clone(),
                thread: Thread {
                    channel: q.channel.clone(),
                    thread_ts: q.answer_thread().map(str::to_owned),
                },
                conversation: conversation.clone(),
            };
            match self.agent.answer(&request, progress).await {
                Ok(answer) => return Ok((answer, context)),
                Err(AgentError::Unauthorized) if !refused_once => {
                    refused_once = true;
                    context = self
                        .broker
                        .user_context(&q.team, &q.user, Some(context.version))
                        .await
                        .map_err(Unanswered::Token)?;
                }
                Err(error) => return Err(Unanswered::Agent(error)),
            }
        }
    }

    /// Tells the person why there is no answer, or schedules another try.
    async fn unanswered(&self, job: &Job, q: &Question, unanswered: Unanswered) -> Result<Done, JobError> {
        let reference = job.reference();
        let error = match unanswered {
            Unanswered::Token(error) => return self.without_token(q, error).await,
            Unanswered::Agent(error) => error,
        };
        match error {
            AgentError::Unauthorized => Err(JobError::Permanent(
                "Databricks refused a freshly refreshed token".into(),
            )),
            AgentError::Transient { reason, retry_after } => Err(JobError::Transient { reason, retry_after }),
            AgentError::NoAccess(databricks_says) => {
                tracing::info!(reference, "Databricks denied the person access; told them");
                self.reply_privately(q, messages::no_access(&databricks_says, &reference))
                    .await?;
                Ok(Done::Finished)
            }
            AgentError::Failed(reason) => {
                tracing::warn!(reference, reason, "the agent could not answer; told the person");
                self.reply_privately(q, messages::could_not_answer(&reason, &reference))
                    .await?;
                Ok(Done::Finished)
            }
        }
    }

    /// Posts an answer from its `sent`th message on: in the thread (the first message
    /// replaces the placeholder), or privately; then the CSV, where the answer went (a
    /// private answer's: the person's direct messages with the bot). Each message taken is
    /// ticked off with the job, so a Slack failure part-way is retried from where it
    /// stopped.
    async fn deliver(&self, job: &Job, q: &Question, outbox: &Outbox, mut sent: usize) -> Result<(), JobError> {
        let mut placeholder = outbox.placeholder_at(sent).map(str::to_owned);
        for content in outbox.messages.iter().skip(sent) {
            let mut posted = self.post_part(q, &mut placeholder, content.clone()).await;
            // Slack refused the message itself, most likely over blocks the company's agent
            // sent: the answer's words still go out.
            if let Err(JobError::Permanent(refused)) = &posted
                && let Some(plain) = render::plain(content)
            {
                tracing::warn!(
                    refused,
                    "Slack refused an answer's blocks; posting it without the agent's"
                );
                posted = self.post_part(q, &mut placeholder, plain).await;
            }
            posted?;
            sent += 1;
            if !self.store.tick_outbox(job, sent as i64).await? {
                return Err(JobError::transient("another worker took over this question"));
            }
        }
        let Some(csv) = &outbox.csv else {
            return Ok(());
        };
        let (channel, thread) = match self.visibility(q) {
            AnswerVisibility::Thread => (q.channel.clone(), q.answer_thread().map(str::to_owned)),
            AnswerVisibility::Private if q.is_dm && q.response_url.is_none() => {
                (q.channel.clone(), q.thread_ts.clone())
            }
            // A slash command may come from a conversation the bot is not a member of.
            AnswerVisibility::Private => (self.slack.open_dm(q.user.as_str()).await?, None),
        };
        match self.slack.upload_file(&channel, thread.as_deref(), csv).await {
            Ok(()) => Ok(()),
            Err(error) if error.is_transient() => Err(error.into()),
            Err(error) => {
                let reference = job.reference();
                tracing::warn!(error = %error, reference, "could not attach a result as a CSV file");
                self.reply_privately(q, messages::could_not_answer(CSV_NOT_ATTACHED, &reference))
                    .await
            }
        }
    }

    /// Posts one message of an answer; in the thread, the first replaces the placeholder
    /// (or, when Slack will not update it, the placeholder is deleted and the message
    /// posted anew).
    async fn post_part(
        &self,
        q: &Question,
        placeholder: &mut Option<String>,
        content: SlackMessageContent,
    ) -> Result<(), JobError> {
        if self.visibility(q) == AnswerVisibility::Private {
            return self.reply_privately(q, content).await;
        }
        if let Some(ts) = placeholder.as_deref() {
            match self.slack.update_message(&q.channel, ts, content.clone()).await {
                Ok(()) => {
                    *placeholder = None;
                    return Ok(());
                }
                // Kept for the retry to replace.
                Err(error) if error.is_transient() => return Err(error.into()),
                Err(error) => {
                    tracing::warn!(error = %error, "could not replace the placeholder; posting the answer anew");
                    self.remove_placeholder(q, placeholder.take().as_deref()).await;
                }
            }
        }
        self.slack
            .post_message(&q.channel, q.answer_thread(), content)
            .await
            .map(|_| ())
            .map_err(JobError::from)
    }

    /// Keeps `outbox` with the job, for a retry to resume from.
    async fn keep(&self, job: &Job, outbox: &Outbox) -> Result<(), JobError> {
        let kept = serde_json::to_string(outbox).expect("an outbox serialises");
        if self.store.keep_outbox(job, &kept).await? {
            Ok(())
        } else {
            Err(JobError::transient("another worker took over this question"))
        }
    }

    /// Deletes the "Thinking…" placeholder at `ts`, if there is one.
    async fn remove_placeholder(&self, q: &Question, ts: Option<&str>) {
        let Some(ts) = ts else { return };
        if let Err(error) = self.slack.delete_message(&q.channel, ts).await {
            tracing::warn!(error = %error, "could not delete a placeholder");
        }
    }

    /// Where this question's answer goes: slash commands are always answered privately.
    fn visibility(&self, q: &Question) -> AnswerVisibility {
        if q.response_url.is_some() {
            AnswerVisibility::Private
        } else {
            self.visibility
        }
    }

    /// What to do when the broker has no token for the asker.
    async fn without_token(&self, q: &Question, error: BrokerError) -> Result<Done, JobError> {
        match error {
            BrokerError::NotLinked => self.park_until_connected(q, false).await,
            BrokerError::NeedsRelink { .. } => self.park_until_connected(q, true).await,
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
    async fn asker(&self, q: &Question) -> Result<Asker, JobError> {
        let key = (q.team.clone(), q.user.clone());
        let now = self.clock.now();
        if let Some((asker, at)) = self.askers.lock().expect("not poisoned").get(&key)
            && now - at < USER_CACHE_TTL_SECONDS
        {
            return Ok(*asker);
        }
        let asker = match self.slack.user_info(q.user.as_str()).await {
            Ok(user) if user.flags.is_bot == Some(true) => Asker::Bot,
            Ok(user)
                if user.flags.is_stranger == Some(true)
                    || user.team_id.as_ref().is_some_and(|t| t.as_ref() != q.team.as_str())
                        && user.enterprise_user.is_none() =>
            {
                Asker::External
            }
            Ok(_) => Asker::Person,
            Err(error) if error.is_transient() => return Err(error.into()),
            Err(error) => {
                // Without users:read we cannot tell; treat the asker as one of ours (the
                // link's identity check still decides whose data they can see).
                tracing::warn!(error = %error, "users.info failed; assuming an internal person");
                Asker::Person
            }
        };
        self.askers.lock().expect("not poisoned").insert(key, (asker, now));
        Ok(asker)
    }

    /// Parks the question until the person connects, sending a private prompt with a
    /// fresh single-use link — one prompt for a burst of questions, not one each.
    async fn park_until_connected(&self, q: &Question, reconnect: bool) -> Result<Done, JobError> {
        let to = PersonIn {
            team: &q.team,
            user: &q.user,
            channel: &q.channel,
            thread_ts: q.answer_thread(),
        };
        let offer = offer_link(
            &self.store,
            &self.public_base_url,
            to,
            self.clock.now(),
            PROMPT_QUIET_SECONDS,
        )
        .await?;
        if let Some(offer) = offer {
            let prompt = messages::connect_prompt(&offer.url, reconnect);
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

    /// Ephemeral in a channel (a DM when Slack refuses that, e.g. the person left the
    /// channel); a plain message in a DM. An ephemeral goes into a thread only if the
    /// question was already in one: Slack does not show ephemerals in a thread that has
    /// no replies yet.
    async fn reply_privately(&self, q: &Question, content: SlackMessageContent) -> Result<(), JobError> {
        if let Some(url) = &q.response_url {
            let reply = SlackApiPostWebhookMessageRequest::new(content.clone()).with_replace_original(false);
            match self.slack.respond(&SlackResponseUrl(url.clone()), &reply).await {
                Ok(()) => return Ok(()),
                Err(error) if error.is_transient() => return Err(error.into()),
                Err(error) => {
                    tracing::info!(error = %error, "the command's response_url is used up; sending a direct message");
                    let dm = self.slack.open_dm(q.user.as_str()).await?;
                    return self
                        .slack
                        .post_message(&dm, None, content)
                        .await
                        .map(|_| ())
                        .map_err(JobError::from);
                }
            }
        }
        if q.is_dm {
            return self
                .slack
                .post_message(&q.channel, q.thread_ts.as_deref(), content)
                .await
                .map(|_| ())
                .map_err(JobError::from);
        }
        match self
            .slack
            .post_ephemeral(&q.channel, q.user.as_str(), q.thread_ts.as_deref(), content.clone())
            .await
        {
            Ok(()) => Ok(()),
            Err(error) if error.is_transient() => Err(error.into()),
            Err(error) => {
                tracing::info!(
                    code = error.code(),
                    "ephemeral reply refused; sending a direct message instead"
                );
                let dm = self.slack.open_dm(q.user.as_str()).await?;
                self.slack
                    .post_message(&dm, None, content)
                    .await
                    .map(|_| ())
                    .map_err(JobError::from)
            }
        }
    }
}

/// What a question's job sends to Slack, kept with the job: its "Thinking…" placeholder
/// as soon as it is posted, then the agent's answer, written once; the job counts the
/// messages Slack has taken (`jobs.outbox_sent`). A retry after a Slack failure resumes
/// there instead of asking the agent again (which would post parts twice, and ask Genie
/// the question twice).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Outbox {
    /// Whether the agent has answered (`messages` and `csv` are its answer).
    answered: bool,
    /// The "Thinking…" message the first message replaces.
    placeholder: Option<String>,
    /// The answer's messages, in order.
    messages: Vec<SlackMessageContent>,
    /// The whole table, when it did not fit inline: attached after the messages.
    csv: Option<FileUpload>,
}

impl Outbox {
    /// The placeholder still in the thread once `sent` messages went out: the first one
    /// replaced it.
    fn placeholder_at(&self, sent: usize) -> Option<&str> {
        self.placeholder.as_deref().filter(|_| sent == 0)
    }
}

/// Why an agent run ended without an answer.
enum Unanswered {
    /// No usable token (after Databricks refused the one we had).
    Token(BrokerError),
    Agent(AgentError),
}

/// The "Thinking…" message in the thread, updated as the agent works and replaced by
/// the answer.
struct Placeholder<'a> {
    slack: &'a SlackApi,
    channel: String,
    ts: String,
    shown: tokio::sync::Mutex<String>,
}

impl<'a> Placeholder<'a> {
    const FIRST: &'static str = "Thinking…";
    /// Shown while a question waits to be tried again.
    const RETRYING: &'static str = "Taking longer than usual — I'll try again in a moment…";

    /// Shows "Thinking…": in the placeholder at `kept` when Slack still has it, else in a
    /// new one.
    async fn show(slack: &'a SlackApi, q: &Question, kept: Option<&str>) -> Result<Self, JobError> {
        let reused = match kept {
            Some(ts) => match slack
                .update_message(&q.channel, ts, messages::working(Self::FIRST))
                .await
            {
                Ok(()) => Some(ts.to_owned()),
                Err(error) if error.is_transient() => return Err(error.into()),
                Err(error) => {
                    tracing::info!(error = %error, "the earlier placeholder is gone; posting a new one");
                    None
                }
            },
            None => None,
        };
        let ts = match reused {
            Some(ts) => ts,
            None => {
                slack
                    .post_message(&q.channel, q.answer_thread(), messages::working(Self::FIRST))
                    .await?
            }
        };
        Ok(Self {
            slack,
            channel: q.channel.clone(),
            ts,
            shown: tokio::sync::Mutex::new(Self::FIRST.to_owned()),
        })
    }
}

#[async_trait]
impl Progress for Placeholder<'_> {
    async fn working_on(&self, status: &str) {
        let mut shown = self.shown.lock().await;
        if *shown == status {
            return;
        }
        match self
            .slack
            .update_message(&self.channel, &self.ts, messages::working(status))
            .await
        {
            Ok(()) => *shown = status.to_owned(),
            Err(error) => tracing::debug!(error = %error, "could not update a placeholder"),
        }
    }
}

fn parse(job: &Job) -> Result<Question, JobError> {
    serde_json::from_str(&job.payload).map_err(|e| JobError::Permanent(format!("unreadable question payload: {e}")))
}

#[async_trait]
impl JobHandler for Questions {
    async fn run(&self, job: &Job) -> Result<Done, JobError> {
        let q = parse(job)?;
        let outbox = match job.outbox.as_deref() {
            Some(kept) => serde_json::from_str::<Outbox>(kept)
                .map_err(|e| JobError::Permanent(format!("unreadable answer outbox: {e}")))?,
            None => Outbox::default(),
        };
        if outbox.answered {
            let sent = usize::try_from(job.outbox_sent).unwrap_or(0);
            self.resume(job, &q, &outbox, sent).await
        } else {
            self.answer(job, &q, outbox.placeholder).await
        }
    }

    async fn give_up(&self, job: &Job, error: &JobError, reference: &str) {
        let Ok(q) = parse(job) else { return };
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
            self.remove_placeholder(&q, outbox.placeholder_at(*sent)).await;
        }
        let reason = match outbox {
            Some((outbox, sent)) if outbox.answered && sent >= outbox.messages.len() => CSV_NOT_ATTACHED.to_owned(),
            Some((_, sent)) if sent > 0 => format!("the rest of the answer could not be posted: {why}"),
            _ => why,
        };
        if let Err(e) = self
            .reply_privately(&q, messages::could_not_answer(&reason, reference))
            .await
        {
            tracing::error!(error = %e, reference, "could not tell the person their question failed");
        }
    }
}
