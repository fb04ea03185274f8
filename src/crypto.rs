//! The token vault: AES-256-GCM envelopes for secrets at rest.
//!
//! Envelope (version 1):
//!
//! ```text
//! 0x01 ‖ len(key_id) as u8 ‖ key_id ‖ nonce (12 random bytes) ‖ ciphertext ‖ tag (16)
//! ```
//!
//! The version and key id sit in clear so the right key can be found without trial
//! decryption, and they are authenticated through the associated data, together with what
//! the secret is (`purpose`) and whose it is (team, user, workspace). A ciphertext copied
//! to another person's row, or relabelled with another key id, fails to open.
//! Anything that fails to open is an error — never "no secret here".

use std::fmt;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload, rand_core::RngCore};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::domain::{TeamId, UserId, WorkspaceHost};

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Length of a key in bytes (AES-256).
pub const KEY_LEN: usize = 32;
const AAD_CONTEXT: &[u8] = b"databricks-slack-bot/token-vault";

/// Why an envelope could not be opened. Every variant fails closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    #[error("sealed secret is malformed")]
    Malformed,
    #[error("sealed secret has unsupported envelope version {0}")]
    UnsupportedVersion(u8),
    #[error("sealed secret uses key id `{0}`, which is not in TOKEN_ENCRYPTION_KEYS")]
    UnknownKey(String),
    #[error("sealed secret failed authentication (tampered, or bound to another user or workspace)")]
    Integrity,
}

/// Why a key could not be configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("is not valid base64")]
    NotBase64,
    #[error("decodes to {0} bytes; a key must be exactly 32 bytes")]
    WrongLength(usize),
    #[error("has an invalid key id: use 1 to 32 of A-Z a-z 0-9 . _ -")]
    BadId,
}

/// The name of a key, written into every envelope it seals.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyId(String);

impl KeyId {
    /// Parses a key id: 1 to 32 ASCII letters, digits, `.`, `_` or `-`.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let ok = (1..=32).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        ok.then(|| Self(s.to_owned())).ok_or(KeyError::BadId)
    }

    /// The id as written in configuration and envelopes.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One configured key. `Debug` shows only its id.
#[derive(Clone)]
pub struct VaultKey {
    id: KeyId,
    cipher: Aes256Gcm,
}

impl fmt::Debug for VaultKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultKey").field("id", &self.id).finish_non_exhaustive()
    }
}

impl VaultKey {
    /// Parses one `TOKEN_ENCRYPTION_KEYS` entry: `id:base64key`, or a bare `base64key`
    /// whose id is then a fingerprint of the key (`fp-` and 8 hex digits).
    pub fn parse(entry: &SecretString) -> Result<Self, KeyError> {
        let entry = entry.expose_secret().trim();
        // Standard base64 has no ':', so the first one separates an explicit id.
        let (id, encoded) = match entry.split_once(':') {
            Some((id, encoded)) => (Some(KeyId::parse(id.trim())?), encoded.trim()),
            None => (None, entry),
        };
        let bytes = Zeroizing::new(BASE64.decode(encoded).map_err(|_| KeyError::NotBase64)?);
        if bytes.len() != KEY_LEN {
            return Err(KeyError::WrongLength(bytes.len()));
        }
        let id = match id {
            Some(id) => id,
            None => {
                let digest = Sha256::digest(&bytes[..]);
                KeyId(format!(
                    "fp-{:02x}{:02x}{:02x}{:02x}",
                    digest[0], digest[1], digest[2], digest[3]
                ))
            }
        };
        let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| KeyError::WrongLength(bytes.len()))?;
        Ok(Self { id, cipher })
    }

    /// The key's id.
    pub fn id(&self) -> &KeyId {
        &self.id
    }
}

/// A fresh random key, base64-encoded, for `keys generate`.
pub fn generate_key() -> SecretString {
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    OsRng.fill_bytes(&mut bytes[..]);
    SecretString::from(BASE64.encode(&bytes[..]))
}

/// `N` bytes from the operating system's CSPRNG, base64url without padding.
fn random_base64url<const N: usize>() -> SecretString {
    let mut bytes = Zeroizing::new([0u8; N]);
    OsRng.fill_bytes(&mut bytes[..]);
    SecretString::from(URL_SAFE_NO_PAD.encode(&bytes[..]))
}

/// 32 random bytes, base64url: for cookies, OAuth state and PKCE verifiers (43 chars, the
/// length RFC 7636 recommends) and share ids.
pub fn random_token() -> SecretString {
    random_base64url::<32>()
}

/// An application's certificate credential (OpenID Connect `private_key_jwt`, as Entra ID
/// takes it instead of a client secret): a private key, and the SHA-256 thumbprint of the
/// certificate Entra holds for it. Only the thumbprint is ever shown.
#[derive(Clone)]
pub struct ClientCertificate {
    key: jsonwebtoken::EncodingKey,
    thumbprint: String,
}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("x5t#S256", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

impl ClientCertificate {
    /// Reads a PEM bundle holding an RSA private key (`PRIVATE KEY` or `RSA PRIVATE KEY`)
    /// and its `CERTIFICATE`.
    pub fn from_pem(pem: &str) -> Result<Self, &'static str> {
        let block = |label: &str| {
            let begin = format!("-----BEGIN {label}-----");
            let end = format!("-----END {label}-----");
            let start = pem.find(&begin)?;
            let stop = pem[start..].find(&end)? + start + end.len();
            Some(&pem[start..stop])
        };
        let key = block("PRIVATE KEY")
            .or_else(|| block("RSA PRIVATE KEY"))
            .ok_or("holds no PRIVATE KEY block")?;
        let key =
            jsonwebtoken::EncodingKey::from_rsa_pem(key.as_bytes()).map_err(|_| "holds no readable RSA private key")?;
        let certificate = block("CERTIFICATE").ok_or("holds no CERTIFICATE block")?;
        let body: String = certificate.lines().filter(|line| !line.starts_with("-----")).collect();
        let der = BASE64
            .decode(body.trim())
            .map_err(|_| "holds an unreadable CERTIFICATE block")?;
        Ok(Self {
            key,
            thumbprint: URL_SAFE_NO_PAD.encode(Sha256::digest(&der)),
        })
    }

    /// The base64url SHA-256 thumbprint of the certificate (`x5t#S256`).
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// A client assertion for `client_id` at the token endpoint `audience`, valid for five
    /// minutes from `now` (Unix seconds): PS256 with `x5t#S256`, as Microsoft's
    /// "certificate credentials" page describes it.
    pub fn assertion(&self, client_id: &str, audience: &str, now: i64) -> SecretString {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::PS256);
        header.x5t_s256 = Some(self.thumbprint.clone());
        let claims = serde_json::json!({
            "aud": audience, "iss": client_id, "sub": client_id,
            "jti": random_id().expose_secret(), "nbf": now, "iat": now, "exp": now + 300,
        });
        let jwt = jsonwebtoken::encode(&header, &claims, &self.key).expect("an RSA key signs PS256");
        SecretString::from(jwt)
    }
}

/// 128 random bits, base64url (22 chars): a link id, short enough for a URL.
pub fn random_id() -> SecretString {
    random_base64url::<16>()
}

/// SHA-256 of a secret, as stored in place of it (link ids, cookies, OAuth state).
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// What a sealed secret is; part of the associated data, so a PKCE verifier can never be
/// opened as a refresh token or the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A Databricks OAuth refresh token (`links.refresh_token`).
    RefreshToken,
    /// A PKCE code verifier kept with a pending link.
    PkceVerifier,
    /// A Databricks OAuth access token (`links.access_token`), shared by replicas.
    AccessToken,
    /// A verified sign-in waiting for the person to confirm it replaces their link
    /// (`pending_links.held_link`).
    HeldLink,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::RefreshToken => b"refresh_token",
            Purpose::PkceVerifier => b"pkce_verifier",
            Purpose::AccessToken => b"access_token",
            Purpose::HeldLink => b"held_link",
        }
    }
}

/// Whose secret an envelope holds; bound into the associated data.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    purpose: Purpose,
    team: &'a TeamId,
    user: &'a UserId,
    workspace: &'a WorkspaceHost,
}

impl<'a> Binding<'a> {
    /// `purpose`'s secret of `user` in `team`, for `workspace`.
    pub fn new(purpose: Purpose, team: &'a TeamId, user: &'a UserId, workspace: &'a WorkspaceHost) -> Self {
        Self {
            purpose,
            team,
            user,
            workspace,
        }
    }

    fn aad(&self, key_id: &KeyId) -> Vec<u8> {
        let mut aad = Vec::with_capacity(128);
        for field in [
            AAD_CONTEXT,
            &[VERSION],
            key_id.as_str().as_bytes(),
            self.purpose.label(),
            self.team.as_str().as_bytes(),
            self.user.as_str().as_bytes(),
            self.workspace.as_str().as_bytes(),
        ] {
            // Length-prefixed, so ("ab","c") and ("a","bc") never share associated data.
            aad.extend_from_slice(&(field.len() as u32).to_be_bytes());
            aad.extend_from_slice(field);
        }
        aad
    }
}

/// The header of an envelope, readable without a key.
#[derive(Debug)]
struct Envelope<'a> {
    key_id: &'a str,
    nonce: &'a [u8],
    ciphertext: &'a [u8],
}

impl<'a> Envelope<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, VaultError> {
        let (&version, rest) = bytes.split_first().ok_or(VaultError::Malformed)?;
        if version != VERSION {
            return Err(VaultError::UnsupportedVersion(version));
        }
        let (&id_len, rest) = rest.split_first().ok_or(VaultError::Malformed)?;
        let id_len = usize::from(id_len);
        if id_len == 0 || rest.len() < id_len + NONCE_LEN + TAG_LEN {
            return Err(VaultError::Malformed);
        }
        let (key_id, rest) = rest.split_at(id_len);
        let key_id = std::str::from_utf8(key_id).map_err(|_| VaultError::Malformed)?;
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        Ok(Self {
            key_id,
            nonce,
            ciphertext,
        })
    }
}

/// The id of the key that sealed `envelope`, read from its clear header.
pub fn envelope_key_id(envelope: &[u8]) -> Result<KeyId, VaultError> {
    let header = Envelope::parse(envelope)?;
    KeyId::parse(header.key_id).map_err(|_| VaultError::Malformed)
}

/// Seals and opens secrets. The first key seals; every key opens.
#[derive(Clone, Debug)]
pub struct Vault {
    keys: Vec<VaultKey>,
}

impl Vault {
    /// A vault over `keys`, the first being primary. Callers validate that the list is
    /// non-empty and ids are unique (configuration does).
    pub fn new(keys: Vec<VaultKey>) -> Self {
        assert!(!keys.is_empty(), "a vault needs at least one key");
        Self { keys }
    }

    /// Whether a key with id `key_id` is configured.
    pub fn has_key(&self, key_id: &str) -> bool {
        self.keys.iter().any(|key| key.id.as_str() == key_id)
    }

    /// The key that seals new secrets.
    pub fn primary_key_id(&self) -> &KeyId {
        &self.keys[0].id
    }

    /// Encrypts `secret` under the primary key with a fresh random nonce.
    pub fn seal(&self, binding: Binding<'_>, secret: &SecretString) -> Vec<u8> {
        let key = &self.keys[0];
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let aad = binding.aad(&key.id);
        let ciphertext = key
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: secret.expose_secret().as_bytes(),
                    aad: &aad,
                },
            )
            .expect("AES-GCM encryption cannot fail for inputs under 64 GiB");
        let id = key.id.as_str().as_bytes();
        let mut out = Vec::with_capacity(2 + id.len() + NONCE_LEN + ciphertext.len());
        out.push(VERSION);
        out.push(id.len() as u8); // KeyId::parse caps ids at 32 bytes
        out.extend_from_slice(id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Decrypts an envelope, checking it belongs to `binding`.
    pub fn open(&self, binding: Binding<'_>, envelope: &[u8]) -> Result<SecretString, VaultError> {
        let header = Envelope::parse(envelope)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id.as_str() == header.key_id)
            .ok_or_else(|| VaultError::UnknownKey(header.key_id.to_owned()))?;
        let aad = binding.aad(&key.id);
        let plain = Zeroizing::new(
            key.cipher
                .decrypt(
                    Nonce::from_slice(header.nonce),
                    Payload {
                        msg: header.ciphertext,
                        aad: &aad,
                    },
                )
                .map_err(|_| VaultError::Integrity)?,
        );
        let text = std::str::from_utf8(&plain).map_err(|_| VaultError::Malformed)?;
        Ok(SecretString::from(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    fn key(id: &str, byte: u8) -> VaultKey {
        VaultKey::parse(&SecretString::from(format!("{id}:{}", BASE64.encode([byte; 32])))).unwrap()
    }

    struct Who {
        team: TeamId,
        user: UserId,
        ws: WorkspaceHost,
    }

    impl Who {
        fn new(team: &str, user: &str, ws: &str) -> Self {
            Self {
                team: TeamId::parse(team).unwrap(),
                user: UserId::parse(user).unwrap(),
                ws: WorkspaceHost::parse(ws).unwrap(),
            }
        }
        fn rt(&self) -> Binding<'_> {
            Binding {
                purpose: Purpose::RefreshToken,
                team: &self.team,
                user: &self.user,
                workspace: &self.ws,
            }
        }
    }

    fn alice() -> Who {
        Who::new("T1", "U1", "https://a.cloud.databricks.com")
    }

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[test]
    fn sealed_secrets_open_to_the_same_text_with_a_readable_header() {
        let vault = Vault::new(vec![key("k1", 1)]);
        let who = alice();
        let sealed = vault.seal(who.rt(), &secret("doau-canary"));
        assert_eq!(sealed[0], VERSION);
        assert_eq!(envelope_key_id(&sealed).unwrap().as_str(), "k1");
        assert_eq!(sealed.len(), 2 + 2 + NONCE_LEN + "doau-canary".len() + TAG_LEN);
        assert_eq!(vault.open(who.rt(), &sealed).unwrap().expose_secret(), "doau-canary");
    }

    // CRY-04: every single-bit flip anywhere in the envelope is refused with a typed error.
    #[test]
    fn a_bit_flipped_at_any_position_fails_closed() {
        let vault = Vault::new(vec![key("k1", 1)]);
        let who = alice();
        let sealed = vault.seal(who.rt(), &secret("refresh-token-value"));
        for i in 0..sealed.len() * 8 {
            let mut tampered = sealed.clone();
            tampered[i / 8] ^= 1 << (i % 8);
            let err = vault.open(who.rt(), &tampered).expect_err("tampered envelope opened");
            assert!(
                matches!(
                    err,
                    VaultError::Malformed
                        | VaultError::UnsupportedVersion(_)
                        | VaultError::UnknownKey(_)
                        | VaultError::Integrity
                ),
                "bit {i}: {err:?}"
            );
        }
    }

    // CRY-04: truncation at every length, and empty input.
    #[test]
    fn truncated_and_empty_envelopes_are_malformed_or_unauthentic() {
        let vault = Vault::new(vec![key("k1", 1)]);
        let who = alice();
        let sealed = vault.seal(who.rt(), &secret("refresh-token-value"));
        assert_eq!(vault.open(who.rt(), &[]).unwrap_err(), VaultError::Malformed);
        for len in 0..sealed.len() {
            let err = vault.open(who.rt(), &sealed[..len]).unwrap_err();
            assert!(
                matches!(err, VaultError::Malformed | VaultError::Integrity),
                "len {len}: {err:?}"
            );
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert_eq!(vault.open(who.rt(), &longer).unwrap_err(), VaultError::Integrity);
    }

    // CRY-03: a ciphertext moved to another person, workspace or purpose does not open.
    #[test]
    fn a_ciphertext_moved_to_another_binding_fails_authentication() {
        let vault = Vault::new(vec![key("k1", 1)]);
        let who = alice();
        let sealed = vault.seal(who.rt(), &secret("rt"));
        let others = [
            Who::new("T2", "U1", "https://a.cloud.databricks.com"),
            Who::new("T1", "U2", "https://a.cloud.databricks.com"),
            Who::new("T1", "U1", "https://b.cloud.databricks.com"),
        ];
        for other in &others {
            assert_eq!(vault.open(other.rt(), &sealed).unwrap_err(), VaultError::Integrity);
        }
        let as_verifier = Binding {
            purpose: Purpose::PkceVerifier,
            ..who.rt()
        };
        assert_eq!(vault.open(as_verifier, &sealed).unwrap_err(), VaultError::Integrity);
    }

    // CRY-06: an envelope under a key we no longer hold fails closed, naming the key id.
    #[test]
    fn an_unknown_key_id_is_a_typed_error() {
        let who = alice();
        let sealed = Vault::new(vec![key("old", 1)]).seal(who.rt(), &secret("rt"));
        let vault = Vault::new(vec![key("new", 2)]);
        assert_eq!(
            vault.open(who.rt(), &sealed).unwrap_err(),
            VaultError::UnknownKey("old".into())
        );
    }

    // CRY-03: relabelling the key id to another configured key is caught by the AAD.
    #[test]
    fn relabelling_the_key_id_fails_authentication() {
        let who = alice();
        let vault = Vault::new(vec![key("ka", 1), key("kb", 1)]);
        let mut sealed = vault.seal(who.rt(), &secret("rt"));
        sealed[3] = b'b'; // "ka" -> "kb": same key bytes, different id
        assert_eq!(vault.open(who.rt(), &sealed).unwrap_err(), VaultError::Integrity);
    }

    #[test]
    fn secondary_keys_open_but_only_the_primary_seals() {
        let who = alice();
        let old = Vault::new(vec![key("k1", 1)]).seal(who.rt(), &secret("rt"));
        let vault = Vault::new(vec![key("k2", 2), key("k1", 1)]);
        assert_eq!(vault.open(who.rt(), &old).unwrap().expose_secret(), "rt");
        let new = vault.seal(who.rt(), &secret("rt"));
        assert_eq!(envelope_key_id(&new).unwrap().as_str(), "k2");
    }

    // CRY-02: nonces come fresh from the OS for every seal.
    #[test]
    fn a_hundred_thousand_seals_use_distinct_nonces() {
        let vault = Vault::new(vec![key("k1", 1)]);
        let who = alice();
        let plain = secret("same plaintext every time");
        let mut nonces = HashSet::with_capacity(100_000);
        for _ in 0..100_000 {
            let sealed = vault.seal(who.rt(), &plain);
            let header = Envelope::parse(&sealed).unwrap();
            assert!(nonces.insert(<[u8; NONCE_LEN]>::try_from(header.nonce).unwrap()));
        }
    }

    #[test]
    fn keys_parse_with_an_id_or_as_a_bare_key_with_a_fingerprint_id() {
        let bare = generate_key();
        let k = VaultKey::parse(&bare).unwrap();
        assert!(k.id().as_str().starts_with("fp-") && k.id().as_str().len() == 11);
        assert_eq!(VaultKey::parse(&bare).unwrap().id(), k.id(), "fingerprint is stable");
        let named = SecretString::from(format!("prod-2026:{}", bare.expose_secret()));
        assert_eq!(VaultKey::parse(&named).unwrap().id().as_str(), "prod-2026");
    }

    #[test]
    fn malformed_keys_are_refused_with_the_reason() {
        let short = SecretString::from(format!("k1:{}", BASE64.encode([0u8; 16])));
        assert_eq!(VaultKey::parse(&short).unwrap_err(), KeyError::WrongLength(16));
        assert_eq!(
            VaultKey::parse(&secret("k1:not base64!")).unwrap_err(),
            KeyError::NotBase64
        );
        let bad_id = SecretString::from(format!("bad id:{}", BASE64.encode([0u8; 32])));
        assert_eq!(VaultKey::parse(&bad_id).unwrap_err(), KeyError::BadId);
    }

    // CRY-08: the vault's debug output names its keys, never their bytes.
    #[test]
    fn debug_output_never_shows_key_material() {
        let vault = Vault::new(vec![key("k1", 7)]);
        let shown = format!("{vault:?}");
        assert!(shown.contains("k1"));
        assert!(!shown.contains(&BASE64.encode([7u8; 32])));
    }

    proptest! {
        #[test]
        fn round_trip_holds_for_any_text(text in ".{0,512}", user in "U[A-Z0-9]{1,20}") {
            let vault = Vault::new(vec![key("k1", 3)]);
            let who = Who::new("T1", &user, "https://a.cloud.databricks.com");
            let sealed = vault.seal(who.rt(), &secret(&text));
            let opened = vault.open(who.rt(), &sealed).unwrap();
            prop_assert_eq!(opened.expose_secret(), text.as_str());
        }

        // FZ-01: any bytes handed to the envelope decoder are refused with a typed error,
        // never a panic and never a secret.
        #[test]
        fn any_bytes_fail_to_open_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let vault = Vault::new(vec![key("k1", 3)]);
            prop_assert!(vault.open(alice().rt(), &bytes).is_err());
        }

        // FZ-01: a seal opens for its own binding only: any other team or user fails
        // authentication.
        #[test]
        fn any_change_to_the_binding_fails_authentication(
            team in "T[A-Z0-9]{1,12}",
            user in "U[A-Z0-9]{1,12}",
        ) {
            let vault = Vault::new(vec![key("k1", 3)]);
            let who = alice();
            let sealed = vault.seal(who.rt(), &secret("rt"));
            let other = Who::new(&team, &user, "https://a.cloud.databricks.com");
            prop_assume!(other.team != who.team || other.user != who.user);
            prop_assert_eq!(vault.open(other.rt(), &sealed).unwrap_err(), VaultError::Integrity);
        }
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
