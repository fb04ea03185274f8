//! The company's own agent over plain HTTP.

use async_trait::async_trait;
use url::Url;

use crate::agent::{Agent, AgentAnswer, AgentError, AgentRequest, Progress};

pub struct HttpAgent {
    http: reqwest::Client,
    url: Url,
}

impl HttpAgent {
    pub fn new(http: reqwest::Client, url: Url) -> Self {
        Self { http, url }
    }
}

#[async_trait]
impl Agent for HttpAgent {
    fn name(&self) -> &str {
        "your agent"
    }

    async fn answer(&self, _request: &AgentRequest, _progress: &dyn Progress) -> Result<AgentAnswer, AgentError> {
        Err(AgentError::Failed("not built yet".into()))
    }
}
