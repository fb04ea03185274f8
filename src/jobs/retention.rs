//! The scheduled purge: once at start-up, then every hour, the store forgets what is past
//! its retention (rules in [`crate::store::retention`]). A failed run is logged and the
//! next one tries again; nothing here stops the service.

use std::time::Duration;

use tokio::time::MissedTickBehavior;

use crate::clock::SharedClock;
use crate::lifecycle::Lifecycle;
use crate::store::Store;

/// How often the purge runs.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// Rows per statement: small enough that other writers barely notice.
const BATCH_SIZE: i64 = 500;

/// The purge task.
pub struct Retention {
    store: Store,
    clock: SharedClock,
    interval: Duration,
}

impl Retention {
    /// A task purging `store` as of `clock`, every [`DEFAULT_INTERVAL`].
    pub fn new(store: Store, clock: SharedClock) -> Self {
        Self {
            store,
            clock,
            interval: DEFAULT_INTERVAL,
        }
    }

    /// Runs every `interval` instead (tests).
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Purges now and then every interval until shutdown begins. A run in progress when
    /// it does is abandoned: each batch is its own statement, so nothing is left half done.
    pub async fn run(self, lifecycle: Lifecycle) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = lifecycle.draining() => return,
            }
            tokio::select! {
                () = self.purge_once() => {}
                () = lifecycle.draining() => return,
            }
        }
    }

    async fn purge_once(&self) {
        match self.store.purge_expired(self.clock.now(), BATCH_SIZE).await {
            Ok(expired) if expired.total() > 0 => tracing::info!(
                slack_events = expired.slack_events,
                abandoned_questions = expired.abandoned_questions,
                finished_jobs = expired.finished_jobs,
                conversations = expired.conversations,
                pending_links = expired.pending_links,
                private_answers = expired.private_answers,
                "retention: purged expired rows"
            ),
            Ok(_) => tracing::debug!("retention: nothing to purge"),
            Err(error) => tracing::warn!(error = %error, "retention: purge failed; will try again at the next run"),
        }
    }
}
