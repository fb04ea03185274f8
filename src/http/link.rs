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
use subtle::ConstantTimeEq;

use super::pages::{escape_html, message, page};
use crate::crypto::{hash_secret, random_token};
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

/// The landing page's own cookie, behind its form token when the browser does not say where
/// a post came from.
fn form_cookie_name(flow: &LinkFlow) -> &'static str {
    if flow.secure_cookies() {
        "__Host-databricks-link-form"
    } else {
        "databricks-link-form"
    }
}

fn set_form_cookie(flow: &LinkFlow, value: &str, max_age: i64) -> HeaderValue {
    let secure = if flow.secure_cookies() { "; Secure" } else { "" };
    // Strict: it has no reason to travel on any request another site starts.
    let cookie = format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}",
        form_cookie_name(flow)
    );
    HeaderValue::from_str(&cookie).expect("cookie values are base64url")
}

/// The hidden field a page's form carries: derived from a cookie of that browser's, which
/// another site can neither read nor set, so it cannot forge the field.
fn form_token(cookie: &str) -> String {
    hash_secret(&format!("link-form:{cookie}"))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// LNK-11: where a `POST` that changes a link came from, as the browser tells it.
#[derive(Debug, PartialEq, Eq)]
enum Provenance {
    /// The bot's own page: `Sec-Fetch-Site: same-origin`, or an `Origin` that is
    /// `PUBLIC_BASE_URL`'s.
    OwnPage,
    /// Another site (even a sibling subdomain: `same-site`), or an opaque origin (`null`).
    Elsewhere,
    /// The browser said neither (an old browser, or a proxy stripped both): the page's
    /// form token decides.
    Unsaid,
}

fn provenance(headers: &HeaderMap, public_origin: &str) -> Provenance {
    if let Some(site) = headers.get("sec-fetch-site") {
        return if site == "same-origin" {
            Provenance::OwnPage
        } else {
            Provenance::Elsewhere
        };
    }
    match headers.get(header::ORIGIN) {
        Some(origin) if origin.as_bytes() == public_origin.as_bytes() => Provenance::OwnPage,
        Some(_) => Provenance::Elsewhere,
        None => Provenance::Unsaid,
    }
}

/// Whether a post that would claim or replace a link came from the bot's own page: the
/// browser says so, or (when it says nothing) the form carries the token derived from
/// `cookie`. An attacker's page that auto-submits a form in the victim's browser fails both.
fn from_own_page(flow: &LinkFlow, headers: &HeaderMap, cookie: Option<&str>, token: Option<&str>) -> bool {
    match provenance(headers, &flow.public_origin()) {
        Provenance::OwnPage => true,
        Provenance::Elsewhere => false,
        Provenance::Unsaid => match (cookie, token) {
            (Some(cookie), Some(token)) => bool::from(form_token(cookie).as_bytes().ct_eq(token.as_bytes())),
            _ => false,
        },
    }
}

/// The answer to a post from anywhere but the bot's own page.
fn not_from_own_page() -> Response {
    tracing::warn!("a linking form was posted from another site, or without proof of its page; refused");
    message(
        StatusCode::FORBIDDEN,
        "Nothing was linked",
        &[
            "This request did not come from the bot’s own page, so nothing was done.".into(),
            "To connect Databricks, open the link the bot sent you in Slack and press Continue there.".into(),
        ],
    )
}

/// A form's hidden token, if it was posted as one.
#[derive(Deserialize)]
struct Posted {
    form_token: Option<String>,
    decision: Option<String>,
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
            let form_cookie = random_token();
            let body = format!(
                "<p>Connect Databricks for <span class=\"who\">{}</span> in the Slack workspace \
                 <span class=\"who\">{}</span>.</p>\
                 <p>You will sign in to <span class=\"who\">{}</span>. The bot will then answer your questions with \
                 your own Databricks permissions.</p>\
                 <form method=\"post\"><input type=\"hidden\" name=\"form_token\" value=\"{}\">\
                 <button type=\"submit\">Continue to Databricks</button></form>\
                 <p class=\"small\">Only continue if you asked the bot a question yourself. This link works once.</p>",
                escape_html(&landing.slack_user),
                escape_html(&landing.slack_workspace),
                escape_html(landing.databricks_workspace.as_str()),
                form_token(form_cookie.expose_secret()),
            );
            let origins: Vec<&str> = landing.next_origins.iter().map(String::as_str).collect();
            let mut response = page(StatusCode::OK, "Connect Databricks", &body, &origins);
            let cookie = set_form_cookie(&flow, form_cookie.expose_secret(), PENDING_LINK_TTL_SECONDS);
            response.headers_mut().insert(header::SET_COOKIE, cookie);
            response
        }
        Err(reason) => unusable(reason),
    }
}

async fn claim(
    State(flow): State<Arc<LinkFlow>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    form: Result<Form<Posted>, FormRejection>,
) -> Response {
    let token = form.ok().and_then(|Form(form)| form.form_token);
    let cookie = read_cookie(&headers, form_cookie_name(&flow));
    if !from_own_page(&flow, &headers, cookie, token.as_deref()) {
        return not_from_own_page();
    }
    match flow.claim(&id).await {
        Ok(claimed) => {
            let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, claimed.redirect.as_str())]).into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::SET_COOKIE,
                set_cookie(&flow, claimed.cookie.expose_secret(), PENDING_LINK_TTL_SECONDS),
            );
            // The landing page's form cookie has done its work.
            headers.append(header::SET_COOKIE, set_form_cookie(&flow, "", 0));
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
    let cookie = read_cookie(&headers, cookie_name(&flow)).map(str::to_owned);
    detached(async move { flow.databricks_callback(&query, cookie.as_deref()).await }).await
}

async fn slack_callback(
    State(flow): State<Arc<LinkFlow>>,
    Query(query): Query<CallbackQuery>,
    headers: HeaderMap,
) -> Response {
    let cookie = read_cookie(&headers, cookie_name(&flow)).map(str::to_owned);
    detached(async move { flow.slack_callback(&query, cookie.as_deref()).await }).await
}

/// Runs a callback to its end even when the browser's request ends first (the request
/// timeout, a closed tab): an authorization code is single-use, so a code exchange cut off
/// half-way would lose the sign-in and leave the flow hanging.
async fn detached(callback: impl Future<Output = CallbackOutcome> + Send + 'static) -> Response {
    match tokio::spawn(callback).await {
        Ok(outcome) => outcome_page(outcome),
        Err(error) => {
            tracing::error!(error = %error, "a sign-in callback failed");
            outcome_page(CallbackOutcome::Rejected("Something went wrong on our side."))
        }
    }
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

/// LNK-09: replaces the person's link with the held sign-in, or keeps it. Bound to the
/// browser by its cookie, and (LNK-11) only from the bot's own confirmation page.
async fn confirm(
    State(flow): State<Arc<LinkFlow>>,
    headers: HeaderMap,
    form: Result<Form<Posted>, FormRejection>,
) -> Response {
    // A post that is not our form (no body, another content type) gets our page too.
    let (token, decision) = match form {
        Ok(Form(form)) => (form.form_token, form.decision),
        Err(_) => (None, None),
    };
    let cookie = read_cookie(&headers, cookie_name(&flow));
    if !from_own_page(&flow, &headers, cookie, token.as_deref()) {
        return not_from_own_page();
    }
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
             <input type=\"hidden\" name=\"form_token\" value=\"{}\">\
             <button type=\"submit\" name=\"decision\" value=\"replace\">Replace</button> \
             <button type=\"submit\" name=\"decision\" value=\"keep\" class=\"secondary\">Keep {}</button>\
             </form>",
            escape_html(flow.workspace().as_str()),
            escape_html(p.replaces.as_deref().unwrap_or("another account")),
            escape_html(p.databricks_user.as_deref().unwrap_or("another account")),
            form_token(cookie),
            escape_html(p.replaces.as_deref().unwrap_or("the current one")),
        );
        return page(StatusCode::OK, "Replace your Databricks connection?", &body, &[]);
    }
    // A flow still under way (its exchange running, or the sign-in not back yet) keeps its
    // cookie: a reload mid-flow must not end it.
    if let Some(p) = pending
        .as_ref()
        .filter(|p| matches!(p.status, PendingStatus::Claimed | PendingStatus::Exchanging))
    {
        let doing = if p.status == PendingStatus::Exchanging {
            "Finishing the connection to Databricks…"
        } else {
            "Waiting for you to finish signing in…"
        };
        return message(
            StatusCode::OK,
            "Still connecting",
            &[doing.into(), "Reload this page in a moment to see how it went.".into()],
        );
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
