//! `POST /slack/events`, `/slack/commands`, `/slack/interactions`: Slack's HTTP
//! deliveries. Every request is verified against the signing secret over its raw body
//! before anything is parsed; failures get an opaque 401 and the handler does nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
use crate::intake::SlackIntake;
use crate::intake::events::Outcome;
use crate::slack::{envelope, signature};

/// What the Slack routes share.
pub struct SlackRoutes {
    signing_secret: SecretString,
    intake: SlackIntake,
    clock: SharedClock,
    refusals: RefusalLog,
}

impl SlackRoutes {
    /// The routes for requests signed with `signing_secret`, handed to `intake`.
    pub fn new(signing_secret: SecretString, intake: SlackIntake, clock: SharedClock) -> Self {
        Self {
            signing_secret,
            intake,
            clock,
            refusals: RefusalLog::default(),
        }
    }

    /// Whether the request is Slack's; logs the reason when it is not.
    fn is_signed(&self, route: &'static str, headers: &HeaderMap, body: &[u8]) -> bool {
        let now = self.clock.now();
        match signature::verify(&self.signing_secret, headers, body, now) {
            Ok(()) => true,
            Err(error) => {
                self.refusals.note(route, &error, now);
                false
            }
        }
    }
}

/// Seconds in which one refusal per reason is logged.
const REFUSAL_LOG_WINDOW_SECONDS: i64 = 10;

/// LOG-02: every refused request is logged by its reason — but a flood of forgeries
/// writes one line per reason every [`REFUSAL_LOG_WINDOW_SECONDS`], with the count of
/// the ones left out, not a line each.
#[derive(Default)]
pub struct RefusalLog {
    /// Per reason: when its window started, and the refusals not logged in it.
    windows: Mutex<HashMap<String, (i64, u64)>>,
}

impl RefusalLog {
    fn note(&self, route: &'static str, error: &signature::SignatureError, now: i64) {
        let reason = error.to_string();
        let mut windows = self.windows.lock().expect("not poisoned");
        let (started, left_out) = windows.entry(reason.clone()).or_insert((i64::MIN, 0));
        if now.saturating_sub(*started) < REFUSAL_LOG_WINDOW_SECONDS {
            *left_out += 1;
            return;
        }
        tracing::warn!(
            route,
            reason,
            not_logged_since_last = *left_out,
            "refused a request that is not signed by Slack"
        );
        (*started, *left_out) = (now, 0);
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
    let event = serde_json::from_slice::<serde_json::Value>(&body).and_then(|mut envelope| {
        envelope::settle_event(&mut envelope);
        serde_json::from_value::<SlackPushEvent>(envelope)
    });
    let event = match event {
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
            match slack.intake.events.accept(&callback).await {
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

/// Slack's certificate probe, which is not signed and carries no command.
#[derive(Debug, Deserialize)]
struct SslCheck {
    ssl_check: String,
}

async fn commands(State(slack): State<Arc<SlackRoutes>>, headers: HeaderMap, body: Bytes) -> Response {
    // Slack's unsigned `ssl_check=1` probe only needs a 200; nothing in it is used.
    if matches!(serde_urlencoded::from_bytes::<SslCheck>(&body), Ok(probe) if probe.ssl_check == "1") {
        return StatusCode::OK.into_response();
    }
    if !slack.is_signed("/slack/commands", &headers, &body) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let command: SlackCommandEvent = match serde_urlencoded::from_bytes(&body) {
        Ok(command) => command,
        Err(error) => return unparseable("command", error),
    };
    match slack.intake.commands.handle(&command).await {
        Ok(reply) => {
            let reply = SlackCommandEventResponse::new(reply).with_response_type(SlackMessageResponseType::Ephemeral);
            axum::Json(reply).into_response()
        }
        Err(error) => {
            tracing::error!(error = %error, "could not handle a slash command");
            // Slack shows the person that the command failed.
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

#[derive(Debug, Deserialize)]
struct InteractionForm {
    payload: String,
}

async fn interactions(State(slack): State<Arc<SlackRoutes>>, headers: HeaderMap, body: Bytes) -> Response {
    if !slack.is_signed("/slack/interactions", &headers, &body) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let event = serde_urlencoded::from_bytes::<InteractionForm>(&body)
        .map_err(|e| e.to_string())
        .and_then(|form| {
            let mut payload = serde_json::from_str::<serde_json::Value>(&form.payload).map_err(|e| e.to_string())?;
            envelope::settle_interaction(&mut payload);
            serde_json::from_value::<SlackInteractionEvent>(payload).map_err(|e| e.to_string())
        });
    match event {
        Ok(event) => match slack.intake.interactions.handle(&event).await {
            Ok(()) => StatusCode::OK.into_response(),
            Err(error) => {
                tracing::error!(error = %error, "could not queue what a click asked for");
                StatusCode::SERVICE_UNAVAILABLE.into_response()
            }
        },
        Err(error) => unparseable("interaction", error),
    }
}
