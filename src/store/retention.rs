//! Forgetting what the bot no longer needs: a whole team's data the moment the app loses
//! its access to that team, and everything else once its time is up.
//!
//! Retention (all times relative to the caller's clock):
//! - delivered event ids: a day (Slack retries for minutes; a day is ample for de-duplication);
//! - finished jobs (`done`, `failed`): seven days after they finished;
//! - conversations: seven days after their last turn;
//! - pending links, whatever their state: a day after they expired; and before that, an
//!   exchange still `exchanging` past its budget (the bot stopped mid-way) ends as failed;
//! - private answers not shared: a day (their "Share in channel" button then stops working);
//! - questions still `waiting` a week after they were asked, with no live link in flight
//!   for their person: `failed` (their person never connected; linking would have queued
//!   them again), and deleted seven days later like any finished job.
//!
//! The scheduled purge works in bounded batches, each its own short statement, so a large
//! backlog never holds SQLite's single writer (or Postgres row locks) for long.

use super::audit::{Actor, AuditEvent, AuditKind, insert_audit_event};
use super::jobs::record_slack_event;
use super::pending_links::{EXCHANGE_BUDGET_SECONDS, EXCHANGE_CUT_OFF};
use super::{Store, WritePool, on_pool};
use crate::domain::{TeamId, UserId};

const DAY: i64 = 24 * 60 * 60;

/// How long a delivered event id is kept for de-duplication.
pub const EVENT_ID_RETENTION_SECONDS: i64 = DAY;
/// How long a finished job is kept (for operators looking up a `job-N` reference).
pub const FINISHED_JOB_RETENTION_SECONDS: i64 = 7 * DAY;
/// How long a conversation is kept after its last turn.
pub const IDLE_CONVERSATION_RETENTION_SECONDS: i64 = 7 * DAY;
/// How long a pending link is kept after it expired (its landing page can still explain it).
pub const EXPIRED_PENDING_LINK_RETENTION_SECONDS: i64 = DAY;
/// How long a private answer can still be shared in the channel.
pub const PRIVATE_ANSWER_RETENTION_SECONDS: i64 = DAY;
/// How long a question waits for its person to connect before it is given up.
pub const WAITING_QUESTION_RETENTION_SECONDS: i64 = 7 * DAY;

/// The `jobs.error` of a question given up because its person never connected.
pub const NEVER_CONNECTED: &str = "given up: the person did not connect Databricks within 7 days";

/// What purging a team removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TeamPurge {
    /// Links deleted (each with an `unlink` audit row).
    pub links: u64,
    /// Pending links deleted, whatever their state.
    pub pending_links: u64,
    /// Queued, waiting and running jobs marked `failed`: none of them runs (again).
    pub stopped_jobs: u64,
    /// Conversations deleted.
    pub conversations: u64,
    /// Private answers not yet shared, deleted.
    pub private_answers: u64,
}

/// What one scheduled purge removed, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expired {
    /// Delivered event ids deleted.
    pub slack_events: u64,
    /// Waiting questions given up (marked `failed`).
    pub abandoned_questions: u64,
    /// Finished jobs deleted.
    pub finished_jobs: u64,
    /// Idle conversations deleted.
    pub conversations: u64,
    /// Code exchanges cut off (still `exchanging` past their budget) ended as failed.
    pub cut_off_exchanges: u64,
    /// Long-expired pending links deleted.
    pub pending_links: u64,
    /// Private answers past their sharing time deleted.
    pub private_answers: u64,
}

impl Expired {
    /// Rows deleted or given up, all tables together.
    pub fn total(&self) -> u64 {
        self.slack_events
            + self.abandoned_questions
            + self.finished_jobs
            + self.conversations
            + self.cut_off_exchanges
            + self.pending_links
            + self.private_answers
    }
}

/// Questions waiting since before `$3` for a person with no live pending link become
/// `failed` at `$2`. The outer conditions of these statements are re-checked against a row
/// changed meanwhile (Postgres), so a question linking just queued again is never failed,
/// and a conversation just continued is never deleted.
const ABANDON_WAITING_QUESTIONS: &str = "UPDATE jobs SET state = 'failed', error = $1, updated_at = $2 \
     WHERE state = 'waiting' AND id IN (SELECT j.id FROM jobs j WHERE j.state = 'waiting' AND j.created_at < $3 \
         AND NOT EXISTS (SELECT 1 FROM pending_links p WHERE p.team_id = j.team_id AND p.user_id = j.user_id \
             AND p.status IN ('pending', 'claimed', 'exchanging', 'confirming') AND p.expires_at > $2) \
         ORDER BY j.id LIMIT $4)";

const DELETE_FINISHED_JOBS: &str = "DELETE FROM jobs WHERE state IN ('done', 'failed') AND updated_at < $1 \
     AND id IN (SELECT id FROM jobs WHERE state IN ('done', 'failed') AND updated_at < $1 ORDER BY id LIMIT $2)";

const DELETE_OLD_EVENT_IDS: &str = "DELETE FROM slack_events WHERE received_at < $1 \
     AND event_id IN (SELECT event_id FROM slack_events WHERE received_at < $1 LIMIT $2)";

const DELETE_IDLE_CONVERSATIONS: &str = "DELETE FROM conversations WHERE updated_at < $1 \
     AND (team_id, user_id, channel_id, thread_ts) IN (SELECT team_id, user_id, channel_id, thread_ts \
         FROM conversations WHERE updated_at < $1 LIMIT $2)";

const DELETE_OLD_PRIVATE_ANSWERS: &str = "DELETE FROM private_answers WHERE created_at < $1 \
     AND id IN (SELECT id FROM private_answers WHERE created_at < $1 LIMIT $2)";

const FAIL_CUT_OFF_EXCHANGES: &str = "UPDATE pending_links SET status = 'failed', failure = $1, \
     pkce_verifier = NULL WHERE status = 'exchanging' AND exchange_started_at < $2 \
     AND id_hash IN (SELECT id_hash FROM pending_links WHERE status = 'exchanging' AND exchange_started_at < $2 \
         LIMIT $3)";

const DELETE_EXPIRED_PENDING_LINKS: &str = "DELETE FROM pending_links WHERE expires_at < $1 \
     AND id_hash IN (SELECT id_hash FROM pending_links WHERE expires_at < $1 LIMIT $2)";

impl Store {
    /// Forgets team `team` because the app lost its access to it (`reason`, e.g.
    /// `app_uninstalled`), recording Slack event `event_id` — all in one transaction.
    ///
    /// Deletes the team's links (access tokens with them; one `unlink` audit row each,
    /// actor `system`, detail `reason`), pending links, conversations and private answers
    /// not yet shared, and marks its queued, waiting and running jobs `failed` with
    /// `reason` as the error: no worker claims them again, and a worker still running one
    /// fails its fencing check when it records the outcome. Delivered event ids and audit
    /// rows stay (de-duplication and the audit trail).
    ///
    /// Returns `None` when `event_id` was already recorded: a redelivery does nothing, so a
    /// late replay cannot remove links made after a reinstall.
    pub async fn purge_team(
        &self,
        event_id: &str,
        team: &TeamId,
        reason: &str,
        now: i64,
    ) -> Result<Option<TeamPurge>, sqlx::Error> {
        on_pool!(self.write, |pool| {
            let mut tx = pool.begin_write().await?;
            let recorded = record_slack_event!(event_id, team, now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if recorded == 0 {
                tx.rollback().await?;
                return Ok(None);
            }
            let unlinked: Vec<(String,)> = sqlx::query_as("DELETE FROM links WHERE team_id = $1 RETURNING user_id")
                .bind(team.as_str())
                .fetch_all(&mut *tx)
                .await?;
            for (user,) in &unlinked {
                let user =
                    UserId::parse(user).map_err(|_| sqlx::Error::Decode("links row has an invalid user_id".into()))?;
                let event = AuditEvent {
                    kind: AuditKind::Unlink,
                    team,
                    user: &user,
                    actor: Actor::System,
                    detail: Some(reason),
                    at: now,
                };
                insert_audit_event!(&event).execute(&mut *tx).await?;
            }
            let pending_links = sqlx::query("DELETE FROM pending_links WHERE team_id = $1")
                .bind(team.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let stopped_jobs = sqlx::query(
                "UPDATE jobs SET state = 'failed', lease_until = NULL, error = $1, updated_at = $2, outbox = NULL, outbox_sent = 0 \
                 WHERE team_id = $3 AND state IN ('queued', 'waiting', 'running')",
            )
            .bind(reason)
            .bind(now)
            .bind(team.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let conversations = sqlx::query("DELETE FROM conversations WHERE team_id = $1")
                .bind(team.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let private_answers = sqlx::query("DELETE FROM private_answers WHERE team_id = $1")
                .bind(team.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query("DELETE FROM assistant_threads WHERE team_id = $1")
                .bind(team.as_str())
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM answer_feedback WHERE team_id = $1")
                .bind(team.as_str())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Some(TeamPurge {
                links: unlinked.len() as u64,
                pending_links,
                stopped_jobs,
                conversations,
                private_answers,
            }))
        })
    }

    /// Applies the retention rules of this module as of `now`, at most `batch` rows per
    /// statement, until nothing is left to purge. Safe to run from several replicas at once.
    pub async fn purge_expired(&self, now: i64, batch: i64) -> Result<Expired, sqlx::Error> {
        let batch = batch.max(1);
        let abandoned_questions = self
            .in_batches(
                ABANDON_WAITING_QUESTIONS,
                Some(NEVER_CONNECTED),
                &[now, now - WAITING_QUESTION_RETENTION_SECONDS],
                batch,
            )
            .await?;
        let finished_jobs = self
            .in_batches(
                DELETE_FINISHED_JOBS,
                None,
                &[now - FINISHED_JOB_RETENTION_SECONDS],
                batch,
            )
            .await?;
        let slack_events = self
            .in_batches(DELETE_OLD_EVENT_IDS, None, &[now - EVENT_ID_RETENTION_SECONDS], batch)
            .await?;
        let conversations = self
            .in_batches(
                DELETE_IDLE_CONVERSATIONS,
                None,
                &[now - IDLE_CONVERSATION_RETENTION_SECONDS],
                batch,
            )
            .await?;
        let cut_off_exchanges = self
            .in_batches(
                FAIL_CUT_OFF_EXCHANGES,
                Some(EXCHANGE_CUT_OFF),
                &[now - EXCHANGE_BUDGET_SECONDS],
                batch,
            )
            .await?;
        let pending_links = self
            .in_batches(
                DELETE_EXPIRED_PENDING_LINKS,
                None,
                &[now - EXPIRED_PENDING_LINK_RETENTION_SECONDS],
                batch,
            )
            .await?;
        let private_answers = self
            .in_batches(
                DELETE_OLD_PRIVATE_ANSWERS,
                None,
                &[now - PRIVATE_ANSWER_RETENTION_SECONDS],
                batch,
            )
            .await?;
        Ok(Expired {
            slack_events,
            abandoned_questions,
            finished_jobs,
            conversations,
            cut_off_exchanges,
            pending_links,
            private_answers,
        })
    }

    /// Runs `sql` — bound to `text` (if any), then `times`, then the batch size — until a
    /// run affects fewer than `batch` rows. Returns the rows affected in all.
    async fn in_batches(&self, sql: &str, text: Option<&str>, times: &[i64], batch: i64) -> Result<u64, sqlx::Error> {
        let mut total = 0;
        loop {
            let affected = on_pool!(self.write, |pool| {
                let mut query = sqlx::query(sql);
                if let Some(text) = text {
                    query = query.bind(text);
                }
                for time in times {
                    query = query.bind(*time);
                }
                query.bind(batch).execute(pool).await?.rows_affected()
            });
            total += affected;
            if affected < batch as u64 {
                return Ok(total);
            }
        }
    }
}
