//! Where Slack payloads become jobs: events, slash commands and interactions, over HTTP
//! (routes in [`crate::http::slack`]) or Socket Mode. Nothing here talks to Databricks or
//! answers anyone; it records what was asked, durably, before Slack is acknowledged.

pub mod commands;
pub mod events;
pub mod group_commit;
pub mod interactions;
pub mod socket_mode;

use crate::services::Services;
use commands::Commands;
use events::Intake;
use interactions::Interactions;

/// What Slack deliveries are handed to, over HTTP and Socket Mode alike.
#[derive(Clone)]
pub struct SlackIntake {
    pub events: Intake,
    pub interactions: Interactions,
    pub commands: Commands,
}

impl SlackIntake {
    /// Intake into `services`' queue.
    pub fn new(services: &Services) -> Self {
        let events = Intake::new(services.store.clone(), services.clock.clone(), services.wake.clone());
        Self {
            interactions: Interactions { intake: events.clone() },
            commands: Commands {
                intake: events.clone(),
                store: services.store.clone(),
                slack: services.slack.clone(),
                public_base_url: services.public_base_url.clone(),
                clock: services.clock.clone(),
                genie_spaces: services.genie_spaces.clone(),
            },
            events,
        }
    }
}
