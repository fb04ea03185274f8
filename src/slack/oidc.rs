//! Sign in with Slack (OpenID Connect): proves that the person in the browser is the
//! Slack user the link was made for, before anyone is sent to Databricks.
//!
//! The id_token is verified in full: RS256 signature against the issuer's JWKS, issuer,
//! audience (our client id), expiry, and the nonce of this very attempt; then its
//! `https://slack.com/team_id` and `https://slack.com/user_id` must equal the link's.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::{OnceCell, RwLock};
use url::Url;

use crate::domain::is_secure_or_loopback;

/// Why Sign in with Slack did not prove who is in the browser.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    #[error("Slack's OpenID configuration is unusable: {0}")]
    Discovery(String),
    #[error("Slack did not exchange the code: {0}")]
    Exchange(String),
    #[error("the id_token is not valid: {0}")]
    InvalidToken(String),
}

/// The verified Slack identity of the browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlackIdentity {
    pub team_id: String,
    pub user_id: String,
}

#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: Url,
    token_endpoint: Url,
    jwks_uri: Url,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kid: Option<String>,
    kty: String,
    n: Option<String>,
    e: Option<String>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    ok: Option<bool>,
    id_token: Option<String>,
    error: Option<String>,
}

/// The id_token is a bearer credential: `Debug` shows only whether it came.
impl fmt::Debug for TokenAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenAnswer")
            .field("ok", &self.ok)
            .field("id_token", &self.id_token.as_ref().map(|_| "[redacted]"))
            .field("error", &self.error)
            .finish()
    }
}

#[derive(Deserialize)]
struct Claims {
    nonce: Option<String>,
    #[serde(rename = "https://slack.com/team_id")]
    team_id: Option<String>,
    #[serde(rename = "https://slack.com/user_id")]
    user_id: Option<String>,
}

/// The Sign in with Slack client.
#[derive(Clone)]
pub struct SlackOidc {
    http: reqwest::Client,
    issuer: Url,
    client_id: String,
    client_secret: SecretString,
    redirect_uri: Url,
    discovery: Arc<OnceCell<Discovery>>,
    keys: Arc<RwLock<HashMap<String, DecodingKey>>>,
}

impl SlackOidc {
    /// A client for `issuer` (e.g. `https://slack.com`), returning to
    /// `{public_base_url}/oauth/slack/callback`.
    pub fn new(
        http: reqwest::Client,
        issuer: Url,
        client_id: String,
        client_secret: SecretString,
        public_base_url: &Url,
    ) -> Self {
        let mut redirect_uri = public_base_url.clone();
        redirect_uri.set_path("/oauth/slack/callback");
        Self {
            http,
            issuer,
            client_id,
            client_secret,
            redirect_uri,
            discovery: Arc::new(OnceCell::new()),
            keys: Arc::new(RwLock::new(HashMap::new())),
        }
    }

    /// The issuer's origin, where the browser is sent to sign in.
    pub fn issuer_origin(&self) -> String {
        self.issuer.origin().ascii_serialization()
    }

    fn issuer_str(&self) -> &str {
        self.issuer.as_str().trim_end_matches('/')
    }

    async fn discovery(&self) -> Result<&Discovery, OidcError> {
        self.discovery
            .get_or_try_init(|| async {
                let url = format!("{}/.well-known/openid-configuration", self.issuer_str());
                let discovery: Discovery = self
                    .http
                    .get(url)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(|_| OidcError::Discovery("could not fetch it".into()))?
                    .json()
                    .await
                    .map_err(|_| OidcError::Discovery("not the expected JSON".into()))?;
                // Pinned: the document must speak for the issuer we were configured with.
                if discovery.issuer.trim_end_matches('/') != self.issuer_str() {
                    return Err(OidcError::Discovery("its issuer is not SLACK_OIDC_ISSUER".into()));
                }
                for url in [
                    &discovery.authorization_endpoint,
                    &discovery.token_endpoint,
                    &discovery.jwks_uri,
                ] {
                    if !is_secure_or_loopback(url) {
                        return Err(OidcError::Discovery("endpoints must be https".into()));
                    }
                }
                Ok(discovery)
            })
            .await
    }

    /// Where to send the browser: Slack's authorization with our `state` and `nonce`,
    /// pre-selecting the link's workspace.
    pub async fn authorize_url(
        &self,
        state: &SecretString,
        nonce: &SecretString,
        team_id: &str,
    ) -> Result<Url, OidcError> {
        let mut url = self.discovery().await?.authorization_endpoint.clone();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("scope", "openid email profile")
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", self.redirect_uri.as_str())
            .append_pair("state", state.expose_secret())
            .append_pair("nonce", nonce.expose_secret())
            .append_pair("team", team_id);
        Ok(url)
    }

    /// Exchanges the code and verifies the id_token; `nonce_matches` says whether its
    /// nonce is the one this attempt sent.
    pub async fn identify(
        &self,
        code: &SecretString,
        nonce_matches: impl Fn(&str) -> bool,
    ) -> Result<SlackIdentity, OidcError> {
        let discovery = self.discovery().await?;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code.expose_secret()),
            ("redirect_uri", self.redirect_uri.as_str()),
            ("client_id", &self.client_id),
            ("client_secret", self.client_secret.expose_secret()),
        ];
        let answer: TokenAnswer = self
            .http
            .post(discovery.token_endpoint.clone())
            .form(&form)
            .send()
            .await
            .map_err(|_| OidcError::Exchange("could not reach Slack".into()))?
            .json()
            .await
            .map_err(|_| OidcError::Exchange("unreadable answer".into()))?;
        let id_token = match answer {
            TokenAnswer {
                ok: Some(true) | None,
                id_token: Some(token),
                ..
            } => token,
            TokenAnswer { error, .. } => {
                return Err(OidcError::Exchange(error.unwrap_or_else(|| "no id_token".into())));
            }
        };
        let claims = self.verify(&id_token).await?;
        if !claims.nonce.as_deref().is_some_and(nonce_matches) {
            return Err(OidcError::InvalidToken("nonce mismatch".into()));
        }
        match (claims.team_id, claims.user_id) {
            (Some(team_id), Some(user_id)) => Ok(SlackIdentity { team_id, user_id }),
            _ => Err(OidcError::InvalidToken("no Slack team or user in it".into())),
        }
    }

    async fn verify(&self, id_token: &str) -> Result<Claims, OidcError> {
        let header = decode_header(id_token).map_err(|_| OidcError::InvalidToken("malformed".into()))?;
        if header.alg != Algorithm::RS256 {
            return Err(OidcError::InvalidToken("not RS256".into()));
        }
        let kid = header.kid.unwrap_or_default();
        let key = self.key(&kid).await?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[self.issuer_str(), &format!("{}/", self.issuer_str())]);
        validation.set_audience(&[&self.client_id]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        decode::<Claims>(id_token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|e| OidcError::InvalidToken(e.kind_summary()))
    }

    /// The issuer's key `kid`, fetching the JWKS again when it is unknown (rotation).
    async fn key(&self, kid: &str) -> Result<DecodingKey, OidcError> {
        if let Some(key) = self.keys.read().await.get(kid) {
            return Ok(key.clone());
        }
        let jwks: Jwks = self
            .http
            .get(self.discovery().await?.jwks_uri.clone())
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|_| OidcError::Discovery("could not fetch the JWKS".into()))?
            .json()
            .await
            .map_err(|_| OidcError::Discovery("unreadable JWKS".into()))?;
        let mut keys = self.keys.write().await;
        for jwk in jwks.keys.iter().filter(|k| k.kty == "RSA") {
            if let (Some(n), Some(e)) = (&jwk.n, &jwk.e)
                && let Ok(key) = DecodingKey::from_rsa_components(n, e)
            {
                keys.insert(jwk.kid.clone().unwrap_or_default(), key);
            }
        }
        keys.get(kid)
            .cloned()
            .ok_or_else(|| OidcError::InvalidToken("signed with an unknown key".into()))
    }
}

trait KindSummary {
    fn kind_summary(&self) -> String;
}

impl KindSummary for jsonwebtoken::errors::Error {
    /// The error kind without any token content.
    fn kind_summary(&self) -> String {
        format!("{:?}", self.kind())
    }
}
