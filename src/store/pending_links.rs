//! `pending_links`: "Connect Databricks" links in flight. Only hashes of the link id, the
//! browser-binding cookie and the OAuth state are stored, so reading the database does
//! not let anyone open a link or complete a flow.
//!
//! Life of a row: `pending` (sent to the person) → `claimed` (a browser pressed the
//! button and got the binding cookie) → `exchanging` (the Databricks callback is being
//! handled, exactly once) → `completed` or `failed` — or, when the sign-in is another
//! Databricks account than the linked one, `confirming` until the person replaces or
//! keeps (LNK-09). A newer link for the same person makes older live ones `superseded`.
//! Every step is one conditional UPDATE, so two requests can never both take it.

use super::links::{NewLink, upsert_link_query};
use super::{Pool, Store, WritePool, column, on_pool, person};
use crate::domain::{TeamId, UserId};
use crate::store::audit::{Actor, AuditEvent, AuditKind, insert_audit_event};

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
    pub expires_at: i64,
}

/// Where a pending link is in its life (the module doc tells the whole story).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingStatus {
    /// Sent to the person; nobody has pressed Continue yet.
    Pending,
    /// A browser pressed Continue and holds the binding cookie.
    Claimed,
    /// The Databricks callback is being handled, exactly once.
    Exchanging,
    /// Signed in as another Databricks account than the linked one: waiting for the
    /// person to replace or keep (LNK-09).
    Confirming,
    Completed,
    Failed,
    /// A newer link for the same person replaced it.
    Superseded,
}

impl PendingStatus {
    /// The value stored in `pending_links.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            PendingStatus::Pending => "pending",
            PendingStatus::Claimed => "claimed",
            PendingStatus::Exchanging => "exchanging",
            PendingStatus::Confirming => "confirming",
            PendingStatus::Completed => "completed",
            PendingStatus::Failed => "failed",
            PendingStatus::Superseded => "superseded",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            PendingStatus::Pending,
            PendingStatus::Claimed,
            PendingStatus::Exchanging,
            PendingStatus::Confirming,
            PendingStatus::Completed,
            PendingStatus::Failed,
            PendingStatus::Superseded,
        ]
        .into_iter()
        .find(|status| status.as_str() == s)
    }
}

/// A pending link as stored.
#[derive(Debug, Clone)]
pub struct PendingLink {
    pub id_hash: Vec<u8>,
    pub team: TeamId,
    pub user: UserId,
    pub channel_id: String,
    pub thread_ts: Option<String>,
    pub status: PendingStatus,
    pub browser_hash: Option<Vec<u8>>,
    pub slack_nonce_hash: Option<Vec<u8>>,
    /// Sign in with Slack proved the browser is the link's Slack user.
    pub slack_verified: bool,
    pub pkce_verifier: Option<Vec<u8>>,
    pub databricks_user: Option<String>,
    pub failure: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    /// When the code exchange began, once it has.
    pub exchange_started_at: Option<i64>,
    /// A verified sign-in waiting to replace the current link (vault envelope; LNK-09).
    pub held_link: Option<Vec<u8>>,
    /// Who the current link is, while `held_link` waits.
    pub replaces: Option<String>,
}

impl PendingLink {
    /// Whether it can still be claimed at `now`.
    pub fn is_open(&self, now: i64) -> bool {
        self.status == PendingStatus::Pending && self.expires_at > now
    }
}

/// How long a code exchange may take, from the Databricks callback to the link stored (the
/// token request, SCIM `Me`, the writes). It runs on when the browser's request ends first;
/// one still `exchanging` after this was cut off (the bot stopped mid-way) and is ended.
pub const EXCHANGE_BUDGET_SECONDS: i64 = 120;

/// What the browser is told of an exchange that was cut off.
pub const EXCHANGE_CUT_OFF: &str = "The connection to Databricks was cut off before it finished.";

/// A `pending_links` row as the database returns it.
#[derive(sqlx::FromRow)]
struct PendingLinkRow {
    id_hash: Vec<u8>,
    team_id: String,
    user_id: String,
    channel_id: String,
    thread_ts: Option<String>,
    status: String,
    browser_hash: Option<Vec<u8>>,
    slack_nonce_hash: Option<Vec<u8>>,
    slack_verified: i64,
    pkce_verifier: Option<Vec<u8>>,
    databricks_user: Option<String>,
    failure: Option<String>,
    created_at: i64,
    expires_at: i64,
    exchange_started_at: Option<i64>,
    held_link: Option<Vec<u8>>,
    replaces: Option<String>,
}

impl TryFrom<PendingLinkRow> for PendingLink {
    type Error = sqlx::Error;

    fn try_from(row: PendingLinkRow) -> Result<Self, Self::Error> {
        let (team, user) = person("pending_links", &row.team_id, &row.user_id)?;
        Ok(PendingLink {
            id_hash: row.id_hash,
            team,
            user,
            channel_id: row.channel_id,
            thread_ts: row.thread_ts,
            status: column("pending_links", "status", PendingStatus::parse(&row.status).ok_or(()))?,
            browser_hash: row.browser_hash,
            slack_nonce_hash: row.slack_nonce_hash,
            slack_verified: row.slack_verified != 0,
            pkce_verifier: row.pkce_verifier,
            databricks_user: row.databricks_user,
            failure: row.failure,
            created_at: row.created_at,
            expires_at: row.expires_at,
            exchange_started_at: row.exchange_started_at,
            held_link: row.held_link,
            replaces: row.replaces,
        })
    }
}

const COLUMNS: &str = "id_hash, team_id, user_id, channel_id, thread_ts, status, browser_hash, \
     slack_nonce_hash, slack_verified, pkce_verifier, databricks_user, failure, created_at, expires_at, \
     exchange_started_at, held_link, replaces";

/// What completing a link writes, all in one transaction.
pub struct Completion<'a> {
    pub link: NewLink<'a>,
    /// The pending link being completed.
    pub id_hash: &'a [u8],
    /// The name shown on the success page.
    pub shown_name: &'a str,
    /// The Databricks user name of the link this one replaces, when the person confirmed
    /// a different account (LNK-09).
    pub replaces: Option<&'a str>,
    /// Who signed in at the identity provider, as it names them (`entra-obo`,
    /// `token-federation`).
    pub signed_in_as: Option<&'a str>,
}

impl Store {
    /// Creates a pending link and voids every earlier live one of the same person — unless
    /// one was created within `quiet_seconds`, in which case nothing changes and `false`
    /// is returned: a burst of questions gets one prompt, not one each. With no quiet
    /// window (0) a link is always created. Serialised per person (SQLite: the write
    /// transaction; Postgres: an advisory lock).
    pub async fn create_pending_link(
        &self,
        link: &NewPendingLink<'_>,
        now: i64,
        quiet_seconds: i64,
    ) -> Result<bool, sqlx::Error> {
        let person = format!("{}:{}", link.team, link.user);
        let is_postgres = matches!(self.write, Pool::Postgres(_));
        on_pool!(self.write, |pool| {
            let mut tx = pool.begin_write().await?;
            if is_postgres {
                sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                    .bind(&person)
                    .execute(&mut *tx)
                    .await?;
            }
            if quiet_seconds > 0 {
                let (recent,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM pending_links WHERE team_id = $1 AND user_id = $2 \
                     AND status IN ('pending', 'claimed') AND expires_at > $3 AND created_at > $4",
                )
                .bind(link.team.as_str())
                .bind(link.user.as_str())
                .bind(now)
                .bind(now - quiet_seconds)
                .fetch_one(&mut *tx)
                .await?;
                if recent > 0 {
                    tx.rollback().await?;
                    return Ok(false);
                }
            }
            sqlx::query(
                "UPDATE pending_links SET status = 'superseded', held_link = NULL \
                 WHERE team_id = $1 AND user_id = $2 AND status IN ('pending', 'claimed', 'confirming')",
            )
            .bind(link.team.as_str())
            .bind(link.user.as_str())
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO pending_links (id_hash, team_id, user_id, channel_id, thread_ts, status, \
                     created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7)",
            )
            .bind(link.id_hash)
            .bind(link.team.as_str())
            .bind(link.user.as_str())
            .bind(link.channel_id)
            .bind(link.thread_ts)
            .bind(now)
            .bind(link.expires_at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    /// The pending link with this id hash, whatever its state (for the landing page).
    pub async fn find_pending_link(&self, id_hash: &[u8]) -> Result<Option<PendingLink>, sqlx::Error> {
        self.pending_where("id_hash = $1", id_hash).await
    }

    /// The pending link whose Databricks authorization carries this state hash.
    pub async fn find_pending_link_by_state(&self, state_hash: &[u8]) -> Result<Option<PendingLink>, sqlx::Error> {
        self.pending_where("state_hash = $1", state_hash).await
    }

    /// The pending link whose Sign in with Slack leg carries this state hash.
    pub async fn find_pending_link_by_slack_state(
        &self,
        slack_state_hash: &[u8],
    ) -> Result<Option<PendingLink>, sqlx::Error> {
        self.pending_where("slack_state_hash = $1", slack_state_hash).await
    }

    /// Every pending link holding a sealed secret (a PKCE verifier, a held sign-in): for a
    /// key rotation and the start-up count of secrets under keys no longer configured.
    pub async fn sealed_pending_links(&self) -> Result<Vec<PendingLink>, sqlx::Error> {
        let sql =
            format!("SELECT {COLUMNS} FROM pending_links WHERE pkce_verifier IS NOT NULL OR held_link IS NOT NULL");
        let rows: Vec<PendingLinkRow> = on_pool!(self.read, |pool| sqlx::query_as(&sql).fetch_all(pool).await)?;
        rows.into_iter().map(PendingLink::try_from).collect()
    }

    /// Replaces a pending link's sealed verifier and held sign-in with re-sealed copies of
    /// the same secrets, only if both are still as `expected` (the flow may have moved on).
    pub async fn reseal_pending_link(
        &self,
        id_hash: &[u8],
        expected: (Option<&[u8]>, Option<&[u8]>),
        resealed: (Option<&[u8]>, Option<&[u8]>),
    ) -> Result<bool, sqlx::Error> {
        on_pool!(self.write, |pool| {
            sqlx::query(
                "UPDATE pending_links SET pkce_verifier = $1, held_link = $2 WHERE id_hash = $3 \
                 AND pkce_verifier IS NOT DISTINCT FROM $4 AND held_link IS NOT DISTINCT FROM $5",
            )
            .bind(resealed.0)
            .bind(resealed.1)
            .bind(id_hash)
            .bind(expected.0)
            .bind(expected.1)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() == 1)
        })
    }

    /// The most recent pending link this browser claimed, however far it got.
    pub async fn find_claimed_pending_link(&self, browser_hash: &[u8]) -> Result<Option<PendingLink>, sqlx::Error> {
        self.pending_where(
            "browser_hash = $1 AND status IN ('claimed', 'exchanging', 'confirming', 'completed', 'failed') \
             ORDER BY created_at DESC LIMIT 1",
            browser_hash,
        )
        .await
    }

    /// The most recent pending link finished in the browser holding this cookie.
    pub async fn find_finished_pending_link(&self, browser_hash: &[u8]) -> Result<Option<PendingLink>, sqlx::Error> {
        self.pending_where(
            "browser_hash = $1 AND status IN ('confirming', 'completed', 'failed') ORDER BY created_at DESC LIMIT 1",
            browser_hash,
        )
        .await
    }

    async fn pending_where(&self, condition: &str, value: &[u8]) -> Result<Option<PendingLink>, sqlx::Error> {
        let sql = format!("SELECT {COLUMNS} FROM pending_links WHERE {condition}");
        let row: Option<PendingLinkRow> = on_pool!(self.read, |pool| sqlx::query_as(&sql)
            .bind(value)
            .fetch_optional(pool)
            .await)?;
        row.map(PendingLink::try_from).transpose()
    }

    /// Claims a pending, unexpired link for the browser whose cookie hashes to
    /// `browser_hash`, giving the OAuth leg until `expires_at`. Exactly one of any number
    /// of concurrent claims succeeds (LNK-04).
    pub async fn claim_pending_link(
        &self,
        id_hash: &[u8],
        browser_hash: &[u8],
        now: i64,
        expires_at: i64,
    ) -> Result<Option<PendingLink>, sqlx::Error> {
        let sql = format!(
            "UPDATE pending_links SET status = 'claimed', browser_hash = $1, expires_at = $2 \
             WHERE id_hash = $3 AND status = 'pending' AND expires_at > $4 RETURNING {COLUMNS}"
        );
        let row: Option<PendingLinkRow> = on_pool!(self.write, |pool| {
            sqlx::query_as(&sql)
                .bind(browser_hash)
                .bind(expires_at)
                .bind(id_hash)
                .bind(now)
                .fetch_optional(pool)
                .await
        })?;
        row.map(PendingLink::try_from).transpose()
    }

    /// Records the Sign in with Slack state and nonce (hashed) of a claimed link.
    pub async fn set_slack_state(
        &self,
        id_hash: &[u8],
        slack_state_hash: &[u8],
        nonce_hash: &[u8],
    ) -> Result<bool, sqlx::Error> {
        on_pool!(self.write, |pool| {
            sqlx::query(
                "UPDATE pending_links SET slack_state_hash = $1, slack_nonce_hash = $2 \
                 WHERE id_hash = $3 AND status = 'claimed'",
            )
            .bind(slack_state_hash)
            .bind(nonce_hash)
            .bind(id_hash)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() == 1)
        })
    }

    /// Marks the Slack identity of a claimed link as proven and spends its Slack state.
    pub async fn mark_slack_verified(&self, id_hash: &[u8]) -> Result<bool, sqlx::Error> {
        on_pool!(self.write, |pool| {
            sqlx::query(
                "UPDATE pending_links SET slack_verified = 1, slack_state_hash = NULL \
                 WHERE id_hash = $1 AND status = 'claimed' AND slack_verified = 0",
            )
            .bind(id_hash)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() == 1)
        })
    }

    /// Records the Databricks state (hashed) and the sealed PKCE verifier of a claimed
    /// link, just before the browser is sent to Databricks.
    pub async fn set_databricks_state(
        &self,
        id_hash: &[u8],
        state_hash: &[u8],
        sealed_verifier: &[u8],
    ) -> Result<bool, sqlx::Error> {
        on_pool!(self.write, |pool| {
            sqlx::query(
                "UPDATE pending_links SET state_hash = $1, pkce_verifier = $2 WHERE id_hash = $3 AND status = 'claimed'",
            )
            .bind(state_hash)
            .bind(sealed_verifier)
            .bind(id_hash)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() == 1)
        })
    }

    /// Takes a claimed link into the code exchange: only the first callback with this
    /// state gets it, so a replayed or doubled callback never reaches the token endpoint.
    pub async fn begin_exchange(&self, id_hash: &[u8], now: i64) -> Result<bool, sqlx::Error> {
        on_pool!(self.write, |pool| {
            sqlx::query(
                "UPDATE pending_links SET status = 'exchanging', exchange_started_at = $2 \
                 WHERE id_hash = $1 AND status = 'claimed' AND expires_at > $2",
            )
            .bind(id_hash)
            .bind(now)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() == 1)
        })
    }

    /// Ends a pending link as failed, with the reason shown to the browser, and forgets
    /// its verifier. (The state hash stays, so a replayed callback is recognised as
    /// already handled.) `audit` records an identity mismatch.
    pub async fn fail_pending_link(
        &self,
        id_hash: &[u8],
        failure: &str,
        audit: Option<AuditEvent<'_>>,
    ) -> Result<(), sqlx::Error> {
        on_pool!(self.write, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query(
                "UPDATE pending_links SET status = 'failed', failure = $1, pkce_verifier = NULL, held_link = NULL \
                 WHERE id_hash = $2 AND status IN ('pending', 'claimed', 'exchanging', 'confirming')",
            )
            .bind(failure)
            .bind(id_hash)
            .execute(&mut *tx)
            .await?;
            if let Some(event) = &audit {
                insert_audit_event!(&event).execute(&mut *tx).await?;
            }
            tx.commit().await
        })
    }

    /// Holds a verified sign-in (`held`, sealed) on its pending link until the person
    /// confirms that it replaces their link to `replaces` (LNK-09). False when the
    /// exchange was not this pending link's to finish.
    pub async fn hold_for_confirmation(
        &self,
        id_hash: &[u8],
        held: &[u8],
        shown_name: &str,
        replaces: &str,
    ) -> Result<bool, sqlx::Error> {
        on_pool!(self.write, |pool| {
            sqlx::query(
                "UPDATE pending_links SET status = 'confirming', held_link = $1, databricks_user = $2, \
                 replaces = $3, pkce_verifier = NULL WHERE id_hash = $4 AND status = 'exchanging'",
            )
            .bind(held)
            .bind(shown_name)
            .bind(replaces)
            .bind(id_hash)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() == 1)
        })
    }

    /// Stores the verified link, audits it, completes the pending link and queues again
    /// the person's questions that were waiting for it — all or nothing.
    pub async fn complete_linking(&self, completion: &Completion<'_>, now: i64) -> Result<bool, sqlx::Error> {
        on_pool!(self.write, |pool| {
            let mut tx = pool.begin_write().await?;
            let finished = sqlx::query(
                "UPDATE pending_links SET status = 'completed', databricks_user = $1, pkce_verifier = NULL, \
                 held_link = NULL WHERE id_hash = $2 AND status IN ('exchanging', 'confirming')",
            )
            .bind(completion.shown_name)
            .bind(completion.id_hash)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if finished != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
            upsert_link_query!(&completion.link, now).execute(&mut *tx).await?;
            let mut detail = match completion.replaces {
                Some(old) => format!("{} replacing {old}", completion.link.databricks_user_name),
                None => completion.link.databricks_user_name.to_owned(),
            };
            if let Some(idp_name) = completion.signed_in_as {
                detail.push_str(&format!(" (signed in at the identity provider as {idp_name})"));
            }
            let event = AuditEvent {
                kind: AuditKind::Link,
                team: completion.link.team,
                user: completion.link.user,
                actor: Actor::User,
                detail: Some(&detail),
                at: now,
            };
            insert_audit_event!(&event).execute(&mut *tx).await?;
            sqlx::query(
                "UPDATE jobs SET state = 'queued', run_after = $1, updated_at = $1 \
                 WHERE team_id = $2 AND user_id = $3 AND state = 'waiting'",
            )
            .bind(now)
            .bind(completion.link.team.as_str())
            .bind(completion.link.user.as_str())
            .execute(&mut *tx)
            .await?;
            pool.announce_jobs(&mut tx).await?;
            tx.commit().await?;
            Ok(true)
        })
    }
}
