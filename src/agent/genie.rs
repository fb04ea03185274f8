//! A Databricks Genie space, asked as the person.

use async_trait::async_trait;

use crate::agent::{Agent, AgentAnswer, AgentError, AgentRequest, Progress};

pub struct Genie {
    http: reqwest::Client,
    space_id: String,
}

impl Genie {
    pub fn new(http: reqwest::Client, space_id: String) -> Self {
        Self { http, space_id }
    }
}

#[async_trait]
impl Agent for Genie {
    fn name(&self) -> &str {
        "Genie"
    }

    async fn answer(&self, _request: &AgentRequest, _progress: &dyn Progress) -> Result<AgentAnswer, AgentError> {
        Err(AgentError::Failed("not built yet".into()))
    }
}
