//! Everything Slack: request signing, turning events into jobs, the Web API client, Socket
//! Mode, and the messages the bot sends.

pub mod api;
pub mod commands;
pub mod intake;
pub mod interactions;
pub mod messages;
pub mod oidc;
pub mod render;
pub mod signature;
pub mod socket_mode;
