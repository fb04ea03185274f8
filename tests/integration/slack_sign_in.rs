//! Sign in with Slack during linking, against a fake Slack OpenID issuer whose id_tokens
//! the test signs: the browser must prove it is the link's Slack user before Databricks.

use std::sync::Arc;

use crate::common::TestDb;
use crate::common::app::{Options, TestApp, browser};
use crate::common::fake_databricks::{FakeDatabricks, FakeUser};
use crate::common::slack_oidc::{
    AtSlack, CLIENT_ID, back_from_slack_with, claims, fake_slack_with_oidc, now, sign, spawn_with_sign_in, to_slack,
};
use base64::Engine;
use serde_json::{Value, json};

async fn spawn() -> TestApp {
    spawn_with_sign_in("slack-client-secret", Vec::new()).await
}

/// Slack answers the code exchange with `id_token`, then the browser comes back.
async fn back_from_slack(app: &TestApp, at: &AtSlack, id_token: &str) -> reqwest::Response {
    back_from_slack_with(app, at, "slack-code", id_token).await
}

#[tokio::test]
async fn the_right_slack_user_goes_on_to_databricks_and_is_linked() {
    let app = spawn().await;
    let at = to_slack(&app, "Ev1").await;
    let response = back_from_slack(&app, &at, &sign(&claims(&app, &at.nonce, "U061F7AUR"), "test-key-1")).await;
    assert_eq!(response.status(), 303);
    let databricks_authorize = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        databricks_authorize.starts_with(&app.databricks.uri),
        "{databricks_authorize}"
    );

    let exchange = app
        .slack
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.url.path() == "/api/openid.connect.token")
        .unwrap();
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(&exchange.body).into_owned().collect();
    assert_eq!(form["redirect_uri"], "https://bot.example.com/oauth/slack/callback");
    assert_eq!(form["code"], "slack-code");

    let back = app.databricks.authorize(&databricks_authorize, &FakeUser::asker());
    let path = format!("{}?{}", back.path(), back.query().unwrap());
    let done = browser()
        .get(app.url(&path))
        .header("cookie", &at.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 303);
    assert!(app.result_page(&at.cookie).await.contains("You’re connected"));
    assert_eq!(app.store.list_links(None).await.unwrap().len(), 1);
    app.stop().await;
}

// LNK-01/LNK-02: the link opened by another Slack user.
#[tokio::test]
async fn a_link_opened_by_another_slack_user_stops_before_databricks() {
    let app = spawn().await;
    let at = to_slack(&app, "Ev1").await;
    let response = back_from_slack(&app, &at, &sign(&claims(&app, &at.nonce, "U0MALLORY"), "test-key-1")).await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/link/result", "not on to Databricks");
    let page = app.result_page(&at.cookie).await;
    assert!(
        page.contains("someone other than the person this link was made for, so nothing was linked"),
        "{page}"
    );
    assert!(app.databricks.token_requests().is_empty());
    assert!(app.store.list_links(None).await.unwrap().is_empty());
    let warned = app.wait_for_calls("chat.postMessage", 1).await;
    assert!(
        warned[0].to_string().contains("Someone tried"),
        "the owner is told: {warned:?}"
    );
    app.stop().await;
}

// LNK-07: every kind of bad id_token is refused.
#[tokio::test]
async fn forged_expired_or_misdirected_id_tokens_are_refused() {
    let app = spawn().await;
    let none_alg = |c: &Value| {
        let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(c))
    };
    type Forge = Box<dyn Fn(&TestApp, &str) -> String>;
    let cases: Vec<(&str, Forge)> = vec![
        (
            "wrong audience",
            Box::new(|app, nonce| {
                let mut c = claims(app, nonce, "U061F7AUR");
                c["aud"] = json!("someone-else");
                sign(&c, "test-key-1")
            }),
        ),
        (
            "wrong issuer",
            Box::new(|app, nonce| {
                let mut c = claims(app, nonce, "U061F7AUR");
                c["iss"] = json!("https://evil.example.com");
                sign(&c, "test-key-1")
            }),
        ),
        (
            "expired",
            Box::new(|app, nonce| {
                let mut c = claims(app, nonce, "U061F7AUR");
                c["exp"] = json!(now() - 3600);
                sign(&c, "test-key-1")
            }),
        ),
        (
            "other nonce",
            Box::new(|app, _| sign(&claims(app, "not-the-nonce", "U061F7AUR"), "test-key-1")),
        ),
        (
            "unknown key",
            Box::new(|app, nonce| sign(&claims(app, nonce, "U061F7AUR"), "no-such-key")),
        ),
        (
            "alg none",
            Box::new(move |app, nonce| none_alg(&claims(app, nonce, "U061F7AUR"))),
        ),
        (
            "tampered",
            Box::new(|app, nonce| {
                let token = sign(&claims(app, nonce, "U0MALLORY"), "test-key-1");
                let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
                let honest = sign(&claims(app, nonce, "U061F7AUR"), "test-key-1");
                parts[1] = honest.split('.').nth(1).unwrap().to_owned();
                parts.join(".")
            }),
        ),
    ];
    for (i, (name, forge)) in cases.iter().enumerate() {
        app.clock.advance(61);
        let at = to_slack(&app, &format!("Ev{i}")).await;
        let response = back_from_slack(&app, &at, &forge(&app, &at.nonce)).await;
        assert_eq!(response.headers()["location"], "/link/result", "{name}");
        let page = app.result_page(&at.cookie).await;
        assert!(page.contains("Slack could not confirm who you are"), "{name}: {page}");
    }
    assert!(app.databricks.token_requests().is_empty());
    assert!(app.store.list_links(None).await.unwrap().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn the_slack_callback_is_bound_to_the_browser_and_used_once() {
    let app = spawn().await;
    let at = to_slack(&app, "Ev1").await;
    let stranger = browser()
        .get(app.url(&format!("/oauth/slack/callback?code=c&state={}", at.state)))
        .send()
        .await
        .unwrap();
    assert_eq!(stranger.status(), 400, "no cookie, no progress");
    // The rightful browser's attempt was burned with it.
    let response = back_from_slack(&app, &at, &sign(&claims(&app, &at.nonce, "U061F7AUR"), "test-key-1")).await;
    assert_eq!(response.headers()["location"], "/link/result", "never on to Databricks");
    assert!(app.result_page(&at.cookie).await.contains("different browser"));
    assert!(app.databricks.token_requests().is_empty());
    assert!(app.store.list_links(None).await.unwrap().is_empty());
    app.stop().await;
}

/// How many code exchanges Slack's OpenID token endpoint received.
async fn slack_code_exchanges(app: &TestApp) -> usize {
    app.slack
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/api/openid.connect.token")
        .count()
}

// OA-05: the bot talks to two authorization servers, Slack and Databricks, each with its
// own redirect URI and its own state. What one issuer sent back is refused at the other's
// callback, before any code exchange, and the flow then finishes at the right ones.
#[tokio::test]
async fn each_issuers_answer_is_accepted_only_at_its_own_callback() {
    let app = spawn().await;
    let at = to_slack(&app, "Ev1").await;
    let slack_state_at_databricks = browser()
        .get(app.url(&format!(
            "/oauth/databricks/callback?code=slack-code&state={}",
            at.state
        )))
        .header("cookie", &at.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(slack_state_at_databricks.status(), 400);
    assert!(app.databricks.token_requests().is_empty());

    let response = back_from_slack(&app, &at, &sign(&claims(&app, &at.nonce, "U061F7AUR"), "test-key-1")).await;
    let databricks_authorize = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        databricks_authorize.starts_with(&app.databricks.uri),
        "{databricks_authorize}"
    );
    assert_eq!(slack_code_exchanges(&app).await, 1);

    let back = app.databricks.authorize(&databricks_authorize, &FakeUser::asker());
    let databricks_answer_at_slack = browser()
        .get(app.url(&format!("/oauth/slack/callback?{}", back.query().unwrap())))
        .header("cookie", &at.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(databricks_answer_at_slack.status(), 400);
    assert_eq!(slack_code_exchanges(&app).await, 1, "no second exchange at Slack");
    assert!(app.databricks.token_requests().is_empty());

    let done = browser()
        .get(app.url(&format!("{}?{}", back.path(), back.query().unwrap())))
        .header("cookie", &at.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 303);
    assert!(app.result_page(&at.cookie).await.contains("You’re connected"));
    assert_eq!(app.databricks.token_requests().len(), 1);
    app.stop().await;
}

// REL-03: the process that handled Sign in with Slack stops; the one that receives the
// Databricks callback (after a restart, or another replica on Postgres) finishes the
// flow from what the database holds, and answers the kept question.
#[tokio::test]
async fn a_restart_between_slack_and_databricks_does_not_lose_the_flow() {
    for db in TestDb::all().await {
        let slack = fake_slack_with_oidc().await;
        let databricks = Arc::new(FakeDatabricks::start().await);
        let options = || Options {
            db: Some(db.url.clone()),
            slack: Some(slack.clone()),
            databricks: Some(databricks.clone()),
            extra_env: vec![
                ("SLACK_CLIENT_ID", CLIENT_ID.into()),
                ("SLACK_CLIENT_SECRET", "slack-client-secret".into()),
                ("SLACK_OIDC_ISSUER", slack.uri()),
            ],
            ..Default::default()
        };
        let first = TestApp::spawn_with(options()).await;
        let at = to_slack(&first, "Ev1").await;
        let response = back_from_slack(
            &first,
            &at,
            &sign(&claims(&first, &at.nonce, "U061F7AUR"), "test-key-1"),
        )
        .await;
        assert_eq!(response.status(), 303, "{}", db.name);
        let databricks_authorize = response.headers()["location"].to_str().unwrap().to_owned();
        first.stop().await;

        let second = TestApp::spawn_with(options()).await;
        let back = databricks.authorize(&databricks_authorize, &FakeUser::asker());
        let done = browser()
            .get(second.url(&format!("{}?{}", back.path(), back.query().unwrap())))
            .header("cookie", &at.cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(done.status(), 303, "{}", db.name);
        let page = second.result_page(&at.cookie).await;
        assert!(page.contains("You’re connected"), "{}: {page}", db.name);
        assert_eq!(second.store.list_links(None).await.unwrap().len(), 1);
        second.wait_for_answer("answer: who am I?").await;
        assert_eq!(second.settled_job_states().await, ["done"], "{}", db.name);
        second.stop().await;
    }
}
