//! Account linking: from the "Connect Databricks" button to a stored, verified link.
//!
//! 1. The prompt's button opens `/link/{id}` — 128 random bits, stored only as a hash,
//!    single use, ten minutes. Opening it changes nothing (scanners open links too).
//! 2. Pressing "Continue" claims the link for this browser: a fresh random cookie whose
//!    hash is stored with the link. Only one claim ever succeeds.
//! 3. The browser goes to Databricks with PKCE S256 and a random, single-use `state`
//!    (stored hashed, with the sealed PKCE verifier).
//! 4. The callback must carry that state *and* the cookie; it is processed once. The code
//!    is exchanged, the identity read from SCIM Me and checked against the Slack account
//!    (`LINK_IDENTITY_CHECK`), and only then is the link stored — with the person's waiting
//!    questions queued again, in the same transaction.
//!
//! 5. A person already linked to a *different* Databricks account is asked first: the
//!    verified sign-in is held, sealed, until they confirm the replacement in the browser
//!    (LNK-09); then the old refresh token is revoked where the workspace allows it.
//!
//! Every failure ends the pending link with a reason the browser is shown, and stores
//! nothing else. A forwarded link fails the identity check: the forwardee's Databricks
//! account never lands on the forwarder's Slack user.
//!
//! The steps live in their own files: [`offer`] makes the link, [`flow`] shows and claims
//! it and starts each sign-in, [`callbacks`] takes the browser back from Slack and
//! Databricks, and `complete` verifies the identity and stores (or holds) the link.

pub mod callbacks;
mod complete;
pub mod flow;
pub mod offer;

use std::fmt;
use std::sync::Arc;

use secrecy::SecretString;
use subtle::ConstantTimeEq;
use tokio::sync::Notify;
use url::Url;

use crate::clock::SharedClock;
use crate::config::{Config, IdentityCheck};
use crate::crypto::{Binding, Purpose, Vault, hash_secret};
use crate::databricks::authority::Authority;
use crate::databricks::broker::TokenBroker;
use crate::databricks::oauth;
use crate::domain::{TeamId, UserId, WorkspaceHost};
use crate::services::Services;
use crate::slack::api::SlackApi;
use crate::slack::oidc::SlackOidc;
use crate::store::Store;
use crate::store::audit::{Actor, AuditEvent, AuditKind};
use crate::store::pending_links::{PendingLink, PendingStatus};

pub use offer::{Offer, PENDING_LINK_TTL_SECONDS, offer_link};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unusable {
    /// No such link (or a made-up id).
    Unknown,
    Expired,
    /// Already used, or replaced by a newer link.
    Used,
}

impl Unusable {
    fn of(pending: Option<&PendingLink>, now: i64) -> Self {
        match pending {
            None => Unusable::Unknown,
            Some(p) if p.status == PendingStatus::Pending && p.expires_at <= now => Unusable::Expired,
            Some(_) => Unusable::Used,
        }
    }
}

/// What the landing page shows for a usable link.
#[derive(Debug, Clone)]
pub struct Landing {
    pub slack_user: String,
    pub slack_workspace: String,
    pub databricks_workspace: WorkspaceHost,
    /// Origins the "Continue" form may be redirected to (its CSP `form-action`).
    pub next_origins: Vec<String>,
}

/// Where the browser goes after claiming a link.
pub struct Claimed {
    /// The browser-binding cookie's value.
    pub cookie: SecretString,
    pub redirect: Url,
}

/// The redirect carries the OAuth state: `Debug` shows only where it goes.
impl fmt::Debug for Claimed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claimed")
            .field("redirect_to", &self.redirect.origin().ascii_serialization())
            .finish_non_exhaustive()
    }
}

/// The query of both OAuth callbacks (`/oauth/slack/callback`, `/oauth/databricks/callback`).
#[derive(Default, serde::Deserialize)]
pub struct CallbackQuery {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
}

/// The code and state are single-use secrets: `Debug` shows only whether they came.
impl fmt::Debug for CallbackQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallbackQuery")
            .field("code", &self.code.as_ref().map(|_| "[redacted]"))
            .field("state", &self.state.as_ref().map(|_| "[redacted]"))
            .field("error", &self.error)
            .finish()
    }
}

/// How a callback ended, for the browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackOutcome {
    /// Go on to the next step (from Sign in with Slack to Databricks).
    Continue(Url),
    /// Linked, or failed with a reason recorded: show the result page (by cookie).
    Finished,
    /// Refused before anything was looked up or changed.
    Rejected(&'static str),
    /// The same callback again (reload, double click): nothing repeated.
    AlreadyHandled,
}

/// The linking service behind the `/link` and `/oauth/…/callback` routes.
pub struct LinkFlow {
    store: Store,
    vault: Vault,
    oauth: Authority,
    /// Revokes the refresh token a relink replaces.
    broker: Arc<TokenBroker>,
    slack: SlackApi,
    /// For SCIM Me with the new access token.
    http: reqwest::Client,
    clock: SharedClock,
    workspace: WorkspaceHost,
    identity_check: IdentityCheck,
    public_base_url: Url,
    /// Sign in with Slack, when configured.
    slack_oidc: Option<SlackOidc>,
    /// Notified when linking queued waiting questions again.
    wake: Arc<Notify>,
}

impl LinkFlow {
    /// Linking for the workspace and identity check of `config`.
    pub fn new(services: &Services, config: &Config) -> Self {
        Self {
            store: services.store.clone(),
            vault: services.vault.clone(),
            oauth: services.oauth.clone(),
            broker: services.broker.clone(),
            slack: services.slack.clone(),
            http: services.http.clone(),
            clock: services.clock.clone(),
            workspace: config.databricks.host.clone(),
            identity_check: config.identity_check,
            public_base_url: services.public_base_url.clone(),
            slack_oidc: config.slack.oidc_client.clone().map(|(client_id, secret)| {
                SlackOidc::new(
                    oauth::http_client(),
                    config.slack.oidc_issuer.clone(),
                    client_id,
                    secret,
                    &services.public_base_url,
                )
            }),
            wake: services.wake.clone(),
        }
    }

    /// Whether this deployment proves the browser's Slack identity before Databricks.
    fn requires_slack_sign_in(&self) -> bool {
        matches!(
            self.identity_check,
            IdentityCheck::SlackOidc | IdentityCheck::SlackOidcAndEmail
        )
    }

    /// The Databricks workspace people link to.
    pub fn workspace(&self) -> &WorkspaceHost {
        &self.workspace
    }

    /// Whether cookies must be `Secure` (`__Host-` prefixed): everywhere but plain-http
    /// loopback development.
    /// `PUBLIC_BASE_URL`'s origin, as a browser sends it in `Origin`.
    pub fn public_origin(&self) -> String {
        self.public_base_url.origin().ascii_serialization()
    }

    pub fn secure_cookies(&self) -> bool {
        self.public_base_url.scheme() == "https"
    }

    fn binding<'a>(&'a self, purpose: Purpose, team: &'a TeamId, user: &'a UserId) -> Binding<'a> {
        Binding::new(purpose, team, user, &self.workspace)
    }

    /// Ends the pending link with `text` for the browser; `mismatch_detail` also audits
    /// an identity mismatch.
    async fn fail(&self, id_hash: &[u8], text: &str, mismatch_detail: Option<&str>) {
        let pending = self.store.find_pending_link(id_hash).await.ok().flatten();
        let audit = match (&pending, mismatch_detail) {
            (Some(pending), Some(detail)) => Some(AuditEvent {
                kind: AuditKind::IdentityMismatch,
                team: &pending.team,
                user: &pending.user,
                actor: Actor::User,
                detail: Some(detail),
                at: self.clock.now(),
            }),
            _ => None,
        };
        if let Err(e) = self.store.fail_pending_link(id_hash, text, audit).await {
            tracing::error!(error = %e, "could not record a failed link");
        }
    }
}

/// Whether `cookie` is the browser-binding cookie of `pending` (LNK-03), compared in
/// constant time.
fn same_browser(pending: &PendingLink, cookie: Option<&str>) -> bool {
    match (cookie, &pending.browser_hash) {
        (Some(cookie), Some(expected)) => bool::from(hash_secret(cookie).ct_eq(expected.as_slice())),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // LOG-01: a callback's code and state never reach a log line through `Debug`.
    #[test]
    fn a_callback_query_debugs_without_its_code_or_state() {
        let query = CallbackQuery {
            code: Some("the-code-1234".into()),
            state: Some("the-state-5678".into()),
            error: None,
        };
        let shown = format!("{query:?}");
        assert!(
            !shown.contains("the-code-1234") && !shown.contains("the-state-5678"),
            "{shown}"
        );
        assert!(shown.contains("[redacted]"), "{shown}");
    }

    #[test]
    fn a_claim_debugs_without_its_cookie_or_state() {
        let claimed = Claimed {
            cookie: SecretString::from("cookie-secret-1"),
            redirect: Url::parse("https://dbc.example.com/oidc/v1/authorize?state=state-secret-2").unwrap(),
        };
        let shown = format!("{claimed:?}");
        assert!(
            !shown.contains("cookie-secret-1") && !shown.contains("state-secret-2"),
            "{shown}"
        );
    }
}
