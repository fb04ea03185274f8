//! Black-box intake benchmark: the release binary, started as a process of its own on
//! embedded SQLite and on Postgres, acknowledging signed `app_mention` deliveries that
//! this process generates and signs — each one distinct — beside a minimal signed-ack
//! handler measured against the same generator in the same run.
//!
//! ```text
//! cargo bench --bench intake [-- SECONDS CONNECTIONS]     (defaults: 10 s, 32)
//! ```
//!
//! `BENCH_WORKER_CONCURRENCY` sets the bot's `WORKER_CONCURRENCY` (default 8),
//! `BENCH_DATABASE_URL` its Postgres, and `BENCH_OTLP_ENDPOINT` a collector to export
//! traces to (unset: none are exported).
//!
//! - **Minimal handler** (the physical-limit proxy): this bench binary again, as a child
//!   process on the same kind of runtime as the bot, that verifies the HMAC with the bot's
//!   own function, parses the JSON and answers 200. Nothing stored.
//! - **The bot** (`serve`, workers on): every 200 means the delivery is recorded and its
//!   job enqueued durably (SQLite `synchronous=FULL`; a Postgres commit). Slack is a closed
//!   port, so a worker's first call fails at once and the job waits for its retry: the
//!   figures are intake's, not answering's.
//! - Measured for each: saturation (a closed loop of CONNECTIONS senders for SECONDS),
//!   retries (the same deliveries again, re-signed, as Slack retries them), and latency at
//!   half of the bot's saturation (an open loop at that rate, so a slow ack cannot slow the
//!   sender down). Peak and idle resident memory of the bot process come from
//!   `/proc/<pid>/status`.
//! - **First visible reply**: the bot again (SQLite), its Slack a fake in this process
//!   that answers at once, at 200 deliveries a second, each from someone who has not
//!   connected Databricks: the time from each delivery's acknowledgement until Slack
//!   receives their private "Connect Databricks" prompt (`users.info`, a single-use link
//!   stored, then `chat.postEphemeral`).
//! - Postgres: `BENCH_DATABASE_URL`, else `TEST_DATABASE_URL`, else
//!   `postgres://postgres@127.0.0.1:5432/test`, in a fresh schema dropped afterwards;
//!   skipped (said so) when unreachable.
//!
//! The generator, the bot and (in its turn) the minimal handler share the machine's cores,
//! as they would on a loaded node; everything is on loopback.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use databricks_slack_bot::slack::signature::{sign, verify};
use secrecy::SecretString;
use serde_json::json;
use sqlx::Connection;
use support::{Prompts, fake_slack, memory_of, wait_for};

mod support;

const SECRET: &str = "bench-signing-secret";
/// A Slack nobody answers at: workers' calls fail at once.
const CLOSED_SLACK: &str = "http://127.0.0.1:9/api";
/// Set in the minimal handler's environment: the port it listens on.
const MINIMAL_ROLE: &str = "INTAKE_BENCH_MINIMAL_PORT";

fn main() {
    if let Ok(port) = std::env::var(MINIMAL_ROLE) {
        return minimal_handler(port.parse().expect("a port"));
    }
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let seconds: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(10);
    let connections: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(32);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(drive(Duration::from_secs(seconds), connections));
}

/// The physical-limit proxy: verify, parse, 200 — on a multi-threaded runtime like the bot's.
fn minimal_handler(port: u16) {
    tokio::runtime::Runtime::new().unwrap().block_on(async move {
        let secret = Arc::new(SecretString::from(SECRET));
        let app = axum::Router::new().route(
            "/slack/events",
            post(move |headers: HeaderMap, body: Bytes| {
                let secret = secret.clone();
                async move {
                    if verify(&secret, &headers, &body, unix_now()).is_err() {
                        return StatusCode::UNAUTHORIZED;
                    }
                    match serde_json::from_slice::<serde_json::Value>(&body) {
                        Ok(_) => StatusCode::OK,
                        Err(_) => StatusCode::BAD_REQUEST,
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        axum::serve(listener, app).await.unwrap();
    });
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// One run's figures.
struct Figures {
    label: String,
    acks: usize,
    errors: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// The fewest valid deliveries one sender sent (a closed loop's).
    fewest_sent: u64,
}

impl Figures {
    fn new(label: &str, mut latencies: Vec<Duration>, errors: usize, elapsed: Duration, fewest_sent: u64) -> Self {
        latencies.sort();
        Self {
            label: label.to_owned(),
            acks: latencies.len(),
            errors,
            elapsed,
            latencies,
            fewest_sent,
        }
    }

    fn rate(&self) -> f64 {
        self.acks as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let at = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[at].as_secs_f64() * 1e3
    }

    fn row(&self, minimal: Option<f64>) -> String {
        let ratio = minimal.map_or_else(|| "—".to_owned(), |m| format!("{:.2}×", self.rate() / m));
        format!(
            "| {} | {:.0}/s | {:.2} ms | {:.2} ms | {} | {} |",
            self.label,
            self.rate(),
            self.percentile(0.50),
            self.percentile(0.99),
            ratio,
            self.errors
        )
    }
}

/// A distinct `app_mention` delivery, numbered `n` in `series`, from one of 500 people.
fn delivery(series: &str, n: u64) -> String {
    delivery_from(series, n, &format!("U{}", n % 500))
}

/// A distinct `app_mention` delivery, numbered `n` in `series`, from `user`.
fn delivery_from(series: &str, n: u64, user: &str) -> String {
    json!({
        "type": "event_callback", "team_id": "T0BENCH", "api_app_id": "A0BENCH",
        "event_id": format!("Ev{series}{n}"), "event_time": 1_700_000_000,
        "authorizations": [{"team_id": "T0BENCH", "user_id": "U0BOT", "is_bot": true}],
        "event": {"type": "app_mention", "user": user, "channel": "C0BENCH",
                  "text": "<@U0BOT> how many orders shipped last week?", "ts": format!("1700000000.{n:06}")}
    })
    .to_string()
}

/// Sends `body`, signed now; the time to a 200, or why not.
async fn send(client: &reqwest::Client, url: &str, body: String) -> Result<Duration, ()> {
    send_signed(client, url, body, SECRET).await
}

/// Sends `body` signed with `secret` (a wrong one forges it); the time to a 200, or why not.
async fn send_signed(client: &reqwest::Client, url: &str, body: String, secret: &str) -> Result<Duration, ()> {
    let ts = unix_now();
    let signature = sign(secret, ts, body.as_bytes());
    let started = Instant::now();
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-slack-request-timestamp", ts.to_string())
        .header("x-slack-signature", signature)
        .body(body)
        .send()
        .await
        .map_err(|_| ())?;
    let latency = started.elapsed();
    (response.status() == 200).then_some(latency).ok_or(())
}

/// What a closed loop sends.
#[derive(Clone, Copy)]
struct Mix<'a> {
    /// Deliveries are this series, numbered from 0 for each sender.
    series: &'a str,
    /// Each sender goes round its first this-many deliveries (the ones an earlier run of
    /// the series sent: retries of them); `None` sends new ones throughout.
    again: Option<u64>,
    /// Every this-many'th request is forged (a wrong signature): refused, not counted.
    forged_every: Option<u64>,
}

impl<'a> Mix<'a> {
    fn new(series: &'a str) -> Self {
        Self {
            series,
            again: None,
            forged_every: None,
        }
    }
}

/// Saturation: `connections` senders, each sending its next delivery when the last is
/// answered, for `span`.
async fn closed_loop(label: &str, url: &str, mix: Mix<'_>, span: Duration, connections: usize) -> Figures {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()
        .unwrap();
    let started = Instant::now();
    let deadline = started + span;
    let senders: Vec<_> = (0..connections as u64)
        .map(|sender| {
            let (client, url, series) = (client.clone(), url.to_owned(), mix.series.to_owned());
            tokio::spawn(async move {
                let (mut latencies, mut errors, mut sent) = (Vec::new(), 0, 0);
                let mut i = 0;
                while Instant::now() < deadline {
                    let n = sender * 10_000_000 + mix.again.map_or(i, |again| i % again.max(1));
                    let body = delivery(&series, n);
                    if mix.forged_every.is_some_and(|every| i % every == every - 1) {
                        // Refused, as it must be: a 200 would be an error.
                        if send_signed(&client, &url, body, "forged").await.is_ok() {
                            errors += 1;
                        }
                    } else {
                        match send(&client, &url, body).await {
                            Ok(latency) => latencies.push(latency),
                            Err(()) => errors += 1,
                        }
                        sent += 1;
                    }
                    i += 1;
                }
                (latencies, errors, sent)
            })
        })
        .collect();
    let (mut latencies, mut errors, mut fewest) = (Vec::new(), 0, u64::MAX);
    for sender in senders {
        let (mine, failed, sent) = sender.await.unwrap();
        latencies.extend(mine);
        errors += failed;
        fewest = fewest.min(sent);
    }
    Figures::new(label, latencies, errors, started.elapsed(), fewest)
}

/// Latency at a set rate: one delivery every 1/`rate` s for `span`, whatever the acks do.
async fn open_loop(label: &str, url: &str, series: &str, rate: f64, span: Duration) -> Figures {
    let client = reqwest::Client::builder().pool_max_idle_per_host(512).build().unwrap();
    let total = (rate * span.as_secs_f64()) as u64;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut sent = Vec::with_capacity(total as usize);
    for i in 0..total {
        ticker.tick().await;
        let (client, url, body) = (client.clone(), url.to_owned(), delivery(series, i));
        sent.push(tokio::spawn(async move { send(&client, &url, body).await }));
    }
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for one in sent {
        match one.await.unwrap() {
            Ok(latency) => latencies.push(latency),
            Err(()) => errors += 1,
        }
    }
    Figures::new(label, latencies, errors, started.elapsed(), 0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn stop(mut child: Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
}

/// Time from acknowledgement to the first visible reply, at `rate` deliveries a second,
/// each from someone else, for `span`.
async fn first_visible_reply(rate: f64, span: Duration) -> String {
    let prompts: Prompts = Arc::default();
    let slack = fake_slack(prompts.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let database = format!("sqlite://{}/bot.db", dir.path().display());
    let mut bot = start_bot(port, &database, &slack, dir.path());
    wait_for(port, &mut bot).await;
    let url = format!("http://127.0.0.1:{port}/slack/events");
    let client = reqwest::Client::builder().pool_max_idle_per_host(512).build().unwrap();
    let total = (rate * span.as_secs_f64()) as u64;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = Vec::with_capacity(total as usize);
    for i in 0..total {
        ticker.tick().await;
        let user = format!("UFIRST{i}");
        let (client, url, body) = (client.clone(), url.clone(), delivery_from("First", i, &user));
        sent.push(tokio::spawn(async move {
            send(&client, &url, body).await.ok()?;
            Some((user, Instant::now()))
        }));
    }
    let mut acked = Vec::new();
    for one in sent {
        acked.extend(one.await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while prompts.lock().unwrap().len() < acked.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop(bot);
    let prompts = prompts.lock().unwrap();
    let latencies: Vec<Duration> = acked
        .iter()
        .filter_map(|(user, acked_at)| {
            prompts
                .get(user)
                .map(|shown| shown.saturating_duration_since(*acked_at))
        })
        .collect();
    let errors = acked.len() - latencies.len();
    let label = format!("first visible reply after the ack, at {rate:.0}/s (SQLite)");
    let figures = Figures::new(&label, latencies, errors, span, 0);
    format!(
        "| {} | {} of {} shown | {:.2} ms | {:.2} ms | | {} |",
        figures.label,
        figures.acks,
        acked.len(),
        figures.percentile(0.50),
        figures.percentile(0.99),
        figures.errors
    )
}

/// The bot, serving on `port` with `database_url`, its Slack at `slack`.
fn start_bot(port: u16, database_url: &str, slack: &str, dir: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_databricks-slack-bot"))
        .arg("serve")
        .current_dir(dir)
        .env_clear()
        .envs([
            ("BIND_ADDR", format!("127.0.0.1:{port}")),
            ("PUBLIC_BASE_URL", "https://bot.example.com".to_owned()),
            ("DATABASE_URL", database_url.to_owned()),
            (
                "TOKEN_ENCRYPTION_KEYS",
                "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".to_owned(),
            ),
            ("SLACK_BOT_TOKEN", "xoxb-bench".to_owned()),
            ("SLACK_SIGNING_SECRET", SECRET.to_owned()),
            ("SLACK_API_URL", slack.to_owned()),
            ("DATABRICKS_HOST", "http://127.0.0.1:9".to_owned()),
            ("DATABRICKS_CLIENT_ID", "bench".to_owned()),
            ("GENIE_SPACE_ID", "01ef-bench".to_owned()),
            ("RUST_LOG", "warn".to_owned()),
        ])
        .envs(std::env::var("BENCH_WORKER_CONCURRENCY").map(|n| ("WORKER_CONCURRENCY", n)))
        .envs(std::env::var("BENCH_OTLP_ENDPOINT").map(|url| ("OTEL_EXPORTER_OTLP_ENDPOINT", url)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the release binary starts")
}

/// Runs every measurement against the bot on `database_url`; its rows.
async fn measure_bot(name: &str, database_url: &str, span: Duration, connections: usize, minimal: f64) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut bot = start_bot(port, database_url, CLOSED_SLACK, dir.path());
    wait_for(port, &mut bot).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, idle) = memory_of(bot.id());
    let url = format!("http://127.0.0.1:{port}/slack/events");
    closed_loop("warm-up", &url, Mix::new("Warm"), Duration::from_secs(1), connections).await;

    let new = closed_loop(
        &format!("bot on {name}: new deliveries"),
        &url,
        Mix::new("New"),
        span,
        connections,
    )
    .await;
    let retries = Mix {
        again: Some(new.fewest_sent),
        ..Mix::new("New")
    };
    let retries = closed_loop(
        &format!("bot on {name}: retries of them"),
        &url,
        retries,
        span,
        connections,
    )
    .await;
    let forged = Mix {
        forged_every: Some(10),
        ..Mix::new("Mixed")
    };
    let forged = closed_loop(
        &format!("bot on {name}: new deliveries with 1 in 10 forged (valid ones counted)"),
        &url,
        forged,
        span,
        connections,
    )
    .await;
    let half = open_loop(
        &format!(
            "bot on {name}: open loop at half its saturation ({:.0}/s)",
            new.rate() / 2.0
        ),
        &url,
        "Half",
        new.rate() / 2.0,
        span,
    )
    .await;
    let (peak, _) = memory_of(bot.id());
    stop(bot);
    vec![
        new.row(Some(minimal)),
        retries.row(Some(minimal)),
        forged.row(Some(minimal)),
        half.row(None),
        format!("| bot on {name}: resident memory | idle {idle:.1} MiB, peak {peak:.1} MiB | | | | |"),
    ]
}

/// A fresh schema on the benchmark's Postgres, as a `DATABASE_URL`, and how to drop it.
async fn postgres_schema() -> Option<(String, String, String)> {
    let base = std::env::var("BENCH_DATABASE_URL")
        .or_else(|_| std::env::var("TEST_DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let mut conn = match sqlx::PgConnection::connect(&base).await {
        Ok(conn) => conn,
        Err(error) => {
            println!("(Postgres skipped: {base} is unreachable: {error})");
            return None;
        }
    };
    let schema = format!("bench_{}", std::process::id());
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    Some((base, schema, url))
}

async fn drive(span: Duration, connections: usize) {
    println!(
        "Intake, black box: {} s per measurement, {connections} connections, {} cores",
        span.as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let port = free_port();
    let mut minimal = Command::new(std::env::current_exe().unwrap())
        .env(MINIMAL_ROLE, port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(port, &mut minimal).await;
    let url = format!("http://127.0.0.1:{port}/slack/events");
    closed_loop("warm-up", &url, Mix::new("Warm"), Duration::from_secs(1), connections).await;
    let floor = closed_loop("minimal signed-ack handler", &url, Mix::new("Min"), span, connections).await;
    stop(minimal);
    let minimal = floor.rate();

    let mut rows = vec![floor.row(Some(minimal))];
    let sqlite = tempfile::tempdir().unwrap();
    let sqlite_url = format!("sqlite://{}/bot.db", sqlite.path().display());
    rows.extend(measure_bot("SQLite", &sqlite_url, span, connections, minimal).await);
    if let Some((base, schema, url)) = postgres_schema().await {
        rows.extend(measure_bot("Postgres", &url, span, connections, minimal).await);
        let mut conn = sqlx::PgConnection::connect(&base).await.unwrap();
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    rows.push(first_visible_reply(200.0, span).await);

    println!();
    println!("| measurement | acks/s | p50 | p99 | of the minimal handler | errors |");
    println!("|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}
