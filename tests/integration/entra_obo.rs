//! `DATABRICKS_AUTH=entra-obo` against a fake Entra ID tenant (`common/fake_entra.rs`):
//! people sign in to Entra for the bot's API, and every Databricks token is Entra's
//! on-behalf-of exchange of a fresh token for that API, for Azure Databricks.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::common::app::{Options, TestApp, mention, rows};
use crate::common::fake_databricks::{FakeDatabricks, FakeUser};
use crate::common::fake_entra::{API_SCOPE, AZURE_DATABRICKS, CLIENT_ID, CLIENT_SECRET, FakeEntra};
use crate::common::logs::Captured;
use databricks_slack_bot::store::links::LinkStatus;

const OBO: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

async fn entra_app() -> (TestApp, FakeEntra) {
    FakeEntra::with_app(Vec::new()).await
}

/// The person opens the prompt's link and signs in at Entra; the result page's text.
async fn link_through_entra(app: &TestApp, entra: &FakeEntra, user: &FakeUser) -> String {
    let id = app.ask_for_link("Ev1", "the first question").await;
    let claim = app.claim_link(&id).await.expect("claimed");
    let back = entra.authorize(&claim.location, user);
    assert_eq!(app.come_back(&back, Some(&claim.cookie)).await.status(), 303);
    app.result_page(&claim.cookie).await
}

async fn second_question(app: &TestApp) {
    app.clock.advance(3600);
    app.post_event(&mention("Ev2", "<@U0LAN0Z89> the second question"))
        .await;
}

#[tokio::test]
async fn a_person_links_with_entra_id_and_is_answered_on_behalf_of_themselves() {
    let (app, entra) = entra_app().await;
    let page = link_through_entra(&app, &entra, &FakeUser::asker()).await;
    assert!(
        page.contains("You’re connected") && page.contains("Alice Asker"),
        "{page}"
    );
    app.wait_for_answer("answer: the first question").await;
    let first = app.agent.tokens()[0].clone();
    assert!(first.starts_with("adb-obo-"), "an on-behalf-of token: {first}");
    assert_eq!(app.databricks.owner_of(&first).as_deref(), Some("asker@example.com"));

    // The code exchange, then on-behalf-of with exactly Entra's documented fields, the
    // assertion being the API token the code exchange issued.
    let codes = entra.requests_of("authorization_code");
    assert_eq!(codes.len(), 1);
    let obo = entra.requests_of(OBO);
    assert_eq!(obo.len(), 1);
    let fields: BTreeSet<&str> = obo[0].keys().map(String::as_str).collect();
    assert_eq!(
        fields,
        BTreeSet::from([
            "assertion",
            "client_id",
            "client_secret",
            "grant_type",
            "requested_token_use",
            "scope"
        ])
    );
    assert_eq!(obo[0]["client_id"], CLIENT_ID);
    assert_eq!(obo[0]["client_secret"], CLIENT_SECRET);
    assert_eq!(obo[0]["requested_token_use"], "on_behalf_of");
    assert_eq!(obo[0]["scope"], format!("{AZURE_DATABRICKS}/.default"));
    assert!(obo[0]["assertion"].starts_with("entra-api-"), "{}", obo[0]["assertion"]);

    let details: Vec<(String,)> = rows(&app.db_url, "SELECT detail FROM audit_events WHERE kind = 'link'").await;
    assert!(
        details[0]
            .0
            .contains("signed in at the identity provider as asker@example.com"),
        "{details:?}"
    );

    // An hour later: the Entra refresh token (with the scopes Entra requires on refresh),
    // then a new on-behalf-of exchange of the new API token.
    second_question(&app).await;
    app.wait_for_answer("answer: the second question").await;
    let second = app.agent.tokens().last().unwrap().clone();
    assert_ne!(second, first);
    let refreshes = entra.requests_of("refresh_token");
    assert_eq!(refreshes.len(), 1);
    assert!(
        refreshes[0]["scope"].split(' ').any(|s| s == API_SCOPE),
        "{:?}",
        refreshes[0]
    );
    let obo = entra.requests_of(OBO);
    assert_eq!(obo.len(), 2);
    assert_ne!(obo[0]["assertion"], obo[1]["assertion"], "a fresh API token each time");
    app.stop().await;
}

// Entra asks for MFA (interaction_required, AADSTS50076) at the on-behalf-of step: the
// person gets one fresh link that says why, and the link waits for them.
#[tokio::test]
async fn mfa_required_on_behalf_of_asks_the_person_to_connect_again_and_says_why() {
    let (app, entra) = entra_app().await;
    link_through_entra(&app, &entra, &FakeUser::asker()).await;
    app.wait_for_answer("answer: the first question").await;

    entra.refuse_next(
        OBO,
        400,
        "interaction_required",
        50076,
        "Due to a configuration change made by your administrator, or because you moved to a new location, \
         you must use multi-factor authentication to access '2ff814a6-3304-4ab8-85cb-cd0e6f879c1d'.",
    );
    second_question(&app).await;
    let prompts = app.wait_for_calls("chat.postEphemeral", 2).await;
    let prompt = prompts.last().unwrap().to_string();
    assert!(prompt.contains("Connect Databricks again"), "{prompt}");
    assert!(prompt.contains("multi-factor authentication"), "{prompt}");
    assert!(prompt.contains("https://bot.example.com/link/"), "{prompt}");
    let link = app.store.list_links(None).await.unwrap().remove(0);
    assert_eq!(link.status, LinkStatus::NeedsRelink);
    assert_eq!(
        app.settled_job_states().await,
        ["done", "waiting"],
        "the question waits"
    );
    app.stop().await;
}

// The Entra refresh token was revoked (a password change): one relink prompt, however
// many questions follow.
#[tokio::test]
async fn a_revoked_entra_refresh_token_gets_one_relink_prompt() {
    let (app, entra) = entra_app().await;
    link_through_entra(&app, &entra, &FakeUser::asker()).await;
    app.wait_for_answer("answer: the first question").await;

    entra.refuse_next(
        "refresh_token",
        400,
        "invalid_grant",
        50173,
        "The provided grant has expired due to it being revoked, a fresh auth token is needed.",
    );
    second_question(&app).await;
    let prompts = app.wait_for_calls("chat.postEphemeral", 2).await;
    assert!(
        prompts.last().unwrap().to_string().contains("your password changed"),
        "{}",
        prompts.last().unwrap()
    );
    app.post_event(&mention("Ev3", "<@U0LAN0Z89> a third question")).await;
    let settled = app.settled_job_states().await;
    assert_eq!(settled, ["done", "waiting", "waiting"]);
    assert_eq!(
        app.slack_calls("chat.postEphemeral").await.len(),
        2,
        "one relink prompt"
    );
    assert_eq!(
        entra.requests_of("refresh_token").len(),
        1,
        "a dead grant is not tried again"
    );
    app.stop().await;
}

// A client secret that expired (AADSTS7000215) is the operator's: links are kept, the
// person is told it is the bot's configuration, the log says what to check, and the
// secret is in no log line.
#[tokio::test]
async fn a_refused_client_secret_is_an_operator_error_and_links_are_kept() {
    let logs = Captured::default();
    let _guard = tracing::subscriber::set_default(logs.subscriber());
    let (app, entra) = entra_app().await;
    link_through_entra(&app, &entra, &FakeUser::asker()).await;
    app.wait_for_answer("answer: the first question").await;

    entra.refuse_next(OBO, 401, "invalid_client", 7000215, "Invalid client secret provided.");
    second_question(&app).await;
    let replies = app.wait_for_calls("chat.postEphemeral", 2).await;
    assert!(replies.last().unwrap().to_string().contains("misconfigured"));
    let link = app.store.list_links(None).await.unwrap().remove(0);
    assert_eq!(link.status, LinkStatus::Active);
    let logged = logs.text();
    assert!(logged.contains("ENTRA_CLIENT_SECRET"), "the hint names what to check");
    for secret in [CLIENT_SECRET, "entra-api-", "entra-rt-", "adb-obo-", "entra-code-"] {
        assert!(!logged.contains(secret), "{secret} in the logs");
    }
    app.stop().await;
}

// The person refuses consent at Entra (AADSTS65004): a friendly page, nothing stored,
// no token request.
#[tokio::test]
async fn consent_refused_at_entra_gets_a_friendly_page_and_stores_nothing() {
    let (app, entra) = entra_app().await;
    let id = app.ask_for_link("Ev1", "no thanks").await;
    let claim = app.claim_link(&id).await.expect("claimed");
    let mut back = entra.authorize(&claim.location, &FakeUser::asker());
    let state = back.query_pairs().find(|(k, _)| k == "state").unwrap().1.into_owned();
    back.set_query(None);
    back.query_pairs_mut()
        .append_pair("error", "access_denied")
        .append_pair(
            "error_description",
            "AADSTS65004: User declined to consent to access the app.",
        )
        .append_pair("state", &state);
    assert_eq!(app.come_back(&back, Some(&claim.cookie)).await.status(), 303);
    let page = app.result_page(&claim.cookie).await;
    assert!(page.contains("You cancelled"), "{page}");
    assert!(entra.requests().is_empty());
    assert!(app.store.list_links(None).await.unwrap().is_empty());
    app.stop().await;
}

// A certificate instead of a secret: every token request (code, refresh, on-behalf-of)
// carries a fresh client assertion signed with it, and never a secret.
#[tokio::test]
async fn a_certificate_credential_signs_every_token_request() {
    // An empty value counts as unset: the secret gives way to the certificate.
    let (app, entra) = FakeEntra::with_app(vec![
        ("ENTRA_CLIENT_SECRET", String::new()),
        (
            "ENTRA_CLIENT_CERTIFICATE",
            crate::common::fake_entra::certificate_path(),
        ),
    ])
    .await;
    link_through_entra(&app, &entra, &FakeUser::asker()).await;
    app.wait_for_answer("answer: the first question").await;
    second_question(&app).await;
    app.wait_for_answer("answer: the second question").await;

    let requests = entra.requests();
    let grants: Vec<&str> = requests.iter().map(|r| r["grant_type"].as_str()).collect();
    assert_eq!(grants, ["authorization_code", OBO, "refresh_token", OBO]);
    let mut assertions = BTreeSet::new();
    for request in &requests {
        assert!(!request.contains_key("client_secret"), "{request:?}");
        assert_eq!(
            request["client_assertion_type"],
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        );
        assertions.insert(request["client_assertion"].clone());
    }
    assert_eq!(assertions.len(), 4, "a fresh assertion for each request");
    app.stop().await;
}

// Sign in with Slack in front of Entra ID: the person proves their Slack identity, then
// signs in at Entra, and is linked as in any mode.
#[tokio::test]
async fn sign_in_with_slack_works_in_front_of_entra_id() {
    use crate::common::slack_oidc::{back_from_slack_with, claims, sign, spawn_with_sign_in_and, to_slack};
    let databricks = Arc::new(FakeDatabricks::start().await);
    let entra = FakeEntra::start(databricks.clone()).await;
    let app = spawn_with_sign_in_and(
        "slack-client-secret",
        Options {
            databricks: Some(databricks),
            extra_env: entra.env(),
            ..Default::default()
        },
    )
    .await;
    let at = to_slack(&app, "Ev1").await;
    let id_token = sign(&claims(&app, &at.nonce, "U061F7AUR"), "test-key-1");
    let on = back_from_slack_with(&app, &at, "slack-code", &id_token).await;
    assert_eq!(on.status(), 303);
    let to_entra = on.headers()["location"].to_str().unwrap().to_owned();
    let back = entra.authorize(&to_entra, &FakeUser::asker());
    assert_eq!(app.come_back(&back, Some(&at.cookie)).await.status(), 303);
    app.wait_for_answer("answer: who am I?").await;
    let token = app.agent.tokens()[0].clone();
    assert_eq!(app.databricks.owner_of(&token).as_deref(), Some("asker@example.com"));
    app.stop().await;
}
