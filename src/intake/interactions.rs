//! What a click in Slack does, whether it arrived over HTTP or Socket Mode.
//!
//! Every click is acknowledged at once (Slack shows the person a warning otherwise); what
//! it asks for is queued, so an answer never waits on the acknowledgement:
//! - a suggested follow-up is asked as the person who clicked, in the same thread;
//! - "Share in channel" posts a private answer for everyone (its asker only);
//! - "Disconnect" (which Slack has already confirmed with the person) forgets their link,
//!   and "Connect Databricks" in App Home sends them a link;
//! - the "Connect Databricks" URL button opens its page by itself and needs nothing more.

use slack_morphism::prelude::*;

use crate::domain::{TeamId, UserId};
use crate::intake::events::{Intake, question_from_suggestion};
use crate::jobs::account::{AccountRequest, CONNECT_JOB, DISCONNECT_JOB};
use crate::jobs::share::{SHARE_JOB, ShareRequest};
use crate::slack::{messages, render};
use crate::store::jobs::NewJob;

/// Handles block actions.
#[derive(Clone)]
pub struct Interactions {
    pub intake: Intake,
}

impl Interactions {
    /// Queues what `event` asks for. An `Err` means nothing was queued: the caller
    /// withholds the acknowledgement so the person sees that the click failed.
    pub async fn handle(&self, event: &SlackInteractionEvent) -> Result<(), sqlx::Error> {
        let SlackInteractionEvent::BlockActions(actions) = event else {
            return Ok(());
        };
        for action in actions.actions.iter().flatten() {
            let id = action.action_id.as_ref();
            tracing::info!(action = id, "block action");
            if id.starts_with(render::SUGGESTION_ACTION_PREFIX) {
                self.ask_suggestion(actions, action).await?;
            } else if id == render::SHARE_ACTION_ID {
                self.share(actions, action).await?;
            } else if id == messages::DISCONNECT_ACTION_ID {
                self.account(actions, DISCONNECT_JOB).await?;
            } else if id == messages::HOME_CONNECT_ACTION_ID {
                self.account(actions, CONNECT_JOB).await?;
            }
        }
        Ok(())
    }

    /// The key that makes a double click count once (one trigger per click).
    fn delivery_key(actions: &SlackInteractionBlockActionsEvent) -> String {
        format!("action:{}", actions.trigger_id)
    }

    async fn ask_suggestion(
        &self,
        actions: &SlackInteractionBlockActionsEvent,
        action: &SlackInteractionActionInfo,
    ) -> Result<(), sqlx::Error> {
        match question_from_suggestion(actions, action) {
            Ok(question) => {
                let outcome = self.intake.enqueue(&Self::delivery_key(actions), &question).await?;
                tracing::info!(?outcome, "suggested question accepted");
            }
            Err(reason) => tracing::warn!(reason, "ignored a suggestion click"),
        }
        Ok(())
    }

    /// Queues an account job for the person who clicked: their own link only, whoever
    /// else might have seen the button.
    async fn account(
        &self,
        actions: &SlackInteractionBlockActionsEvent,
        kind: &'static str,
    ) -> Result<(), sqlx::Error> {
        let clicker = actions.user.as_ref().map(|u| u.id.as_ref());
        let (Ok(team), Some(Ok(user))) = (TeamId::parse(actions.team.id.as_ref()), clicker.map(UserId::parse)) else {
            tracing::warn!("ignored a click without team or user");
            return Ok(());
        };
        let request = AccountRequest {
            team,
            user,
            response_url: actions.response_url.as_ref().map(|u| u.0.clone()),
        };
        let payload = serde_json::to_string(&request).expect("an account request serialises");
        self.queue(actions, kind, &request.team, &request.user, &payload).await
    }

    /// Queues a job once per click.
    async fn queue(
        &self,
        actions: &SlackInteractionBlockActionsEvent,
        kind: &str,
        team: &TeamId,
        user: &UserId,
        payload: &str,
    ) -> Result<(), sqlx::Error> {
        let job = NewJob {
            kind,
            team,
            user,
            payload,
        };
        let outcome = self.intake.enqueue_job(&Self::delivery_key(actions), &job).await?;
        tracing::info!(kind, ?outcome, "click queued");
        Ok(())
    }

    async fn share(
        &self,
        actions: &SlackInteractionBlockActionsEvent,
        action: &SlackInteractionActionInfo,
    ) -> Result<(), sqlx::Error> {
        let clicker = actions.user.as_ref().map(|u| u.id.as_ref());
        let (Ok(team), Some(Ok(user)), Some(id)) = (
            TeamId::parse(actions.team.id.as_ref()),
            clicker.map(UserId::parse),
            action.value.as_deref(),
        ) else {
            tracing::warn!("ignored a share click without team, user or answer");
            return Ok(());
        };
        let request = ShareRequest {
            id: id.to_owned(),
            team,
            user,
            response_url: actions.response_url.as_ref().map(|u| u.0.clone()),
        };
        let payload = serde_json::to_string(&request).expect("a share request serialises");
        self.queue(actions, SHARE_JOB, &request.team, &request.user, &payload)
            .await
    }
}
