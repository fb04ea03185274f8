//! The browser coming back from a sign-in: Sign in with Slack first (when the deployment
//! asks for it), then Databricks. Both legs open the same way — the `state` names a
//! pending link and the browser holding it is the one that claimed it (LNK-03) — and
//! then each checks its own step.

use std::time::Duration;

use secrecy::SecretString;
use subtle::ConstantTimeEq;

use super::{CallbackOutcome, CallbackQuery, LinkFlow, same_browser};
use crate::crypto::hash_secret;
use crate::store::pending_links::{EXCHANGE_BUDGET_SECONDS, EXCHANGE_CUT_OFF, PendingLink, PendingStatus};

/// Which sign-in the browser is coming back from.
#[derive(Clone, Copy)]
enum Leg {
    Slack,
    Databricks,
}

impl Leg {
    /// What the browser is told when the person cancelled this sign-in.
    fn cancelled(self) -> &'static str {
        match self {
            Leg::Slack => "You cancelled Sign in with Slack, so nothing was linked.",
            Leg::Databricks => "You cancelled the connection at Databricks, so nothing was linked.",
        }
    }

    /// What the browser is told when the answer carries no code.
    fn no_code(self) -> &'static str {
        match self {
            Leg::Slack => "Slack sent no authorization code.",
            Leg::Databricks => "Databricks sent no authorization code.",
        }
    }
}

impl LinkFlow {
    /// Handles Sign in with Slack's redirect back: proves the browser belongs to the
    /// link's Slack user, then sends it on to Databricks (LNK-01, LNK-02, LNK-07).
    pub async fn slack_callback(&self, query: &CallbackQuery, cookie: Option<&str>) -> CallbackOutcome {
        let Some(oidc) = &self.slack_oidc else {
            return CallbackOutcome::Rejected("Sign in with Slack is not enabled here.");
        };
        let pending = match self.returning(Leg::Slack, query, cookie).await {
            Ok(pending) => pending,
            Err(outcome) => return outcome,
        };
        if pending.status != PendingStatus::Claimed || pending.slack_verified {
            return CallbackOutcome::AlreadyHandled;
        }
        let code = match self.code(Leg::Slack, query, &pending).await {
            Ok(code) => code,
            Err(outcome) => return outcome,
        };
        let expected_nonce = pending.slack_nonce_hash.clone().unwrap_or_default();
        let nonce_matches = |nonce: &str| bool::from(hash_secret(nonce).ct_eq(expected_nonce.as_slice()));
        let identity = match oidc.identify(&code, nonce_matches).await {
            Ok(identity) => identity,
            Err(e) => {
                tracing::warn!(error = %e, "Sign in with Slack failed");
                self.fail(&pending.id_hash, "Slack could not confirm who you are.", None)
                    .await;
                return CallbackOutcome::Finished;
            }
        };
        if identity.team_id != pending.team.as_str() || identity.user_id != pending.user.as_str() {
            tracing::warn!(
                link_user = %pending.user,
                browser_user = %identity.user_id,
                "Sign in with Slack: the browser belongs to someone else"
            );
            let text = "You are signed in to Slack as someone other than the person this link was made for, so \
                        nothing was linked. Links are personal: ask the bot your own question to get yours.";
            self.fail(
                &pending.id_hash,
                text,
                Some(&format!("slack user {}", identity.user_id)),
            )
            .await;
            self.warn_link_owner(&pending.user).await;
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
        let pending = match self.returning(Leg::Databricks, query, cookie).await {
            Ok(pending) => pending,
            Err(outcome) => return outcome,
        };
        let id_hash = pending.id_hash.clone();
        match pending.status {
            PendingStatus::Claimed => {}
            PendingStatus::Completed
            | PendingStatus::Failed
            | PendingStatus::Exchanging
            | PendingStatus::Confirming => return CallbackOutcome::AlreadyHandled,
            PendingStatus::Pending | PendingStatus::Superseded => {
                return CallbackOutcome::Rejected("This sign-in is not valid any more.");
            }
        }
        if self.requires_slack_sign_in() && !pending.slack_verified {
            self.fail(&id_hash, "Sign in with Slack did not happen first.", None)
                .await;
            return CallbackOutcome::Finished;
        }
        let code = match self.code(Leg::Databricks, query, &pending).await {
            Ok(code) => code,
            Err(outcome) => return outcome,
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
        let budget = Duration::from_secs(EXCHANGE_BUDGET_SECONDS.unsigned_abs());
        match tokio::time::timeout(budget, self.exchange_and_link(&pending, code)).await {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => self.fail(&id_hash, &reason.text, reason.audit.as_deref()).await,
            Err(_) => {
                tracing::warn!("a code exchange outran its budget; nothing was linked");
                self.fail(&id_hash, EXCHANGE_CUT_OFF, None).await;
            }
        }
        CallbackOutcome::Finished
    }

    /// The opening both legs share: the pending link the answer's `state` names, if the
    /// browser holding `cookie` is the one that claimed it. A different browser ends a
    /// claimed link (the sign-in may have been stolen).
    async fn returning(
        &self,
        leg: Leg,
        query: &CallbackQuery,
        cookie: Option<&str>,
    ) -> Result<PendingLink, CallbackOutcome> {
        let Some(state) = query.state.as_deref().filter(|s| !s.is_empty()) else {
            return Err(CallbackOutcome::Rejected("The sign-in answer is missing its state."));
        };
        let state_hash = hash_secret(state);
        let found = match leg {
            Leg::Slack => self.store.find_pending_link_by_slack_state(&state_hash).await,
            Leg::Databricks => self.store.find_pending_link_by_state(&state_hash).await,
        };
        let pending = match found {
            Ok(Some(p)) => p,
            Ok(None) => return Err(CallbackOutcome::Rejected("This sign-in is not valid any more.")),
            Err(e) => {
                tracing::error!(error = %e, "could not read a pending link");
                return Err(CallbackOutcome::Rejected("Something went wrong on our side."));
            }
        };
        if !same_browser(&pending, cookie) {
            if pending.status == PendingStatus::Claimed {
                self.fail(
                    &pending.id_hash,
                    "The sign-in was finished in a different browser than it was started in.",
                    None,
                )
                .await;
            }
            return Err(CallbackOutcome::Rejected(
                "This sign-in can't be finished in this browser: it was started in another one, or has already ended.",
            ));
        }
        Ok(pending)
    }

    /// The authorization code of the answer; a cancelled sign-in or a missing code ends
    /// the pending link with the reason.
    async fn code(
        &self,
        leg: Leg,
        query: &CallbackQuery,
        pending: &PendingLink,
    ) -> Result<SecretString, CallbackOutcome> {
        // access_denied and friends: the person (or the provider) stopped the flow.
        let text = if query.error.is_some() {
            leg.cancelled()
        } else {
            match query.code.as_deref().filter(|c| !c.is_empty()) {
                Some(code) => return Ok(SecretString::from(code.to_owned())),
                None => leg.no_code(),
            }
        };
        self.fail(&pending.id_hash, text, None).await;
        Err(CallbackOutcome::Finished)
    }
}
