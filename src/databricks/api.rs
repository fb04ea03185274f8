//! Databricks REST calls made with a person's own access token.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::domain::WorkspaceHost;

/// Who an access token belongs to (`GET /api/2.0/preview/scim/v2/Me`).
#[derive(Debug, Clone, PartialEq, Eq)]
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
    #[error("Databricks is rate limiting")]
    RateLimited,
    #[error("Databricks failed transiently: {0}")]
    Transient(String),
    #[error("unexpected answer from Databricks: {0}")]
    Unexpected(String),
}

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

/// A Databricks error body (`{"error_code": …, "message": …}`).
#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error_code: String,
    #[serde(default)]
    message: String,
}

/// Maps a non-success response to an [`ApiError`].
pub async fn error_of(response: reqwest::Response) -> ApiError {
    let status = response.status().as_u16();
    let body: ErrorBody = response.json().await.unwrap_or_default();
    let invalid_token = body.message.to_ascii_lowercase().contains("invalid access token");
    match status {
        401 => ApiError::InvalidToken,
        403 if invalid_token => ApiError::InvalidToken,
        403 => ApiError::PermissionDenied(body.message),
        429 => ApiError::RateLimited,
        500..=599 => ApiError::Transient(format!("HTTP {status} {}", body.error_code)),
        _ => ApiError::Unexpected(format!("HTTP {status} {}", body.error_code)),
    }
}

/// `GET {host}/api/2.0/preview/scim/v2/Me` as the token's owner.
pub async fn current_user(
    http: &reqwest::Client,
    host: &WorkspaceHost,
    access_token: &SecretString,
) -> Result<Identity, ApiError> {
    let response = http
        .get(host.url("/api/2.0/preview/scim/v2/Me"))
        .bearer_auth(access_token.expose_secret())
        .send()
        .await
        .map_err(|e| {
            ApiError::Transient(if e.is_timeout() {
                "timeout".into()
            } else {
                "network error".into()
            })
        })?;
    if !response.status().is_success() {
        return Err(error_of(response).await);
    }
    let me: ScimMe = response
        .json()
        .await
        .map_err(|_| ApiError::Unexpected("SCIM Me answer without id and userName".into()))?;
    Ok(Identity {
        id: me.id,
        user_name: me.user_name,
        display_name: me.display_name,
        emails: me.emails.into_iter().map(|e| e.value).collect(),
    })
}
