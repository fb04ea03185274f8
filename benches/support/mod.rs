//! What the black-box benches share: a fake Slack Web API that answers at once, serving a
//! router on loopback, waiting for a child process to listen, and reading its memory.

use std::collections::HashMap;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::routing::any;
use serde_json::{Value, json};

/// When the fake Slack received each person's private prompt (`chat.postEphemeral`).
pub type Prompts = Arc<Mutex<HashMap<String, Instant>>>;

/// Serves `app` on a loopback port; its base URL.
pub async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// A Slack Web API that answers at once: everyone is a person of the bot's workspace
/// (`T0BENCH`) in a channel of its own, messages are taken, and `chat.postEphemeral`
/// notes in `prompts` when each person's prompt came. Returns its `SLACK_API_URL`.
pub async fn fake_slack(prompts: Prompts) -> String {
    async fn method(
        State(prompts): State<Prompts>,
        Path(method): Path<String>,
        Query(query): Query<HashMap<String, String>>,
        body: Bytes,
    ) -> Json<Value> {
        let received = Instant::now();
        let body: Value = serde_json::from_slice(&body).unwrap_or_default();
        let user = query
            .get("user")
            .cloned()
            .or_else(|| body["user"].as_str().map(str::to_owned))
            .unwrap_or_default();
        Json(match method.as_str() {
            "users.info" => json!({"ok": true, "user": {"id": user, "team_id": "T0BENCH", "name": "bench",
                                   "is_bot": false, "profile": {}}}),
            "conversations.info" => json!({"ok": true, "channel": {"id": "C0BENCH", "is_channel": true,
                                           "is_ext_shared": false, "is_pending_ext_shared": false}}),
            "chat.postMessage" | "chat.update" | "chat.delete" => {
                json!({"ok": true, "channel": "C0BENCH", "ts": "1700000000.900000",
                       "message": {"ts": "1700000000.900000", "text": "x"}})
            }
            "chat.postEphemeral" => {
                prompts.lock().unwrap().entry(user).or_insert(received);
                json!({"ok": true, "message_ts": "1700000000.000001"})
            }
            "auth.test" => json!({"ok": true, "user_id": "U0BOT", "team_id": "T0BENCH", "team": "Bench",
                                  "url": "https://bench.slack.com/", "bot_id": "B0BOT"}),
            _ => json!({"ok": true}),
        })
    }
    let app = axum::Router::new()
        .route("/api/{method}", any(method))
        .with_state(prompts);
    format!("{}/api", serve(app).await)
}

/// Waits until something answers on `port`; panics if `child` exits first or nothing
/// listens within 15 s.
pub async fn wait_for(port: u16, child: &mut Child) {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("exited before serving: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {port}");
}

/// `VmHWM` (peak) and `VmRSS` (current) of process `pid`, in MiB.
pub fn memory_of(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mib = |key: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key)?.trim().strip_suffix(" kB")?.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (mib("VmHWM:"), mib("VmRSS:"))
}
