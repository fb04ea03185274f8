//! The end of linking: the code exchanged, the identity read and checked, and the link
//! stored — or held for the person to confirm when it replaces another account (LNK-09).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use slack_morphism::prelude::*;
use zeroize::{Zeroize, Zeroizing};

use super::{CallbackOutcome, LinkFlow};
use crate::config::IdentityCheck;
use crate::crypto::{Purpose, hash_secret};
use crate::databricks::api::{Databricks, Identity};
use crate::databricks::authority::Authority;
use crate::databricks::bearer::{Bearer, Renew};
use crate::domain::{TeamId, UserId};
use crate::slack::api::{SlackApiError, SlackEmail};
use crate::slack::messages;
use crate::store::links::{Link, NewLink};
use crate::store::pending_links::{Completion, PendingLink, PendingStatus};

impl LinkFlow {
    /// Exchanges the code, verifies the identity and stores the link — or, when the person
    /// is linked to a different Databricks account, holds the new one until they confirm
    /// (LNK-09).
    pub(super) async fn exchange_and_link(&self, pending: &PendingLink, code: SecretString) -> Result<(), Failure> {
        let (team, user) = (&pending.team, &pending.user);
        let sealed_verifier = pending
            .pkce_verifier
            .as_deref()
            .ok_or_else(|| Failure::plain("The sign-in was not started properly."))?;
        let verifier = self
            .vault
            .open(self.binding(Purpose::PkceVerifier, team, user), sealed_verifier)
            .map_err(|e| {
                tracing::error!(error = %e, "a PKCE verifier cannot be opened");
                Failure::plain("Something went wrong on our side.")
            })?;
        let tokens = self.oauth.exchange_code(&code, &verifier).await.map_err(|e| {
            tracing::warn!(error = %e, "the authorization code exchange failed");
            Failure::plain("Databricks did not accept the sign-in.")
        })?;
        let refresh_token = tokens.refresh_token.as_ref().ok_or_else(|| {
            tracing::error!(
                provider = self.oauth.provider(),
                "the sign-in issued no refresh token; its scopes need offline_access"
            );
            Failure::plain("The sign-in did not grant lasting access (no refresh token).")
        })?;
        // Refused already (revoked, or expired on a clock far ahead of ours), the new
        // access token is renewed once with the new refresh token, as in any answer.
        let grant = Arc::new(NewGrant {
            oauth: self.oauth.clone(),
            tokens: Mutex::new((refresh_token.clone(), tokens.access_token.clone(), tokens.expires_in)),
        });
        let bearer = Bearer::new(tokens.access_token.clone(), 0, Some(grant.clone()));
        let identity = Databricks::new(&self.http, &self.workspace, &bearer)
            .current_user()
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "SCIM Me failed after the code exchange");
                Failure::plain("Databricks did not tell us who you are.")
            })?;
        self.check_identity(team, user, &identity).await?;
        let (refresh_token, access_token, expires_in) = grant.tokens.lock().expect("not poisoned").clone();
        let verified = Verified {
            identity,
            refresh_token: refresh_token.expose_secret().to_owned(),
            access_token: access_token.expose_secret().to_owned(),
            access_expires_at: self.clock.now() + expires_in as i64,
            scopes: tokens.scope.clone().unwrap_or_default(),
            signed_in_as: self.oauth.signed_in_as(&tokens),
        };
        match self.current_link(team, user).await? {
            Some(current) if current.databricks_user_id != verified.identity.id => {
                self.hold(pending, team, user, &verified, &current).await
            }
            _ => self.store_verified(pending, team, user, &verified, None).await,
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
            signed_in_as: verified.signed_in_as.as_deref(),
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
            Ok(Some(p)) if p.status == PendingStatus::Confirming => p,
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
        let (team, user) = (&pending.team, &pending.user);
        let held = pending.held_link.as_deref().and_then(|sealed| {
            let json = self
                .vault
                .open(self.binding(Purpose::HeldLink, team, user), sealed)
                .ok()?;
            serde_json::from_str::<Verified>(json.expose_secret()).ok()
        });
        let Some(verified) = held else {
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
        let result = match self.current_link(team, user).await {
            Ok(current) => {
                let replaces = current.filter(|c| c.databricks_user_id != verified.identity.id);
                self.store_verified(&pending, team, user, &verified, replaces.as_ref())
                    .await
            }
            Err(failure) => Err(failure),
        };
        if let Err(reason) = result {
            self.fail(&id_hash, &reason.text, None).await;
        }
        CallbackOutcome::Finished
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
        let slack_email = match self.slack.email_of(user.as_str()).await {
            Ok(email) => email,
            Err(e) => {
                tracing::warn!(error = %e, "users.info failed during the identity check");
                return Err(Failure::plain(
                    "We could not read your Slack profile to check it is you.",
                ));
            }
        };
        match slack_email {
            SlackEmail::Confirmed(email) if identity.has_email(&email) => Ok(()),
            // An address anyone could have typed into their profile proves nothing.
            SlackEmail::Unconfirmed | SlackEmail::Missing => {
                tracing::warn!(%team, %user, "no confirmed Slack email to check a link against");
                Err(Failure::plain(
                    "Slack does not report a confirmed email address for your account, so it can't be matched \
                     to your Databricks account and nothing was linked. Confirm your email in Slack, or ask your \
                     Slack admin, then try again.",
                ))
            }
            SlackEmail::Confirmed(_) => {
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
    pub(super) async fn warn_link_owner(&self, user: &UserId) {
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

    async fn dm(&self, user: &UserId, content: SlackMessageContent) -> Result<(), SlackApiError> {
        let channel = self.slack.open_dm(user.as_str()).await?;
        self.slack.post_message(&channel, None, content).await.map(|_| ())
    }
}

/// The tokens of a sign-in being verified: the refresh token renews a refused access token
/// once, and whatever it rotated to is what the link keeps.
struct NewGrant {
    oauth: Authority,
    /// Refresh token, access token and its lifetime in seconds, as they are now.
    tokens: Mutex<(SecretString, SecretString, u64)>,
}

#[async_trait]
impl Renew for NewGrant {
    async fn renew(&self, refused_version: i64) -> Option<(SecretString, i64)> {
        let refresh_token = self.tokens.lock().expect("not poisoned").0.clone();
        match self.oauth.refresh(&refresh_token).await {
            Ok(renewed) => {
                let rotated = renewed.refresh_token.unwrap_or(refresh_token);
                *self.tokens.lock().expect("not poisoned") =
                    (rotated, renewed.access_token.clone(), renewed.expires_in);
                Some((renewed.access_token, refused_version + 1))
            }
            Err(error) => {
                tracing::warn!(error = %error, "could not renew a new access token Databricks refused");
                None
            }
        }
    }
}

/// A failed link: what the browser is told, and an identity-mismatch audit detail.
pub(super) struct Failure {
    pub(super) text: String,
    pub(super) audit: Option<String>,
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
    /// Who signed in at the identity provider, for the audit.
    #[serde(default)]
    signed_in_as: Option<String>,
}

/// Only who signed in; never the tokens.
impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verified")
            .field("databricks_user", &self.identity.user_name)
            .finish_non_exhaustive()
    }
}

impl Drop for Verified {
    fn drop(&mut self) {
        self.refresh_token.zeroize();
        self.access_token.zeroize();
    }
}
