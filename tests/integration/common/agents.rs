//! The agent tests' asker, the token check on what the agent sent, and the record of what
//! an agent showed while it worked.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use databricks_slack_bot::agent::{AgentRequest, Progress, Thread, UserContext};
use databricks_slack_bot::domain::{TeamId, UserId, WorkspaceHost};
use secrecy::SecretString;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use url::Url;
use wiremock::Request;

/// `question` with `token` for the workspace at `host`, from the asker (`T0TEAM1`/`U0ASKER1`,
/// Databricks user 4242, `ada@example.com`) in thread `1712345678.000100` of `C0CHANNEL`.
pub fn request(host: &str, token: &str, question: &str, conversation: Option<Value>) -> AgentRequest {
    AgentRequest {
        question: question.into(),
        context: UserContext {
            host: WorkspaceHost::parse(host).unwrap(),
            access_token: SecretString::from(token),
            team: TeamId::parse("T0TEAM1").unwrap(),
            user: UserId::parse("U0ASKER1").unwrap(),
            databricks_user_id: "4242".into(),
            databricks_user_name: "ada@example.com".into(),
            version: 1,
            renew: None,
        },
        thread: Thread {
            channel: "C0CHANNEL".into(),
            thread_ts: Some("1712345678.000100".into()),
        },
        conversation,
        key: "job-1:1712345678.000200".into(),
        retry_since: None,
    }
}

/// Asserts that every one of `requests` carried `token` as its bearer token.
pub fn assert_bearer(requests: &[Request], token: &str) {
    for request in requests {
        let authorization = request.headers.get("authorization").map(|v| v.to_str().unwrap());
        assert_eq!(
            authorization,
            Some(format!("Bearer {token}").as_str()),
            "{}",
            request.url
        );
    }
}

/// Every status the agent showed and every piece of prose it wrote, as the person would
/// have seen them.
#[derive(Default)]
pub struct Shown {
    statuses: Mutex<Vec<String>>,
    written: Mutex<Vec<String>>,
}

#[async_trait]
impl Progress for Shown {
    async fn working_on(&self, status: &str) {
        self.statuses.lock().unwrap().push(status.to_owned());
    }

    async fn writing(&self, text: &str) {
        self.written.lock().unwrap().push(text.to_owned());
    }
}

impl Shown {
    /// The statuses, in order.
    pub fn seen(&self) -> Vec<String> {
        self.statuses.lock().unwrap().clone()
    }

    /// The pieces of prose written, in order.
    pub fn written(&self) -> Vec<String> {
        self.written.lock().unwrap().clone()
    }
}

/// Renews a refused token as the broker would: `at-renewed`, version 2. Counts renewals.
#[derive(Default)]
pub struct Renewer {
    pub renewals: Mutex<Vec<i64>>,
}

#[async_trait]
impl databricks_slack_bot::databricks::bearer::Renew for Renewer {
    async fn renew(&self, refused_version: i64) -> Option<(SecretString, i64)> {
        self.renewals.lock().unwrap().push(refused_version);
        Some((SecretString::from("at-renewed"), 2))
    }
}

/// What a streaming agent does after the first piece of its answer.
#[derive(Clone, Copy)]
pub enum Then {
    /// Sends nothing more and keeps the connection open.
    GoesQuiet,
    /// Closes the connection mid-stream (the chunked body never ends).
    Resets,
}

/// A server that answers every request (any path) `200 text/event-stream` with `first`
/// and then does `then`; how many requests it got.
pub async fn streaming_then(first: String, then: Then) -> (Url, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&requests);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let first = first.clone();
            tokio::spawn(async move {
                let mut request = vec![0; 64 * 1024];
                let _ = socket.read(&mut request).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                let chunk = format!("{:x}\r\n{first}\r\n", first.len());
                let _ = socket.write_all(format!("{head}{chunk}").as_bytes()).await;
                match then {
                    Then::GoesQuiet => tokio::time::sleep(Duration::from_secs(5)).await,
                    Then::Resets => drop(socket),
                }
            });
        }
    });
    (url, requests)
}
