//! Databricks REST calls made with a person's own access token.
//!
//! [`Databricks`] is one person's view of the workspace for one answer: every call carries
//! their bearer token, has a timeout, follows no redirects, waits out a short 429 or 503
//! (`Retry-After`) and maps failures to an [`ApiError`] that says what they mean — above
//! all, a refused token (refresh once) versus a real permission denial (the person's
//! answer).

use std::time::Duration;

use reqwest::Method;
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::databricks::bearer::Bearer;
use crate::domain::WorkspaceHost;
use crate::telemetry;

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

    /// Whether `email` is one of this user's addresses or their userName: the whole address,
    /// surrounding spaces aside, equal but for ASCII case. Nothing else is folded: a
    /// `+tag` is part of the address (`ada+x@` is not `ada@`: only the mail provider knows
    /// whether they share a mailbox), and non-ASCII letters must match exactly.
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

/// What a failed call said, whatever shape it came in: a JSON body with `error_code` as a
/// string (`"PERMISSION_DENIED"`) or a number (`403`, as a real workspace refuses a
/// token: databricks-sdk-go #873), SCIM's `detail`, an HTML page from a gateway, or
/// nothing — then the `X-Databricks-Reason-Phrase` header is the message.
#[derive(Debug, Default, PartialEq, Eq)]
struct Refusal {
    code: String,
    message: String,
}

impl Refusal {
    fn read(body: &[u8], content_type: &str, reason_phrase: Option<&str>) -> Self {
        let json = serde_json::from_slice::<serde_json::Value>(body).ok();
        // A short plain-text body is the message ("Invalid Token"); HTML never is.
        let plain = std::str::from_utf8(body)
            .ok()
            .filter(|text| content_type.starts_with("text/plain") && text.len() <= 200)
            .map(|text| text.trim().to_owned());
        let field = |name: &str| {
            json.as_ref()
                .and_then(|j| j.get(name))
                .and_then(text_of)
                .map(|text| text.trim().to_owned())
                .unwrap_or_default()
        };
        let message = [field("message"), field("detail")]
            .into_iter()
            .find(|m| !m.is_empty())
            .or_else(|| reason_phrase.map(|r| r.trim().to_owned()))
            .or(plain)
            .unwrap_or_default();
        Self {
            code: field("error_code"),
            message,
        }
    }

    /// Whether the token itself was refused, in any of the words workspaces use for it:
    /// "Invalid access token." and "JWT has expired" (403, databricks-sdk-go #873, #1061),
    /// "Invalid Token" (a plain-text 400 from SCIM, databricks-sdk-go #1709). 401 always is.
    fn refuses_the_token(&self) -> bool {
        let message = self.message.to_ascii_lowercase();
        self.code == "UNAUTHENTICATED"
            || [
                "invalid access token",
                "invalid token",
                "jwt has expired",
                "token has expired",
                "token is expired",
            ]
            .iter()
            .any(|words| message.contains(words))
    }
}

/// A string or a number as text: Databricks sends `error_code` as either.
fn text_of(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(text) => Some(text.clone()),
        serde_json::Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// Deserializes an `error_code` inside a success body (a SQL statement's or a Genie
/// message's status), string or number; anything else is no code.
pub fn error_code<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<serde_json::Value>::deserialize(deserializer)?.and_then(|value| text_of(&value)))
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    parse_retry_after(response.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?)
}

/// A `Retry-After` value in seconds (the HTTP-date form is rare from APIs and ignored).
/// Public so the fuzz target `retry_after` can reach it; the external agent reads it too.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse().ok().map(Duration::from_secs)
}

/// Maps a non-success response to an [`ApiError`].
async fn error_of(response: reqwest::Response) -> ApiError {
    let status = response.status().as_u16();
    let wait = retry_after(&response);
    let reason_phrase = response
        .headers()
        .get("x-databricks-reason-phrase")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let content_type = content_type(&response).to_owned();
    let body = response.bytes().await.unwrap_or_default();
    classify(
        status,
        wait,
        Refusal::read(&body, &content_type, reason_phrase.as_deref()),
    )
}

/// A successful answer's JSON. A web page instead (a workspace behind private link, or a
/// host that is not the workspace, redirects API calls to its sign-in page: sdk-go #1122)
/// is said to be one, for the operator, without its HTML. Public for a streaming call
/// ([`Databricks::post_streaming`]) answered whole instead.
pub async fn read_json<T: DeserializeOwned>(response: reqwest::Response, path: &str) -> Result<T, ApiError> {
    let unreadable = |detail: String| {
        tracing::warn!(%detail, "an unreadable answer from Databricks");
        ApiError::Unexpected(detail)
    };
    if content_type(&response).starts_with("text/html") {
        return Err(unreadable(format!(
            "{path}: a web page instead of JSON (HTTP {}; redirected to a sign-in page? check DATABRICKS_HOST \
             and private-link access)",
            response.status().as_u16()
        )));
    }
    let bytes = response.bytes().await.map_err(|e| transport_error(&e))?;
    // A call with nothing to say (Genie's message feedback) may answer an empty body.
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    serde_json::from_slice(bytes).map_err(|e| unreadable(format!("{path}: {e}")))
}

/// The response's `Content-Type`, or "" when it has none.
fn content_type(response: &reqwest::Response) -> &str {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn classify(status: u16, wait: Option<Duration>, refusal: Refusal) -> ApiError {
    match status {
        401 => ApiError::InvalidToken,
        400 | 403 if refusal.refuses_the_token() => ApiError::InvalidToken,
        403 if refusal.message.is_empty() => ApiError::PermissionDenied("no reason was given (HTTP 403)".into()),
        403 => ApiError::PermissionDenied(refusal.message),
        429 => ApiError::RateLimited { retry_after: wait },
        503 if wait.is_some() => ApiError::RateLimited { retry_after: wait },
        // A gateway's HTML page has no code: the status says enough.
        500..=599 if refusal.code.is_empty() => ApiError::Transient(format!("HTTP {status}")),
        500..=599 => ApiError::Transient(format!("HTTP {status} {}", refusal.code)),
        _ => ApiError::Rejected {
            status,
            code: refusal.code,
            message: refusal.message,
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

/// The API a path calls, for spans: its first four segments (`/api/2.0/genie/spaces`,
/// `/api/2.1/unity-catalog/tables`). What follows may name a table the model chose from a
/// question, so it is left out.
fn api_of(path: &str) -> &str {
    let end = path.match_indices('/').nth(4).map_or(path.len(), |(at, _)| at);
    &path[..end]
}

/// One person's access to one workspace.
#[derive(Clone, Copy)]
pub struct Databricks<'a> {
    http: &'a reqwest::Client,
    host: &'a WorkspaceHost,
    bearer: &'a Bearer,
}

impl<'a> Databricks<'a> {
    /// Calls `host` as the owner of `bearer`'s token.
    pub fn new(http: &'a reqwest::Client, host: &'a WorkspaceHost, bearer: &'a Bearer) -> Self {
        Self { http, host, bearer }
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

    /// `POST {host}{path}` with a JSON body, for an answer that streams: the successful
    /// response with its body unread, so the caller reads it as it comes. `total` replaces
    /// the client's 30 s total (`CALL_TIMEOUT`), which a long stream would outlast.
    pub async fn post_streaming(
        &self,
        path: &str,
        body: &impl Serialize,
        total: Duration,
    ) -> Result<reqwest::Response, ApiError> {
        self.send(Method::POST, path, &[], Some(body), Some(total)).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&impl Serialize>,
    ) -> Result<T, ApiError> {
        let response = self.send(method, path, query, body, None).await?;
        read_json(response, path).await
    }

    /// Sends the request until it succeeds or fails for good: a short rate limit is waited
    /// out, a refused token renewed once. The successful response comes back unread. One
    /// span covers it all, naming the method and the API called ([`api_of`]).
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&impl Serialize>,
        total: Option<Duration>,
    ) -> Result<reqwest::Response, ApiError> {
        let span = tracing::info_span!(
            "databricks",
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            http.request.method = %method,
            databricks.api = api_of(path),
        );
        telemetry::describe_span(&span, "client", || format!("databricks {method}"));
        let sent = async {
            let mut attempt = 0;
            let (mut token, version) = self.bearer.current();
            let mut refused_once = false;
            loop {
                let mut request = self
                    .http
                    .request(method.clone(), self.host.url(path))
                    .query(query)
                    .bearer_auth(token.expose_secret());
                if let Some(body) = body {
                    request = request.json(body);
                }
                if let Some(total) = total {
                    request = request.timeout(total);
                }
                let response = request.send().await.map_err(|e| transport_error(&e))?;
                if response.status().is_success() {
                    return Ok(response);
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
                    // The token expired or was revoked part-way through the answer: this call,
                    // and only this call, is sent again with a renewed one.
                    ApiError::InvalidToken if !refused_once => {
                        refused_once = true;
                        match self.bearer.after_refusal(version).await {
                            Some(renewed) => {
                                tracing::info!(
                                    path,
                                    "Databricks refused the access token; retrying the call with a renewed one"
                                );
                                token = renewed;
                            }
                            None => return Err(ApiError::InvalidToken),
                        }
                    }
                    error => return Err(error),
                }
            }
        }
        .instrument(span.clone())
        .await;
        if sent.is_err() {
            span.record("otel.status_code", "error");
        }
        sent
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What the bot makes of a response recorded from a real workspace
    /// (`tests/fixtures/databricks/`, each naming its source).
    fn recorded(fixture: &str) -> ApiError {
        let path = format!(
            "{}/tests/fixtures/databricks/{fixture}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let fixture: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let header = |name: &str| {
            fixture["headers"]
                .as_object()
                .and_then(|h| h.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)))
                .and_then(|(_, v)| v.as_str())
                .map(str::to_owned)
        };
        let body = match fixture["body_text"].as_str() {
            Some(text) => text.as_bytes().to_vec(),
            None => serde_json::to_vec(&fixture["body"]).unwrap(),
        };
        let wait = header("retry-after")
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs);
        let refusal = Refusal::read(
            &body,
            &header("content-type").unwrap_or_default(),
            header("x-databricks-reason-phrase").as_deref(),
        );
        classify(fixture["status"].as_u64().unwrap() as u16, wait, refusal)
    }

    // Every way a real workspace refuses a token means "refresh once", never "no access".
    #[test]
    fn every_recorded_token_refusal_is_an_invalid_token() {
        for fixture in [
            "invalid-access-token-403",
            "expired-token-403-jwt",
            "unauthenticated-401",
            "unauthenticated-401-reqid",
            "unauthenticated-401-html",
            "invalid-token-400-plaintext",
        ] {
            assert_eq!(recorded(fixture), ApiError::InvalidToken, "{fixture}");
        }
    }

    #[test]
    fn a_permission_denial_keeps_databricks_words_and_never_reads_empty() {
        assert_eq!(
            recorded("permission-denied-403"),
            ApiError::PermissionDenied("User does not have USE CATALOG on Catalog 'main'.".into())
        );
        let scim =
            br#"{"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"], "detail": "Forbidden", "status": "403"}"#;
        let refusal = Refusal::read(scim, "application/json", None);
        assert_eq!(
            classify(403, None, refusal),
            ApiError::PermissionDenied("Forbidden".into())
        );
        let html = Refusal::read(b"<html><body>Forbidden</body></html>", "text/html", None);
        let ApiError::PermissionDenied(said) = classify(403, None, html) else {
            panic!("a denial")
        };
        assert!(!said.is_empty() && !said.contains("html"), "{said}");
    }

    #[test]
    fn rate_limits_and_gateway_pages_are_transient_without_their_html() {
        assert_eq!(
            recorded("rate-limited-429-retry-after"),
            ApiError::RateLimited {
                retry_after: Some(Duration::from_secs(100))
            }
        );
        for fixture in ["rate-limited-429", "rate-limited-429-concurrent"] {
            assert_eq!(
                recorded(fixture),
                ApiError::RateLimited { retry_after: None },
                "{fixture}"
            );
        }
        assert_eq!(recorded("gateway-502"), ApiError::Transient("HTTP 502".into()));
        assert_eq!(recorded("gateway-503"), ApiError::Transient("HTTP 503".into()));
        assert_eq!(
            recorded("gateway-503-no-healthy-upstream"),
            ApiError::Transient("HTTP 503".into())
        );
        assert_eq!(
            recorded("temporarily-unavailable-503"),
            ApiError::Transient("HTTP 503 TEMPORARILY_UNAVAILABLE".into())
        );
    }

    // LNK-08 (issue 12): the rule the email check compares by.
    #[test]
    fn spans_name_the_api_and_never_what_follows_it() {
        assert_eq!(
            api_of("/api/2.1/unity-catalog/tables/main.sales.orders"),
            "/api/2.1/unity-catalog/tables"
        );
        assert_eq!(
            api_of("/api/2.0/genie/spaces/01ef/start-conversation"),
            "/api/2.0/genie/spaces"
        );
        assert_eq!(api_of("/api/2.0/sql/statements"), "/api/2.0/sql/statements");
        assert_eq!(api_of("/api/2.0/sql"), "/api/2.0/sql");
    }

    #[test]
    fn emails_match_whole_and_only_across_ascii_case() {
        let ada = Identity {
            id: "1".into(),
            user_name: "Ada.Lovelace@Example.com".into(),
            display_name: None,
            emails: vec!["ada@analytical.example".into()],
        };
        for same in [
            "ada.lovelace@example.com",
            "  ADA.LOVELACE@EXAMPLE.COM ",
            "Ada@Analytical.Example",
        ] {
            assert!(ada.has_email(same), "{same}");
        }
        for other in [
            "",
            " ",
            "ada.lovelace+x@example.com",
            "ada.lovelace@example.com.evil",
            "lovelace@example.com",
            "ada@analytical.example\u{0}",
            "ada.lovelace@examp\u{0131}e.com",
        ] {
            assert!(!ada.has_email(other), "{other:?}");
        }
    }

    #[test]
    fn an_error_code_is_read_as_a_string_or_a_number() {
        let numeric = Refusal::read(
            br#"{"error_code": 400, "message": null}"#,
            "application/json",
            Some("Bad Request"),
        );
        assert_eq!(
            classify(400, None, numeric),
            ApiError::Rejected {
                status: 400,
                code: "400".into(),
                message: "Bad Request".into()
            }
        );
        let odd = Refusal::read(b"[1, 2]", "application/json", None);
        assert_eq!(classify(429, None, odd), ApiError::RateLimited { retry_after: None });
    }
}
