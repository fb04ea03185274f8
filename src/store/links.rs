//! `links`: one row per Slack person who linked Databricks, holding their refresh token as
//! a vault envelope.

use super::audit::{Actor, AuditEvent, AuditKind, insert_audit_event};
use super::{Store, WritePool, column, on_pool, person};
use crate::domain::{TeamId, UserId, WorkspaceHost};

/// Whether a link can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkStatus {
    /// The refresh token works as far as we know.
    Active,
    /// Databricks refused the refresh token; the person must connect again.
    NeedsRelink,
}

impl LinkStatus {
    /// The value stored in `links.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkStatus::Active => "active",
            LinkStatus::NeedsRelink => "needs_relink",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(LinkStatus::Active),
            "needs_relink" => Some(LinkStatus::NeedsRelink),
            _ => None,
        }
    }
}

/// A stored link. The refresh token is the sealed envelope, never plaintext.
#[derive(Clone)]
pub struct Link {
    pub team: TeamId,
    pub user: UserId,
    pub workspace: WorkspaceHost,
    pub databricks_user_id: String,
    pub databricks_user_name: String,
    pub databricks_display_name: Option<String>,
    /// Vault envelope of the refresh token.
    pub sealed_refresh_token: Vec<u8>,
    /// Id of the key that sealed it.
    pub key_id: String,
    /// Space-separated scopes granted.
    pub scopes: String,
    pub status: LinkStatus,
    /// Incremented by every refresh-token swap; the compare-and-swap guard.
    pub version: i64,
    pub linked_at: i64,
    pub refreshed_at: Option<i64>,
    pub last_used_at: Option<i64>,
    /// Vault envelope of the current access token, shared by every replica.
    pub sealed_access_token: Option<Vec<u8>>,
    pub access_expires_at: Option<i64>,
    /// Until when a refresh is in progress somewhere (the cross-process single flight).
    pub refresh_lock_until: Option<i64>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("team", &self.team)
            .field("user", &self.user)
            .field("workspace", &self.workspace)
            .field("databricks_user_name", &self.databricks_user_name)
            .field("key_id", &self.key_id)
            .field("status", &self.status)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// A new or replacing link.
#[derive(Debug, Clone)]
pub struct NewLink<'a> {
    pub team: &'a TeamId,
    pub user: &'a UserId,
    pub workspace: &'a WorkspaceHost,
    pub databricks_user_id: &'a str,
    pub databricks_user_name: &'a str,
    pub databricks_display_name: Option<&'a str>,
    pub sealed_refresh_token: &'a [u8],
    pub key_id: &'a str,
    pub scopes: &'a str,
    /// The access token that came with the refresh token, if any.
    pub sealed_access_token: Option<&'a [u8]>,
    pub access_expires_at: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct LinkRow {
    team_id: String,
    user_id: String,
    workspace_host: String,
    databricks_user_id: String,
    databricks_user_name: String,
    databricks_display_name: Option<String>,
    refresh_token: Vec<u8>,
    key_id: String,
    scopes: String,
    status: String,
    version: i64,
    linked_at: i64,
    refreshed_at: Option<i64>,
    last_used_at: Option<i64>,
    access_token: Option<Vec<u8>>,
    access_expires_at: Option<i64>,
    refresh_lock_until: Option<i64>,
}

const LINK_COLUMNS: &str = "team_id, user_id, workspace_host, databricks_user_id, databricks_user_name, \
     databricks_display_name, refresh_token, key_id, scopes, status, version, linked_at, refreshed_at, last_used_at, \
     access_token, access_expires_at, refresh_lock_until";

impl TryFrom<LinkRow> for Link {
    type Error = sqlx::Error;

    fn try_from(row: LinkRow) -> Result<Self, Self::Error> {
        let (team, user) = person("links", &row.team_id, &row.user_id)?;
        Ok(Link {
            team,
            user,
            workspace: column("links", "workspace_host", WorkspaceHost::parse(&row.workspace_host))?,
            databricks_user_id: row.databricks_user_id,
            databricks_user_name: row.databricks_user_name,
            databricks_display_name: row.databricks_display_name,
            sealed_refresh_token: row.refresh_token,
            key_id: row.key_id,
            scopes: row.scopes,
            status: column("links", "status", LinkStatus::parse(&row.status).ok_or(()))?,
            version: row.version,
            linked_at: row.linked_at,
            refreshed_at: row.refreshed_at,
            last_used_at: row.last_used_at,
            sealed_access_token: row.access_token,
            access_expires_at: row.access_expires_at,
            refresh_lock_until: row.refresh_lock_until,
        })
    }
}

/// The upsert behind [`Store::upsert_link`], also used inside the linking transaction
/// (a macro for the same reason as `insert_audit_event!`).
macro_rules! upsert_link_query {
    ($link:expr, $now:expr) => {{
        let link: &$crate::store::links::NewLink<'_> = $link;
        let now: i64 = $now;
        sqlx::query(
            "INSERT INTO links (team_id, user_id, workspace_host, databricks_user_id, databricks_user_name, \
                 databricks_display_name, refresh_token, key_id, scopes, status, version, linked_at, \
                 access_token, access_expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'active', 0, $10, $11, $12) \
             ON CONFLICT (team_id, user_id) DO UPDATE SET \
                 workspace_host = excluded.workspace_host, \
                 databricks_user_id = excluded.databricks_user_id, \
                 databricks_user_name = excluded.databricks_user_name, \
                 databricks_display_name = excluded.databricks_display_name, \
                 refresh_token = excluded.refresh_token, \
                 key_id = excluded.key_id, \
                 scopes = excluded.scopes, \
                 status = 'active', \
                 version = links.version + 1, \
                 linked_at = excluded.linked_at, \
                 refreshed_at = NULL, \
                 access_token = excluded.access_token, \
                 access_expires_at = excluded.access_expires_at, \
                 refresh_lock_until = NULL",
        )
        .bind(link.team.as_str())
        .bind(link.user.as_str())
        .bind(link.workspace.as_str())
        .bind(link.databricks_user_id)
        .bind(link.databricks_user_name)
        .bind(link.databricks_display_name)
        .bind(link.sealed_refresh_token)
        .bind(link.key_id)
        .bind(link.scopes)
        .bind(now)
        .bind(link.sealed_access_token)
        .bind(link.access_expires_at)
    }};
}
pub(crate) use upsert_link_query;

fn into_links(rows: Vec<LinkRow>) -> Result<Vec<Link>, sqlx::Error> {
    rows.into_iter().map(Link::try_from).collect()
}

impl Store {
    /// Stores a link, replacing any earlier one for the same person (a relink). A
    /// replacement starts active, at a higher version, so in-flight refreshes of the old
    /// grant lose their compare-and-swap.
    pub async fn upsert_link(&self, link: &NewLink<'_>, now: i64) -> Result<(), sqlx::Error> {
        on_pool!(self.write, |pool| upsert_link_query!(link, now)
            .execute(pool)
            .await
            .map(|_| ()))
    }

    /// The link of one person, if any.
    pub async fn find_link(&self, team: &TeamId, user: &UserId) -> Result<Option<Link>, sqlx::Error> {
        let sql = format!("SELECT {LINK_COLUMNS} FROM links WHERE team_id = $1 AND user_id = $2");
        let row: Option<LinkRow> = on_pool!(self.read, |pool| {
            sqlx::query_as(&sql)
                .bind(team.as_str())
                .bind(user.as_str())
                .fetch_optional(pool)
                .await
        })?;
        row.map(Link::try_from).transpose()
    }

    /// Every link, or one team's, ordered by team and user.
    pub async fn list_links(&self, team: Option<&TeamId>) -> Result<Vec<Link>, sqlx::Error> {
        let sql = format!(
            "SELECT {LINK_COLUMNS} FROM links \
             WHERE CAST($1 AS TEXT) IS NULL OR team_id = $1 ORDER BY team_id, user_id"
        );
        let rows: Vec<LinkRow> = on_pool!(self.read, |pool| {
            sqlx::query_as(&sql)
                .bind(team.map(TeamId::as_str))
                .fetch_all(pool)
                .await
        })?;
        into_links(rows)
    }

    /// Deletes one person's link and records who did it, in one transaction. Returns
    /// whether there was a link to delete; deleting twice is harmless.
    pub async fn delete_link(&self, team: &TeamId, user: &UserId, actor: Actor, now: i64) -> Result<bool, sqlx::Error> {
        on_pool!(self.write, |pool| {
            let mut tx = pool.begin_write().await?;
            let deleted: Option<(String,)> =
                sqlx::query_as("DELETE FROM links WHERE team_id = $1 AND user_id = $2 RETURNING databricks_user_name")
                    .bind(team.as_str())
                    .bind(user.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some((name,)) = &deleted {
                let event = AuditEvent {
                    kind: AuditKind::Unlink,
                    team,
                    user,
                    actor,
                    detail: Some(name),
                    at: now,
                };
                insert_audit_event!(&event).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(deleted.is_some())
        })
    }

    /// Up to `limit` links, after `after` in (team, user) order, whose refresh token is
    /// sealed under a key other than `primary` — one page of a key rotation.
    pub async fn links_sealed_under_other_keys(
        &self,
        primary: &str,
        after: Option<(&TeamId, &UserId)>,
        limit: i64,
    ) -> Result<Vec<Link>, sqlx::Error> {
        let sql = format!(
            "SELECT {LINK_COLUMNS} FROM links \
             WHERE key_id <> $1 AND (CAST($2 AS TEXT) IS NULL OR (team_id, user_id) > ($2, $3)) \
             ORDER BY team_id, user_id LIMIT $4"
        );
        let rows: Vec<LinkRow> = on_pool!(self.read, |pool| {
            sqlx::query_as(&sql)
                .bind(primary)
                .bind(after.map(|(team, _)| team.as_str()))
                .bind(after.map(|(_, user)| user.as_str()))
                .bind(limit)
                .fetch_all(pool)
                .await
        })?;
        into_links(rows)
    }

    /// Replaces a sealed refresh token with a re-sealed copy of the same token (and the
    /// access token, when `access` is given, with its re-sealed copy), only if the stored
    /// refresh envelope is still `expected` (a refresh may have replaced both meanwhile).
    /// Leaves `version` alone: the tokens themselves have not changed.
    pub async fn reseal_refresh_token(
        &self,
        team: &TeamId,
        user: &UserId,
        expected: &[u8],
        resealed: &[u8],
        key_id: &str,
        access: Option<&[u8]>,
    ) -> Result<bool, sqlx::Error> {
        on_pool!(self.write, |pool| {
            sqlx::query(
                "UPDATE links SET refresh_token = $1, key_id = $2, access_token = COALESCE($6, access_token) \
                 WHERE team_id = $3 AND user_id = $4 AND refresh_token = $5",
            )
            .bind(resealed)
            .bind(key_id)
            .bind(team.as_str())
            .bind(user.as_str())
            .bind(expected)
            .bind(access)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() == 1)
        })
    }

    /// How many links are in each status (`active`, `needs_relink`), for `/metrics`.
    pub async fn links_per_status(&self) -> Result<Vec<(String, i64)>, sqlx::Error> {
        on_pool!(self.read, |pool| {
            sqlx::query_as("SELECT status, COUNT(*) FROM links GROUP BY status")
                .fetch_all(pool)
                .await
        })
    }

    /// How many links each key id seals, by `links.key_id`.
    pub async fn links_per_key(&self) -> Result<Vec<(String, i64)>, sqlx::Error> {
        on_pool!(self.read, |pool| {
            sqlx::query_as("SELECT key_id, COUNT(*) FROM links GROUP BY key_id ORDER BY key_id")
                .fetch_all(pool)
                .await
        })
    }

    /// Starts a refresh of `version` of a person's link, if nobody else (in any process)
    /// is refreshing it: the cross-process single flight. The claim lapses at
    /// `lock_until`, so a process that dies mid-refresh does not block the person forever.
    pub async fn try_lock_refresh(
        &self,
        team: &TeamId,
        user: &UserId,
        version: i64,
        now: i64,
        lock_until: i64,
    ) -> Result<bool, sqlx::Error> {
        on_pool!(self.write, |pool| {
            sqlx::query(
                "UPDATE links SET refresh_lock_until = $1 \
                 WHERE team_id = $2 AND user_id = $3 AND version = $4 AND status = 'active' \
                   AND (refresh_lock_until IS NULL OR refresh_lock_until <= $5)",
            )
            .bind(lock_until)
            .bind(team.as_str())
            .bind(user.as_str())
            .bind(version)
            .bind(now)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() == 1)
        })
    }

    /// Extends a refresh claim to `lock_until` while the refresh runs, only if the claim is
    /// still the caller's: the link is at `version` and the claim ends at `held_until`, as
    /// the caller last set it. False when the claim lapsed and another process took it, or
    /// the link moved on (refreshed, relinked, marked): a renewal never extends someone
    /// else's claim. (Claims end on whole seconds, so a claim taken over in the same second
    /// the old one would have ended is indistinguishable; the version still fences every
    /// write of the result.)
    pub async fn renew_refresh_lock(
        &self,
        team: &TeamId,
        user: &UserId,
        version: i64,
        held_until: i64,
        lock_until: i64,
    ) -> Result<bool, sqlx::Error> {
        on_pool!(self.write, |pool| {
            sqlx::query(
                "UPDATE links SET refresh_lock_until = $1 \
                 WHERE team_id = $2 AND user_id = $3 AND version = $4 AND status = 'active' \
                   AND refresh_lock_until = $5",
            )
            .bind(lock_until)
            .bind(team.as_str())
            .bind(user.as_str())
            .bind(version)
            .bind(held_until)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() == 1)
        })
    }

    /// Commits the result of a refresh of `version`: the (possibly rotated) refresh token,
    /// the new access token, a new version, and the lock released — before anyone uses
    /// the new access token. False if the link changed meanwhile (relinked, removed).
    #[allow(clippy::too_many_arguments)]
    pub async fn store_refreshed_tokens(
        &self,
        team: &TeamId,
        user: &UserId,
        version: i64,
        sealed_refresh_token: &[u8],
        key_id: &str,
        sealed_access_token: &[u8],
        access_expires_at: i64,
        now: i64,
    ) -> Result<bool, sqlx::Error> {
        on_pool!(self.write, |pool| {
            sqlx::query(
                "UPDATE links SET refresh_token = $1, key_id = $2, access_token = $3, access_expires_at = $4, \
                     version = version + 1, refreshed_at = $5, refresh_lock_until = NULL \
                 WHERE team_id = $6 AND user_id = $7 AND version = $8",
            )
            .bind(sealed_refresh_token)
            .bind(key_id)
            .bind(sealed_access_token)
            .bind(access_expires_at)
            .bind(now)
            .bind(team.as_str())
            .bind(user.as_str())
            .bind(version)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() == 1)
        })
    }

    /// Gives up a refresh claim without changing the tokens (a transient failure).
    pub async fn release_refresh_lock(&self, team: &TeamId, user: &UserId, version: i64) -> Result<(), sqlx::Error> {
        on_pool!(self.write, |pool| {
            sqlx::query(
                "UPDATE links SET refresh_lock_until = NULL WHERE team_id = $1 AND user_id = $2 AND version = $3",
            )
            .bind(team.as_str())
            .bind(user.as_str())
            .bind(version)
            .execute(pool)
            .await
            .map(|_| ())
        })
    }

    /// Marks `version` of a link as needing a new connection (Databricks declared the
    /// grant dead), drops its access token, and audits it, in one transaction. False if
    /// the link had already moved on: the compare-and-swap on `version` is what keeps a
    /// refusal of a token another process has since rotated away from ending a healthy
    /// link (TOK-04).
    pub async fn mark_needs_relink(
        &self,
        team: &TeamId,
        user: &UserId,
        version: i64,
        reason: &str,
        now: i64,
    ) -> Result<bool, sqlx::Error> {
        on_pool!(self.write, |pool| {
            let mut tx = pool.begin_write().await?;
            let changed = sqlx::query(
                "UPDATE links SET status = 'needs_relink', access_token = NULL, access_expires_at = NULL, \
                     refresh_lock_until = NULL, version = version + 1 \
                 WHERE team_id = $1 AND user_id = $2 AND version = $3 AND status = 'active'",
            )
            .bind(team.as_str())
            .bind(user.as_str())
            .bind(version)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if changed {
                let event = AuditEvent {
                    kind: AuditKind::RelinkNeeded,
                    team,
                    user,
                    actor: Actor::System,
                    detail: Some(reason),
                    at: now,
                };
                insert_audit_event!(&event).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(changed)
        })
    }

    /// Notes that a link was just used to answer a question.
    pub async fn touch_link(&self, team: &TeamId, user: &UserId, now: i64) -> Result<(), sqlx::Error> {
        on_pool!(self.write, |pool| {
            sqlx::query("UPDATE links SET last_used_at = $1 WHERE team_id = $2 AND user_id = $3")
                .bind(now)
                .bind(team.as_str())
                .bind(user.as_str())
                .execute(pool)
                .await
                .map(|_| ())
        })
    }
}
