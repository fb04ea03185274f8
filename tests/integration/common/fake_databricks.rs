//! A fake Databricks workspace on loopback: OAuth discovery, an authorization step the
//! test plays as the browser, a token endpoint that enforces PKCE and rotates refresh
//! tokens (single-use, like Databricks' single-use refresh tokens), and SCIM Me.
//!
//! With a [`FederationPolicy`], the token endpoint also does OAuth token federation
//! (RFC 8693, as Databricks documents it at `/oidc/v1/token`): it verifies the IdP JWT
//! against the IdP's JWKS (signature, `iss`, `aud`, `exp`) and maps the policy's subject
//! claim to the Databricks user. Databricks' refusal bodies for a mismatched policy are
//! not documented: this fake answers RFC 6749 errors, and the bot reads any refusal that
//! is not an expired token as a policy problem.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use url::Url;

use super::recorded::{Recorded, recorded};

/// A Databricks user.
#[derive(Clone, Debug)]
pub struct FakeUser {
    pub id: String,
    pub user_name: String,
    pub display_name: String,
    pub emails: Vec<String>,
}

impl FakeUser {
    /// The user whose email matches the fake Slack's default profile.
    pub fn asker() -> Self {
        Self::named("asker@example.com", "Alice Asker")
    }

    pub fn named(email: &str, display: &str) -> Self {
        Self {
            id: format!("id-{email}"),
            user_name: email.to_owned(),
            display_name: display.to_owned(),
            emails: vec![email.to_owned()],
        }
    }
}

/// A canned answer for the next token request(s), instead of the normal behaviour.
pub enum Scripted {
    Status(u16, Value),
    /// Answer as the real token endpoint once did (`tests/fixtures/databricks/`).
    Recorded(Recorded),
    /// Hang this long, then answer normally (a timeout for the bot).
    Delay(Duration),
    /// Answer normally (rotating the token), then hang so the bot never sees it.
    RotateThenHang(Duration),
    /// Hold the request until the test releases it, then answer normally: the server
    /// acts on it late.
    WaitFor(Arc<tokio::sync::Notify>),
    /// Answer normally (rotating the token) at once, but hold the answer until the test
    /// releases it: the server acted, its answer is slow.
    RotateThenWaitFor(Arc<tokio::sync::Notify>),
    Redirect(String),
}

/// An account federation policy: which IdP JWTs the token exchange accepts.
#[derive(Clone, Debug)]
pub struct FederationPolicy {
    pub issuer: String,
    pub audiences: Vec<String>,
    /// The claim holding the Databricks user name (`sub` by default at Databricks).
    pub subject_claim: String,
    /// Fetched on every exchange, so a rotated key set is followed.
    pub jwks_uri: String,
}

#[derive(Default)]
pub struct FakeState {
    /// The account federation policy, when token federation is on.
    pub federation: Option<FederationPolicy>,
    codes: HashMap<String, (String, FakeUser, String)>,
    pub refresh_tokens: HashMap<String, FakeUser>,
    access_tokens: HashMap<String, FakeUser>,
    /// Every token request's form fields, in order.
    pub token_requests: Vec<HashMap<String, String>>,
    pub scripted: VecDeque<Scripted>,
    /// Whether refreshes rotate the refresh token (single-use refresh tokens).
    pub rotate: bool,
    /// Whether refresh answers include a refresh token at all.
    pub omit_refresh_token: bool,
    pub access_ttl: u64,
    counter: u64,
    /// Access tokens SCIM and the API refuse (revoked).
    pub refused_access_tokens: Vec<String>,
    /// Whether the access token a code exchange issues is refused from the start.
    pub refuse_exchanged_access_token: bool,
}

impl FakeState {
    /// Revokes every access token issued so far: the API and SCIM refuse them from now on.
    pub fn revoke_access_tokens(&mut self) {
        let issued: Vec<String> = self.access_tokens.keys().cloned().collect();
        self.refused_access_tokens.extend(issued);
    }
}

pub struct FakeDatabricks {
    pub uri: String,
    pub state: Arc<Mutex<FakeState>>,
    /// The workspace's REST API beyond OAuth and SCIM Me (Genie, SQL, serving, Unity
    /// Catalog): requests with a valid access token are forwarded here, so a test mounts
    /// the answers it needs and reads what arrived.
    pub api: Arc<wiremock::MockServer>,
}

impl FakeDatabricks {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let uri = format!("http://{addr}");
        let state = Arc::new(Mutex::new(FakeState {
            rotate: true,
            access_ttl: 3600,
            ..FakeState::default()
        }));
        let api = Arc::new(wiremock::MockServer::start().await);
        let app = Router::new()
            .route("/oidc/.well-known/oauth-authorization-server", get(discovery))
            .route("/oidc/v1/token", post(token))
            .route("/api/2.0/preview/scim/v2/Me", get(me))
            .with_state((state.clone(), uri.clone()))
            .fallback({
                let (state, api) = (state.clone(), api.uri());
                move |request: axum::extract::Request| forward(state, api, request)
            });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { uri, state, api }
    }

    /// The Databricks userName an access token belongs to.
    pub fn owner_of(&self, access_token: &str) -> Option<String> {
        let state = self.state.lock().unwrap();
        state.access_tokens.get(access_token).map(|u| u.user_name.clone())
    }

    /// The userName behind the bearer token of every request the API received.
    pub async fn api_callers(&self) -> Vec<Option<String>> {
        let requests = self.api.received_requests().await.unwrap_or_default();
        requests
            .iter()
            .map(|r| {
                let bearer = r.headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ")?;
                self.owner_of(bearer)
            })
            .collect()
    }

    /// Plays the person at Databricks' login page: checks the authorization request the
    /// bot built and returns the callback URL Databricks would redirect to.
    pub fn authorize(&self, authorize_url: &str, user: &FakeUser) -> Url {
        let url = Url::parse(authorize_url).unwrap();
        assert_eq!(url.path(), "/oidc/v1/authorize");
        let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["code_challenge_method"], "S256", "PKCE S256 only");
        assert_eq!(q["client_id"], "test-client");
        let code = format!("code-{}", self.next());
        self.state.lock().unwrap().codes.insert(
            code.clone(),
            (q["code_challenge"].clone(), user.clone(), q["redirect_uri"].clone()),
        );
        let mut callback = Url::parse(&q["redirect_uri"]).unwrap();
        callback
            .query_pairs_mut()
            .append_pair("code", &code)
            .append_pair("state", &q["state"]);
        callback
    }

    /// Gives `user` a refresh token directly (as if they had linked before).
    pub fn grant(&self, user: &FakeUser) -> String {
        let rt = format!("rt-{}", self.next());
        self.state
            .lock()
            .unwrap()
            .refresh_tokens
            .insert(rt.clone(), user.clone());
        rt
    }

    /// Turns on token federation under `policy`.
    pub fn federate(&self, policy: FederationPolicy) {
        self.state.lock().unwrap().federation = Some(policy);
    }

    /// Accepts `access_token` as `user`'s, as Azure Databricks accepts Entra ID tokens for
    /// its resource.
    pub fn accept(&self, access_token: &str, user: &FakeUser) {
        let mut s = self.state.lock().unwrap();
        s.access_tokens.insert(access_token.to_owned(), user.clone());
    }

    /// The token-exchange requests the workspace received (`token-federation`).
    pub fn exchanges(&self) -> Vec<HashMap<String, String>> {
        self.token_requests()
            .into_iter()
            .filter(|r| {
                r.get("grant_type").map(String::as_str) == Some("urn:ietf:params:oauth:grant-type:token-exchange")
            })
            .collect()
    }

    pub fn token_requests(&self) -> Vec<HashMap<String, String>> {
        self.state.lock().unwrap().token_requests.clone()
    }

    pub fn refreshes(&self) -> Vec<HashMap<String, String>> {
        self.token_requests()
            .into_iter()
            .filter(|r| r.get("grant_type").map(String::as_str) == Some("refresh_token"))
            .collect()
    }

    pub fn script(&self, scripted: Scripted) {
        self.state.lock().unwrap().scripted.push_back(scripted);
    }

    fn next(&self) -> u64 {
        let mut s = self.state.lock().unwrap();
        s.counter += 1;
        s.counter
    }
}

type Shared = (Arc<Mutex<FakeState>>, String);

async fn discovery(State((_, uri)): State<Shared>) -> Json<Value> {
    Json(json!({
        "issuer": format!("{uri}/oidc"),
        "authorization_endpoint": format!("{uri}/oidc/v1/authorize"),
        "token_endpoint": format!("{uri}/oidc/v1/token"),
        "code_challenge_methods_supported": ["S256"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "scopes_supported": ["all-apis", "offline_access", "openid", "email", "profile"]
    }))
}

fn issue(state: &mut FakeState, user: &FakeUser, with_refresh: bool) -> Value {
    state.counter += 1;
    let at = format!("at-{}", state.counter);
    state.access_tokens.insert(at.clone(), user.clone());
    let mut body = json!({"access_token": at, "token_type": "Bearer", "expires_in": state.access_ttl,
                          "scope": "all-apis offline_access"});
    if with_refresh {
        let rt = format!("rt-{}", state.counter);
        state.refresh_tokens.insert(rt.clone(), user.clone());
        body["refresh_token"] = json!(rt);
    }
    body
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (status, Json(json!({"error": error, "error_description": description}))).into_response()
}

async fn token(
    State((state, _)): State<Shared>,
    headers: HeaderMap,
    Form(mut form): Form<HashMap<String, String>>,
) -> Response {
    // A confidential client authenticates with HTTP Basic (oauth2's default).
    if let Some(basic) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        && let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(basic)
        && let Some((id, secret)) = String::from_utf8_lossy(&decoded).split_once(':')
    {
        form.insert("client_id".into(), id.to_owned());
        form.insert("client_secret".into(), secret.to_owned());
    }
    let scripted = {
        let mut s = state.lock().unwrap();
        s.token_requests.push(form.clone());
        s.scripted.pop_front()
    };
    match scripted {
        Some(Scripted::Status(code, body)) => return (StatusCode::from_u16(code).unwrap(), Json(body)).into_response(),
        Some(Scripted::Recorded(recorded)) => return recorded.response(),
        Some(Scripted::Redirect(to)) => return (StatusCode::FOUND, [("location", to)]).into_response(),
        Some(Scripted::Delay(d)) => tokio::time::sleep(d).await,
        Some(Scripted::RotateThenHang(d)) => {
            let _ = answer(&state, &form);
            tokio::time::sleep(d).await;
        }
        Some(Scripted::WaitFor(release)) => release.notified().await,
        Some(Scripted::RotateThenWaitFor(release)) => {
            let answered = answer(&state, &form);
            release.notified().await;
            return answered;
        }
        None => {}
    }
    if form.get("grant_type").map(String::as_str) == Some("urn:ietf:params:oauth:grant-type:token-exchange") {
        return exchange(&state, &form).await;
    }
    answer(&state, &form)
}

/// RFC 8693 token exchange under the account's federation policy.
async fn exchange(state: &Arc<Mutex<FakeState>>, form: &HashMap<String, String>) -> Response {
    let Some(policy) = state.lock().unwrap().federation.clone() else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "token federation is not enabled",
        );
    };
    if form.get("subject_token_type").map(String::as_str) != Some("urn:ietf:params:oauth:token-type:jwt")
        || form.get("scope").map(String::as_str) != Some("all-apis")
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "unsupported subject_token_type or scope",
        );
    }
    let token = form.get("subject_token").cloned().unwrap_or_default();
    let Ok(header) = jsonwebtoken::decode_header(&token) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the subject token is not a JWT",
        );
    };
    let jwks: jsonwebtoken::jwk::JwkSet = reqwest::get(&policy.jwks_uri).await.unwrap().json().await.unwrap();
    let Some(jwk) = header.kid.as_deref().and_then(|kid| jwks.find(kid)) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "no federation policy matches: unknown signing key",
        );
    };
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_issuer(&[&policy.issuer]);
    validation.set_audience(&policy.audiences);
    validation.leeway = 0;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let claims = match jsonwebtoken::decode::<Value>(&token, &key, &validation) {
        Ok(data) => data.claims,
        Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the subject token has expired",
            );
        }
        Err(_) => {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "no federation policy matches the subject token",
            );
        }
    };
    let Some(subject) = claims.get(&policy.subject_claim).and_then(Value::as_str) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "the subject claim is missing",
        );
    };
    let user = FakeUser::named(subject, subject);
    let mut s = state.lock().unwrap();
    let mut issued = issue(&mut s, &user, false);
    issued["scope"] = json!("all-apis");
    Json(issued).into_response()
}

fn answer(state: &Arc<Mutex<FakeState>>, form: &HashMap<String, String>) -> Response {
    let mut s = state.lock().unwrap();
    if form.get("client_id").map(String::as_str) != Some("test-client") {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "unknown client");
    }
    match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let Some((challenge, user, redirect)) = form.get("code").and_then(|c| s.codes.remove(c)) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "unknown or used code");
            };
            let verifier = form.get("code_verifier").cloned().unwrap_or_default();
            if URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) != challenge {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "PKCE verification failed");
            }
            if form.get("redirect_uri") != Some(&redirect) {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "redirect_uri mismatch");
            }
            let issued = issue(&mut s, &user, true);
            if s.refuse_exchanged_access_token {
                let at = issued["access_token"].as_str().unwrap().to_owned();
                s.refused_access_tokens.push(at);
            }
            Json(issued).into_response()
        }
        Some("refresh_token") => {
            let rt = form.get("refresh_token").cloned().unwrap_or_default();
            let Some(user) = s.refresh_tokens.get(&rt).cloned() else {
                // Databricks' own shape for a dead refresh token.
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "Refresh token is invalid");
            };
            if s.rotate {
                s.refresh_tokens.remove(&rt);
            }
            let with_refresh = !s.omit_refresh_token;
            Json(issue(&mut s, &user, with_refresh)).into_response()
        }
        _ => oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", ""),
    }
}

/// Any other API call: refused like Databricks refuses an unknown or revoked token, or
/// passed to the test's mocks.
async fn forward(state: Arc<Mutex<FakeState>>, api: String, request: axum::extract::Request) -> Response {
    let (parts, body) = request.into_parts();
    let token = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let known = {
        let s = state.lock().unwrap();
        s.access_tokens.contains_key(&token) && !s.refused_access_tokens.contains(&token)
    };
    if !known {
        return recorded("invalid-access-token-403").response();
    }
    let body = axum::body::to_bytes(body, 16 << 20).await.unwrap();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let upstream = reqwest::Client::new()
        .request(parts.method, format!("{api}{path}"))
        .headers(parts.headers)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = upstream.status();
    let headers = upstream.headers().clone();
    let bytes = upstream.bytes().await.unwrap();
    let mut response = (status, bytes).into_response();
    for name in ["content-type", "retry-after"] {
        if let Some(value) = headers.get(name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
}

async fn me(State((state, _)): State<Shared>, headers: HeaderMap) -> Response {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let s = state.lock().unwrap();
    match s.access_tokens.get(&token) {
        Some(user) if !s.refused_access_tokens.contains(&token) => {
            let mut me = recorded("scim-me").json();
            me["id"] = json!(user.id);
            me["userName"] = json!(user.user_name);
            me["displayName"] = json!(user.display_name);
            me["emails"] = user
                .emails
                .iter()
                .map(|e| json!({"type": "work", "value": e, "primary": true}))
                .collect();
            Json(me).into_response()
        }
        // A real workspace refuses the token before SCIM sees the request.
        _ => recorded("invalid-access-token-403").response(),
    }
}
