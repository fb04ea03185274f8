//! Forgetting: a workspace that uninstalls the app (or revokes its bot token) is purged at
//! intake (EVT-04), and the scheduled retention purge removes exactly what is past its
//! time. On SQLite and, when `TEST_DATABASE_URL` is set, Postgres.

use std::sync::Arc;
use std::time::Duration;

use crate::common::app::{Options, TestApp, mention, slack_calls};
use crate::common::logs::Captured;
use crate::common::{KEY_A, PATIENCE, Person, TestDb, enqueue_one, eventually, vault};
use databricks_slack_bot::clock::{Clock, ManualClock};
use databricks_slack_bot::domain::{PersonIn, TeamId, UserId};
use databricks_slack_bot::jobs::retention::Retention;
use databricks_slack_bot::lifecycle::Lifecycle;
use databricks_slack_bot::store::Store;
use databricks_slack_bot::store::jobs::{Job, NewJob};
use databricks_slack_bot::store::pending_links::{EXCHANGE_CUT_OFF, NewPendingLink, PendingStatus};
use databricks_slack_bot::store::retention::{Expired, NEVER_CONNECTED, TeamPurge};
use serde_json::{Value, json};

const NOW: i64 = 1_800_000_000;
const DAY: i64 = 24 * 60 * 60;

/// The workspace that uninstalls; the fixtures' workspace stays.
const TEAM_A: &str = "T0AAAAAA1";
const TEAM_B: &str = "T061EG9R6";

// ---------------------------------------------------------------------------------------
// Helpers

/// The app on `db` taking events, with no workers to answer them.
async fn spawn_intake_only(db: &TestDb) -> TestApp {
    TestApp::spawn_with(Options {
        db: Some(db.url.clone()),
        workers: None,
        ..Default::default()
    })
    .await
}

/// A signed-ready `app_uninstalled` callback for `team` (the fixture, re-addressed).
fn app_uninstalled(event_id: &str, team: &str) -> Value {
    let mut event: Value = serde_json::from_str(include_str!("../fixtures/slack/event_app_uninstalled.json")).unwrap();
    event["event_id"] = json!(event_id);
    event["team_id"] = json!(team);
    event
}

/// A `tokens_revoked` callback as Slack documents it: the inner event lists user ids per
/// kind of token, never the tokens themselves.
fn tokens_revoked(event_id: &str, team: &str, tokens: Value) -> Value {
    json!({
        "token": "ZZZZZZWSxiZZZ2yIvs3peJ",
        "team_id": team,
        "api_app_id": "A0MDYCDME",
        "event": {"type": "tokens_revoked", "tokens": tokens},
        "type": "event_callback",
        "event_id": event_id,
        "event_time": 1515449900
    })
}

/// A mention of the bot by `user` of `team` in `channel`.
fn question(event_id: &str, team: &str, user: &str, channel: &str, text: &str) -> Value {
    let mut event = mention(event_id, &format!("<@U0LAN0Z89> {text}"));
    event["team_id"] = json!(team);
    event["event"]["team"] = json!(team);
    event["event"]["user"] = json!(user);
    event["event"]["channel"] = json!(channel);
    event["authorizations"][0]["team_id"] = json!(team);
    event
}

/// One number from the database at `db_url`: `sql` with `binds` as text parameters.
async fn number(db_url: &str, sql: &str, binds: &[&str]) -> i64 {
    if db_url.starts_with("sqlite://") {
        let pool = sqlx::SqlitePool::connect(db_url).await.unwrap();
        let mut query = sqlx::query_scalar(sql);
        for bind in binds {
            query = query.bind(*bind);
        }
        let n = query.fetch_one(&pool).await.unwrap();
        pool.close().await;
        n
    } else {
        let pool = sqlx::PgPool::connect(db_url).await.unwrap();
        let mut query = sqlx::query_scalar(sql);
        for bind in binds {
            query = query.bind(*bind);
        }
        let n = query.fetch_one(&pool).await.unwrap();
        pool.close().await;
        n
    }
}

/// Runs one statement against the database at `db_url`.
async fn execute(db_url: &str, sql: &str) {
    if db_url.starts_with("sqlite://") {
        let pool = sqlx::SqlitePool::connect(db_url).await.unwrap();
        sqlx::query(sql).execute(&pool).await.unwrap();
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(db_url).await.unwrap();
        sqlx::query(sql).execute(&pool).await.unwrap();
        pool.close().await;
    }
}

/// How many rows of `table` belong to `team`.
async fn team_rows(db_url: &str, table: &str, team: &str) -> i64 {
    number(
        db_url,
        &format!("SELECT COUNT(*) FROM {table} WHERE team_id = $1"),
        &[team],
    )
    .await
}

/// How many rows `table` holds.
async fn rows(db_url: &str, table: &str) -> i64 {
    number(db_url, &format!("SELECT COUNT(*) FROM {table}"), &[]).await
}

/// How many of `team`'s jobs are in `state`.
async fn jobs_in(db_url: &str, team: &str, state: &str) -> i64 {
    number(
        db_url,
        "SELECT COUNT(*) FROM jobs WHERE team_id = $1 AND state = $2",
        &[team, state],
    )
    .await
}

/// How many of `user`'s jobs wait for them to connect.
async fn waiting_of(db_url: &str, user: &str) -> i64 {
    number(
        db_url,
        "SELECT COUNT(*) FROM jobs WHERE user_id = $1 AND state = 'waiting'",
        &[user],
    )
    .await
}

/// Audit rows of `kind` for `team`, written by `actor` with `detail`.
async fn audit_rows(db_url: &str, team: &str, kind: &str, actor: &str, detail: &str) -> i64 {
    number(
        db_url,
        "SELECT COUNT(*) FROM audit_events WHERE team_id = $1 AND kind = $2 AND actor = $3 AND detail = $4",
        &[team, kind, actor, detail],
    )
    .await
}

fn ids(team: &str, user: &str) -> (TeamId, UserId) {
    (TeamId::parse(team).unwrap(), UserId::parse(user).unwrap())
}

/// A pending link for (`team`, `user`), created at `at` and expiring at `expires_at`.
async fn pending_link(store: &Store, tag: u8, team: &str, user: &str, at: i64, expires_at: i64) {
    let (team, user) = ids(team, user);
    let created = store
        .create_pending_link(
            &NewPendingLink {
                id_hash: &[tag; 32],
                team: &team,
                user: &user,
                channel_id: "C0CHANNEL",
                thread_ts: None,
                expires_at,
            },
            at,
            0,
        )
        .await
        .unwrap();
    assert!(created);
}

/// A conversation of (`team`, `user`) in `thread`, last touched at `at`.
async fn conversation(store: &Store, team: &str, user: &str, thread: &str, at: i64) {
    let (team, user) = ids(team, user);
    let key = PersonIn {
        team: &team,
        user: &user,
        channel: "C0CHANNEL",
        thread_ts: Some(thread),
    };
    store
        .save_conversation(key, "genie", r#"{"conversation_id":"01ef"}"#, at)
        .await
        .unwrap();
}

/// A private answer of (`team`, `user`) kept at `at` for sharing.
async fn private_answer(db_url: &str, id: &str, team: &str, user: &str, at: i64) {
    execute(
        db_url,
        &format!(
            "INSERT INTO private_answers (id, team_id, user_id, channel_id, thread_ts, content, created_at) \
             VALUES ('{id}', '{team}', '{user}', 'C0CHANNEL', '', '[]', {at})"
        ),
    )
    .await;
}

/// What becomes of a job created by [`job`].
#[derive(Clone, Copy)]
enum Ends {
    Queued,
    Running,
    Waiting,
    Done,
    Failed,
}

/// A question of (`team`, `user`) delivered as `event_id` at `at`, taken as far as `ends`
/// at that same time; the claim, if it was claimed. No other job may be runnable at `at`.
async fn job(store: &Store, event_id: &str, team: &str, user: &str, at: i64, ends: Ends) -> Option<Job> {
    let (team, user) = ids(team, user);
    let new = NewJob {
        kind: "question",
        team: &team,
        user: &user,
        payload: "{}",
        conversation: None,
        traceparent: None,
    };
    enqueue_one(store, event_id, &new, at).await.unwrap();
    if matches!(ends, Ends::Queued) {
        return None;
    }
    let claimed = store
        .claim_job(at, at + 60, 10)
        .await
        .unwrap()
        .expect("the job just queued");
    assert_eq!(claimed.user, user);
    match ends {
        Ends::Queued | Ends::Running => {}
        Ends::Waiting => assert!(store.park_job(&claimed, at).await.unwrap()),
        Ends::Done => assert!(store.complete_job(&claimed, at).await.unwrap()),
        Ends::Failed => assert!(store.fail_job(&claimed, at, "gave up").await.unwrap()),
    }
    Some(claimed)
}

// ---------------------------------------------------------------------------------------
// Uninstall and revoked tokens (EVT-04)

#[tokio::test]
async fn uninstalling_one_workspace_purges_its_links_pending_links_questions_and_conversations_and_nothing_else() {
    for db in TestDb::all().await {
        let app = spawn_intake_only(&db).await;
        let (url, now, vault) = (&db.url, app.clock.now(), vault(&[KEY_A]));
        for (team, user) in [
            (TEAM_A, "U0AAAAAA1"),
            (TEAM_A, "U0AAAAAA2"),
            (TEAM_B, "U061F7AUR"),
            (TEAM_B, "U0BBBBBB2"),
        ] {
            Person::new(team, user).link(&app.store, &vault, "rt-canary", now).await;
        }
        pending_link(&app.store, 1, TEAM_A, "U0AAAAAA3", now, now + 600).await;
        pending_link(&app.store, 2, TEAM_B, "U0BBBBBB3", now, now + 600).await;
        conversation(&app.store, TEAM_A, "U0AAAAAA1", "1700000000.000001", now).await;
        conversation(&app.store, TEAM_B, "U061F7AUR", "1700000000.000002", now).await;
        private_answer(url, "share-a", TEAM_A, "U0AAAAAA1", now).await;
        private_answer(url, "share-b", TEAM_B, "U061F7AUR", now).await;
        let asked = [
            question("EvA1", TEAM_A, "U0AAAAAA1", "C0AAAAAA1", "revenue of A?"),
            question("EvA2", TEAM_A, "U0AAAAAA3", "C0AAAAAA1", "costs of A?"),
            question("EvB1", TEAM_B, "U061F7AUR", "C0LAN2Q65", "revenue of B?"),
        ];
        for event in &asked {
            assert_eq!(app.post_event(event).await.status(), 200);
        }

        let response = app.post_event(&app_uninstalled("EvUninstallA", TEAM_A)).await;
        assert_eq!(response.status(), 200, "{}", db.name);

        // Team A: nothing left that could act for, or about, its people.
        assert_eq!(team_rows(url, "links", TEAM_A).await, 0, "{}", db.name);
        assert_eq!(team_rows(url, "pending_links", TEAM_A).await, 0, "{}", db.name);
        assert_eq!(team_rows(url, "conversations", TEAM_A).await, 0, "{}", db.name);
        assert_eq!(team_rows(url, "private_answers", TEAM_A).await, 0, "{}", db.name);
        assert_eq!(jobs_in(url, TEAM_A, "failed").await, 2, "{}", db.name);
        assert_eq!(team_rows(url, "jobs", TEAM_A).await, 2, "{}", db.name);
        assert_eq!(
            number(
                url,
                "SELECT COUNT(*) FROM jobs WHERE team_id = $1 AND error = $2",
                &[TEAM_A, "app_uninstalled"]
            )
            .await,
            2,
            "stopped questions say why"
        );
        // One audit row per removed link, by the system, saying why.
        assert_eq!(
            audit_rows(url, TEAM_A, "unlink", "system", "app_uninstalled").await,
            2,
            "{}",
            db.name
        );
        for user in ["U0AAAAAA1", "U0AAAAAA2"] {
            assert_eq!(
                number(
                    url,
                    "SELECT COUNT(*) FROM audit_events WHERE team_id = $1 AND user_id = $2 AND kind = 'unlink'",
                    &[TEAM_A, user]
                )
                .await,
                1,
                "{}: {user}",
                db.name
            );
        }
        // The event id is recorded like any other delivery.
        assert_eq!(
            number(
                url,
                "SELECT COUNT(*) FROM slack_events WHERE event_id = $1",
                &["EvUninstallA"]
            )
            .await,
            1
        );

        // Team B: untouched.
        assert_eq!(team_rows(url, "links", TEAM_B).await, 2, "{}", db.name);
        assert_eq!(team_rows(url, "pending_links", TEAM_B).await, 1, "{}", db.name);
        assert_eq!(team_rows(url, "conversations", TEAM_B).await, 1, "{}", db.name);
        assert_eq!(team_rows(url, "private_answers", TEAM_B).await, 1, "{}", db.name);
        assert_eq!(jobs_in(url, TEAM_B, "queued").await, 1, "{}", db.name);
        assert_eq!(team_rows(url, "audit_events", TEAM_B).await, 0, "{}", db.name);
        app.stop().await;
    }
}

#[tokio::test]
async fn a_question_still_queued_when_its_workspace_uninstalls_is_never_answered() {
    for db in TestDb::all().await {
        // An intake-only process takes both questions and the uninstall before any worker
        // runs; then a process with workers starts on the same database.
        let intake_only = spawn_intake_only(&db).await;
        intake_only.link_asker().await; // team B's asker, able to get an answer
        let vault = vault(&[KEY_A]);
        Person::new(TEAM_A, "U0AAAAAA1")
            .link(&intake_only.store, &vault, "rt-a", intake_only.clock.now())
            .await;
        let a = question("EvA1", TEAM_A, "U0AAAAAA1", "C0AAAAAA1", "what did team A sell?");
        let b = question("EvB1", TEAM_B, "U061F7AUR", "C0LAN2Q65", "what did team B sell?");
        assert_eq!(intake_only.post_event(&a).await.status(), 200);
        assert_eq!(intake_only.post_event(&b).await.status(), 200);
        let uninstall = intake_only.post_event(&app_uninstalled("EvUninstallA", TEAM_A)).await;
        assert_eq!(uninstall.status(), 200);
        let (slack, databricks) = (intake_only.slack.clone(), intake_only.databricks.clone());
        intake_only.stop().await;

        let workers = TestApp::spawn_with(Options {
            db: Some(db.url.clone()),
            slack: Some(slack.clone()),
            databricks: Some(databricks),
            ..Default::default()
        })
        .await;
        // Team A's question came first in the queue; team B's answer proves the workers ran.
        workers.wait_for_answer("answer: what did team B sell?").await;
        // Once every job has settled, nothing more can reach the agent or Slack.
        assert_eq!(workers.settled_job_states().await, ["failed", "done"], "{}", db.name);
        let asked: Vec<String> = workers
            .agent
            .requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.question.clone())
            .collect();
        assert_eq!(asked, ["what did team B sell?"], "{}", db.name);
        let requests = slack.received_requests().await.unwrap();
        assert!(!requests.is_empty());
        for request in &requests {
            let seen = format!("{} {}", request.url, String::from_utf8_lossy(&request.body));
            assert!(
                !seen.contains("U0AAAAAA1") && !seen.contains("C0AAAAAA1") && !seen.contains("team A"),
                "{}: nothing may reach Slack for the uninstalled workspace: {seen}",
                db.name
            );
        }
        assert!(
            slack_calls(&slack, "chat.postEphemeral").await.is_empty(),
            "{}",
            db.name
        );
        workers.stop().await;
    }
}

#[tokio::test]
async fn a_replayed_uninstall_is_acknowledged_and_does_not_remove_links_made_after_a_reinstall() {
    for db in TestDb::all().await {
        let app = spawn_intake_only(&db).await;
        let (url, vault) = (&db.url, vault(&[KEY_A]));
        let person = Person::new(TEAM_A, "U0AAAAAA1");
        person.link(&app.store, &vault, "rt-before", app.clock.now()).await;
        let uninstall = app_uninstalled("EvUninstallA", TEAM_A);
        assert_eq!(app.post_event(&uninstall).await.status(), 200);
        assert_eq!(team_rows(url, "links", TEAM_A).await, 0);

        // Reinstalled and linked again; then Slack's retry of the old delivery arrives.
        person.link(&app.store, &vault, "rt-after", app.clock.now()).await;
        let retry = app
            .post_signed(
                "/slack/events",
                "application/json",
                &uninstall.to_string(),
                &[("x-slack-retry-num", "1"), ("x-slack-retry-reason", "http_timeout")],
            )
            .await;
        assert_eq!(retry.status(), 200, "{}", db.name);
        assert_eq!(
            team_rows(url, "links", TEAM_A).await,
            1,
            "{}: the retry is a duplicate",
            db.name
        );
        assert_eq!(audit_rows(url, TEAM_A, "unlink", "system", "app_uninstalled").await, 1);

        // A second, distinct uninstall purges again; one with nothing left to purge is harmless.
        for event_id in ["EvUninstallA2", "EvUninstallA3"] {
            let response = app.post_event(&app_uninstalled(event_id, TEAM_A)).await;
            assert_eq!(response.status(), 200, "{}", db.name);
        }
        assert_eq!(team_rows(url, "links", TEAM_A).await, 0, "{}", db.name);
        assert_eq!(audit_rows(url, TEAM_A, "unlink", "system", "app_uninstalled").await, 2);
        app.stop().await;
    }
}

#[tokio::test]
async fn revoked_user_tokens_alone_change_nothing() {
    for db in TestDb::all().await {
        let app = spawn_intake_only(&db).await;
        let (url, now) = (&db.url, app.clock.now());
        Person::new(TEAM_A, "U0AAAAAA1")
            .link(&app.store, &vault(&[KEY_A]), "rt", now)
            .await;
        pending_link(&app.store, 1, TEAM_A, "U0AAAAAA2", now, now + 600).await;
        conversation(&app.store, TEAM_A, "U0AAAAAA1", "1700000000.000001", now).await;
        assert_eq!(
            app.post_event(&question("EvA1", TEAM_A, "U0AAAAAA1", "C0AAAAAA1", "still there?"))
                .await
                .status(),
            200
        );

        let revoked = tokens_revoked("EvRevokedUsers", TEAM_A, json!({"oauth": ["U0AAAAAA1", "U0AAAAAA2"]}));
        assert_eq!(app.post_event(&revoked).await.status(), 200, "{}", db.name);

        assert_eq!(team_rows(url, "links", TEAM_A).await, 1, "{}", db.name);
        assert_eq!(team_rows(url, "pending_links", TEAM_A).await, 1, "{}", db.name);
        assert_eq!(team_rows(url, "conversations", TEAM_A).await, 1, "{}", db.name);
        assert_eq!(jobs_in(url, TEAM_A, "queued").await, 1, "{}", db.name);
        assert_eq!(team_rows(url, "audit_events", TEAM_A).await, 0, "{}", db.name);
        app.stop().await;
    }
}

#[tokio::test]
async fn a_revoked_bot_token_purges_the_workspace_like_an_uninstall() {
    for db in TestDb::all().await {
        let app = spawn_intake_only(&db).await;
        let (url, now, vault) = (&db.url, app.clock.now(), vault(&[KEY_A]));
        Person::new(TEAM_A, "U0AAAAAA1")
            .link(&app.store, &vault, "rt", now)
            .await;
        Person::new(TEAM_B, "U061F7AUR")
            .link(&app.store, &vault, "rt", now)
            .await;
        pending_link(&app.store, 1, TEAM_A, "U0AAAAAA2", now, now + 600).await;
        conversation(&app.store, TEAM_A, "U0AAAAAA1", "1700000000.000001", now).await;

        let revoked = tokens_revoked(
            "EvRevokedBot",
            TEAM_A,
            json!({"oauth": ["U0AAAAAA1"], "bot": ["U0LAN0Z89"]}),
        );
        assert_eq!(app.post_event(&revoked).await.status(), 200, "{}", db.name);

        assert_eq!(team_rows(url, "links", TEAM_A).await, 0, "{}", db.name);
        assert_eq!(team_rows(url, "pending_links", TEAM_A).await, 0, "{}", db.name);
        assert_eq!(team_rows(url, "conversations", TEAM_A).await, 0, "{}", db.name);
        assert_eq!(audit_rows(url, TEAM_A, "unlink", "system", "tokens_revoked").await, 1);
        assert_eq!(team_rows(url, "links", TEAM_B).await, 1, "{}", db.name);
        app.stop().await;
    }
}

#[tokio::test]
async fn purging_a_workspace_stops_its_running_and_waiting_questions_and_fences_the_worker_holding_one() {
    for db in TestDb::all().await {
        let store = db.open().await;
        let held = job(&store, "Ev1", TEAM_A, "U0AAAAAA1", NOW, Ends::Running)
            .await
            .unwrap();
        job(&store, "Ev2", TEAM_A, "U0AAAAAA2", NOW, Ends::Waiting).await;
        job(&store, "Ev3", TEAM_A, "U0AAAAAA3", NOW, Ends::Done).await;
        job(&store, "Ev4", TEAM_B, "U0BBBBBB1", NOW + 1, Ends::Queued).await;
        job(&store, "Ev5", TEAM_A, "U0AAAAAA4", NOW + 1, Ends::Queued).await;

        let (team, _) = ids(TEAM_A, "U0AAAAAA1");
        let purged = store
            .purge_team("EvUninstallA", &team, "app_uninstalled", NOW + 2)
            .await
            .unwrap();
        assert_eq!(
            purged,
            Some(TeamPurge {
                links: 0,
                pending_links: 0,
                stopped_jobs: 3,
                conversations: 0,
                private_answers: 0,
            }),
            "{}",
            db.name
        );
        assert_eq!(jobs_in(&db.url, TEAM_A, "failed").await, 3, "{}", db.name);
        assert_eq!(
            jobs_in(&db.url, TEAM_A, "done").await,
            1,
            "finished jobs are left to retention"
        );
        assert!(
            !store.complete_job(&held, NOW + 3).await.unwrap(),
            "{}: the worker holding a stopped job cannot record an outcome",
            db.name
        );
        // Not even once its lease runs out.
        let next = store.claim_job(NOW + 120, NOW + 180, 10).await.unwrap().unwrap();
        assert_eq!(
            next.team.as_str(),
            TEAM_B,
            "{}: only the other workspace's question runs",
            db.name
        );
        assert!(store.claim_job(NOW + 120, NOW + 180, 10).await.unwrap().is_none());
        assert_eq!(
            store
                .purge_team("EvUninstallA", &team, "app_uninstalled", NOW + 150)
                .await
                .unwrap(),
            None,
            "a redelivery does nothing"
        );
        store.close().await;
    }
}

// ---------------------------------------------------------------------------------------
// Retention

// Issue 12: a code exchange the bot was stopped in the middle of (a crash, a restart) stays
// `exchanging`; past its budget the purge ends it as failed, for the result page to say so,
// and one still within its budget is left to finish.
#[tokio::test]
async fn an_exchange_cut_off_past_its_budget_is_ended_as_failed() {
    for db in TestDb::all().await {
        let store = db.open().await;
        for (tag, user, started) in [(1, "U0AAAAAA1", NOW - 121), (2, "U0AAAAAA2", NOW - 60)] {
            pending_link(&store, tag, TEAM_A, user, started - 30, NOW + 600).await;
            let claimed = store
                .claim_pending_link(&[tag; 32], &[9; 32], started - 20, NOW + 600)
                .await;
            assert!(claimed.unwrap().is_some());
            assert!(store.begin_exchange(&[tag; 32], started).await.unwrap());
        }

        let expired = store.purge_expired(NOW, 10).await.unwrap();

        assert_eq!(expired.cut_off_exchanges, 1, "{}", db.name);
        let cut_off = store.find_pending_link(&[1; 32]).await.unwrap().unwrap();
        assert_eq!(cut_off.status, PendingStatus::Failed, "{}", db.name);
        assert_eq!(cut_off.failure.as_deref(), Some(EXCHANGE_CUT_OFF));
        assert!(cut_off.pkce_verifier.is_none());
        let running = store.find_pending_link(&[2; 32]).await.unwrap().unwrap();
        assert_eq!(running.status, PendingStatus::Exchanging, "{}", db.name);
    }
}

#[tokio::test]
async fn retention_purges_exactly_the_rows_past_their_time_in_small_batches_and_keeps_the_rest() {
    for db in TestDb::all().await {
        let (store, url) = (db.open().await, &db.url);
        // Jobs (each with its event id), oldest first so each is the only runnable one.
        job(&store, "EvDoneOld", TEAM_A, "U0AAAAAA1", NOW - 8 * DAY, Ends::Done).await;
        job(&store, "EvFailedOld", TEAM_A, "U0AAAAAA1", NOW - 8 * DAY, Ends::Failed).await;
        job(
            &store,
            "EvNeverLinked",
            TEAM_A,
            "U0AAAAAA2",
            NOW - 8 * DAY,
            Ends::Waiting,
        )
        .await;
        job(&store, "EvLinking", TEAM_A, "U0AAAAAA3", NOW - 8 * DAY, Ends::Waiting).await;
        job(&store, "EvDoneRecent", TEAM_A, "U0AAAAAA1", NOW - 6 * DAY, Ends::Done).await;
        job(
            &store,
            "EvWaitingRecent",
            TEAM_A,
            "U0AAAAAA4",
            NOW - 6 * DAY,
            Ends::Waiting,
        )
        .await;
        job(&store, "EvRunning", TEAM_A, "U0AAAAAA5", NOW - 6 * DAY, Ends::Running).await;
        job(&store, "EvQueuedOld", TEAM_B, "U0BBBBBB1", NOW - 8 * DAY, Ends::Queued).await;
        job(&store, "EvFresh", TEAM_B, "U0BBBBBB1", NOW - 23 * 60 * 60, Ends::Queued).await;
        // Pending links: U0AAAAAA2's expired long ago; U0AAAAAA3 is linking right now.
        pending_link(&store, 1, TEAM_A, "U0AAAAAA2", NOW - 2 * DAY - 600, NOW - 2 * DAY).await;
        pending_link(&store, 2, TEAM_A, "U0AAAAAA3", NOW - 60, NOW + 540).await;
        pending_link(&store, 3, TEAM_B, "U0BBBBBB2", NOW - DAY / 2 - 600, NOW - DAY / 2).await;
        // Two for one person: the first is superseded by the second; both long expired.
        pending_link(&store, 4, TEAM_B, "U0BBBBBB3", NOW - 3 * DAY - 600, NOW - 3 * DAY).await;
        pending_link(&store, 5, TEAM_B, "U0BBBBBB3", NOW - 3 * DAY - 500, NOW - 2 * DAY).await;
        // Conversations: three idle for over a week, two recent.
        conversation(&store, TEAM_A, "U0AAAAAA1", "1.1", NOW - 8 * DAY).await;
        conversation(&store, TEAM_A, "U0AAAAAA1", "1.2", NOW - 7 * DAY - 1).await;
        conversation(&store, TEAM_B, "U0BBBBBB1", "1.3", NOW - 30 * DAY).await;
        conversation(&store, TEAM_B, "U0BBBBBB1", "1.4", NOW - 6 * DAY).await;
        conversation(&store, TEAM_B, "U0BBBBBB1", "1.5", NOW).await;
        // Private answers: one past its sharing day, one still shareable.
        private_answer(url, "share-old", TEAM_A, "U0AAAAAA1", NOW - DAY - 1).await;
        private_answer(url, "share-new", TEAM_A, "U0AAAAAA1", NOW - DAY + 60).await;
        assert_eq!(rows(url, "slack_events").await, 9);

        let expired = store.purge_expired(NOW, 2).await.unwrap();
        assert_eq!(
            expired,
            Expired {
                slack_events: 8,
                abandoned_questions: 1,
                finished_jobs: 2,
                conversations: 3,
                cut_off_exchanges: 0,
                pending_links: 3,
                private_answers: 1,
            },
            "{}",
            db.name
        );
        assert_eq!(expired.total(), 18);

        // Event ids: only the one delivered within the day.
        assert_eq!(rows(url, "slack_events").await, 1, "{}", db.name);
        assert_eq!(
            number(
                url,
                "SELECT COUNT(*) FROM slack_events WHERE event_id = $1",
                &["EvFresh"]
            )
            .await,
            1
        );
        // Jobs: the two old finished ones are gone; the question nobody connected for is
        // given up; the rest stay as they were.
        assert_eq!(rows(url, "jobs").await, 7, "{}", db.name);
        assert_eq!(
            waiting_of(url, "U0AAAAAA3").await,
            1,
            "{}: its person is linking now",
            db.name
        );
        assert_eq!(
            waiting_of(url, "U0AAAAAA4").await,
            1,
            "{}: asked less than a week ago",
            db.name
        );
        assert_eq!(
            number(
                url,
                "SELECT COUNT(*) FROM jobs WHERE user_id = $1 AND state = 'failed' AND error = $2",
                &["U0AAAAAA2", NEVER_CONNECTED]
            )
            .await,
            1,
            "{}",
            db.name
        );
        assert_eq!(jobs_in(url, TEAM_A, "done").await, 1, "{}", db.name);
        assert_eq!(jobs_in(url, TEAM_A, "running").await, 1, "{}", db.name);
        assert_eq!(
            jobs_in(url, TEAM_B, "queued").await,
            2,
            "{}: unfinished jobs are never deleted",
            db.name
        );
        // Pending links: the live one and the one expired less than a day ago.
        assert_eq!(rows(url, "pending_links").await, 2, "{}", db.name);
        assert_eq!(team_rows(url, "pending_links", TEAM_B).await, 1, "{}", db.name);
        // Conversations: the two touched within the week. Private answers: the shareable one.
        assert_eq!(rows(url, "conversations").await, 2, "{}", db.name);
        assert_eq!(
            number(
                url,
                "SELECT COUNT(*) FROM private_answers WHERE id = $1",
                &["share-new"]
            )
            .await,
            1
        );
        assert_eq!(rows(url, "private_answers").await, 1, "{}", db.name);

        // Nothing more to do at the same moment; a week later the given-up question goes.
        assert_eq!(store.purge_expired(NOW, 2).await.unwrap(), Expired::default());
        let week_later = store.purge_expired(NOW + 7 * DAY + 1, 500).await.unwrap();
        assert_eq!(
            week_later.finished_jobs, 2,
            "{}: the given-up and the recent done job",
            db.name
        );
        assert_eq!(
            number(url, "SELECT COUNT(*) FROM jobs WHERE user_id = $1", &["U0AAAAAA2"]).await,
            0
        );
        store.close().await;
    }
}

#[tokio::test]
async fn the_retention_task_purges_at_start_and_on_every_tick_until_shutdown() {
    for db in TestDb::all().await {
        let (store, url) = (db.open().await, db.url.as_str());
        let clock = Arc::new(ManualClock::at(NOW));
        conversation(&store, TEAM_A, "U0AAAAAA1", "1.1", NOW - 8 * DAY).await;
        let lifecycle = Lifecycle::default();
        let task = tokio::spawn(
            Retention::new(store.clone(), clock.clone())
                .with_interval(Duration::from_millis(50))
                .run(lifecycle.clone()),
        );
        eventually("the purge at start", PATIENCE, || async move {
            (rows(url, "conversations").await == 0).then_some(())
        })
        .await;

        // Time moves on: what was fresh becomes old and the next tick takes it.
        conversation(&store, TEAM_A, "U0AAAAAA1", "1.2", clock.now()).await;
        // An old conversation saved after the fresh one: the tick that takes it saw both.
        conversation(&store, TEAM_A, "U0AAAAAA1", "1.3", clock.now() - 8 * DAY).await;
        eventually("a tick to purge the old conversation", PATIENCE, || async move {
            let old = "SELECT COUNT(*) FROM conversations WHERE thread_ts = '1.3'";
            (number(url, old, &[]).await == 0).then_some(())
        })
        .await;
        assert_eq!(rows(url, "conversations").await, 1, "{}: still fresh", db.name);
        clock.advance(8 * DAY);
        eventually("a purge on a later tick", PATIENCE, || async move {
            (rows(url, "conversations").await == 0).then_some(())
        })
        .await;

        lifecycle.begin_shutdown();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("the task stops when shutdown begins")
            .unwrap();
        store.close().await;
    }
}

#[tokio::test]
async fn a_failing_purge_is_logged_and_the_task_keeps_running() {
    for db in TestDb::all().await {
        let logs = Captured::default();
        // This test's runtime is single-threaded, so the retention task logs here.
        let _guard = tracing::subscriber::set_default(logs.subscriber());
        let (store, url) = (db.open().await, db.url.as_str());
        let clock = Arc::new(ManualClock::at(NOW));
        conversation(&store, TEAM_A, "U0AAAAAA1", "1.1", NOW - 8 * DAY).await;
        // Every purge fails while the table is away.
        execute(url, "ALTER TABLE conversations RENAME TO conversations_away").await;
        let lifecycle = Lifecycle::default();
        let task = tokio::spawn(
            Retention::new(store.clone(), clock.clone())
                .with_interval(Duration::from_millis(30))
                .run(lifecycle.clone()),
        );
        eventually("the task to purge again after a failed purge", PATIENCE, || async {
            (logs.text().matches("purge failed").count() >= 2).then_some(())
        })
        .await;
        assert!(
            !task.is_finished(),
            "{}: a database error does not end the task",
            db.name
        );

        execute(url, "ALTER TABLE conversations_away RENAME TO conversations").await;
        eventually("a purge once the database is back", PATIENCE, || async move {
            (rows(url, "conversations").await == 0).then_some(())
        })
        .await;
        lifecycle.begin_shutdown();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .unwrap()
            .unwrap();
        store.close().await;
    }
}
