//! "Share in channel": a private answer (`ANSWER_VISIBILITY=private`) posted in its
//! thread for everyone, once, by its asker only.

use serde::{Deserialize, Serialize};
use slack_morphism::prelude::*;
use url::Url;

use crate::domain::{TeamId, UserId};
use crate::jobs::worker::{Done, JobError};
use crate::services::Services;
use crate::slack::api::SlackApi;
use crate::slack::messages;
use crate::store::Store;

/// A click on "Share in channel", as queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareRequest {
    /// The private answer's id (the button's value).
    pub id: String,
    /// Who clicked: only the asker's own answer is found.
    pub team: TeamId,
    pub user: UserId,
    pub response_url: Option<Url>,
}

/// Runs share jobs.
pub struct Sharing {
    store: Store,
    slack: SlackApi,
}

impl Sharing {
    /// Share jobs over `services`.
    pub fn new(services: &Services) -> Self {
        Self {
            store: services.store.clone(),
            slack: services.slack.clone(),
        }
    }

    /// Posts a private answer in its channel for everyone, when its asker clicks "Share
    /// in channel", and removes the private copy.
    pub async fn share(&self, request: &ShareRequest) -> Result<Done, JobError> {
        let kept = self
            .store
            .private_answer(&request.id, &request.team, &request.user)
            .await?;
        let Some(kept) = kept else {
            let gone = SlackMessageContent::new()
                .with_text("This answer was already shared, or is more than a day old: ask again to share it.".into());
            self.respond(
                request,
                SlackApiPostWebhookMessageRequest::new(gone).with_replace_original(false),
            )
            .await;
            return Ok(Done::Finished);
        };
        let mut messages: Vec<SlackMessageContent> =
            serde_json::from_str(&kept.content).map_err(|e| JobError::Permanent(format!("unreadable answer: {e}")))?;
        if let Some(last) = messages.last_mut() {
            let mut blocks = last.blocks.take().unwrap_or_default();
            blocks.push(messages::shared_by(&request.user));
            last.blocks = Some(blocks);
        }
        // Posted before the private copy is removed: a failure leaves it to share again.
        for content in messages {
            self.slack
                .post_message(&kept.channel_id, kept.thread(), content)
                .await?;
        }
        self.store
            .forget_private_answer(&request.id, &request.team, &request.user)
            .await?;
        let delete = SlackApiPostWebhookMessageRequest::new(SlackMessageContent::new()).with_delete_original(true);
        self.respond(request, delete).await;
        Ok(Done::Finished)
    }

    /// Best effort through the click's `response_url` (the private copy stays otherwise).
    async fn respond(&self, request: &ShareRequest, response: SlackApiPostWebhookMessageRequest) {
        let Some(url) = request.response_url.clone() else {
            return;
        };
        if let Err(error) = self.slack.respond(&SlackResponseUrl(url), &response).await {
            tracing::info!(error = %error, "could not update the private answer after sharing");
        }
    }
}
