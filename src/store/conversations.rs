//! What an agent keeps between questions in one Slack thread, per person: a Genie
//! conversation id, an ADK session, recent turns. Never a token.

use crate::domain::PersonIn;
use crate::store::{Store, on_pool};

impl Store {
    /// The state `agent` kept for `key`, if any (state kept by another agent is ignored).
    pub async fn conversation(&self, key: PersonIn<'_>, agent: &str) -> Result<Option<String>, sqlx::Error> {
        on_pool!(self.read, |pool| {
            sqlx::query_scalar(
                "SELECT state FROM conversations
                 WHERE team_id = $1 AND user_id = $2 AND channel_id = $3 AND thread_ts = $4 AND agent = $5",
            )
            .bind(key.team.as_str())
            .bind(key.user.as_str())
            .bind(key.channel)
            .bind(key.thread_ts.unwrap_or(""))
            .bind(agent)
            .fetch_optional(pool)
            .await
        })
    }

    /// Keeps `state` as `agent`'s conversation for `key`, replacing what was there.
    pub async fn save_conversation(
        &self,
        key: PersonIn<'_>,
        agent: &str,
        state: &str,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        on_pool!(self.write, |pool| {
            sqlx::query(
                "INSERT INTO conversations (team_id, user_id, channel_id, thread_ts, agent, state, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (team_id, user_id, channel_id, thread_ts)
                 DO UPDATE SET agent = excluded.agent, state = excluded.state, updated_at = excluded.updated_at",
            )
            .bind(key.team.as_str())
            .bind(key.user.as_str())
            .bind(key.channel)
            .bind(key.thread_ts.unwrap_or(""))
            .bind(agent)
            .bind(state)
            .bind(now)
            .execute(pool)
            .await
            .map(|_| ())
        })
    }
}
