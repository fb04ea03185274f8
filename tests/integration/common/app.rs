//! The app on port 0 against a fake Slack Web API (wiremock on loopback), a manual clock
//! and a recording agent.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use databricks_slack_bot::agent::{Agent, AgentAnswer, AgentError, AgentRequest, Progress, Table};
use databricks_slack_bot::clock::{Clock, ManualClock, SystemClock};
use databricks_slack_bot::config::{Config, Env};
use databricks_slack_bot::jobs::worker::WorkerConfig;
use databricks_slack_bot::lifecycle::Lifecycle;
use databricks_slack_bot::slack::signature::sign;
use databricks_slack_bot::startup::{Application, Dependencies};
use databricks_slack_bot::store::Store;
use governor::Quota;
use serde_json::{Value, json};
use wiremock::matchers::path;
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use super::fake_databricks::{FakeDatabricks, FakeUser};
use super::{KEY_A, PATIENCE, TestDb, eventually};

pub const SIGNING_SECRET: &str = "test-signing-secret-CANARY";
pub const BOT_TOKEN: &str = "xoxb-test-CANARY-bot-token";
pub const BOT_USER: &str = "U0LAN0Z89";

/// An agent that records what it was asked and answers "answer: <question>" (with `table`
/// when one is set).
#[derive(Default)]
pub struct RecordingAgent {
    pub requests: Mutex<Vec<AgentRequest>>,
    pub table: Mutex<Option<Table>>,
    pub delay: Mutex<Option<Duration>>,
    pub fail_with: Mutex<Option<AgentError>>,
    /// How many of the next calls Databricks refuses (a revoked token): the agent renews
    /// the token as real agents do and calls again, or answers `Unauthorized` when it
    /// cannot.
    pub refuse_next: Mutex<usize>,
    /// Answers finished so far, and for each question, how many had finished when it
    /// was asked (to tell runs that overlapped from runs one after another).
    pub finished: Mutex<usize>,
    pub finished_before: Mutex<Vec<(String, usize)>>,
    /// What the agent keeps for the thread (say, a Genie conversation and message).
    pub conversation: Mutex<Option<Value>>,
    /// When set, the agent writes its answer in these pieces, `pause` apart, before it
    /// answers (or fails with `fail_with`): its answer's text is the pieces joined.
    pub pieces: Mutex<Option<(Vec<String>, Duration)>>,
}

impl RecordingAgent {
    /// The access tokens the agent was given, in order.
    pub fn tokens(&self) -> Vec<String> {
        use secrecy::ExposeSecret;
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.context.access_token.expose_secret().to_owned())
            .collect()
    }
}

#[async_trait]
impl Agent for RecordingAgent {
    fn name(&self) -> &str {
        "Recording"
    }

    async fn answer(&self, request: &AgentRequest, progress: &dyn Progress) -> Result<AgentAnswer, AgentError> {
        self.requests.lock().unwrap().push(request.clone());
        let pieces = self.pieces.lock().unwrap().clone();
        if let Some((pieces, pause)) = &pieces {
            for piece in pieces {
                progress.writing(piece).await;
                tokio::time::sleep(*pause).await;
            }
        }
        let finished = *self.finished.lock().unwrap();
        self.finished_before
            .lock()
            .unwrap()
            .push((request.question.clone(), finished));
        let answer = self.answer_now(request).await;
        *self.finished.lock().unwrap() += 1;
        answer
    }
}

impl RecordingAgent {
    async fn answer_now(&self, request: &AgentRequest) -> Result<AgentAnswer, AgentError> {
        let delay = *self.delay.lock().unwrap();
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        if let Some(error) = self.fail_with.lock().unwrap().clone() {
            return Err(error);
        }
        let refused = {
            let mut refuse = self.refuse_next.lock().unwrap();
            let refused = *refuse > 0;
            *refuse = refuse.saturating_sub(1);
            refused
        };
        if refused {
            let bearer = request.context.bearer();
            let (_, version) = bearer.current();
            let Some(fresh) = bearer.after_refusal(version).await else {
                return Err(AgentError::Unauthorized);
            };
            // The call again, with the renewed token.
            let mut again = request.clone();
            again.context.access_token = fresh;
            self.requests.lock().unwrap().push(again);
        }
        let text = match self.pieces.lock().unwrap().as_ref() {
            Some((pieces, _)) => pieces.concat(),
            None => format!("answer: {}", request.question),
        };
        Ok(AgentAnswer {
            table: self.table.lock().unwrap().clone(),
            conversation: self.conversation.lock().unwrap().clone(),
            ..AgentAnswer::text(text)
        })
    }
}

/// Default answers of the fake Slack Web API.
pub async fn mount_slack_defaults(slack: &MockServer) {
    let ok = |body: Value| ResponseTemplate::new(200).set_body_json(body);
    Mock::given(path("/api/chat.postMessage"))
        .respond_with(ok(json!({"ok": true, "channel": "C1", "ts": "1700000000.000100",
                                "message": {"ts": "1700000000.000100", "text": "x"}})))
        .mount(slack)
        .await;
    Mock::given(path("/api/chat.update"))
        .respond_with(ok(
            json!({"ok": true, "channel": "C1", "ts": "1700000000.000100", "message": {"text": "x"}}),
        ))
        .mount(slack)
        .await;
    Mock::given(path("/api/views.publish"))
        .respond_with(ok(
            json!({"ok": true, "view": {"id": "V0HOME0001", "team_id": "T061EG9R6", "type": "home", "blocks": [], "hash": "h1"}}),
        ))
        .mount(slack)
        .await;
    Mock::given(path("/api/chat.delete"))
        .respond_with(ok(json!({"ok": true, "channel": "C1", "ts": "1700000000.000100"})))
        .mount(slack)
        .await;
    Mock::given(path("/api/files.getUploadURLExternal"))
        .respond_with(ok(
            json!({"ok": true, "upload_url": format!("{}/upload/F0CSV00001", slack.uri()), "file_id": "F0CSV00001"}),
        ))
        .mount(slack)
        .await;
    Mock::given(path("/upload/F0CSV00001"))
        .respond_with(ResponseTemplate::new(200).set_body_string("OK - 123"))
        .mount(slack)
        .await;
    Mock::given(path("/api/files.completeUploadExternal"))
        .respond_with(ok(
            json!({"ok": true, "files": [{"id": "F0CSV00001", "title": "Query result"}]}),
        ))
        .mount(slack)
        .await;
    Mock::given(path("/api/chat.postEphemeral"))
        .respond_with(ok(json!({"ok": true, "message_ts": "1700000000.000200"})))
        .mount(slack)
        .await;
    // Strict, as Slack documents it: `users` is a comma-separated string of user ids.
    Mock::given(path("/api/conversations.open"))
        .and(|request: &wiremock::Request| {
            serde_json::from_slice::<Value>(&request.body).is_ok_and(|body| body["users"].is_string())
        })
        .respond_with(ok(json!({"ok": true, "channel": {"id": "D0DM000001"}})))
        .mount(slack)
        .await;
    Mock::given(path("/api/conversations.open"))
        .respond_with(ok(json!({"ok": false, "error": "invalid_arguments"})))
        .mount(slack)
        .await;
    // A channel of the workspace's own (conversations.info, trimmed to what matters).
    Mock::given(path("/api/conversations.info"))
        .respond_with(ok(json!({"ok": true, "channel": {
            "id": "C0LAN2Q65", "name": "general", "is_channel": true, "is_private": false,
            "is_shared": false, "is_ext_shared": false, "is_org_shared": false, "is_pending_ext_shared": false}})))
        .mount(slack)
        .await;
    Mock::given(path("/api/users.info"))
        .respond_with(ok(
            json!({"ok": true, "user": {"id": "U061F7AUR", "team_id": "T061EG9R6", "is_bot": false, "name": "alice",
                   "is_email_confirmed": true,
                   "profile": {"display_name": "alice", "real_name": "Alice Asker", "email": "Asker@Example.com"}}}),
        ))
        .mount(slack)
        .await;
    Mock::given(path("/api/chat.getPermalink"))
        .respond_with(|request: &wiremock::Request| {
            // GET with query parameters, as slack-morphism sends it.
            let q: std::collections::HashMap<String, String> = request.url.query_pairs().into_owned().collect();
            let (channel, ts) = (
                q.get("channel").cloned().unwrap_or_default(),
                q.get("message_ts").cloned().unwrap_or_default(),
            );
            ResponseTemplate::new(200).set_body_json(json!({"ok": true, "channel": channel,
                "permalink": format!("https://acme.slack.com/archives/{channel}/p{}", ts.replace('.', ""))}))
        })
        .mount(slack)
        .await;
    Mock::given(path("/api/auth.test"))
        .respond_with(ok(
            json!({"ok": true, "user_id": BOT_USER, "team_id": "T061EG9R6", "team": "Acme",
                                "url": "https://acme.slack.com/", "bot_id": "B0LAN0Z8A"}),
        ))
        .mount(slack)
        .await;
}

/// A fake Slack Web API answering `mocks` first and with the defaults otherwise.
pub async fn fake_slack(mocks: Vec<Mock>) -> Arc<MockServer> {
    let slack = MockServer::start().await;
    for mock in mocks {
        mock.mount(&slack).await;
    }
    mount_slack_defaults(&slack).await;
    Arc::new(slack)
}

/// Options for [`TestApp::spawn_with`].
pub struct Options {
    pub db: Option<String>,
    pub workers: Option<WorkerConfig>,
    pub extra_env: Vec<(&'static str, String)>,
    pub slack: Option<Arc<MockServer>>,
    /// Answers the fake Slack gives before its defaults (when `slack` is not given).
    pub slack_mocks: Vec<Mock>,
    pub databricks: Option<Arc<FakeDatabricks>>,
    /// Answer with the agent the configuration names (`AGENT`, `GENIE_SPACE_ID`, …)
    /// instead of the recording agent.
    pub configured_agent: bool,
    /// The per-client quota on the linking routes. By default one no test meets: every
    /// test's browser is 127.0.0.1, and flows run back to back would otherwise pass or
    /// meet the real quota depending on the machine's speed.
    pub link_quota: Quota,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            db: None,
            workers: Some(fast_workers()),
            extra_env: Vec::new(),
            slack: None,
            slack_mocks: Vec::new(),
            databricks: None,
            configured_agent: false,
            link_quota: Quota::per_second(NonZeroU32::new(10_000).unwrap()),
        }
    }
}

/// Worker settings that make tests quick: frequent polls, short backoff.
pub fn fast_workers() -> WorkerConfig {
    WorkerConfig {
        poll_interval: Duration::from_millis(20),
        base_backoff: Duration::from_secs(1),
        ..WorkerConfig::default()
    }
}

/// A browser: no automatic redirects, cookies handled by hand.
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// What pressing "Continue" on a link page gave the browser.
pub struct Claim {
    /// `name=value` of the browser-binding cookie.
    pub cookie: String,
    /// Where the browser was sent next.
    pub location: String,
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub lifecycle: Lifecycle,
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub slack: Arc<MockServer>,
    pub databricks: Arc<FakeDatabricks>,
    pub clock: Arc<ManualClock>,
    pub agent: Arc<RecordingAgent>,
    pub store: Store,
    pub client: reqwest::Client,
    pub db_url: String,
    _db: Option<TestDb>,
}

/// The app built on `db_url` with `extra` settings, without workers and with Slack and
/// Databricks unreachable: for tests of its HTTP surface alone. Nothing runs until asked.
pub async fn build_offline(db_url: &str, extra: Vec<(&'static str, String)>) -> Application {
    let mut env = config_env(db_url, "http://127.0.0.1:9", "http://127.0.0.1:9");
    env.extend(extra);
    let config = Config::load(&Env::from_pairs(env)).expect("test configuration is valid");
    let deps = Dependencies {
        clock: Arc::new(SystemClock),
        agent: Arc::new(RecordingAgent::default()),
        workers: None,
    };
    Application::build(&config, deps).await.unwrap()
}

pub fn config_env(db_url: &str, slack_uri: &str, databricks_uri: &str) -> Vec<(&'static str, String)> {
    vec![
        ("BIND_ADDR", "127.0.0.1:0".into()),
        ("PUBLIC_BASE_URL", "https://bot.example.com".into()),
        ("DATABASE_URL", db_url.into()),
        ("TOKEN_ENCRYPTION_KEYS", KEY_A.into()),
        ("SLACK_BOT_TOKEN", BOT_TOKEN.into()),
        ("SLACK_SIGNING_SECRET", SIGNING_SECRET.into()),
        ("SLACK_API_URL", format!("{slack_uri}/api")),
        ("DATABRICKS_HOST", databricks_uri.into()),
        ("DATABRICKS_CLIENT_ID", "test-client".into()),
        ("GENIE_SPACE_ID", "01ef-space".into()),
    ]
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(Options::default()).await
    }

    pub async fn spawn_with(options: Options) -> Self {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter("debug,hyper=info,sqlx=warn")
                .try_init();
        }
        let (db, db_url) = match options.db {
            Some(url) => (None, url),
            None => {
                let db = TestDb::sqlite();
                let url = db.url.clone();
                (Some(db), url)
            }
        };
        let slack = match options.slack {
            Some(slack) => slack,
            None => fake_slack(options.slack_mocks).await,
        };
        let databricks = match options.databricks {
            Some(databricks) => databricks,
            None => Arc::new(FakeDatabricks::start().await),
        };
        let mut env = config_env(&db_url, &slack.uri(), &databricks.uri);
        for (k, v) in options.extra_env {
            env.retain(|(key, _)| *key != k);
            env.push((k, v));
        }
        let config = Config::load(&Env::from_pairs(env)).expect("test configuration is valid");
        let clock = Arc::new(ManualClock::at(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64,
        ));
        let agent = Arc::new(RecordingAgent::default());
        let deps = Dependencies {
            clock: clock.clone(),
            agent: if options.configured_agent {
                databricks_slack_bot::agent::from_config(&config.agent)
            } else {
                agent.clone()
            },
            workers: options.workers,
        };
        let app = Application::build(&config, deps)
            .await
            .unwrap()
            .with_drain_deadline(Duration::from_secs(5))
            .with_link_quota(options.link_quota);
        let (addr, lifecycle, store) = (app.local_addr(), app.lifecycle(), app.store());
        let server = tokio::spawn(app.run_until_stopped());
        Self {
            addr,
            lifecycle,
            server,
            slack,
            databricks,
            clock,
            agent,
            store,
            client: reqwest::Client::new(),
            db_url,
            _db: db,
        }
    }

    /// Links the fixtures' asker (T061EG9R6/U061F7AUR) to a fresh grant at the fake
    /// Databricks, as if they had connected before. Returns the refresh token.
    pub async fn link_asker(&self) -> String {
        let rt = self.databricks.grant(&FakeUser::asker());
        let person = super::Person {
            workspace: databricks_slack_bot::domain::WorkspaceHost::parse(&self.databricks.uri).unwrap(),
            ..super::Person::new("T061EG9R6", "U061F7AUR")
        };
        let asker = FakeUser::asker();
        person
            .link_as(
                &self.store,
                &super::vault(&[KEY_A]),
                &rt,
                self.clock.now(),
                (&asker.id, &asker.user_name),
            )
            .await;
        rt
    }

    /// Asks a question as the fixtures' asker and returns the link id in the prompt.
    pub async fn ask_for_link(&self, event_id: &str, question: &str) -> String {
        let before = self.slack_calls("chat.postEphemeral").await.len();
        self.post_event(&mention(event_id, &format!("<@U0LAN0Z89> {question}")))
            .await;
        let prompts = self.wait_for_calls("chat.postEphemeral", before + 1).await;
        let prompt = prompts.last().expect("a prompt").to_string();
        let start = prompt
            .find("https://bot.example.com/link/")
            .expect("a link in the prompt")
            + 29;
        prompt[start..start + 22].to_owned()
    }

    /// Presses "Continue": `POST /link/{id}` from the landing page, as a browser sends it
    /// (`Origin` and `Sec-Fetch-Site` say it is the bot's own page); the response when it
    /// is not a redirect.
    pub async fn claim_link(&self, id: &str) -> Result<Claim, reqwest::Response> {
        let response = from_own_page(browser().post(self.url(&format!("/link/{id}"))))
            .send()
            .await
            .unwrap();
        if response.status() != 303 {
            return Err(response);
        }
        let set_cookie = response.headers()["set-cookie"].to_str().unwrap();
        Ok(Claim {
            cookie: set_cookie.split(';').next().unwrap().to_owned(),
            location: response.headers()["location"].to_str().unwrap().to_owned(),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// Posts `body` to `path` signed as Slack would, now.
    pub async fn post_signed(
        &self,
        path: &str,
        content_type: &str,
        body: &str,
        extra: &[(&str, &str)],
    ) -> reqwest::Response {
        let ts = self.clock.now();
        let mut request = self
            .client
            .post(self.url(path))
            .header("content-type", content_type)
            .header("x-slack-request-timestamp", ts.to_string())
            .header("x-slack-signature", sign(SIGNING_SECRET, ts, body.as_bytes()));
        for (k, v) in extra {
            request = request.header(*k, *v);
        }
        request.body(body.to_owned()).send().await.unwrap()
    }

    pub async fn post_event(&self, event: &Value) -> reqwest::Response {
        self.post_signed("/slack/events", "application/json", &event.to_string(), &[])
            .await
    }

    /// Posts the interaction `payload` (a click) signed as Slack would; the status.
    pub async fn post_interaction(&self, payload: &Value) -> u16 {
        self.post_signed(
            "/slack/interactions",
            "application/x-www-form-urlencoded",
            &interaction(payload),
            &[],
        )
        .await
        .status()
        .as_u16()
    }

    /// The browser comes back to the bot at `callback` (where a sign-in redirects it),
    /// with the binding `cookie` when it has one; the bot's answer.
    pub async fn come_back(&self, callback: &url::Url, cookie: Option<&str>) -> reqwest::Response {
        let path = format!("{}?{}", callback.path(), callback.query().unwrap_or_default());
        let mut request = browser().get(self.url(&path));
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        request.send().await.unwrap()
    }

    /// The bytes of the first file uploaded to the fake Slack's upload URL.
    pub async fn uploaded(&self) -> Vec<u8> {
        self.slack
            .received_requests()
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.url.path() == "/upload/F0CSV00001")
            .expect("a file's bytes were uploaded")
            .body
    }

    /// The result page shown to the browser holding `cookie`.
    pub async fn result_page(&self, cookie: &str) -> String {
        browser()
            .get(self.url("/link/result"))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The requests the fake Slack received for `method` (e.g. `chat.postEphemeral`), as
    /// JSON bodies (or query parameters for GET calls).
    pub async fn slack_calls(&self, api_method: &str) -> Vec<Value> {
        slack_calls(&self.slack, api_method).await
    }

    /// What was sent to the fake Slack's `response_url`s, in order.
    pub async fn responses(&self) -> Vec<Value> {
        self.slack
            .received_requests()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.url.path().starts_with("/response/"))
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect()
    }

    /// Waits (up to [`PATIENCE`]) until the fake Slack has seen `n` calls of `api_method`;
    /// returns every call of it so far.
    pub async fn wait_for_calls(&self, api_method: &str, n: usize) -> Vec<Value> {
        eventually(&format!("{n} calls of {api_method}"), PATIENCE, || async {
            let calls = self.slack_calls(api_method).await;
            (calls.len() >= n).then_some(calls)
        })
        .await
    }

    /// Waits (up to [`PATIENCE`]) for an answer containing `needle`: the placeholder
    /// replaced by `chat.update`, or a message posted with `chat.postMessage`. Returns that
    /// request.
    pub async fn wait_for_answer(&self, needle: &str) -> Value {
        let what = format!("an answer containing {needle:?} (by chat.update or chat.postMessage)");
        eventually(&what, PATIENCE, || async {
            for api_method in ["chat.update", "chat.postMessage"] {
                let calls = self.slack_calls(api_method).await;
                if let Some(found) = calls.into_iter().find(|m| m.to_string().contains(needle)) {
                    return Some(found);
                }
            }
            None
        })
        .await
    }

    pub async fn job_states(&self) -> Vec<String> {
        job_states(&self.db_url).await
    }

    /// Every job's state and how many times it was run, oldest first.
    pub async fn jobs(&self) -> Vec<(String, i64)> {
        jobs(&self.db_url).await
    }

    /// The job states once no job is queued or running any more (waiting up to
    /// [`PATIENCE`]): a worker posts to Slack before it records the job's outcome, so
    /// nothing more comes from a settled job.
    pub async fn settled_job_states(&self) -> Vec<String> {
        eventually("every job to settle (none queued or running)", PATIENCE, || async {
            let states = self.job_states().await;
            states.iter().all(|s| s != "queued" && s != "running").then_some(states)
        })
        .await
    }

    /// Once the only job has failed its `attempt`th run and waits to be retried, moves the
    /// clock past any backoff so the retry runs now.
    pub async fn retry_now(&self, attempt: i64) {
        let what = format!("the only job to wait for a retry after attempt {attempt}");
        eventually(&what, PATIENCE, || async {
            (jobs(&self.db_url).await == [("queued".to_owned(), attempt)]).then_some(())
        })
        .await;
        self.clock
            .advance(WorkerConfig::default().max_backoff.as_secs() as i64 + 1);
    }

    pub async fn stop(self) {
        self.lifecycle.begin_shutdown();
        self.server.await.unwrap().unwrap();
    }
}

pub async fn slack_calls(slack: &MockServer, api_method: &str) -> Vec<Value> {
    let wanted = format!("/api/{api_method}");
    slack
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r: &&Request| r.url.path() == wanted)
        .map(|r| {
            serde_json::from_slice(&r.body).unwrap_or_else(|_| {
                let query: serde_json::Map<String, Value> = r
                    .url
                    .query_pairs()
                    .chain(url::form_urlencoded::parse(&r.body))
                    .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                    .collect();
                Value::Object(query)
            })
        })
        .collect()
}

/// Every audit row as (kind, actor), in order.
pub async fn audit_trail(db_url: &str) -> Vec<(String, String)> {
    rows(db_url, "SELECT kind, actor FROM audit_events ORDER BY id").await
}

/// The states of every job, in id order.
pub async fn job_states(db_url: &str) -> Vec<String> {
    jobs(db_url).await.into_iter().map(|(state, _)| state).collect()
}

/// Every job's state and attempts so far, oldest first.
async fn jobs(db_url: &str) -> Vec<(String, i64)> {
    rows(db_url, "SELECT state, attempts FROM jobs ORDER BY id").await
}

/// What `sql` returns from the database at `db_url`, SQLite or Postgres.
pub async fn rows<T>(db_url: &str, sql: &str) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    T: Send + Unpin,
{
    if db_url.starts_with("sqlite://") {
        let pool = sqlx::SqlitePool::connect(db_url).await.unwrap();
        let rows = sqlx::query_as(sql).fetch_all(&pool).await.unwrap();
        pool.close().await;
        rows
    } else {
        let pool = sqlx::PgPool::connect(db_url).await.unwrap();
        let rows = sqlx::query_as(sql).fetch_all(&pool).await.unwrap();
        pool.close().await;
        rows
    }
}

/// An interaction `payload` as the form body Slack posts it in.
pub fn interaction(payload: &Value) -> String {
    format!(
        "payload={}",
        url::form_urlencoded::byte_serialize(payload.to_string().as_bytes()).collect::<String>()
    )
}

/// A fixture event with its `event_id` and text replaced.
pub fn mention(event_id: &str, text: &str) -> Value {
    let mut event: Value = serde_json::from_str(include_str!("../../fixtures/slack/event_app_mention.json")).unwrap();
    event["event_id"] = json!(event_id);
    event["event"]["text"] = json!(text);
    event
}

/// `request` as a browser sends a form posted from the bot's own page at `PUBLIC_BASE_URL`.
pub fn from_own_page(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    request
        .header("origin", "https://bot.example.com")
        .header("sec-fetch-site", "same-origin")
}
