//! Where a queued question becomes an answer — or a private "Connect Databricks" prompt.
//!
//! For each question: an empty one gets help; bots and people from another organisation
//! are turned away; a linked person's question goes to the agent and the answer is posted
//! where it was asked; anyone else gets a fresh single-use link, privately, with the
//! question kept to answer after linking.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use slack_morphism::prelude::*;
use url::Url;

use crate::agent::{Agent, AgentAnswer, AgentError, AgentRequest, Progress, Thread, Unwatched, UserContext};
use crate::clock::SharedClock;
use crate::config::AnswerVisibility;
use crate::databricks::broker::{BrokerError, TokenBroker};
use crate::domain::{PersonIn, TeamId, UserId};
use crate::http::metrics::{AnswerOutcome, Metrics};
use crate::linking::offer_link;
use crate::linking::random_token;
use crate::slack::api::SlackApi;
use crate::slack::messages;
use crate::slack::render::{self, Attribution, Rendered};
use crate::store::Store;
use crate::store::jobs::Job;
use crate::store::private_answers::NewPrivateAnswer;
use crate::worker::{Done, JobError, JobHandler};

/// The `jobs.kind` of a question.
pub const QUESTION_JOB: &str = "question";

/// How long what we learned about a Slack user (bot? another organisation?) is trusted.
const USER_CACHE_TTL_SECONDS: i64 = 3600;

/// Further questions within this many seconds of a prompt wait for the same link.
const PROMPT_QUIET_SECONDS: i64 = 60;

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

    async fn answer(&self, job: &Job, q: &Question) -> Result<Done, JobError> {
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
            Err(error) => return self.without_token(q, error).await,
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
        // Progress is shown in a placeholder in the thread; private answers go without
        // one (an ephemeral message cannot be updated).
        let placeholder = match self.visibility(q) {
            AnswerVisibility::Thread => Some(Placeholder::post(&self.slack, q).await?),
            AnswerVisibility::Private => None,
        };
        let progress: &dyn Progress = match &placeholder {
            Some(placeholder) => placeholder,
            None => &Unwatched,
        };
        let started = Instant::now();
        let (answer, context) = match self.ask_agent(q, context, conversation, progress).await {
            Ok(answered) => answered,
            Err(unanswered) => {
                if let Some(placeholder) = placeholder {
                    placeholder.remove().await;
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
        // TOK-07: an answer made with a connection the person has since removed is dropped.
        let still_linked = match self.store.find_link(&q.team, &q.user).await {
            Ok(link) => link.is_some(),
            Err(error) => {
                if let Some(placeholder) = placeholder {
                    placeholder.remove().await;
                }
                return Err(error.into());
            }
        };
        if !still_linked {
            self.record(AnswerOutcome::Dropped, started);
            tracing::info!("the person disconnected while their question was answered; answer dropped");
            if let Some(placeholder) = placeholder {
                placeholder.remove().await;
            }
            self.reply_privately(q, messages::dropped_after_disconnect()).await?;
            return Ok(Done::Finished);
        }
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
        self.deliver(job, q, placeholder, rendered).await?;
        self.record(AnswerOutcome::Answered, started);
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

    /// Posts a rendered answer: in the thread (the first message replaces the
    /// placeholder), or privately; a CSV goes where the answer went (privately: to the
    /// person's direct messages).
    async fn deliver(
        &self,
        job: &Job,
        q: &Question,
        placeholder: Option<Placeholder<'_>>,
        rendered: Rendered,
    ) -> Result<(), JobError> {
        let thread = q.answer_thread();
        let mut messages = rendered.messages.into_iter();
        let (file_channel, file_thread) = match self.visibility(q) {
            AnswerVisibility::Thread => {
                let mut first = messages.next();
                if let (Some(placeholder), Some(content)) = (placeholder, first.clone())
                    && placeholder.replace(content).await
                {
                    first = None;
                }
                for content in first.into_iter().chain(messages) {
                    self.slack.post_message(&q.channel, thread, content).await?;
                }
                (q.channel.clone(), thread.map(str::to_owned))
            }
            AnswerVisibility::Private => {
                for content in messages {
                    self.reply_privately(q, content).await?;
                }
                if q.is_dm {
                    (q.channel.clone(), q.thread_ts.clone())
                } else {
                    (self.slack.open_dm(q.user.as_str()).await?, None)
                }
            }
        };
        if let Some(csv) = rendered.csv
            && let Err(error) = self
                .slack
                .upload_file(&file_channel, file_thread.as_deref(), &csv)
                .await
        {
            let reference = job.reference();
            tracing::warn!(error = %error, reference, "could not attach a result as a CSV file");
            let note = "the full result could not be attached as a file; ask for fewer rows";
            self.reply_privately(q, messages::could_not_answer(note, &reference))
                .await?;
        }
        Ok(())
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

    async fn post(slack: &'a SlackApi, q: &Question) -> Result<Self, JobError> {
        let ts = slack
            .post_message(&q.channel, q.answer_thread(), messages::working(Self::FIRST))
            .await?;
        Ok(Self {
            slack,
            channel: q.channel.clone(),
            ts,
            shown: tokio::sync::Mutex::new(Self::FIRST.to_owned()),
        })
    }

    /// Replaces the placeholder with `content`; false when Slack would not (the answer is
    /// then posted as a new message).
    async fn replace(&self, content: SlackMessageContent) -> bool {
        match self.slack.update_message(&self.channel, &self.ts, content).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(error = %error, "could not replace the placeholder; posting the answer anew");
                self.remove().await;
                false
            }
        }
    }

    /// Deletes the placeholder (the person is told privately why there is no answer).
    async fn remove(&self) {
        if let Err(error) = self.slack.delete_message(&self.channel, &self.ts).await {
            tracing::warn!(error = %error, "could not delete a placeholder");
        }
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
        self.answer(job, &parse(job)?).await
    }

    async fn give_up(&self, job: &Job, error: &JobError, reference: &str) {
        let Ok(q) = parse(job) else { return };
        let reason = match error {
            JobError::Transient { reason, .. } => format!("{reason}; please try again in a few minutes"),
            JobError::Permanent(_) => "something went wrong on my side".to_owned(),
        };
        if let Err(e) = self
            .reply_privately(&q, messages::could_not_answer(&reason, reference))
            .await
        {
            tracing::error!(error = %e, reference, "could not tell the person their question failed");
        }
    }
}
