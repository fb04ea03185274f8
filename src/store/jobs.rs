//! `jobs` and `slack_events`: the durable queue behind every acknowledged Slack event.
//!
//! An event is recorded and its job enqueued in one transaction, before Slack gets its
//! 200. If that transaction fails, Slack gets a 500 and retries — and since the event id
//! was never stored, the retry is processed. If it commits, the retry is a duplicate.
//!
//! Workers claim jobs with a lease and a fencing token (`attempts`): a worker whose lease
//! expired and whose job was taken by another cannot complete or reschedule it.

use std::collections::HashSet;

use sqlx::FromRow;

use super::{Pool, Store, WritePool, on_pool, person};
use crate::domain::{TeamId, UserId};

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    /// What kind of work (e.g. `question`).
    pub kind: &'a str,
    pub team: &'a TeamId,
    pub user: &'a UserId,
    /// JSON payload understood by the job's handler.
    pub payload: &'a str,
    /// The conversation the job belongs to, if any: jobs with the same key run one at a
    /// time, in order.
    pub conversation: Option<&'a str>,
    /// The W3C `traceparent` of the span that enqueued it, when traces are exported.
    pub traceparent: Option<&'a str>,
}

/// A claimed job.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    pub team: TeamId,
    pub user: UserId,
    pub payload: String,
    /// How many times the job has been claimed, this claim included; the fencing token.
    pub attempts: i64,
    /// When the job was enqueued (Unix seconds).
    pub created_at: i64,
    /// What an earlier run left to send (JSON understood by the job's handler).
    pub outbox: Option<String>,
    /// How many of the outbox's messages Slack has taken.
    pub outbox_sent: i64,
    /// The trace its question belongs to (W3C `traceparent`), when traces are exported.
    pub traceparent: Option<String>,
}

/// A `jobs` row as the claim returns it.
#[derive(FromRow)]
struct JobRow {
    id: i64,
    kind: String,
    team_id: String,
    user_id: String,
    payload: String,
    attempts: i64,
    created_at: i64,
    outbox: Option<String>,
    outbox_sent: i64,
    traceparent: Option<String>,
}

impl TryFrom<JobRow> for Job {
    type Error = sqlx::Error;

    fn try_from(row: JobRow) -> Result<Self, Self::Error> {
        let (team, user) = person("jobs", &row.team_id, &row.user_id)?;
        Ok(Job {
            id: row.id,
            kind: row.kind,
            team,
            user,
            payload: row.payload,
            attempts: row.attempts,
            created_at: row.created_at,
            outbox: row.outbox,
            outbox_sent: row.outbox_sent,
            traceparent: row.traceparent,
        })
    }
}

impl Job {
    /// The reference people are given when their job fails; logs carry the same one.
    pub fn reference(&self) -> String {
        format!("job-{}", self.id)
    }
}

/// The INSERT recording a delivered Slack event id, which does nothing for an id already
/// recorded (check `rows_affected`). A macro so it expands inside each backend's arm of
/// `on_pool!`, in the caller's transaction.
macro_rules! record_slack_event {
    ($event_id:expr, $team:expr, $now:expr) => {
        sqlx::query(
            "INSERT INTO slack_events (event_id, team_id, received_at) VALUES ($1, $2, $3) \
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind($event_id)
        .bind($team.as_str())
        .bind($now)
    };
}
pub(crate) use record_slack_event;

/// What happened to a delivered event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// First delivery: recorded, job enqueued.
    Enqueued,
    /// Already recorded; nothing done.
    Duplicate,
}

/// The claim of the first job, by id, of those that `$which` picks, with `$index` telling
/// SQLite to walk the queue in id order (the first that may run is usually among the
/// first looked at; sorting every due job instead grew with the backlog) and `$lock` as
/// the row-locking clause: `FOR UPDATE SKIP LOCKED` lets several Postgres replicas claim
/// side by side; SQLite has one writer at a time anyway.
macro_rules! claim_sql {
    ($which:literal, $index:literal, $lock:literal) => {
        concat!(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_until = $1, updated_at = $2 ",
            "WHERE id = (SELECT j.id FROM jobs j ",
            $index,
            " WHERE ",
            $which,
            " AND (SELECT COUNT(*) FROM jobs r WHERE r.team_id = j.team_id AND r.user_id = j.user_id ",
            "AND r.state = 'running' AND r.lease_until >= $2) < $3 ",
            // One run at a time per conversation, in order: an earlier job of the same
            // conversation still queued or running holds this one back.
            "AND (j.conversation_key IS NULL OR NOT EXISTS (SELECT 1 FROM jobs c ",
            "WHERE c.conversation_key = j.conversation_key AND c.id < j.id AND c.state IN ('queued', 'running'))) ",
            "ORDER BY j.id LIMIT 1 ",
            $lock,
            ") RETURNING id, kind, team_id, user_id, payload, attempts, created_at, outbox, outbox_sent, traceparent"
        )
    };
}

impl Store {
    /// Records each delivery and enqueues its job, all in one transaction (group commit:
    /// one write to disk for many deliveries). Each is [`Delivery::Duplicate`] when its
    /// event id was recorded before, in an earlier transaction or earlier in this one. If
    /// anything fails, nothing of the batch is recorded.
    pub async fn enqueue_event_jobs(
        &self,
        deliveries: &[(&str, NewJob<'_>)],
        now: i64,
    ) -> Result<Vec<Delivery>, sqlx::Error> {
        if deliveries.is_empty() {
            return Ok(Vec::new());
        }
        let _waiting = self.intake.batch();
        on_pool!(self.write, |pool| {
            let mut tx = pool.begin_write().await?;
            // Two statements for the whole batch: the event ids, then the jobs of those
            // that were new.
            let mut events = sqlx::QueryBuilder::new("INSERT INTO slack_events (event_id, team_id, received_at) ");
            events.push_values(deliveries, |mut row, (event_id, job)| {
                row.push_bind(*event_id).push_bind(job.team.as_str()).push_bind(now);
            });
            events.push(" ON CONFLICT (event_id) DO NOTHING RETURNING event_id");
            let recorded: Vec<(String,)> = events.build_query_as().fetch_all(&mut *tx).await?;
            let mut new: HashSet<&str> = recorded.iter().map(|(id,)| id.as_str()).collect();
            // The first delivery of each new id is enqueued; any other is a duplicate.
            let outcomes: Vec<Delivery> = deliveries
                .iter()
                .map(|(event_id, _)| {
                    if new.remove(event_id) {
                        Delivery::Enqueued
                    } else {
                        Delivery::Duplicate
                    }
                })
                .collect();
            let enqueued = deliveries
                .iter()
                .zip(&outcomes)
                .filter(|(_, outcome)| **outcome == Delivery::Enqueued)
                .map(|((_, job), _)| job);
            if outcomes.contains(&Delivery::Enqueued) {
                let mut jobs = sqlx::QueryBuilder::new(
                    "INSERT INTO jobs (kind, team_id, user_id, payload, state, attempts, run_after, created_at, \
                     updated_at, conversation_key, traceparent) ",
                );
                jobs.push_values(enqueued, |mut row, job| {
                    row.push_bind(job.kind)
                        .push_bind(job.team.as_str())
                        .push_bind(job.user.as_str())
                        .push_bind(job.payload)
                        .push("'queued'")
                        .push("0")
                        .push_bind(now)
                        .push_bind(now)
                        .push_bind(now)
                        .push_bind(job.conversation)
                        .push_bind(job.traceparent);
                });
                jobs.build().execute(&mut *tx).await?;
                pool.announce_jobs(&mut tx).await?;
                tx.commit().await?;
            } else {
                // Ended explicitly: a dropped transaction would hold its locks until the
                // connection is next used.
                tx.rollback().await?;
            }
            Ok(outcomes)
        })
    }

    /// Claims a runnable job — first one running with an expired lease, else the oldest
    /// queued and due
    /// (its worker died) — whose user has fewer than `per_user_limit` jobs running.
    pub async fn claim_job(&self, now: i64, lease_until: i64, per_user_limit: i64) -> Result<Option<Job>, sqlx::Error> {
        if matches!(self.write, Pool::Sqlite(_)) {
            self.intake.let_through().await;
        }
        // A dead worker's job first (it is older), then the queue.
        let claims = match self.write {
            Pool::Sqlite(_) => [
                claim_sql!(
                    "j.state = 'running' AND j.lease_until < $2",
                    "INDEXED BY jobs_queue",
                    ""
                ),
                claim_sql!("j.state = 'queued' AND j.run_after <= $2", "INDEXED BY jobs_queue", ""),
            ],
            Pool::Postgres(_) => [
                claim_sql!(
                    "j.state = 'running' AND j.lease_until < $2",
                    "",
                    "FOR UPDATE SKIP LOCKED"
                ),
                claim_sql!("j.state = 'queued' AND j.run_after <= $2", "", "FOR UPDATE SKIP LOCKED"),
            ],
        };
        for sql in claims {
            let row: Option<JobRow> = on_pool!(self.write, |pool| {
                sqlx::query_as(sql)
                    .bind(lease_until)
                    .bind(now)
                    .bind(per_user_limit)
                    .fetch_optional(pool)
                    .await
            })?;
            if let Some(row) = row {
                return Job::try_from(row).map(Some);
            }
        }
        Ok(None)
    }

    /// Up to `limit` question jobs that are due but held back behind running ones — their
    /// person already has `per_user_limit` jobs running, or a job of their conversation
    /// runs — and that nobody has told yet that they wait (no outbox). Found from the
    /// running jobs (few), not by looking at every queued one.
    pub async fn held_back_jobs(&self, now: i64, per_user_limit: i64, limit: i64) -> Result<Vec<Job>, sqlx::Error> {
        let rows: Vec<JobRow> = on_pool!(self.read, |pool| {
            sqlx::query_as(
                "SELECT id, kind, team_id, user_id, payload, attempts, created_at, outbox, outbox_sent, traceparent \
                 FROM jobs j \
                 WHERE j.state = 'queued' AND j.run_after <= $1 AND j.kind = 'question' AND j.outbox IS NULL \
                 AND ((j.team_id, j.user_id) IN (SELECT team_id, user_id FROM jobs \
                       WHERE state = 'running' AND lease_until >= $1 \
                       GROUP BY team_id, user_id HAVING COUNT(*) >= $2) \
                   OR j.conversation_key IN (SELECT conversation_key FROM jobs \
                       WHERE state = 'running' AND lease_until >= $1 AND conversation_key IS NOT NULL)) \
                 ORDER BY j.id LIMIT $3",
            )
            .bind(now)
            .bind(per_user_limit)
            .bind(limit)
            .fetch_all(pool)
            .await
        })?;
        rows.into_iter().map(Job::try_from).collect()
    }

    /// Keeps `outbox` (what was shown while the job waits) with a job still queued and
    /// without one. False when a worker took the job meanwhile, or it was kept before.
    pub async fn keep_waiting_outbox(&self, job: &Job, outbox: &str) -> Result<bool, sqlx::Error> {
        on_pool!(self.write, |pool| {
            sqlx::query("UPDATE jobs SET outbox = $1 WHERE id = $2 AND state = 'queued' AND outbox IS NULL")
                .bind(outbox)
                .bind(job.id)
                .execute(pool)
                .await
                .map(|done| done.rows_affected() == 1)
        })
    }

    /// Extends the lease of a job this worker still holds. False when it was lost.
    pub async fn renew_lease(&self, job: &Job, lease_until: i64) -> Result<bool, sqlx::Error> {
        self.update_claimed(
            job,
            "UPDATE jobs SET lease_until = $1 WHERE id = $2 AND attempts = $3 AND state = 'running'",
            lease_until,
            None,
        )
        .await
    }

    /// Keeps what a held job has to send, none of it sent yet, for a retry to resume
    /// from. False when the job was lost to another worker.
    pub async fn keep_outbox(&self, job: &Job, outbox: &str) -> Result<bool, sqlx::Error> {
        on_pool!(self.write, |pool| {
            sqlx::query(
                "UPDATE jobs SET outbox = $1, outbox_sent = 0 WHERE id = $2 AND attempts = $3 AND state = 'running'",
            )
            .bind(outbox)
            .bind(job.id)
            .bind(job.attempts)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() == 1)
        })
    }

    /// Records that Slack has taken `sent` of the outbox's messages (a small write: the
    /// outbox itself, CSV and all, is written once).
    pub async fn tick_outbox(&self, job: &Job, sent: i64) -> Result<bool, sqlx::Error> {
        on_pool!(self.write, |pool| {
            sqlx::query("UPDATE jobs SET outbox_sent = $1 WHERE id = $2 AND attempts = $3 AND state = 'running'")
                .bind(sent)
                .bind(job.id)
                .bind(job.attempts)
                .execute(pool)
                .await
                .map(|done| done.rows_affected() == 1)
        })
    }

    /// How many jobs are in each state (`queued`, `running`, `waiting`, `done`, `failed`),
    /// for `/metrics`.
    pub async fn jobs_per_state(&self) -> Result<Vec<(String, i64)>, sqlx::Error> {
        on_pool!(self.read, |pool| {
            sqlx::query_as("SELECT state, COUNT(*) FROM jobs GROUP BY state")
                .fetch_all(pool)
                .await
        })
    }

    /// Since when the oldest queued job has been due (its `run_after`), if one is due at
    /// `now`: a job waiting for its retry time is not late, one no worker takes is.
    pub async fn oldest_due_job(&self, now: i64) -> Result<Option<i64>, sqlx::Error> {
        on_pool!(self.read, |pool| {
            sqlx::query_scalar("SELECT MIN(run_after) FROM jobs WHERE state = 'queued' AND run_after <= $1")
                .bind(now)
                .fetch_one(pool)
                .await
        })
    }

    /// A person's latest `limit` questions, newest first: each job's payload and state.
    pub async fn recent_questions(
        &self,
        team: &TeamId,
        user: &UserId,
        limit: i64,
    ) -> Result<Vec<(String, String)>, sqlx::Error> {
        on_pool!(self.read, |pool| {
            sqlx::query_as(
                "SELECT payload, state FROM jobs WHERE team_id = $1 AND user_id = $2 AND kind = 'question' \
                 ORDER BY id DESC LIMIT $3",
            )
            .bind(team.as_str())
            .bind(user.as_str())
            .bind(limit)
            .fetch_all(pool)
            .await
        })
    }

    /// A job's outbox and how much of it was sent, as they are now (what was read with
    /// the claim may be older).
    pub async fn job_outbox(&self, job: &Job) -> Result<Option<(String, i64)>, sqlx::Error> {
        on_pool!(self.write, |pool| {
            sqlx::query_as("SELECT outbox, outbox_sent FROM jobs WHERE id = $1 AND outbox IS NOT NULL")
                .bind(job.id)
                .fetch_optional(pool)
                .await
        })
    }

    /// Marks a held job done.
    pub async fn complete_job(&self, job: &Job, now: i64) -> Result<bool, sqlx::Error> {
        self.update_claimed(
            job,
            "UPDATE jobs SET state = 'done', lease_until = NULL, updated_at = $1, outbox = NULL, outbox_sent = 0 \
             WHERE id = $2 AND attempts = $3 AND state = 'running'",
            now,
            None,
        )
        .await
    }

    /// Puts a held job back in the queue to run again at `run_after`.
    pub async fn retry_job(&self, job: &Job, now: i64, run_after: i64, error: &str) -> Result<bool, sqlx::Error> {
        on_pool!(self.write, |pool| {
            sqlx::query(
                "UPDATE jobs SET state = 'queued', lease_until = NULL, run_after = $1, updated_at = $2, error = $3 \
                 WHERE id = $4 AND attempts = $5 AND state = 'running'",
            )
            .bind(run_after)
            .bind(now)
            .bind(error)
            .bind(job.id)
            .bind(job.attempts)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() == 1)
        })
    }

    /// Parks a held job until its person connects Databricks (linking queues it again).
    pub async fn park_job(&self, job: &Job, now: i64) -> Result<bool, sqlx::Error> {
        self.update_claimed(
            job,
            "UPDATE jobs SET state = 'waiting', lease_until = NULL, updated_at = $1 \
             WHERE id = $2 AND attempts = $3 AND state = 'running'",
            now,
            None,
        )
        .await
    }

    /// Marks a held job as failed for good.
    pub async fn fail_job(&self, job: &Job, now: i64, error: &str) -> Result<bool, sqlx::Error> {
        self.update_claimed(
            job,
            "UPDATE jobs SET state = 'failed', lease_until = NULL, updated_at = $1, error = $4, outbox = NULL, \
             outbox_sent = 0 WHERE id = $2 AND attempts = $3 AND state = 'running'",
            now,
            Some(error),
        )
        .await
    }

    async fn update_claimed(&self, job: &Job, sql: &str, time: i64, error: Option<&str>) -> Result<bool, sqlx::Error> {
        on_pool!(self.write, |pool| {
            let mut query = sqlx::query(sql).bind(time).bind(job.id).bind(job.attempts);
            if let Some(error) = error {
                query = query.bind(error);
            }
            query.execute(pool).await.map(|done| done.rows_affected() == 1)
        })
    }
}
