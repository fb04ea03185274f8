//! Resident memory of the release binary (`serve`, SQLite) with 10,000 stored links and
//! 100 questions in flight against a slow agent, as its own process.
//!
//! ```text
//! cargo bench --bench memory [-- LINKS IN_FLIGHT]     (defaults: 10000, 100)
//! ```
//!
//! The bench seeds LINKS links (their refresh tokens granted by the tests' fake Databricks
//! token endpoint), starts the bot with `WORKER_CONCURRENCY` = IN_FLIGHT against a fake
//! Slack and an `http` agent that holds every question for 10 s, then asks one question
//! from each of IN_FLIGHT linked people. It reports the bot's resident set (`VmRSS`) idle
//! and once every question has reached the agent, and its peak (`VmHWM`).

#[allow(dead_code)] // the bench uses a few of the tests' helpers
#[path = "../tests/integration/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Json;
use axum::routing::post;
use common::fake_databricks::{FakeDatabricks, FakeUser};
use common::{KEY_A, Person, TestDb, vault};
use databricks_slack_bot::domain::WorkspaceHost;
use databricks_slack_bot::slack::signature::sign;
use databricks_slack_bot::store::Store;
use serde_json::json;
use support::{Prompts, fake_slack, memory_of, serve, wait_for};

mod support;

const SECRET: &str = "bench-signing-secret";
const NOW: i64 = 1_800_000_000;
/// How long the agent holds each question.
const AGENT_HOLDS: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let links: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let in_flight: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100);

    let db = TestDb::sqlite();
    let databricks = FakeDatabricks::start().await;
    let store = Store::open(&db.config()).await.unwrap();
    let keys = vault(&[KEY_A]);
    let workspace = WorkspaceHost::parse(&databricks.uri).unwrap();
    for i in 0..links {
        let person = Person {
            workspace: workspace.clone(),
            ..Person::new("T0BENCH", &format!("U{i:06}"))
        };
        let refresh_token = databricks.grant(&FakeUser::named(&format!("u{i}@example.com"), "Bench"));
        person.link(&store, &keys, &refresh_token, NOW).await;
    }
    store.close().await;

    let reached = Arc::new(AtomicUsize::new(0));
    let agent = serve(axum::Router::new().route(
        "/ask",
        post({
            let reached = reached.clone();
            move || async move {
                reached.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(AGENT_HOLDS).await;
                Json(json!({"text": "Held, then answered."}))
            }
        }),
    ))
    .await;
    let slack = fake_slack(Prompts::default()).await;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut bot = Command::new(env!("CARGO_BIN_EXE_databricks-slack-bot"))
        .arg("serve")
        .current_dir(db.dir.path())
        .env_clear()
        .envs([
            ("BIND_ADDR", format!("127.0.0.1:{port}")),
            ("PUBLIC_BASE_URL", "https://bot.example.com".to_owned()),
            ("DATABASE_URL", db.url.clone()),
            ("TOKEN_ENCRYPTION_KEYS", KEY_A.to_owned()),
            ("SLACK_BOT_TOKEN", "xoxb-bench".to_owned()),
            ("SLACK_SIGNING_SECRET", SECRET.to_owned()),
            ("SLACK_API_URL", slack),
            ("DATABRICKS_HOST", databricks.uri.clone()),
            // The client the tests' fake token endpoint knows.
            ("DATABRICKS_CLIENT_ID", "test-client".to_owned()),
            ("AGENT", "http".to_owned()),
            ("AGENT_URL", format!("{agent}/ask")),
            ("WORKER_CONCURRENCY", in_flight.to_string()),
            ("RUST_LOG", "warn".to_owned()),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the release binary starts");
    wait_for(port, &mut bot).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = memory_of(bot.id());

    let client = reqwest::Client::new();
    for i in 0..in_flight {
        let body = json!({
            "type": "event_callback", "team_id": "T0BENCH", "api_app_id": "A0BENCH",
            "event_id": format!("EvMemory{i}"), "event_time": 1_700_000_000,
            "authorizations": [{"team_id": "T0BENCH", "user_id": "U0BOT", "is_bot": true}],
            "event": {"type": "app_mention", "user": format!("U{i:06}"), "channel": "C0BENCH",
                      "text": "<@U0BOT> how many orders shipped last week?", "ts": format!("1700000000.{i:06}")}
        })
        .to_string();
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let acked = client
            .post(format!("http://127.0.0.1:{port}/slack/events"))
            .header("content-type", "application/json")
            .header("x-slack-request-timestamp", ts.to_string())
            .header("x-slack-signature", sign(SECRET, ts, body.as_bytes()))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(acked.status(), 200);
    }
    let waited = std::time::Instant::now();
    while reached.load(Ordering::SeqCst) < in_flight && waited.elapsed() < AGENT_HOLDS {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let busy = memory_of(bot.id());
    let held = reached.load(Ordering::SeqCst);
    let _ = Command::new("kill").args(["-TERM", &bot.id().to_string()]).status();
    let _ = bot.wait();

    println!("Memory of the bot process (release, SQLite), {links} links stored");
    println!();
    println!("| state | resident (VmRSS) | peak so far (VmHWM) |");
    println!("|---|---|---|");
    println!("| idle | {:.1} MiB | {:.1} MiB |", idle.1, idle.0);
    println!(
        "| {held} of {in_flight} questions at the slow agent at once | {:.1} MiB | {:.1} MiB |",
        busy.1, busy.0
    );
}
