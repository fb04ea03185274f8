//! Conformance against a real OAuth server: the OpenID-certified `oidc-provider` (npm),
//! started on loopback and configured like a Databricks workspace (see
//! `tests/conformance/oidc-provider-server.mjs`). The whole flow — link, code exchange with
//! PKCE, refresh with rotation — and a reused old refresh token being refused.
//!
//! `.ci/run` installs the server with `npm ci --prefix tests/conformance`. Without
//! Node.js the test says so loudly and skips; with Node.js but without the install it fails.

use crate::common::app::{Options, TestApp, browser, mention};
use crate::common::oidc_provider::{self, Server, browser_with_cookies, sign_in};
use databricks_slack_bot::crypto::{Binding, Purpose};
use databricks_slack_bot::store::links::LinkStatus;
use secrecy::ExposeSecret;

/// oidc-provider with the bot's callback as its client's redirect URI, or `None` (after
/// saying so) without Node.js.
fn start_server() -> Option<Server> {
    if !oidc_provider::node_available("the oidc-provider conformance test") {
        return None;
    }
    oidc_provider::assert_installed(&["oidc-provider"]);
    Some(oidc_provider::start(
        "https://bot.example.com/oauth/databricks/callback",
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_flow_works_against_oidc_provider_configured_like_databricks() {
    let Some(server) = start_server() else { return };
    let app = TestApp::spawn_with(Options {
        extra_env: vec![
            ("DATABRICKS_HOST", server.uri.clone()),
            ("DATABRICKS_CLIENT_ID", "conformance-client".into()),
            ("DATABRICKS_CLIENT_SECRET", "conformance-secret".into()),
        ],
        ..Default::default()
    })
    .await;

    // Ask, open the link, continue.
    let id = app.ask_for_link("Ev1", "the first question").await;
    let claim = app.claim_link(&id).await.expect("claimed");
    let (cookie, authorize) = (claim.cookie, claim.location);
    let bot = browser();
    assert!(
        authorize.starts_with(&format!("{}/oidc/v1/authorize", server.uri)),
        "{authorize}"
    );

    // Sign in at the real server, which enforces PKCE S256 and the exact redirect URI.
    let back = sign_in(&browser_with_cookies(), &server.uri, &authorize, "asker@example.com").await;
    let path = format!("{}?{}", back.path(), back.query().unwrap());
    let done = bot.get(app.url(&path)).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(done.status(), 303);
    let page = bot
        .get(app.url("/link/result"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("You’re connected") && page.contains("asker@example.com"),
        "{page}"
    );

    // The kept question was answered with the server's access token.
    app.wait_for_answer("answer: the first question").await;
    let first_token = app.agent.tokens()[0].clone();

    // An hour later: a refresh, which the server rotates.
    let (team, user) = {
        let link = app.store.list_links(None).await.unwrap().remove(0);
        (link.team, link.user)
    };
    let before = app.store.find_link(&team, &user).await.unwrap().unwrap();
    let vault = crate::common::vault(&[crate::common::KEY_A]);
    let binding = Binding::new(Purpose::RefreshToken, &before.team, &before.user, &before.workspace);
    let old_refresh_token = vault.open(binding, &before.sealed_refresh_token).unwrap();
    app.clock.advance(3600);
    app.post_event(&mention("Ev2", "<@U0LAN0Z89> the second question"))
        .await;
    app.wait_for_answer("answer: the second question").await;
    let tokens = app.agent.tokens();
    assert_ne!(tokens.last().unwrap(), &first_token, "a refreshed access token");
    let after = app.store.find_link(&team, &user).await.unwrap().unwrap();
    let new_refresh_token = vault.open(binding, &after.sealed_refresh_token).unwrap();
    assert_ne!(
        new_refresh_token.expose_secret(),
        old_refresh_token.expose_secret(),
        "rotated"
    );
    assert_eq!(after.status, LinkStatus::Active);

    // The rotated-away refresh token is refused by the server (the bot never sends it
    // again; see token_broker.rs for how it reads such a refusal).
    let reuse = reqwest::Client::new()
        .post(format!("{}/oidc/v1/token", server.uri))
        .basic_auth("conformance-client", Some("conformance-secret"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", old_refresh_token.expose_secret()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(reuse.status(), 400);
    let error: serde_json::Value = reuse.json().await.unwrap();
    assert_eq!(error["error"], "invalid_grant", "{error}");
    app.stop().await;
}
