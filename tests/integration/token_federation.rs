//! `DATABRICKS_AUTH=token-federation` against real protocol peers: oidc-provider (npm,
//! OpenID certified) is the company's IdP, and the fake workspace's `/oidc/v1/token`
//! verifies each subject token against the IdP's JWKS (signature, `iss`, `aud`, `exp`)
//! under an account federation policy before issuing a Databricks token.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::common::app::{Options, TestApp, mention, rows};
use crate::common::fake_databricks::{FakeDatabricks, FederationPolicy, Scripted};
use crate::common::logs::Captured;
use crate::common::oidc_provider::{self, Server, browser_with_cookies, sign_in};
use databricks_slack_bot::crypto::{Binding, Purpose};
use databricks_slack_bot::databricks::authority::jwt_claims;
use databricks_slack_bot::store::links::LinkStatus;
use secrecy::ExposeSecret;
use serde_json::json;

const CLIENT: &str = "conformance-client";

/// oidc-provider as the IdP, or `None` (after saying so) without Node.js.
fn start_idp() -> Option<Server> {
    if !oidc_provider::node_available("the token-federation tests") {
        return None;
    }
    oidc_provider::assert_installed(&["oidc-provider"]);
    Some(oidc_provider::start(
        "https://bot.example.com/oauth/databricks/callback",
    ))
}

fn issuer(idp: &Server) -> String {
    format!("{}/oidc", idp.uri)
}

/// The account federation policy an admin creates for the IdP: the bot's client id as
/// audience, `sub` (the person's user name) as subject claim.
fn policy(idp: &Server, audience: &str) -> FederationPolicy {
    FederationPolicy {
        issuer: issuer(idp),
        audiences: vec![audience.to_owned()],
        subject_claim: "sub".into(),
        jwks_uri: format!("{}/jwks.json", issuer(idp)),
    }
}

async fn federated_app(idp: &Server) -> TestApp {
    let databricks = Arc::new(FakeDatabricks::start().await);
    databricks.federate(policy(idp, CLIENT));
    TestApp::spawn_with(Options {
        databricks: Some(databricks),
        extra_env: vec![
            ("DATABRICKS_AUTH", "token-federation".into()),
            ("DATABRICKS_CLIENT_ID", String::new()),
            ("IDP_ISSUER", issuer(idp)),
            ("IDP_CLIENT_ID", CLIENT.into()),
            ("IDP_CLIENT_SECRET", "conformance-secret".into()),
        ],
        ..Default::default()
    })
    .await
}

/// From the prompt to "You're connected": the person signs in at the IdP as `login`.
async fn link_through_the_idp(app: &TestApp, idp: &Server, login: &str) -> String {
    let id = app.ask_for_link("Ev1", "the first question").await;
    let claim = app.claim_link(&id).await.expect("claimed");
    assert!(
        claim.location.starts_with(&format!("{}/v1/authorize", issuer(idp))),
        "{}",
        claim.location
    );
    let back = sign_in(&browser_with_cookies(), &idp.uri, &claim.location, login).await;
    assert_eq!(app.come_back(&back, Some(&claim.cookie)).await.status(), 303);
    app.result_page(&claim.cookie).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_links_at_the_company_idp_and_is_answered_with_an_exchanged_token() {
    let Some(idp) = start_idp() else { return };
    let app = federated_app(&idp).await;
    let page = link_through_the_idp(&app, &idp, "asker@example.com").await;
    assert!(
        page.contains("You’re connected") && page.contains("asker@example.com"),
        "{page}"
    );

    // The kept question was answered with the workspace's token for the IdP's person.
    app.wait_for_answer("answer: the first question").await;
    let first = app.agent.tokens()[0].clone();
    assert_eq!(app.databricks.owner_of(&first).as_deref(), Some("asker@example.com"));

    // Exactly RFC 8693 as Databricks documents it, with the IdP's id_token as subject.
    let exchanges = app.databricks.exchanges();
    assert_eq!(exchanges.len(), 1);
    let fields: BTreeSet<&str> = exchanges[0].keys().map(String::as_str).collect();
    assert_eq!(
        fields,
        BTreeSet::from(["grant_type", "scope", "subject_token", "subject_token_type"])
    );
    assert_eq!(
        exchanges[0]["grant_type"],
        "urn:ietf:params:oauth:grant-type:token-exchange"
    );
    assert_eq!(
        exchanges[0]["subject_token_type"],
        "urn:ietf:params:oauth:token-type:jwt"
    );
    assert_eq!(exchanges[0]["scope"], "all-apis");
    let subject = jwt_claims(&exchanges[0]["subject_token"]).expect("a JWT");
    assert_eq!(subject.iss.as_deref(), Some(issuer(&idp).as_str()));
    assert_eq!(subject.aud, Some(vec![CLIENT.to_owned()]));

    // The audit names the person as the IdP does.
    let details: Vec<(String,)> = rows(&app.db_url, "SELECT detail FROM audit_events WHERE kind = 'link'").await;
    assert!(
        details[0]
            .0
            .contains("signed in at the identity provider as asker@example.com"),
        "{details:?}"
    );

    // An hour later: the IdP refresh token is used (and rotated), and exchanged again.
    let link = app.store.list_links(None).await.unwrap().remove(0);
    let vault = crate::common::vault(&[crate::common::KEY_A]);
    let binding = Binding::new(Purpose::RefreshToken, &link.team, &link.user, &link.workspace);
    let before = vault.open(binding, &link.sealed_refresh_token).unwrap();
    app.clock.advance(3600);
    app.post_event(&mention("Ev2", "<@U0LAN0Z89> the second question"))
        .await;
    app.wait_for_answer("answer: the second question").await;
    let second = app.agent.tokens().last().unwrap().clone();
    assert_ne!(second, first);
    assert_eq!(app.databricks.owner_of(&second).as_deref(), Some("asker@example.com"));
    assert_eq!(app.databricks.exchanges().len(), 2);
    let after = app.store.find_link(&link.team, &link.user).await.unwrap().unwrap();
    assert_eq!(after.status, LinkStatus::Active);
    let rotated = vault.open(binding, &after.sealed_refresh_token).unwrap();
    assert_ne!(rotated.expose_secret(), before.expose_secret(), "the IdP rotated it");
    app.stop().await;
}

// A subject token that expired on its way: the IdP token is refreshed once and the
// exchange sent again; the person notices nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_token_that_expired_in_flight_is_refreshed_and_exchanged_once_more() {
    let Some(idp) = start_idp() else { return };
    let app = federated_app(&idp).await;
    link_through_the_idp(&app, &idp, "asker@example.com").await;
    app.wait_for_answer("answer: the first question").await;

    app.databricks.script(Scripted::Status(
        400,
        json!({"error": "invalid_request", "error_description": "the subject token has expired"}),
    ));
    app.clock.advance(3600);
    app.post_event(&mention("Ev2", "<@U0LAN0Z89> the second question"))
        .await;
    app.wait_for_answer("answer: the second question").await;
    let exchanges = app.databricks.exchanges();
    assert_eq!(
        exchanges.len(),
        3,
        "one at link time, the refused one, the one after a fresh IdP token"
    );
    let link = app.store.list_links(None).await.unwrap().remove(0);
    assert_eq!(link.status, LinkStatus::Active);
    app.stop().await;
}

// A policy that no longer matches (an admin changed its audiences): an operator error.
// The link is kept, the person is told it is the bot's configuration, and the log names
// the mismatch with the token's issuer and audience — never the token.
#[tokio::test]
async fn a_federation_policy_that_does_not_match_is_an_operator_error_and_links_are_kept() {
    let Some(idp) = start_idp() else { return };
    let logs = Captured::default();
    let _guard = tracing::subscriber::set_default(logs.subscriber());
    let app = federated_app(&idp).await;
    link_through_the_idp(&app, &idp, "asker@example.com").await;
    app.wait_for_answer("answer: the first question").await;

    app.databricks.federate(policy(&idp, "another-client"));
    app.clock.advance(3600);
    app.post_event(&mention("Ev2", "<@U0LAN0Z89> the second question"))
        .await;
    let replies = app.wait_for_calls("chat.postEphemeral", 2).await;
    let told = replies.last().unwrap().to_string();
    assert!(told.contains("misconfigured"), "{told}");
    let link = app.store.list_links(None).await.unwrap().remove(0);
    assert_eq!(link.status, LinkStatus::Active, "links are kept");

    let logged = logs.text();
    assert!(logged.contains("no federation policy accepts"), "{logged}");
    assert!(logged.contains(&format!("issuer=\"{}\"", issuer(&idp))), "{logged}");
    assert!(logged.contains("audience=conformance-client"), "{logged}");
    let subject = &app.databricks.exchanges()[1]["subject_token"];
    assert!(!logged.contains(subject.as_str()), "the subject token is never logged");
    app.stop().await;
}
