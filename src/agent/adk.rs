//! The company's own agent on a Google ADK api_server.

use async_trait::async_trait;
use url::Url;

use crate::agent::{Agent, AgentAnswer, AgentError, AgentRequest, Progress};

pub struct Adk {
    http: reqwest::Client,
    url: Url,
    app_name: String,
}

impl Adk {
    pub fn new(http: reqwest::Client, url: Url, app_name: String) -> Self {
        Self { http, url, app_name }
    }
}

#[async_trait]
impl Agent for Adk {
    fn name(&self) -> &str {
        "your ADK agent"
    }

    async fn answer(&self, _request: &AgentRequest, _progress: &dyn Progress) -> Result<AgentAnswer, AgentError> {
        Err(AgentError::Failed("not built yet".into()))
    }
}
