//! databricks-slack-bot: people ask Databricks questions in Slack and the bot answers with
//! *their own* Databricks identity (OAuth U2M), never a shared service principal.
//!
//! Module map, lowest layer first (each imports only from the ones above it; see
//! `docs/ARCHITECTURE.md`, checked by `.ci/layers.py`):
//! - foundations: [`domain`] (validated ids), [`clock`], [`outbound`] (the HTTP client for
//!   outside calls), [`lifecycle`] (running or draining), [`metrics`], [`crypto`] (the
//!   token vault), [`config`], [`telemetry`].
//! - [`store`] — every SQL query, for SQLite (default) and Postgres.
//! - [`databricks`] — OAuth, REST calls as the person, and the token broker: the only
//!   place a refresh token is opened.
//! - [`agent`] — the `Agent` seam that answers as the asker: Genie, the llm agent, the
//!   company's external agent, ADK.
//! - [`slack`] — the Web API client, request signatures, Sign in with Slack, messages,
//!   buttons and rendering.
//! - [`services`] — what the running parts share, built once.
//! - [`linking`] — from the "Connect Databricks" button to a verified, stored link.
//! - [`jobs`] — the worker pool, and where a job becomes an answer (`jobs::question`).
//! - [`intake`] — where a Slack event, command or click becomes a job.
//! - [`http`] — routes.
//! - [`startup`] — wiring; [`cli`] — the command line.

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
