//! LOG-01: with every log at TRACE, a whole linking round-trip and a refresh leave no
//! secret in the logs or the metrics — not the code, state, PKCE verifier, refresh or
//! access tokens, the client secret, the signing secret, the bot token or the token
//! encryption key (CRY-07: the key is never logged).
//!
//! A binary of its own: it installs the process-wide subscriber, which would otherwise
//! capture every other test's logs as well.

#[allow(dead_code)] // this binary uses a few of the shared helpers
#[path = "integration/common/mod.rs"]
mod common;

use common::KEY_A;
use common::app::{BOT_TOKEN, Options, SIGNING_SECRET, TestApp, browser, mention};
use common::fake_databricks::FakeUser;
use common::logs::Captured;
use tracing_subscriber::util::SubscriberInitExt;

const CLIENT_SECRET: &str = "CANARY-databricks-client-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_or_metrics_even_at_trace() {
    let logs = Captured::default();
    logs.subscriber().init();

    let app = TestApp::spawn_with(Options {
        extra_env: vec![("DATABRICKS_CLIENT_SECRET", CLIENT_SECRET.into())],
        ..Default::default()
    })
    .await;
    let browser = browser();

    // Ask, get the link, claim it, sign in at Databricks, come back.
    let id = app.ask_for_link("Ev1", "first question").await;
    let claim = app.claim_link(&id).await.expect("claimed");
    let (cookie, authorize) = (claim.cookie, claim.location);
    let back = app.databricks.authorize(&authorize, &FakeUser::asker());
    let path = format!("{}?{}", back.path(), back.query().unwrap());
    browser
        .get(app.url(&path))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    app.wait_for_answer("answer: ").await;

    // An hour later: a refresh, with rotation.
    app.clock.advance(3600);
    app.post_event(&mention("Ev2", "<@U0LAN0Z89> second question")).await;
    app.wait_for_answer("answer: second question").await;
    let metrics = app.get("/metrics").await.1;

    let mut secrets: Vec<String> = vec![
        CLIENT_SECRET.into(),
        SIGNING_SECRET.into(),
        BOT_TOKEN.into(),
        cookie.split('=').nth(1).unwrap().to_owned(),
        KEY_A.split_once(':').unwrap().1.trim_end_matches('=').to_owned(),
    ];
    let q: std::collections::HashMap<String, String> = back.query_pairs().into_owned().collect();
    secrets.push(q["code"].clone());
    secrets.push(q["state"].clone());
    for request in app.databricks.token_requests() {
        for field in ["code_verifier", "refresh_token", "code"] {
            if let Some(value) = request.get(field) {
                secrets.push(value.clone());
            }
        }
    }
    let agent_tokens = app.agent.tokens();
    secrets.extend(agent_tokens);
    assert!(secrets.len() >= 10, "{secrets:?}");
    app.stop().await;
    let logs = logs.text();
    assert!(
        logs.contains("TRACE") && logs.contains("access token refreshed"),
        "logging ran at trace"
    );
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "a secret reached the logs: {secret}");
        assert!(
            !metrics.contains(secret.as_str()),
            "a secret reached the metrics: {secret}"
        );
    }
}
