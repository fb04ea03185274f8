//! The link page's side of linking: what `/link/{id}` shows, the claim by a browser, and
//! the start of each sign-in (Slack's, then Databricks').

use secrecy::ExposeSecret;
use url::Url;

use super::{Claimed, Landing, LinkFlow, PENDING_LINK_TTL_SECONDS, Unusable};
use crate::crypto::{Purpose, hash_secret, random_token};
use crate::store::pending_links::{EXCHANGE_BUDGET_SECONDS, EXCHANGE_CUT_OFF, PendingLink, PendingStatus};

impl LinkFlow {
    /// The landing page's facts for link `id`, or why it cannot be used. Reads only.
    pub async fn landing(&self, id: &str) -> Result<Landing, Unusable> {
        let now = self.clock.now();
        let pending = self.store.find_pending_link(&hash_secret(id)).await.map_err(|e| {
            tracing::error!(error = %e, "could not read a pending link");
            Unusable::Unknown
        })?;
        match pending {
            Some(p) if p.is_open(now) => {
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
        let name = match self.slack.user_info(p.user.as_str()).await {
            Ok(user) => user
                .profile
                .and_then(|profile| profile.display_name.filter(|n| !n.is_empty()).or(profile.real_name))
                .or(user.name)
                .map_or_else(|| p.user.to_string(), |n| format!("@{n}")),
            Err(error) => {
                tracing::warn!(error = %error, "users.info failed; showing the Slack user id");
                p.user.to_string()
            }
        };
        let team = match self.slack.bot_identity().await {
            Ok(bot) if bot.team_id == p.team.as_str() => bot.team.clone(),
            _ => p.team.to_string(),
        };
        (name, team)
    }

    /// Claims link `id` for this browser and starts the Databricks authorization.
    pub async fn claim(&self, id: &str) -> Result<Claimed, Unusable> {
        let now = self.clock.now();
        let id_hash = hash_secret(id);
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
        let url = oidc.authorize_url(&state, &nonce, pending.team.as_str()).await?;
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
    pub(super) async fn start_databricks(&self, pending: &PendingLink) -> anyhow::Result<Url> {
        let state = random_token();
        let verifier = random_token();
        let sealed_verifier = self.vault.seal(
            self.binding(Purpose::PkceVerifier, &pending.team, &pending.user),
            &verifier,
        );
        let url = self.oauth.authorize_url(&state, &verifier).await?;
        let stored = self
            .store
            .set_databricks_state(&pending.id_hash, &hash_secret(state.expose_secret()), &sealed_verifier)
            .await?;
        anyhow::ensure!(stored, "the link changed while starting the Databricks authorization");
        Ok(url)
    }

    /// The pending link of the browser holding `cookie`, for the result page. An exchange
    /// still running past [`EXCHANGE_BUDGET_SECONDS`] was cut off (the bot stopped mid-way):
    /// it ends as failed here, rather than showing "still connecting" for ever.
    pub async fn result_for_browser(&self, cookie: &str) -> Option<PendingLink> {
        let browser = hash_secret(cookie);
        let pending = self.store.find_claimed_pending_link(&browser).await.ok().flatten()?;
        let cut_off = pending.status == PendingStatus::Exchanging
            && pending
                .exchange_started_at
                .is_some_and(|at| at + EXCHANGE_BUDGET_SECONDS < self.clock.now());
        if !cut_off {
            return Some(pending);
        }
        self.fail(&pending.id_hash, EXCHANGE_CUT_OFF, None).await;
        self.store.find_claimed_pending_link(&browser).await.ok().flatten()
    }
}
