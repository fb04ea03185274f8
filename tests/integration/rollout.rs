//! Issue 16, item 6: safe rollouts. Replicas of the real binary share one Postgres schema,
//! as the Deployment's pods do; one is stopped with SIGTERM while it is answering, as a
//! rolling update stops it, once its successor is ready. Every question is answered
//! exactly once: none is lost, none is asked of the agent or posted to Slack twice.
//!
//! The agent is the company's own (`AGENT=http`): one loopback server with a path per
//! replica, so the test knows which replica asked what. It holds every question until the
//! test lets it answer, so "in the middle of answers" is a state the test waits for, not a
//! moment it guesses.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::post;
use databricks_slack_bot::domain::WorkspaceHost;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wiremock::MockServer;

use crate::cli::{set, valid_env};
use crate::common::app::{fake_slack, rows, slack_calls};
use crate::common::fake_databricks::{FakeDatabricks, FakeUser};
use crate::common::replica::Replica;
use crate::common::{KEY_A, PATIENCE, Person, TestDb, eventually, vault};

/// `SHUTDOWN_DRAIN_SECONDS` of the replicas here, unless a test says otherwise.
const DRAIN: Duration = Duration::from_secs(10);
/// `WORKER_CONCURRENCY` of every replica: small, so questions wait in the queue while
/// every replica is busy.
const CONCURRENCY: usize = 4;
/// Questions asked before the rollout: enough to keep A and B busy and leave as many
/// again in the queue for C.
const BEFORE: usize = 3 * CONCURRENCY;
/// Questions asked during the rollout, once A no longer takes connections.
const DURING: usize = 4;
/// How long the agent takes over an answer, at the least (from when it is asked); none
/// is given before the test releases the agent.
const ANSWER_TIME: Duration = Duration::from_secs(1);
/// The team of the fake Slack's workspace (`auth.test`, `users.info`).
const TEAM: &str = "T061EG9R6";

// ---- the agent -------------------------------------------------------------------------

/// One request the agent received.
#[derive(Clone, Debug)]
struct Asked {
    /// Which replica asked (the last segment of its `AGENT_URL`).
    replica: String,
    /// The question's marker, `qNN`.
    question: String,
    /// The request's `Idempotency-Key`.
    key: String,
    /// Whether the agent gave its answer (false while held).
    answered: bool,
}

#[derive(Default)]
struct Shared {
    asked: Mutex<Vec<Asked>>,
    release: CancellationToken,
}

/// The company's agent, slow and watched: replica `x` asks at `/agent/x`; each answer
/// takes [`ANSWER_TIME`], and none is given before [`SlowAgent::release`]. The answer to
/// a question ending in `qNN` is `answer-to-qNN`.
struct SlowAgent {
    url: String,
    shared: Arc<Shared>,
}

impl SlowAgent {
    async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new()
            .route("/agent/{replica}", post(agent_answers))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, shared }
    }

    /// The `AGENT_URL` of `replica`.
    fn url_for(&self, replica: &str) -> String {
        format!("{}/agent/{replica}", self.url)
    }

    /// Every request so far, in the order they came.
    fn asked(&self) -> Vec<Asked> {
        self.shared.asked.lock().unwrap().clone()
    }

    /// The questions `replica` asked that still wait for their answer.
    fn held(&self, replica: &str) -> usize {
        self.asked()
            .iter()
            .filter(|asked| asked.replica == replica && !asked.answered)
            .count()
    }

    /// Lets the agent answer what it holds, and everything after at once.
    fn release(&self) {
        self.shared.release.cancel();
    }
}

async fn agent_answers(
    State(shared): State<Arc<Shared>>,
    Path(replica): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    let arrived = Instant::now();
    let question = body["question"]
        .as_str()
        .and_then(|text| text.split_whitespace().last())
        .unwrap_or_default()
        .to_owned();
    let key = headers
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let index = {
        let mut asked = shared.asked.lock().unwrap();
        asked.push(Asked {
            replica,
            question: question.clone(),
            key,
            answered: false,
        });
        asked.len() - 1
    };
    shared.release.cancelled().await;
    tokio::time::sleep_until(arrived + ANSWER_TIME).await;
    shared.asked.lock().unwrap()[index].answered = true;
    Json(json!({ "text": format!("answer-to-{question}") }))
}

// ---- the replicas ----------------------------------------------------------------------

/// Replica `name` on `db`, against the fake Slack at `slack_api`, the fake workspace at
/// `databricks` and the agent at `agent_url`, draining for `drain`.
fn replica(
    db: &TestDb,
    name: &'static str,
    slack_api: &str,
    databricks: &str,
    agent_url: &str,
    drain: Duration,
) -> Replica {
    let mut env = valid_env(&db.url);
    env.retain(|(key, _)| *key != "GENIE_SPACE_ID" && *key != "BIND_ADDR");
    for (key, value) in [
        ("SLACK_API_URL", slack_api.to_owned()),
        ("DATABRICKS_HOST", databricks.to_owned()),
        // The client the fake token endpoint knows.
        ("DATABRICKS_CLIENT_ID", "test-client".to_owned()),
        ("AGENT", "http".to_owned()),
        ("AGENT_URL", agent_url.to_owned()),
        ("ANSWER_VISIBILITY", "thread".to_owned()),
        ("WORKER_CONCURRENCY", CONCURRENCY.to_string()),
        ("SHUTDOWN_DRAIN_SECONDS", drain.as_secs().to_string()),
        ("RUST_LOG", "info".to_owned()),
    ] {
        set(&mut env, key, value);
    }
    Replica::start(db.dir.path(), name, env)
}

// ---- Slack -----------------------------------------------------------------------------

/// The asker of question `n`: a person of their own, so that no per-person limit holds
/// the questions back.
fn asker(n: usize) -> String {
    format!("U0ROLL{n:02}")
}

/// What the agent answers to question `n`.
fn answer_to(n: usize) -> String {
    format!("answer-to-q{n:02}")
}

/// Slack's `app_mention` delivery of question `n`, from [`asker`]`(n)`, in a thread of
/// its own.
fn question(n: usize) -> Value {
    json!({
        "type": "event_callback", "team_id": TEAM, "api_app_id": "A1",
        "event_id": format!("EvRollout{n:02}"), "event_time": 1,
        "authorizations": [{"team_id": TEAM, "user_id": "U0LAN0Z89", "is_bot": true}],
        "event": {"type": "app_mention", "user": asker(n), "channel": "C0LAN2Q65",
                  "text": format!("<@U0LAN0Z89> how did the rollout go? q{n:02}"),
                  "ts": format!("1700000000.{n:06}")}
    })
}

/// Links the askers of questions 1..=`count`, each to a grant of their own at the fake
/// workspace (and migrates the schema, before any replica starts).
async fn link_askers(db: &TestDb, databricks: &FakeDatabricks, count: usize) {
    let store = db.open().await;
    let keys = vault(&[KEY_A]);
    let workspace = WorkspaceHost::parse(&databricks.uri).unwrap();
    let now = jiff::Timestamp::now().as_second();
    for n in 1..=count {
        let user = FakeUser::named(&format!("asker{n:02}@example.com"), "Rollout Asker");
        let refresh_token = databricks.grant(&user);
        let person = Person {
            workspace: workspace.clone(),
            ..Person::new(TEAM, &asker(n))
        };
        person
            .link_as(&store, &keys, &refresh_token, now, (&user.id, &user.user_name))
            .await;
    }
    store.close().await;
}

/// A client that opens a new connection for every request, as Slack's deliveries come
/// in: a replica that stopped listening refuses it.
fn slack_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Whether Slack would take `response` as the delivery's acknowledgement.
fn acknowledged(response: &reqwest::Result<reqwest::Response>) -> bool {
    matches!(response, Ok(response) if response.status() == 200)
}

/// For each of questions 1..=`count`, how many messages carrying its answer reached the
/// fake Slack: posted, or put in the place of the question's "Thinking…" placeholder.
async fn answers_posted(slack: &MockServer, count: usize) -> Vec<usize> {
    let mut calls = slack_calls(slack, "chat.postMessage").await;
    calls.extend(slack_calls(slack, "chat.update").await);
    let calls: Vec<String> = calls.iter().map(Value::to_string).collect();
    (1..=count)
        .map(|n| {
            let answer = answer_to(n);
            calls.iter().filter(|call| call.contains(&answer)).count()
        })
        .collect()
}

/// Every job as (asker, state, attempts), once none is queued or running: a worker posts
/// to Slack before it records the job's outcome, so nothing more comes from settled jobs.
async fn settled_jobs(db: &TestDb) -> Vec<(String, String, i64)> {
    eventually("every job to settle (none queued or running)", PATIENCE, || async {
        let jobs: Vec<(String, String, i64)> =
            rows(&db.url, "SELECT user_id, state, attempts FROM jobs ORDER BY id").await;
        jobs.iter()
            .all(|(_, state, _)| state != "queued" && state != "running")
            .then_some(jobs)
    })
    .await
}

// ---- the rollout -----------------------------------------------------------------------

// Issue 16, item 6: two replicas on Postgres, SIGTERM to one in the middle of its answers,
// a new one started (first, as maxSurge 1 / maxUnavailable 0 does it). The stopping
// replica takes no new connection and no new job, finishes what it holds within its drain
// and exits 0; Slack's deliveries it refuses reach the others on Slack's retry; events
// redelivered to another replica are known by their id. Every question is asked of the
// agent once and its answer reaches Slack once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_on_postgres_answers_every_question_exactly_once() {
    let Some(db) = TestDb::postgres().await else { return };
    let slack = fake_slack(Vec::new()).await;
    let slack_api = format!("{}/api", slack.uri());
    let databricks = FakeDatabricks::start().await;
    let agent = SlowAgent::start().await;
    let total = BEFORE + DURING;
    link_askers(&db, &databricks, total).await;
    let start = |name: &'static str| replica(&db, name, &slack_api, &databricks.uri, &agent.url_for(name), DRAIN);
    // One after the other, so two cannot be handed the same free port.
    let mut a = start("a");
    a.wait_until_ready().await;
    let mut b = start("b");
    b.wait_until_ready().await;

    // Slack's deliveries, spread over A and B as the Service spreads them.
    let client = slack_client();
    for n in 1..=BEFORE {
        let to = [&a, &b][(n - 1) % 2];
        let acked = to.deliver(&client, &question(n), None).await;
        assert!(acknowledged(&acked), "question {n} to replica {}: {acked:?}", to.name);
    }
    // A and B each answer as many as they may; the rest wait in the queue.
    eventually(
        "A and B to be answering as many questions as they may",
        PATIENCE,
        || std::future::ready((agent.held("a") == CONCURRENCY && agent.held("b") == CONCURRENCY).then_some(())),
    )
    .await;

    // The rollout: the successor first; once it is ready, the old pod gets SIGTERM.
    let mut c = start("c");
    c.wait_until_ready().await;
    eventually("C to take up the questions left in the queue", PATIENCE, || {
        std::future::ready((agent.held("c") == BEFORE - 2 * CONCURRENCY).then_some(()))
    })
    .await;
    let stopping = a.sigterm();
    // A stops listening at once; its answers are held, so it cannot have exited.
    eventually("A to stop taking connections", PATIENCE, || {
        std::future::ready(
            std::net::TcpStream::connect(("127.0.0.1", a.port))
                .is_err()
                .then_some(()),
        )
    })
    .await;

    // Deliveries during the rollout: the stopping replica refuses them, and Slack's retry
    // reaches a replica that is up.
    for n in BEFORE + 1..=total {
        let event = question(n);
        let refused = a.deliver(&client, &event, None).await;
        assert!(
            matches!(&refused, Err(error) if error.is_connect()),
            "question {n} reached the stopping replica: {refused:?}"
        );
        let to = [&b, &c][(n - 1) % 2];
        let acked = to.deliver(&client, &event, Some(1)).await;
        assert!(
            acknowledged(&acked),
            "Slack's retry of question {n} to replica {}: {acked:?}",
            to.name
        );
    }
    // Slack also redelivers events A and B had acknowledged (a slow acknowledgement, a
    // lost response); the replica they reach now knows them by their event id.
    for n in [1, 2] {
        let acked = c.deliver(&client, &question(n), Some(1)).await;
        assert!(acknowledged(&acked), "the redelivery of question {n}: {acked:?}");
    }
    assert!(
        a.running(),
        "A drains rather than exiting without the answers it holds:\n{}",
        a.logs()
    );
    agent.release();

    let status = a.exited(DRAIN + Duration::from_secs(10)).await;
    let took = stopping.elapsed();
    assert!(status.success(), "A stops cleanly: {status}\n{}", a.logs());
    assert!(
        took < DRAIN,
        "A ended within its drain period, in {took:?}\n{}",
        a.logs()
    );
    eventually(
        "every question's answer to reach Slack",
        Duration::from_secs(30),
        || async {
            answers_posted(&slack, total)
                .await
                .iter()
                .all(|&posted| posted > 0)
                .then_some(())
        },
    )
    .await;
    let jobs = settled_jobs(&db).await;
    // B and C stop too, so that nothing at all can be posted after the count.
    for replica in [&mut b, &mut c] {
        replica.sigterm();
        let status = replica.exited(DRAIN + Duration::from_secs(10)).await;
        assert!(
            status.success(),
            "replica {} stops cleanly: {status}\n{}",
            replica.name,
            replica.logs()
        );
    }

    // Exactly once in Slack: each answer was posted (into its placeholder) once, and
    // nobody was told of a failure.
    let posted = answers_posted(&slack, total).await;
    let not_once: Vec<String> = (1..=total)
        .zip(&posted)
        .filter(|(_, posted)| **posted != 1)
        .map(|(n, posted)| format!("question {n}: {posted} times"))
        .collect();
    assert!(not_once.is_empty(), "answers not posted exactly once: {not_once:?}");
    let told = slack_calls(&slack, "chat.postEphemeral").await;
    assert!(told.is_empty(), "{told:?}");
    // Exactly once at the agent: each question asked once, and answered.
    let asked = agent.asked();
    for n in 1..=total {
        let marker = format!("q{n:02}");
        let runs: Vec<&Asked> = asked.iter().filter(|asked| asked.question == marker).collect();
        assert!(
            runs.len() == 1 && runs[0].answered,
            "question {n} asked of the agent {} times: {runs:?}",
            runs.len()
        );
    }
    // A took nothing new once stopping: only the questions it held at SIGTERM.
    assert_eq!(
        asked.iter().filter(|asked| asked.replica == "a").count(),
        CONCURRENCY,
        "{asked:?}"
    );
    // In the database: one event and one job per question, each done in one run.
    let mut askers: Vec<&str> = jobs.iter().map(|(asker, _, _)| asker.as_str()).collect();
    askers.sort_unstable();
    assert_eq!(askers, (1..=total).map(asker).collect::<Vec<_>>(), "{jobs:?}");
    for (asker, state, attempts) in &jobs {
        assert_eq!((state.as_str(), *attempts), ("done", 1), "the job of {asker}: {jobs:?}");
    }
    let (events,): (i64,) = rows(&db.url, "SELECT COUNT(*) FROM slack_events").await[0];
    assert_eq!(events as usize, total, "one recorded event per question");
    for replica in [&a, &b, &c] {
        let logs = replica.logs();
        for trouble in [
            "drain deadline passed",
            "lease lost",
            "taken over",
            "took over",
            "could not record the job's outcome",
            "did not finish in time",
        ] {
            assert!(
                !logs.contains(trouble),
                "replica {}: {trouble:?} in its logs:\n{logs}",
                replica.name
            );
        }
    }
    let logs = a.logs();
    assert!(logs.contains("SIGTERM received") && logs.contains("stopped"), "{logs}");
}

// The drain shorter than an answer (SHUTDOWN_DRAIN_SECONDS under the agent's time): the
// question is not lost, nor left to wait out its lease. At the drain deadline the stopping
// replica cuts the run off, hands the job back to the queue and exits 0; another replica
// takes it up at once, asks the agent again with the same Idempotency-Key, and answers in
// the placeholder the first one left: once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_question_cut_off_by_the_drain_deadline_is_handed_back_and_answered_once_by_another_replica() {
    let Some(db) = TestDb::postgres().await else { return };
    let slack = fake_slack(Vec::new()).await;
    let slack_api = format!("{}/api", slack.uri());
    let databricks = FakeDatabricks::start().await;
    let agent = SlowAgent::start().await;
    link_askers(&db, &databricks, 1).await;
    let short = Duration::from_secs(1);
    let mut a = replica(&db, "a", &slack_api, &databricks.uri, &agent.url_for("a"), short);
    a.wait_until_ready().await;
    let client = slack_client();
    let acked = a.deliver(&client, &question(1), None).await;
    assert!(acknowledged(&acked), "{acked:?}");
    eventually("A to be answering", PATIENCE, || {
        std::future::ready((agent.held("a") == 1).then_some(()))
    })
    .await;
    let mut b = replica(&db, "b", &slack_api, &databricks.uri, &agent.url_for("b"), DRAIN);
    b.wait_until_ready().await;

    let stopping = a.sigterm();
    let status = a.exited(short + Duration::from_secs(10)).await;
    let took = stopping.elapsed();
    assert!(
        status.success(),
        "a drain cut short still ends cleanly: {status}\n{}",
        a.logs()
    );
    assert!(
        took >= short && took < short + Duration::from_secs(5),
        "ended at the drain deadline, not the hard one, in {took:?}"
    );
    let logs = a.logs();
    assert!(
        logs.contains("drain deadline passed with jobs still running; handing them back to the queue")
            && logs.contains("handed the job back to the queue at the drain deadline"),
        "{logs}"
    );
    // B takes the job up at once, well before A's lease (60 s) would have run out.
    eventually("B to ask the agent", PATIENCE, || {
        std::future::ready((agent.held("b") == 1).then_some(()))
    })
    .await;
    agent.release();
    eventually("B's answer in Slack", PATIENCE, || async {
        (answers_posted(&slack, 1).await[0] > 0).then_some(())
    })
    .await;
    let jobs = settled_jobs(&db).await;
    b.sigterm();
    let status = b.exited(DRAIN + Duration::from_secs(10)).await;
    assert!(status.success(), "{status}\n{}", b.logs());

    assert_eq!(answers_posted(&slack, 1).await, [1], "the answer reached Slack once");
    // One placeholder: B took over the "Thinking…" A had posted (kept in the job's outbox).
    assert_eq!(slack_calls(&slack, "chat.postMessage").await.len(), 1);
    let asked = agent.asked();
    let replicas: Vec<&str> = asked.iter().map(|asked| asked.replica.as_str()).collect();
    assert_eq!(replicas, ["a", "b"], "{asked:?}");
    assert_eq!(asked[0].key, asked[1].key, "one Idempotency-Key on both tries");
    assert_eq!(jobs, [(asker(1), "done".to_owned(), 2)]);
}
