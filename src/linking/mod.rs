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

use std::sync::Arc;

use aes_gcm::aead::OsRng;
use aes_gcm::aead::rand_core::RngCore;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use slack_morphism::prelude::*;
use subtle::ConstantTimeEq;
use tokio::sync::Notify;
use url::Url;
use zeroize::{Zeroize, Zeroizing};

use crate::clock::SharedClock;
use crate::config::IdentityCheck;
use crate::crypto::{Binding, Purpose, Vault};
use crate::databricks::api::{Databricks, Identity};
use crate::databricks::broker::TokenBroker;
use crate::databricks::oauth::DatabricksOAuth;
use crate::domain::{PersonIn, TeamId, UserId, WorkspaceHost};
use crate::slack::api::SlackApi;
use crate::slack::messages;
use crate::slack::oidc::SlackOidc;
use crate::store::Store;
use crate::store::audit::{Actor, AuditEvent, AuditKind};
use crate::store::links::{Link, NewLink};
use crate::store::pending_links::{Completion, NewPendingLink, PendingLink};

/// How long a "Connect Databricks" link stays usable, and how long the browser then has
/// to finish at Databricks.
pub const PENDING_LINK_TTL_SECONDS: i64 = 10 * 60;

/// 32 random bytes, base64url: for cookies, OAuth state and PKCE verifiers (43 chars, the
/// length RFC 7636 recommends).
pub fn random_token() -> SecretString {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    SecretString::from(URL_SAFE_NO_PAD.encode(bytes))
}

/// SHA-256 of a secret, as stored in place of it.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A freshly generated link id. Held as a secret: whoever has it can start linking.
pub struct LinkId(SecretString);

impl LinkId {
    /// 16 bytes from the operating system's CSPRNG, base64url without padding (22 chars).
    pub fn generate() -> Self {
        let mut bytes = [0u8; 16];
        OsRng.fill_bytes(&mut bytes);
        Self(SecretString::from(URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// What the database stores in place of the id.
    pub fn hash(&self) -> [u8; 32] {
        hash_link_id(self.0.expose_secret())
    }

    /// `{public_base_url}/link/{id}`: the URL behind the "Connect Databricks" button.
    pub fn url(&self, public_base_url: &Url) -> Url {
        let mut url = public_base_url.clone();
        url.set_path(&format!("/link/{}", self.0.expose_secret()));
        url
    }
}

/// SHA-256 of a link id as it appears in a URL.
pub fn hash_link_id(id: &str) -> [u8; 32] {
    hash_secret(id)
}

/// A link offered to a person.
pub struct Offer {
    /// The page to send them to (single use, 10 minutes).
    pub url: Url,
    /// Identifies the pending link, to void it if the offer never reached them.
    pub id_hash: [u8; 32],
}

/// Creates a fresh single-use link for `to` (voiding older ones; a question kept with it
/// is answered in `to`'s conversation) unless one was offered within `quiet_seconds`:
/// then `None`, and the earlier prompt stands. With `quiet_seconds` 0 there is always an
/// offer.
pub async fn offer_link(
    store: &Store,
    public_base_url: &Url,
    to: PersonIn<'_>,
    now: i64,
    quiet_seconds: i64,
) -> Result<Option<Offer>, sqlx::Error> {
    let id = LinkId::generate();
    let id_hash = id.hash();
    let pending = NewPendingLink {
        id_hash: &id_hash,
        team: to.team,
        user: to.user,
        channel_id: to.channel,
        thread_ts: to.thread_ts,
        expires_at: now + PENDING_LINK_TTL_SECONDS,
    };
    let fresh = store.create_pending_link(&pending, now, quiet_seconds).await?;
    Ok(fresh.then(|| Offer {
        url: id.url(public_base_url),
        id_hash,
    }))
}

/// Why a link cannot be used, as the browser is told.
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
            Some(p) if p.status == "pending" && p.expires_at <= now => Unusable::Expired,
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

/// The query of `/oauth/databricks/callback`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct CallbackQuery {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
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

/// The linking service behind the `/link` and `/oauth/databricks/callback` routes.
pub struct LinkFlow {
    pub store: Store,
    pub vault: Vault,
    pub oauth: DatabricksOAuth,
    /// Revokes the refresh token a relink replaces.
    pub broker: Arc<TokenBroker>,
    pub slack: SlackApi,
    pub http: reqwest::Client,
    pub clock: SharedClock,
    pub workspace: WorkspaceHost,
    pub identity_check: IdentityCheck,
    pub public_base_url: Url,
    /// Sign in with Slack, when configured.
    pub slack_oidc: Option<SlackOidc>,
    /// Notified when linking queued waiting questions again.
    pub wake: Arc<Notify>,
}

impl LinkFlow {
    /// Whether this deployment proves the browser's Slack identity before Databricks.
    fn requires_slack_sign_in(&self) -> bool {
        matches!(
            self.identity_check,
            IdentityCheck::SlackOidc | IdentityCheck::SlackOidcAndEmail
        )
    }

    /// Whether cookies must be `Secure` (`__Host-` prefixed): everywhere but plain-http
    /// loopback development.
    pub fn secure_cookies(&self) -> bool {
        self.public_base_url.scheme() == "https"
    }

    /// The landing page's facts for link `id`, or why it cannot be used. Reads only.
    pub async fn landing(&self, id: &str) -> Result<Landing, Unusable> {
        let now = self.clock.now();
        let pending = self.store.find_pending_link(&hash_link_id(id)).await.map_err(|e| {
            tracing::error!(error = %e, "could not read a pending link");
            Unusable::Unknown
        })?;
        match pending {
            Some(p) if p.status == "pending" && p.expires_at > now => {
                let (slack_user, slack_workspace) = self.describe_slack_user(&p).await;
                let mut next_origins = vec![self.workspace.as_str().to_owned()];
                if let Some(oidc) = self.slack_oidc.as_ref().filter(|_| self.requires_slack_sign_in()) {
                    next_origins.push(oidc.issuer_origin());
                }
                Ok(Landing {
                    slack_user,
                    slack_workspace,
                    databricks_workspace: self.workspace.clone(),
                    next_origins,
                })
            }
            other => Err(Unusable::of(other.as_ref(), now)),
        }
    }

    async fn describe_slack_user(&self, p: &PendingLink) -> (String, String) {
        let name = match self.slack.user_info(&p.user_id).await {
            Ok(user) => user
                .profile
                .and_then(|profile| profile.display_name.filter(|n| !n.is_empty()).or(profile.real_name))
                .or(user.name)
                .map_or_else(|| p.user_id.clone(), |n| format!("@{n}")),
            Err(error) => {
                tracing::warn!(error = %error, "users.info failed; showing the Slack user id");
                p.user_id.clone()
            }
        };
        let team = match self.slack.bot_identity().await {
            Ok(bot) if bot.team_id == p.team_id => bot.team.clone(),
            _ => p.team_id.clone(),
        };
        (name, team)
    }

    /// Claims link `id` for this browser and starts the Databricks authorization.
    pub async fn claim(&self, id: &str) -> Result<Claimed, Unusable> {
        let now = self.clock.now();
        let id_hash = hash_link_id(id);
        let cookie = random_token();
        let claimed = self
            .store
            .claim_pending_link(
                &id_hash,
                &hash_secret(cookie.expose_secret()),
                now,
                now + PENDING_LINK_TTL_SECONDS,
            )
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "could not claim a pending link");
                Unusable::Unknown
            })?;
        let Some(pending) = claimed else {
            let current = self.store.find_pending_link(&id_hash).await.ok().flatten();
            return Err(Unusable::of(current.as_ref(), now));
        };
        let redirect = if self.requires_slack_sign_in() {
            self.start_slack_sign_in(&pending).await
        } else {
            self.start_databricks(&pending).await
        };
        let redirect = redirect.map_err(|e| {
            tracing::error!(error = %e, "could not start the authorization");
            Unusable::Unknown
        })?;
        Ok(Claimed { cookie, redirect })
    }

    /// Records a fresh Slack state and nonce and returns Slack's authorization URL.
    async fn start_slack_sign_in(&self, pending: &PendingLink) -> anyhow::Result<Url> {
        let oidc = self
            .slack_oidc
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("Sign in with Slack is required but not configured"))?;
        let (state, nonce) = (random_token(), random_token());
        let url = oidc.authorize_url(&state, &nonce, &pending.team_id).await?;
        let stored = self
            .store
            .set_slack_state(
                &pending.id_hash,
                &hash_secret(state.expose_secret()),
                &hash_secret(nonce.expose_secret()),
            )
            .await?;
        anyhow::ensure!(stored, "the link changed while starting Sign in with Slack");
        Ok(url)
    }

    /// Records a fresh Databricks state and sealed PKCE verifier and returns Databricks'
    /// authorization URL.
    async fn start_databricks(&self, pending: &PendingLink) -> anyhow::Result<Url> {
        let (team, user) = ids(pending).ok_or_else(|| anyhow::anyhow!("damaged pending link"))?;
        let state = random_token();
        let verifier = random_token();
        let sealed_verifier = self
            .vault
            .seal(self.binding(Purpose::PkceVerifier, &team, &user), &verifier);
        let url = self.oauth.authorize_url(&state, &verifier).await?;
        let stored = self
            .store
            .set_databricks_state(&pending.id_hash, &hash_secret(state.expose_secret()), &sealed_verifier)
            .await?;
        anyhow::ensure!(stored, "the link changed while starting the Databricks authorization");
        Ok(url)
    }

    /// Handles Sign in with Slack's redirect back: proves the browser belongs to the
    /// link's Slack user, then sends it on to Databricks (LNK-01, LNK-02, LNK-07).
    pub async fn slack_callback(&self, query: &CallbackQuery, cookie: Option<&str>) -> CallbackOutcome {
        let Some(oidc) = &self.slack_oidc else {
            return CallbackOutcome::Rejected("Sign in with Slack is not enabled here.");
        };
        let Some(state) = query.state.as_deref().filter(|s| !s.is_empty()) else {
            return CallbackOutcome::Rejected("The sign-in answer is missing its state.");
        };
        let pending = match self.store.find_pending_link_by_slack_state(&hash_secret(state)).await {
            Ok(Some(p)) => p,
            Ok(None) => return CallbackOutcome::Rejected("This sign-in is not valid any more."),
            Err(e) => {
                tracing::error!(error = %e, "could not read a pending link");
                return CallbackOutcome::Rejected("Something went wrong on our side.");
            }
        };
        if !same_browser(&pending, cookie) {
            if pending.status == "claimed" {
                self.fail(
                    &pending.id_hash,
                    "The sign-in was finished in a different browser than it was started in.",
                    None,
                )
                .await;
            }
            return CallbackOutcome::Rejected(
                "This sign-in can't be finished in this browser: it was started in another one, or has already ended.",
            );
        }
        if pending.status != "claimed" || pending.slack_verified != 0 {
            return CallbackOutcome::AlreadyHandled;
        }
        if query.error.is_some() {
            self.fail(
                &pending.id_hash,
                "You cancelled Sign in with Slack, so nothing was linked.",
                None,
            )
            .await;
            return CallbackOutcome::Finished;
        }
        let Some(code) = query.code.as_deref().filter(|c| !c.is_empty()) else {
            self.fail(&pending.id_hash, "Slack sent no authorization code.", None)
                .await;
            return CallbackOutcome::Finished;
        };
        let expected_nonce = pending.slack_nonce_hash.clone().unwrap_or_default();
        let nonce_matches = |nonce: &str| bool::from(hash_secret(nonce).ct_eq(expected_nonce.as_slice()));
        let identity = match oidc.identify(&SecretString::from(code.to_owned()), nonce_matches).await {
            Ok(identity) => identity,
            Err(e) => {
                tracing::warn!(error = %e, "Sign in with Slack failed");
                self.fail(&pending.id_hash, "Slack could not confirm who you are.", None)
                    .await;
                return CallbackOutcome::Finished;
            }
        };
        if identity.team_id != pending.team_id || identity.user_id != pending.user_id {
            tracing::warn!(
                link_user = %pending.user_id,
                browser_user = %identity.user_id,
                "Sign in with Slack: the browser belongs to someone else"
            );
            let text = "You are signed in to Slack as someone other than the person this link was made for, so                         nothing was linked. Links are personal: ask the bot your own question to get yours.";
            self.fail(
                &pending.id_hash,
                text,
                Some(&format!("slack user {}", identity.user_id)),
            )
            .await;
            if let Some((_, owner)) = ids(&pending) {
                self.warn_link_owner(&owner).await;
            }
            return CallbackOutcome::Finished;
        }
        match self.store.mark_slack_verified(&pending.id_hash).await {
            Ok(true) => {}
            _ => return CallbackOutcome::AlreadyHandled,
        }
        match self.start_databricks(&pending).await {
            Ok(url) => CallbackOutcome::Continue(url),
            Err(e) => {
                tracing::error!(error = %e, "could not start the Databricks authorization");
                self.fail(&pending.id_hash, "Something went wrong on our side.", None)
                    .await;
                CallbackOutcome::Finished
            }
        }
    }

    /// Handles the Databricks redirect back. `cookie` is the browser-binding cookie.
    pub async fn databricks_callback(&self, query: &CallbackQuery, cookie: Option<&str>) -> CallbackOutcome {
        let Some(state) = query.state.as_deref().filter(|s| !s.is_empty()) else {
            return CallbackOutcome::Rejected("The sign-in answer is missing its state.");
        };
        let pending = match self.store.find_pending_link_by_state(&hash_secret(state)).await {
            Ok(Some(p)) => p,
            Ok(None) => return CallbackOutcome::Rejected("This sign-in is not valid any more."),
            Err(e) => {
                tracing::error!(error = %e, "could not read a pending link");
                return CallbackOutcome::Rejected("Something went wrong on our side.");
            }
        };
        let id_hash = pending.id_hash.clone();
        if !same_browser(&pending, cookie) {
            if pending.status == "claimed" {
                self.fail(
                    &id_hash,
                    "The sign-in was finished in a different browser than it was started in.",
                    None,
                )
                .await;
            }
            return CallbackOutcome::Rejected(
                "This sign-in can't be finished in this browser: it was started in another one, or has already ended.",
            );
        }
        if matches!(
            pending.status.as_str(),
            "completed" | "failed" | "exchanging" | "confirming"
        ) {
            return CallbackOutcome::AlreadyHandled;
        }
        if pending.status != "claimed" {
            return CallbackOutcome::Rejected("This sign-in is not valid any more.");
        }
        if self.requires_slack_sign_in() && pending.slack_verified == 0 {
            self.fail(&id_hash, "Sign in with Slack did not happen first.", None)
                .await;
            return CallbackOutcome::Finished;
        }
        if query.error.is_some() {
            // access_denied and friends: the person (or Databricks) stopped the flow.
            self.fail(
                &id_hash,
                "You cancelled the connection at Databricks, so nothing was linked.",
                None,
            )
            .await;
            return CallbackOutcome::Finished;
        }
        let Some(code) = query.code.as_deref().filter(|c| !c.is_empty()) else {
            self.fail(&id_hash, "Databricks sent no authorization code.", None)
                .await;
            return CallbackOutcome::Finished;
        };
        match self.store.begin_exchange(&id_hash, self.clock.now()).await {
            Ok(true) => {}
            Ok(false) => {
                self.fail(&id_hash, "The link expired before the sign-in finished.", None)
                    .await;
                return CallbackOutcome::Finished;
            }
            Err(e) => {
                tracing::error!(error = %e, "could not start a code exchange");
                return CallbackOutcome::Rejected("Something went wrong on our side.");
            }
        }
        if let Err(reason) = self
            .exchange_and_link(&pending, SecretString::from(code.to_owned()))
            .await
        {
            self.fail(&id_hash, &reason.text, reason.audit.as_deref()).await;
        }
        CallbackOutcome::Finished
    }

    async fn fail(&self, id_hash: &[u8], text: &str, mismatch_detail: Option<&str>) {
        let pending = self.store.find_pending_link(id_hash).await.ok().flatten();
        let ids = pending.as_ref().and_then(ids);
        let audit = match (&ids, mismatch_detail) {
            (Some((team, user)), Some(detail)) => Some(AuditEvent {
                kind: AuditKind::IdentityMismatch,
                team,
                user,
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

    /// Exchanges the code, verifies the identity and stores the link — or, when the person
    /// is linked to a different Databricks account, holds the new one until they confirm
    /// (LNK-09).
    async fn exchange_and_link(&self, pending: &PendingLink, code: SecretString) -> Result<(), Failure> {
        let (team, user) = ids(pending).ok_or_else(|| Failure::plain("The link is damaged."))?;
        let sealed_verifier = pending
            .pkce_verifier
            .as_deref()
            .ok_or_else(|| Failure::plain("The sign-in was not started properly."))?;
        let verifier = self
            .vault
            .open(self.binding(Purpose::PkceVerifier, &team, &user), sealed_verifier)
            .map_err(|e| {
                tracing::error!(error = %e, "a PKCE verifier cannot be opened");
                Failure::plain("Something went wrong on our side.")
            })?;
        let tokens = self.oauth.exchange_code(&code, &verifier).await.map_err(|e| {
            tracing::warn!(error = %e, "the authorization code exchange failed");
            Failure::plain("Databricks did not accept the sign-in.")
        })?;
        let refresh_token = tokens.refresh_token.as_ref().ok_or_else(|| {
            tracing::error!("Databricks issued no refresh token; DATABRICKS_SCOPES needs offline_access");
            Failure::plain("Databricks did not grant lasting access (no refresh token).")
        })?;
        let identity = Databricks::new(&self.http, &self.workspace, &tokens.access_token)
            .current_user()
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "SCIM Me failed after the code exchange");
                Failure::plain("Databricks did not tell us who you are.")
            })?;
        self.check_identity(&team, &user, &identity).await?;
        let verified = Verified {
            identity,
            refresh_token: refresh_token.expose_secret().to_owned(),
            access_token: tokens.access_token.expose_secret().to_owned(),
            access_expires_at: self.clock.now() + tokens.expires_in as i64,
            scopes: tokens.scope.clone().unwrap_or_default(),
        };
        match self.current_link(&team, &user).await? {
            Some(current) if current.databricks_user_id != verified.identity.id => {
                self.hold(pending, &team, &user, &verified, &current).await
            }
            _ => self.store_verified(pending, &team, &user, &verified, None).await,
        }
    }

    async fn current_link(&self, team: &TeamId, user: &UserId) -> Result<Option<Link>, Failure> {
        self.store.find_link(team, user).await.map_err(|e| {
            tracing::error!(error = %e, "could not read the current link");
            Failure::plain("Something went wrong on our side.")
        })
    }

    /// Holds a verified sign-in, sealed, for the person to confirm on the result page that
    /// it replaces their link to `current`.
    async fn hold(
        &self,
        pending: &PendingLink,
        team: &TeamId,
        user: &UserId,
        verified: &Verified,
        current: &Link,
    ) -> Result<(), Failure> {
        let json = Zeroizing::new(serde_json::to_string(verified).expect("a sign-in serialises"));
        let sealed = self.vault.seal(
            self.binding(Purpose::HeldLink, team, user),
            &SecretString::from(json.as_str()),
        );
        let held = self
            .store
            .hold_for_confirmation(
                &pending.id_hash,
                &sealed,
                verified.identity.shown_name(),
                &current.databricks_user_name,
            )
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "could not hold a sign-in for confirmation");
                Failure::plain("Something went wrong on our side.")
            })?;
        if !held {
            return Err(Failure::plain("This sign-in was already handled."));
        }
        tracing::info!(
            databricks_user = %verified.identity.user_name,
            linked = %current.databricks_user_name,
            "signed in as another Databricks account than the linked one; asking the person first"
        );
        Ok(())
    }

    /// Stores a verified sign-in as the person's link, replacing `replaces` (whose refresh
    /// token is then revoked where the workspace allows), and tells them in Slack.
    async fn store_verified(
        &self,
        pending: &PendingLink,
        team: &TeamId,
        user: &UserId,
        verified: &Verified,
        replaces: Option<&Link>,
    ) -> Result<(), Failure> {
        let now = self.clock.now();
        let seal = |purpose, secret: &str| {
            self.vault
                .seal(self.binding(purpose, team, user), &SecretString::from(secret))
        };
        let sealed_refresh = seal(Purpose::RefreshToken, &verified.refresh_token);
        let sealed_access = seal(Purpose::AccessToken, &verified.access_token);
        let identity = &verified.identity;
        let completion = Completion {
            link: NewLink {
                team,
                user,
                workspace: &self.workspace,
                databricks_user_id: &identity.id,
                databricks_user_name: &identity.user_name,
                databricks_display_name: identity.display_name.as_deref(),
                sealed_refresh_token: &sealed_refresh,
                key_id: self.vault.primary_key_id().as_str(),
                scopes: &verified.scopes,
                sealed_access_token: Some(&sealed_access),
                access_expires_at: Some(verified.access_expires_at),
            },
            id_hash: &pending.id_hash,
            shown_name: identity.shown_name(),
            replaces: replaces.map(|old| old.databricks_user_name.as_str()),
        };
        let stored = self.store.complete_linking(&completion, now).await.map_err(|e| {
            tracing::error!(error = %e, "could not store a verified link");
            Failure::plain("Something went wrong on our side.")
        })?;
        if !stored {
            return Err(Failure::plain("This sign-in was already handled."));
        }
        tracing::info!(databricks_user = %identity.user_name, "linked");
        if let Some(old) = replaces {
            self.broker.revoke(old).await;
        }
        self.wake.notify_one();
        self.confirm_in_slack(user, identity).await;
        Ok(())
    }

    /// The person's answer on the confirmation page (LNK-09), from the browser holding
    /// `cookie`: replace their link with the held sign-in, or keep it.
    pub async fn confirm(&self, cookie: Option<&str>, replace: bool) -> CallbackOutcome {
        let Some(cookie) = cookie else {
            return CallbackOutcome::Rejected("This confirmation can't be finished in this browser.");
        };
        let pending = match self.store.find_finished_pending_link(&hash_secret(cookie)).await {
            Ok(Some(p)) if p.status == "confirming" => p,
            Ok(_) => return CallbackOutcome::Rejected("There is nothing to confirm in this browser."),
            Err(e) => {
                tracing::error!(error = %e, "could not read a pending link");
                return CallbackOutcome::Rejected("Something went wrong on our side.");
            }
        };
        let id_hash = pending.id_hash.clone();
        if pending.expires_at <= self.clock.now() {
            self.fail(&id_hash, "The confirmation expired, so nothing changed.", None)
                .await;
            return CallbackOutcome::Finished;
        }
        let held = match (ids(&pending), pending.held_link.as_deref()) {
            (Some((team, user)), Some(sealed)) => self
                .vault
                .open(self.binding(Purpose::HeldLink, &team, &user), sealed)
                .ok()
                .and_then(|json| serde_json::from_str::<Verified>(json.expose_secret()).ok())
                .map(|verified| (team, user, verified)),
            _ => None,
        };
        let Some((team, user, verified)) = held else {
            tracing::error!("a held sign-in cannot be opened");
            self.fail(&id_hash, "Something went wrong on our side.", None).await;
            return CallbackOutcome::Finished;
        };
        if !replace {
            self.oauth
                .revoke_quietly(&SecretString::from(verified.refresh_token.as_str()))
                .await;
            let kept = pending.replaces.as_deref().unwrap_or("your current account");
            let text = format!("You kept your Databricks connection as {kept}. Nothing changed.");
            self.fail(&id_hash, &text, None).await;
            return CallbackOutcome::Finished;
        }
        let result = match self.current_link(&team, &user).await {
            Ok(current) => {
                let replaces = current.filter(|c| c.databricks_user_id != verified.identity.id);
                self.store_verified(&pending, &team, &user, &verified, replaces.as_ref())
                    .await
            }
            Err(failure) => Err(failure),
        };
        if let Err(reason) = result {
            self.fail(&id_hash, &reason.text, None).await;
        }
        CallbackOutcome::Finished
    }

    fn binding<'a>(&'a self, purpose: Purpose, team: &'a TeamId, user: &'a UserId) -> Binding<'a> {
        Binding::new(purpose, team, user, &self.workspace)
    }

    /// Applies `LINK_IDENTITY_CHECK`: the Slack profile email must be one of the
    /// Databricks user's emails or its userName (LNK-08).
    async fn check_identity(&self, team: &TeamId, user: &UserId, identity: &Identity) -> Result<(), Failure> {
        if !matches!(
            self.identity_check,
            IdentityCheck::Email | IdentityCheck::SlackOidcAndEmail
        ) {
            return Ok(());
        }
        let slack_email = match self.slack.user_info(user.as_str()).await {
            Ok(u) => u.profile.and_then(|p| p.email).map(|e| e.0),
            Err(e) => {
                tracing::warn!(error = %e, "users.info failed during the identity check");
                return Err(Failure::plain(
                    "We could not read your Slack profile to check it is you.",
                ));
            }
        };
        match slack_email {
            Some(email) if identity.has_email(&email) => Ok(()),
            _ => {
                tracing::warn!(%team, %user, databricks_user = %identity.user_name, "identity mismatch while linking");
                let text = format!(
                    "The Databricks account you signed in with ({}) does not match your Slack account's email, \
                     so nothing was linked. Sign in to Databricks as yourself and try again from Slack.",
                    identity.user_name
                );
                self.warn_link_owner(user).await;
                Err(Failure {
                    text,
                    audit: Some(format!("databricks user {}", identity.user_name)),
                })
            }
        }
    }

    /// Tells the link's owner that someone else's account was refused on their link.
    async fn warn_link_owner(&self, user: &UserId) {
        let text = "Someone tried to finish your Databricks connection with a Databricks account that does not match \
                    your Slack email. Nothing was linked. If that wasn't you, don't share your connection links.";
        if let Err(e) = self.dm(user, SlackMessageContent::new().with_text(text.into())).await {
            tracing::warn!(error = %e, "could not warn a link owner");
        }
    }

    async fn confirm_in_slack(&self, user: &UserId, identity: &Identity) {
        let content = messages::linked(identity.shown_name(), &identity.user_name, self.workspace.as_str());
        if let Err(e) = self.dm(user, content).await {
            tracing::warn!(error = %e, "could not send the linked confirmation");
        }
    }

    async fn dm(&self, user: &UserId, content: SlackMessageContent) -> Result<(), crate::slack::api::SlackApiError> {
        let channel = self.slack.open_dm(user.as_str()).await?;
        self.slack.post_message(&channel, None, content).await.map(|_| ())
    }

    /// The finished pending link of the browser holding `cookie`, for the result page.
    pub async fn result_for_browser(&self, cookie: &str) -> Option<PendingLink> {
        self.store
            .find_finished_pending_link(&hash_secret(cookie))
            .await
            .ok()
            .flatten()
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

fn ids(pending: &PendingLink) -> Option<(TeamId, UserId)> {
    Some((
        TeamId::parse(&pending.team_id).ok()?,
        UserId::parse(&pending.user_id).ok()?,
    ))
}

/// A failed link: what the browser is told, and an identity-mismatch audit detail.
struct Failure {
    text: String,
    audit: Option<String>,
}

impl Failure {
    fn plain(text: &str) -> Self {
        Self {
            text: text.to_owned(),
            audit: None,
        }
    }
}

/// A sign-in verified at Databricks, not stored as a link yet. Sealed whole while it waits
/// for the person's confirmation; its tokens are wiped from memory when it is dropped.
#[derive(Serialize, Deserialize)]
struct Verified {
    identity: Identity,
    refresh_token: String,
    access_token: String,
    access_expires_at: i64,
    scopes: String,
}

impl Drop for Verified {
    fn drop(&mut self) {
        self.refresh_token.zeroize();
        self.access_token.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // LNK-06: link ids are 128 random bits, url-safe; only their hash is looked up.
    #[test]
    fn link_ids_are_128_bit_url_safe_and_distinct() {
        let a = LinkId::generate();
        let b = LinkId::generate();
        let id = a.0.expose_secret();
        assert_eq!(id.len(), 22);
        assert!(id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_eq!(URL_SAFE_NO_PAD.decode(id).unwrap().len(), 16);
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.hash(), hash_link_id(id));
    }

    #[test]
    fn the_link_url_is_built_from_the_public_base_url() {
        let id = LinkId::generate();
        let url = id.url(&Url::parse("https://bot.example.com").unwrap());
        assert_eq!(
            url.as_str(),
            format!("https://bot.example.com/link/{}", id.0.expose_secret())
        );
    }

    // OA-01, LNK-06: verifiers, states, nonces and cookies are 43 characters of the RFC 7636
    // alphabet (256 random bits).
    #[test]
    fn random_tokens_are_43_url_safe_characters() {
        let t = random_token();
        assert_eq!(t.expose_secret().len(), 43);
        assert!(
            t.expose_secret()
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_ne!(t.expose_secret(), random_token().expose_secret());
    }
}
