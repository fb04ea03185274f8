//! What a click in Slack does, whether it arrived over HTTP or Socket Mode.
//!
//! Every click is acknowledged at once (Slack shows the person a warning otherwise); what
//! it asks for is queued, so an answer never waits on the acknowledgement:
//! - a suggested follow-up is asked as the person who clicked, in the same thread;
//! - "Share in channel" posts a private answer for everyone (its asker only);
//! - "Disconnect" (which Slack has already confirmed with the person) forgets their link,
//!   and "Connect Databricks" in App Home sends them a link;
//! - a thumbs up or down on an answer is recorded (and may reach Genie);
//! - the "Connect Databricks" URL button opens its page by itself and needs nothing more.

use slack_morphism::prelude::*;

use crate::domain::{TeamId, UserId};
use crate::intake::events::{Intake, question_from_suggestion};
use crate::jobs::Work;
use crate::jobs::account::AccountRequest;
use crate::jobs::feedback::FeedbackRequest;
use crate::jobs::share::ShareRequest;
use crate::slack::actions::{Action, read_feedback_value};

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
            let work = match Action::parse(id) {
                Some(Action::Suggestion(_)) => match question_from_suggestion(actions, action) {
                    Ok(question) => Some(Work::Question(question)),
                    Err(reason) => {
                        tracing::warn!(reason, "ignored a suggestion click");
                        None
                    }
                },
                Some(Action::Share) => share(actions, action),
                Some(Action::Disconnect) => account(actions).map(Work::Disconnect),
                Some(Action::HomeConnect) => account(actions).map(Work::Connect),
                Some(Action::Feedback) => feedback(actions, action),
                // The URL button opens the link page by itself.
                Some(Action::Connect) | None => None,
            };
            if let Some(work) = work {
                // One trigger per click: a double click counts once.
                let key = format!("action:{}", actions.trigger_id);
                let outcome = self.intake.enqueue(&key, &work).await?;
                tracing::info!(kind = work.kind().as_str(), ?outcome, "click queued");
            }
        }
        Ok(())
    }
}

/// The person who clicked: their own link only, whoever else might have seen the button.
fn clicker(actions: &SlackInteractionBlockActionsEvent) -> Option<(TeamId, UserId)> {
    let user = actions.user.as_ref()?;
    Some((
        TeamId::parse(actions.team.id.as_ref()).ok()?,
        UserId::parse(user.id.as_ref()).ok()?,
    ))
}

/// An account job for the person who clicked.
fn account(actions: &SlackInteractionBlockActionsEvent) -> Option<AccountRequest> {
    let Some((team, user)) = clicker(actions) else {
        tracing::warn!("ignored a click without team or user");
        return None;
    };
    Some(AccountRequest {
        team,
        user,
        response_url: actions.response_url.as_ref().map(|u| u.0.clone()),
    })
}

/// A thumbs up or down: the clicked button's value names the rating and the answer.
fn feedback(actions: &SlackInteractionBlockActionsEvent, action: &SlackInteractionActionInfo) -> Option<Work> {
    let (Some((team, user)), Some((rating, answer))) =
        (clicker(actions), action.value.as_deref().and_then(read_feedback_value))
    else {
        tracing::warn!("ignored a feedback click without team, user or a readable value");
        return None;
    };
    Some(Work::Feedback(FeedbackRequest {
        answer,
        rating,
        team,
        user,
        response_url: actions.response_url.as_ref().map(|u| u.0.clone()),
    }))
}

/// "Share in channel": the answer's id is the button's value.
fn share(actions: &SlackInteractionBlockActionsEvent, action: &SlackInteractionActionInfo) -> Option<Work> {
    let (Some((team, user)), Some(id)) = (clicker(actions), action.value.as_deref()) else {
        tracing::warn!("ignored a share click without team, user or answer");
        return None;
    };
    Some(Work::Share(ShareRequest {
        id: id.to_owned(),
        team,
        user,
        response_url: actions.response_url.as_ref().map(|u| u.0.clone()),
    }))
}
