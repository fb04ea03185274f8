//! `pending_links`: "Connect Databricks" links in flight. Only a hash of each link id is
//! stored, so reading the database does not let anyone open a link.

use super::{Store, WritePool, on_pool};
use crate::domain::{TeamId, UserId};

/// A pending link to create.
#[derive(Debug, Clone)]
pub struct NewPendingLink<'a> {
    /// SHA-256 of the link id that goes into the URL.
    pub id_hash: &'a [u8],
    pub team: &'a TeamId,
    pub user: &'a UserId,
    /// Where the question was asked, so it can be answered there after linking.
    pub channel_id: &'a str,
    pub thread_ts: Option<&'a str>,
    /// The question that prompted the link, kept to answer once linked.
    pub question: Option<&'a str>,
    pub expires_at: i64,
}

impl Store {
    /// Creates a pending link and voids every earlier live one of the same person, in one
    /// transaction: only the newest link a person received can be used.
    pub async fn create_pending_link(&self, link: &NewPendingLink<'_>, now: i64) -> Result<(), sqlx::Error> {
        on_pool!(self.write, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query(
                "UPDATE pending_links SET status = 'superseded' \
                 WHERE team_id = $1 AND user_id = $2 AND status IN ('pending', 'claimed')",
            )
            .bind(link.team.as_str())
            .bind(link.user.as_str())
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO pending_links (id_hash, team_id, user_id, channel_id, thread_ts, question, status, \
                     created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8)",
            )
            .bind(link.id_hash)
            .bind(link.team.as_str())
            .bind(link.user.as_str())
            .bind(link.channel_id)
            .bind(link.thread_ts)
            .bind(link.question)
            .bind(now)
            .bind(link.expires_at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        })
    }
}
