//! What the parts of a running bot share, built once at start-up: the store, the Slack
//! client, the token broker, the clock, metrics and the worker wake-up. Each part takes
//! the pieces it needs from here instead of having them filled in by hand.

use std::sync::Arc;

use tokio::sync::Notify;
use url::Url;

use crate::clock::SharedClock;
use crate::config::{Config, GenieSpaces};
use crate::crypto::Vault;
use crate::databricks::authority::Authority;
use crate::databricks::broker::TokenBroker;
use crate::databricks::oauth;
use crate::metrics::Metrics;
use crate::slack::api::SlackApi;
use crate::store::Store;

/// The shared pieces. Cheap to clone.
#[derive(Clone)]
pub struct Services {
    pub store: Store,
    pub slack: SlackApi,
    pub vault: Vault,
    /// How Databricks access tokens are obtained (`DATABRICKS_AUTH`).
    pub oauth: Authority,
    /// The client `oauth` calls Databricks with (no redirects, timeouts); also for SCIM
    /// Me at link time and for sending a rating to Genie.
    pub http: reqwest::Client,
    /// The one place refresh tokens are opened.
    pub broker: Arc<TokenBroker>,
    pub clock: SharedClock,
    pub metrics: Arc<Metrics>,
    /// Where the bot is reached from browsers (link pages, OAuth callbacks).
    pub public_base_url: Url,
    /// The suggested prompts of a new assistant thread (`ASSISTANT_PROMPTS`).
    pub assistant_prompts: Vec<String>,
    /// Which Genie space answers in which channel (shown in status and App Home).
    pub genie_spaces: GenieSpaces,
    /// Notified whenever a job is queued, so a worker takes it at once.
    pub wake: Arc<Notify>,
}

impl Services {
    /// Opens (and migrates) the store and builds the clients `config` describes.
    pub async fn build(config: &Config, clock: SharedClock) -> anyhow::Result<Self> {
        let store = Store::open(&config.database).await?;
        let metrics = Arc::new(Metrics::new());
        let slack = SlackApi::new(&config.slack.api_url, &config.slack.bot_token)?.with_metrics(metrics.clone());
        let http = oauth::http_client();
        let oauth = Authority::new(&config.databricks, &config.public_base_url, http.clone());
        let broker = Arc::new(TokenBroker::new(
            store.clone(),
            config.vault.clone(),
            oauth.clone(),
            clock.clone(),
            metrics.clone(),
        ));
        Ok(Self {
            store,
            slack,
            vault: config.vault.clone(),
            oauth,
            http,
            broker,
            clock,
            metrics,
            public_base_url: config.public_base_url.clone(),
            genie_spaces: config.agent.genie_spaces.clone(),
            assistant_prompts: config.slack.assistant_prompts.clone(),
            wake: Arc::new(Notify::new()),
        })
    }
}
