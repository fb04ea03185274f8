//! `POST /slack/events`, `/slack/commands`, `/slack/interactions`: Slack's HTTP
//! deliveries. Every request is verified against the signing secret over its raw body
//! before anything is parsed; failures get an opaque 401 and the handler does nothing.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use secrecy::SecretString;
use serde::Deserialize;
use slack_morphism::prelude::*;

use crate::clock::SharedClock;
use crate::slack::intake::{Intake, Outcome, question_from_suggestion};
use crate::slack::signature;
use crate::slack::{messages, render};

/// What the Slack routes share.
pub struct SlackRoutes {
    pub signing_secret: SecretString,
    pub intake: Intake,
    pub clock: SharedClock,
}

impl SlackRoutes {
    /// Whether the request is Slack's; logs the reason when it is not.
    fn is_signed(&self, route: &'static str, headers: &HeaderMap, body: &[u8]) -> bool {
        match signature::verify(&self.signing_secret, headers, body, self.clock.now()) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(route, reason = %error, "refused a request that is not signed by Slack");
                false
            }
        }
    }
}

/// The three Slack routes.
pub fn router(routes: Arc<SlackRoutes>) -> Router {
    Router::new()
        .route("/slack/events", post(events))
        .route("/slack/commands", post(commands))
        .route("/slack/interactions", post(interactions))
        .with_state(routes)
}

/// A 400 that Slack should not retry: the same bytes will not parse next time either.
fn unparseable(what: &str, error: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %error, "could not parse a signed Slack {what}");
    (StatusCode::BAD_REQUEST, [("x-slack-no-retry", "1")]).into_response()
}

async fn events(State(slack): State<Arc<SlackRoutes>>, headers: HeaderMap, body: Bytes) -> Response {
    if !slack.is_signed("/slack/events", &headers, &body) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let event: SlackPushEvent = match serde_json::from_slice(&body) {
        Ok(event) => event,
        Err(error) => return unparseable("event", error),
    };
    match event {
        SlackPushEvent::UrlVerification(challenge) => {
            ([(header::CONTENT_TYPE, "text/plain")], challenge.challenge).into_response()
        }
        SlackPushEvent::AppRateLimited(limited) => {
            tracing::warn!(team = %limited.team_id, "Slack is rate limiting events for this workspace");
            StatusCode::OK.into_response()
        }
        SlackPushEvent::EventCallback(callback) => {
            let retry = headers.get("x-slack-retry-num").and_then(|v| v.to_str().ok());
            match slack.intake.accept(&callback).await {
                Ok(outcome) => {
                    match outcome {
                        Outcome::Ignored(reason) => {
                            tracing::debug!(event_id = %callback.event_id, reason, "event ignored")
                        }
                        _ => tracing::info!(event_id = %callback.event_id, ?outcome, retry, "event accepted"),
                    }
                    StatusCode::OK.into_response()
                }
                Err(error) => {
                    // Nothing was stored, so Slack's retry will be processed.
                    tracing::error!(event_id = %callback.event_id, error = %error, "could not queue an event");
                    StatusCode::SERVICE_UNAVAILABLE.into_response()
                }
            }
        }
    }
}

/// The fields of a slash command we use; Slack sends more.
#[derive(Debug, Deserialize)]
struct CommandForm {
    #[serde(default)]
    ssl_check: Option<String>,
    #[serde(default)]
    text: String,
}

async fn commands(State(slack): State<Arc<SlackRoutes>>, headers: HeaderMap, body: Bytes) -> Response {
    let form: Result<CommandForm, _> = serde_urlencoded::from_bytes(&body);
    // Slack's unsigned `ssl_check=1` probe only needs a 200; nothing in it is used.
    if matches!(&form, Ok(CommandForm { ssl_check: Some(check), .. }) if check == "1") {
        return StatusCode::OK.into_response();
    }
    if !slack.is_signed("/slack/commands", &headers, &body) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let form = match form {
        Ok(form) => form,
        Err(error) => return unparseable("command", error),
    };
    tracing::info!(has_text = !form.text.trim().is_empty(), "slash command");
    let reply =
        SlackCommandEventResponse::new(messages::help(None)).with_response_type(SlackMessageResponseType::Ephemeral);
    axum::Json(reply).into_response()
}

#[derive(Debug, Deserialize)]
struct InteractionForm {
    payload: String,
}

/// Queues the follow-up question on a clicked suggestion, asked as the person who clicked
/// (their own token answers it, or they are asked to connect first).
async fn ask_suggestion(
    slack: &SlackRoutes,
    actions: &SlackInteractionBlockActionsEvent,
    action: &SlackInteractionActionInfo,
) -> Result<(), Response> {
    let question = match question_from_suggestion(actions, action.value.as_deref().unwrap_or_default()) {
        Ok(question) => question,
        Err(reason) => {
            tracing::warn!(reason, "ignored a suggestion click");
            return Ok(());
        }
    };
    // Slack does not retry interactions, but a double click arrives twice with one trigger.
    let key = format!("action:{}", actions.trigger_id);
    match slack.intake.enqueue(&key, &question).await {
        Ok(outcome) => {
            tracing::info!(?outcome, "suggested question accepted");
            Ok(())
        }
        Err(error) => {
            tracing::error!(error = %error, "could not queue a suggested question");
            Err(StatusCode::SERVICE_UNAVAILABLE.into_response())
        }
    }
}

async fn interactions(State(slack): State<Arc<SlackRoutes>>, headers: HeaderMap, body: Bytes) -> Response {
    if !slack.is_signed("/slack/interactions", &headers, &body) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let event = serde_urlencoded::from_bytes::<InteractionForm>(&body)
        .map_err(|e| e.to_string())
        .and_then(|form| serde_json::from_str::<SlackInteractionEvent>(&form.payload).map_err(|e| e.to_string()));
    match event {
        Ok(SlackInteractionEvent::BlockActions(actions)) => {
            let ids: Vec<&str> = actions.actions.iter().flatten().map(|a| a.action_id.as_ref()).collect();
            tracing::info!(actions = ?ids, "block actions");
            for action in actions.actions.iter().flatten() {
                if action.action_id.as_ref().starts_with(render::SUGGESTION_ACTION_PREFIX)
                    && let Err(response) = ask_suggestion(&slack, &actions, action).await
                {
                    return response;
                }
            }
            // Anything else (the "Connect Databricks" URL button opens its page by itself)
            // only needs a 200, or Slack shows the person a warning.
            StatusCode::OK.into_response()
        }
        Ok(_) => StatusCode::OK.into_response(),
        Err(error) => unparseable("interaction", error),
    }
}
