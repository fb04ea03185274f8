//! Load generator: signed `app_mention` events against a running bot on embedded SQLite,
//! measuring how fast Slack would get its acknowledgement (each ack = signature check +
//! a durable, de-duplicated enqueue). Two scenarios:
//!
//! 1. intake only — this process acknowledges, workers run elsewhere (or later);
//! 2. intake with the worker pool answering every event in the same process, against a
//!    local fake Slack (prompts to connect: users.info, a pending link, postEphemeral).
//!
//! Run with `cargo bench --bench intake_ack [-- RATE SECONDS]` (defaults 500 ev/s, 10 s).
//! Everything is on loopback; the run is bounded in count and time. The load generator
//! and the fake Slack share the machine's two cores with the bot.
//!
//! After each scenario it also prints the peak (VmHWM) and current (VmRSS) resident set
//! size from /proc/self/status (Linux; "n/a" elsewhere). They are for the whole bench
//! process — bot, load generator and fake Slack together — and the peak is since start,
//! so the second scenario's peak includes the first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use databricks_slack_bot::clock::{Clock, SystemClock};
use databricks_slack_bot::config::{Config, Env};
use databricks_slack_bot::slack::signature::sign;
use databricks_slack_bot::startup::{Application, Dependencies};
use serde_json::json;
use tokio::sync::Mutex;
use wiremock::matchers::path;
use wiremock::{Mock, MockServer, ResponseTemplate};

const SECRET: &str = "bench-signing-secret";

async fn fake_slack() -> MockServer {
    let slack = MockServer::builder().disable_request_recording().start().await;
    let ok = |body: serde_json::Value| ResponseTemplate::new(200).set_body_json(body);
    for (method, body) in [
        ("chat.postEphemeral", json!({"ok": true})),
        ("users.info", json!({"ok": true, "user": {"id": "U1", "team_id": "T1"}})),
        (
            "chat.postMessage",
            json!({"ok": true, "channel": "C1", "ts": "1.1", "message": {"ts": "1.1", "text": "x"}}),
        ),
    ] {
        Mock::given(path(format!("/api/{method}")))
            .respond_with(ok(body))
            .mount(&slack)
            .await;
    }
    slack
}

fn event(i: u64) -> String {
    json!({
        "type": "event_callback", "team_id": "T1", "api_app_id": "A1",
        "event_id": format!("EvBench{i}"), "event_time": 1,
        "authorizations": [{"team_id": "T1", "user_id": "UBOT", "is_bot": true}],
        "event": {"type": "app_mention", "user": format!("U{}", i % 200), "channel": "C1",
                  "text": "<@UBOT> how many orders shipped last week?", "ts": format!("1700000000.{i:06}")}
    })
    .to_string()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(label: &str, mut latencies: Vec<Duration>, errors: usize, elapsed: Duration) {
    latencies.sort();
    let n = latencies.len();
    println!(
        "{label}: {n} acks in {:.2}s = {:.0}/s; p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {errors} errors",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.90).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies[n - 1].as_secs_f64() * 1e3,
    );
}

/// Peak and current resident set size of this whole process, in MiB, from /proc (Linux).
fn memory() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mib = |key: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key)?.trim().strip_suffix(" kB")?.parse::<f64>().ok())
            .map_or_else(|| "n/a".to_owned(), |kb| format!("{:.1} MiB", kb / 1024.0))
    };
    format!(
        "peak RSS (VmHWM) {}, current RSS (VmRSS) {}",
        mib("VmHWM:"),
        mib("VmRSS:")
    )
}

async fn send(client: &reqwest::Client, url: &str, body: String) -> Result<Duration, String> {
    let ts = SystemClock.now();
    let signature = sign(SECRET, ts, body.as_bytes());
    let started = Instant::now();
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-slack-request-timestamp", ts.to_string())
        .header("x-slack-signature", signature)
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let elapsed = started.elapsed();
    if response.status() == 200 {
        Ok(elapsed)
    } else {
        Err(format!("status {}", response.status()))
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let rate: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(500);
    let seconds: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let slack = fake_slack().await;
    for (label, workers) in [("intake only", false), ("intake + workers", true)] {
        run(label, workers, rate, seconds, &slack).await;
    }
}

async fn run(label: &str, workers: bool, rate: u64, seconds: u64, slack: &MockServer) {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::from_pairs([
        ("BIND_ADDR", "127.0.0.1:0".to_owned()),
        ("PUBLIC_BASE_URL", "https://bot.example.com".to_owned()),
        ("DATABASE_URL", format!("sqlite://{}/bot.db", dir.path().display())),
        (
            "TOKEN_ENCRYPTION_KEYS",
            "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".to_owned(),
        ),
        ("SLACK_BOT_TOKEN", "xoxb-bench".to_owned()),
        ("SLACK_SIGNING_SECRET", SECRET.to_owned()),
        ("SLACK_API_URL", format!("{}/api", slack.uri())),
        ("DATABRICKS_HOST", "http://127.0.0.1:9".to_owned()),
        ("DATABRICKS_CLIENT_ID", "bench".to_owned()),
        ("GENIE_SPACE_ID", "01ef-bench".to_owned()),
    ]);
    let config = Config::load(&env).unwrap();
    let mut deps = Dependencies::for_config(&config);
    if !workers {
        deps.workers = None;
    }
    let app = Application::build(&config, deps).await.unwrap();
    let url = format!("http://{}/slack/events", app.local_addr());
    let lifecycle = app.lifecycle();
    let server = tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::builder().pool_max_idle_per_host(256).build().unwrap();

    // Warm up connections and the database.
    for i in 0..200 {
        send(&client, &url, event(u64::MAX - i)).await.unwrap();
    }

    // Open loop: one event every 1/rate s, whatever the server's latency.
    let total = rate * seconds;
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let errors = Arc::new(Mutex::new(0usize));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        ticker.tick().await;
        let (client, url, latencies, errors) = (client.clone(), url.clone(), latencies.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            match send(&client, &url, event(i)).await {
                Ok(latency) => latencies.lock().await.push(latency),
                Err(_) => *errors.lock().await += 1,
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let open_loop = std::mem::take(&mut *latencies.lock().await);
    report(
        &format!("{label}, open loop at {rate}/s"),
        open_loop,
        *errors.lock().await,
        elapsed,
    );

    // Closed loop: 32 senders as fast as acks come back, for a sustained-throughput figure.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds.min(5));
    let mut senders = Vec::new();
    for s in 0..32u64 {
        let (client, url) = (client.clone(), url.clone());
        senders.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut errors = 0;
            let mut i = 0;
            while Instant::now() < deadline {
                match send(&client, &url, event(10_000_000 + s * 1_000_000 + i)).await {
                    Ok(latency) => mine.push(latency),
                    Err(_) => errors += 1,
                }
                i += 1;
            }
            (mine, errors)
        }));
    }
    let (mut all, mut errors) = (Vec::new(), 0);
    for sender in senders {
        let (mine, e) = sender.await.unwrap();
        all.extend(mine);
        errors += e;
    }
    report(
        &format!("{label}, closed loop, 32 senders"),
        all,
        errors,
        started.elapsed(),
    );

    println!(
        "{label}, memory of the whole bench process (bot + load generator + fake Slack): {}",
        memory()
    );

    lifecycle.begin_shutdown();
    let _ = server.await;
}
