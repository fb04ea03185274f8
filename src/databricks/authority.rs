//! How the bot obtains a person's Databricks access token: `DATABRICKS_AUTH`.
//!
//! - `databricks-oauth`: people sign in to Databricks itself (U2M with the workspace's app
//!   connection); its refresh token is the one kept.
//! - `entra-obo`: people sign in to Entra ID, for the bot's own API. Every access token is
//!   then Entra's on-behalf-of exchange of a fresh token for that API, for the Azure
//!   Databricks resource (`2ff814a6-3304-4ab8-85cb-cd0e6f879c1d`).
//! - `token-federation`: people sign in to the company's OIDC provider. Every access token
//!   is the workspace's RFC 8693 exchange (`/oidc/v1/token`) of a fresh IdP JWT, which an
//!   account federation policy maps to the Databricks user.
//!
//! In the two identity-provider modes the kept (sealed) refresh token is the IdP's, and
//! the second hop runs on every refresh. Everything else — the link page, the identity
//! check, the broker's single refresh across replicas, disconnect, the agents — sees only
//! [`Tokens`] with a Databricks access token, whichever mode made it.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use super::entra;
use super::oauth::{DatabricksOAuth, Discovery, Refusals, SignIn, TokenError, Tokens, without_url};
use crate::config::{ClientCredential, DatabricksAuth, DatabricksConfig};
use crate::domain::WorkspaceHost;

/// The Azure Databricks resource, the audience of the on-behalf-of exchange: the same
/// application id in every Azure cloud (databricks-sdk-py `environments.py`,
/// `ARM_DATABRICKS_RESOURCE_ID`).
pub const AZURE_DATABRICKS_RESOURCE: &str = "2ff814a6-3304-4ab8-85cb-cd0e6f879c1d";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// The second hop of the identity-provider modes: an IdP token in, a Databricks token out.
#[derive(Clone)]
pub enum Exchange {
    /// Entra ID on-behalf-of, at the tenant's token endpoint (from its discovery
    /// document), as the sign-in's client.
    OnBehalfOf,
    /// RFC 8693 token exchange at the workspace's `/oidc/v1/token`.
    Federation { token_url: Url, subject: Subject },
}

/// Which IdP token a federation exchange presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// The id_token (its audience is the IdP client id).
    IdToken,
    /// The access token, issued for `IDP_AUDIENCE`.
    AccessToken,
}

/// Where and how Databricks access tokens come from.
#[derive(Clone)]
pub struct Authority {
    sign_in: DatabricksOAuth,
    exchange: Option<Exchange>,
    http: reqwest::Client,
}

/// Why a second hop failed.
enum HopError {
    /// The IdP token was no longer valid when it arrived: refresh it and try once more.
    SubjectExpired,
    Token(TokenError),
}

impl From<TokenError> for HopError {
    fn from(error: TokenError) -> Self {
        HopError::Token(error)
    }
}

impl Authority {
    /// The mode `config` chooses, with people redirected back to `public_base_url`.
    pub fn new(config: &DatabricksConfig, public_base_url: &Url, http: reqwest::Client) -> Self {
        let (sign_in, exchange) = match &config.auth {
            DatabricksAuth::DatabricksOAuth(app) => (DatabricksOAuth::new(app, public_base_url, http.clone()), None),
            DatabricksAuth::EntraObo(entra) => {
                let sign_in = SignIn {
                    provider: "Entra ID",
                    discovery_url: entra.discovery_url(),
                    client_id: entra.client_id.clone(),
                    credential: Some(entra.credential.clone()),
                    scopes: [entra.api_scope.as_str(), "offline_access", "openid", "email", "profile"]
                        .map(str::to_owned)
                        .to_vec(),
                    scopes_on_refresh: true,
                    extra: Vec::new(),
                    hint: "check ENTRA_TENANT_ID, ENTRA_CLIENT_ID, ENTRA_CLIENT_SECRET (or ENTRA_CLIENT_CERTIFICATE) and \
                           ENTRA_API_SCOPE, and that the app registration has AzureDatabricks user_impersonation with admin consent",
                    refusals: Refusals::Entra,
                };
                let exchange = Exchange::OnBehalfOf;
                (
                    DatabricksOAuth::signing_in(sign_in, public_base_url, http.clone()),
                    Some(exchange),
                )
            }
            DatabricksAuth::TokenFederation(idp) => {
                let sign_in = SignIn {
                    provider: "the identity provider",
                    discovery_url: idp.discovery_url(),
                    client_id: idp.client_id.clone(),
                    credential: idp.client_secret.clone().map(ClientCredential::Secret),
                    scopes: idp.scopes.clone(),
                    scopes_on_refresh: false,
                    extra: idp
                        .audience
                        .iter()
                        .map(|audience| ("audience".to_owned(), audience.clone()))
                        .collect(),
                    hint: "check IDP_ISSUER, IDP_CLIENT_ID, IDP_CLIENT_SECRET, IDP_SCOPES, IDP_AUDIENCE and the \
                           account's federation policy",
                    refusals: Refusals::OAuth,
                };
                let subject = match idp.audience {
                    Some(_) => Subject::AccessToken,
                    None => Subject::IdToken,
                };
                let exchange = Exchange::Federation {
                    token_url: federation_endpoint(&config.host),
                    subject,
                };
                (
                    DatabricksOAuth::signing_in(sign_in, public_base_url, http.clone()),
                    Some(exchange),
                )
            }
        };
        Self {
            sign_in,
            exchange,
            http,
        }
    }

    /// Who people sign in to, for logs and `check`.
    pub fn provider(&self) -> &'static str {
        self.sign_in.provider()
    }

    /// What an operator should check when the bot's requests are refused.
    pub fn hint(&self) -> &'static str {
        self.sign_in.hint()
    }

    /// The exact redirect URI registered with the sign-in's client.
    pub fn redirect_uri(&self) -> &Url {
        self.sign_in.redirect_uri()
    }

    /// The sign-in's discovery document (fetched once).
    pub async fn discovery(&self) -> Result<&Discovery, TokenError> {
        self.sign_in.discovery().await
    }

    /// `DATABRICKS_AUTH`'s value.
    pub fn mode(&self) -> &'static str {
        match &self.exchange {
            None => "databricks-oauth",
            Some(Exchange::OnBehalfOf) => "entra-obo",
            Some(Exchange::Federation { .. }) => "token-federation",
        }
    }

    /// Where the sign-in's discovery document is.
    pub fn discovery_url(&self) -> &Url {
        self.sign_in.discovery_url()
    }

    /// For `check`: whether the workspace's token exchange answers at all (a request
    /// without a token must get an HTTP answer, an error). `None` where the mode has no
    /// such endpoint (Entra's on-behalf-of is the tenant's token endpoint, already
    /// reached through its discovery).
    pub async fn probe_exchange(&self) -> Option<Result<&Url, String>> {
        let Some(Exchange::Federation { token_url, .. }) = &self.exchange else {
            return None;
        };
        let probe = self
            .http
            .post(token_url.clone())
            .form(&[("grant_type", TOKEN_EXCHANGE)])
            .send()
            .await;
        Some(match probe {
            Ok(answer) if answer.status().is_client_error() || answer.status().is_success() => Ok(token_url),
            Ok(answer) => Err(format!("{token_url} answered HTTP {}", answer.status().as_u16())),
            Err(e) => Err(format!("{token_url} cannot be reached: {}", without_url(&e))),
        })
    }

    /// Who signed in, as the identity provider names them (`email`, `preferred_username`
    /// or `upn` of the id_token), for the audit. `None` in `databricks-oauth`, where
    /// Databricks' own SCIM identity is the whole story.
    pub fn signed_in_as(&self, tokens: &Tokens) -> Option<String> {
        self.exchange.as_ref()?;
        let claims = jwt_claims(tokens.id_token.as_ref()?.expose_secret())?;
        claims.person().map(str::to_owned)
    }

    /// The sign-in's authorization URL for one attempt.
    pub async fn authorize_url(&self, state: &SecretString, verifier: &SecretString) -> Result<Url, TokenError> {
        self.sign_in.authorize_url(state, verifier).await
    }

    /// Exchanges an authorization code for a Databricks access token and the refresh
    /// token to keep (the IdP's, in the identity-provider modes).
    pub async fn exchange_code(&self, code: &SecretString, verifier: &SecretString) -> Result<Tokens, TokenError> {
        let signed_in = self.sign_in.exchange_code(code, verifier).await?;
        self.onward(signed_in, None).await
    }

    /// A new Databricks access token from the kept refresh token (rotated in the answer
    /// when the server rotates it).
    pub async fn refresh(&self, refresh_token: &SecretString) -> Result<Tokens, TokenError> {
        let refreshed = self.sign_in.refresh(refresh_token).await?;
        self.onward(refreshed, Some(refresh_token)).await
    }

    /// Revokes a kept refresh token where the sign-in offers revocation (best effort).
    pub async fn revoke_quietly(&self, refresh_token: &SecretString) {
        self.sign_in.revoke_quietly(refresh_token).await
    }

    /// The second hop for `idp` tokens. An IdP token that expired on the way is refreshed
    /// once and exchanged again.
    async fn onward(&self, idp: Tokens, kept: Option<&SecretString>) -> Result<Tokens, TokenError> {
        let Some(exchange) = &self.exchange else {
            return Ok(idp);
        };
        match self.hop(exchange, &idp).await {
            Ok(tokens) => Ok(tokens),
            Err(HopError::Token(error)) => Err(error),
            Err(HopError::SubjectExpired) => {
                tracing::info!(
                    provider = self.provider(),
                    "the sign-in's token expired on its way to Databricks; refreshing it once"
                );
                let refresh_token = idp
                    .refresh_token
                    .clone()
                    .or_else(|| kept.cloned())
                    .ok_or(TokenError::Client("no_refresh_token"))?;
                let again = self.sign_in.refresh(&refresh_token).await?;
                let again = Tokens {
                    refresh_token: again.refresh_token.or(Some(refresh_token)),
                    ..again
                };
                self.hop(exchange, &again).await.map_err(|error| match error {
                    HopError::Token(error) => error,
                    HopError::SubjectExpired => {
                        TokenError::Transient("the sign-in's token expired twice on its way".into())
                    }
                })
            }
        }
    }

    async fn hop(&self, exchange: &Exchange, idp: &Tokens) -> Result<Tokens, HopError> {
        let (url, form, entra) = match exchange {
            Exchange::OnBehalfOf => {
                let url = self.sign_in.discovery().await?.token_endpoint.clone();
                let mut form = vec![
                    ("grant_type".to_owned(), JWT_BEARER.to_owned()),
                    ("client_id".to_owned(), self.sign_in.client_id().to_owned()),
                ];
                match self.sign_in.credential() {
                    Some(ClientCredential::Secret(secret)) => {
                        form.push(("client_secret".to_owned(), secret.expose_secret().to_owned()))
                    }
                    _ => form.extend(self.sign_in.client_assertion(&url)),
                }
                form.extend([
                    ("assertion".to_owned(), idp.access_token.expose_secret().to_owned()),
                    ("scope".to_owned(), format!("{AZURE_DATABRICKS_RESOURCE}/.default")),
                    ("requested_token_use".to_owned(), "on_behalf_of".to_owned()),
                ]);
                (url, form, true)
            }
            Exchange::Federation { token_url, subject } => {
                let jwt = match subject {
                    Subject::IdToken => idp.id_token.as_ref().ok_or(TokenError::Client("no_id_token"))?,
                    Subject::AccessToken => &idp.access_token,
                };
                let form = [
                    ("grant_type", TOKEN_EXCHANGE),
                    ("subject_token", jwt.expose_secret()),
                    ("subject_token_type", JWT_TOKEN_TYPE),
                    ("scope", "all-apis"),
                ]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .to_vec();
                (token_url.clone(), form, false)
            }
        };
        let response = self
            .http
            .post(url)
            .form(&form)
            .send()
            .await
            .map_err(|e| match e.is_timeout() {
                true => TokenError::Timeout,
                false => TokenError::Transient(without_url(&e)),
            })?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|e| TokenError::Transient(without_url(&e)))?;
        if (200..300).contains(&status) {
            let answer: Exchanged = serde_json::from_slice(&body)
                .map_err(|_| TokenError::Transient(format!("an unreadable exchange answer (HTTP {status})")))?;
            return Ok(Tokens {
                access_token: SecretString::from(answer.access_token),
                refresh_token: idp.refresh_token.clone(),
                expires_in: answer.expires_in.unwrap_or(3600),
                scope: answer.scope,
                id_token: idp.id_token.clone(),
            });
        }
        let refusal: Refusal = serde_json::from_slice(&body).unwrap_or_default();
        let description = refusal.error_description.unwrap_or_default();
        if entra {
            // AADSTS500133: the assertion is not within its valid time range.
            if entra::aadsts_code(&description) == Some(500133) {
                return Err(HopError::SubjectExpired);
            }
            return Err(entra::classify(
                refusal.error.as_deref().unwrap_or("unreadable"),
                Some(&description),
                Some(status),
            )
            .into());
        }
        Err(federation_refusal(status, refusal.error.as_deref(), &description, idp))
    }
}

/// The workspace's token-exchange endpoint.
fn federation_endpoint(host: &WorkspaceHost) -> Url {
    Url::parse(&host.url("/oidc/v1/token")).expect("a workspace origin joins a path")
}

/// Reads the workspace's refusal of a token exchange. A subject token that expired is
/// renewed; a 429 or 5xx is transient; anything else means no federation policy accepts
/// the IdP's tokens: the operator's to fix, logged with the token's issuer and audience
/// (never the token or its subject).
fn federation_refusal(status: u16, error: Option<&str>, description: &str, idp: &Tokens) -> HopError {
    // The workspace's own words are not logged: they might quote what was sent.
    if matches!(status, 429 | 500..=599) {
        return HopError::Token(TokenError::Transient(format!(
            "the token exchange failed (HTTP {status})"
        )));
    }
    if description.to_ascii_lowercase().contains("expired") {
        return HopError::SubjectExpired;
    }
    let claims = idp
        .id_token
        .as_ref()
        .and_then(|t| jwt_claims(t.expose_secret()))
        .unwrap_or_default();
    tracing::error!(
        status,
        error = error.unwrap_or("unreadable"),
        issuer = claims.iss.as_deref().unwrap_or("unknown"),
        audience = %claims.aud.map(|a| a.join(" ")).unwrap_or_default(),
        "Databricks refused the token exchange: no federation policy accepts this identity provider's tokens \
         (check the policy's issuer, audiences and subject claim, and IDP_AUDIENCE); links are kept"
    );
    HopError::Token(TokenError::Client("federation_policy"))
}

/// A token-exchange answer (Entra's on-behalf-of, or Databricks' RFC 8693).
#[derive(Deserialize)]
struct Exchanged {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    scope: Option<String>,
}

/// An RFC 6749 error body.
#[derive(Default, Deserialize)]
struct Refusal {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// The claims of a JWT that name its issuer, audience and person.
#[derive(Debug, Default, Deserialize)]
pub struct Claims {
    #[serde(default)]
    pub iss: Option<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub aud: Option<Vec<String>>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub preferred_username: Option<String>,
    #[serde(default)]
    pub upn: Option<String>,
}

impl Claims {
    /// Who signed in, as the IdP names them: `email`, `preferred_username` or `upn`.
    pub fn person(&self) -> Option<&str> {
        [&self.email, &self.preferred_username, &self.upn]
            .into_iter()
            .find_map(|c| c.as_deref().filter(|s| !s.is_empty()))
    }
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(Option::<OneOrMany>::deserialize(d)?.map(|v| match v {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    }))
}

/// The claims of `jwt`, read without checking its signature: only for an id_token the
/// bot received straight from the IdP's token endpoint over TLS (OpenID Connect Core
/// 3.1.3.7), and only to name the person in the audit and logs.
pub fn jwt_claims(jwt: &str) -> Option<Claims> {
    use base64::Engine;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: serde_json::Value) -> String {
        use base64::Engine;
        let part = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.sig", part(&serde_json::json!({"alg": "RS256"})), part(&claims))
    }

    #[test]
    fn the_person_is_named_by_email_then_preferred_username_then_upn() {
        let claims = jwt_claims(&jwt(
            serde_json::json!({"iss": "https://idp", "aud": "bot", "upn": "a@corp.com",
                                                        "preferred_username": "alice@corp.com"}),
        ))
        .unwrap();
        assert_eq!(claims.person(), Some("alice@corp.com"));
        assert_eq!(claims.aud, Some(vec!["bot".to_owned()]));
        let claims = jwt_claims(&jwt(serde_json::json!({"aud": ["a", "b"], "email": "e@corp.com"}))).unwrap();
        assert_eq!(claims.person(), Some("e@corp.com"));
        assert_eq!(claims.aud.unwrap().len(), 2);
        assert!(jwt_claims("not-a-jwt").is_none());
        assert!(jwt_claims("a.!!!.c").is_none());
    }
}
