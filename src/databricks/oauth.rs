//! Sign-in with the `oauth2` crate: the authorization URL (PKCE S256, our own server-side
//! state, the exact redirect URI), the code exchange and refreshes. The same client signs
//! people in to Databricks (U2M) or, in the identity-provider modes, to Entra ID or the
//! company's OIDC provider ([`SignIn`] says which and how).
//!
//! Endpoints come from the server's discovery document, fetched once and cached. The
//! HTTP client follows no redirects (a token endpoint that redirects is an error, not a
//! hop to wherever it points) and every call has a timeout. Token-endpoint failures are
//! classified so callers can tell a dead grant from a blip from a misconfiguration.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use oauth2::basic::{
    BasicErrorResponse, BasicErrorResponseType, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    AsyncHttpClient, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet, EndpointSet,
    ExtraTokenFields, HttpRequest, HttpResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken,
    RequestTokenError, RevocationUrl, Scope, StandardRevocableToken, StandardTokenResponse, TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use url::Url;

use crate::config::{AppConnection, ClientCredential};
use crate::domain::is_secure_or_loopback;

/// Longest any call to the authorization server may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// The fields of the discovery document we use.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub authorization_endpoint: Url,
    pub token_endpoint: Url,
    #[serde(default)]
    pub code_challenge_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    pub revocation_endpoint: Option<Url>,
}

/// Tokens from an exchange or a refresh.
pub struct Tokens {
    pub access_token: SecretString,
    /// `None` when the server did not rotate (keep the old one).
    pub refresh_token: Option<SecretString>,
    /// Seconds the access token lives; an hour when the server does not say.
    pub expires_in: u64,
    pub scope: Option<String>,
    /// The OpenID Connect id_token, when the server sent one (`openid` scope).
    pub id_token: Option<SecretString>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "[redacted]"))
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// Why a token request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The grant (code or refresh token) is dead: the person must connect again. `why`
    /// says so in words for the person, where the server said why (say, multi-factor
    /// authentication is now required).
    #[error("the grant is no longer valid ({detail})")]
    DeadGrant { detail: String, why: Option<&'static str> },
    /// The bot's request was refused for a reason of the bot's, not the person's: the
    /// client (wrong id or secret, app connection removed), its scopes, its grant type, a
    /// federation policy that matches nothing, or an answer nobody documents (an unknown
    /// code, an HTML page). An operator problem, never a reason to drop anyone's link. The
    /// code is one of a fixed few OAuth codes, `other`, `unreadable` or
    /// `federation_policy`.
    #[error("the token endpoint refused the bot's request ({0})")]
    Client(&'static str),
    /// No answer in time: the server may or may not have acted on the request.
    #[error("the token endpoint did not answer in time")]
    Timeout,
    /// Network errors, 5xx, 429 and unreadable answers: worth retrying later.
    #[error("the token endpoint failed transiently ({0})")]
    Transient(String),
    /// The discovery document could not be used.
    #[error("the OAuth discovery document is unusable: {0}")]
    Discovery(String),
}

impl TokenError {
    /// A dead grant the server gave no reason for that we can put in words.
    pub fn dead(detail: impl Into<String>) -> Self {
        TokenError::DeadGrant {
            detail: detail.into(),
            why: None,
        }
    }
}

/// The id_token that rides along a token response (`openid`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IdTokenField {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
}

impl ExtraTokenFields for IdTokenField {}

type TokenAnswer = StandardTokenResponse<IdTokenField, BasicTokenType>;

type ConfiguredClient = oauth2::Client<
    BasicErrorResponse,
    TokenAnswer,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

type UnconfiguredClient = oauth2::Client<
    BasicErrorResponse,
    TokenAnswer,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
>;

type RequestError = RequestTokenError<SendError, BasicErrorResponse>;

/// Whom people sign in to, and how.
#[derive(Clone)]
pub struct SignIn {
    /// Named in logs: "Databricks", "Entra ID", "the identity provider".
    pub provider: &'static str,
    pub discovery_url: Url,
    pub client_id: String,
    /// `None` for a public client.
    pub credential: Option<ClientCredential>,
    pub scopes: Vec<String>,
    /// Send the scopes with every refresh too (Entra ID requires them).
    pub scopes_on_refresh: bool,
    /// Extra parameters of the authorization request and every token request (an IdP's
    /// `audience`).
    pub extra: Vec<(String, String)>,
    /// What an operator should check when the server refuses the bot's requests.
    pub hint: &'static str,
    /// Reads the server's refusals: its own error codes say more than OAuth's.
    pub refusals: Refusals,
}

/// How a server's token-endpoint refusals are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusals {
    /// RFC 6749, and Databricks' dead refresh token (`invalid_request`, "Refresh token is
    /// invalid").
    OAuth,
    /// Entra ID: `interaction_required`, and AADSTS codes in `error_description`.
    Entra,
}

/// The OAuth client of this deployment's sign-in.
#[derive(Clone)]
pub struct DatabricksOAuth {
    http: reqwest::Client,
    discovery: Arc<OnceCell<Discovery>>,
    sign_in: Arc<SignIn>,
    redirect_uri: Url,
}

/// The client for the authorization server (see [`crate::outbound`]).
pub fn http_client() -> reqwest::Client {
    crate::outbound::client(CALL_TIMEOUT)
}

impl DatabricksOAuth {
    /// The Databricks app connection of `config` (`databricks-oauth`), redirecting back to
    /// `{public_base_url}/oauth/databricks/callback`.
    pub fn new(config: &AppConnection, public_base_url: &Url, http: reqwest::Client) -> Self {
        let sign_in = SignIn {
            provider: "Databricks",
            discovery_url: config.discovery_url.clone(),
            client_id: config.client_id.clone(),
            credential: config.client_secret.clone().map(ClientCredential::Secret),
            scopes: config.scopes.clone(),
            scopes_on_refresh: false,
            extra: Vec::new(),
            hint: "check DATABRICKS_CLIENT_ID, DATABRICKS_CLIENT_SECRET and DATABRICKS_SCOPES",
            refusals: Refusals::OAuth,
        };
        Self::signing_in(sign_in, public_base_url, http)
    }

    /// A client for `sign_in`, redirecting back to the one linking callback,
    /// `{public_base_url}/oauth/databricks/callback`, whichever server people sign in to.
    pub fn signing_in(sign_in: SignIn, public_base_url: &Url, http: reqwest::Client) -> Self {
        let mut redirect_uri = public_base_url.clone();
        redirect_uri.set_path("/oauth/databricks/callback");
        Self {
            http,
            discovery: Arc::new(OnceCell::new()),
            sign_in: Arc::new(sign_in),
            redirect_uri,
        }
    }

    /// The bot's client id at the sign-in.
    pub fn client_id(&self) -> &str {
        &self.sign_in.client_id
    }

    /// How the bot authenticates at the sign-in.
    pub fn credential(&self) -> Option<&ClientCredential> {
        self.sign_in.credential.as_ref()
    }

    /// Where the discovery document is.
    pub fn discovery_url(&self) -> &Url {
        &self.sign_in.discovery_url
    }

    /// Who people sign in to, for logs.
    pub fn provider(&self) -> &'static str {
        self.sign_in.provider
    }

    /// What an operator should check when the server refuses the bot's requests.
    pub fn hint(&self) -> &'static str {
        self.sign_in.hint
    }

    /// The exact redirect URI registered with the app connection.
    pub fn redirect_uri(&self) -> &Url {
        &self.redirect_uri
    }

    /// The discovery document, fetched on first use and then cached. Refuses endpoints
    /// over plain http (except loopback) and servers that do not offer PKCE S256.
    pub async fn discovery(&self) -> Result<&Discovery, TokenError> {
        self.discovery
            .get_or_try_init(|| async {
                let response = self
                    .http
                    .get(self.sign_in.discovery_url.clone())
                    .send()
                    .await
                    .map_err(|e| TokenError::Discovery(format!("could not fetch it: {}", without_url(&e))))?;
                if !response.status().is_success() {
                    return Err(TokenError::Discovery(format!("HTTP {}", response.status().as_u16())));
                }
                let discovery: Discovery = response
                    .json()
                    .await
                    .map_err(|e| TokenError::Discovery(format!("not the expected JSON: {}", without_url(&e))))?;
                if !is_secure_or_loopback(&discovery.authorization_endpoint)
                    || !is_secure_or_loopback(&discovery.token_endpoint)
                {
                    return Err(TokenError::Discovery("endpoints must be https".into()));
                }
                // A server that does not list S256 might ignore PKCE; we rely on it (OA-01).
                if let Some(methods) = &discovery.code_challenge_methods_supported
                    && !methods.iter().any(|m| m == "S256")
                {
                    return Err(TokenError::Discovery("PKCE S256 is not supported".into()));
                }
                Ok(discovery)
            })
            .await
    }

    async fn client(&self) -> Result<ConfiguredClient, TokenError> {
        let discovery = self.discovery().await?;
        let mut client = UnconfiguredClient::new(ClientId::new(self.sign_in.client_id.clone()))
            .set_auth_uri(AuthUrl::from_url(discovery.authorization_endpoint.clone()))
            .set_token_uri(TokenUrl::from_url(discovery.token_endpoint.clone()))
            .set_redirect_uri(RedirectUrl::from_url(self.redirect_uri.clone()));
        if let Some(ClientCredential::Secret(secret)) = &self.sign_in.credential {
            client = client.set_client_secret(ClientSecret::new(secret.expose_secret().to_owned()));
        }
        Ok(client)
    }

    /// The parameters that authenticate the bot in a request to `token_endpoint` with a
    /// certificate (`private_key_jwt`): a fresh client assertion each time. None with a
    /// secret (sent as HTTP Basic) or for a public client.
    pub(crate) fn client_assertion(&self, token_endpoint: &Url) -> Vec<(String, String)> {
        let Some(ClientCredential::Certificate(certificate)) = &self.sign_in.credential else {
            return Vec::new();
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let assertion = certificate.assertion(&self.sign_in.client_id, token_endpoint.as_str(), now);
        vec![
            (
                "client_assertion_type".to_owned(),
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
            ),
            ("client_assertion".to_owned(), assertion.expose_secret().to_owned()),
        ]
    }

    /// The extra parameters of every token request: the IdP's own, and a client assertion.
    async fn token_params(&self) -> Result<Vec<(String, String)>, TokenError> {
        let endpoint = &self.discovery().await?.token_endpoint;
        let mut params = self.sign_in.extra.clone();
        params.extend(self.client_assertion(endpoint));
        Ok(params)
    }

    fn scopes(&self) -> impl Iterator<Item = Scope> + '_ {
        self.sign_in.scopes.iter().cloned().map(Scope::new)
    }

    /// The authorization URL for one attempt, carrying our `state` and the PKCE challenge
    /// of `verifier`.
    pub async fn authorize_url(&self, state: &SecretString, verifier: &SecretString) -> Result<Url, TokenError> {
        let challenge =
            PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(verifier.expose_secret().to_owned()));
        let state = state.expose_secret().to_owned();
        let client = self.client().await?;
        let mut request = client
            .authorize_url(|| CsrfToken::new(state))
            .add_scopes(self.scopes())
            .set_pkce_challenge(challenge);
        for (name, value) in &self.sign_in.extra {
            request = request.add_extra_param(name, value);
        }
        let (url, _) = request.url();
        Ok(url)
    }

    /// Exchanges an authorization code (with its PKCE verifier) for tokens.
    pub async fn exchange_code(&self, code: &SecretString, verifier: &SecretString) -> Result<Tokens, TokenError> {
        let client = self.client().await?;
        let recorder = StatusRecorder::new(&self.http);
        let mut request = client
            .exchange_code(AuthorizationCode::new(code.expose_secret().to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.expose_secret().to_owned()));
        for (name, value) in self.token_params().await? {
            request = request.add_extra_param(name, value);
        }
        let result = request.request_async(&recorder).await;
        result
            .map(tokens)
            .inspect(|t| self.note_broader_grant(t))
            .map_err(|e| self.classify(e, recorder.status()))
    }

    /// Uses a refresh token. With single-use refresh tokens the answer carries a new one.
    pub async fn refresh(&self, refresh_token: &SecretString) -> Result<Tokens, TokenError> {
        let client = self.client().await?;
        let recorder = StatusRecorder::new(&self.http);
        let token = RefreshToken::new(refresh_token.expose_secret().to_owned());
        let mut request = client.exchange_refresh_token(&token);
        if self.sign_in.scopes_on_refresh {
            request = request.add_scopes(self.scopes());
        }
        for (name, value) in self.token_params().await? {
            request = request.add_extra_param(name, value);
        }
        let result = request.request_async(&recorder).await;
        result
            .map(tokens)
            .inspect(|t| self.note_broader_grant(t))
            .map_err(|e| self.classify(e, recorder.status()))
    }

    /// OA-08: a grant wider than the scopes asked for is worth an operator's look (the
    /// app connection allows more than the bot asks for). Entra ID grants name their
    /// resource (`api://…/access_as_user`), so only Databricks' grants are compared.
    fn note_broader_grant(&self, tokens: &Tokens) {
        if self.sign_in.refusals != Refusals::OAuth {
            return;
        }
        let Some(granted) = tokens.scope.as_deref() else { return };
        let extra: Vec<&str> = granted
            .split_whitespace()
            .filter(|scope| !self.sign_in.scopes.iter().any(|asked| asked == scope))
            .collect();
        if !extra.is_empty() {
            tracing::warn!(extra = %extra.join(" "), provider = self.provider(), "the sign-in granted scopes the bot did not ask for");
        }
    }

    fn classify(&self, error: RequestError, status: Option<u16>) -> TokenError {
        match (self.sign_in.refusals, &error) {
            (Refusals::Entra, RequestTokenError::ServerResponse(response)) => {
                crate::databricks::entra::classify(response.error().as_ref(), response.error_description(), status)
            }
            _ => classify(error, status),
        }
    }
}

impl DatabricksOAuth {
    /// Revokes a refresh token (RFC 7009) where the workspace's discovery document names
    /// a revocation endpoint; Databricks documents none today, so `Ok(false)` means there
    /// was nothing to call.
    async fn revoke(&self, refresh_token: &SecretString) -> Result<bool, TokenError> {
        let Some(endpoint) = self.discovery().await?.revocation_endpoint.clone() else {
            return Ok(false);
        };
        let client = self
            .client()
            .await?
            .set_revocation_url(RevocationUrl::from_url(endpoint));
        let token = StandardRevocableToken::RefreshToken(RefreshToken::new(refresh_token.expose_secret().to_owned()));
        let recorder = StatusRecorder::new(&self.http);
        let request = client
            .revoke_token(token)
            .map_err(|e| TokenError::Discovery(e.to_string()))?;
        request.request_async(&recorder).await.map(|()| true).map_err(|_| {
            let status = recorder
                .status()
                .map_or_else(|| "no answer".to_owned(), |s| format!("HTTP {s}"));
            TokenError::Transient(format!("revocation failed ({status})"))
        })
    }

    /// [`Self::revoke`], its outcome only logged: for tokens being forgotten anyway.
    pub async fn revoke_quietly(&self, refresh_token: &SecretString) {
        match self.revoke(refresh_token).await {
            Ok(true) => tracing::info!("refresh token revoked at Databricks"),
            Ok(false) => tracing::debug!("the workspace offers no token revocation"),
            Err(error) => tracing::warn!(error = %error, "could not revoke a refresh token"),
        }
    }
}

fn tokens(response: TokenAnswer) -> Tokens {
    Tokens {
        id_token: response
            .extra_fields()
            .id_token
            .as_ref()
            .map(|t| SecretString::from(t.clone())),
        access_token: SecretString::from(response.access_token().secret().to_owned()),
        refresh_token: response
            .refresh_token()
            .map(|t| SecretString::from(t.secret().to_owned())),
        expires_in: response.expires_in().map_or(3600, |d| d.as_secs()),
        scope: response
            .scopes()
            .map(|s| s.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")),
    }
}

/// oauth2's HTTP client: our reqwest client (no redirects, timeouts), remembering the
/// HTTP status of the one request oauth2 makes, which its errors omit.
struct StatusRecorder {
    http: reqwest::Client,
    status: std::sync::Mutex<Option<u16>>,
}

impl<'c> AsyncHttpClient<'c> for StatusRecorder {
    type Error = SendError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, SendError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}

impl StatusRecorder {
    fn new(http: &reqwest::Client) -> Self {
        Self {
            http: http.clone(),
            status: std::sync::Mutex::new(None),
        }
    }

    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, SendError> {
        let (parts, body) = request.into_parts();
        let url = Url::parse(&parts.uri.to_string()).map_err(|_| SendError("invalid token URL".into()))?;
        let response = self
            .http
            .request(parts.method, url)
            .headers(parts.headers)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    SendError("timeout".into())
                } else {
                    SendError(without_url(&e))
                }
            })?;
        let status = response.status();
        *self.status.lock().expect("not poisoned") = Some(status.as_u16());
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(|e| SendError(without_url(&e)))?;
        let mut out = HttpResponse::new(body.to_vec());
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        Ok(out)
    }

    fn status(&self) -> Option<u16> {
        *self.status.lock().expect("not poisoned")
    }
}

/// A transport failure, described without the URL (it may carry a code or state).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct SendError(String);

/// A reqwest error's text without its URL (which may carry a code or state).
pub(crate) fn without_url(error: &reqwest::Error) -> String {
    let mut e = error.to_string();
    if let Some(url) = error.url() {
        e = e.replace(url.as_str(), "<url>");
    }
    e
}

/// Sorts a token-endpoint failure into what the caller must do about it. Only
/// `invalid_grant`, and Databricks' dead refresh token (`invalid_request`, "Refresh token
/// is invalid": databricks/cli #667), mean the person must connect again; any other
/// refusal is the bot's problem and leaves links alone.
fn classify(error: RequestError, status: Option<u16>) -> TokenError {
    match error {
        RequestTokenError::ServerResponse(response) => {
            let description = response.error_description().cloned().unwrap_or_default();
            let code = response.error().to_string();
            let summary = if description.is_empty() {
                code.clone()
            } else {
                format!("{code}: {description}")
            };
            match response.error() {
                BasicErrorResponseType::InvalidGrant => TokenError::dead(summary),
                BasicErrorResponseType::InvalidRequest
                    if description.to_ascii_lowercase().contains("refresh token is invalid") =>
                {
                    TokenError::dead(summary)
                }
                _ if matches!(status, Some(429) | Some(500..=599)) => TokenError::Transient(summary),
                error => TokenError::Client(refusal_code(error)),
            }
        }
        RequestTokenError::Request(e) if e.0 == "timeout" => TokenError::Timeout,
        RequestTokenError::Request(e) => TokenError::Transient(e.0),
        RequestTokenError::Parse(_, _) | RequestTokenError::Other(_) => match status {
            Some(code @ 300..=399) => TokenError::Transient(format!("refused to follow a redirect (HTTP {code})")),
            // A 4xx we cannot read (an HTML error page) is a refusal all the same.
            Some(400..=499) => TokenError::Client("unreadable"),
            Some(code) => TokenError::Transient(format!("unreadable answer (HTTP {code})")),
            None => TokenError::Transient("unreadable answer".into()),
        },
    }
}

/// A refusal's OAuth error code, from a fixed few (a metric label must stay bounded).
fn refusal_code(error: &BasicErrorResponseType) -> &'static str {
    match error {
        BasicErrorResponseType::InvalidClient => "invalid_client",
        BasicErrorResponseType::UnauthorizedClient => "unauthorized_client",
        BasicErrorResponseType::InvalidScope => "invalid_scope",
        BasicErrorResponseType::UnsupportedGrantType => "unsupported_grant_type",
        BasicErrorResponseType::InvalidRequest => "invalid_request",
        BasicErrorResponseType::InvalidGrant => "invalid_grant",
        BasicErrorResponseType::Extension(_) => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // OA-01: the S256 challenge of RFC 7636 Appendix B's verifier.
    #[test]
    fn the_pkce_challenge_matches_the_rfc_7636_vector() {
        let vector: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/pkce-rfc7636.json")).unwrap();
        let verifier = PkceCodeVerifier::new(vector["code_verifier"].as_str().unwrap().to_owned());
        let challenge = PkceCodeChallenge::from_code_verifier_sha256(&verifier);
        assert_eq!(challenge.as_str(), vector["code_challenge"].as_str().unwrap());
        assert_eq!(challenge.method().as_str(), "S256");
    }

    // LOG-01: tokens never reach a log line through `Debug`.
    #[test]
    fn tokens_debug_without_the_tokens() {
        let tokens = Tokens {
            access_token: SecretString::from("at-secret-1"),
            refresh_token: Some(SecretString::from("rt-secret-2")),
            expires_in: 3600,
            scope: Some("all-apis offline_access".into()),
            id_token: Some(SecretString::from("id-secret-3")),
        };
        let shown = format!("{tokens:?}");
        assert!(
            !shown.contains("at-secret-1") && !shown.contains("rt-secret-2") && !shown.contains("id-secret-3"),
            "{shown}"
        );
    }
}
