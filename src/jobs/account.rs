//! A person's Databricks connection as they see and control it from Slack: the App Home
//! tab, "Connect Databricks" there, and every Disconnect button (on the "Linked as …"
//! message, after `/databricks disconnect`, in App Home).
//!
//! Each path starts from a request Slack signed and runs as a queued job. Disconnecting
//! deletes the link with its sealed refresh and access tokens — every replica reads
//! tokens from that row, so none can answer as the person afterwards (TOK-07, TOK-08) —
//! records who did it, and revokes the refresh token where the workspace offers RFC 7009.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use slack_morphism::prelude::*;
use url::Url;

use crate::clock::SharedClock;
use crate::config::GenieSpaces;
use crate::databricks::broker::TokenBroker;
use crate::domain::{PersonIn, TeamId, UserId};
use crate::jobs::question::Question;
use crate::jobs::worker::{Done, JobError};
use crate::linking::offer_link;
use crate::services::Services;
use crate::slack::api::{Membership, SlackApi};
use crate::slack::messages::{self, RecentQuestion};
use crate::store::Store;
use crate::store::audit::Actor;

/// One person's account job, as queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRequest {
    pub team: TeamId,
    pub user: UserId,
    /// Where to answer a click (replacing the message that was clicked).
    #[serde(default)]
    pub response_url: Option<Url>,
}

/// How many of a person's questions App Home lists.
const RECENT_QUESTIONS: i64 = 5;

/// Runs account jobs.
pub struct Account {
    store: Store,
    slack: SlackApi,
    broker: Arc<TokenBroker>,
    public_base_url: Url,
    clock: SharedClock,
    genie_spaces: GenieSpaces,
}

impl Account {
    /// Account jobs over `services`.
    pub fn new(services: &Services) -> Self {
        Self {
            store: services.store.clone(),
            slack: services.slack.clone(),
            broker: services.broker.clone(),
            public_base_url: services.public_base_url.clone(),
            clock: services.clock.clone(),
            genie_spaces: services.genie_spaces.clone(),
        }
    }

    /// Forgets the person's link (idempotent) and tells them where they clicked.
    pub async fn disconnect(&self, request: &AccountRequest) -> Result<Done, JobError> {
        let link = self.store.find_link(&request.team, &request.user).await?;
        if let Some(link) = &link {
            self.broker.revoke(link).await;
        }
        let was_connected = self
            .store
            .delete_link(&request.team, &request.user, Actor::User, self.clock.now())
            .await?;
        tracing::info!(was_connected, "disconnected at the person's request");
        if let Some(url) = &request.response_url {
            let reply = SlackApiPostWebhookMessageRequest::new(messages::disconnected(was_connected))
                .with_replace_original(true);
            if let Err(error) = self.slack.respond(&SlackResponseUrl(url.clone()), &reply).await {
                tracing::info!(error = %error, "could not replace the clicked message");
            }
        }
        // The disconnect is done; a stale App Home is refreshed on the next visit anyway.
        if let Err(error) = self.publish_home(request).await {
            tracing::info!(error = %error, "could not refresh App Home after a disconnect");
        }
        Ok(Done::Finished)
    }

    /// Publishes the App Home tab for the person as things stand now.
    pub async fn publish_home(&self, request: &AccountRequest) -> Result<(), JobError> {
        let link = self.store.find_link(&request.team, &request.user).await?;
        let bot = self.slack.bot_identity().await.ok().map(|b| b.user_id.clone());
        let answering = messages::genie_spaces_line(&self.genie_spaces, None);
        let recent = self.recent_questions(request).await?;
        let blocks = messages::home(link.as_ref(), bot.as_deref(), answering, &recent);
        self.slack
            .publish_home(request.user.as_str(), blocks)
            .await
            .map_err(JobError::from)
    }

    /// The person's last questions with where each stands and a link to its message.
    async fn recent_questions(&self, request: &AccountRequest) -> Result<Vec<RecentQuestion>, JobError> {
        let rows = self
            .store
            .recent_questions(&request.team, &request.user, RECENT_QUESTIONS)
            .await?;
        let mut recent = Vec::with_capacity(rows.len());
        for (payload, state) in rows {
            let Ok(question) = serde_json::from_str::<Question>(&payload) else {
                continue;
            };
            if question.text.trim().is_empty() {
                continue;
            }
            let link = match question.response_url {
                Some(_) => None,
                None => self.slack.permalink(&question.channel, &question.ts).await.ok(),
            };
            let state = match state.as_str() {
                "done" => "answered",
                "failed" => "failed",
                "waiting" => "waiting for you to connect",
                _ => "being answered",
            };
            recent.push(RecentQuestion {
                text: question.text,
                state,
                link,
            });
        }
        Ok(recent)
    }

    /// Sends a fresh connect link to the person's direct messages.
    pub async fn connect(&self, request: &AccountRequest) -> Result<Done, JobError> {
        let dm = self.slack.open_dm(request.user.as_str()).await?;
        // EVT-05: nobody from another organisation is linked, as nobody is answered.
        if self.slack.membership(&request.team, &request.user).await? == Membership::External {
            self.slack
                .post_message(&dm, None, messages::external_user_refusal())
                .await?;
            return Ok(Done::Finished);
        }
        let to = PersonIn {
            team: &request.team,
            user: &request.user,
            channel: &dm,
            thread_ts: None,
        };
        let Some(offer) = offer_link(&self.store, &self.public_base_url, to, self.clock.now(), 0).await? else {
            return Err(JobError::Permanent("no link was created".into()));
        };
        let reconnect = self.store.find_link(&request.team, &request.user).await?.is_some();
        self.slack
            .post_message(
                &dm,
                None,
                messages::connect_prompt(&offer.url, messages::Invitation::again_if(reconnect)),
            )
            .await?;
        Ok(Done::Finished)
    }
}
