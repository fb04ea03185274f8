//! The store and the vault together, on SQLite and (when `TEST_DATABASE_URL` is set)
//! Postgres: every query, key rotation, concurrency and what reaches the disk.

use std::sync::Arc;

use crate::common::{KEY_A, KEY_B, Person, TestDb, enqueue_one, vault};
use databricks_slack_bot::crypto::{Binding, Purpose, VaultError, envelope_key_id};
use databricks_slack_bot::databricks::broker::rotation::{
    rotate_all, rotate_batch, rotate_pending_links, unknown_keys,
};
use databricks_slack_bot::store::Store;
use databricks_slack_bot::store::audit::Actor;
use databricks_slack_bot::store::jobs::{Delivery, NewJob};
use databricks_slack_bot::store::links::LinkStatus;
use databricks_slack_bot::store::pending_links::NewPendingLink;
use secrecy::{ExposeSecret, SecretString};

const NOW: i64 = 1_800_000_000;

async fn audit_count(db: &TestDb, kind: &str) -> i64 {
    let sql = "SELECT COUNT(*) FROM audit_events WHERE kind = $1";
    if let Some(path) = db.sqlite_path() {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let (n,): (i64,) = sqlx::query_as(sql).bind(kind).fetch_one(&pool).await.unwrap();
        n
    } else {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        let (n,): (i64,) = sqlx::query_as(sql).bind(kind).fetch_one(&pool).await.unwrap();
        n
    }
}

#[tokio::test]
async fn links_are_stored_listed_replaced_and_deleted_on_every_backend() {
    for db in TestDb::all().await {
        let store = db.open().await;
        let vault = vault(&[KEY_A]);
        let alice = Person::new("T1", "UALICE");
        let bob = Person::new("T1", "UBOB");
        let carol = Person::new("T2", "UCAROL");
        for p in [&alice, &bob, &carol] {
            p.link(&store, &vault, "rt-first", NOW).await;
        }

        let found = store.find_link(&alice.team, &alice.user).await.unwrap().unwrap();
        assert_eq!(found.databricks_user_name, "ualice@example.com", "{}", db.name);
        assert_eq!(found.status, LinkStatus::Active);
        assert_eq!(found.version, 0);
        assert_eq!(found.linked_at, NOW);
        assert_eq!(found.key_id, "ka");
        let rt = vault.open(alice.binding(), &found.sealed_refresh_token).unwrap();
        assert_eq!(rt.expose_secret(), "rt-first");

        let all = store.list_links(None).await.unwrap();
        let users: Vec<_> = all.iter().map(|l| l.user.as_str()).collect();
        assert_eq!(users, ["UALICE", "UBOB", "UCAROL"], "{}", db.name);
        let t2 = store.list_links(Some(&carol.team)).await.unwrap();
        assert_eq!(t2.len(), 1);
        assert!(store.find_link(&carol.team, &alice.user).await.unwrap().is_none());

        // A relink replaces the token and moves the version on.
        alice.link(&store, &vault, "rt-second", NOW + 60).await;
        let relinked = store.find_link(&alice.team, &alice.user).await.unwrap().unwrap();
        assert_eq!(relinked.version, 1, "{}", db.name);
        assert_eq!(relinked.linked_at, NOW + 60);
        let rt = vault.open(alice.binding(), &relinked.sealed_refresh_token).unwrap();
        assert_eq!(rt.expose_secret(), "rt-second");

        // Deleting is idempotent and audited once.
        assert!(
            store
                .delete_link(&bob.team, &bob.user, Actor::AdminCli, NOW)
                .await
                .unwrap()
        );
        assert!(
            !store
                .delete_link(&bob.team, &bob.user, Actor::AdminCli, NOW)
                .await
                .unwrap()
        );
        assert!(store.find_link(&bob.team, &bob.user).await.unwrap().is_none());
        assert_eq!(audit_count(&db, "unlink").await, 1, "{}", db.name);
        assert_eq!(store.list_links(None).await.unwrap().len(), 2);
        store.close().await;
    }
}

#[tokio::test]
async fn migrations_apply_once_and_report_what_is_pending() {
    for db in TestDb::all().await {
        let store = Store::connect(&db.config()).await.unwrap();
        let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
            .unwrap()
            .count();
        assert_eq!(store.pending_migrations().await.unwrap(), migrations, "{}", db.name);
        store.migrate().await.unwrap();
        store.migrate().await.unwrap();
        assert_eq!(store.pending_migrations().await.unwrap(), 0, "{}", db.name);
        store.ping().await.unwrap();
        store.close().await;
    }
}

// CRY-05: rotation interrupted after one batch, then run again.
#[tokio::test]
async fn key_rotation_interrupted_midway_then_rerun_leaves_every_row_readable_under_the_primary() {
    for db in TestDb::all().await {
        let store = db.open().await;
        let old = vault(&[KEY_A]);
        let people: Vec<Person> = (0..25).map(|i| Person::new("T1", &format!("U{i:03}"))).collect();
        for (i, p) in people.iter().enumerate() {
            p.link(&store, &old, &format!("rt-{i}"), NOW).await;
        }
        let rotated = vault(&[KEY_B, KEY_A]);

        // The "interrupted" run: one batch of ten, then nothing.
        let first = rotate_batch(&store, &rotated, None, 10).await.unwrap();
        assert_eq!(first.resealed, 10, "{}", db.name);
        assert!(first.next.is_some());
        let mut under_b = 0;
        for (i, p) in people.iter().enumerate() {
            let link = store.find_link(&p.team, &p.user).await.unwrap().unwrap();
            let rt = rotated.open(p.binding(), &link.sealed_refresh_token).unwrap();
            assert_eq!(rt.expose_secret(), format!("rt-{i}"));
            assert_eq!(
                envelope_key_id(&link.sealed_refresh_token).unwrap().as_str(),
                link.key_id
            );
            under_b += usize::from(link.key_id == "kb");
        }
        assert_eq!(under_b, 10);

        // Run again from the start: the rest is done, nothing twice.
        let mut batches = 0;
        let total = rotate_all(&store, &rotated, 7, |_| batches += 1).await.unwrap();
        assert_eq!(total.resealed, 15, "{}", db.name);
        assert!(total.failures.is_empty());
        assert_eq!(batches, 3, "15 rows in batches of 7");
        let only_b = vault(&[KEY_B]);
        for (i, p) in people.iter().enumerate() {
            let link = store.find_link(&p.team, &p.user).await.unwrap().unwrap();
            assert_eq!(link.key_id, "kb");
            assert_eq!(link.version, 0, "rotation does not count as a refresh");
            let rt = only_b.open(p.binding(), &link.sealed_refresh_token).unwrap();
            assert_eq!(rt.expose_secret(), format!("rt-{i}"));
        }
        let again = rotate_all(&store, &rotated, 7, |_| {}).await.unwrap();
        assert_eq!(again.resealed, 0);
        store.close().await;
    }
}

// CRY-06: a row under a key that is no longer configured fails closed and is left alone.
#[tokio::test]
async fn key_rotation_reports_rows_it_cannot_open_and_leaves_them_untouched() {
    for db in TestDb::all().await {
        let store = db.open().await;
        let lost = Person::new("T1", "ULOST");
        let kept = Person::new("T1", "UKEPT");
        lost.link(
            &store,
            &vault(&["kc:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="]),
            "rt-lost",
            NOW,
        )
        .await;
        kept.link(&store, &vault(&[KEY_A]), "rt-kept", NOW).await;
        let before = store.find_link(&lost.team, &lost.user).await.unwrap().unwrap();

        let total = rotate_all(&store, &vault(&[KEY_B, KEY_A]), 100, |_| {}).await.unwrap();
        assert_eq!(total.resealed, 1, "{}", db.name);
        assert_eq!(total.failures.len(), 1);
        assert_eq!(total.failures[0].user, lost.user);
        assert_eq!(total.failures[0].error, VaultError::UnknownKey("kc".into()));
        let after = store.find_link(&lost.team, &lost.user).await.unwrap().unwrap();
        assert_eq!(after.sealed_refresh_token, before.sealed_refresh_token);
        store.close().await;
    }
}

// REL-01: concurrent writers queue behind each other instead of failing with SQLITE_BUSY.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_writers_never_surface_a_busy_error() {
    for db in TestDb::all().await {
        let store = Arc::new(db.open().await);
        let vault = Arc::new(vault(&[KEY_A]));
        let writers: Vec<_> = (0..50)
            .map(|i| {
                let (store, vault) = (store.clone(), vault.clone());
                tokio::spawn(async move {
                    let p = Person::new("T1", &format!("UW{i:02}"));
                    for round in 0..4 {
                        p.link(&store, &vault, &format!("rt-{round}"), NOW + round).await;
                        let link = store.find_link(&p.team, &p.user).await?.expect("just written");
                        let resealed = vault.seal(
                            p.binding(),
                            &vault.open(p.binding(), &link.sealed_refresh_token).unwrap(),
                        );
                        store
                            .reseal_refresh_token(&p.team, &p.user, &link.sealed_refresh_token, &resealed, "ka", None)
                            .await?;
                        store.delete_link(&p.team, &p.user, Actor::User, NOW).await?;
                    }
                    Ok::<_, sqlx::Error>(())
                })
            })
            .collect();
        for writer in writers {
            writer
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("{}: a writer failed: {e}", db.name));
        }
        assert_eq!(audit_count(&db, "unlink").await, 200, "{}", db.name);
        store.close().await;
    }
}

// CRY-01: the plaintext refresh token never reaches the database file or its WAL.
#[tokio::test]
async fn a_canary_refresh_token_never_reaches_the_sqlite_files() {
    let db = TestDb::sqlite();
    let path = db.sqlite_path().unwrap();
    let store = db.open().await;
    let vault = vault(&[KEY_A]);
    let canary = "doau-CANARY-7f3a9c1e5b";
    let p = Person::new("T1", "UCANARY");
    p.link(&store, &vault, canary, NOW).await;
    p.link(&store, &vault, canary, NOW + 1).await;

    let scan = |when: &str| {
        for suffix in ["", "-wal", "-shm"] {
            let file = format!("{}{suffix}", path.display());
            if let Ok(bytes) = std::fs::read(&file) {
                assert!(
                    !bytes.windows(canary.len()).any(|w| w == canary.as_bytes()),
                    "canary found in {file} {when}"
                );
            }
        }
    };
    assert!(
        std::fs::metadata(format!("{}-wal", path.display())).is_ok(),
        "WAL mode is on"
    );
    scan("while open");
    store.close().await;
    scan("after close");
}

fn job<'a>(
    team: &'a databricks_slack_bot::domain::TeamId,
    user: &'a databricks_slack_bot::domain::UserId,
    payload: &'a str,
) -> NewJob<'a> {
    NewJob {
        kind: "question",
        team,
        user,
        payload,
        conversation: None,
        traceparent: None,
    }
}

// EVT-02 at the store: an event id is recorded once, and its job with it.
#[tokio::test]
async fn an_event_is_enqueued_once_however_often_it_is_delivered() {
    for db in TestDb::all().await {
        let store = db.open().await;
        let p = Person::new("T1", "U1");
        let new = job(&p.team, &p.user, "{}");
        let deliveries = futures_util::future::join_all((0..8).map(|_| enqueue_one(&store, "Ev1", &new, NOW))).await;
        let enqueued = deliveries
            .iter()
            .filter(|d| matches!(d, Ok(Delivery::Enqueued)))
            .count();
        assert_eq!(enqueued, 1, "{}: {deliveries:?}", db.name);
        assert!(deliveries.iter().all(Result::is_ok));
        assert!(store.claim_job(NOW, NOW + 60, 2).await.unwrap().is_some());
        assert!(
            store.claim_job(NOW, NOW + 60, 2).await.unwrap().is_none(),
            "one job only"
        );
        store.close().await;
    }
}

// What /metrics reads for alerting: jobs per state, since when the oldest due job has
// waited (a job waiting for its retry time is not due), links per status.
#[tokio::test]
async fn queue_and_link_counts_for_metrics_work_on_both_backends() {
    for db in TestDb::all().await {
        let store = db.open().await;
        let p = Person::new("T1", "U1");
        let new = job(&p.team, &p.user, "{}");
        assert_eq!(store.oldest_due_job(NOW).await.unwrap(), None, "{}", db.name);
        enqueue_one(&store, "Ev1", &new, NOW - 90).await.unwrap();
        enqueue_one(&store, "Ev2", &new, NOW - 30).await.unwrap();
        enqueue_one(&store, "Ev3", &new, NOW + 60).await.unwrap();
        assert_eq!(store.oldest_due_job(NOW).await.unwrap(), Some(NOW - 90), "{}", db.name);
        let claimed = store.claim_job(NOW, NOW + 60, 2).await.unwrap().unwrap();
        assert_eq!(store.oldest_due_job(NOW).await.unwrap(), Some(NOW - 30), "{}", db.name);
        store.complete_job(&claimed, NOW).await.unwrap();
        let mut per_state = store.jobs_per_state().await.unwrap();
        per_state.sort();
        assert_eq!(
            per_state,
            [("done".to_owned(), 1), ("queued".to_owned(), 2)],
            "{}",
            db.name
        );

        p.link(&store, &vault(&[KEY_A]), "rt", NOW).await;
        Person::new("T1", "U2").link(&store, &vault(&[KEY_A]), "rt", NOW).await;
        assert!(
            store
                .mark_needs_relink(&p.team, &p.user, 0, "invalid_grant", NOW)
                .await
                .unwrap()
        );
        let mut per_status = store.links_per_status().await.unwrap();
        per_status.sort();
        assert_eq!(
            per_status,
            [("active".to_owned(), 1), ("needs_relink".to_owned(), 1)],
            "{}",
            db.name
        );
        store.close().await;
    }
}

// Group commit at the store: a batch records each new event once — a duplicate of an
// earlier batch or of one earlier in the same batch enqueues nothing — and a batch of
// duplicates only writes nothing.
#[tokio::test]
async fn a_batch_of_deliveries_records_each_event_once() {
    for db in TestDb::all().await {
        let store = db.open().await;
        let p = Person::new("T1", "U1");
        let new = job(&p.team, &p.user, "{}");
        enqueue_one(&store, "Ev0", &new, NOW).await.unwrap();
        let batch: Vec<(&str, NewJob<'_>)> = ["Ev1", "Ev0", "Ev2", "Ev1"]
            .into_iter()
            .map(|event| (event, new.clone()))
            .collect();
        let outcomes = store.enqueue_event_jobs(&batch, NOW).await.unwrap();
        use Delivery::{Duplicate, Enqueued};
        assert_eq!(outcomes, [Enqueued, Duplicate, Enqueued, Duplicate], "{}", db.name);
        let again = store.enqueue_event_jobs(&batch, NOW).await.unwrap();
        assert!(again.iter().all(|d| *d == Duplicate), "{}: {again:?}", db.name);
        let mut claimed = 0;
        while store.claim_job(NOW, NOW + 60, 10).await.unwrap().is_some() {
            claimed += 1;
        }
        assert_eq!(claimed, 3, "{}: Ev0, Ev1 and Ev2, once each", db.name);
        store.close().await;
    }
}

// REL-06 at the store: a dead worker's job is taken again after its lease, and the dead
// worker can no longer complete it.
#[tokio::test]
async fn an_expired_lease_lets_another_worker_take_the_job_and_fences_the_first() {
    for db in TestDb::all().await {
        let store = db.open().await;
        let p = Person::new("T1", "U1");
        enqueue_one(&store, "Ev1", &job(&p.team, &p.user, "{\"n\":1}"), NOW)
            .await
            .unwrap();
        let first = store.claim_job(NOW, NOW + 60, 2).await.unwrap().unwrap();
        assert_eq!(first.attempts, 1);
        assert!(
            store.claim_job(NOW + 30, NOW + 90, 2).await.unwrap().is_none(),
            "leased"
        );
        assert!(store.renew_lease(&first, NOW + 120).await.unwrap());
        assert!(
            store.claim_job(NOW + 100, NOW + 160, 2).await.unwrap().is_none(),
            "renewed"
        );

        let second = store
            .claim_job(NOW + 121, NOW + 181, 2)
            .await
            .unwrap()
            .expect("lease expired");
        assert_eq!((second.id, second.attempts), (first.id, 2), "{}", db.name);
        // When it was first taken up, for an agent to look for an earlier try's question.
        assert_eq!((first.created_at, second.created_at), (NOW, NOW), "{}", db.name);
        assert!(
            !store.complete_job(&first, NOW + 122).await.unwrap(),
            "the first worker is fenced off"
        );
        assert!(!store.renew_lease(&first, NOW + 200).await.unwrap());
        assert!(store.complete_job(&second, NOW + 122).await.unwrap());
        assert!(
            store.claim_job(NOW + 1000, NOW + 1060, 2).await.unwrap().is_none(),
            "done stays done"
        );
        store.close().await;
    }
}

#[tokio::test]
async fn retried_jobs_wait_for_their_time_and_failed_jobs_never_return() {
    for db in TestDb::all().await {
        let store = db.open().await;
        let p = Person::new("T1", "U1");
        enqueue_one(&store, "Ev1", &job(&p.team, &p.user, "a"), NOW)
            .await
            .unwrap();
        enqueue_one(&store, "Ev2", &job(&p.team, &p.user, "b"), NOW)
            .await
            .unwrap();
        let a = store.claim_job(NOW, NOW + 60, 2).await.unwrap().unwrap();
        assert!(store.retry_job(&a, NOW, NOW + 30, "upstream 503").await.unwrap());
        let b = store.claim_job(NOW, NOW + 60, 2).await.unwrap().unwrap();
        assert_eq!(b.payload, "b", "{}: the retried job waits", db.name);
        assert!(store.fail_job(&b, NOW, "gave up").await.unwrap());
        assert!(store.claim_job(NOW + 29, NOW + 89, 2).await.unwrap().is_none());
        let again = store.claim_job(NOW + 30, NOW + 90, 2).await.unwrap().unwrap();
        assert_eq!((again.payload.as_str(), again.attempts), ("a", 2));
        store.close().await;
    }
}

// Issue 11: jobs of one conversation (person and thread) run one at a time and in order,
// even a retried one that waits for its time; other conversations and keyless jobs run
// beside them.
#[tokio::test]
async fn jobs_of_one_conversation_run_one_at_a_time_in_order() {
    for db in TestDb::all().await {
        let store = db.open().await;
        let p = Person::new("T1", "U1");
        let enqueue = |event: &'static str, payload: &'static str, conversation: Option<&'static str>| {
            let store = store.clone();
            let (team, user) = (p.team.clone(), p.user.clone());
            async move {
                let new = NewJob {
                    conversation,
                    ..job(&team, &user, payload)
                };
                enqueue_one(&store, event, &new, NOW).await.unwrap();
            }
        };
        enqueue("Ev1", "first in thread", Some("T1:U1:C1:1.1")).await;
        enqueue("Ev2", "second in thread", Some("T1:U1:C1:1.1")).await;
        enqueue("Ev3", "other thread", Some("T1:U1:C1:2.2")).await;
        enqueue("Ev4", "keyless", None).await;
        let claim = |at: i64| {
            let store = store.clone();
            async move { store.claim_job(at, at + 60, 10).await.unwrap() }
        };
        let first = claim(NOW).await.unwrap();
        assert_eq!(first.payload, "first in thread", "{}", db.name);
        let next: Vec<String> = [claim(NOW).await, claim(NOW).await, claim(NOW).await]
            .into_iter()
            .flatten()
            .map(|j| j.payload)
            .collect();
        assert_eq!(next, ["other thread", "keyless"], "{}: the follow-up waits", db.name);
        // Retried, the first still holds the thread until it is done.
        assert!(store.retry_job(&first, NOW, NOW + 30, "upstream 503").await.unwrap());
        assert!(claim(NOW + 10).await.is_none(), "{}", db.name);
        let again = claim(NOW + 30).await.unwrap();
        assert_eq!(again.payload, "first in thread", "{}", db.name);
        assert!(store.complete_job(&again, NOW + 31).await.unwrap());
        let second = claim(NOW + 31).await.unwrap();
        assert_eq!(second.payload, "second in thread", "{}", db.name);
        store.close().await;
    }
}

// An answer's outbox is kept with its job for the retry to read, only by the worker that
// holds the job, and cleared however the job ends.
#[tokio::test]
async fn an_outbox_is_kept_for_the_retry_fenced_and_cleared_when_the_job_ends() {
    for db in TestDb::all().await {
        let store = db.open().await;
        let p = Person::new("T1", "U1");
        for (event, payload) in [("Ev1", "a"), ("Ev2", "b")] {
            enqueue_one(&store, event, &job(&p.team, &p.user, payload), NOW)
                .await
                .unwrap();
        }
        let a = store.claim_job(NOW, NOW + 60, 2).await.unwrap().unwrap();
        assert_eq!((a.outbox.as_deref(), a.outbox_sent), (None, 0));
        assert!(store.keep_outbox(&a, "placeholder").await.unwrap());
        assert!(store.keep_outbox(&a, "answer").await.unwrap());
        assert!(store.tick_outbox(&a, 1).await.unwrap());
        assert_eq!(store.job_outbox(&a).await.unwrap(), Some(("answer".into(), 1)));
        assert!(store.retry_job(&a, NOW, NOW, "Slack 500").await.unwrap());
        assert!(
            !store.tick_outbox(&a, 2).await.unwrap() && !store.keep_outbox(&a, "other").await.unwrap(),
            "{}: a job no longer held is fenced",
            db.name
        );
        let again = store.claim_job(NOW + 1, NOW + 61, 2).await.unwrap().unwrap();
        assert_eq!(
            (again.id, again.outbox.as_deref(), again.outbox_sent),
            (a.id, Some("answer"), 1)
        );
        assert!(store.complete_job(&again, NOW + 2).await.unwrap());
        assert_eq!(store.job_outbox(&again).await.unwrap(), None, "cleared when done");

        let b = store.claim_job(NOW + 3, NOW + 63, 2).await.unwrap().unwrap();
        assert!(store.keep_outbox(&b, r#"{"left":3}"#).await.unwrap());
        assert!(store.fail_job(&b, NOW + 4, "gave up").await.unwrap());
        assert_eq!(store.job_outbox(&b).await.unwrap(), None, "cleared when failed");
        store.close().await;
    }
}

#[tokio::test]
async fn one_persons_burst_does_not_hold_up_everyone_else() {
    for db in TestDb::all().await {
        let store = db.open().await;
        let busy = Person::new("T1", "UBUSY");
        let other = Person::new("T1", "UOTHER");
        for i in 0..4 {
            enqueue_one(&store, &format!("EvB{i}"), &job(&busy.team, &busy.user, "busy"), NOW)
                .await
                .unwrap();
        }
        enqueue_one(&store, "EvO", &job(&other.team, &other.user, "other"), NOW)
            .await
            .unwrap();
        let claimed: Vec<String> = {
            let mut v = Vec::new();
            while let Some(j) = store.claim_job(NOW, NOW + 60, 2).await.unwrap() {
                v.push(j.payload);
            }
            v
        };
        assert_eq!(
            claimed,
            ["busy", "busy", "other"],
            "{}: at most two per person at once",
            db.name
        );
        store.close().await;
    }
}

// CRY-05 (issue 12): rotation re-seals every sealed column, not only refresh tokens: the
// access token kept with a link, and a sign-in in progress's PKCE verifier and held link.
#[tokio::test]
async fn key_rotation_reseals_access_tokens_and_sign_ins_in_progress_too() {
    for db in TestDb::all().await {
        let store = db.open().await;
        let old = vault(&[KEY_A]);
        let p = Person::new("T1", "UROTATE");
        p.link(&store, &old, "rt-rotate", NOW).await;
        let access = Binding::new(Purpose::AccessToken, &p.team, &p.user, &p.workspace);
        let sealed_access = old.seal(access, &SecretString::from("at-rotate"));
        let refresh = store
            .find_link(&p.team, &p.user)
            .await
            .unwrap()
            .unwrap()
            .sealed_refresh_token;
        assert!(
            store
                .store_refreshed_tokens(&p.team, &p.user, 0, &refresh, "ka", &sealed_access, NOW + 3600, NOW)
                .await
                .unwrap()
        );
        // A sign-in in progress, its verifier sealed under the old key.
        let id_hash = [7u8; 32];
        let new = NewPendingLink {
            id_hash: &id_hash,
            team: &p.team,
            user: &p.user,
            channel_id: "C0CHANNEL",
            thread_ts: None,
            expires_at: NOW + 600,
        };
        assert!(store.create_pending_link(&new, NOW, 0).await.unwrap());
        store
            .claim_pending_link(&id_hash, &[9; 32], NOW, NOW + 600)
            .await
            .unwrap()
            .unwrap();
        let verifier = Binding::new(Purpose::PkceVerifier, &p.team, &p.user, &p.workspace);
        let sealed_verifier = old.seal(verifier, &SecretString::from("verifier-rotate"));
        assert!(
            store
                .set_databricks_state(&id_hash, &[3; 32], &sealed_verifier)
                .await
                .unwrap()
        );
        let rotated = vault(&[KEY_B, KEY_A]);
        assert_eq!(
            unknown_keys(&store, &vault(&[KEY_B])).await.unwrap(),
            [("ka".to_owned(), 2)]
        );

        rotate_all(&store, &rotated, 10, |_| {}).await.unwrap();
        let pending = rotate_pending_links(&store, &rotated, &p.workspace).await.unwrap();

        assert_eq!((pending.resealed, pending.unreadable), (1, 0), "{}", db.name);
        let only_b = vault(&[KEY_B]);
        let link = store.find_link(&p.team, &p.user).await.unwrap().unwrap();
        let at = only_b
            .open(access, link.sealed_access_token.as_deref().unwrap())
            .unwrap();
        assert_eq!(at.expose_secret(), "at-rotate", "{}", db.name);
        let pending = store.find_pending_link(&id_hash).await.unwrap().unwrap();
        let v = only_b
            .open(verifier, pending.pkce_verifier.as_deref().unwrap())
            .unwrap();
        assert_eq!(v.expose_secret(), "verifier-rotate");
        assert!(unknown_keys(&store, &only_b).await.unwrap().is_empty(), "{}", db.name);
        store.close().await;
    }
}

// Feedback, assistant threads and a team's purge, on both backends: a rating is recorded
// once and changed by the other button (one audit event per change), an answer's
// feedback target survives the end of its job, an assistant thread is titled once, and
// uninstalling forgets both.
#[tokio::test]
async fn feedback_and_assistant_threads_work_on_both_backends_and_go_with_the_team() {
    use databricks_slack_bot::store::feedback::{Rated, Rating};
    for db in TestDb::all().await {
        let store = db.open().await;
        let p = Person::new("T1", "U1");
        enqueue_one(&store, "Ev1", &job(&p.team, &p.user, "{}"), NOW)
            .await
            .unwrap();
        let answer = store.claim_job(NOW, NOW + 60, 2).await.unwrap().unwrap();
        store
            .keep_feedback_target(answer.id, r#"{"agent":"Genie","genie":null}"#)
            .await
            .unwrap();
        assert!(store.complete_job(&answer, NOW + 1).await.unwrap());
        let kept = store.answer_job(answer.id).await.unwrap().expect("the answer's job");
        assert_eq!(
            kept.feedback.as_deref(),
            Some(r#"{"agent":"Genie","genie":null}"#),
            "{}",
            db.name
        );
        assert_eq!((kept.team_id.as_str(), kept.user_id.as_str()), ("T1", "U1"));
        assert_eq!(store.answer_job(answer.id + 1000).await.unwrap(), None);

        let rated = |rating| Rated {
            job_id: answer.id,
            team: &p.team,
            user: &p.user,
            rating,
            at: NOW + 2,
        };
        assert!(
            store.record_feedback(&rated(Rating::Positive)).await.unwrap(),
            "{}",
            db.name
        );
        assert!(
            !store.record_feedback(&rated(Rating::Positive)).await.unwrap(),
            "{}: a repeat",
            db.name
        );
        assert!(
            store.record_feedback(&rated(Rating::Negative)).await.unwrap(),
            "{}: a change",
            db.name
        );

        store
            .keep_assistant_thread(&p.team, &p.user, "D1", "1.2", NOW)
            .await
            .unwrap();
        store
            .keep_assistant_thread(&p.team, &p.user, "D1", "1.2", NOW)
            .await
            .unwrap();
        assert_eq!(
            store.assistant_thread_needs_title("D1", "1.2").await.unwrap(),
            Some(true)
        );
        assert_eq!(
            store.assistant_thread_needs_title("D1", "1.2").await.unwrap(),
            Some(false)
        );
        assert_eq!(store.assistant_thread_needs_title("D1", "9.9").await.unwrap(), None);

        store
            .purge_team("EvGone", &p.team, "app_uninstalled", NOW + 3)
            .await
            .unwrap();
        assert_eq!(
            store.assistant_thread_needs_title("D1", "1.2").await.unwrap(),
            None,
            "{}",
            db.name
        );
        assert!(
            store.record_feedback(&rated(Rating::Negative)).await.unwrap(),
            "{}: the earlier rating went with the team",
            db.name
        );
        store.close().await;
    }
}
