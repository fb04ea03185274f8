//! The worker pool: takes jobs from the durable queue and runs them.
//!
//! Bounded concurrency overall and per person; a lease on every claimed job, renewed while
//! it runs, so a job whose worker died is taken again once the lease runs out; retries
//! with exponential backoff (or the upstream's `Retry-After`) for transient failures; and
//! when a job keeps failing, its handler tells the person — a question never ends in
//! silence.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::clock::SharedClock;
use crate::lifecycle::Lifecycle;
use crate::slack::api::SlackApiError;
use crate::store::Store;
use crate::store::jobs::Job;
use crate::telemetry;

/// Why a job did not finish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// May succeed later; `retry_after` overrides the backoff when the upstream said so.
    #[error("{reason}")]
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Will not succeed; give up now.
    #[error("{0}")]
    Permanent(String),
}

impl JobError {
    /// A transient failure without a hint of when to retry.
    pub fn transient(reason: impl Into<String>) -> Self {
        JobError::Transient {
            reason: reason.into(),
            retry_after: None,
        }
    }
}

/// Transient reasons are said to the person when retries run out, so they are plain
/// words; the cause is logged here. A row the code cannot read stays unreadable however
/// often it is retried, so that is permanent.
impl From<sqlx::Error> for JobError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::Decode(_)
            | sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::TypeNotFound { .. } => {
                tracing::error!(error = %error, "unreadable data in the database");
                JobError::Permanent("my database holds something I cannot read".into())
            }
            error => {
                tracing::warn!(error = %error, "database error in a job");
                JobError::transient("my database is not answering")
            }
        }
    }
}

impl From<SlackApiError> for JobError {
    fn from(error: SlackApiError) -> Self {
        match error {
            SlackApiError::RateLimited { retry_after } => JobError::Transient {
                reason: "Slack is rate limiting me".into(),
                retry_after,
            },
            e if e.is_transient() => {
                tracing::warn!(error = %e, "Slack call failed");
                JobError::transient("Slack is not answering me")
            }
            e => JobError::Permanent(e.to_string()),
        }
    }
}

/// How a job ended well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// Finished.
    Finished,
    /// Waiting for its person to connect Databricks; linking queues it again.
    Parked,
}

/// Runs one kind of job.
#[async_trait]
pub trait JobHandler: Send + Sync + 'static {
    /// Does the job's work.
    async fn run(&self, job: &Job) -> Result<Done, JobError>;
    /// Called once when the job is abandoned, to tell the person. `reference` identifies
    /// the job in logs.
    async fn give_up(&self, job: &Job, error: &JobError, reference: &str);
    /// Called once for a due job that cannot start yet (its person's other jobs hold
    /// the slots, or an earlier job of its conversation runs first), to show it was taken.
    async fn waiting(&self, job: &Job);
}

/// Worker pool settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Jobs run at once by this process.
    pub concurrency: usize,
    /// Jobs of one person running at once (across processes sharing the database).
    pub per_user_limit: i64,
    /// How long a claim lasts without renewal.
    pub lease: Duration,
    /// Claims of one job before it is abandoned.
    pub max_attempts: i64,
    /// First retry delay; doubled each attempt.
    pub base_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// How often to look for due jobs when nothing wakes the pool.
    pub poll_interval: Duration,
}

/// Longest the jobs cut off at the drain deadline may take to be handed back.
const HAND_BACK_WITHIN: Duration = Duration::from_secs(2);
/// Held-back jobs told they wait, at most, each time the pool finds nothing to run.
const WAITING_BATCH: i64 = 32;

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 8,
            per_user_limit: 2,
            lease: Duration::from_secs(60),
            max_attempts: 5,
            base_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(300),
            poll_interval: Duration::from_millis(500),
        }
    }
}

/// The pool.
#[derive(Clone)]
pub struct Workers {
    store: Store,
    clock: SharedClock,
    handler: Arc<dyn JobHandler>,
    config: WorkerConfig,
    wake: Arc<Notify>,
}

impl Workers {
    /// A pool running `handler` over `store`'s queue; `wake` is notified on enqueue.
    pub fn new(
        store: Store,
        clock: SharedClock,
        handler: Arc<dyn JobHandler>,
        config: WorkerConfig,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            clock,
            handler,
            config,
            wake,
        }
    }

    /// Claims and runs jobs until shutdown begins, then waits up to `drain` for running
    /// jobs. Jobs still running after that are cut off and handed back to the queue, so
    /// another replica takes them up at once (one whose hand-back cannot be recorded is
    /// retaken when its lease runs out).
    /// Whenever nothing can be claimed, jobs held back behind others are told they wait
    /// (one pass at a time, holding one of the pool's permits while it runs).
    pub async fn run(self, lifecycle: Lifecycle, drain: Duration) {
        let permits = Arc::new(Semaphore::new(self.config.concurrency));
        let tracker = TaskTracker::new();
        let cut_off = CancellationToken::new();
        let announcing = Arc::new(Semaphore::new(1));
        // Jobs queued by another replica wake this pool too (Postgres).
        let watching = self.store.watch_queued_jobs(self.wake.clone());
        loop {
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                () = lifecycle.draining() => break,
            };
            let now = self.clock.now();
            let lease_until = now + self.config.lease.as_secs() as i64;
            match self.store.claim_job(now, lease_until, self.config.per_user_limit).await {
                Ok(Some(job)) => {
                    let (worker, cut_off) = (self.clone(), cut_off.clone());
                    let span = tracing::info_span!(
                        "job",
                        otel.name = tracing::field::Empty,
                        otel.kind = tracing::field::Empty,
                        otel.status_code = tracing::field::Empty,
                        id = job.id,
                        kind = %job.kind,
                        attempt = job.attempts
                    );
                    // The job's spans join the trace of the delivery that enqueued it.
                    telemetry::describe_span(&span, "consumer", || format!("job {}", job.kind));
                    telemetry::continue_trace(&span, job.traceparent.as_deref());
                    tracker.spawn(
                        async move {
                            worker.execute(&job, &cut_off).await;
                            drop(permit);
                        }
                        .instrument(span),
                    );
                    continue;
                }
                Ok(None) => {
                    if let Ok(pass) = announcing.clone().try_acquire_owned() {
                        let worker = self.clone();
                        tracker.spawn(async move {
                            worker.announce_waiting(now).await;
                            drop((pass, permit));
                        });
                        continue;
                    }
                }
                Err(error) => tracing::warn!(error = %error, "could not claim a job; will retry"),
            }
            drop(permit);
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.config.poll_interval) => {}
                () = lifecycle.draining() => break,
            }
        }
        if let Some(watching) = watching {
            watching.abort();
        }
        tracker.close();
        if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
            tracing::warn!("drain deadline passed with jobs still running; handing them back to the queue");
            cut_off.cancel();
            // Bounded: the database may be what holds the drain up.
            if tokio::time::timeout(HAND_BACK_WITHIN, tracker.wait()).await.is_err() {
                tracing::warn!(
                    "work was still running after the hand-back; its jobs will be retaken after their lease"
                );
            }
        }
    }

    /// Tells the people whose due jobs are held back that their job waits.
    async fn announce_waiting(&self, now: i64) {
        let held = match self
            .store
            .held_back_jobs(now, self.config.per_user_limit, WAITING_BATCH)
            .await
        {
            Ok(held) => held,
            Err(error) => {
                tracing::warn!(error = %error, "could not look for jobs held back");
                return;
            }
        };
        for job in held {
            let span = tracing::info_span!("waiting", id = job.id, kind = %job.kind);
            telemetry::continue_trace(&span, job.traceparent.as_deref());
            self.handler.waiting(&job).instrument(span).await;
        }
    }

    /// Runs one claimed job to an outcome, renewing its lease meanwhile. When `cut_off`
    /// fires (the drain deadline passed) the run is dropped where it is and the job handed
    /// back to the queue, due now; an outcome already reached is recorded whatever
    /// happens, so a run that ended is never handed back.
    async fn execute(&self, job: &Job, cut_off: &CancellationToken) {
        // `None`: cut off at the drain deadline.
        let outcome = {
            let renewal = self.keep_lease(job);
            tokio::pin!(renewal);
            tokio::select! {
                outcome = self.handler.run(job) => Some(outcome),
                () = &mut renewal => {
                    // Another worker holds the job now; it owns the outcome.
                    tracing::warn!("lease lost to another worker; stopping this run");
                    return;
                }
                () = cut_off.cancelled() => None,
            }
        };
        if !matches!(outcome, Some(Ok(_))) {
            tracing::Span::current().record("otel.status_code", "error");
        }
        let now = self.clock.now();
        let reference = job.reference();
        let recorded = match &outcome {
            None => {
                let handed_back = self
                    .store
                    .retry_job(job, now, now, "cut off by a replica's shutdown")
                    .await;
                if matches!(handed_back, Ok(true)) {
                    tracing::info!("handed the job back to the queue at the drain deadline");
                }
                handed_back
            }
            Some(Ok(Done::Finished)) => self.store.complete_job(job, now).await,
            Some(Ok(Done::Parked)) => self.store.park_job(job, now).await,
            Some(Err(error @ JobError::Transient { retry_after, .. })) if job.attempts < self.config.max_attempts => {
                let delay = retry_after.unwrap_or_else(|| self.backoff(job.attempts));
                tracing::warn!(error = %error, retry_in_s = delay.as_secs(), "job failed; will retry");
                self.store
                    .retry_job(job, now, retry_at(now, delay), &error.to_string())
                    .await
            }
            Some(Err(error)) => {
                tracing::error!(error = %error, reference, "job abandoned");
                self.handler.give_up(job, error, &reference).await;
                self.store.fail_job(job, now, &error.to_string()).await
            }
        };
        match recorded {
            Ok(true) => {}
            Ok(false) => tracing::warn!("job was taken over by another worker before it finished"),
            Err(error) => tracing::error!(error = %error, "could not record the job's outcome; it will run again"),
        }
    }

    /// Renews the lease every third of its length; completes only if the lease is lost.
    async fn keep_lease(&self, job: &Job) {
        let every = self.config.lease / 3;
        loop {
            tokio::time::sleep(every).await;
            let until = self.clock.now() + self.config.lease.as_secs() as i64;
            match self.store.renew_lease(job, until).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(error) => tracing::warn!(error = %error, "could not renew a job lease"),
            }
        }
    }

    fn backoff(&self, attempt: i64) -> Duration {
        let factor = 1u32 << attempt.clamp(1, 16).saturating_sub(1);
        (self.config.base_backoff * factor).min(self.config.max_backoff)
    }
}

/// Longest a job waits before its next try, whatever a `Retry-After` asked for: a
/// question an hour late is as good as lost, and a huge header must not overflow.
const MAX_RETRY_DELAY_SECONDS: u64 = 3600;

/// When a job failing at `now` is tried again after `delay`: at least a second later, at
/// most [`MAX_RETRY_DELAY_SECONDS`].
fn retry_at(now: i64, delay: Duration) -> i64 {
    now.saturating_add(delay.as_secs().clamp(1, MAX_RETRY_DELAY_SECONDS) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A Retry-After of any size (the fuzz target found values that overflowed) gives a
    // retry time between one second and an hour ahead.
    #[test]
    fn any_retry_after_gives_a_retry_within_the_hour() {
        assert_eq!(retry_at(100, Duration::ZERO), 101);
        assert_eq!(retry_at(100, Duration::from_secs(30)), 130);
        for huge in [u64::MAX, 1 << 63, i64::MAX as u64] {
            assert_eq!(retry_at(100, Duration::from_secs(huge)), 3700);
        }
        assert_eq!(retry_at(i64::MAX - 5, Duration::from_secs(30)), i64::MAX);
    }

    #[test]
    fn an_unreadable_row_is_permanent_and_an_unreachable_database_transient() {
        let decode = JobError::from(sqlx::Error::Decode("links row has an invalid team_id".into()));
        assert!(matches!(decode, JobError::Permanent(_)), "{decode:?}");
        let missing = JobError::from(sqlx::Error::ColumnNotFound("outbox".into()));
        assert!(matches!(missing, JobError::Permanent(_)), "{missing:?}");
        let down = JobError::from(sqlx::Error::PoolTimedOut);
        assert!(matches!(down, JobError::Transient { .. }), "{down:?}");
    }
}
