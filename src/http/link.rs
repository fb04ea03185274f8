//! `GET`/`POST /link/{id}`, `GET /oauth/databricks/callback`, `GET /link/result` and
//! `POST /link/confirm`: the browser side of linking. The logic is in [`crate::linking`]; this module turns its
//! outcomes into pages, cookies and redirects.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::pages::{escape_html, message, page};
use crate::linking::{CallbackOutcome, CallbackQuery, LinkFlow, PENDING_LINK_TTL_SECONDS, Unusable};
use crate::store::pending_links::PendingStatus;

/// The linking routes.
pub fn router(flow: Arc<LinkFlow>) -> Router {
    Router::new()
        .route("/link/{id}", get(landing).post(claim))
        .route("/oauth/databricks/callback", get(databricks_callback))
        .route("/oauth/slack/callback", get(slack_callback))
        .route("/link/result", get(result))
        .route("/link/confirm", post(confirm))
        .with_state(flow)
}

/// The browser-binding cookie's name: `__Host-` (Secure, host-only, path /) on https.
fn cookie_name(flow: &LinkFlow) -> &'static str {
    if flow.secure_cookies() {
        "__Host-databricks-link"
    } else {
        "databricks-link"
    }
}

fn read_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(flow: &LinkFlow, value: &str, max_age: i64) -> HeaderValue {
    let secure = if flow.secure_cookies() { "; Secure" } else { "" };
    // Lax, not Strict: the cookie must come back on the top-level redirect from Databricks.
    let cookie = format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}",
        cookie_name(flow)
    );
    HeaderValue::from_str(&cookie).expect("cookie values are base64url")
}

fn unusable(reason: Unusable) -> Response {
    match reason {
        Unusable::Unknown => message(
            StatusCode::NOT_FOUND,
            "This link is not valid",
            &["Links to connect Databricks come from the bot in Slack. Ask your question again there to get a new one."
                .into()],
        ),
        Unusable::Expired => message(
            StatusCode::GONE,
            "This link has expired",
            &["Links to connect Databricks work for 10 minutes. Ask your question again in Slack and use the new link."
                .into()],
        ),
        Unusable::Used => message(
            StatusCode::GONE,
            "This link was already used",
            &["Each link works once, and a newer link replaces older ones. If you are not connected yet, ask your \
               question again in Slack to get a new link."
                .into()],
        ),
    }
}

async fn landing(State(flow): State<Arc<LinkFlow>>, Path(id): Path<String>) -> Response {
    match flow.landing(&id).await {
        Ok(landing) => {
            let body = format!(
                "<p>Connect Databricks for <span class=\"who\">{}</span> in the Slack workspace \
                 <span class=\"who\">{}</span>.</p>\
                 <p>You will sign in to <span class=\"who\">{}</span>. The bot will then answer your questions with \
                 your own Databricks permissions.</p>\
                 <form method=\"post\"><button type=\"submit\">Continue to Databricks</button></form>\
                 <p class=\"small\">Only continue if you asked the bot a question yourself. This link works once.</p>",
                escape_html(&landing.slack_user),
                escape_html(&landing.slack_workspace),
                escape_html(landing.databricks_workspace.as_str()),
            );
            let origins: Vec<&str> = landing.next_origins.iter().map(String::as_str).collect();
            page(StatusCode::OK, "Connect Databricks", &body, &origins)
        }
        Err(reason) => unusable(reason),
    }
}

async fn claim(State(flow): State<Arc<LinkFlow>>, Path(id): Path<String>) -> Response {
    match flow.claim(&id).await {
        Ok(claimed) => {
            let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, claimed.redirect.as_str())]).into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::SET_COOKIE,
                set_cookie(&flow, claimed.cookie.expose_secret(), PENDING_LINK_TTL_SECONDS),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
            response
        }
        Err(reason) => unusable(reason),
    }
}

async fn databricks_callback(
    State(flow): State<Arc<LinkFlow>>,
    Query(query): Query<CallbackQuery>,
    headers: HeaderMap,
) -> Response {
    let cookie = read_cookie(&headers, cookie_name(&flow));
    outcome_page(flow.databricks_callback(&query, cookie).await)
}

async fn slack_callback(
    State(flow): State<Arc<LinkFlow>>,
    Query(query): Query<CallbackQuery>,
    headers: HeaderMap,
) -> Response {
    let cookie = read_cookie(&headers, cookie_name(&flow));
    outcome_page(flow.slack_callback(&query, cookie).await)
}

fn redirect(to: &str) -> Response {
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
        .headers_mut()
        .insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

fn outcome_page(outcome: CallbackOutcome) -> Response {
    match outcome {
        CallbackOutcome::Continue(next) => redirect(next.as_str()),
        // Show the result at a clean URL: the code leaves the address bar and history.
        CallbackOutcome::Finished | CallbackOutcome::AlreadyHandled => {
            let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, "/link/result")]).into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
                .headers_mut()
                .insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
            response
        }
        CallbackOutcome::Rejected(reason) => {
            // LOG-02: refused before anything changed — a replay, a forgery or another
            // browser; the reason is fixed text, never request data.
            tracing::warn!(reason, "a linking request was refused");
            message(
                StatusCode::BAD_REQUEST,
                "Nothing was linked",
                &[
                    escape_html(reason),
                    "Start again from the “Connect Databricks” button in Slack.".into(),
                ],
            )
        }
    }
}

/// The confirmation form's answer.
#[derive(Deserialize)]
struct Decision {
    decision: Option<String>,
}

/// LNK-09: replaces the person's link with the held sign-in, or keeps it. Bound to the
/// browser by its cookie, which a cross-site form post does not carry (`SameSite=Lax`).
async fn confirm(
    State(flow): State<Arc<LinkFlow>>,
    headers: HeaderMap,
    form: Result<Form<Decision>, FormRejection>,
) -> Response {
    // A post that is not our form (no body, another content type) gets our page too.
    let decision = form.ok().and_then(|Form(form)| form.decision);
    let replace = match decision.as_deref() {
        Some("replace") => true,
        Some("keep") => false,
        _ => {
            return message(
                StatusCode::BAD_REQUEST,
                "Nothing changed",
                &["Choose Replace or Keep on the confirmation page.".into()],
            );
        }
    };
    let cookie = read_cookie(&headers, cookie_name(&flow));
    outcome_page(flow.confirm(cookie, replace).await)
}

async fn result(State(flow): State<Arc<LinkFlow>>, headers: HeaderMap) -> Response {
    let Some(cookie) = read_cookie(&headers, cookie_name(&flow)) else {
        return unusable(Unusable::Unknown);
    };
    let pending = flow.result_for_browser(cookie).await;
    // LNK-09: another Databricks account than the linked one waits for the person's word;
    // the flow (and its cookie) goes on.
    if let Some(p) = pending.as_ref().filter(|p| p.status == PendingStatus::Confirming) {
        let body = format!(
            "<p>You’re connected to {} as <span class=\"who\">{}</span>. You just signed in as \
             <span class=\"who\">{}</span>.</p>\
             <p>Replace the connection? The bot will then answer your questions with the new account’s \
             permissions.</p>\
             <form method=\"post\" action=\"/link/confirm\">\
             <button type=\"submit\" name=\"decision\" value=\"replace\">Replace</button> \
             <button type=\"submit\" name=\"decision\" value=\"keep\" class=\"secondary\">Keep {}</button>\
             </form>",
            escape_html(flow.workspace().as_str()),
            escape_html(p.replaces.as_deref().unwrap_or("another account")),
            escape_html(p.databricks_user.as_deref().unwrap_or("another account")),
            escape_html(p.replaces.as_deref().unwrap_or("the current one")),
        );
        return page(StatusCode::OK, "Replace your Databricks connection?", &body, &[]);
    }
    let mut response = match pending {
        Some(p) if p.status == PendingStatus::Completed => message(
            StatusCode::OK,
            "You’re connected",
            &[
                format!(
                    "Linked as <span class=\"who\">{}</span> in {}.",
                    escape_html(p.databricks_user.as_deref().unwrap_or("your Databricks account")),
                    escape_html(flow.workspace().as_str())
                ),
                "You can close this tab. Your questions are being answered in Slack.".into(),
            ],
        ),
        Some(p) => message(
            StatusCode::OK,
            "Nothing was linked",
            &[
                escape_html(p.failure.as_deref().unwrap_or("The connection did not complete.")),
                "Ask your question again in Slack to get a new link.".into(),
            ],
        ),
        None => unusable(Unusable::Unknown),
    };
    // The flow is over: the binding cookie goes.
    response
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&flow, "", 0));
    response
}
