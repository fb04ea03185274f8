//! The single-use link behind a "Connect Databricks" prompt.

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::crypto::{hash_secret, random_id};
use crate::domain::PersonIn;
use crate::store::Store;
use crate::store::pending_links::NewPendingLink;

/// How long a "Connect Databricks" link stays usable, and how long the browser then has
/// to finish at Databricks.
pub const PENDING_LINK_TTL_SECONDS: i64 = 10 * 60;

/// A freshly generated link id. Held as a secret: whoever has it can start linking.
pub struct LinkId(SecretString);

impl LinkId {
    /// 128 random bits, base64url without padding (22 chars).
    pub fn generate() -> Self {
        Self(random_id())
    }

    /// What the database stores in place of the id.
    pub fn hash(&self) -> [u8; 32] {
        hash_secret(self.0.expose_secret())
    }

    /// `{public_base_url}/link/{id}`: the URL behind the "Connect Databricks" button.
    pub fn url(&self, public_base_url: &Url) -> Url {
        let mut url = public_base_url.clone();
        url.set_path(&format!("/link/{}", self.0.expose_secret()));
        url
    }
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

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

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
        assert_eq!(a.hash(), hash_secret(id));
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
}
