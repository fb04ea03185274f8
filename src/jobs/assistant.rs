//! Slack's assistant threads (the AI-app split view). When one starts, the person is
//! greeted and offered suggested prompts; questions asked in it show their progress as the
//! thread's status (`assistant.threads.setStatus`) instead of a placeholder message, and
//! the first one titles the thread. Linking works there as anywhere: the prompt is shown
//! in the thread, and the kept question is answered in it.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::agent::Progress;
use crate::clock::SharedClock;
use crate::domain::{TeamId, UserId};
use crate::jobs::worker::{Done, JobError};
use crate::services::Services;
use crate::slack::api::{SlackApi, SlackApiError};
use crate::slack::messages;
use crate::store::Store;

/// The longest thread title taken from a question.
const TITLE_CHARS: usize = 60;

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

/// A question's progress shown as its assistant thread's status.
pub struct ThreadStatus<'a> {
    slack: &'a SlackApi,
    channel: String,
    thread_ts: String,
    shown: tokio::sync::Mutex<String>,
}

impl<'a> ThreadStatus<'a> {
    /// Shows "is thinking…" on the thread (and titles it from `question` when `title`).
    /// An error means the status cannot be used here: show a placeholder instead.
    pub async fn show(
        slack: &'a SlackApi,
        channel: &str,
        thread_ts: &str,
        question: &str,
        title: bool,
    ) -> Result<Self, SlackApiError> {
        const FIRST: &str = "is thinking…";
        slack.set_assistant_status(channel, thread_ts, FIRST).await?;
        if title {
            let mut title: String = question.chars().take(TITLE_CHARS).collect();
            if question.chars().count() > TITLE_CHARS {
                title.push('…');
            }
            if let Err(error) = slack.set_assistant_title(channel, thread_ts, &title).await {
                tracing::info!(error = %error, "could not title an assistant thread");
            }
        }
        Ok(Self {
            slack,
            channel: channel.to_owned(),
            thread_ts: thread_ts.to_owned(),
            shown: tokio::sync::Mutex::new(FIRST.to_owned()),
        })
    }
}

#[async_trait]
impl Progress for ThreadStatus<'_> {
    async fn working_on(&self, status: &str) {
        let mut shown = self.shown.lock().await;
        if *shown == status {
            return;
        }
        match self
            .slack
            .set_assistant_status(&self.channel, &self.thread_ts, status)
            .await
        {
            Ok(()) => *shown = status.to_owned(),
            Err(error) => tracing::debug!(error = %error, "could not update an assistant thread's status"),
        }
    }
}
