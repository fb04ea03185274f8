//! Private answers their asker may still share in the channel (`ANSWER_VISIBILITY=private`).

use crate::domain::{TeamId, UserId};
use crate::store::{Store, on_pool};

/// A private answer as kept for sharing.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PrivateAnswer {
    pub team_id: String,
    pub user_id: String,
    pub channel_id: String,
    pub thread_ts: String,
    /// JSON array of the rendered messages, without the share button.
    pub content: String,
}

impl PrivateAnswer {
    /// The thread to share into, if any.
    pub fn thread(&self) -> Option<&str> {
        Some(self.thread_ts.as_str()).filter(|t| !t.is_empty())
    }
}

/// A private answer to keep.
#[derive(Debug, Clone, Copy)]
pub struct NewPrivateAnswer<'a> {
    /// The share button's random value.
    pub id: &'a str,
    pub team: &'a TeamId,
    pub user: &'a UserId,
    pub channel: &'a str,
    pub thread_ts: Option<&'a str>,
    pub content: &'a str,
}

impl Store {
    /// Keeps a private answer for its asker to share.
    pub async fn keep_private_answer(&self, answer: &NewPrivateAnswer<'_>, now: i64) -> Result<(), sqlx::Error> {
        on_pool!(self.write, |pool| {
            sqlx::query(
                "INSERT INTO private_answers (id, team_id, user_id, channel_id, thread_ts, content, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(answer.id)
            .bind(answer.team.as_str())
            .bind(answer.user.as_str())
            .bind(answer.channel)
            .bind(answer.thread_ts.unwrap_or(""))
            .bind(answer.content)
            .bind(now)
            .execute(pool)
            .await
            .map(|_| ())
        })
    }

    /// The private answer `id`, if it is `team`/`user`'s own and still kept.
    pub async fn private_answer(
        &self,
        id: &str,
        team: &TeamId,
        user: &UserId,
    ) -> Result<Option<PrivateAnswer>, sqlx::Error> {
        on_pool!(self.read, |pool| {
            sqlx::query_as(
                "SELECT team_id, user_id, channel_id, thread_ts, content FROM private_answers
                 WHERE id = $1 AND team_id = $2 AND user_id = $3",
            )
            .bind(id)
            .bind(team.as_str())
            .bind(user.as_str())
            .fetch_optional(pool)
            .await
        })
    }

    /// Forgets a private answer once it has been shared.
    pub async fn forget_private_answer(&self, id: &str, team: &TeamId, user: &UserId) -> Result<(), sqlx::Error> {
        on_pool!(self.write, |pool| {
            sqlx::query("DELETE FROM private_answers WHERE id = $1 AND team_id = $2 AND user_id = $3")
                .bind(id)
                .bind(team.as_str())
                .bind(user.as_str())
                .execute(pool)
                .await
                .map(|_| ())
        })
    }
}
