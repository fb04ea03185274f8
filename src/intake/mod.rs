//! Where Slack payloads become jobs: events, slash commands and interactions, over HTTP
//! (routes in [`crate::http::slack`]) or Socket Mode. Nothing here talks to Databricks or
//! answers anyone; it records what was asked, durably, before Slack is acknowledged.

pub mod commands;
pub mod events;
pub mod interactions;
pub mod socket_mode;
