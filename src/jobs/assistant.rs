//! Slack's assistant threads (the AI-app split view). When one starts, the person is
//! greeted and offered suggested prompts. Questions asked in it show their progress as the
//! thread's status instead of a placeholder message, and the first one titles the thread
//! (`ThreadStatus`, in [`crate::jobs::question`]). Linking works there as anywhere: the prompt is shown
//! in the thread, and the kept question is answered in it.

use serde::{Deserialize, Serialize};

use crate::clock::SharedClock;
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
}

impl Assistant {
    pub fn new(services: &Services) -> Self {
        Self {
            store: services.store.clone(),
            slack: services.slack.clone(),
            clock: services.clock.clone(),
            prompts: services.assistant_prompts.clone(),
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
        if !self.prompts.is_empty()
            && let Err(error) = self
                .slack
                .set_suggested_prompts(&started.channel, &started.thread_ts, &self.prompts)
                .await
        {
            tracing::info!(error = %error, "could not set an assistant thread's suggested prompts");
        }
        Ok(Done::Finished)
    }
}
