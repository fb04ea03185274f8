//! Slack assistant threads (the split view's conversations) the bot was told of, so a
//! question in one shows its progress as the thread's status and titles it.

use crate::domain::{TeamId, UserId};
use crate::store::{Store, on_pool};

impl Store {
    /// Records that `thread_ts` in `channel` is `user`'s assistant thread (idempotent).
    pub async fn keep_assistant_thread(
        &self,
        team: &TeamId,
        user: &UserId,
        channel: &str,
        thread_ts: &str,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        on_pool!(self.write, |pool| {
            sqlx::query(
                "INSERT INTO assistant_threads (channel_id, thread_ts, team_id, user_id, created_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (channel_id, thread_ts) DO NOTHING",
            )
            .bind(channel)
            .bind(thread_ts)
            .bind(team.as_str())
            .bind(user.as_str())
            .bind(now)
            .execute(pool)
            .await
            .map(|_| ())
        })
    }

    /// Whether `thread_ts` in `channel` is an assistant thread, and if so whether it still
    /// needs a title (`Some(true)`): the first caller to ask gets `true`, once.
    pub async fn assistant_thread_needs_title(
        &self,
        channel: &str,
        thread_ts: &str,
    ) -> Result<Option<bool>, sqlx::Error> {
        // Most threads asked in are not assistant threads, and most assistant threads are
        // titled already: one read answers those.
        let titled: Option<(bool,)> = on_pool!(self.read, |pool| {
            sqlx::query_as("SELECT titled FROM assistant_threads WHERE channel_id = $1 AND thread_ts = $2")
                .bind(channel)
                .bind(thread_ts)
                .fetch_optional(pool)
                .await
        })?;
        match titled {
            None => Ok(None),
            Some((true,)) => Ok(Some(false)),
            Some((false,)) => on_pool!(self.write, |pool| {
                sqlx::query(
                    "UPDATE assistant_threads SET titled = TRUE \
                     WHERE channel_id = $1 AND thread_ts = $2 AND NOT titled",
                )
                .bind(channel)
                .bind(thread_ts)
                .execute(pool)
                .await
                .map(|done| Some(done.rows_affected() == 1))
            }),
        }
    }
}
