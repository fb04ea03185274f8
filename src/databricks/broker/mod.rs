//! The token broker: a fresh access token for every question, from the person's own
//! refresh token.
//!
//! - The access token lives, sealed, in the person's `links` row, so every replica uses
//!   the same one; it is refreshed fifteen minutes before it expires, so it outlives any answer.
//! - At most one refresh per person at a time: across tasks (an in-process lock per
//!   person) and across processes (`refresh_lock_until`, set by compare-and-swap on the
//!   link's `version`). Everyone else waits and then uses the winner's token.
//! - The cross-process claim outlives the refresh: it is renewed while the token request
//!   runs, and the request is bounded. Otherwise a slow token endpoint lets the claim
//!   lapse, a second process sends the refresh token the first has just had rotated away,
//!   and a healthy link ends in `needs_relink` (TOK-03).
//! - The rotated refresh token is committed before the new access token is used; an
//!   answer without a refresh token keeps the old one. A failed write is tried again: by
//!   then the new refresh token exists only in this process's memory.
//! - A dead grant marks the link `needs_relink` (once), but only if the link is still at
//!   the version whose token was refused; if another process refreshed meanwhile, its
//!   token is used instead (TOK-04). Transient failures leave the link alone; a rejected
//!   client is an operator error that never touches anyone's link.

pub mod rotation;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;
use tracing::Instrument;

use crate::clock::SharedClock;
use crate::crypto::{Binding, Purpose, Vault, VaultError};
use crate::databricks::authority::Authority;
use crate::databricks::bearer::{Bearer, Renew};
use crate::databricks::oauth::{TokenError, Tokens};
use crate::domain::{TeamId, UserId, WorkspaceHost};
use crate::metrics::{Metrics, RefreshOutcome};
use crate::store::Store;
use crate::store::audit::{Actor, AuditEvent, AuditKind};
use crate::store::links::{Link, LinkStatus};
use crate::telemetry;

/// Refresh when the access token has less than this left (or half its life, for
/// short-lived tokens). An answer can take up to ten minutes (Genie's bound), so a token
/// handed out outlives it: one expiring mid-answer would make the agent start over (and
/// Genie hold the question twice).
pub const REFRESH_MARGIN_SECONDS: i64 = 900;
/// How long a refresh claim holds, from when it was taken or last renewed, before another
/// process may take over: how long a process that dies mid-refresh blocks the person.
const REFRESH_LOCK_SECONDS: i64 = 30;
/// How often a running refresh renews its claim: a third of the claim, so two renewals
/// in a row can fail (a database blip) before it lapses.
const RENEW_CLAIM_EVERY: Duration = Duration::from_secs(10);
/// Longest one token request may take, discovery included. Half the claim, so even a
/// claim nobody renews outlives one request; a refresh makes at most two (TOK-05), and
/// the bound is what keeps a hung token endpoint from holding a renewed claim forever.
const TOKEN_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Pauses between attempts to store a refresh's result when the database fails.
const STORE_RETRY_PAUSES: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(2),
];
/// How long to wait for another process's refresh before giving up for now: longer than
/// a refresh takes with a working database (two token requests, then the write's retries).
const WAIT_FOR_OTHER_REFRESH: Duration = Duration::from_secs(40);

/// Everything an agent needs to act as the person: never stored by the agent.
#[derive(Clone)]
pub struct UserContext {
    pub host: WorkspaceHost,
    /// A short-lived access token of the person.
    pub access_token: SecretString,
    pub team: TeamId,
    pub user: UserId,
    pub databricks_user_id: String,
    pub databricks_user_name: String,
    /// The link version this token belongs to; pass it back to force a refresh when
    /// Databricks refuses the token.
    pub version: i64,
    /// Renews the token when Databricks refuses it part-way through an answer; `None`
    /// where nothing can ([`TokenBroker::renewal`] makes one).
    pub renew: Option<Arc<dyn Renew>>,
}

impl UserContext {
    /// The bearer token one answer's Databricks calls carry.
    pub fn bearer(&self) -> Bearer {
        Bearer::new(self.access_token.clone(), self.version, self.renew.clone())
    }
}

impl fmt::Debug for UserContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserContext")
            .field("host", &self.host)
            .field("team", &self.team)
            .field("user", &self.user)
            .field("databricks_user_name", &self.databricks_user_name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Why no access token could be had.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("the person has not connected Databricks")]
    NotLinked,
    /// The grant is dead; `just_now` when this call found out, and then `why` may say
    /// why in words for the person.
    #[error("the person must connect Databricks again")]
    NeedsRelink { just_now: bool, why: Option<&'static str> },
    #[error("Databricks is temporarily unavailable: {0}")]
    Transient(String),
    #[error("the bot's Databricks OAuth client is misconfigured: {0}")]
    Misconfigured(&'static str),
    #[error("the stored refresh token cannot be opened: {0}")]
    Unreadable(#[from] VaultError),
    #[error("database error: {0}")]
    Store(#[from] sqlx::Error),
}

/// Hands out access tokens.
pub struct TokenBroker {
    store: Store,
    vault: Vault,
    oauth: Authority,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    /// How often a running refresh renews its claim ([`RENEW_CLAIM_EVERY`]).
    renew_claim_every: Duration,
    flights: Mutex<HashMap<(TeamId, UserId), Flight>>,
    /// Token-endpoint refusal codes already logged by this process.
    refusals_logged: Mutex<HashSet<&'static str>>,
}

/// One person's in-process refresh lock.
type Flight = Arc<tokio::sync::Mutex<()>>;

/// The span of one call to the token endpoint.
fn refresh_span() -> tracing::Span {
    let span = tracing::info_span!(
        "refresh",
        otel.name = tracing::field::Empty,
        otel.kind = tracing::field::Empty
    );
    telemetry::describe_span(&span, "client", || "databricks token refresh".to_owned());
    span
}

impl TokenBroker {
    pub fn new(store: Store, vault: Vault, oauth: Authority, clock: SharedClock, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            vault,
            oauth,
            clock,
            metrics,
            renew_claim_every: RENEW_CLAIM_EVERY,
            flights: Mutex::new(HashMap::new()),
            refusals_logged: Mutex::new(HashSet::new()),
        }
    }

    /// Renews a running refresh's claim every `every` instead of every ten seconds: for
    /// tests, whose clock moves past the claim in an instant.
    pub fn renewing_claims_every(mut self, every: Duration) -> Self {
        self.renew_claim_every = every;
        self
    }

    /// A usable access token for the person. `refused_version` is the version of a token
    /// Databricks just refused: a token of that version is not handed out again, so the
    /// call refreshes (once, however many callers refused it).
    pub async fn user_context(
        &self,
        team: &TeamId,
        user: &UserId,
        refused_version: Option<i64>,
    ) -> Result<UserContext, BrokerError> {
        let flight = {
            let mut flights = self.flights.lock().expect("not poisoned");
            flights.entry((team.clone(), user.clone())).or_default().clone()
        };
        // Whether this took a refresh shows in the span, as the refresh's outcome.
        let span = tracing::info_span!(
            "token",
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
            refresh = tracing::field::Empty
        );
        telemetry::describe_span(&span, "internal", || "databricks token".to_owned());
        let outcome = async {
            let _one_at_a_time = flight.lock().await;
            self.user_context_exclusive(team, user, refused_version).await
        }
        .instrument(span)
        .await;
        let mut flights = self.flights.lock().expect("not poisoned");
        if Arc::strong_count(&flight) == 2 {
            flights.remove(&(team.clone(), user.clone()));
        }
        outcome
    }

    async fn user_context_exclusive(
        &self,
        team: &TeamId,
        user: &UserId,
        refused_version: Option<i64>,
    ) -> Result<UserContext, BrokerError> {
        let give_up_at = tokio::time::Instant::now() + WAIT_FOR_OTHER_REFRESH;
        loop {
            let link = self.store.find_link(team, user).await?.ok_or(BrokerError::NotLinked)?;
            if link.status == LinkStatus::NeedsRelink {
                return Err(BrokerError::NeedsRelink {
                    just_now: false,
                    why: None,
                });
            }
            if refused_version != Some(link.version)
                && let Some(token) = self.current_access_token(&link)
            {
                return Ok(context(&link, token, link.version));
            }
            let now = self.clock.now();
            let locked_elsewhere = link.refresh_lock_until.is_some_and(|until| until > now);
            let claim_until = now + REFRESH_LOCK_SECONDS;
            if !locked_elsewhere
                && self
                    .store
                    .try_lock_refresh(team, user, link.version, now, claim_until)
                    .await?
            {
                let refreshed = self.refresh(&link, claim_until).instrument(refresh_span()).await;
                let outcome = match &refreshed {
                    Ok(Refreshed::Done(_)) => RefreshOutcome::Refreshed,
                    Ok(Refreshed::Superseded) => RefreshOutcome::Superseded,
                    Err(BrokerError::NeedsRelink { .. }) => RefreshOutcome::NeedsRelink,
                    Err(BrokerError::Misconfigured(_)) => RefreshOutcome::Misconfigured,
                    Err(BrokerError::Unreadable(_)) => RefreshOutcome::Unreadable,
                    Err(_) => RefreshOutcome::Transient,
                };
                self.metrics.record_refresh(outcome);
                tracing::Span::current().record("refresh", outcome.as_str());
                match refreshed? {
                    Refreshed::Done(context) => return Ok(context),
                    // Read the link again and use what the other process stored.
                    Refreshed::Superseded => continue,
                }
            }
            // Another process is refreshing (or just did): wait for its result.
            if tokio::time::Instant::now() >= give_up_at {
                return Err(BrokerError::Transient("a refresh elsewhere did not finish".into()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The stored access token, if it has more than the margin left and opens.
    fn current_access_token(&self, link: &Link) -> Option<SecretString> {
        let sealed = link.sealed_access_token.as_deref()?;
        let expires_at = link.access_expires_at?;
        // Workspaces may issue tokens for as little as five minutes: then refresh at half
        // their life rather than on every question.
        let issued_at = link.refreshed_at.unwrap_or(link.linked_at);
        let margin = REFRESH_MARGIN_SECONDS.min((expires_at - issued_at) / 2);
        if expires_at - self.clock.now() < margin {
            return None;
        }
        // An access token is only a cache: one we cannot open is simply refreshed.
        self.vault.open(binding(link, Purpose::AccessToken), sealed).ok()
    }

    /// Refreshes while holding the person's refresh claim on `link.version`, which ends
    /// `claim_until` unless renewed.
    async fn refresh(&self, link: &Link, claim_until: i64) -> Result<Refreshed, BrokerError> {
        let (team, user, version) = (&link.team, &link.user, link.version);
        let refresh_token = match open_refresh_token(&self.vault, link) {
            Ok(token) => token,
            Err(error) => {
                self.store.release_refresh_lock(team, user, version).await?;
                tracing::error!(error = %error, "a stored refresh token cannot be opened; the link is left as it is");
                return Err(BrokerError::Unreadable(error));
            }
        };
        // The claim is renewed until the result is stored, or the token endpoint has
        // refused: a slow answer must not let another process send the same refresh token.
        let result = self
            .holding_claim(link, claim_until, async {
                let tokens = self.ask_for_tokens(&refresh_token).await?;
                Ok(self.commit(link, tokens, refresh_token.clone()).await)
            })
            .await;
        let now = self.clock.now();
        match result {
            Ok(committed) => committed,
            Err(TokenError::DeadGrant { detail: reason, why }) => {
                // Marked only if the link is still at the version whose refresh token was
                // refused. If it moved on, another process refreshed meanwhile (with
                // rotation, the token we sent was already spent) or the person relinked:
                // the refusal says nothing about the token stored now, so use that.
                if self.store.mark_needs_relink(team, user, version, &reason, now).await? {
                    tracing::warn!(
                        reason,
                        "the refresh token is no longer valid; the person must connect again"
                    );
                    Err(BrokerError::NeedsRelink { just_now: true, why })
                } else {
                    tracing::info!(
                        reason,
                        "a refresh token was refused after the link had moved on; using the stored one"
                    );
                    Ok(Refreshed::Superseded)
                }
            }
            Err(TokenError::Client(code)) => {
                self.store.release_refresh_lock(team, user, version).await?;
                self.metrics.record_token_refusal(code);
                // Once per code per process: every question would say the same.
                if self.refusals_logged.lock().expect("not poisoned").insert(code) {
                    tracing::error!(
                        code,
                        provider = self.oauth.provider(),
                        hint = self.oauth.hint(),
                        "the token endpoint refused the bot's request; links are kept"
                    );
                }
                self.audit_refresh_failure(team, user, code, now).await;
                Err(BrokerError::Misconfigured(code))
            }
            Err(error) => {
                self.store.release_refresh_lock(team, user, version).await?;
                let reason = error.to_string();
                self.audit_refresh_failure(team, user, &reason, now).await;
                Err(BrokerError::Transient(reason))
            }
        }
    }

    /// Asks the token endpoint for new tokens, each request bounded by
    /// [`TOKEN_REQUEST_TIMEOUT`].
    async fn ask_for_tokens(&self, refresh_token: &SecretString) -> Result<Tokens, TokenError> {
        let ask = || async {
            tokio::time::timeout(TOKEN_REQUEST_TIMEOUT, self.oauth.refresh(refresh_token))
                .await
                .unwrap_or(Err(TokenError::Timeout))
        };
        let result = ask().await;
        if !matches!(result, Err(TokenError::Timeout)) {
            return result;
        }
        // The answer may have been lost after the server rotated the token. Asking once
        // more with the same token either succeeds or tells us the grant is gone (TOK-05).
        tracing::warn!("refresh timed out; asking once more with the same refresh token");
        ask().await
    }

    /// Stores a refresh's result on `link.version` before the access token is handed out.
    /// A database error is tried again after a pause, a few times: Databricks may already
    /// have rotated the refresh token, and then the new one exists only here. If every
    /// attempt fails it is lost (never logged): the stored token is refused at the next
    /// refresh and the person is asked to connect again.
    async fn commit(
        &self,
        link: &Link,
        tokens: Tokens,
        old_refresh_token: SecretString,
    ) -> Result<Refreshed, BrokerError> {
        let (team, user, version) = (&link.team, &link.user, link.version);
        let now = self.clock.now();
        let refresh_token = tokens.refresh_token.unwrap_or(old_refresh_token);
        let sealed_refresh = self.vault.seal(binding(link, Purpose::RefreshToken), &refresh_token);
        let sealed_access = self
            .vault
            .seal(binding(link, Purpose::AccessToken), &tokens.access_token);
        let expires_at = now + tokens.expires_in as i64;
        let key_id = self.vault.primary_key_id().as_str();
        let mut pauses = STORE_RETRY_PAUSES.iter();
        let stored = loop {
            let attempt = self
                .store
                .store_refreshed_tokens(
                    team,
                    user,
                    version,
                    &sealed_refresh,
                    key_id,
                    &sealed_access,
                    expires_at,
                    now,
                )
                .await;
            match (attempt, pauses.next()) {
                (Ok(stored), _) => break stored,
                (Err(error), Some(pause)) => {
                    tracing::warn!(error = %error, "could not store a refreshed token; trying again");
                    tokio::time::sleep(*pause).await;
                }
                (Err(error), None) => {
                    tracing::error!(
                        error = %error,
                        attempts = STORE_RETRY_PAUSES.len() + 1,
                        "could not store a refreshed token; if Databricks rotated the refresh token, the new \
                         one is lost and the person will be asked to connect again at the next refresh"
                    );
                    return Err(BrokerError::Store(error));
                }
            }
        };
        if stored {
            tracing::info!("access token refreshed");
            Ok(Refreshed::Done(context(link, tokens.access_token, version + 1)))
        } else {
            Err(BrokerError::Transient("the link changed during the refresh".into()))
        }
    }

    /// Runs `work` while renewing the refresh claim on `link.version` (which ends
    /// `claim_until`) every [`RENEW_CLAIM_EVERY`], so the claim outlives a slow refresh.
    /// A renewal only extends this process's own claim (see
    /// [`Store::renew_refresh_lock`]); once the claim is lost, renewals stop and `work`
    /// goes on: its result is stored only if the link is still at `link.version`.
    async fn holding_claim<T>(&self, link: &Link, claim_until: i64, work: impl Future<Output = T>) -> T {
        let renew = async {
            let mut held_until = claim_until;
            loop {
                tokio::time::sleep(self.renew_claim_every).await;
                let until = self.clock.now() + REFRESH_LOCK_SECONDS;
                match self
                    .store
                    .renew_refresh_lock(&link.team, &link.user, link.version, held_until, until)
                    .await
                {
                    Ok(true) => held_until = until,
                    Ok(false) => {
                        tracing::warn!("a running refresh lost its claim (it lapsed, or the link changed)");
                        return;
                    }
                    Err(error) => tracing::warn!(error = %error, "could not renew a refresh claim; trying again"),
                }
            }
        };
        let mut work = std::pin::pin!(work);
        tokio::select! {
            output = &mut work => return output,
            () = renew => {}
        }
        work.await
    }
}

/// What came of a refresh this process made.
enum Refreshed {
    /// The new token, stored.
    Done(UserContext),
    /// The link moved on while the refresh ran (another process refreshed, or the person
    /// relinked): read it again.
    Superseded,
}

/// Renews one person's token through the broker: the same single refresh as every other
/// caller's, across replicas.
struct Renewal {
    broker: Arc<TokenBroker>,
    team: TeamId,
    user: UserId,
}

#[async_trait]
impl Renew for Renewal {
    async fn renew(&self, refused_version: i64) -> Option<(SecretString, i64)> {
        match self
            .broker
            .user_context(&self.team, &self.user, Some(refused_version))
            .await
        {
            Ok(context) => Some((context.access_token, context.version)),
            Err(error) => {
                tracing::warn!(error = %error, "could not renew a refused access token mid-answer");
                None
            }
        }
    }
}

impl TokenBroker {
    /// What renews `user`'s token mid-answer (for [`UserContext::renew`]).
    pub fn renewal(self: &Arc<Self>, team: &TeamId, user: &UserId) -> Arc<dyn Renew> {
        Arc::new(Renewal {
            broker: self.clone(),
            team: team.clone(),
            user: user.clone(),
        })
    }

    /// Revokes `link`'s refresh token where the workspace offers RFC 7009 — best effort:
    /// the caller forgets the link whatever the workspace says.
    pub async fn revoke(&self, link: &Link) {
        match open_refresh_token(&self.vault, link) {
            Ok(refresh_token) => self.oauth.revoke_quietly(&refresh_token).await,
            Err(_) => tracing::warn!("a stored refresh token cannot be opened, so it cannot be revoked"),
        }
    }

    /// Records a failed refresh that left the link as it was (the reason holds no secret:
    /// it is our own classification of the token endpoint's answer).
    async fn audit_refresh_failure(&self, team: &TeamId, user: &UserId, reason: &str, now: i64) {
        let event = AuditEvent {
            kind: AuditKind::RefreshFailed,
            team,
            user,
            actor: Actor::System,
            detail: Some(reason),
            at: now,
        };
        if let Err(error) = self.store.record_audit(&event).await {
            tracing::warn!(error = %error, "could not record a failed refresh in the audit trail");
        }
    }
}

/// What `link`'s secrets of `purpose` are sealed to.
fn binding(link: &Link, purpose: Purpose) -> Binding<'_> {
    Binding::new(purpose, &link.team, &link.user, &link.workspace)
}

/// Opens `link`'s refresh token: the one place in the bot that does (refresh, revocation
/// and key rotation all come here).
fn open_refresh_token(vault: &Vault, link: &Link) -> Result<SecretString, VaultError> {
    vault.open(binding(link, Purpose::RefreshToken), &link.sealed_refresh_token)
}

fn context(link: &Link, access_token: SecretString, version: i64) -> UserContext {
    UserContext {
        host: link.workspace.clone(),
        access_token,
        team: link.team.clone(),
        user: link.user.clone(),
        databricks_user_id: link.databricks_user_id.clone(),
        databricks_user_name: link.databricks_user_name.clone(),
        version,
        renew: None,
    }
}
