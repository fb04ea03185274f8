//! The audit trail: who linked, unlinked, needed to relink, failed to refresh or failed the
//! identity check, and when. It never holds question text or secrets.

use sqlx::query::Query;
use sqlx::{Database, Encode, Type};

use crate::domain::{TeamId, UserId};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    Link,
    Unlink,
    RelinkNeeded,
    RefreshFailed,
    IdentityMismatch,
}

impl AuditKind {
    /// The value stored in `audit_events.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Link => "link",
            AuditKind::Unlink => "unlink",
            AuditKind::RelinkNeeded => "relink_needed",
            AuditKind::RefreshFailed => "refresh_failed",
            AuditKind::IdentityMismatch => "identity_mismatch",
        }
    }
}

/// Who caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// The Slack person themselves.
    User,
    /// An operator using the command line.
    AdminCli,
    /// The bot (token refresh, uninstall, …).
    System,
}

impl Actor {
    fn as_str(self) -> &'static str {
        match self {
            Actor::User => "user",
            Actor::AdminCli => "admin-cli",
            Actor::System => "system",
        }
    }
}

/// One audit row to write.
#[derive(Debug, Clone)]
pub struct AuditEvent<'a> {
    pub kind: AuditKind,
    pub team: &'a TeamId,
    pub user: &'a UserId,
    pub actor: Actor,
    /// A short, secret-free detail such as a Databricks userName or an error code.
    pub detail: Option<&'a str>,
    pub at: i64,
}

impl<'a> AuditEvent<'a> {
    /// The INSERT for this event, for use inside another query's transaction.
    pub(crate) fn insert<DB>(&self) -> Query<'a, DB, <DB as Database>::Arguments<'a>>
    where
        DB: Database,
        &'a str: Encode<'a, DB> + Type<DB>,
        Option<&'a str>: Encode<'a, DB> + Type<DB>,
        i64: Encode<'a, DB> + Type<DB>,
    {
        sqlx::query(
            "INSERT INTO audit_events (at, kind, team_id, user_id, actor, detail) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(self.at)
        .bind(self.kind.as_str())
        .bind(self.team.as_str())
        .bind(self.user.as_str())
        .bind(self.actor.as_str())
        .bind(self.detail)
    }
}
