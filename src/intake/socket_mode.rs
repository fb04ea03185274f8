//! Socket Mode: Slack delivers over a WebSocket the bot opens (`SLACK_APP_TOKEN`).
//!
//! slack-morphism acknowledges an envelope only after our callback returns, and reads the
//! next envelope only then. So callbacks do no more than the HTTP route does: record and
//! enqueue (a few milliseconds), then return. A callback error withholds the ack, and
//! Slack redelivers — the event id was not recorded, so the redelivery is processed.

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use slack_morphism::prelude::*;

use crate::intake::SlackIntake;
use crate::intake::commands::Commands;
use crate::intake::events::Intake;
use crate::intake::interactions::Interactions;
use crate::slack::api::SlackApi;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A running Socket Mode connection.
pub struct SocketMode {
    listener: SlackClientSocketModeListener<SlackClientHyperHttpsConnector>,
}

impl SocketMode {
    /// Opens the connection(s) and starts delivering events into `intake`.
    pub async fn start(api: &SlackApi, app_token: &SecretString, intake: SlackIntake) -> anyhow::Result<Self> {
        let environment = Arc::new(
            SlackClientEventsListenerEnvironment::new(api.client())
                .with_error_handler(on_error)
                .with_user_state(intake.events)
                .with_user_state(intake.interactions)
                .with_user_state(intake.commands),
        );
        let callbacks = SlackSocketModeListenerCallbacks::new()
            .with_push_events(on_push)
            .with_command_events(on_command)
            .with_interaction_events(on_interaction);
        let listener = SlackClientSocketModeListener::new(&SlackClientSocketModeConfig::new(), environment, callbacks);
        let token = SlackApiToken::new(SlackApiTokenValue::new(app_token.expose_secret().to_owned()));
        listener
            .listen_for(&token)
            .await
            .map_err(|e| anyhow::anyhow!("could not open a Socket Mode connection: {e}"))?;
        listener.start().await;
        tracing::info!("Socket Mode connected");
        Ok(Self { listener })
    }

    /// Closes the connections; Slack holds undelivered events for another connection.
    pub async fn stop(self) {
        self.listener.shutdown().await;
    }
}

/// What `start` put in the listener's state.
async fn handler<T: Clone + Send + Sync + 'static>(state: &SlackClientEventsUserState) -> Result<T, BoxError> {
    state
        .read()
        .await
        .get_user_state::<T>()
        .cloned()
        .ok_or_else(|| "Socket Mode started without its handlers".into())
}

async fn on_push(
    event: SlackPushEventCallback,
    _client: Arc<SlackHyperClient>,
    state: SlackClientEventsUserState,
) -> Result<(), BoxError> {
    let outcome = handler::<Intake>(&state).await?.accept(&event).await?;
    tracing::info!(event_id = %event.event_id, ?outcome, "Socket Mode event");
    Ok(())
}

async fn on_command(
    event: SlackCommandEvent,
    _client: Arc<SlackHyperClient>,
    state: SlackClientEventsUserState,
) -> Result<SlackCommandEventResponse, BoxError> {
    let reply = handler::<Commands>(&state).await?.handle(&event).await?;
    Ok(SlackCommandEventResponse::new(reply).with_response_type(SlackMessageResponseType::Ephemeral))
}

async fn on_interaction(
    event: SlackInteractionEvent,
    _client: Arc<SlackHyperClient>,
    state: SlackClientEventsUserState,
) -> Result<(), BoxError> {
    handler::<Interactions>(&state).await?.handle(&event).await?;
    Ok(())
}

/// A callback failed: answer 503 so the envelope is not acknowledged and Slack redelivers.
fn on_error(error: BoxError, _client: Arc<SlackHyperClient>, _state: SlackClientEventsUserState) -> HttpStatusCode {
    tracing::error!(error = %error, "Socket Mode delivery failed; leaving it unacknowledged for redelivery");
    HttpStatusCode::SERVICE_UNAVAILABLE
}
