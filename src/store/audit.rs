//! The audit trail: who linked, unlinked, needed to relink, failed to refresh, failed the
//! identity check or rated an answer, and when. It never holds question text or secrets.

use crate::domain::{TeamId, UserId};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    Link,
    Unlink,
    RelinkNeeded,
    RefreshFailed,
    IdentityMismatch,
    /// A thumbs up or down on an answer.
    Feedback,
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
            AuditKind::Feedback => "feedback",
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
    /// The value stored in `audit_events.actor`.
    pub fn as_str(self) -> &'static str {
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

/// The INSERT of an [`AuditEvent`], for use inside another query's transaction. A macro
/// rather than a generic function: it expands inside each backend's arm of `on_pool!`,
/// which keeps the futures `Send` (generic encoders over borrowed values are not, today).
macro_rules! insert_audit_event {
    ($event:expr) => {{
        let event: &$crate::store::audit::AuditEvent<'_> = $event;
        sqlx::query(
            "INSERT INTO audit_events (at, kind, team_id, user_id, actor, detail) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(event.at)
        .bind(event.kind.as_str())
        .bind(event.team.as_str())
        .bind(event.user.as_str())
        .bind(event.actor.as_str())
        .bind(event.detail)
    }};
}
pub(crate) use insert_audit_event;

impl crate::store::Store {
    /// Records `event` on its own (when no other write goes with it).
    pub async fn record_audit(&self, event: &AuditEvent<'_>) -> Result<(), sqlx::Error> {
        crate::store::on_pool!(self.write, |pool| insert_audit_event!(event)
            .execute(pool)
            .await
            .map(|_| ()))
    }
}
