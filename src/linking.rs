//! Account linking: the single-use link that starts a person's Databricks connection.
//!
//! A link id is 128 random bits, sent to the person inside the Slack prompt's button URL.
//! The database keeps only its SHA-256, bound to the person's team and user, for ten
//! minutes; a newer link voids older ones.

use aes_gcm::aead::OsRng;
use aes_gcm::aead::rand_core::RngCore;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use url::Url;

/// How long a "Connect Databricks" link stays usable.
pub const PENDING_LINK_TTL_SECONDS: i64 = 10 * 60;

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
    Sha256::digest(id.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
