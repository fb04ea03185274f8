//! `keys rotate`: re-seal every stored refresh token under the primary key.
//!
//! Each row is opened with whichever configured key sealed it, sealed again under the
//! primary key and written back with a compare-and-swap on the old envelope, one row at a
//! time. Interrupting it loses nothing — every row is readable before, during and after —
//! and running it again picks up what is left. Rows that cannot be opened (a key no longer
//! configured, or tampering) are reported by id and left untouched: they fail closed.

use super::{binding, open_refresh_token};
use crate::crypto::{Purpose, Vault, VaultError};
use crate::domain::{TeamId, UserId};
use crate::store::Store;
use crate::store::links::Link;

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
            Ok(resealed) => {
                if store
                    .reseal_refresh_token(&link.team, &link.user, &link.sealed_refresh_token, &resealed, primary)
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

fn reseal(vault: &Vault, link: &Link) -> Result<Vec<u8>, VaultError> {
    let token = open_refresh_token(vault, link)?;
    Ok(vault.seal(binding(link, Purpose::RefreshToken), &token))
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
