//! The Slack side as an outside system: request signing, Sign in with Slack, the Web API
//! client, and the messages the bot sends. Turning Slack payloads into jobs is
//! [`crate::intake`]'s.

pub mod api;
pub mod messages;
pub mod oidc;
pub mod render;
pub mod signature;
