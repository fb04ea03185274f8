//! The Slack Web API client, built once (slack-morphism over hyper).
//!
//! Every call has a timeout. A 429 is waited out (its `Retry-After`, capped) and retried a
//! few times before it is reported. `SLACK_API_URL` is honoured, over `http://` too for a
//! loopback test server: slack-morphism's default connector is https-only.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::*;
use tracing::Instrument;
use url::Url;

use crate::domain::{TeamId, UserId};
use crate::metrics::Metrics;
use crate::telemetry;

/// Longest any single Web API call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// 429 retries before giving up (the caller's job can still be retried later).
const RATE_LIMIT_RETRIES: u32 = 3;
/// Longest `Retry-After` we are willing to sleep inline.
const MAX_INLINE_WAIT: Duration = Duration::from_secs(30);

/// Why a Web API call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlackApiError {
    #[error("Slack is rate limiting us")]
    RateLimited { retry_after: Option<Duration> },
    #[error("Slack refused the call: {0}")]
    Api(String),
    #[error("Slack could not be reached: {0}")]
    Transport(String),
    #[error("Slack did not answer within {}s", CALL_TIMEOUT.as_secs())]
    Timeout,
}

impl SlackApiError {
    /// A call's outcome as `slack_api_calls_total` labels it.
    fn outcome<T>(result: &Result<T, SlackApiError>) -> &'static str {
        match result {
            Ok(_) => "ok",
            Err(SlackApiError::RateLimited { .. }) => "rate_limited",
            Err(SlackApiError::Api(_)) => "error",
            Err(SlackApiError::Transport(_)) => "unreachable",
            Err(SlackApiError::Timeout) => "timeout",
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            SlackApiError::RateLimited { .. } | SlackApiError::Transport(_) | SlackApiError::Timeout => true,
            SlackApiError::Api(code) => {
                matches!(code.as_str(), "internal_error" | "fatal_error" | "service_unavailable")
            }
        }
    }

    /// The Slack error code, for an `ok: false` answer.
    pub fn code(&self) -> Option<&str> {
        match self {
            SlackApiError::Api(code) => Some(code),
            _ => None,
        }
    }
}

impl From<SlackClientError> for SlackApiError {
    fn from(e: SlackClientError) -> Self {
        match e {
            SlackClientError::ApiError(api) => SlackApiError::Api(api.code),
            SlackClientError::RateLimitError(limit) => SlackApiError::RateLimited {
                retry_after: limit.retry_after,
            },
            SlackClientError::HttpError(http) => SlackApiError::Transport(format!("HTTP {}", http.status_code)),
            other => SlackApiError::Transport(other.to_string()),
        }
    }
}

/// A file to share in a conversation: a CSV of a result, or a chart.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "StoredFile<'static>")]
pub struct FileUpload {
    pub filename: String,
    pub title: String,
    pub content_type: String,
    content: Vec<u8>,
    /// Alt text, for an image.
    pub alt: Option<String>,
}

impl FileUpload {
    /// A text file.
    pub fn text(filename: &str, title: &str, content_type: &str, content: String) -> Self {
        Self {
            filename: filename.to_owned(),
            title: title.to_owned(),
            content_type: content_type.to_owned(),
            content: content.into_bytes(),
            alt: None,
        }
    }

    /// A binary file (an image, with its alt text).
    pub fn binary(filename: &str, title: &str, content_type: &str, content: Vec<u8>, alt: Option<String>) -> Self {
        Self {
            filename: filename.to_owned(),
            title: title.to_owned(),
            content_type: content_type.to_owned(),
            content,
            alt,
        }
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.content
    }
}

/// A [`FileUpload`] as an outbox keeps it: text as text (as outboxes always kept CSVs),
/// anything else in base64. Written from a borrowed file, so storing a large CSV does not
/// copy it first.
#[derive(Serialize, Deserialize)]
struct StoredFile<'a> {
    filename: Cow<'a, str>,
    title: Cow<'a, str>,
    content_type: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alt: Option<Cow<'a, str>>,
}

impl From<StoredFile<'_>> for FileUpload {
    fn from(stored: StoredFile<'_>) -> Self {
        use base64::Engine;
        let content = match (stored.content, stored.content_base64) {
            (Some(text), _) => text.into_owned().into_bytes(),
            (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap_or_default(),
            (None, None) => Vec::new(),
        };
        Self {
            filename: stored.filename.into_owned(),
            title: stored.title.into_owned(),
            content_type: stored.content_type.into_owned(),
            content,
            alt: stored.alt.map(Cow::into_owned),
        }
    }
}

impl<'a> From<&'a FileUpload> for StoredFile<'a> {
    fn from(file: &'a FileUpload) -> Self {
        use base64::Engine;
        let text = std::str::from_utf8(&file.content)
            .ok()
            .filter(|_| file.content_type.starts_with("text/"));
        let (content, content_base64) = match text {
            Some(text) => (Some(Cow::Borrowed(text)), None),
            None => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(&file.content)),
            ),
        };
        Self {
            filename: Cow::Borrowed(&file.filename),
            title: Cow::Borrowed(&file.title),
            content_type: Cow::Borrowed(&file.content_type),
            content,
            content_base64,
            alt: file.alt.as_deref().map(Cow::Borrowed),
        }
    }
}

impl Serialize for FileUpload {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        StoredFile::from(self).serialize(serializer)
    }
}

/// Who the bot is in its workspace (`auth.test`).
#[derive(Debug, Clone)]
pub struct BotIdentity {
    pub team_id: String,
    pub team: String,
    pub user_id: String,
    pub bot_id: Option<String>,
    /// The Enterprise Grid organisation the workspace belongs to, if any.
    pub enterprise_id: Option<String>,
}

/// The Web API, with the bot token.
#[derive(Clone)]
pub struct SlackApi {
    client: Arc<SlackHyperClient>,
    token: SlackApiToken,
    /// `auth.test`'s answer, which does not change while the token lives.
    identity: Arc<tokio::sync::OnceCell<BotIdentity>>,
    metrics: Arc<Metrics>,
}

/// Calls `$call` (an expression using `$session`) with timeout and 429 handling: a 429 is
/// waited out and the call made again, up to `retries` times (by default
/// [`RATE_LIMIT_RETRIES`]). The outcome is counted under `$method`, the Web API method's
/// name, and the call has a span of its own named after it.
macro_rules! call {
    ($api:expr, $method:literal, |$session:ident| $call:expr) => {
        call!($api, $method, retries = RATE_LIMIT_RETRIES, |$session| $call)
    };
    ($api:expr, $method:literal, retries = $retries:expr, |$session:ident| $call:expr) => {{
        let span = tracing::info_span!(
            "slack",
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            slack.method = $method,
            outcome = tracing::field::Empty,
        );
        telemetry::describe_span(&span, "client", || concat!("slack ", $method).to_owned());
        async {
            let mut attempt = 0;
            loop {
                let $session = $api.client.open_session(&$api.token);
                let outcome = match tokio::time::timeout(CALL_TIMEOUT, $call).await {
                    Ok(result) => result.map_err(SlackApiError::from),
                    Err(_) => Err(SlackApiError::Timeout),
                };
                match outcome {
                    Err(SlackApiError::RateLimited { retry_after }) if attempt < $retries => {
                        let wait = retry_after.unwrap_or(Duration::from_secs(1 << attempt));
                        if wait > MAX_INLINE_WAIT {
                            break $api.settle($method, Err(SlackApiError::RateLimited { retry_after }));
                        }
                        attempt += 1;
                        tracing::warn!(wait_s = wait.as_secs(), attempt, "Slack rate limited a call; waiting");
                        tokio::time::sleep(wait).await;
                    }
                    other => break $api.settle($method, other),
                }
            }
        }
        .instrument(span)
        .await
    }};
}

impl SlackApi {
    /// Counts a call's outcome under `method` and writes it on the call's span.
    fn settle<T>(&self, method: &'static str, result: Result<T, SlackApiError>) -> Result<T, SlackApiError> {
        let outcome = SlackApiError::outcome(&result);
        self.metrics.record_slack_call(method, outcome);
        let span = tracing::Span::current();
        span.record("outcome", outcome);
        if result.is_err() {
            span.record("otel.status_code", "error");
        }
        result
    }

    /// A client for `api_url` (e.g. `https://slack.com/api`) with the bot token.
    pub fn new(api_url: &Url, bot_token: &SecretString) -> anyhow::Result<Self> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()?
            .https_or_http()
            .enable_http1()
            .build();
        let base = api_url.as_str().trim_end_matches('/');
        let connector = SlackClientHyperConnector::with_connector(https).with_slack_api_url(base);
        Ok(Self {
            client: Arc::new(SlackClient::new(connector)),
            token: SlackApiToken::new(SlackApiTokenValue::new(bot_token.expose_secret().to_owned())),
            identity: Arc::new(tokio::sync::OnceCell::new()),
            metrics: Arc::default(),
        })
    }

    /// The same client, counting its calls in `metrics` (`slack_api_calls_total`).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The underlying client, for Socket Mode.
    pub fn client(&self) -> Arc<SlackHyperClient> {
        self.client.clone()
    }

    /// `auth.test`: checks the token and tells who the bot is. Read here rather than with
    /// slack-morphism's type, which leaves out `enterprise_id`.
    pub async fn auth_test(&self) -> Result<BotIdentity, SlackApiError> {
        #[derive(Deserialize)]
        struct AuthTest {
            team_id: String,
            team: String,
            user_id: String,
            #[serde(default)]
            bot_id: Option<String>,
            #[serde(default)]
            enterprise_id: Option<String>,
        }
        let r: AuthTest = call!(self, "auth.test", |s| s.http_session_api.http_get(
            "auth.test",
            &SLACK_HTTP_EMPTY_GET_PARAMS.clone(),
            Some(&SLACK_TIER4_METHOD_CONFIG)
        ))?;
        Ok(BotIdentity {
            team_id: r.team_id,
            team: r.team,
            user_id: r.user_id,
            bot_id: r.bot_id,
            enterprise_id: r.enterprise_id.filter(|e| !e.is_empty()),
        })
    }

    /// Who the bot is, asking Slack only the first time it succeeds.
    pub async fn bot_identity(&self) -> Result<&BotIdentity, SlackApiError> {
        self.identity.get_or_try_init(|| self.auth_test()).await
    }

    /// `chat.postMessage`; returns the new message's `ts`.
    pub async fn post_message(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        content: SlackMessageContent,
    ) -> Result<String, SlackApiError> {
        let request = SlackApiChatPostMessageRequest::new(channel.into(), content)
            .opt_thread_ts(thread_ts.map(Into::into))
            .with_unfurl_links(false)
            .with_unfurl_media(false);
        let r = call!(self, "chat.postMessage", |s| s.chat_post_message(&request))?;
        Ok(r.ts.to_string())
    }

    /// `chat.postEphemeral`: a message only `user` sees.
    pub async fn post_ephemeral(
        &self,
        channel: &str,
        user: &str,
        thread_ts: Option<&str>,
        content: SlackMessageContent,
    ) -> Result<(), SlackApiError> {
        let request = SlackApiChatPostEphemeralRequest::new(channel.into(), user.into(), content)
            .opt_thread_ts(thread_ts.map(Into::into));
        call!(self, "chat.postEphemeral", |s| s.chat_post_ephemeral(&request)).map(|_| ())
    }

    /// `chat.update`: replaces the content of the bot's message `ts`.
    pub async fn update_message(
        &self,
        channel: &str,
        ts: &str,
        content: SlackMessageContent,
    ) -> Result<(), SlackApiError> {
        let request = SlackApiChatUpdateRequest::new(channel.into(), content, ts.into());
        call!(self, "chat.update", |s| s.chat_update(&request)).map(|_| ())
    }

    /// `chat.delete`: removes the bot's message `ts`.
    pub async fn delete_message(&self, channel: &str, ts: &str) -> Result<(), SlackApiError> {
        let request = SlackApiChatDeleteRequest::new(channel.into(), ts.into());
        call!(self, "chat.delete", |s| s.chat_delete(&request)).map(|_| ())
    }

    /// Shares a file in `channel` (in `thread_ts`) through Slack's external upload flow:
    /// `files.getUploadURLExternal`, the bytes to the URL it gives, then
    /// `files.completeUploadExternal`.
    pub async fn upload_file(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        file: &FileUpload,
    ) -> Result<(), SlackApiError> {
        let request = SlackApiFilesGetUploadUrlExternalRequest::new(file.filename.clone(), file.content.len())
            .opt_alt_txt(file.alt.clone());
        let target = call!(self, "files.getUploadURLExternal", |s| s
            .get_upload_url_external(&request))?;
        let upload =
            SlackApiFilesUploadViaUrlRequest::new(target.upload_url, file.content.clone(), file.content_type.clone());
        call!(self, "files.upload_url", |s| s.files_upload_via_url(&upload))?;
        let complete = SlackApiFilesCompleteUploadExternalRequest::new(vec![
            SlackApiFilesComplete::new(target.file_id).with_title(file.title.clone()),
        ])
        .with_channel_id(channel.into())
        .opt_thread_ts(thread_ts.map(Into::into));
        call!(self, "files.completeUploadExternal", |s| s
            .files_complete_upload_external(&complete))
        .map(|_| ())
    }

    /// Answers through an interaction's `response_url`: `request` may replace or delete
    /// the message the person clicked (the only way to change an ephemeral message).
    pub async fn respond(
        &self,
        response_url: &SlackResponseUrl,
        request: &SlackApiPostWebhookMessageRequest,
    ) -> Result<(), SlackApiError> {
        let outcome = tokio::time::timeout(CALL_TIMEOUT, self.client.respond_to_event(response_url, request)).await;
        match outcome {
            Ok(Ok(_)) => Ok(()),
            // A `response_url` works five times within 30 minutes; after that Slack refuses
            // it for good, which retrying will not change.
            Ok(Err(SlackClientError::HttpError(http))) if http.status_code.is_client_error() => {
                Err(SlackApiError::Api("response_url_expired".into()))
            }
            Ok(Err(error)) => Err(error.into()),
            Err(_) => Err(SlackApiError::Timeout),
        }
    }

    /// `views.publish`: shows `blocks` as `user`'s App Home tab.
    pub async fn publish_home(&self, user: &str, blocks: Vec<SlackBlock>) -> Result<(), SlackApiError> {
        let request = SlackApiViewsPublishRequest::new(user.into(), SlackView::Home(SlackHomeView::new(blocks)));
        call!(self, "views.publish", |s| s.views_publish(&request)).map(|_| ())
    }

    /// `assistant.threads.setStatus`: what the assistant is doing in a thread ("" clears).
    pub async fn set_assistant_status(
        &self,
        channel: &str,
        thread_ts: &str,
        status: &str,
    ) -> Result<(), SlackApiError> {
        let request =
            SlackApiAssistantThreadsSetStatusRequest::new(channel.into(), status.to_owned(), thread_ts.into());
        call!(self, "assistant.threads.setStatus", |s| s
            .assistant_threads_set_status(&request))
        .map(|_| ())
    }

    /// `assistant.threads.setSuggestedPrompts`: prompts the person can click to ask.
    pub async fn set_suggested_prompts(
        &self,
        channel: &str,
        thread_ts: &str,
        prompts: &[String],
    ) -> Result<(), SlackApiError> {
        let prompts = prompts
            .iter()
            .map(|p| SlackAssistantPrompt::new(crate::slack::messages::truncate(p, 75), p.clone()))
            .collect();
        let request =
            SlackApiAssistantThreadsSetSuggestedPromptsRequest::new(channel.into(), thread_ts.into(), prompts);
        call!(self, "assistant.threads.setSuggestedPrompts", |s| s
            .assistant_threads_set_suggested_prompts(&request))
        .map(|_| ())
    }

    /// `assistant.threads.setTitle`: the thread's title in the person's history.
    pub async fn set_assistant_title(&self, channel: &str, thread_ts: &str, title: &str) -> Result<(), SlackApiError> {
        let request = SlackApiAssistantThreadSetTitleRequest::new(channel.into(), thread_ts.into(), title.to_owned());
        call!(self, "assistant.threads.setTitle", |s| s
            .assistant_threads_set_title(&request))
        .map(|_| ())
    }

    /// `chat.startStream`: a reply in `thread_ts` that grows as text is appended, beginning
    /// with `markdown_text`; returns its `ts`. Outside a DM Slack needs the person it is
    /// written for (`recipient`: their workspace and user).
    pub async fn start_stream(
        &self,
        channel: &str,
        thread_ts: &str,
        recipient: Option<(&TeamId, &UserId)>,
        markdown_text: &str,
    ) -> Result<String, SlackApiError> {
        let request = SlackApiChatStartStreamRequest::new(channel.into())
            .with_thread_ts(thread_ts.into())
            .opt_recipient_team_id(recipient.map(|(team, _)| team.as_str().into()))
            .opt_recipient_user_id(recipient.map(|(_, user)| user.as_str().into()))
            .with_markdown_text(markdown_text.to_owned());
        Ok(call!(self, "chat.startStream", |s| s.chat_start_stream(&request))?
            .ts
            .to_string())
    }

    /// `chat.appendStream`: more text for the streamed message `ts`. A 429 is reported at
    /// once rather than waited out: the caller keeps the text and sends it later.
    pub async fn append_stream(&self, channel: &str, ts: &str, markdown_text: &str) -> Result<(), SlackApiError> {
        let request = SlackApiChatAppendStreamRequest::new(channel.into(), ts.into())
            .with_markdown_text(markdown_text.to_owned());
        call!(self, "chat.appendStream", retries = 0, |s| s
            .chat_append_stream(&request))
        .map(|_| ())
    }

    /// `chat.stopStream`: ends the streamed message `ts` with the last of its text
    /// (`markdown_text`, may be empty) and `blocks` below it.
    pub async fn stop_stream(
        &self,
        channel: &str,
        ts: &str,
        markdown_text: &str,
        blocks: Option<Vec<SlackBlock>>,
    ) -> Result<(), SlackApiError> {
        // Read without slack-morphism's response type: the finished message it echoes is
        // not needed, and a shape it does not expect must not fail a call that worked.
        #[derive(Deserialize)]
        struct Stopped {}
        let content = SlackMessageContent {
            markdown_text: (!markdown_text.is_empty()).then(|| markdown_text.to_owned()),
            blocks,
            ..SlackMessageContent::new()
        };
        let request = SlackApiChatStopStreamRequest::new(channel.into(), ts.into(), content);
        let _: Stopped = call!(self, "chat.stopStream", |s| s.http_session_api.http_post(
            "chat.stopStream",
            &request,
            Some(&SLACK_TIER2_METHOD_CONFIG)
        ))?;
        Ok(())
    }

    /// `chat.getPermalink`: a link to message `ts` in `channel`.
    pub async fn permalink(&self, channel: &str, ts: &str) -> Result<Url, SlackApiError> {
        let request = SlackApiChatGetPermalinkRequest::new(channel.into(), ts.into());
        Ok(call!(self, "chat.getPermalink", |s| s.chat_get_permalink(&request))?.permalink)
    }

    /// `conversations.open`: the direct-message channel with `user`.
    pub async fn open_dm(&self, user: &str) -> Result<String, SlackApiError> {
        // Slack documents `users` as a comma-separated string; slack-morphism's typed
        // request sends a JSON array, so this one call is made with the documented shape.
        #[derive(Serialize)]
        struct Open<'a> {
            users: &'a str,
        }
        #[derive(Deserialize)]
        struct Opened {
            channel: OpenedChannel,
        }
        #[derive(Deserialize)]
        struct OpenedChannel {
            id: String,
        }
        let request = Open { users: user };
        let opened: Opened = call!(self, "conversations.open", |s| s.http_session_api.http_post(
            "conversations.open",
            &request,
            None
        ))?;
        Ok(opened.channel.id)
    }

    /// `user`'s email as Slack vouches for it: `users.info`'s `is_email_confirmed` (which
    /// slack-morphism's `SlackUser` leaves out, so this call reads it itself).
    pub async fn email_of(&self, user: &str) -> Result<SlackEmail, SlackApiError> {
        #[derive(Deserialize)]
        struct Info {
            user: Person,
        }
        #[derive(Deserialize)]
        struct Person {
            #[serde(default)]
            is_email_confirmed: Option<bool>,
            #[serde(default)]
            profile: Option<Profile>,
        }
        #[derive(Deserialize)]
        struct Profile {
            #[serde(default)]
            email: Option<String>,
        }
        let params = vec![("user", Some(user))];
        let info: Info = call!(self, "users.info", |s| s.http_session_api.http_get(
            "users.info",
            &params,
            Some(&SLACK_TIER4_METHOD_CONFIG)
        ))?;
        let email = info.user.profile.and_then(|p| p.email).filter(|e| !e.trim().is_empty());
        Ok(match (email, info.user.is_email_confirmed) {
            (Some(email), Some(true)) => SlackEmail::Confirmed(email),
            (Some(_), _) => SlackEmail::Unconfirmed,
            (None, _) => SlackEmail::Missing,
        })
    }

    /// Who `user` is to the bot of `team` (EVT-05). A failure Slack may get over is an
    /// error; any other (say, `users:read` missing) counts the person as a member, since
    /// the link's identity check still decides whose data they can see.
    ///
    /// Someone whose own workspace is not `team` is a member only as a person of the same
    /// Enterprise Grid organisation as the bot's workspace (`enterprise_user.enterprise_id`
    /// against `auth.test`'s `enterprise_id`); a person of any other organisation, grid or
    /// not, is external, whether or not Slack marks them `is_stranger`.
    pub async fn membership(&self, team: &TeamId, user: &UserId) -> Result<Membership, SlackApiError> {
        let info = match self.user_info(user.as_str()).await {
            Ok(info) => info,
            Err(error) if error.is_transient() => return Err(error),
            Err(error) => {
                tracing::warn!(error = %error, "users.info failed; assuming a member of the organisation");
                return Ok(Membership::Member);
            }
        };
        if info.flags.is_bot == Some(true) {
            return Ok(Membership::Bot);
        }
        if info.flags.is_stranger == Some(true) {
            return Ok(Membership::External);
        }
        if info.team_id.as_ref().is_none_or(|home| home.as_ref() == team.as_str()) {
            return Ok(Membership::Member);
        }
        let Some(theirs) = info.enterprise_user.map(|e| e.enterprise_id) else {
            return Ok(Membership::External);
        };
        let ours = match self.bot_identity().await {
            Ok(bot) => bot.enterprise_id.as_deref(),
            Err(error) if error.is_transient() => return Err(error),
            Err(_) => None,
        };
        Ok(if ours == Some(theirs.as_ref()) {
            Membership::Member
        } else {
            Membership::External
        })
    }

    /// Whether `channel` is shared with another organisation (Slack Connect), or about to
    /// be: `conversations.info`'s `is_ext_shared` and `is_pending_ext_shared`, which
    /// slack-morphism's channel flags leave out, so this call reads them itself.
    pub async fn is_shared_externally(&self, channel: &str) -> Result<bool, SlackApiError> {
        #[derive(Deserialize)]
        struct Info {
            channel: Flags,
        }
        #[derive(Deserialize)]
        struct Flags {
            #[serde(default)]
            is_ext_shared: Option<bool>,
            #[serde(default)]
            is_pending_ext_shared: Option<bool>,
        }
        let params = vec![("channel", Some(channel))];
        let info: Info = call!(self, "conversations.info", |s| s.http_session_api.http_get(
            "conversations.info",
            &params,
            Some(&SLACK_TIER3_METHOD_CONFIG)
        ))?;
        Ok(info.channel.is_ext_shared == Some(true) || info.channel.is_pending_ext_shared == Some(true))
    }

    /// `users.info`.
    pub async fn user_info(&self, user: &str) -> Result<SlackUser, SlackApiError> {
        let request = SlackApiUsersInfoRequest::new(user.into());
        Ok(call!(self, "users.info", |s| s.users_info(&request))?.user)
    }
}

/// A person's email, as far as Slack vouches for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlackEmail {
    /// Slack reports the address confirmed (`is_email_confirmed: true`).
    Confirmed(String),
    /// An address Slack does not report confirmed: it proves nothing.
    Unconfirmed,
    /// No address (the `users:read.email` scope is missing, or the profile has none).
    Missing,
}

/// Who someone is to the bot's workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// A person of the workspace's organisation.
    Member,
    /// A bot.
    Bot,
    /// A person from another organisation (a Slack Connect channel): never answered and
    /// never linked.
    External,
}
