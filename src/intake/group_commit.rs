//! Group commit at intake: deliveries that arrive together are recorded and enqueued in
//! one transaction, and each is acknowledged only once that transaction has committed.
//!
//! One committer task per process takes deliveries from a queue. It commits the first
//! one at once — an idle bot adds no wait — and while a commit is on its way to disk,
//! the deliveries arriving meanwhile queue up and go together in the next one (up to
//! [`MAX_BATCH`]). So batches form only under load, and a commit (one `fsync` with
//! SQLite's `synchronous=FULL`, one WAL flush on Postgres) serves many deliveries.
//! Durability is unchanged: a delivery's caller hears `Enqueued` or `Duplicate` only after
//! the commit that recorded it.
//!
//! If the database refuses a batch, its deliveries are committed one by one, so one that
//! cannot be recorded fails alone; if the database cannot be reached, the whole batch
//! fails at once. A failed delivery's caller answers Slack with a 5xx and Slack retries.
//!
//! Retries are cheap: the keys of deliveries recorded recently by this process are
//! remembered ([`RECENT_KEYS`]), and a retry of one is a duplicate without touching the
//! database. A key not remembered (another replica recorded it, or it is older) goes to
//! the database, which stays the truth.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc, oneshot};

use crate::clock::SharedClock;
use crate::domain::{TeamId, UserId};
use crate::store::Store;
use crate::store::jobs::{Delivery, NewJob};
use crate::telemetry;

/// Most deliveries committed together.
const MAX_BATCH: usize = 256;
/// Deliveries waiting for the committer before callers wait to queue.
const QUEUE: usize = 4096;
/// Delivery keys remembered as recorded: about five minutes of deliveries at 200 a second
/// (Slack retries after a minute, then five), in about 2 MiB.
const RECENT_KEYS: usize = 65_536;

/// A delivery to record, and who waits for the outcome.
struct Pending {
    key: String,
    job: OwnedJob,
    /// The trace of the delivery's acknowledgement, for the job to continue.
    traceparent: Option<String>,
    done: oneshot::Sender<Result<Delivery, sqlx::Error>>,
}

/// A job to enqueue, owned while it waits for its batch.
pub struct OwnedJob {
    pub kind: &'static str,
    pub team: TeamId,
    pub user: UserId,
    pub payload: String,
    pub conversation: Option<String>,
}

impl Pending {
    fn job(&self) -> NewJob<'_> {
        NewJob {
            kind: self.job.kind,
            team: &self.job.team,
            user: &self.job.user,
            payload: &self.job.payload,
            conversation: self.job.conversation.as_deref(),
            traceparent: self.traceparent.as_deref(),
        }
    }
}

/// The way into the committer.
#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<Pending>,
    recent: Arc<Mutex<Recent>>,
}

impl GroupCommit {
    /// Starts the committer over `store`; `wake` is notified once per job enqueued.
    pub fn start(store: Store, clock: SharedClock, wake: Arc<Notify>) -> Self {
        let (queue, pending) = mpsc::channel(QUEUE);
        let recent = Arc::new(Mutex::new(Recent::default()));
        tokio::spawn(commit_batches(store, clock, wake, pending, recent.clone()));
        Self { queue, recent }
    }

    /// Records the delivery `key` and enqueues `job`, returning once it is durable (or
    /// known to be a duplicate).
    pub async fn record(&self, key: &str, job: OwnedJob) -> Result<Delivery, sqlx::Error> {
        if self.recent.lock().expect("not poisoned").contains(key) {
            return Ok(Delivery::Duplicate);
        }
        let (done, outcome) = oneshot::channel();
        let pending = Pending {
            key: key.to_owned(),
            job,
            traceparent: telemetry::traceparent(),
            done,
        };
        self.queue.send(pending).await.map_err(|_| sqlx::Error::PoolClosed)?;
        outcome.await.map_err(|_| sqlx::Error::PoolClosed)?
    }
}

/// The committer: one transaction per batch of whatever has arrived.
async fn commit_batches(
    store: Store,
    clock: SharedClock,
    wake: Arc<Notify>,
    mut pending: mpsc::Receiver<Pending>,
    recent: Arc<Mutex<Recent>>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while pending.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let now = clock.now();
        let deliveries: Vec<(&str, NewJob<'_>)> = batch.iter().map(|p| (p.key.as_str(), p.job())).collect();
        let outcomes: Vec<Result<Delivery, sqlx::Error>> = match store.enqueue_event_jobs(&deliveries, now).await {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            // A statement refused (one delivery's data): the others need not fail with it.
            // A database that is down or stalled would only be waited on once per delivery.
            Err(error @ sqlx::Error::Database(_)) if batch.len() > 1 => {
                tracing::warn!(error = %error, deliveries = batch.len(), "a batch of deliveries failed; recording them one by one");
                let mut outcomes = Vec::with_capacity(deliveries.len());
                for one in &deliveries {
                    let outcome = store.enqueue_event_jobs(std::slice::from_ref(one), now).await;
                    outcomes.push(outcome.map(|recorded| recorded[0]));
                }
                outcomes
            }
            Err(error) => {
                // The cause is logged here; each caller needs only to know that it failed.
                tracing::warn!(error = %error, deliveries = batch.len(), "a batch of deliveries could not be recorded");
                batch.iter().map(|_| Err(sqlx::Error::PoolTimedOut)).collect()
            }
        };
        drop(deliveries);
        {
            let mut recent = recent.lock().expect("not poisoned");
            for (p, outcome) in batch.iter().zip(&outcomes) {
                if outcome.is_ok() {
                    recent.insert(&p.key);
                }
            }
        }
        for (p, outcome) in batch.drain(..).zip(outcomes) {
            if matches!(outcome, Ok(Delivery::Enqueued)) {
                wake.notify_one();
            }
            // The caller may have gone (Slack hung up): the delivery is recorded anyway.
            let _ = p.done.send(outcome);
        }
    }
}

/// The delivery keys recorded most recently, oldest forgotten first. Kept as 64-bit hashes
/// under a key random to this process: two keys sharing one (which would make a new
/// delivery look recorded) are as likely as guessing that key.
#[derive(Default)]
struct Recent {
    hasher: RandomState,
    keys: HashSet<u64>,
    order: VecDeque<u64>,
}

impl Recent {
    fn contains(&self, key: &str) -> bool {
        self.keys.contains(&self.hasher.hash_one(key))
    }

    fn insert(&mut self, key: &str) {
        let key = self.hasher.hash_one(key);
        if !self.keys.insert(key) {
            return;
        }
        self.order.push_back(key);
        if self.order.len() > RECENT_KEYS
            && let Some(oldest) = self.order.pop_front()
        {
            self.keys.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_keys_are_remembered_up_to_the_limit_oldest_forgotten_first() {
        let mut recent = Recent::default();
        for i in 0..=RECENT_KEYS {
            recent.insert(&format!("Ev{i}"));
        }
        recent.insert("Ev5");
        assert!(!recent.contains("Ev0"), "the oldest is forgotten");
        assert!(recent.contains("Ev1") && recent.contains(&format!("Ev{RECENT_KEYS}")));
        assert_eq!(recent.keys.len(), RECENT_KEYS);
        assert_eq!(recent.order.len(), RECENT_KEYS);
    }
}
