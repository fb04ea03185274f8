//! Everything Databricks: OAuth (authorization, exchange, refresh), the token broker that
//! keeps one fresh access token per person, and REST calls made as that person.

pub mod api;
pub mod authority;
pub mod bearer;
pub mod broker;
pub mod entra;
pub mod genie;
pub mod oauth;
pub mod sql;

use async_trait::async_trait;

/// Told what an agent is doing, to show the person while they wait.
#[async_trait]
pub trait Progress: Send + Sync {
    /// The agent is now doing `status` (e.g. "Running query…").
    async fn working_on(&self, status: &str);

    /// The agent wrote `text`, the next piece of its answer's prose, to be shown as it
    /// comes. An agent that writes returns an answer whose `text` begins with everything
    /// it wrote, in order; the rest of the answer (tables, SQL, buttons) follows it.
    async fn writing(&self, _text: &str) {}
}

/// Progress nobody watches.
pub struct Unwatched;

#[async_trait]
impl Progress for Unwatched {
    async fn working_on(&self, _status: &str) {}
}
