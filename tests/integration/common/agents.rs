//! The agent tests' asker, the token check on what the agent sent, and the record of what
//! an agent showed while it worked.

use std::sync::Mutex;

use async_trait::async_trait;
use databricks_slack_bot::agent::{AgentRequest, Progress, Thread, UserContext};
use databricks_slack_bot::domain::{TeamId, UserId, WorkspaceHost};
use secrecy::SecretString;
use serde_json::Value;
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

/// Every status the agent showed, as the person would have seen it.
#[derive(Default)]
pub struct Shown(Mutex<Vec<String>>);

#[async_trait]
impl Progress for Shown {
    async fn working_on(&self, status: &str) {
        self.0.lock().unwrap().push(status.to_owned());
    }
}

impl Shown {
    pub fn seen(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
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
