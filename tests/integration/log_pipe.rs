//! Issue 17: logging never stops the bot. Its stderr goes to a pipe nobody reads, or to
//! one whose reader has exited, as with a stalled log shipper or `serve | head`: requests
//! are still answered, dropped lines are counted, and SIGTERM still ends the process. A
//! drain that cannot finish is ended by the hard deadline.

use std::io::{PipeReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cli::{assert_no_canary, post_mention, set, valid_env, wait_until_serving};
use crate::common::replica::free_port;
use crate::common::{TestDb, eventually};

/// How long the bot's drain may take in these tests (`SHUTDOWN_DRAIN_SECONDS`).
const DRAIN: Duration = Duration::from_secs(3);

/// The bot's process, killed if the test ends (or fails) before it does.
struct Bot(Child);

impl std::ops::Deref for Bot {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Bot {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `serve` on `port` with its stderr into `stderr`, logging `rust_log`.
fn start(db: &TestDb, port: u16, rust_log: &str, stderr: Stdio) -> Bot {
    let mut env = valid_env(&db.url);
    set(&mut env, "BIND_ADDR", format!("127.0.0.1:{port}"));
    set(&mut env, "RUST_LOG", rust_log.to_owned());
    set(&mut env, "SHUTDOWN_DRAIN_SECONDS", DRAIN.as_secs().to_string());
    Command::new(crate::common::BIN)
        .current_dir(db.dir.path())
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map(Bot)
        .unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// `count` GETs of `/healthz`, eight at a time; every one must be answered 200.
async fn health_checks(port: u16, count: usize) {
    let client = client();
    let senders: Vec<_> = (0..8)
        .map(|sender| {
            let client = client.clone();
            tokio::spawn(async move {
                for _ in (sender..count).step_by(8) {
                    let response = client
                        .get(format!("http://127.0.0.1:{port}/healthz"))
                        .send()
                        .await
                        .expect("/healthz answers");
                    assert_eq!(response.status(), 200);
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.unwrap();
    }
}

/// `count` distinct signed `app_mention` deliveries; every one must be acknowledged.
async fn signed_events(port: u16, count: usize) {
    let client = client();
    for i in 0..count {
        let response = post_mention(&client, port, &format!("EvLogPipe{i}"), i)
            .await
            .expect("the delivery is acknowledged");
        assert_eq!(response.status(), 200, "delivery {i}");
    }
}

/// `log_lines_dropped_total{reason}` from `/metrics`.
async fn dropped(port: u16, reason: &str) -> u64 {
    let metrics = client()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .expect("/metrics answers")
        .text()
        .await
        .unwrap();
    let series = format!("log_lines_dropped_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series)?.parse().ok())
        .unwrap_or(0)
}

/// Sends SIGTERM to `child` and waits (up to the drain and a margin) for it to end.
async fn terminate(child: &mut Child, within: Duration) -> (ExitStatus, Duration) {
    let sent = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = eventually("the bot to end on SIGTERM", within, || {
        std::future::ready(child.try_wait().unwrap())
    })
    .await;
    (status, sent.elapsed())
}

/// Everything `reader` yields until its writers are gone, read on a thread as it comes.
fn collect(mut reader: PipeReader) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let into = text.clone();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 8192];
        while let Ok(n) = reader.read(&mut buffer) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    });
    text
}

#[tokio::test]
async fn with_its_log_pipe_unread_the_bot_still_answers_counts_what_it_drops_and_ends_on_sigterm() {
    let db = TestDb::sqlite();
    let port = free_port();
    let (reader, writer) = std::io::pipe().unwrap();
    // `trace` writes far more than the pipe (64 KiB) and the bot's queue hold.
    let mut child = start(&db, port, "trace", writer.into());
    wait_until_serving(port, &mut child).await;

    health_checks(port, 1_000).await;
    signed_events(port, 100).await;
    // However long it takes to fill the pipe and the queue behind it, requests keep going.
    for _ in 0..40 {
        if dropped(port, "queue_full").await > 0 {
            break;
        }
        health_checks(port, 500).await;
    }
    assert!(dropped(port, "queue_full").await > 0, "lines were dropped, and counted");

    let (status, took) = terminate(&mut child, DRAIN + Duration::from_secs(10)).await;
    assert!(status.success(), "a clean stop: {status}");
    assert!(took < DRAIN, "ended within the drain period, in {took:?}");
    drop(reader);
}

#[tokio::test]
async fn once_the_log_pipe_is_read_again_a_notice_says_how_many_lines_were_dropped() {
    let db = TestDb::sqlite();
    let port = free_port();
    let (reader, writer) = std::io::pipe().unwrap();
    let mut child = start(&db, port, "trace", writer.into());
    wait_until_serving(port, &mut child).await;
    while dropped(port, "queue_full").await == 0 {
        health_checks(port, 500).await;
    }

    let logs = collect(reader);
    let notice = eventually("the dropped-lines notice", Duration::from_secs(20), || {
        let logs = logs.lock().unwrap();
        let notice = logs
            .lines()
            .find(|line| line.contains("log lines were dropped"))
            .map(str::to_owned);
        std::future::ready(notice)
    })
    .await;
    let notice: serde_json::Value = serde_json::from_str(&notice).expect("a JSON line, like every other");
    assert_eq!(notice["level"], "WARN");
    assert!(notice["dropped"].as_u64().unwrap() > 0, "{notice}");

    let (status, _) = terminate(&mut child, DRAIN + Duration::from_secs(10)).await;
    assert!(status.success(), "a clean stop: {status}");
    let logs = eventually("the pipe to close", Duration::from_secs(5), || {
        std::future::ready(Arc::strong_count(&logs).eq(&1).then(|| logs.lock().unwrap().clone()))
    })
    .await;
    assert!(logs.contains("SIGTERM received") && logs.contains("stopped"));
    assert_no_canary(&logs);
}

#[tokio::test]
async fn with_its_log_reader_gone_the_bot_counts_failed_writes_and_ends_on_sigterm() {
    let db = TestDb::sqlite();
    let port = free_port();
    let (mut reader, writer) = std::io::pipe().unwrap();
    let mut child = start(&db, port, "info", writer.into());
    wait_until_serving(port, &mut child).await;
    // The reader takes 200 bytes and exits, as `serve | head -c 200` would.
    let head = std::thread::spawn(move || {
        let mut first = [0u8; 200];
        reader.read_exact(&mut first).unwrap();
    });
    health_checks(port, 100).await;
    head.join().unwrap();

    health_checks(port, 200).await;
    signed_events(port, 20).await;
    assert!(
        dropped(port, "write_failed").await > 0,
        "writes failed with EPIPE, and were counted"
    );

    let (status, took) = terminate(&mut child, DRAIN + Duration::from_secs(10)).await;
    assert!(status.success(), "a clean stop: {status}");
    assert!(took < DRAIN, "ended within the drain period, in {took:?}");
}

// A drain that cannot finish (here a database that stops answering: a lock held on the
// jobs table) is ended at the hard deadline, with a last line and a non-zero code.
#[tokio::test]
async fn a_shutdown_that_cannot_finish_is_ended_at_the_hard_deadline() {
    use sqlx::Connection;
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let port = free_port();
    let mut child = start(&db, port, "info", Stdio::piped());
    wait_until_serving(port, &mut child).await;
    let mut lock = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut lock).await.unwrap();
    sqlx::query("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        .execute(&mut lock)
        .await
        .unwrap();
    // A delivery that the locked table holds up: its recording never finishes.
    let stuck = tokio::spawn(async move { signed_events(port, 1).await });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (status, took) = terminate(&mut child, DRAIN + Duration::from_secs(15)).await;
    let mut logs = String::new();
    child.stderr.take().unwrap().read_to_string(&mut logs).unwrap();
    assert_eq!(status.code(), Some(124), "{logs}");
    assert!(
        took >= DRAIN && took < DRAIN + Duration::from_secs(8),
        "ended at the drain period plus the margin, in {took:?}"
    );
    assert!(
        logs.lines()
            .last()
            .is_some_and(|line| line.contains("shutdown did not finish in time; exiting anyway")),
        "{logs}"
    );
    stuck.abort();
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
}
