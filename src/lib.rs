//! databricks-slack-bot: people ask Databricks questions in Slack and the bot answers with
//! *their own* Databricks identity (OAuth U2M), never a shared service principal.
//!
//! Module map:
//! - [`cli`] — the command line (`serve`, `check`, `migrate`, `keys`, `links`).
//! - [`config`] — environment → typed, validated [`config::Config`]; secrets in `secrecy`.
//! - [`domain`] — validated identifiers (Slack team/user ids, workspace hosts).
//! - [`crypto`] — the token vault: AES-256-GCM envelopes bound to team, user, workspace.
//! - [`key_rotation`] — re-sealing stored secrets under the primary key.
//! - [`store`] — every SQL query, for SQLite (default) and Postgres.
//! - [`http`] — routes, shared state, middleware, health and metrics.
//! - [`startup`] — binding, serving and graceful shutdown.
//! - [`telemetry`] — logging setup.
//! - [`clock`] — time, injectable for tests.
//! - [`slack`] — request signing, event intake, the Web API client, Socket Mode, messages.
//! - [`worker`] — the pool that runs queued jobs, with leases and retries.
//! - [`retention`] — the scheduled purge of what is past its time (event ids, finished jobs, …).
//! - [`questions`] — a queued question becomes an answer or a "Connect Databricks" prompt.
//! - [`breaker`] — the circuit breaker that pauses asking an agent that keeps failing.
//! - [`sharing`] — "Share in channel" for private answers.
//! - [`account`] — App Home, Connect there, and Disconnect: a person's link as they control it.
//! - [`linking`] — from the "Connect Databricks" button to a verified, stored link.
//! - [`databricks`] — OAuth, the token broker, REST calls as the person.
//! - [`agent`] — the `Agent` seam that answers as the asker: Genie, the llm agent, http, ADK.
//! - [`outbound`] — the HTTP client for outbound calls: no redirects, timeouts.

pub mod agent;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod databricks;
pub mod domain;
pub mod http;
pub mod intake;
pub mod jobs;
pub mod lifecycle;
pub mod linking;
pub mod metrics;
pub mod outbound;
pub mod services;
pub mod slack;
pub mod startup;
pub mod store;
pub mod telemetry;
