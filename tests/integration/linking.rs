//! Linking in the browser, end to end: the prompt's link, the landing page, the claim,
//! Databricks' authorization (played by the test as the person), the callback, the
//! identity check — and every way it can go wrong.

use std::time::Duration;

use crate::common::app::{TestApp, browser, from_own_page, mention, rows};
use crate::common::fake_databricks::{FakeUser, Scripted};
use crate::common::logs::Captured;
use crate::common::recorded::recorded;
use crate::common::{KEY_A, PATIENCE, TestDb, eventually};
use databricks_slack_bot::clock::Clock;
use databricks_slack_bot::crypto::{Binding, Purpose};
use databricks_slack_bot::domain::{TeamId, UserId};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

const ASKER_TEAM: &str = "T061EG9R6";
const ASKER: &str = "U061F7AUR";

async fn links_count(app: &TestApp) -> usize {
    app.store.list_links(None).await.unwrap().len()
}

// The "done when": from the private prompt to "Linked as …", then the kept
// question reaches the agent with a valid access token, and only ciphertext is stored.
#[tokio::test]
async fn a_person_goes_from_the_prompt_to_linked_and_their_question_is_answered() {
    for db in TestDb::all().await {
        let app = TestApp::spawn_with(crate::common::app::Options {
            db: Some(db.url.clone()),
            ..Default::default()
        })
        .await;
        let id = app.ask_for_link("Ev1", "how many orders last week?").await;

        // The landing page names who is being linked to what, and changes nothing.
        for _ in 0..3 {
            let page = browser().get(app.url(&format!("/link/{id}"))).send().await.unwrap();
            assert_eq!(page.status(), 200);
            assert_eq!(page.headers()["cache-control"], "no-store");
            let html = page.text().await.unwrap();
            assert!(html.contains("@alice") && html.contains("Acme"), "{html}");
            assert!(html.contains(&app.databricks.uri), "{html}");
            assert!(html.contains("<form method=\"post\">"), "{html}");
        }
        assert_eq!(
            app.slack_calls("auth.test").await.len(),
            1,
            "the workspace name is asked for once"
        );

        let claimed = app
            .claim_link(&id)
            .await
            .unwrap_or_else(|r| panic!("claim refused: {}", r.status()));
        assert!(
            claimed.cookie.starts_with("__Host-databricks-link="),
            "{}",
            claimed.cookie
        );
        let authorize = url::Url::parse(&claimed.location).unwrap();
        let q: std::collections::HashMap<String, String> = authorize.query_pairs().into_owned().collect();
        assert_eq!(q["redirect_uri"], "https://bot.example.com/oauth/databricks/callback");
        assert_eq!(q["scope"], "all-apis offline_access openid email profile");
        assert_eq!(q["state"].len(), 43);

        let back = app.databricks.authorize(&claimed.location, &FakeUser::asker());
        let response = app.come_back(&back, Some(&claimed.cookie)).await;
        assert_eq!(response.status(), 303, "{}", db.name);
        assert_eq!(
            response.headers()["location"],
            "/link/result",
            "the code leaves the address bar"
        );
        assert_eq!(response.headers()["referrer-policy"], "no-referrer");
        let page = app.result_page(&claimed.cookie).await;
        assert!(
            page.contains("You’re connected") && page.contains("Alice Asker"),
            "{page}"
        );

        // Stored, sealed, and confirmed in Slack.
        let link = app
            .store
            .find_link(&TeamId::parse(ASKER_TEAM).unwrap(), &UserId::parse(ASKER).unwrap())
            .await
            .unwrap()
            .expect("linked");
        assert_eq!(link.databricks_user_name, "asker@example.com");
        assert_eq!(link.databricks_user_id, "id-asker@example.com");
        let vault = crate::common::vault(&[KEY_A]);
        let rt = vault
            .open(
                Binding::new(Purpose::RefreshToken, &link.team, &link.user, &link.workspace),
                &link.sealed_refresh_token,
            )
            .unwrap();
        assert!(rt.expose_secret().starts_with("rt-"));
        assert!(
            !link.sealed_refresh_token.windows(3).any(|w| w == b"rt-"),
            "only ciphertext"
        );
        let dms = app.wait_for_calls("chat.postMessage", 2).await;
        let confirmation = dms
            .iter()
            .find(|m| m.to_string().contains("Linked as"))
            .expect("a confirmation DM");
        assert!(confirmation.to_string().contains("Disconnect"));
        assert!(
            crate::common::app::audit_trail(&app.db_url)
                .await
                .into_iter()
                .map(|(kind, _)| kind)
                .collect::<Vec<_>>()
                .contains(&"link".to_owned())
        );

        // The kept question is answered where it was asked, with the person's token: the
        // placeholder posted in the thread is replaced by the answer.
        let answer = app.wait_for_answer("answer: how many orders last week?").await;
        let placeholder = dms
            .iter()
            .find(|m| m.to_string().contains("Thinking"))
            .expect("a placeholder");
        assert_eq!(placeholder["thread_ts"], "1515449522.000016");
        assert_eq!(answer["channel"], placeholder["channel"]);
        assert_eq!(app.agent.tokens().len(), 1);
        assert!(app.agent.tokens()[0].starts_with("at-"));
        assert_eq!(app.settled_job_states().await, ["done"]);

        // A second submission of the same callback repeats nothing (OA-10).
        let again = app.come_back(&back, Some(&claimed.cookie)).await;
        assert_eq!(again.status(), 303);
        let codes = app
            .databricks
            .token_requests()
            .iter()
            .filter(|r| r["grant_type"] == "authorization_code")
            .count();
        assert_eq!(codes, 1, "one code exchange");
        assert_eq!(links_count(&app).await, 1);
        app.stop().await;
    }
}

// LNK-04: twenty browsers press "Continue" at once; one proceeds.
#[tokio::test]
async fn twenty_concurrent_claims_of_one_link_let_exactly_one_proceed() {
    let app = TestApp::spawn().await;
    let id = app.ask_for_link("Ev1", "race?").await;
    let claims = futures_util::future::join_all((0..20).map(|_| app.claim_link(&id))).await;
    let winners = claims.iter().filter(|c| c.is_ok()).count();
    assert_eq!(winners, 1);
    for lost in claims.into_iter().filter_map(Result::err) {
        assert_eq!(lost.status(), 410);
        assert!(lost.text().await.unwrap().contains("already used"));
    }
    app.stop().await;
}

// LNK-05 and expiry.
#[tokio::test]
async fn an_expired_or_unknown_link_is_explained_and_cannot_be_claimed() {
    let app = TestApp::spawn().await;
    let id = app.ask_for_link("Ev1", "later?").await;
    app.clock.advance(601);
    let page = app.client.get(app.url(&format!("/link/{id}"))).send().await.unwrap();
    assert_eq!(page.status(), 410);
    assert!(page.text().await.unwrap().contains("expired"));
    assert_eq!(app.claim_link(&id).await.err().unwrap().status(), 410);

    let unknown = app
        .client
        .get(app.url("/link/AAAAAAAAAAAAAAAAAAAAAA"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert!(unknown.text().await.unwrap().contains("not valid"));
    app.stop().await;
}

// LNK-03: the callback replayed in another browser (no cookie, or someone else's).
#[tokio::test]
async fn a_callback_without_the_binding_cookie_is_refused_and_burns_the_state() {
    let app = TestApp::spawn().await;
    let id = app.ask_for_link("Ev1", "whose?").await;
    let claimed = app.claim_link(&id).await.expect("claimed");
    let back = app.databricks.authorize(&claimed.location, &FakeUser::asker());

    for cookie in [None, Some("__Host-databricks-link=forged")] {
        let response = app.come_back(&back, cookie).await;
        assert_eq!(response.status(), 400);
        assert!(response.text().await.unwrap().contains("this browser"));
    }
    assert!(app.databricks.token_requests().is_empty(), "no token request");
    // The rightful browser cannot finish with a burned state either.
    let late = app.come_back(&back, Some(&claimed.cookie)).await;
    assert_eq!(late.status(), 303);
    assert!(app.result_page(&claimed.cookie).await.contains("different browser"));
    assert!(app.databricks.token_requests().is_empty());
    assert_eq!(links_count(&app).await, 0);
    app.stop().await;
}

// OA-02: missing, wrong and reused state. LOG-02: each refusal is logged with its reason,
// and nothing of the request (the code) with it.
#[tokio::test]
async fn callbacks_with_missing_wrong_or_reused_state_get_400_and_no_token_request() {
    let logs = Captured::default();
    let _guard = tracing::subscriber::set_default(logs.subscriber());
    let app = TestApp::spawn().await;
    for path in [
        "/oauth/databricks/callback?code=abc",
        "/oauth/databricks/callback?code=abc&state=",
        "/oauth/databricks/callback?code=abc&state=made-up-state",
        "/oauth/databricks/callback",
    ] {
        let response = browser().get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 400, "{path}");
        let html = response.text().await.unwrap();
        assert!(html.contains("Nothing was linked"), "{path}: {html}");
    }
    assert!(app.databricks.token_requests().is_empty());
    let logged = logs.text();
    let refusals = logged.lines().filter(|l| l.contains("a linking request was refused"));
    assert_eq!(refusals.count(), 4, "{logged}");
    assert!(logged.contains("missing its state") && logged.contains("not valid any more"));
    assert!(!logged.contains("code=abc"), "{logged}");
    app.stop().await;
}

// OA-06
#[tokio::test]
async fn access_denied_at_databricks_gets_a_friendly_page_and_stores_nothing() {
    let app = TestApp::spawn().await;
    let id = app.ask_for_link("Ev1", "no thanks").await;
    let claimed = app.claim_link(&id).await.expect("claimed");
    let mut back = app.databricks.authorize(&claimed.location, &FakeUser::asker());
    let state = back.query_pairs().find(|(k, _)| k == "state").unwrap().1.into_owned();
    back.set_query(None);
    back.query_pairs_mut()
        .append_pair("error", "access_denied")
        .append_pair("error_description", "<script>alert(1)</script>")
        .append_pair("state", &state);
    let response = app.come_back(&back, Some(&claimed.cookie)).await;
    assert_eq!(response.status(), 303);
    let page = app.result_page(&claimed.cookie).await;
    assert!(page.contains("You cancelled"), "{page}");
    assert!(!page.contains("<script>"));
    assert!(app.databricks.token_requests().is_empty());
    assert_eq!(links_count(&app).await, 0);
    app.stop().await;
}

// LNK-01/LNK-08: the link forwarded to someone else, who signs in as themselves. LOG-02:
// the refusal is recorded as an `identity_mismatch` audit event.
#[tokio::test]
async fn a_forwarded_link_completed_by_another_databricks_user_stores_nothing_and_tells_both() {
    let app = TestApp::spawn().await;
    let id = app.ask_for_link("Ev1", "forwarded?").await;
    let claimed = app.claim_link(&id).await.expect("claimed");
    let mallory = FakeUser::named("mallory@example.com", "Mallory");
    let back = app.databricks.authorize(&claimed.location, &mallory);
    assert_eq!(app.come_back(&back, Some(&claimed.cookie)).await.status(), 303);

    let page = app.result_page(&claimed.cookie).await;
    assert!(
        page.contains("does not match your Slack account") && page.contains("mallory@example.com"),
        "{page}"
    );
    assert_eq!(links_count(&app).await, 0, "nothing stored");
    let warned = app.wait_for_calls("chat.postMessage", 1).await;
    assert!(
        warned[0].to_string().contains("does not match"),
        "the link's owner is told: {warned:?}"
    );
    assert_eq!(
        crate::common::app::audit_trail(&app.db_url)
            .await
            .into_iter()
            .map(|(kind, _)| kind)
            .collect::<Vec<_>>(),
        ["identity_mismatch"]
    );
    assert_eq!(
        app.settled_job_states().await,
        ["waiting"],
        "the question still waits for the real person"
    );
    app.stop().await;
}

// TOK-06 (issue 11): the access token the exchange issued is refused at once (a real workspace's
// numeric 403 on SCIM Me): it is renewed once with the new refresh token, the identity is
// read, and the link keeps the refresh token the renewal rotated to.
#[tokio::test]
async fn a_new_access_token_refused_at_scim_me_is_renewed_once_and_the_rotated_grant_kept() {
    let app = TestApp::spawn().await;
    app.databricks.state.lock().unwrap().refuse_exchanged_access_token = true;
    let id = app.ask_for_link("Ev1", "how many orders?").await;
    let claimed = app.claim_link(&id).await.expect("claimed");
    let back = app.databricks.authorize(&claimed.location, &FakeUser::asker());
    assert_eq!(app.come_back(&back, Some(&claimed.cookie)).await.status(), 303);
    let page = app.result_page(&claimed.cookie).await;
    assert!(
        page.contains("Linked as <span class=\"who\">Alice Asker</span>"),
        "{page}"
    );
    assert_eq!(linked_as(&app).await, "asker@example.com");
    let grants: Vec<String> = app
        .databricks
        .token_requests()
        .iter()
        .map(|r| r["grant_type"].clone())
        .collect();
    assert_eq!(grants, ["authorization_code", "refresh_token"], "one renewal");
    // The kept refresh token is the rotated one: the kept question is answered with it.
    app.wait_for_answer("answer: how many orders?").await;
    app.stop().await;
}

// OA-07: the token endpoint fails in each way; nothing is stored.
#[tokio::test]
async fn token_endpoint_errors_timeouts_and_redirects_store_nothing() {
    let app = TestApp::spawn().await;
    let scripts = [
        Scripted::Recorded(recorded("token-endpoint-temporarily-unavailable-503")),
        Scripted::Recorded(recorded("token-endpoint-html-error")),
        Scripted::Recorded(recorded("token-endpoint-invalid-grant")),
        Scripted::Redirect("http://169.254.169.254/latest/meta-data".into()),
        Scripted::Delay(Duration::from_secs(20)),
    ];
    for (i, script) in scripts.into_iter().enumerate() {
        app.clock.advance(61);
        let id = app.ask_for_link(&format!("Ev{i}"), "fails?").await;
        let claimed = app.claim_link(&id).await.expect("claimed");
        let back = app.databricks.authorize(&claimed.location, &FakeUser::asker());
        app.databricks.script(script);
        assert_eq!(app.come_back(&back, Some(&claimed.cookie)).await.status(), 303);
        let page = app.result_page(&claimed.cookie).await;
        assert!(
            page.contains("Nothing was linked") && page.contains("did not accept"),
            "case {i}: {page}"
        );
        assert_eq!(links_count(&app).await, 0, "case {i}");
    }
    app.stop().await;
}

// Re-linking replaces the old link only once the new identity is verified.
#[tokio::test]
async fn relinking_replaces_the_old_link_only_after_verification() {
    let app = TestApp::spawn().await;
    app.link_asker().await;
    let before = app
        .store
        .find_link(&TeamId::parse(ASKER_TEAM).unwrap(), &UserId::parse(ASKER).unwrap())
        .await
        .unwrap()
        .unwrap();
    // The grant died; a relink attempt by the wrong person leaves the old link as it was.
    app.store
        .mark_needs_relink(&before.team, &before.user, before.version, "test", app.clock.now())
        .await
        .unwrap();
    let id = app.ask_for_link("Ev1", "again?").await;
    let claimed = app.claim_link(&id).await.expect("claimed");
    let back = app
        .databricks
        .authorize(&claimed.location, &FakeUser::named("someone@example.com", "Someone"));
    app.come_back(&back, Some(&claimed.cookie)).await;
    let after_failure = app.store.find_link(&before.team, &before.user).await.unwrap().unwrap();
    assert_eq!(after_failure.sealed_refresh_token, before.sealed_refresh_token);

    app.clock.advance(61);
    let id = app.ask_for_link("Ev2", "and now?").await;
    let claimed = app.claim_link(&id).await.expect("claimed");
    let back = app.databricks.authorize(&claimed.location, &FakeUser::asker());
    app.come_back(&back, Some(&claimed.cookie)).await;
    let relinked = app.store.find_link(&before.team, &before.user).await.unwrap().unwrap();
    assert_ne!(relinked.sealed_refresh_token, before.sealed_refresh_token);
    assert_eq!(relinked.databricks_user_name, "asker@example.com");
    assert!(relinked.version > before.version);
    // Both waiting questions are answered now.
    eventually("both waiting questions to be answered", PATIENCE, || async {
        app.job_states().await.iter().all(|s| s == "done").then_some(())
    })
    .await;
    assert_eq!(app.settled_job_states().await, ["done", "done"]);
    app.stop().await;
}

#[tokio::test]
async fn link_pages_forbid_framing_caching_and_referrers() {
    let app = TestApp::spawn().await;
    let id = app.ask_for_link("Ev1", "headers?").await;
    let page = app.client.get(app.url(&format!("/link/{id}"))).send().await.unwrap();
    let h = page.headers();
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert_eq!(h["x-frame-options"], "DENY");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    app.stop().await;
}

/// Asks a question as Slack user `user` and returns the link id in their prompt.
async fn ask_for_link_as(app: &TestApp, user: &str, event_id: &str, question: &str) -> String {
    let before = app.slack_calls("chat.postEphemeral").await.len();
    let mut event = mention(event_id, &format!("<@U0LAN0Z89> {question}"));
    event["event"]["user"] = json!(user);
    app.post_event(&event).await;
    let prompts = app.wait_for_calls("chat.postEphemeral", before + 1).await;
    let prompt = prompts.last().expect("a prompt");
    assert_eq!(prompt["user"], user);
    let text = prompt.to_string();
    let start = text
        .find("https://bot.example.com/link/")
        .expect("a link in the prompt")
        + 29;
    text[start..start + 22].to_owned()
}

fn query_of(url: &str) -> std::collections::HashMap<String, String> {
    url::Url::parse(url).unwrap().query_pairs().into_owned().collect()
}

// OA-03: code injection. Mallory's code, from her own flow, is put into the asker's
// callback; PKCE ties it to Mallory's verifier, so Databricks refuses it.
#[tokio::test]
async fn a_code_from_someone_elses_flow_is_refused_by_pkce_and_nothing_is_stored() {
    let app = TestApp::spawn().await;
    let mallorys_id = ask_for_link_as(&app, "U0MALLORY", "EvM", "mine").await;
    let mallorys = app.claim_link(&mallorys_id).await.expect("claimed");
    let mallorys_code = app
        .databricks
        .authorize(&mallorys.location, &FakeUser::named("mallory@example.com", "Mallory"))
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();

    let id = app.ask_for_link("Ev1", "injected?").await;
    let claimed = app.claim_link(&id).await.expect("claimed");
    let mut back = app.databricks.authorize(&claimed.location, &FakeUser::asker());
    let state = query_of(back.as_str())["state"].clone();
    back.set_query(None);
    back.query_pairs_mut()
        .append_pair("code", &mallorys_code)
        .append_pair("state", &state);
    assert_eq!(app.come_back(&back, Some(&claimed.cookie)).await.status(), 303);

    // The bot sent Mallory's code with the asker's own verifier, which Databricks refused.
    let exchanges: Vec<_> = app
        .databricks
        .token_requests()
        .into_iter()
        .filter(|r| r["grant_type"] == "authorization_code")
        .collect();
    assert_eq!(exchanges.len(), 1);
    assert_eq!(exchanges[0]["code"], mallorys_code);
    let challenge_of = |verifier: &str| {
        use base64::Engine;
        use sha2::Digest;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
    };
    let sent = challenge_of(&exchanges[0]["code_verifier"]);
    assert_eq!(
        sent,
        query_of(&claimed.location)["code_challenge"],
        "the asker's verifier"
    );
    assert_ne!(sent, query_of(&mallorys.location)["code_challenge"]);

    let page = app.result_page(&claimed.cookie).await;
    assert!(
        page.contains("Nothing was linked")
            && page.contains("did not accept")
            && page.contains("Ask your question again"),
        "the person is told to try again: {page}"
    );
    assert_eq!(links_count(&app).await, 0, "nothing stored");
    assert_eq!(app.settled_job_states().await, ["waiting", "waiting"]);
    app.stop().await;
}

// OA-04: the token request repeats the authorization's exact redirect URI, and parameters
// added to the link or the callback (`return_to`, `next`, `redirect_uri`) send the browser
// nowhere else.
#[tokio::test]
async fn the_redirect_uri_is_the_same_in_both_requests_and_added_parameters_redirect_nowhere() {
    let app = TestApp::spawn().await;
    let id = app.ask_for_link("Ev1", "redirects?").await;
    let claim = from_own_page(browser().post(app.url(&format!(
        "/link/{id}?return_to=https://evil.example.com/&next=https://evil.example.com/"
    ))))
    .send()
    .await
    .unwrap();
    assert_eq!(claim.status(), 303);
    let authorize = claim.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        authorize.starts_with(&format!("{}/oidc/v1/authorize?", app.databricks.uri)),
        "{authorize}"
    );
    let cookie = claim.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();

    let mut back = app.databricks.authorize(&authorize, &FakeUser::asker());
    back.query_pairs_mut()
        .append_pair("return_to", "https://evil.example.com/")
        .append_pair("next", "//evil.example.com/")
        .append_pair("redirect_uri", "https://evil.example.com/cb");
    let response = app.come_back(&back, Some(&cookie)).await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/link/result");
    let page = app.result_page(&cookie).await;
    assert!(page.contains("You’re connected") && !page.contains("evil"), "{page}");

    let registered = "https://bot.example.com/oauth/databricks/callback";
    assert_eq!(query_of(&authorize)["redirect_uri"], registered);
    let exchange = app
        .databricks
        .token_requests()
        .into_iter()
        .find(|r| r["grant_type"] == "authorization_code")
        .expect("a code exchange");
    assert_eq!(
        exchange["redirect_uri"], registered,
        "the same redirect URI in both requests"
    );
    assert_eq!(links_count(&app).await, 1);
    app.stop().await;
}

// OA-08: the authorization asks for exactly the configured scopes, and refreshes ask for
// no other.
#[tokio::test]
async fn the_authorization_asks_for_exactly_the_configured_scopes() {
    let logs = Captured::default();
    let _guard = tracing::subscriber::set_default(logs.subscriber());
    let app = TestApp::spawn_with(crate::common::app::Options {
        extra_env: vec![("DATABRICKS_SCOPES", "sql offline_access".into())],
        ..Default::default()
    })
    .await;
    let id = app.ask_for_link("Ev1", "scopes?").await;
    let claimed = app.claim_link(&id).await.expect("claimed");
    assert_eq!(query_of(&claimed.location)["scope"], "sql offline_access");
    let back = app.databricks.authorize(&claimed.location, &FakeUser::asker());
    app.come_back(&back, Some(&claimed.cookie)).await;
    app.wait_for_answer("answer: scopes?").await;

    // An hour later the access token is refreshed, without asking for more.
    app.clock.advance(3600);
    app.post_event(&mention("Ev2", "<@U0LAN0Z89> later?")).await;
    app.wait_for_answer("answer: later?").await;
    let refreshes = app.databricks.refreshes();
    assert_eq!(refreshes.len(), 1);
    assert!(!refreshes[0].contains_key("scope"), "{:?}", refreshes[0]);
    // The fake grants `all-apis` all the same: the operator is told, at each grant.
    let logged = logs.text();
    let noted = logged
        .lines()
        .filter(|l| l.contains("granted scopes the bot did not ask for") && l.contains("extra=all-apis"));
    assert_eq!(noted.count(), 2, "{logged}");
    app.stop().await;
}

// LNK-06: guessed link ids and states are all answered alike, and change nothing.
#[tokio::test]
async fn guessed_link_ids_and_states_all_get_the_same_answer_and_change_nothing() {
    let app = TestApp::spawn().await;
    let id = app.ask_for_link("Ev1", "guess?").await;
    let mut near = id.clone();
    near.replace_range(0..1, if id.starts_with('A') { "B" } else { "A" });
    let guesses = [
        "AAAAAAAAAAAAAAAAAAAAAA".to_owned(),
        near,
        "x".to_owned(),
        "A".repeat(300),
        "..%2F..%2Fetc".to_owned(),
    ];
    let mut answers = std::collections::HashSet::new();
    for guess in &guesses {
        for post in [false, true] {
            let url = app.url(&format!("/link/{guess}"));
            let request = if post {
                from_own_page(browser().post(url))
            } else {
                browser().get(url)
            };
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 404, "{guess}");
            assert!(response.headers().get("set-cookie").is_none(), "{guess}");
            answers.insert(response.text().await.unwrap());
        }
    }
    assert_eq!(answers.len(), 1, "one answer for every guess: {answers:?}");

    let mut refusals = std::collections::HashSet::new();
    for state in ["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "x", &"A".repeat(300)] {
        let response = app
            .come_back(
                &url::Url::parse(&format!(
                    "https://bot.example.com/oauth/databricks/callback?code=c&state={state}"
                ))
                .unwrap(),
                Some("__Host-databricks-link=guessed"),
            )
            .await;
        assert_eq!(response.status(), 400, "{state}");
        refusals.insert(response.text().await.unwrap());
    }
    assert_eq!(refusals.len(), 1, "{refusals:?}");

    assert!(app.databricks.token_requests().is_empty());
    assert!(crate::common::app::audit_trail(&app.db_url).await.is_empty());
    let page = browser().get(app.url(&format!("/link/{id}"))).send().await.unwrap();
    assert_eq!(page.status(), 200, "the real link is still usable");
    app.stop().await;
}

/// Posts the confirmation page's answer from the browser holding `cookie`.
async fn confirm(app: &TestApp, cookie: Option<&str>, decision: &str) -> reqwest::Response {
    let mut request = from_own_page(browser().post(app.url("/link/confirm")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("decision={decision}"));
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    request.send().await.unwrap()
}

/// Another Databricks account of the asker's (same email, so the identity check passes).
fn second_account() -> FakeUser {
    FakeUser {
        id: "id-second".into(),
        user_name: "alice.admin@example.com".into(),
        display_name: "Alice (admin)".into(),
        emails: vec!["asker@example.com".into()],
    }
}

/// The asker, linked as `FakeUser::asker()` with a dead grant, signs in again as
/// `second_account()`; returns the browser's cookie, at the confirmation page.
async fn sign_in_as_another_account(app: &TestApp) -> String {
    app.link_asker().await;
    let (team, user) = (TeamId::parse(ASKER_TEAM).unwrap(), UserId::parse(ASKER).unwrap());
    let link = app.store.find_link(&team, &user).await.unwrap().unwrap();
    app.store
        .mark_needs_relink(&team, &user, link.version, "test", app.clock.now())
        .await
        .unwrap();
    let id = app.ask_for_link("Ev1", "how many orders?").await;
    let claimed = app.claim_link(&id).await.expect("claimed");
    let back = app.databricks.authorize(&claimed.location, &second_account());
    let response = app.come_back(&back, Some(&claimed.cookie)).await;
    assert_eq!(response.status(), 303);
    claimed.cookie
}

async fn linked_as(app: &TestApp) -> String {
    let (team, user) = (TeamId::parse(ASKER_TEAM).unwrap(), UserId::parse(ASKER).unwrap());
    app.store
        .find_link(&team, &user)
        .await
        .unwrap()
        .unwrap()
        .databricks_user_name
}

// LNK-09: signing in as a different Databricks account than the linked one is not a
// silent swap: the person is asked, and only on "Replace" is the new account stored
// (audited as replacing the old one) and the waiting question answered with it.
#[tokio::test]
async fn a_different_databricks_account_replaces_the_link_only_once_confirmed() {
    for db in TestDb::all().await {
        let app = TestApp::spawn_with(crate::common::app::Options {
            db: Some(db.url.clone()),
            ..Default::default()
        })
        .await;
        replace_after_confirming(&app).await;
        app.stop().await;
    }
}

async fn replace_after_confirming(app: &TestApp) {
    let cookie = sign_in_as_another_account(app).await;

    let page = app.result_page(&cookie).await;
    assert!(page.contains("Replace your Databricks connection?"), "{page}");
    assert!(
        page.contains("asker@example.com") && page.contains("Alice (admin)"),
        "{page}"
    );
    assert!(page.contains("action=\"/link/confirm\""), "{page}");
    assert_eq!(linked_as(app).await, "asker@example.com", "nothing replaced yet");
    assert_eq!(app.job_states().await, ["waiting"]);
    assert!(
        app.slack_calls("chat.postMessage").await.is_empty(),
        "no \"Linked as\" yet"
    );

    let response = confirm(app, Some(&cookie), "replace").await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/link/result");
    let page = app.result_page(&cookie).await;
    assert!(
        page.contains("You’re connected") && page.contains("Alice (admin)"),
        "{page}"
    );
    assert_eq!(linked_as(app).await, "alice.admin@example.com");
    let audited: Vec<(String, Option<String>)> = rows(
        &app.db_url,
        "SELECT kind, detail FROM audit_events WHERE kind = 'link' ORDER BY id",
    )
    .await;
    assert_eq!(
        audited.last().unwrap().1.as_deref(),
        Some("alice.admin@example.com replacing asker@example.com")
    );
    assert_eq!(
        app.settled_job_states().await,
        ["done"],
        "the waiting question is answered"
    );
    let token = app.agent.tokens().pop().expect("the agent was asked");
    assert_eq!(
        app.databricks.owner_of(&token).as_deref(),
        Some("alice.admin@example.com")
    );
}

// LNK-09: "Keep" changes nothing; the confirmation cannot be answered without the
// browser's cookie, with another cookie, with a made-up answer, twice, or late.
#[tokio::test]
async fn keeping_the_linked_account_changes_nothing_and_the_confirmation_is_bound_to_its_browser() {
    let app = TestApp::spawn().await;
    let cookie = sign_in_as_another_account(&app).await;

    for (cookie, decision) in [
        (None, "replace"),
        (Some("databricks-link=someone-elses-cookie"), "replace"),
        (Some(cookie.as_str()), "whatever"),
    ] {
        let response = confirm(&app, cookie, decision).await;
        assert_eq!(response.status(), 400, "{cookie:?} {decision}");
    }
    // A post without a decision, or not a form at all, gets the bot's page too.
    for (content_type, body) in [
        ("application/x-www-form-urlencoded", ""),
        ("application/json", "{\"decision\":\"replace\"}"),
    ] {
        let response = from_own_page(browser().post(app.url("/link/confirm")))
            .header("content-type", content_type)
            .header("cookie", cookie.as_str())
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{content_type}");
        let page = response.text().await.unwrap();
        assert!(page.contains("Choose Replace or Keep"), "{page}");
    }
    assert_eq!(linked_as(&app).await, "asker@example.com");

    assert_eq!(confirm(&app, Some(&cookie), "keep").await.status(), 303);
    let page = app.result_page(&cookie).await;
    assert!(
        page.contains("You kept your Databricks connection as asker@example.com"),
        "{page}"
    );
    assert_eq!(
        confirm(&app, Some(&cookie), "replace").await.status(),
        400,
        "answered already"
    );
    assert_eq!(linked_as(&app).await, "asker@example.com");
    assert_eq!(
        app.job_states().await,
        ["waiting"],
        "the question still waits for a working link"
    );

    // A confirmation left until its link expired replaces nothing either.
    app.clock.advance(61);
    let id = app.ask_for_link("Ev2", "and now?").await;
    let claimed = app.claim_link(&id).await.expect("claimed");
    let back = app.databricks.authorize(&claimed.location, &second_account());
    app.come_back(&back, Some(&claimed.cookie)).await;
    app.clock.advance(11 * 60);
    assert_eq!(confirm(&app, Some(&claimed.cookie), "replace").await.status(), 303);
    let page = app.result_page(&claimed.cookie).await;
    assert!(page.contains("The confirmation expired"), "{page}");
    assert_eq!(linked_as(&app).await, "asker@example.com");
    app.stop().await;
}

/// The hidden `form_token` of a page's form.
fn form_token_of(page: &str) -> String {
    let start = page.find("name=\"form_token\" value=\"").expect("a form token") + 25;
    page[start..start + 64].to_owned()
}

/// A form posted to `path` as a browser on some page posts it: with `headers`, `cookie`
/// and `body`.
async fn post_form(
    app: &TestApp,
    path: &str,
    headers: &[(&str, &str)],
    cookie: Option<&str>,
    body: &str,
) -> reqwest::Response {
    let mut request = browser()
        .post(app.url(path))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    request.send().await.unwrap()
}

// LNK-11 (issue 12): an attacker's page auto-submitting a claim of the attacker's own link
// in a victim's browser is refused with the bot's page, whatever the browser says of it,
// and the link is left as it was for its owner.
#[tokio::test]
async fn a_claim_posted_from_another_site_is_refused_and_the_link_stays_usable() {
    let app = TestApp::spawn().await;
    let id = app.ask_for_link("Ev1", "whose data?").await;

    for headers in [
        &[("sec-fetch-site", "cross-site"), ("origin", "https://evil.example")][..],
        &[
            ("sec-fetch-site", "same-site"),
            ("origin", "https://evil.bot.example.com"),
        ],
        &[("origin", "https://evil.example")],
        &[("origin", "null")],
        &[("origin", "http://bot.example.com")],
        // Neither header, and no token: nothing shows it came from the bot's page.
        &[],
    ] {
        let response = post_form(&app, &format!("/link/{id}"), headers, None, "").await;
        assert_eq!(response.status(), 403, "{headers:?}");
        assert!(response.headers().get("set-cookie").is_none(), "{headers:?}");
        let page = response.text().await.unwrap();
        assert!(page.contains("did not come from the bot’s own page"), "{page}");
    }

    assert!(app.databricks.token_requests().is_empty());
    let claimed = app.claim_link(&id).await.expect("the link is still its owner's to use");
    assert!(claimed.location.contains("/oidc/v1/authorize"), "{}", claimed.location);
    app.stop().await;
}

// LNK-11: a browser that says nothing of where a post came from (an old one, or a proxy
// stripped the headers) proves it with the landing page's form token, bound to a cookie
// the page set; a token without its cookie, or from another browser's page, is refused.
#[tokio::test]
async fn without_origin_headers_the_landing_pages_form_token_proves_the_claim() {
    let app = TestApp::spawn().await;
    let id = app.ask_for_link("Ev1", "old browser?").await;
    let landing = |_: ()| browser().get(app.url(&format!("/link/{id}"))).send();
    let mine = landing(()).await.unwrap();
    let cookie = mine.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert!(
        mine.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("SameSite=Strict")
    );
    let token = form_token_of(&mine.text().await.unwrap());
    let theirs = landing(()).await.unwrap().text().await.unwrap();

    let body = |token: &str| format!("form_token={token}");
    for (cookie, body) in [
        (None, body(&token)),
        (Some(cookie.as_str()), body(&form_token_of(&theirs))),
        (Some(cookie.as_str()), String::new()),
    ] {
        let response = post_form(&app, &format!("/link/{id}"), &[], cookie, &body).await;
        assert_eq!(response.status(), 403, "{cookie:?} {body}");
    }

    let response = post_form(&app, &format!("/link/{id}"), &[], Some(&cookie), &body(&token)).await;
    assert_eq!(response.status(), 303);
    app.stop().await;
}

// LNK-11 for the confirmation page: replacing a link is only ever the person's own choice
// on the bot's page, never a form another site posts with their cookie.
#[tokio::test]
async fn a_replacement_confirmed_from_another_site_is_refused() {
    let app = TestApp::spawn().await;
    let cookie = sign_in_as_another_account(&app).await;
    let page = app.result_page(&cookie).await;
    let token = form_token_of(&page);

    for (headers, body) in [
        (
            &[("sec-fetch-site", "cross-site"), ("origin", "https://evil.example")][..],
            "decision=replace".to_owned(),
        ),
        (&[][..], "decision=replace".to_owned()),
        (&[][..], format!("decision=replace&form_token={}", "0".repeat(64))),
    ] {
        let response = post_form(&app, "/link/confirm", headers, Some(&cookie), &body).await;
        assert_eq!(response.status(), 403, "{headers:?} {body}");
    }
    assert_eq!(linked_as(&app).await, "asker@example.com", "nothing replaced");

    // The page's own form, from a browser that sends no Origin: the token proves it.
    let body = format!("decision=replace&form_token={token}");
    let response = post_form(&app, "/link/confirm", &[], Some(&cookie), &body).await;
    assert_eq!(response.status(), 303);
    assert_eq!(linked_as(&app).await, "alice.admin@example.com");
    app.stop().await;
}

// Issue 12: the browser's request for the Databricks callback ends before the code exchange
// does (a closed tab, the request timeout). The exchange still finishes: the person is
// linked and their question answered; the result page meanwhile says it is still connecting
// and keeps the cookie, so a reload does not end the flow.
#[tokio::test]
async fn a_callback_cut_off_mid_exchange_still_links_and_answers() {
    let app = TestApp::spawn().await;
    let id = app.ask_for_link("Ev1", "how many orders?").await;
    let claimed = app.claim_link(&id).await.expect("claimed");
    let back = app.databricks.authorize(&claimed.location, &FakeUser::asker());
    app.databricks.script(Scripted::Delay(Duration::from_millis(1500)));

    let path = format!("{}?{}", back.path(), back.query().unwrap());
    let cut_off = browser()
        .get(app.url(&path))
        .header("cookie", claimed.cookie.as_str())
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(cut_off.is_err(), "the browser gave up first");

    let reloaded = browser()
        .get(app.url("/link/result"))
        .header("cookie", claimed.cookie.as_str())
        .send()
        .await
        .unwrap();
    assert!(
        reloaded.headers().get("set-cookie").is_none(),
        "the flow's cookie stays"
    );
    let page = reloaded.text().await.unwrap();
    assert!(page.contains("Still connecting"), "{page}");

    app.wait_for_answer("answer: how many orders?").await;
    assert_eq!(links_count(&app).await, 1);
    let page = app.result_page(&claimed.cookie).await;
    assert!(page.contains("You’re connected"), "{page}");
    app.stop().await;
}

// Issue 12: an exchange the bot was stopped in the middle of is not "still connecting" for
// ever: past its budget the result page ends it and says so.
#[tokio::test]
async fn an_exchange_cut_off_by_a_stop_is_told_as_failed_after_its_budget() {
    let app = TestApp::spawn().await;
    let id = app.ask_for_link("Ev1", "how many orders?").await;
    let claimed = app.claim_link(&id).await.expect("claimed");
    let pending = app
        .store
        .find_pending_link(&databricks_slack_bot::crypto::hash_secret(&id))
        .await
        .unwrap()
        .unwrap();
    // As a process that stopped right after taking the exchange leaves it.
    assert!(
        app.store
            .begin_exchange(&pending.id_hash, app.clock.now())
            .await
            .unwrap()
    );

    assert!(app.result_page(&claimed.cookie).await.contains("Still connecting"));
    app.clock.advance(121);
    let page = app.result_page(&claimed.cookie).await;
    assert!(
        page.contains("Nothing was linked") && page.contains("cut off before it finished"),
        "{page}"
    );
    assert_eq!(links_count(&app).await, 0);
    app.stop().await;
}

// Issue 12 (LNK-08): an email Slack does not report confirmed proves nothing (anyone can type
// any address into a profile on some workspaces): nothing is linked, even when it matches.
#[tokio::test]
async fn an_unconfirmed_slack_email_links_nothing_even_when_it_matches() {
    for confirmation in [json!(false), Value::Null] {
        let mut user = json!({"id": "U061F7AUR", "team_id": "T061EG9R6", "name": "alice",
                              "profile": {"real_name": "Alice Asker", "email": "asker@example.com"}});
        if !confirmation.is_null() {
            user["is_email_confirmed"] = confirmation.clone();
        }
        let app = TestApp::spawn_with(crate::common::app::Options {
            slack_mocks: vec![
                wiremock::Mock::given(wiremock::matchers::path("/api/users.info")).respond_with(
                    wiremock::ResponseTemplate::new(200).set_body_json(json!({"ok": true, "user": user})),
                ),
            ],
            ..Default::default()
        })
        .await;
        let id = app.ask_for_link("Ev1", "unconfirmed?").await;
        let claimed = app.claim_link(&id).await.expect("claimed");
        let back = app.databricks.authorize(&claimed.location, &FakeUser::asker());
        assert_eq!(app.come_back(&back, Some(&claimed.cookie)).await.status(), 303);

        let page = app.result_page(&claimed.cookie).await;
        assert!(
            page.contains("Nothing was linked") && page.contains("does not report a confirmed email"),
            "{confirmation}: {page}"
        );
        assert_eq!(links_count(&app).await, 0, "{confirmation}");
        app.stop().await;
    }
}
