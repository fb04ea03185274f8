//! Databricks REST calls made with a person's own access token.
//!
//! [`Databricks`] is one person's view of the workspace for one answer: every call carries
//! their bearer token, has a timeout, follows no redirects, waits out a short 429 or 503
//! (`Retry-After`) and maps failures to an [`ApiError`] that says what they mean — above
//! all, a refused token (refresh once) versus a real permission denial (the person's
//! answer).

use std::time::Duration;

use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::domain::WorkspaceHost;

/// Longest a single Databricks REST call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Rate-limited calls retried inline before the caller is told.
const RATE_LIMIT_RETRIES: u32 = 2;
/// Longest `Retry-After` waited out inline.
const MAX_INLINE_WAIT: Duration = Duration::from_secs(10);

/// The HTTP client for Databricks REST calls: timeouts, no redirects (a bearer token must
/// not follow one).
pub fn http_client() -> reqwest::Client {
    crate::outbound::client(CALL_TIMEOUT)
}

/// Who an access token belongs to (`GET /api/2.0/preview/scim/v2/Me`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    /// The immutable Databricks user id.
    pub id: String,
    pub user_name: String,
    pub display_name: Option<String>,
    pub emails: Vec<String>,
}

impl Identity {
    /// A name to show people: the display name, else the userName.
    pub fn shown_name(&self) -> &str {
        self.display_name
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(&self.user_name)
    }

    /// Whether `email` is one of this user's addresses or their userName (ignoring case).
    pub fn has_email(&self, email: &str) -> bool {
        let email = email.trim();
        !email.is_empty()
            && (self.user_name.eq_ignore_ascii_case(email) || self.emails.iter().any(|e| e.eq_ignore_ascii_case(email)))
    }
}

/// Why a Databricks call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 401, or 403 "Invalid access token": the token itself was refused.
    #[error("Databricks refused the access token")]
    InvalidToken,
    /// 403 for a real permission reason: the person's true answer.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// 429 (or 503 with `Retry-After`) that outlasted the inline retries.
    #[error("Databricks is rate limiting")]
    RateLimited { retry_after: Option<Duration> },
    #[error("Databricks did not answer in time")]
    Timeout,
    /// Network failures and 5xx.
    #[error("Databricks failed transiently: {0}")]
    Transient(String),
    /// Any other 4xx: the request was understood and refused (`message` is Databricks').
    #[error("Databricks refused the request: HTTP {status} {code}: {message}")]
    Rejected { status: u16, code: String, message: String },
    /// A success status with a body we cannot read.
    #[error("unexpected answer from Databricks: {0}")]
    Unexpected(String),
}

/// A Databricks error body (`{"error_code": …, "message": …}`; SCIM uses `detail`).
#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error_code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    detail: String,
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(reqwest::header::RETRY_AFTER)?;
    value.to_str().ok()?.trim().parse().ok().map(Duration::from_secs)
}

/// Maps a non-success response to an [`ApiError`].
async fn error_of(response: reqwest::Response) -> ApiError {
    let status = response.status().as_u16();
    let wait = retry_after(&response);
    let body: ErrorBody = response.json().await.unwrap_or_default();
    let message = if body.message.is_empty() {
        body.detail
    } else {
        body.message
    };
    let invalid_token = message.to_ascii_lowercase().contains("invalid access token");
    match status {
        401 => ApiError::InvalidToken,
        403 if invalid_token => ApiError::InvalidToken,
        403 => ApiError::PermissionDenied(message),
        429 => ApiError::RateLimited { retry_after: wait },
        503 if wait.is_some() => ApiError::RateLimited { retry_after: wait },
        500..=599 => ApiError::Transient(format!("HTTP {status} {}", body.error_code)),
        _ => ApiError::Rejected {
            status,
            code: body.error_code,
            message,
        },
    }
}

fn transport_error(error: &reqwest::Error) -> ApiError {
    if error.is_timeout() {
        ApiError::Timeout
    } else {
        // Never the URL or the request: only what kind of failure it was.
        ApiError::Transient("network error".into())
    }
}

/// `value` as one URL path segment. Ids and names come back from Databricks, from stored
/// state or from a model, so nothing but unreserved characters is trusted to stay inside
/// its segment — and `.`/`..` are encoded so they cannot climb the path.
pub fn path_segment(value: &str) -> String {
    let dots_only = !value.is_empty() && value.bytes().all(|b| b == b'.');
    value
        .bytes()
        .map(|b| {
            if !dots_only && (b.is_ascii_alphanumeric() || b"-._~".contains(&b)) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One person's access to one workspace.
#[derive(Clone, Copy)]
pub struct Databricks<'a> {
    http: &'a reqwest::Client,
    host: &'a WorkspaceHost,
    token: &'a SecretString,
}

impl<'a> Databricks<'a> {
    /// Calls `host` as the owner of `token`.
    pub fn new(http: &'a reqwest::Client, host: &'a WorkspaceHost, token: &'a SecretString) -> Self {
        Self { http, host, token }
    }

    /// The workspace this client calls.
    pub fn host(&self) -> &WorkspaceHost {
        self.host
    }

    /// `GET {host}{path}?{query}`, answered with JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, &str)]) -> Result<T, ApiError> {
        self.call(Method::GET, path, query, None::<&()>).await
    }

    /// `POST {host}{path}` with a JSON body, answered with JSON.
    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T, ApiError> {
        self.call(Method::POST, path, &[], Some(body)).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&impl Serialize>,
    ) -> Result<T, ApiError> {
        let mut attempt = 0;
        loop {
            let mut request = self
                .http
                .request(method.clone(), self.host.url(path))
                .query(query)
                .bearer_auth(self.token.expose_secret());
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await.map_err(|e| transport_error(&e))?;
            if response.status().is_success() {
                let bytes = response.bytes().await.map_err(|e| transport_error(&e))?;
                return serde_json::from_slice(&bytes).map_err(|e| ApiError::Unexpected(format!("{path}: {e}")));
            }
            match error_of(response).await {
                ApiError::RateLimited { retry_after } if attempt < RATE_LIMIT_RETRIES => {
                    let wait = retry_after.unwrap_or(Duration::from_secs(1 << attempt));
                    if wait > MAX_INLINE_WAIT {
                        return Err(ApiError::RateLimited { retry_after });
                    }
                    attempt += 1;
                    tracing::info!(
                        wait_s = wait.as_secs(),
                        attempt,
                        "Databricks rate limited a call; waiting"
                    );
                    tokio::time::sleep(wait).await;
                }
                error => return Err(error),
            }
        }
    }

    /// `GET /api/2.0/preview/scim/v2/Me`: who the token belongs to.
    pub async fn current_user(&self) -> Result<Identity, ApiError> {
        #[derive(Deserialize)]
        struct ScimMe {
            id: String,
            #[serde(rename = "userName")]
            user_name: String,
            #[serde(rename = "displayName", default)]
            display_name: Option<String>,
            #[serde(default)]
            emails: Vec<ScimEmail>,
        }
        #[derive(Deserialize)]
        struct ScimEmail {
            value: String,
        }
        let me: ScimMe = self.get("/api/2.0/preview/scim/v2/Me", &[]).await?;
        Ok(Identity {
            id: me.id,
            user_name: me.user_name,
            display_name: me.display_name,
            emails: me.emails.into_iter().map(|e| e.value).collect(),
        })
    }
}
