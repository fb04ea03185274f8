//! A fake Sign in with Slack issuer (discovery, keys, the token endpoint) whose id_tokens
//! the tests sign, and the steps of a browser going through it.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use wiremock::matchers::path;
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::app::{Options, TestApp, browser, mount_slack_defaults};

pub const CLIENT_ID: &str = "123.456";

/// Slack's Web API with an OpenID issuer beside it.
pub async fn fake_slack_with_oidc() -> Arc<MockServer> {
    let slack = MockServer::start().await;
    let uri = slack.uri();
    Mock::given(path("/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "issuer": uri,
            "authorization_endpoint": format!("{uri}/openid/connect/authorize"),
            "token_endpoint": format!("{uri}/api/openid.connect.token"),
            "jwks_uri": format!("{uri}/openid/connect/keys"),
            "id_token_signing_alg_values_supported": ["RS256"]
        })))
        .mount(&slack)
        .await;
    let jwks: Value = serde_json::from_str(include_str!("../../fixtures/slack-oidc-test-jwks.json")).unwrap();
    Mock::given(path("/openid/connect/keys"))
        .respond_with(ResponseTemplate::new(200).set_body_json(jwks))
        .mount(&slack)
        .await;
    mount_slack_defaults(&slack).await;
    Arc::new(slack)
}

/// The app with Sign in with Slack, its client secret `client_secret`, and `extra_env`.
pub async fn spawn_with_sign_in(client_secret: &str, extra_env: Vec<(&'static str, String)>) -> TestApp {
    spawn_with_sign_in_and(
        client_secret,
        Options {
            extra_env,
            ..Default::default()
        },
    )
    .await
}

/// [`spawn_with_sign_in`] on top of `options` (their Slack is replaced).
pub async fn spawn_with_sign_in_and(client_secret: &str, mut options: Options) -> TestApp {
    let slack = fake_slack_with_oidc().await;
    let issuer = slack.uri();
    options.extra_env.extend([
        ("SLACK_CLIENT_ID", CLIENT_ID.into()),
        ("SLACK_CLIENT_SECRET", client_secret.into()),
        ("SLACK_OIDC_ISSUER", issuer),
    ]);
    options.slack = Some(slack);
    TestApp::spawn_with(options).await
}

/// What Slack's authorize step received, and the browser's binding cookie.
pub struct AtSlack {
    pub cookie: String,
    pub state: String,
    pub nonce: String,
}

/// Asks, claims the link, and returns what Slack's authorize step received.
pub async fn to_slack(app: &TestApp, event: &str) -> AtSlack {
    let id = app.ask_for_link(event, "who am I?").await;
    let claim = app.claim_link(&id).await.expect("claimed");
    let cookie = claim.cookie;
    let authorize = url::Url::parse(&claim.location).unwrap();
    let q: std::collections::HashMap<String, String> = authorize.query_pairs().into_owned().collect();
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["team"], "T061EG9R6");
    assert_eq!(q["redirect_uri"], "https://bot.example.com/oauth/slack/callback");
    assert_eq!(q["scope"], "openid email profile");
    AtSlack {
        cookie,
        state: q["state"].clone(),
        nonce: q["nonce"].clone(),
    }
}

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The claims of an id_token for Slack user `user` with `nonce`.
pub fn claims(app: &TestApp, nonce: &str, user: &str) -> Value {
    json!({
        "iss": app.slack.uri(), "aud": CLIENT_ID, "sub": user, "exp": now() + 300, "iat": now(),
        "nonce": nonce, "email": "asker@example.com", "email_verified": true,
        "https://slack.com/team_id": "T061EG9R6", "https://slack.com/user_id": user
    })
}

/// `claims` signed with the test key, as key `kid`.
pub fn sign(claims: &Value, kid: &str) -> String {
    let key = EncodingKey::from_rsa_pem(include_bytes!("../../fixtures/slack-oidc-test-key.pem")).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// Slack answers the code exchange with `id_token`, then the browser comes back with `code`.
pub async fn back_from_slack_with(app: &TestApp, at: &AtSlack, code: &str, id_token: &str) -> reqwest::Response {
    Mock::given(path("/api/openid.connect.token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true, "id_token": id_token})))
        .up_to_n_times(1)
        .mount(&app.slack)
        .await;
    browser()
        .get(app.url(&format!("/oauth/slack/callback?code={code}&state={}", at.state)))
        .header("cookie", &at.cookie)
        .send()
        .await
        .unwrap()
}
