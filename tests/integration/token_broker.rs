//! The token broker against the fake Databricks token endpoint (single-use refresh
//! tokens): single flight across tasks and processes, rotation, dead grants, lost
//! answers, client errors — on SQLite and Postgres.

use std::sync::Arc;
use std::time::Duration;

use crate::common::app::{TestApp, audit_trail, mention, rows};
use crate::common::fake_databricks::{FakeDatabricks, FakeUser, Scripted};
use crate::common::logs::Captured;
use crate::common::recorded::recorded;
use crate::common::{KEY_A, PATIENCE, Person, TestDb, broker_with, eventually, vault};
use databricks_slack_bot::clock::{Clock, ManualClock};
use databricks_slack_bot::crypto::{Binding, Purpose};
use databricks_slack_bot::databricks::broker::{BrokerError, REFRESH_MARGIN_SECONDS, TokenBroker};
use databricks_slack_bot::metrics::Metrics;
use databricks_slack_bot::store::Store;
use databricks_slack_bot::store::links::LinkStatus;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::sync::Notify;

const NOW: i64 = 1_800_000_000;

/// A broker over its own store connection (as another process would have), on `db_url`.
async fn broker(db_url: &str, databricks: &FakeDatabricks, clock: Arc<ManualClock>) -> (TokenBroker, Store) {
    broker_with(db_url, databricks, clock, Arc::new(Metrics::new())).await
}

/// The asker, in the fake's workspace.
fn asker(databricks: &FakeDatabricks) -> Person {
    let mut p = Person::new("T061EG9R6", "U061F7AUR");
    p.workspace = databricks_slack_bot::domain::WorkspaceHost::parse(&databricks.uri).unwrap();
    p
}

/// Links the asker with a fresh grant.
async fn linked(store: &Store, databricks: &FakeDatabricks) -> (Person, String) {
    let p = asker(databricks);
    let rt = databricks.grant(&FakeUser::asker());
    p.link(store, &vault(&[KEY_A]), &rt, NOW).await;
    (p, rt)
}

// TOK-02: fifty questions at once with no valid access token → one refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_requests_share_one_refresh() {
    for db in TestDb::all().await {
        let databricks = FakeDatabricks::start().await;
        let clock = Arc::new(ManualClock::at(NOW));
        let (broker, store) = broker(&db.url, &databricks, clock).await;
        let (p, _) = linked(&store, &databricks).await;
        let broker = Arc::new(broker);
        let calls = (0..50).map(|_| {
            let (broker, team, user) = (broker.clone(), p.team.clone(), p.user.clone());
            tokio::spawn(async move { broker.user_context(&team, &user, None).await })
        });
        let contexts: Vec<_> = futures_util::future::join_all(calls).await;
        let tokens: std::collections::HashSet<String> = contexts
            .into_iter()
            .map(|c| c.unwrap().unwrap().access_token.expose_secret().to_owned())
            .collect();
        assert_eq!(tokens.len(), 1, "{}: everyone got the same token", db.name);
        assert_eq!(databricks.refreshes().len(), 1, "{}: one token-endpoint call", db.name);
        store.close().await;
    }
}

// TOK-03: two processes (two stores, two brokers) on one database refresh one person.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_refreshing_one_person_make_one_refresh_and_no_dead_grant() {
    for db in TestDb::all().await {
        let databricks = FakeDatabricks::start().await;
        let clock = Arc::new(ManualClock::at(NOW));
        let (a, store) = broker(&db.url, &databricks, clock.clone()).await;
        let (b, other_store) = broker(&db.url, &databricks, clock.clone()).await;
        let (p, _) = linked(&store, &databricks).await;
        let (a, b) = (Arc::new(a), Arc::new(b));
        let mut calls = Vec::new();
        for i in 0..20 {
            let broker = if i % 2 == 0 { a.clone() } else { b.clone() };
            let (team, user) = (p.team.clone(), p.user.clone());
            calls.push(tokio::spawn(
                async move { broker.user_context(&team, &user, None).await },
            ));
        }
        for call in futures_util::future::join_all(calls).await {
            call.unwrap().unwrap_or_else(|e| panic!("{}: {e}", db.name));
        }
        assert_eq!(databricks.refreshes().len(), 1, "{}", db.name);
        let link = store.find_link(&p.team, &p.user).await.unwrap().unwrap();
        assert_eq!(link.status, LinkStatus::Active);
        store.close().await;
        other_store.close().await;
    }
}

// Rotation: each refresh uses the newest refresh token; a rotated-away one is never sent.
#[tokio::test]
async fn a_rotated_away_refresh_token_is_never_sent_again() {
    let db = TestDb::sqlite();
    let databricks = FakeDatabricks::start().await;
    let clock = Arc::new(ManualClock::at(NOW));
    let (broker, store) = broker(&db.url, &databricks, clock.clone()).await;
    let (p, first_rt) = linked(&store, &databricks).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let ctx = broker.user_context(&p.team, &p.user, None).await.unwrap();
        seen.push(ctx.access_token.expose_secret().to_owned());
        // Still fresh: served from the stored token, no refresh.
        broker.user_context(&p.team, &p.user, None).await.unwrap();
        clock.advance(3600 - REFRESH_MARGIN_SECONDS + 1); // inside the margin: refresh next time
    }
    let sent: Vec<String> = databricks
        .refreshes()
        .iter()
        .map(|r| r["refresh_token"].clone())
        .collect();
    assert_eq!(sent.len(), 4, "one refresh per expiry");
    assert_eq!(sent[0], first_rt);
    let unique: std::collections::HashSet<_> = sent.iter().collect();
    assert_eq!(
        unique.len(),
        4,
        "every refresh used a different, current token: {sent:?}"
    );
    assert_eq!(seen.iter().collect::<std::collections::HashSet<_>>().len(), 4);
    store.close().await;
}

#[tokio::test]
async fn an_answer_without_a_refresh_token_keeps_the_old_one() {
    let db = TestDb::sqlite();
    let databricks = FakeDatabricks::start().await;
    {
        let mut s = databricks.state.lock().unwrap();
        s.rotate = false;
        s.omit_refresh_token = true;
    }
    let clock = Arc::new(ManualClock::at(NOW));
    let (broker, store) = broker(&db.url, &databricks, clock.clone()).await;
    let (p, rt) = linked(&store, &databricks).await;
    broker.user_context(&p.team, &p.user, None).await.unwrap();
    clock.advance(3600);
    broker.user_context(&p.team, &p.user, None).await.unwrap();
    let sent: Vec<String> = databricks
        .refreshes()
        .iter()
        .map(|r| r["refresh_token"].clone())
        .collect();
    assert_eq!(sent, [rt.clone(), rt]);
    store.close().await;
}

// TOK-04: a dead grant marks the link once; no retry loop.
#[tokio::test]
async fn a_dead_grant_marks_the_link_needs_relink_once_and_stops_refreshing() {
    for db in TestDb::all().await {
        let databricks = FakeDatabricks::start().await;
        let clock = Arc::new(ManualClock::at(NOW));
        let (broker, store) = broker(&db.url, &databricks, clock).await;
        let p = asker(&databricks);
        p.link(&store, &vault(&[KEY_A]), "rt-revoked-long-ago", NOW).await;
        let first = broker.user_context(&p.team, &p.user, None).await.unwrap_err();
        assert!(
            matches!(first, BrokerError::NeedsRelink { just_now: true, .. }),
            "{}: {first:?}",
            db.name
        );
        let again = broker.user_context(&p.team, &p.user, None).await.unwrap_err();
        assert!(
            matches!(again, BrokerError::NeedsRelink { just_now: false, .. }),
            "{again:?}"
        );
        assert_eq!(databricks.refreshes().len(), 1, "no retry loop");
        let link = store.find_link(&p.team, &p.user).await.unwrap().unwrap();
        assert_eq!(
            link.status,
            LinkStatus::NeedsRelink,
            "kept, marked — never silently deleted"
        );
        store.close().await;
    }
}

// TOK-05: the server rotated, but its answer never arrived.
#[tokio::test]
async fn a_lost_refresh_answer_is_retried_once_and_ends_as_needs_relink() {
    let db = TestDb::sqlite();
    let databricks = FakeDatabricks::start().await;
    let clock = Arc::new(ManualClock::at(NOW));
    let (broker, store) = broker(&db.url, &databricks, clock).await;
    let (p, rt) = linked(&store, &databricks).await;
    databricks.script(Scripted::RotateThenHang(Duration::from_secs(30)));
    let error = broker.user_context(&p.team, &p.user, None).await.unwrap_err();
    assert!(matches!(error, BrokerError::NeedsRelink { .. }), "{error:?}");
    let sent: Vec<String> = databricks
        .refreshes()
        .iter()
        .map(|r| r["refresh_token"].clone())
        .collect();
    assert_eq!(sent, [rt.clone(), rt], "the same token, twice, and no more");
    store.close().await;
}

// TOK-04 (issue 11): only invalid_grant and Databricks' dead-refresh shape end a link; every other refusal
// (scope, grant type, an unknown code, an HTML page) is the operator's to fix: counted,
// logged, and nobody's link is touched.
#[tokio::test]
async fn token_endpoint_refusals_other_than_a_dead_grant_keep_every_link_and_are_counted() {
    for (fixture, code) in [
        ("token-endpoint-invalid-client", "invalid_client"),
        ("token-endpoint-invalid-scope", "invalid_scope"),
        ("token-endpoint-unsupported-grant-type", "unsupported_grant_type"),
        ("token-endpoint-unknown-code", "other"),
        ("token-endpoint-400-empty", "unreadable"),
    ] {
        let db = TestDb::sqlite();
        let databricks = FakeDatabricks::start().await;
        let metrics = Arc::new(Metrics::new());
        let (broker, store) = broker_with(&db.url, &databricks, Arc::new(ManualClock::at(NOW)), metrics.clone()).await;
        let (p, _) = linked(&store, &databricks).await;
        databricks.script(Scripted::Recorded(recorded(fixture)));
        let error = broker.user_context(&p.team, &p.user, None).await.unwrap_err();
        assert!(
            matches!(error, BrokerError::Misconfigured(c) if c == code),
            "{fixture}: {error:?}"
        );
        let link = store.find_link(&p.team, &p.user).await.unwrap().unwrap();
        assert_eq!(link.status, LinkStatus::Active, "{fixture}");
        let counted = format!("token_endpoint_refusals_total{{code=\"{code}\"}} 1");
        assert!(metrics.render().contains(&counted), "{fixture}: {}", metrics.render());
        store.close().await;
    }
}

// TOK-04: the dead refresh token as Databricks answers it, and invalid_grant, end the link.
#[tokio::test]
async fn a_dead_refresh_token_in_either_recorded_shape_asks_the_person_to_connect_again() {
    for fixture in ["token-endpoint-dead-refresh", "token-endpoint-invalid-grant"] {
        let db = TestDb::sqlite();
        let databricks = FakeDatabricks::start().await;
        let (broker, store) = broker(&db.url, &databricks, Arc::new(ManualClock::at(NOW))).await;
        let (p, _) = linked(&store, &databricks).await;
        databricks.script(Scripted::Recorded(recorded(fixture)));
        let error = broker.user_context(&p.team, &p.user, None).await.unwrap_err();
        assert!(
            matches!(error, BrokerError::NeedsRelink { just_now: true, .. }),
            "{fixture}: {error:?}"
        );
        let link = store.find_link(&p.team, &p.user).await.unwrap().unwrap();
        assert_eq!(link.status, LinkStatus::NeedsRelink, "{fixture}");
        store.close().await;
    }
}

#[tokio::test]
async fn a_rejected_client_is_an_operator_error_that_keeps_every_link() {
    let db = TestDb::sqlite();
    let databricks = FakeDatabricks::start().await;
    let clock = Arc::new(ManualClock::at(NOW));
    let (broker, store) = broker(&db.url, &databricks, clock).await;
    let (p, _) = linked(&store, &databricks).await;
    databricks.script(Scripted::Recorded(recorded("token-endpoint-invalid-client")));
    let error = broker.user_context(&p.team, &p.user, None).await.unwrap_err();
    assert!(matches!(error, BrokerError::Misconfigured(_)), "{error:?}");
    assert_eq!(
        store.find_link(&p.team, &p.user).await.unwrap().unwrap().status,
        LinkStatus::Active
    );
    assert_eq!(
        audit_trail(&db.url).await,
        [("refresh_failed".to_owned(), "system".to_owned())],
        "audited, without wiping the link"
    );
    // Nothing is stuck: once the operator fixes it, the next call refreshes.
    broker.user_context(&p.team, &p.user, None).await.unwrap();
    store.close().await;
}

#[tokio::test]
async fn transient_failures_leave_the_link_alone_and_the_next_call_succeeds() {
    let db = TestDb::sqlite();
    let databricks = FakeDatabricks::start().await;
    let clock = Arc::new(ManualClock::at(NOW));
    let (broker, store) = broker(&db.url, &databricks, clock).await;
    let (p, _) = linked(&store, &databricks).await;
    for script in [
        Scripted::Status(503, json!({"error": "temporarily_unavailable"})),
        Scripted::Status(429, json!({"error": "slow_down"})),
        Scripted::Redirect("http://127.0.0.1:1/elsewhere".into()),
    ] {
        databricks.script(script);
        let error = broker.user_context(&p.team, &p.user, None).await.unwrap_err();
        assert!(matches!(error, BrokerError::Transient(_)), "{error:?}");
    }
    broker.user_context(&p.team, &p.user, None).await.unwrap();
    assert_eq!(
        store.find_link(&p.team, &p.user).await.unwrap().unwrap().status,
        LinkStatus::Active
    );
    let kinds: Vec<String> = audit_trail(&db.url).await.into_iter().map(|(kind, _)| kind).collect();
    assert_eq!(kinds, ["refresh_failed"; 3], "each failed refresh is audited");
    store.close().await;
}

// A Databricks 401 on a question: exactly one forced refresh and one retry.
#[tokio::test]
async fn a_refused_access_token_is_refreshed_once_and_the_refused_call_retried() {
    let app = TestApp::spawn().await;
    app.link_asker().await;
    *app.agent.refuse_next.lock().unwrap() = 1;
    app.post_event(&mention("Ev1", "<@U0LAN0Z89> after a revoke?")).await;
    app.wait_for_answer("answer: after a revoke?").await;
    let tokens = app.agent.tokens();
    assert_eq!(tokens.len(), 2);
    assert_ne!(tokens[0], tokens[1], "retried with a new token");
    assert_eq!(
        app.databricks.refreshes().len(),
        2,
        "the first token, then one forced refresh"
    );
    app.stop().await;
}

// TOK-04 end to end: a dead grant brings one prompt, and the question waits for relinking.
#[tokio::test]
async fn questions_that_hit_a_dead_grant_bring_one_prompt_and_wait() {
    let app = TestApp::spawn().await;
    Person::new("T061EG9R6", "U061F7AUR")
        .link(&app.store, &vault(&[KEY_A]), "rt-dead", app.clock.now())
        .await;
    app.post_event(&mention("Ev1", "<@U0LAN0Z89> one")).await;
    app.post_event(&mention("Ev2", "<@U0LAN0Z89> two")).await;
    let prompts = app.wait_for_calls("chat.postEphemeral", 1).await;
    assert!(prompts[0].to_string().contains("expired"), "{}", prompts[0]);
    eventually("both questions to wait", PATIENCE, || async {
        (app.job_states().await == ["waiting", "waiting"]).then_some(())
    })
    .await;
    assert_eq!(app.settled_job_states().await, ["waiting", "waiting"]);
    assert_eq!(app.slack_calls("chat.postEphemeral").await.len(), 1, "one prompt");
    assert_eq!(app.databricks.refreshes().len(), 1, "no retry loop");
    app.stop().await;
}

// invalid_client on a question: the person is told right away, their link is kept.
#[tokio::test]
async fn a_rejected_client_tells_the_person_and_keeps_their_link() {
    let app = TestApp::spawn().await;
    app.link_asker().await;
    app.databricks
        .script(Scripted::Recorded(recorded("token-endpoint-invalid-client")));
    app.post_event(&mention("Ev1", "<@U0LAN0Z89> misconfigured?")).await;
    let told = app.wait_for_calls("chat.postEphemeral", 1).await;
    assert!(told[0].to_string().contains("misconfigured"), "{}", told[0]);
    assert!(
        !told[0].to_string().contains("invalid_client"),
        "internals stay in the logs"
    );
    let link = app.store.list_links(None).await.unwrap().remove(0);
    assert_eq!(link.status, LinkStatus::Active);
    app.stop().await;
}

/// The refresh token stored for `p`, opened.
async fn stored_refresh_token(store: &Store, p: &Person) -> String {
    let link = store.find_link(&p.team, &p.user).await.unwrap().unwrap();
    vault(&[KEY_A])
        .open(p.binding(), &link.sealed_refresh_token)
        .unwrap()
        .expose_secret()
        .to_owned()
}

// TOK-01, before the commit: a process claimed the refresh and Databricks rotated the
// token, then the process died before storing the answer. The next process finds the
// stored token dead: the link needs relinking, once, with no loop replaying the old token.
#[tokio::test]
async fn a_refresh_lost_to_a_crash_before_its_commit_ends_in_one_relink_and_no_replay() {
    for db in TestDb::all().await {
        let databricks = FakeDatabricks::start().await;
        let clock = Arc::new(ManualClock::at(NOW));
        let (p, rt) = {
            let (_, store) = broker(&db.url, &databricks, clock.clone()).await;
            let (p, rt) = linked(&store, &databricks).await;
            let link = store.find_link(&p.team, &p.user).await.unwrap().unwrap();
            assert!(
                store
                    .try_lock_refresh(&p.team, &p.user, link.version, NOW, NOW + 30)
                    .await
                    .unwrap()
            );
            let answer = reqwest::Client::new()
                .post(format!("{}/oidc/v1/token", databricks.uri))
                .form(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", rt.as_str()),
                    ("client_id", "test-client"),
                ])
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), 200, "Databricks rotated the token");
            store.close().await;
            (p, rt)
        };

        let (next, store) = broker(&db.url, &databricks, clock.clone()).await;
        clock.advance(31); // the dead process's claim lapses
        let error = next.user_context(&p.team, &p.user, None).await.unwrap_err();
        assert!(
            matches!(error, BrokerError::NeedsRelink { just_now: true, .. }),
            "{}: {error:?}",
            db.name
        );
        for _ in 0..3 {
            let again = next.user_context(&p.team, &p.user, None).await.unwrap_err();
            assert!(
                matches!(again, BrokerError::NeedsRelink { just_now: false, .. }),
                "{again:?}"
            );
        }
        let sent: Vec<String> = databricks
            .refreshes()
            .iter()
            .map(|r| r["refresh_token"].clone())
            .collect();
        assert_eq!(
            sent,
            [rt.clone(), rt],
            "{}: the dead process's call and one more",
            db.name
        );
        let link = store.find_link(&p.team, &p.user).await.unwrap().unwrap();
        assert_eq!(link.status, LinkStatus::NeedsRelink);
        store.close().await;
    }
}

// TOK-01, after the commit: the rotated refresh token and its access token are stored
// before the access token is handed out, so a process that starts after a crash uses that
// access token as it is and holds the new refresh token, not the old one.
#[tokio::test]
async fn a_committed_refresh_is_what_the_next_process_finds() {
    for db in TestDb::all().await {
        let databricks = FakeDatabricks::start().await;
        let clock = Arc::new(ManualClock::at(NOW));
        let (first, store) = broker(&db.url, &databricks, clock.clone()).await;
        let (p, old_rt) = linked(&store, &databricks).await;
        let handed_out = first.user_context(&p.team, &p.user, None).await.unwrap();
        drop(first); // the crash
        store.close().await;

        let (next, store) = broker(&db.url, &databricks, clock.clone()).await;
        let after = next.user_context(&p.team, &p.user, None).await.unwrap();
        assert_eq!(
            after.access_token.expose_secret(),
            handed_out.access_token.expose_secret(),
            "{}",
            db.name
        );
        assert_eq!(databricks.refreshes().len(), 1, "{}: no second refresh", db.name);
        let new_rt = stored_refresh_token(&store, &p).await;
        assert_ne!(new_rt, old_rt);
        let at_databricks = databricks.state.lock().unwrap().refresh_tokens.clone();
        assert!(at_databricks.contains_key(&new_rt) && !at_databricks.contains_key(&old_rt));
        store.close().await;
    }
}

// TOK-01: an access token whose refresh could not be committed (the link was replaced
// while Databricks answered) is never handed out; the next call refreshes the new link.
#[tokio::test]
async fn an_access_token_from_a_refresh_that_could_not_be_committed_is_never_handed_out() {
    let db = TestDb::sqlite();
    let databricks = FakeDatabricks::start().await;
    let clock = Arc::new(ManualClock::at(NOW));
    let (broker, store) = broker(&db.url, &databricks, clock.clone()).await;
    let (p, _) = linked(&store, &databricks).await;
    databricks.script(Scripted::Delay(Duration::from_millis(500)));
    let relinked_rt = databricks.grant(&FakeUser::asker());
    let relink_meanwhile = async {
        eventually("the refresh to reach Databricks", PATIENCE, || async {
            (!databricks.refreshes().is_empty()).then_some(())
        })
        .await;
        p.link(&store, &vault(&[KEY_A]), &relinked_rt, NOW).await;
    };
    let (refresh, ()) = tokio::join!(broker.user_context(&p.team, &p.user, None), relink_meanwhile);
    let error = refresh.unwrap_err();
    assert!(matches!(error, BrokerError::Transient(_)), "{error:?}");
    assert_eq!(stored_refresh_token(&store, &p).await, relinked_rt, "the relink stands");

    let ctx = broker.user_context(&p.team, &p.user, None).await.unwrap();
    let refreshes = databricks.refreshes();
    assert_eq!(refreshes.len(), 2);
    assert_eq!(refreshes[1]["refresh_token"], relinked_rt);
    assert_eq!(
        databricks.owner_of(ctx.access_token.expose_secret()).as_deref(),
        Some("asker@example.com")
    );
    store.close().await;
}

// TOK-06: an access token with 30 s left is refreshed before it is handed out; when the
// Databricks session has ended (the refresh token is past its lifetime), the link is kept,
// marked for relinking and audited — never silently deleted.
#[tokio::test]
async fn a_token_about_to_expire_is_refreshed_first_and_an_ended_session_keeps_the_link_for_relinking() {
    for db in TestDb::all().await {
        let databricks = FakeDatabricks::start().await;
        let clock = Arc::new(ManualClock::at(NOW));
        let (broker, store) = broker(&db.url, &databricks, clock.clone()).await;
        let (p, _) = linked(&store, &databricks).await;
        let first = broker.user_context(&p.team, &p.user, None).await.unwrap();

        clock.advance(3600 - 30);
        let second = broker.user_context(&p.team, &p.user, None).await.unwrap();
        assert_ne!(
            second.access_token.expose_secret(),
            first.access_token.expose_secret(),
            "{}",
            db.name
        );
        assert_eq!(databricks.refreshes().len(), 2);

        clock.advance(8 * 24 * 3600);
        databricks.state.lock().unwrap().refresh_tokens.clear();
        let error = broker.user_context(&p.team, &p.user, None).await.unwrap_err();
        assert!(
            matches!(error, BrokerError::NeedsRelink { just_now: true, .. }),
            "{}: {error:?}",
            db.name
        );
        let link = store.find_link(&p.team, &p.user).await.unwrap().expect("kept");
        assert_eq!(link.status, LinkStatus::NeedsRelink);
        assert!(link.sealed_access_token.is_none(), "the access token is dropped");
        assert!(
            audit_trail(&db.url)
                .await
                .contains(&("relink_needed".to_owned(), "system".to_owned()))
        );
        store.close().await;
    }
}

// CRY-08: debug output of what carries a person's tokens — the broker's context, the
// stored link, the agent's request — shows neither the access nor the refresh token.
#[tokio::test]
async fn debug_output_of_a_context_a_link_and_an_agent_request_shows_no_token() {
    let app = TestApp::spawn().await;
    let rt = app.link_asker().await;
    app.post_event(&mention("Ev1", "<@U0LAN0Z89> debug?")).await;
    app.wait_for_answer("answer: debug?").await;
    let request = app.agent.requests.lock().unwrap()[0].clone();
    let access_token = request.context.access_token.expose_secret().to_owned();
    let link = app.store.list_links(None).await.unwrap().remove(0);
    let new_rt = vault(&[KEY_A])
        .open(
            databricks_slack_bot::crypto::Binding::new(
                databricks_slack_bot::crypto::Purpose::RefreshToken,
                &link.team,
                &link.user,
                &link.workspace,
            ),
            &link.sealed_refresh_token,
        )
        .unwrap();
    for shown in [
        format!("{request:?}"),
        format!("{:?}", request.context),
        format!("{link:?}"),
        format!("{:#?}", request),
    ] {
        assert!(shown.contains("U061F7AUR"), "{shown}");
        for secret in [access_token.as_str(), rt.as_str(), new_rt.expose_secret()] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }
    app.stop().await;
}

/// The refresh tokens `sent` to the token endpoint, in order.
fn sent_refresh_tokens(databricks: &FakeDatabricks) -> Vec<String> {
    databricks
        .refreshes()
        .iter()
        .map(|r| r["refresh_token"].clone())
        .collect()
}

// TOK-03: Databricks rotates the refresh token at once but answers after the 30-second
// claim would have run out. The claim is renewed while the request runs, so the other
// process waits for that answer instead of sending the token that was just rotated away
// (which would be refused and end a healthy link).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_endpoint_slower_than_the_refresh_claim_does_not_let_another_process_send_the_spent_token() {
    for db in TestDb::all().await {
        let databricks = FakeDatabricks::start().await;
        let clock = Arc::new(ManualClock::at(NOW));
        let (a, store) = broker(&db.url, &databricks, clock.clone()).await;
        let a = Arc::new(a.renewing_claims_every(Duration::from_millis(20)));
        let (b, other_store) = broker(&db.url, &databricks, clock.clone()).await;
        let (p, rt) = linked(&store, &databricks).await;
        let answer = Arc::new(Notify::new());
        databricks.script(Scripted::RotateThenWaitFor(answer.clone()));

        let first = tokio::spawn({
            let (a, team, user) = (a.clone(), p.team.clone(), p.user.clone());
            async move { a.user_context(&team, &user, None).await }
        });
        eventually("the first refresh to reach Databricks", PATIENCE, || async {
            (!databricks.refreshes().is_empty()).then_some(())
        })
        .await;
        clock.advance(31); // longer than a claim lasts unrenewed
        // Where the claim is not renewed this wait runs out, and the second process shows
        // what goes wrong.
        let renewed = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                let link = store.find_link(&p.team, &p.user).await.unwrap().unwrap();
                if link.refresh_lock_until.is_some_and(|until| until > clock.now()) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .is_ok();
        let mut second = tokio::spawn({
            let (team, user) = (p.team.clone(), p.user.clone());
            async move { b.user_context(&team, &user, None).await }
        });
        // Time enough for the second process to refresh on its own, if it were going to.
        let finished_early = tokio::time::timeout(Duration::from_millis(300), &mut second).await;
        answer.notify_one();
        let first = first.await.unwrap();
        let second = match finished_early {
            Ok(done) => done.unwrap(),
            Err(_) => second.await.unwrap(),
        };

        assert_eq!(
            sent_refresh_tokens(&databricks),
            [rt],
            "{}: the refresh token was sent once, by the first process",
            db.name
        );
        let link = store.find_link(&p.team, &p.user).await.unwrap().unwrap();
        assert_eq!(link.status, LinkStatus::Active, "{}", db.name);
        let first = first.unwrap_or_else(|e| panic!("{}: first process: {e}", db.name));
        let second = second.unwrap_or_else(|e| panic!("{}: second process: {e}", db.name));
        assert_eq!(
            first.access_token.expose_secret(),
            second.access_token.expose_secret(),
            "{}: the second process uses the first one's token",
            db.name
        );
        assert_eq!(
            databricks.owner_of(second.access_token.expose_secret()).as_deref(),
            Some("asker@example.com")
        );
        assert!(renewed, "{}: the claim was renewed while the refresh ran", db.name);
        store.close().await;
        other_store.close().await;
    }
}

// TOK-04: our refresh token is refused because another process refreshed with it first
// (rotating it) and committed while our request was on its way. The link has moved on, so
// the refusal says nothing about it: the other process's token is used, nothing is marked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresh_token_refused_after_another_process_rotated_it_uses_the_new_token_and_marks_nothing() {
    for db in TestDb::all().await {
        let databricks = FakeDatabricks::start().await;
        let clock = Arc::new(ManualClock::at(NOW));
        let (broker, store) = broker(&db.url, &databricks, clock).await;
        let (p, rt) = linked(&store, &databricks).await;
        let version = store.find_link(&p.team, &p.user).await.unwrap().unwrap().version;
        let ours_arrives = Arc::new(Notify::new());
        databricks.script(Scripted::WaitFor(ours_arrives.clone()));
        let other_process = async {
            eventually("our refresh to reach Databricks", PATIENCE, || async {
                (!databricks.refreshes().is_empty()).then_some(())
            })
            .await;
            let answer: Value = reqwest::Client::new()
                .post(format!("{}/oidc/v1/token", databricks.uri))
                .form(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", rt.as_str()),
                    ("client_id", "test-client"),
                ])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let secret = |field: &str| SecretString::from(answer[field].as_str().unwrap().to_owned());
            let keys = vault(&[KEY_A]);
            let access = Binding::new(Purpose::AccessToken, &p.team, &p.user, &p.workspace);
            let committed = store
                .store_refreshed_tokens(
                    &p.team,
                    &p.user,
                    version,
                    &keys.seal(p.binding(), &secret("refresh_token")),
                    keys.primary_key_id().as_str(),
                    &keys.seal(access, &secret("access_token")),
                    NOW + 3600,
                    NOW,
                )
                .await
                .unwrap();
            assert!(committed);
            ours_arrives.notify_one();
            answer["access_token"].as_str().unwrap().to_owned()
        };
        let (ours, theirs) = tokio::join!(broker.user_context(&p.team, &p.user, None), other_process);

        let ours = ours.unwrap_or_else(|e| panic!("{}: {e}", db.name));
        assert_eq!(ours.access_token.expose_secret(), theirs, "{}", db.name);
        assert_eq!(ours.version, version + 1);
        assert_eq!(
            sent_refresh_tokens(&databricks),
            [rt.clone(), rt],
            "{}: ours, then the other process's; no third",
            db.name
        );
        let link = store.find_link(&p.team, &p.user).await.unwrap().unwrap();
        assert_eq!(link.status, LinkStatus::Active, "{}", db.name);
        assert!(
            !audit_trail(&db.url)
                .await
                .contains(&("relink_needed".to_owned(), "system".to_owned())),
            "{}",
            db.name
        );
        store.close().await;
    }
}

/// Makes the next `failures` writes of a refresh token to `links` fail with a database
/// error: a trigger whose countdown survives the failed statement (SQLite's `RAISE(FAIL)`
/// keeps the trigger's earlier changes; a Postgres sequence is never rolled back).
async fn fail_refresh_token_writes(db_url: &str, failures: u32) {
    if db_url.starts_with("sqlite://") {
        let pool = sqlx::SqlitePool::connect(db_url).await.unwrap();
        sqlx::raw_sql(&format!(
            "CREATE TABLE injected_failures (remaining INTEGER NOT NULL); \
             INSERT INTO injected_failures VALUES ({failures}); \
             CREATE TRIGGER inject_failure BEFORE UPDATE OF refresh_token ON links \
             WHEN (SELECT remaining FROM injected_failures) > 0 \
             BEGIN \
                 UPDATE injected_failures SET remaining = remaining - 1; \
                 SELECT RAISE(FAIL, 'injected write failure'); \
             END;"
        ))
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(db_url).await.unwrap();
        sqlx::raw_sql(&format!(
            "CREATE SEQUENCE injected_failures; \
             CREATE FUNCTION inject_failure() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN \
                 IF nextval('injected_failures') <= {failures} THEN \
                     RAISE EXCEPTION 'injected write failure'; \
                 END IF; \
                 RETURN NEW; \
             END $$; \
             CREATE TRIGGER inject_failure BEFORE UPDATE OF refresh_token ON links \
             FOR EACH ROW EXECUTE FUNCTION inject_failure();"
        ))
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    }
}

/// How many write failures [`fail_refresh_token_writes`] has injected so far.
async fn injected_failures(db_url: &str, failures: u32) -> i64 {
    let sql = if db_url.starts_with("sqlite://") {
        format!("SELECT {failures} - remaining FROM injected_failures")
    } else {
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM injected_failures".to_owned()
    };
    let injected: Vec<(i64,)> = rows(db_url, &sql).await;
    injected[0].0.min(i64::from(failures))
}

// After Databricks has rotated the refresh token, the new one exists only in the
// process's memory until it is stored: a failing write is tried again, not given up.
#[tokio::test]
async fn a_refreshed_token_whose_first_writes_fail_is_stored_by_a_retry() {
    for db in TestDb::all().await {
        let databricks = FakeDatabricks::start().await;
        let clock = Arc::new(ManualClock::at(NOW));
        let (broker, store) = broker(&db.url, &databricks, clock.clone()).await;
        let (p, rt) = linked(&store, &databricks).await;
        fail_refresh_token_writes(&db.url, 2).await;

        let ctx = broker
            .user_context(&p.team, &p.user, None)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", db.name));
        assert_eq!(
            injected_failures(&db.url, 2).await,
            2,
            "{}: both writes failed",
            db.name
        );
        assert_eq!(
            databricks.owner_of(ctx.access_token.expose_secret()).as_deref(),
            Some("asker@example.com")
        );
        let stored = stored_refresh_token(&store, &p).await;
        assert_ne!(stored, rt, "{}", db.name);
        assert!(
            databricks.state.lock().unwrap().refresh_tokens.contains_key(&stored),
            "{}: the rotated token is the one stored",
            db.name
        );
        // And it works: the next refresh uses it.
        clock.advance(3600);
        broker.user_context(&p.team, &p.user, None).await.unwrap();
        assert_eq!(sent_refresh_tokens(&databricks), [rt, stored], "{}", db.name);
        store.close().await;
    }
}

// When every write fails, the rotated refresh token is lost: that is said loudly in the
// logs, without the token, and the person is not handed an access token nothing stored.
#[tokio::test]
async fn a_refreshed_token_that_cannot_be_stored_is_reported_loudly_without_the_token() {
    let logs = Captured::default();
    // This test's runtime is single-threaded, so everything it awaits logs here.
    let _guard = tracing::subscriber::set_default(logs.subscriber());
    let db = TestDb::sqlite();
    let databricks = FakeDatabricks::start().await;
    let (broker, store) = broker(&db.url, &databricks, Arc::new(ManualClock::at(NOW))).await;
    let (p, rt) = linked(&store, &databricks).await;
    fail_refresh_token_writes(&db.url, 1000).await;

    let error = broker.user_context(&p.team, &p.user, None).await.unwrap_err();
    assert!(matches!(error, BrokerError::Store(_)), "{error:?}");
    assert_eq!(
        injected_failures(&db.url, 1000).await,
        4,
        "the first write and three more"
    );
    let logged = logs.text();
    let loud = logged
        .lines()
        .find(|line| line.contains("ERROR") && line.contains("could not store a refreshed token"));
    assert!(loud.is_some_and(|line| line.contains("attempts=4")), "{logged}");
    let rotated: Vec<String> = databricks
        .state
        .lock()
        .unwrap()
        .refresh_tokens
        .keys()
        .cloned()
        .collect();
    assert_eq!(rotated.len(), 1, "Databricks rotated the token");
    for secret in [&rotated[0], &rt] {
        assert!(!logged.contains(secret.as_str()), "{secret} in {logged}");
    }
    store.close().await;
}
