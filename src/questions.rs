//! Where a queued question becomes an answer — or a private "Connect Databricks" prompt.
//!
//! For each question: an empty one gets help; bots and people from another organisation
//! are turned away; a linked person's question goes to the agent and the answer is posted
//! where it was asked; anyone else gets a fresh single-use link, privately, with the
//! question kept to answer after linking.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use slack_morphism::prelude::SlackMessageContent;
use url::Url;

use crate::agent::{Agent, AgentError, AgentRequest, Thread, Unwatched};
use crate::clock::SharedClock;
use crate::databricks::broker::{BrokerError, TokenBroker};
use crate::domain::{TeamId, UserId};
use crate::linking::{LinkId, PENDING_LINK_TTL_SECONDS};
use crate::slack::api::{SlackApi, SlackApiError};
use crate::slack::messages;
use crate::store::Store;
use crate::store::jobs::Job;
use crate::store::pending_links::NewPendingLink;
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
}

impl Question {
    /// Where the answer goes: in channels always a thread (the question's, or one started
    /// on it); in a DM the conversation itself unless the question was in a thread.
    pub fn answer_thread(&self) -> Option<&str> {
        match (&self.thread_ts, self.is_dm) {
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
    clock: SharedClock,
    askers: Mutex<HashMap<(TeamId, UserId), (Asker, i64)>>,
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
        clock: SharedClock,
    ) -> Self {
        Self {
            store,
            slack,
            broker,
            agent,
            public_base_url,
            clock,
            askers: Mutex::new(HashMap::new()),
        }
    }

    async fn answer(&self, q: &Question) -> Result<Done, JobError> {
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
        let mut context = match self.broker.user_context(&q.team, &q.user, None).await {
            Ok(context) => context,
            Err(error) => return self.without_token(q, error).await,
        };
        let mut refused_once = false;
        let answer = loop {
            let request = AgentRequest {
                question: q.text.clone(),
                context: context.clone(),
                thread: Thread {
                    channel: q.channel.clone(),
                    thread_ts: q.answer_thread().map(str::to_owned),
                },
                conversation: None,
            };
            match self.agent.answer(&request, &Unwatched).await {
                Ok(answer) => break answer,
                // Databricks refused the token: refresh once, ask once more.
                Err(AgentError::Unauthorized) if !refused_once => {
                    refused_once = true;
                    context = match self.broker.user_context(&q.team, &q.user, Some(context.version)).await {
                        Ok(context) => context,
                        Err(error) => return self.without_token(q, error).await,
                    };
                }
                Err(AgentError::Unauthorized) => {
                    return Err(JobError::Permanent(
                        "Databricks refused a freshly refreshed token".into(),
                    ));
                }
                Err(AgentError::Transient { reason, retry_after }) => {
                    return Err(JobError::Transient { reason, retry_after });
                }
                Err(error @ (AgentError::Failed(_) | AgentError::NoAccess(_))) => {
                    return Err(JobError::Permanent(error.to_string()));
                }
            }
        };
        if let Err(error) = self.store.touch_link(&q.team, &q.user, self.clock.now()).await {
            tracing::warn!(error = %error, "could not record when a link was last used");
        }
        let content = messages::answer(&answer.text, &context.databricks_user_name);
        self.slack
            .post_message(&q.channel, q.answer_thread(), content)
            .await
            .map_err(slack_error)?;
        Ok(Done::Finished)
    }

    /// What to do when the broker has no token for the asker.
    async fn without_token(&self, q: &Question, error: BrokerError) -> Result<Done, JobError> {
        match error {
            BrokerError::NotLinked => self.park_until_connected(q, false).await,
            BrokerError::NeedsRelink { .. } => self.park_until_connected(q, true).await,
            BrokerError::Transient(reason) => Err(JobError::transient(reason)),
            BrokerError::Store(error) => Err(db_error(error)),
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
            Err(error) if error.is_transient() => return Err(slack_error(error)),
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
        let id = LinkId::generate();
        let id_hash = id.hash();
        let now = self.clock.now();
        let pending = NewPendingLink {
            id_hash: &id_hash,
            team: &q.team,
            user: &q.user,
            channel_id: &q.channel,
            thread_ts: q.answer_thread(),
            expires_at: now + PENDING_LINK_TTL_SECONDS,
        };
        let fresh = self
            .store
            .create_pending_link(&pending, now, PROMPT_QUIET_SECONDS)
            .await
            .map_err(db_error)?;
        if fresh {
            let prompt = messages::connect_prompt(&id.url(&self.public_base_url), reconnect);
            if let Err(error) = self.reply_privately(q, prompt).await {
                // Nobody saw this link: void it so the retry sends a new one.
                let _ = self
                    .store
                    .fail_pending_link(&id_hash, "prompt not delivered", None)
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
    pub(crate) async fn reply_privately(&self, q: &Question, content: SlackMessageContent) -> Result<(), JobError> {
        if q.is_dm {
            return self
                .slack
                .post_message(&q.channel, q.thread_ts.as_deref(), content)
                .await
                .map(|_| ())
                .map_err(slack_error);
        }
        match self
            .slack
            .post_ephemeral(&q.channel, q.user.as_str(), q.thread_ts.as_deref(), content.clone())
            .await
        {
            Ok(()) => Ok(()),
            Err(error) if error.is_transient() => Err(slack_error(error)),
            Err(error) => {
                tracing::info!(
                    code = error.code(),
                    "ephemeral reply refused; sending a direct message instead"
                );
                let dm = self.slack.open_dm(q.user.as_str()).await.map_err(slack_error)?;
                self.slack
                    .post_message(&dm, None, content)
                    .await
                    .map(|_| ())
                    .map_err(slack_error)
            }
        }
    }
}

fn db_error(error: sqlx::Error) -> JobError {
    JobError::transient(format!("database: {error}"))
}

fn slack_error(error: SlackApiError) -> JobError {
    match error {
        SlackApiError::RateLimited { retry_after } => JobError::Transient {
            reason: "Slack rate limited us".into(),
            retry_after,
        },
        e if e.is_transient() => JobError::transient(e.to_string()),
        e => JobError::Permanent(e.to_string()),
    }
}

fn parse(job: &Job) -> Result<Question, JobError> {
    serde_json::from_str(&job.payload).map_err(|e| JobError::Permanent(format!("unreadable question payload: {e}")))
}

#[async_trait]
impl JobHandler for Questions {
    async fn run(&self, job: &Job) -> Result<Done, JobError> {
        self.answer(&parse(job)?).await
    }

    async fn give_up(&self, job: &Job, error: &JobError, reference: &str) {
        let Ok(q) = parse(job) else { return };
        let reason = match error {
            JobError::Transient { .. } => "Databricks or Slack kept failing, please try again in a few minutes",
            JobError::Permanent(_) => "something went wrong on my side",
        };
        if let Err(e) = self
            .reply_privately(&q, messages::could_not_answer(reason, reference))
            .await
        {
            tracing::error!(error = %e, reference, "could not tell the person their question failed");
        }
    }
}
