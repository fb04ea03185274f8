//! The integration tests, one binary: the app on port 0 against fake Slack and Databricks
//! servers on loopback, real SQLite files and the local Postgres (`TEST_DATABASE_URL`).
//! One binary links once, and keeps the build's disk use and link time small.

mod common;

mod account;
mod agent_external;
mod agent_genie;
mod agent_llm;
mod alerts;
mod answers;
mod assistant;
mod browser_linking;
mod charts;
mod cli;
mod entra_obo;
mod exposure;
mod feedback;
mod http;
mod lifecycle_purge;
mod linking;
mod log_pipe;
mod oidc_conformance;
mod refusals;
mod rollout;
mod slack_intake;
mod slack_sign_in;
mod socket_mode;
mod sql_results;
mod store;
mod streaming;
mod token_broker;
mod token_federation;
mod traces;
