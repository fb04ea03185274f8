//! A fake Entra ID tenant on loopback, for `DATABRICKS_AUTH=entra-obo`: the v2.0
//! discovery document, an authorization step the test plays as the browser, and a token
//! endpoint for the authorization code (PKCE, exact redirect URI), refresh (rotating, and
//! requiring `scope` as Entra's v2.0 endpoint does) and on-behalf-of grants.
//!
//! Shapes follow Microsoft's "OAuth 2.0 on-behalf-of flow" and "authorization code flow"
//! pages (learn.microsoft.com/entra/identity-platform/v2-oauth2-on-behalf-of-flow,
//! v2-oauth2-auth-code-flow): token answers carry `token_type`, `scope`, `expires_in`,
//! `ext_expires_in`, `access_token` (and `refresh_token`, `id_token`); errors carry
//! `error`, `error_description` starting with the AADSTS code, `error_codes`,
//! `timestamp`, `trace_id` and `correlation_id`.
//!
//! The on-behalf-of grant checks the assertion: it must be a live access token this
//! tenant issued for the bot's API. The bot authenticates with the client secret, or with
//! a client assertion signed by the certificate in `tests/fixtures/entra/` (checked here
//! as Microsoft's "certificate credentials" page describes: PS256, `x5t#S256` of the
//! certificate, `aud` the token endpoint, `iss` = `sub` = the client id, not expired). The Azure Databricks token it returns is registered
//! with the fake workspace, as the real one accepts Entra tokens for its resource.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use url::Url;

use super::app::{Options, TestApp};
use super::fake_databricks::{FakeDatabricks, FakeUser};

pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const CLIENT_ID: &str = "6731de76-14a6-49ae-97bc-6eba6914391e";
pub const CLIENT_SECRET: &str = "entra-secret-canary";
pub const API_SCOPE: &str = "api://6731de76-14a6-49ae-97bc-6eba6914391e/access_as_user";
pub const AZURE_DATABRICKS: &str = "2ff814a6-3304-4ab8-85cb-cd0e6f879c1d";

#[derive(Default)]
struct Tenant {
    codes: HashMap<String, (String, FakeUser, String)>,
    refresh_tokens: HashMap<String, FakeUser>,
    /// Live access tokens for the bot's API.
    api_tokens: HashMap<String, FakeUser>,
    requests: Vec<HashMap<String, String>>,
    /// Canned refusals, each for the next request of its grant type.
    scripted: VecDeque<(&'static str, u16, Value)>,
    counter: u64,
}

pub struct FakeEntra {
    pub uri: String,
    tenant: Arc<Mutex<Tenant>>,
}

type Shared = (Arc<Mutex<Tenant>>, String, Arc<FakeDatabricks>);

impl FakeEntra {
    /// A tenant whose on-behalf-of tokens `databricks` accepts.
    pub async fn start(databricks: Arc<FakeDatabricks>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}", listener.local_addr().unwrap());
        let tenant = Arc::new(Mutex::new(Tenant::default()));
        let app = Router::new()
            .route("/{tenant}/v2.0/.well-known/openid-configuration", get(discovery))
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .with_state((tenant.clone(), uri.clone(), databricks));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { uri, tenant }
    }

    /// The app linking through a fresh tenant (`entra-obo`), with `extra_env` on top of
    /// the tenant's settings.
    pub async fn with_app(extra_env: Vec<(&'static str, String)>) -> (TestApp, Self) {
        let databricks = Arc::new(FakeDatabricks::start().await);
        let entra = Self::start(databricks.clone()).await;
        let mut env = entra.env();
        env.extend(extra_env);
        let app = TestApp::spawn_with(Options {
            databricks: Some(databricks),
            extra_env: env,
            ..Default::default()
        })
        .await;
        (app, entra)
    }

    /// The bot's settings for this tenant.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DATABRICKS_AUTH", "entra-obo".into()),
            ("DATABRICKS_CLIENT_ID", String::new()),
            ("ENTRA_TENANT_ID", TENANT.into()),
            ("ENTRA_CLIENT_ID", CLIENT_ID.into()),
            ("ENTRA_CLIENT_SECRET", CLIENT_SECRET.into()),
            ("ENTRA_AUTHORITY_URL", self.uri.clone()),
        ]
    }

    /// Plays the person at Entra's sign-in page: checks the authorization request and
    /// returns the callback URL Entra redirects to.
    pub fn authorize(&self, authorize_url: &str, user: &FakeUser) -> Url {
        let url = Url::parse(authorize_url).unwrap();
        assert_eq!(url.path(), format!("/{TENANT}/oauth2/v2.0/authorize"));
        let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(q["client_id"], CLIENT_ID);
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["code_challenge_method"], "S256");
        let scopes: HashSet<&str> = q["scope"].split(' ').collect();
        assert_eq!(
            scopes,
            HashSet::from([API_SCOPE, "offline_access", "openid", "email", "profile"])
        );
        let mut t = self.tenant.lock().unwrap();
        t.counter += 1;
        let code = format!("entra-code-{}", t.counter);
        t.codes.insert(
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

    /// The next request of `grant_type` is refused with Entra's error for `aadsts`.
    pub fn refuse_next(&self, grant_type: &'static str, status: u16, error: &str, aadsts: u32, text: &str) {
        let body = json!({
            "error": error,
            "error_description": format!("AADSTS{aadsts}: {text}\r\nTrace ID: 0000aaaa-11bb-cccc-dd22-eeeeee333333\r\nCorrelation ID: aaaa0000-bb11-2222-33cc-444444dddddd\r\nTimestamp: 2026-12-02 10:00:00Z"),
            "error_codes": [aadsts],
            "timestamp": "2026-12-02 10:00:00Z",
            "trace_id": "0000aaaa-11bb-cccc-dd22-eeeeee333333",
            "correlation_id": "aaaa0000-bb11-2222-33cc-444444dddddd",
        });
        self.tenant
            .lock()
            .unwrap()
            .scripted
            .push_back((grant_type, status, body));
    }

    /// Every token request's form fields (client credentials included), in order.
    pub fn requests(&self) -> Vec<HashMap<String, String>> {
        self.tenant.lock().unwrap().requests.clone()
    }

    /// The requests of one grant type.
    pub fn requests_of(&self, grant_type: &str) -> Vec<HashMap<String, String>> {
        self.requests()
            .into_iter()
            .filter(|r| r.get("grant_type").map(String::as_str) == Some(grant_type))
            .collect()
    }
}

async fn discovery(State((_, uri, _)): State<Shared>, Path(tenant): Path<String>) -> Json<Value> {
    // As Entra's v2.0 document: no code_challenge_methods_supported (PKCE is supported).
    Json(json!({
        "issuer": format!("{uri}/{tenant}/v2.0"),
        "authorization_endpoint": format!("{uri}/{tenant}/oauth2/v2.0/authorize"),
        "token_endpoint": format!("{uri}/{tenant}/oauth2/v2.0/token"),
        "jwks_uri": format!("{uri}/{tenant}/discovery/v2.0/keys"),
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
    }))
}

fn refusal(status: u16, error: &str, aadsts: u32, text: &str) -> Response {
    let body = json!({"error": error, "error_description": format!("AADSTS{aadsts}: {text}"),
                      "error_codes": [aadsts]});
    (StatusCode::from_u16(status).unwrap(), Json(body)).into_response()
}

/// An id_token as Entra issues it (the bot reads its claims, the signature is not checked
/// on a token that came straight from the token endpoint).
fn id_token(uri: &str, user: &FakeUser) -> String {
    let part = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.{}",
        part(json!({"typ": "JWT", "alg": "RS256", "kid": "fake-entra-key"})),
        part(
            json!({"aud": CLIENT_ID, "iss": format!("{uri}/{TENANT}/v2.0"), "tid": TENANT,
                    "oid": format!("oid-{}", user.id), "preferred_username": user.user_name,
                    "name": user.display_name, "exp": 4102444800u64, "iat": 1764669600u64})
        ),
        URL_SAFE_NO_PAD.encode(b"not-checked")
    )
}

async fn token(
    State((tenant, uri, databricks)): State<Shared>,
    headers: HeaderMap,
    Form(mut form): Form<HashMap<String, String>>,
) -> Response {
    if let Some(basic) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        && let Ok(decoded) = STANDARD.decode(basic)
        && let Some((id, secret)) = String::from_utf8_lossy(&decoded).split_once(':')
    {
        form.insert("client_id".into(), id.to_owned());
        form.insert("client_secret".into(), secret.to_owned());
    }
    let mut t = tenant.lock().unwrap();
    t.requests.push(form.clone());
    let grant = form.get("grant_type").cloned().unwrap_or_default();
    if let Some(at) = t.scripted.iter().position(|(g, _, _)| *g == grant) {
        let (_, status, body) = t.scripted.remove(at).unwrap();
        return (StatusCode::from_u16(status).unwrap(), Json(body)).into_response();
    }
    if form.get("client_id").map(String::as_str) != Some(CLIENT_ID) {
        return refusal(
            400,
            "unauthorized_client",
            700016,
            "Application not found in the directory.",
        );
    }
    let token_endpoint = format!("{uri}/{TENANT}/oauth2/v2.0/token");
    match (form.get("client_secret"), form.get("client_assertion")) {
        (Some(secret), None) if secret == CLIENT_SECRET => {}
        (None, Some(assertion)) if valid_client_assertion(assertion, &token_endpoint, &form) => {}
        (None, Some(_)) => {
            return refusal(
                401,
                "invalid_client",
                700027,
                "Client assertion failed signature validation.",
            );
        }
        _ => return refusal(401, "invalid_client", 7000215, "Invalid client secret provided."),
    }
    t.counter += 1;
    let n = t.counter;
    match grant.as_str() {
        "authorization_code" => {
            let Some((challenge, user, redirect)) = form.get("code").and_then(|c| t.codes.remove(c)) else {
                return refusal(
                    400,
                    "invalid_grant",
                    70000,
                    "The provided authorization code is invalid.",
                );
            };
            let verifier = form.get("code_verifier").cloned().unwrap_or_default();
            if URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) != challenge {
                return refusal(
                    400,
                    "invalid_grant",
                    501481,
                    "The Code_Verifier does not match the code_challenge.",
                );
            }
            if form.get("redirect_uri") != Some(&redirect) {
                return refusal(400, "invalid_grant", 50148, "The redirect URI does not match.");
            }
            Json(issue(&mut t, &uri, &user, n)).into_response()
        }
        "refresh_token" => {
            let scope = form.get("scope").cloned().unwrap_or_default();
            if !scope.split(' ').any(|s| s == API_SCOPE) {
                return refusal(
                    400,
                    "invalid_request",
                    900144,
                    "The request body must contain the following parameter: 'scope'.",
                );
            }
            let rt = form.get("refresh_token").cloned().unwrap_or_default();
            let Some(user) = t.refresh_tokens.remove(&rt) else {
                return refusal(
                    400,
                    "invalid_grant",
                    70008,
                    "The provided authorization code or refresh token has expired.",
                );
            };
            Json(issue(&mut t, &uri, &user, n)).into_response()
        }
        "urn:ietf:params:oauth:grant-type:jwt-bearer" => {
            if form.get("requested_token_use").map(String::as_str) != Some("on_behalf_of") {
                return refusal(
                    400,
                    "invalid_request",
                    90014,
                    "The required field 'requested_token_use' is missing.",
                );
            }
            if form.get("scope").map(String::as_str) != Some(&format!("{AZURE_DATABRICKS}/.default")) {
                return refusal(
                    400,
                    "invalid_scope",
                    70011,
                    "The provided value for the input parameter 'scope' is not valid.",
                );
            }
            let assertion = form.get("assertion").cloned().unwrap_or_default();
            let Some(user) = t.api_tokens.get(&assertion).cloned() else {
                return refusal(400, "invalid_grant", 50013, "Assertion failed signature validation.");
            };
            let adb = format!("adb-obo-{n}");
            databricks.accept(&adb, &user);
            Json(
                json!({"token_type": "Bearer", "scope": format!("{AZURE_DATABRICKS}/user_impersonation"),
                        "expires_in": 3599, "ext_expires_in": 3599, "access_token": adb}),
            )
            .into_response()
        }
        _ => refusal(
            400,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        ),
    }
}

/// The path of the test certificate (private key and certificate, PEM).
pub fn certificate_path() -> String {
    format!(
        "{}/tests/fixtures/entra/client-certificate.pem",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn valid_client_assertion(assertion: &str, token_endpoint: &str, form: &HashMap<String, String>) -> bool {
    if form.get("client_assertion_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    {
        return false;
    }
    let dir = format!("{}/tests/fixtures/entra", env!("CARGO_MANIFEST_DIR"));
    let public = std::fs::read(format!("{dir}/client-certificate.pub.pem")).unwrap();
    let bundle = std::fs::read_to_string(format!("{dir}/client-certificate.pem")).unwrap();
    let der: String = bundle
        .split("-----BEGIN CERTIFICATE-----")
        .nth(1)
        .and_then(|rest| rest.split("-----END CERTIFICATE-----").next())
        .unwrap()
        .split_whitespace()
        .collect();
    let thumbprint = URL_SAFE_NO_PAD.encode(Sha256::digest(STANDARD.decode(der).unwrap()));
    let Ok(header) = jsonwebtoken::decode_header(assertion) else {
        return false;
    };
    if header.alg != jsonwebtoken::Algorithm::PS256 || header.x5t_s256.as_deref() != Some(thumbprint.as_str()) {
        return false;
    }
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::PS256);
    validation.set_audience(&[token_endpoint]);
    validation.set_issuer(&[CLIENT_ID]);
    validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(&public).unwrap();
    match jsonwebtoken::decode::<Value>(assertion, &key, &validation) {
        Ok(data) => data.claims["sub"] == CLIENT_ID && data.claims["jti"].is_string(),
        Err(_) => false,
    }
}

fn issue(t: &mut Tenant, uri: &str, user: &FakeUser, n: u64) -> Value {
    let (at, rt) = (format!("entra-api-{n}"), format!("entra-rt-{n}"));
    t.api_tokens.insert(at.clone(), user.clone());
    t.refresh_tokens.insert(rt.clone(), user.clone());
    json!({"token_type": "Bearer", "scope": format!("{API_SCOPE} openid email profile offline_access"),
           "expires_in": 3599, "ext_expires_in": 3599, "access_token": at, "refresh_token": rt,
           "id_token": id_token(uri, user)})
}
