//! LOG-01: with every log at TRACE, a whole linking round-trip and a refresh leave no
//! secret in the logs or the metrics — not the link id, code, state, PKCE verifier,
//! refresh or access tokens, the client secret, the signing secret, the bot token or the
//! token encryption key (CRY-07: the key is never logged). Nor do Sign in with Slack (its
//! client secret, code, state, nonce and id_token) and every way linking fails: consent
//! denied, an identity mismatch, a made-up state, the token endpoint refusing the client.
//!
//! A binary of its own: it installs the process-wide subscriber, which would otherwise
//! capture every other test's logs as well.

#[allow(dead_code)] // this binary uses a few of the shared helpers
#[path = "integration/common/mod.rs"]
mod common;

use std::sync::OnceLock;

use common::KEY_A;
use common::app::{BOT_TOKEN, Options, SIGNING_SECRET, TestApp, browser, mention};
use common::fake_databricks::{FakeUser, Scripted};
use common::logs::Captured;
use common::recorded::recorded;
use common::slack_oidc::{back_from_slack_with, claims, sign, spawn_with_sign_in, to_slack};
use tracing_subscriber::util::SubscriberInitExt;

const CLIENT_SECRET: &str = "CANARY-databricks-client-secret";
const SLACK_CLIENT_SECRET: &str = "CANARY-slack-client-secret";

/// Every log line of this binary, at TRACE: the subscriber is process-wide.
fn logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        logs.subscriber().init();
        logs
    })
}

/// Asserts that none of `secrets` is in the logs or in `metrics`.
fn assert_nowhere(secrets: &[String], metrics: &str) {
    let logs = logs().text();
    for secret in secrets {
        assert!(!secret.is_empty());
        assert!(!logs.contains(secret.as_str()), "a secret reached the logs: {secret}");
        assert!(
            !metrics.contains(secret.as_str()),
            "a secret reached the metrics: {secret}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_or_metrics_even_at_trace() {
    let logs = logs();

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
        id.clone(),
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
    let text = logs.text();
    assert!(
        text.contains("TRACE") && text.contains("access token refreshed"),
        "logging ran at trace"
    );
    assert_nowhere(&secrets, &metrics);
}

// Sign in with Slack, and linking's error paths: each leaves its secrets out of the logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_of_sign_in_with_slack_or_a_failed_link_reaches_the_logs() {
    let logs = logs();
    let app = spawn_with_sign_in(
        SLACK_CLIENT_SECRET,
        vec![("DATABRICKS_CLIENT_SECRET", CLIENT_SECRET.into())],
    )
    .await;
    let mut secrets: Vec<String> = vec![SLACK_CLIENT_SECRET.into(), CLIENT_SECRET.into()];
    let cookie_value = |cookie: &str| cookie.split('=').nth(1).unwrap().to_owned();

    // Another Slack user opens the link: refused at Slack (an identity mismatch).
    let at = to_slack(&app, "Ev1").await;
    let id_token = sign(&claims(&app, &at.nonce, "U0MALLORY"), "test-key-1");
    back_from_slack_with(&app, &at, "CANARY-slack-code-1", &id_token).await;
    secrets.extend([
        cookie_value(&at.cookie),
        at.state,
        at.nonce,
        id_token,
        "CANARY-slack-code-1".into(),
    ]);

    // The right Slack user, then consent denied at Databricks.
    app.clock.advance(61);
    let at = to_slack(&app, "Ev2").await;
    let id_token = sign(&claims(&app, &at.nonce, "U061F7AUR"), "test-key-1");
    let on = back_from_slack_with(&app, &at, "CANARY-slack-code-2", &id_token).await;
    let authorize = url::Url::parse(on.headers()["location"].to_str().unwrap()).unwrap();
    let state = authorize
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    browser()
        .get(app.url(&format!("/oauth/databricks/callback?error=access_denied&state={state}")))
        .header("cookie", &at.cookie)
        .send()
        .await
        .unwrap();
    secrets.extend([
        cookie_value(&at.cookie),
        at.state,
        at.nonce,
        id_token,
        state,
        "CANARY-slack-code-2".into(),
    ]);

    // The right Slack user, then another Databricks account (an identity mismatch), then a
    // token endpoint refusing the client.
    for (event, script) in [("Ev3", None), ("Ev4", Some(recorded("token-endpoint-invalid-client")))] {
        app.clock.advance(61);
        let at = to_slack(&app, event).await;
        let id_token = sign(&claims(&app, &at.nonce, "U061F7AUR"), "test-key-1");
        let on = back_from_slack_with(&app, &at, "CANARY-slack-code-3", &id_token).await;
        let location = on.headers()["location"].to_str().unwrap().to_owned();
        let user = match &script {
            None => FakeUser::named("mallory@example.com", "Mallory"),
            Some(_) => FakeUser::asker(),
        };
        let back = app.databricks.authorize(&location, &user);
        if let Some(script) = script {
            app.databricks.script(Scripted::Recorded(script));
        }
        let path = format!("{}?{}", back.path(), back.query().unwrap());
        browser()
            .get(app.url(&path))
            .header("cookie", &at.cookie)
            .send()
            .await
            .unwrap();
        let q: std::collections::HashMap<String, String> = back.query_pairs().into_owned().collect();
        secrets.extend([
            cookie_value(&at.cookie),
            at.state,
            at.nonce,
            id_token,
            q["code"].clone(),
            q["state"].clone(),
        ]);
    }
    for request in app.databricks.token_requests() {
        for field in ["code_verifier", "code"] {
            if let Some(value) = request.get(field) {
                secrets.push(value.clone());
            }
        }
    }

    // A made-up state, and a link id guessed wrong.
    browser()
        .get(app.url("/oauth/databricks/callback?code=CANARY-code-guess&state=CANARY-state-guess"))
        .send()
        .await
        .unwrap();
    browser()
        .get(app.url("/link/CANARYlinkidguess00000"))
        .send()
        .await
        .unwrap();
    secrets.extend([
        "CANARY-code-guess".into(),
        "CANARY-state-guess".into(),
        "CANARYlinkidguess00000".into(),
    ]);

    let metrics = app.get("/metrics").await.1;
    app.stop().await;
    let text = logs.text();
    assert!(
        text.contains("Sign in with Slack: the browser belongs to someone else")
            && text.contains("identity mismatch while linking")
            && text.contains("a linking request was refused"),
        "the error paths ran: {text}"
    );
    assert!(secrets.len() >= 25, "{secrets:?}");
    assert_nowhere(&secrets, &metrics);
}

// The identity-provider modes (`entra-obo`, `token-federation`): their client secrets,
// codes, IdP access, refresh and id tokens, on-behalf-of assertions and exchanged tokens
// stay out of the logs too, through linking, a refresh and each mode's refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_of_the_identity_provider_modes_reaches_the_logs() {
    use common::fake_databricks::{FakeDatabricks, FederationPolicy};
    use common::fake_entra::{self, FakeEntra};
    use common::oidc_provider;
    use secrecy::ExposeSecret;
    use std::sync::Arc;

    let logs = logs();
    let mut secrets: Vec<String> = vec![fake_entra::CLIENT_SECRET.into()];
    let mut metrics = String::new();

    // entra-obo: link, answer, refresh, then MFA required on behalf of the person.
    let (app, entra) = FakeEntra::with_app(Vec::new()).await;
    let id = app.ask_for_link("Ev1", "first question").await;
    let claim = app.claim_link(&id).await.expect("claimed");
    let back = entra.authorize(&claim.location, &FakeUser::asker());
    app.come_back(&back, Some(&claim.cookie)).await;
    app.wait_for_answer("answer: first question").await;
    app.clock.advance(3600);
    app.post_event(&mention("Ev2", "<@U0LAN0Z89> second question")).await;
    app.wait_for_answer("answer: second question").await;
    entra.refuse_next(
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
        400,
        "interaction_required",
        50076,
        "you must use multi-factor authentication",
    );
    app.clock.advance(3600);
    app.post_event(&mention("Ev3", "<@U0LAN0Z89> third question")).await;
    app.wait_for_calls("chat.postEphemeral", 2).await;
    metrics.push_str(&app.get("/metrics").await.1);
    let q: std::collections::HashMap<String, String> = back.query_pairs().into_owned().collect();
    secrets.extend([id, q["code"].clone(), q["state"].clone()]);
    for request in entra.requests() {
        for field in ["code", "code_verifier", "refresh_token", "assertion", "client_secret"] {
            if let Some(value) = request.get(field) {
                secrets.push(value.clone());
            }
        }
    }
    secrets.extend(app.agent.tokens());
    app.stop().await;

    // token-federation, with oidc-provider as the IdP: link, answer, refresh, then a
    // policy that no longer matches.
    if oidc_provider::node_available("the token-federation canary") {
        oidc_provider::assert_installed(&["oidc-provider"]);
        let idp = oidc_provider::start("https://bot.example.com/oauth/databricks/callback");
        let issuer = format!("{}/oidc", idp.uri);
        let policy = |audience: &str| FederationPolicy {
            issuer: issuer.clone(),
            audiences: vec![audience.to_owned()],
            subject_claim: "sub".into(),
            jwks_uri: format!("{issuer}/jwks.json"),
        };
        let databricks = Arc::new(FakeDatabricks::start().await);
        databricks.federate(policy("conformance-client"));
        let app = TestApp::spawn_with(Options {
            databricks: Some(databricks.clone()),
            extra_env: vec![
                ("DATABRICKS_AUTH", "token-federation".into()),
                ("DATABRICKS_CLIENT_ID", String::new()),
                ("IDP_ISSUER", issuer.clone()),
                ("IDP_CLIENT_ID", "conformance-client".into()),
                ("IDP_CLIENT_SECRET", "conformance-secret".into()),
            ],
            ..Default::default()
        })
        .await;
        let id = app.ask_for_link("Ev1", "first question").await;
        let claim = app.claim_link(&id).await.expect("claimed");
        let back = oidc_provider::sign_in(
            &oidc_provider::browser_with_cookies(),
            &idp.uri,
            &claim.location,
            "asker@example.com",
        )
        .await;
        app.come_back(&back, Some(&claim.cookie)).await;
        app.wait_for_answer("answer: first question").await;
        app.clock.advance(3600);
        app.post_event(&mention("Ev2", "<@U0LAN0Z89> second question")).await;
        app.wait_for_answer("answer: second question").await;
        let link = app.store.list_links(None).await.unwrap().remove(0);
        let vault = common::vault(&[KEY_A]);
        let binding = databricks_slack_bot::crypto::Binding::new(
            databricks_slack_bot::crypto::Purpose::RefreshToken,
            &link.team,
            &link.user,
            &link.workspace,
        );
        secrets.push(
            vault
                .open(binding, &link.sealed_refresh_token)
                .unwrap()
                .expose_secret()
                .to_owned(),
        );
        databricks.federate(policy("another-client"));
        app.clock.advance(3600);
        app.post_event(&mention("Ev3", "<@U0LAN0Z89> third question")).await;
        app.wait_for_calls("chat.postEphemeral", 2).await;
        metrics.push_str(&app.get("/metrics").await.1);
        let q: std::collections::HashMap<String, String> = back.query_pairs().into_owned().collect();
        secrets.extend([id, q["code"].clone(), q["state"].clone(), "conformance-secret".into()]);
        for request in databricks.exchanges() {
            secrets.push(request["subject_token"].clone());
        }
        secrets.extend(app.agent.tokens());
        app.stop().await;
        assert!(
            logs.text().contains("no federation policy accepts"),
            "the policy refusal ran"
        );
    }

    assert!(
        logs.text().contains("the person must connect again"),
        "the MFA refusal ran"
    );
    assert!(secrets.len() >= 15, "{secrets:?}");
    assert_nowhere(&secrets, &metrics);
}
