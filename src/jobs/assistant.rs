//! Slack's assistant threads (the AI-app split view). When one starts, the person is
//! greeted and offered suggested prompts: the Genie space's own sample questions where
//! the person can read them (Databricks shows them to the space's editors only), else the
//! configured ones (`ASSISTANT_PROMPTS`). Questions asked in it show their progress as the
//! thread's status instead of a placeholder message, and the first one titles the thread
//! (`ThreadStatus`, in [`crate::jobs::question`]). Linking works there as anywhere: the prompt is shown
//! in the thread, and the kept question is answered in it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::clock::SharedClock;
use crate::config::GenieSpaces;
use crate::databricks::api::Databricks;
use crate::databricks::broker::{BrokerError, TokenBroker};
use crate::databricks::genie::GenieSpace;
use crate::domain::{TeamId, UserId};
use crate::jobs::worker::{Done, JobError};
use crate::services::Services;
use crate::slack::api::SlackApi;
use crate::slack::messages;
use crate::store::Store;

/// `assistant_thread_started`: a person opened a new assistant thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadStarted {
    pub team: TeamId,
    pub user: UserId,
    pub channel: String,
    pub thread_ts: String,
}

/// Greets new assistant threads.
pub struct Assistant {
    store: Store,
    slack: SlackApi,
    clock: SharedClock,
    prompts: Vec<String>,
    broker: Arc<TokenBroker>,
    http: reqwest::Client,
    genie_spaces: GenieSpaces,
}

/// Suggested prompts Slack shows at most.
const MAX_PROMPTS: usize = 4;

impl Assistant {
    pub fn new(services: &Services) -> Self {
        Self {
            store: services.store.clone(),
            slack: services.slack.clone(),
            clock: services.clock.clone(),
            prompts: services.assistant_prompts.clone(),
            broker: services.broker.clone(),
            http: services.http.clone(),
            genie_spaces: services.genie_spaces.clone(),
        }
    }

    /// The thread's suggested prompts: the sample questions of the Genie space answering
    /// there, read as the person, when they can read them; the configured ones otherwise.
    async fn prompts(&self, started: &ThreadStarted) -> Vec<String> {
        let Some(space) = self.genie_spaces.for_channel(&started.channel) else {
            return self.prompts.clone();
        };
        let context = match self.broker.user_context(&started.team, &started.user, None).await {
            Ok(context) => context,
            Err(BrokerError::NotLinked | BrokerError::NeedsRelink { .. }) => return self.prompts.clone(),
            Err(error) => {
                tracing::info!(error = %error, "no token to read the Genie space's sample questions");
                return self.prompts.clone();
            }
        };
        let bearer = context.bearer();
        let genie = GenieSpace::new(Databricks::new(&self.http, &context.host, &bearer), space);
        match genie.sample_questions().await {
            Ok(samples) if !samples.is_empty() => samples.into_iter().take(MAX_PROMPTS).collect(),
            Ok(_) => self.prompts.clone(),
            Err(error) => {
                tracing::info!(error = %error, "could not read the Genie space's sample questions");
                self.prompts.clone()
            }
        }
    }

    /// Remembers the thread, greets the person in it and sets its suggested prompts.
    pub async fn greet(&self, started: &ThreadStarted) -> Result<Done, JobError> {
        self.store
            .keep_assistant_thread(
                &started.team,
                &started.user,
                &started.channel,
                &started.thread_ts,
                self.clock.now(),
            )
            .await?;
        self.slack
            .post_message(
                &started.channel,
                Some(&started.thread_ts),
                messages::assistant_greeting(),
            )
            .await?;
        let prompts = self.prompts(started).await;
        if !prompts.is_empty()
            && let Err(error) = self
                .slack
                .set_suggested_prompts(&started.channel, &started.thread_ts, &prompts)
                .await
        {
            tracing::info!(error = %error, "could not set an assistant thread's suggested prompts");
        }
        Ok(Done::Finished)
    }
}
