//! Shared test helpers: fresh databases on both backends, fixtures for links, the
//! compiled binary, agent requests, captured logs, the oidc-provider server and waiting
//! for what happens in the background.

pub mod agents;
pub mod app;
pub mod fake_databricks;
pub mod fake_entra;
pub mod logs;
pub mod oidc_provider;
pub mod recorded;
pub mod replica;
pub mod slack_oidc;
pub mod wait;

pub use wait::{PATIENCE, eventually};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use databricks_slack_bot::config::DatabaseConfig;
use databricks_slack_bot::crypto::{Binding, Purpose, Vault, VaultKey};
use databricks_slack_bot::domain::{TeamId, UserId, WorkspaceHost};
use databricks_slack_bot::store::Store;
use databricks_slack_bot::store::links::NewLink;
use secrecy::SecretString;
use sqlx::Connection;

/// A token broker over its own store connection (as another process would have), on
/// `db_url`, against `databricks`, counting into `metrics`.
pub async fn broker_with(
    db_url: &str,
    databricks: &fake_databricks::FakeDatabricks,
    clock: std::sync::Arc<databricks_slack_bot::clock::ManualClock>,
    metrics: std::sync::Arc<databricks_slack_bot::metrics::Metrics>,
) -> (databricks_slack_bot::databricks::broker::TokenBroker, Store) {
    use databricks_slack_bot::config::{Config, Env};
    use databricks_slack_bot::databricks::authority::Authority;
    let config = Config::load(&Env::from_pairs(app::config_env(
        db_url,
        "http://127.0.0.1:9",
        &databricks.uri,
    )))
    .unwrap();
    let store = Store::open(&config.database).await.unwrap();
    let oauth = Authority::new(
        &config.databricks,
        &config.public_base_url,
        databricks_slack_bot::databricks::oauth::http_client(),
    );
    let broker = databricks_slack_bot::databricks::broker::TokenBroker::new(
        store.clone(),
        vault(&[KEY_A]),
        oauth,
        clock,
        metrics,
    );
    (broker, store)
}

/// Records Slack event `event_id` and enqueues `job`, as a batch of one.
pub async fn enqueue_one(
    store: &Store,
    event_id: &str,
    job: &databricks_slack_bot::store::jobs::NewJob<'_>,
    now: i64,
) -> Result<databricks_slack_bot::store::jobs::Delivery, sqlx::Error> {
    Ok(store.enqueue_event_jobs(&[(event_id, job.clone())], now).await?[0])
}

/// The compiled `databricks-slack-bot` binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_databricks-slack-bot");

pub const KEY_A: &str = "ka:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
pub const KEY_B: &str = "kb:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

pub fn vault(entries: &[&str]) -> Vault {
    Vault::new(
        entries
            .iter()
            .map(|e| VaultKey::parse(&SecretString::from(e.to_string())).unwrap())
            .collect(),
    )
}

/// A database for one test: a SQLite file in a temporary directory, or a private schema
/// in the Postgres named by `TEST_DATABASE_URL`. Dropped with the test.
pub struct TestDb {
    pub name: &'static str,
    pub url: String,
    pub dir: tempfile::TempDir,
    pg_schema: Option<(String, String)>,
}

impl TestDb {
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("db/bot.db").display());
        Self {
            name: "sqlite",
            url,
            dir,
            pg_schema: None,
        }
    }

    /// A fresh schema in the test Postgres, or `None` (with a visible note) when
    /// `TEST_DATABASE_URL` is not set.
    pub async fn postgres() -> Option<Self> {
        let Ok(base) = std::env::var("TEST_DATABASE_URL") else {
            eprintln!("NOTE: skipping the Postgres half of this test: TEST_DATABASE_URL is not set");
            return None;
        };
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let schema = format!(
            "t_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            nanos
        );
        let mut conn = sqlx::PgConnection::connect(&base)
            .await
            .expect("TEST_DATABASE_URL is reachable");
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        Some(Self {
            name: "postgres",
            url,
            dir: tempfile::tempdir().unwrap(),
            pg_schema: Some((base, schema)),
        })
    }

    /// SQLite always; Postgres too when configured.
    pub async fn all() -> Vec<Self> {
        let mut dbs = vec![Self::sqlite()];
        dbs.extend(Self::postgres().await);
        dbs
    }

    pub fn config(&self) -> DatabaseConfig {
        match self.url.strip_prefix("sqlite://") {
            Some(path) => DatabaseConfig::Sqlite { path: path.into() },
            None => DatabaseConfig::Postgres {
                url: SecretString::from(self.url.clone()),
            },
        }
    }

    pub fn sqlite_path(&self) -> Option<PathBuf> {
        self.url.strip_prefix("sqlite://").map(PathBuf::from)
    }

    pub async fn open(&self) -> Store {
        Store::open(&self.config()).await.unwrap()
    }

    /// A `Command` for the binary with a clean environment pointing at this database.
    pub fn command(&self, args: &[&str]) -> Command {
        bin(self.dir.path(), args, &[("DATABASE_URL", &self.url)])
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((base, schema)) = self.pg_schema.take() {
            // Drop runs outside any runtime we may block; use a thread of our own.
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(mut conn) = sqlx::PgConnection::connect(&base).await {
                        let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                            .execute(&mut conn)
                            .await;
                    }
                });
            })
            .join()
            .ok();
        }
    }
}

/// The binary with an empty environment (plus `vars`), run in `dir` so no stray `.env`
/// is read.
pub fn bin(dir: &Path, args: &[&str], vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).current_dir(dir).env_clear();
    if let Ok(path) = std::env::var("PATH") {
        cmd.env("PATH", path);
    }
    cmd.envs(vars.iter().copied());
    cmd
}

pub struct Person {
    pub team: TeamId,
    pub user: UserId,
    pub workspace: WorkspaceHost,
}

impl Person {
    pub fn new(team: &str, user: &str) -> Self {
        Self {
            team: TeamId::parse(team).unwrap(),
            user: UserId::parse(user).unwrap(),
            workspace: WorkspaceHost::parse("https://dbc-1.cloud.databricks.com").unwrap(),
        }
    }

    pub fn binding(&self) -> Binding<'_> {
        Binding::new(Purpose::RefreshToken, &self.team, &self.user, &self.workspace)
    }

    /// Stores a link for this person with `refresh_token` sealed by `vault`.
    pub async fn link(&self, store: &Store, vault: &Vault, refresh_token: &str, now: i64) {
        let name = format!("{}@example.com", self.user.as_str().to_lowercase());
        self.link_as(store, vault, refresh_token, now, ("1234", &name)).await;
    }

    /// Stores a link for this person to the Databricks user `(id, user_name)`.
    pub async fn link_as(
        &self,
        store: &Store,
        vault: &Vault,
        refresh_token: &str,
        now: i64,
        (databricks_user_id, name): (&str, &str),
    ) {
        let sealed = vault.seal(self.binding(), &SecretString::from(refresh_token.to_owned()));
        store
            .upsert_link(
                &NewLink {
                    team: &self.team,
                    user: &self.user,
                    workspace: &self.workspace,
                    databricks_user_id,
                    databricks_user_name: name,
                    databricks_display_name: Some("Test Person"),
                    sealed_refresh_token: &sealed,
                    key_id: vault.primary_key_id().as_str(),
                    scopes: "all-apis offline_access",
                    sealed_access_token: None,
                    access_expires_at: None,
                },
                now,
            )
            .await
            .unwrap();
    }
}
