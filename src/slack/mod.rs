//! The Slack side as an outside system: request signing, Sign in with Slack, the Web API
//! client, the messages the bot sends and the buttons in them. Turning Slack payloads into jobs is
//! [`crate::intake`]'s.

pub mod actions;
pub mod api;
pub mod chart;
pub mod envelope;
pub mod messages;
pub mod oidc;
pub mod render;
pub mod signature;
