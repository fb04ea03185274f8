//! Socket Mode: Slack delivers over a WebSocket the bot opens (`SLACK_APP_TOKEN`).
//!
//! slack-morphism acknowledges an envelope only after our callback returns, and reads the
//! next envelope only then. So callbacks do no more than the HTTP route does: record and
//! enqueue (a few milliseconds), then return. A callback error withholds the ack, and
//! Slack redelivers — the event id was not recorded, so the redelivery is processed.

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use slack_morphism::errors::{SlackClientError, SlackClientProtocolError};
use slack_morphism::prelude::*;
use tracing::Instrument;

use crate::intake::SlackIntake;
use crate::intake::commands::Commands;
use crate::intake::events::Intake;
use crate::intake::interactions::Interactions;
use crate::slack::api::SlackApi;
use crate::slack::envelope;
use crate::telemetry;

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
    let span = delivery_span("event");
    async {
        let outcome = handler::<Intake>(&state).await?.accept(&event).await?;
        tracing::info!(event_id = %event.event_id, ?outcome, "Socket Mode event");
        Ok(())
    }
    .instrument(span)
    .await
}

/// The span of one Socket Mode delivery, the root of its question's trace as a request's
/// span is over HTTP.
fn delivery_span(kind: &'static str) -> tracing::Span {
    let span = tracing::info_span!(
        "socket_mode",
        otel.name = tracing::field::Empty,
        otel.kind = tracing::field::Empty,
        kind
    );
    telemetry::describe_span(&span, "consumer", || format!("socket_mode {kind}"));
    span
}

async fn on_command(
    event: SlackCommandEvent,
    _client: Arc<SlackHyperClient>,
    state: SlackClientEventsUserState,
) -> Result<SlackCommandEventResponse, BoxError> {
    let reply = handler::<Commands>(&state)
        .await?
        .handle(&event)
        .instrument(delivery_span("command"))
        .await?;
    Ok(SlackCommandEventResponse::new(reply).with_response_type(SlackMessageResponseType::Ephemeral))
}

async fn on_interaction(
    event: SlackInteractionEvent,
    _client: Arc<SlackHyperClient>,
    state: SlackClientEventsUserState,
) -> Result<(), BoxError> {
    handler::<Interactions>(&state)
        .await?
        .handle(&event)
        .instrument(delivery_span("interaction"))
        .await?;
    Ok(())
}

/// A callback failed: answer 503 so the envelope is not acknowledged and Slack redelivers.
///
/// A frame slack-morphism could not read comes here too, and it acknowledges that frame
/// whatever this returns. An org-wide install's events and clicks can carry `null` where
/// slack-morphism requires a workspace ([`envelope`]): those are settled and delivered
/// here, before the acknowledgement, like any other. The frame's body (which holds what
/// people wrote) is never logged.
fn on_error(error: BoxError, client: Arc<SlackHyperClient>, state: SlackClientEventsUserState) -> HttpStatusCode {
    let unreadable =
        error
            .downcast_ref::<SlackClientProtocolError>()
            .or_else(|| match error.downcast_ref::<SlackClientError>() {
                Some(SlackClientError::ProtocolError(unreadable)) => Some(unreadable),
                _ => None,
            });
    let Some(unreadable) = unreadable else {
        tracing::error!(error = %error, "Socket Mode delivery failed; leaving it unacknowledged for redelivery");
        return HttpStatusCode::SERVICE_UNAVAILABLE;
    };
    let Some(frame) = unreadable.json_body.as_deref().and_then(settled) else {
        tracing::error!(error = %unreadable.json_error, "Slack sent a Socket Mode frame the bot cannot read; dropped");
        return HttpStatusCode::OK;
    };
    let deliver = async move {
        let delivered = match frame {
            Settled::Event(event) => on_push(*event, client, state).await,
            Settled::Interaction(click) => on_interaction(*click, client, state).await,
        };
        if let Err(error) = delivered {
            tracing::error!(error = %error, "could not queue a settled Socket Mode delivery; Slack will not resend it");
        }
    };
    // Block this listener until the delivery is stored, as for any other frame. Only a
    // multi-threaded runtime (the binary's) can; elsewhere it is stored right after the ack.
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| runtime.block_on(deliver));
        }
        Ok(runtime) => drop(runtime.spawn(deliver)),
        Err(_) => tracing::error!("a Socket Mode frame arrived outside the runtime; dropped"),
    }
    HttpStatusCode::OK
}

/// A Socket Mode frame settled to one workspace.
enum Settled {
    Event(Box<SlackPushEventCallback>),
    Interaction(Box<SlackInteractionEvent>),
}

/// `body` as an `events_api` or `interactive` frame once [`envelope`] settled it, if that
/// makes it readable.
fn settled(body: &str) -> Option<Settled> {
    let mut frame: Value = serde_json::from_str(body).ok()?;
    let kind = frame.get("type")?.as_str()?.to_owned();
    let payload = frame.get_mut("payload")?;
    match kind.as_str() {
        "events_api" => {
            envelope::settle_event(payload);
            serde_json::from_value(payload.take())
                .ok()
                .map(|e| Settled::Event(Box::new(e)))
        }
        "interactive" => {
            envelope::settle_interaction(payload);
            serde_json::from_value(payload.take())
                .ok()
                .map(|c| Settled::Interaction(Box::new(c)))
        }
        _ => None,
    }
}
