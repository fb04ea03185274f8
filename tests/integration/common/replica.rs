//! The binary as a deployment runs it: `serve` as a process of its own, on a port of its
//! own, logging JSON into a file (nobody has to read it while the test runs, issue 17),
//! killed if the test ends before it stops; and Slack's signed deliveries to it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use databricks_slack_bot::slack::signature::sign;
use serde_json::Value;
use tokio::time::Instant;

use super::eventually;

/// How long a replica may take to start and report ready.
const READY_WITHIN: Duration = Duration::from_secs(30);

pub struct Replica {
    pub name: &'static str,
    pub port: u16,
    child: Child,
    log: PathBuf,
    signing_secret: String,
}

impl Replica {
    /// Starts `serve` in `dir` with exactly `env` (and a free port as `BIND_ADDR`), logging
    /// into `dir/replica-{name}.log`.
    pub fn start(dir: &Path, name: &'static str, env: Vec<(&'static str, String)>) -> Self {
        let port = free_port();
        let signing_secret = env
            .iter()
            .find(|(key, _)| *key == "SLACK_SIGNING_SECRET")
            .map(|(_, secret)| secret.clone())
            .unwrap_or_default();
        let log = dir.join(format!("replica-{name}.log"));
        let child = Command::new(super::BIN)
            .arg("serve")
            .current_dir(dir)
            .env_clear()
            .envs(env)
            .env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .env("LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self {
            name,
            port,
            child,
            log,
            signing_secret,
        }
    }

    /// Waits until `/readyz` answers 200, as a readiness probe does; panics with the log
    /// if the process exits first.
    pub async fn wait_until_ready(&mut self) {
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let (name, log, child) = (self.name, &self.log, &mut self.child);
        eventually(&format!("replica {name} to be ready"), READY_WITHIN, || {
            if let Some(status) = child.try_wait().unwrap() {
                let logs = std::fs::read_to_string(log).unwrap_or_default();
                panic!("replica {name} exited early with {status}:\n{logs}");
            }
            let ready = client.get(&url).send();
            async move { ready.await.is_ok_and(|response| response.status() == 200).then_some(()) }
        })
        .await;
    }

    /// Posts `event` as Slack delivers it, signed with the replica's signing secret;
    /// `retry` is Slack's retry number when this is a redelivery.
    pub async fn deliver(
        &self,
        client: &reqwest::Client,
        event: &Value,
        retry: Option<u32>,
    ) -> reqwest::Result<reqwest::Response> {
        post_signed(client, self.port, &self.signing_secret, event.to_string(), retry).await
    }

    /// `GET path`'s body.
    pub async fn get(&self, path: &str) -> String {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        reqwest::get(url).await.unwrap().text().await.unwrap()
    }

    /// Sends SIGTERM, as an orchestrator does to stop it; returns when.
    pub fn sigterm(&self) -> Instant {
        let sent = Instant::now();
        let kill = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        sent
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits (up to `within`) for the process to end.
    pub async fn exited(&mut self, within: Duration) -> ExitStatus {
        let child = &mut self.child;
        eventually(&format!("replica {} to exit", self.name), within, || {
            std::future::ready(child.try_wait().unwrap())
        })
        .await
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Posts `body` to `/slack/events` on `port`, signed with `secret` as Slack signs it, with
/// Slack's retry headers when `retry` is given.
pub async fn post_signed(
    client: &reqwest::Client,
    port: u16,
    secret: &str,
    body: String,
    retry: Option<u32>,
) -> reqwest::Result<reqwest::Response> {
    let ts = jiff::Timestamp::now().as_second();
    let mut request = client
        .post(format!("http://127.0.0.1:{port}/slack/events"))
        .header("content-type", "application/json")
        .header("x-slack-request-timestamp", ts.to_string())
        .header("x-slack-signature", sign(secret, ts, body.as_bytes()));
    if let Some(retry) = retry {
        request = request
            .header("x-slack-retry-num", retry.to_string())
            .header("x-slack-retry-reason", "http_error");
    }
    request.body(body).send().await
}

/// A port free now (another process may yet take it before the bot binds it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
