//! `keys rotate`: re-seal every stored secret under the primary key — each link's refresh
//! and access tokens, and each pending link's PKCE verifier and held sign-in (CRY-05).
//!
//! Each row is opened with whichever configured key sealed it, sealed again under the
//! primary key and written back with a compare-and-swap on the old envelope, one row at a
//! time. Interrupting it loses nothing — every row is readable before, during and after —
//! and running it again picks up what is left. Rows that cannot be opened (a key no longer
//! configured, or tampering) are reported by id and left untouched: they fail closed.
//!
//! A link is picked by the key of its refresh token (`links.key_id`); its access token was
//! sealed in the same refresh, so it goes along. [`unknown_keys`] counts what is sealed
//! under keys not configured, for start-up to refuse (CRY-06).

use super::{binding, open_refresh_token};
use crate::crypto::{Binding, Purpose, Vault, VaultError, envelope_key_id};
use crate::domain::{TeamId, UserId, WorkspaceHost};
use crate::store::Store;
use crate::store::links::Link;
use crate::store::pending_links::PendingLink;

/// A row that could not be re-sealed.
#[derive(Debug)]
pub struct RotationFailure {
    pub team: TeamId,
    pub user: UserId,
    pub error: VaultError,
}

/// What one pass over a batch did.
#[derive(Debug, Default)]
pub struct RotationProgress {
    /// Rows now sealed under the primary key.
    pub resealed: u64,
    /// Rows changed by someone else meanwhile (a token refresh seals under the primary).
    pub changed_meanwhile: u64,
    /// Rows that could not be opened.
    pub failures: Vec<RotationFailure>,
    /// Where the next batch starts; `None` when there is nothing left.
    pub next: Option<(TeamId, UserId)>,
}

/// Re-seals up to `batch_size` rows after `after` (in key order).
pub async fn rotate_batch(
    store: &Store,
    vault: &Vault,
    after: Option<(&TeamId, &UserId)>,
    batch_size: i64,
) -> Result<RotationProgress, sqlx::Error> {
    let primary = vault.primary_key_id().as_str();
    let rows = store.links_sealed_under_other_keys(primary, after, batch_size).await?;
    let mut progress = RotationProgress {
        next: (rows.len() as i64 == batch_size)
            .then(|| rows.last().map(|l| (l.team.clone(), l.user.clone())))
            .flatten(),
        ..RotationProgress::default()
    };
    for link in rows {
        match reseal(vault, &link) {
            Ok((refresh, access)) => {
                if store
                    .reseal_refresh_token(
                        &link.team,
                        &link.user,
                        &link.sealed_refresh_token,
                        &refresh,
                        primary,
                        access.as_deref(),
                    )
                    .await?
                {
                    progress.resealed += 1;
                } else {
                    progress.changed_meanwhile += 1;
                }
            }
            Err(error) => progress.failures.push(RotationFailure {
                team: link.team,
                user: link.user,
                error,
            }),
        }
    }
    Ok(progress)
}

/// The link's refresh token and (if it has one under another key) access token, sealed
/// under the primary key. An access token that cannot be opened is left as it is: it is
/// only a cache, refreshed when it fails to open.
fn reseal(vault: &Vault, link: &Link) -> Result<(Vec<u8>, Option<Vec<u8>>), VaultError> {
    let token = open_refresh_token(vault, link)?;
    let refresh = vault.seal(binding(link, Purpose::RefreshToken), &token);
    let access = link
        .sealed_access_token
        .as_deref()
        .filter(|sealed| !is_under(vault.primary_key_id().as_str(), sealed))
        .and_then(|sealed| reseal_envelope(vault, binding(link, Purpose::AccessToken), sealed).ok());
    Ok((refresh, access))
}

/// Whether `envelope` is sealed under key `key_id`.
fn is_under(key_id: &str, envelope: &[u8]) -> bool {
    envelope_key_id(envelope).is_ok_and(|id| id.as_str() == key_id)
}

fn reseal_envelope(vault: &Vault, binding: Binding<'_>, envelope: &[u8]) -> Result<Vec<u8>, VaultError> {
    Ok(vault.seal(binding, &vault.open(binding, envelope)?))
}

/// What re-sealing the pending links did.
#[derive(Debug, Default)]
pub struct PendingRotation {
    /// Pending links whose secrets are now under the primary key.
    pub resealed: u64,
    /// Pending links that could not be opened (their flow fails, and the person asks again).
    pub unreadable: u64,
}

/// Re-seals the secrets pending links hold (for the workspace `workspace`, which their
/// envelopes are bound to). They live minutes, so there are few: one pass.
pub async fn rotate_pending_links(
    store: &Store,
    vault: &Vault,
    workspace: &WorkspaceHost,
) -> Result<PendingRotation, sqlx::Error> {
    let primary = vault.primary_key_id().as_str();
    let mut done = PendingRotation::default();
    for pending in store.sealed_pending_links().await? {
        let reseal = |purpose: Purpose, sealed: Option<&[u8]>| -> Result<Option<Vec<u8>>, VaultError> {
            let Some(sealed) = sealed else { return Ok(None) };
            if is_under(primary, sealed) {
                return Ok(Some(sealed.to_vec()));
            }
            let binding = Binding::new(purpose, &pending.team, &pending.user, workspace);
            reseal_envelope(vault, binding, sealed).map(Some)
        };
        let (verifier, held) = (pending.pkce_verifier.as_deref(), pending.held_link.as_deref());
        if verifier.is_none_or(|v| is_under(primary, v)) && held.is_none_or(|h| is_under(primary, h)) {
            continue;
        }
        match (reseal(Purpose::PkceVerifier, verifier), reseal(Purpose::HeldLink, held)) {
            (Ok(new_verifier), Ok(new_held)) => {
                let resealed = (new_verifier.as_deref(), new_held.as_deref());
                if store
                    .reseal_pending_link(&pending.id_hash, (verifier, held), resealed)
                    .await?
                {
                    done.resealed += 1;
                }
            }
            _ => done.unreadable += 1,
        }
    }
    Ok(done)
}

/// The key ids that seal stored secrets but are not configured, with how many secrets
/// each seals: links (by `links.key_id`) and pending links' envelopes. Access tokens are
/// not counted: they are a cache, refreshed when they cannot be opened.
pub async fn unknown_keys(store: &Store, vault: &Vault) -> Result<Vec<(String, u64)>, sqlx::Error> {
    let mut unknown: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for (key_id, count) in store.links_per_key().await? {
        if !vault.has_key(&key_id) {
            *unknown.entry(key_id).or_default() += count.unsigned_abs();
        }
    }
    let pending: Vec<PendingLink> = store.sealed_pending_links().await?;
    let envelopes = pending
        .iter()
        .flat_map(|p| [p.pkce_verifier.as_deref(), p.held_link.as_deref()])
        .flatten();
    for envelope in envelopes {
        match envelope_key_id(envelope) {
            Ok(id) if vault.has_key(id.as_str()) => {}
            Ok(id) => *unknown.entry(id.as_str().to_owned()).or_default() += 1,
            Err(_) => *unknown.entry("(unreadable)".to_owned()).or_default() += 1,
        }
    }
    Ok(unknown.into_iter().collect())
}

/// Re-seals every row not under the primary key, batch by batch, calling `on_batch` after
/// each so a caller can report progress.
pub async fn rotate_all(
    store: &Store,
    vault: &Vault,
    batch_size: i64,
    mut on_batch: impl FnMut(&RotationProgress),
) -> Result<RotationProgress, sqlx::Error> {
    let mut total = RotationProgress::default();
    let mut after: Option<(TeamId, UserId)> = None;
    loop {
        let batch = rotate_batch(store, vault, after.as_ref().map(|(t, u)| (t, u)), batch_size).await?;
        on_batch(&batch);
        total.resealed += batch.resealed;
        total.changed_meanwhile += batch.changed_meanwhile;
        total.failures.extend(batch.failures);
        after = batch.next;
        if after.is_none() {
            return Ok(total);
        }
    }
}

/// What [`unknown_keys`] found, for an operator: how many secrets each missing key seals,
/// and what to do.
pub fn sealed_under_unknown_keys(unknown: &[(String, u64)]) -> String {
    let total: u64 = unknown.iter().map(|(_, n)| n).sum();
    let each: Vec<String> = unknown.iter().map(|(id, n)| format!("{id} ({n})")).collect();
    format!(
        "{total} stored secret(s) are sealed under key ids TOKEN_ENCRYPTION_KEYS does not have: {}; add those keys \
         back (after the primary), or remove those people's links with `links remove`",
        each.join(", ")
    )
}
