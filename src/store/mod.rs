//! All SQL lives here. One `Store` serves an embedded SQLite file (the default) or a shared
//! Postgres database (several replicas).
//!
//! Queries are written once in portable SQL (`$1` placeholders work on both backends) and
//! run through [`on_pool!`], which compiles the same body once per backend. Tests run every
//! query on both. Times are Unix seconds.

pub mod assistant;
pub mod audit;
pub mod conversations;
pub mod feedback;
pub mod jobs;
pub mod links;
pub mod pending_links;
pub mod private_answers;
pub mod retention;

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Postgres, Sqlite, Transaction};

use crate::config::DatabaseConfig;
use crate::domain::{TeamId, UserId};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How long SQLite waits on a lock held by another connection before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Which database a [`Store`] talks to.
#[derive(Clone, Debug)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the concrete pool (`store.read` or `store.write`),
/// compiling it once per backend.
macro_rules! on_pool {
    ($pool_of:expr, |$pool:ident| $body:expr) => {
        match &$pool_of {
            $crate::store::Pool::Sqlite($pool) => $body,
            $crate::store::Pool::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// Reads a column of a `table` row as `T`; a value that does not parse is a decode error
/// naming where it is (the row was written by something other than this code).
fn column<T, E>(table: &str, column: &str, parsed: Result<T, E>) -> Result<T, sqlx::Error> {
    parsed.map_err(|_| sqlx::Error::Decode(format!("{table} row has an invalid {column}").into()))
}

/// The Slack person a `table` row belongs to.
fn person(table: &str, team_id: &str, user_id: &str) -> Result<(TeamId, UserId), sqlx::Error> {
    Ok((
        column(table, "team_id", TeamId::parse(team_id))?,
        column(table, "user_id", UserId::parse(user_id))?,
    ))
}

/// Opens a transaction that intends to write.
///
/// On SQLite this is `BEGIN IMMEDIATE`: a deferred transaction that reads and then writes
/// cannot be retried by `busy_timeout` and surfaces `SQLITE_BUSY` under concurrency (REL-01).
pub(crate) trait WritePool {
    type Db: sqlx::Database;
    fn begin_write(&self) -> impl Future<Output = Result<Transaction<'static, Self::Db>, sqlx::Error>> + Send;

    /// Tells every replica's workers that `tx` queues jobs: a Postgres `NOTIFY` on
    /// [`JOBS_QUEUED`], delivered when `tx` commits (and not at all if it rolls back).
    /// Nothing on SQLite, where the one process wakes its own workers.
    fn announce_jobs<'t>(
        &'t self,
        tx: &'t mut Transaction<'static, Self::Db>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 't;
}

impl WritePool for SqlitePool {
    type Db = Sqlite;
    fn begin_write(&self) -> impl Future<Output = Result<Transaction<'static, Sqlite>, sqlx::Error>> + Send {
        self.begin_with("BEGIN IMMEDIATE")
    }

    fn announce_jobs<'t>(
        &'t self,
        _tx: &'t mut Transaction<'static, Sqlite>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 't {
        std::future::ready(Ok(()))
    }
}

impl WritePool for PgPool {
    type Db = Postgres;
    fn begin_write(&self) -> impl Future<Output = Result<Transaction<'static, Postgres>, sqlx::Error>> + Send {
        self.begin()
    }

    async fn announce_jobs(&self, tx: &mut Transaction<'static, Postgres>) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(JOBS_QUEUED)
            .execute(&mut **tx)
            .await
            .map(|_| ())
    }
}

/// The Postgres channel on which queued jobs are announced to every replica's workers.
pub const JOBS_QUEUED: &str = "jobs_queued";

/// The bot's database.
///
/// On SQLite, writes go through a single connection: SQLite has one writer at a time
/// anyway, and queueing writers on the pool (first come, first served, no sleeping) keeps
/// latency flat where SQLite's busy handler would back off for up to 100 ms per try.
/// Reads use a separate, read-only pool. On Postgres both are the same pool.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) read: Pool,
    pub(crate) write: Pool,
    /// Intake batches on their way to SQLite's one writer, which a claim lets go first.
    pub(crate) intake: Arc<IntakeFirst>,
}

/// Slack waits on intake, nobody waits on a claim: on SQLite, where every write queues for
/// one connection, a worker about to claim a job lets an intake batch already waiting
/// commit first (at most one, and at most [`IntakeFirst::YIELD`], so workers never
/// starve under a stream of deliveries).
#[derive(Debug, Default)]
pub(crate) struct IntakeFirst {
    waiting: AtomicUsize,
    committed: tokio::sync::Notify,
}

impl IntakeFirst {
    /// Longest a claim waits for an intake batch.
    const YIELD: Duration = Duration::from_millis(20);

    /// Marks an intake batch waiting until the guard is dropped.
    pub(crate) fn batch(self: &Arc<Self>) -> IntakeBatch {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        IntakeBatch(self.clone())
    }

    /// Waits for the intake batch waiting now, if there is one, to end.
    pub(crate) async fn let_through(&self) {
        if self.waiting.load(Ordering::SeqCst) == 0 {
            return;
        }
        let committed = self.committed.notified();
        tokio::pin!(committed);
        committed.as_mut().enable();
        if self.waiting.load(Ordering::SeqCst) > 0 {
            let _ = tokio::time::timeout(Self::YIELD, committed).await;
        }
    }
}

/// An intake batch on its way to the database.
pub(crate) struct IntakeBatch(Arc<IntakeFirst>);

impl Drop for IntakeBatch {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
        self.0.committed.notify_waiters();
    }
}

impl Store {
    /// Connects without migrating. A SQLite file and its directory are created private
    /// (0600 / 0700) whatever the umask.
    pub async fn connect(config: &DatabaseConfig) -> anyhow::Result<Self> {
        match config {
            DatabaseConfig::Sqlite { path } => Self::connect_sqlite(path).await,
            DatabaseConfig::Postgres { url } => {
                let options = PgConnectOptions::from_str(url.expose_secret())
                    .context("DATABASE_URL is not a valid postgres URL")?;
                let pool = PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await
                    .context("could not connect to Postgres")?;
                Ok(Self {
                    read: Pool::Postgres(pool.clone()),
                    write: Pool::Postgres(pool),
                    intake: Arc::default(),
                })
            }
        }
    }

    async fn connect_sqlite(path: &Path) -> anyhow::Result<Self> {
        create_private_file(path)?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
            .foreign_keys(true)
            // A rotated refresh token must survive a power cut once committed (REL-02).
            .synchronous(SqliteSynchronous::Full)
            // Deleted tokens are overwritten with zeros, not left in free pages (CRY-09).
            .pragma("secure_delete", "ON");
        let open = |max: u32, options: SqliteConnectOptions| async move {
            SqlitePoolOptions::new()
                .max_connections(max)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(options)
                .await
                .with_context(|| format!("could not open SQLite database {}", path.display()))
        };
        let write = open(1, options.clone()).await?;
        let read = open(8, options.read_only(true)).await?;
        // SQLite gives -wal and -shm the main file's mode; check rather than trust.
        for suffix in ["-wal", "-shm"] {
            restrict_if_exists(&sidecar(path, suffix))?;
        }
        Ok(Self {
            read: Pool::Sqlite(read),
            write: Pool::Sqlite(write),
            intake: Arc::default(),
        })
    }

    /// Connects and applies any pending migrations.
    pub async fn open(config: &DatabaseConfig) -> anyhow::Result<Self> {
        let store = Self::connect(config).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Applies pending migrations. Safe to run concurrently from several replicas.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        match &self.write {
            Pool::Sqlite(pool) => SQLITE_MIGRATIONS.run(pool).await,
            Pool::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await,
        }
        .context("database migration failed")
    }

    /// How many migrations this binary knows that the database has not applied.
    pub async fn pending_migrations(&self) -> Result<usize, sqlx::Error> {
        let (migrator, table_exists) = match &self.read {
            Pool::Sqlite(_) => (
                &SQLITE_MIGRATIONS,
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
            ),
            Pool::Postgres(_) => (
                &POSTGRES_MIGRATIONS,
                "SELECT COUNT(*) FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_name = '_sqlx_migrations'",
            ),
        };
        let (tables,): (i64,) = on_pool!(self.read, |pool| sqlx::query_as(table_exists).fetch_one(pool).await)?;
        let applied: Vec<(i64,)> = if tables == 0 {
            Vec::new()
        } else {
            on_pool!(self.read, |pool| {
                sqlx::query_as("SELECT version FROM _sqlx_migrations WHERE success")
                    .fetch_all(pool)
                    .await
            })?
        };
        Ok(migrator
            .iter()
            .filter(|m| !applied.iter().any(|(version,)| *version == m.version))
            .count())
    }

    /// Wakes `wake` whenever any replica queues jobs ([`JOBS_QUEUED`]), so workers here
    /// take them at once rather than at their next poll; listens again after a lost
    /// connection. `None` on SQLite, where only this process queues jobs.
    pub fn watch_queued_jobs(&self, wake: std::sync::Arc<tokio::sync::Notify>) -> Option<tokio::task::JoinHandle<()>> {
        let Pool::Postgres(pool) = &self.write else {
            return None;
        };
        let pool = pool.clone();
        Some(tokio::spawn(async move {
            loop {
                let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::warn!(error = %error, "could not listen for queued jobs; workers poll meanwhile");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        continue;
                    }
                };
                if let Err(error) = listener.listen(JOBS_QUEUED).await {
                    tracing::warn!(error = %error, "could not listen for queued jobs; workers poll meanwhile");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
                // `recv` reconnects and listens again by itself after a lost connection.
                loop {
                    match listener.recv().await {
                        Ok(_) => wake.notify_one(),
                        Err(error) => {
                            tracing::warn!(error = %error, "lost the queued-jobs channel; listening again");
                            break;
                        }
                    }
                }
            }
        }))
    }

    /// A cheap round trip, for readiness checks.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        on_pool!(self.read, |pool| sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .map(|_| ()))
    }

    /// Closes every connection, checkpointing SQLite's WAL.
    pub async fn close(&self) {
        on_pool!(self.write, |pool| pool.close().await);
        on_pool!(self.read, |pool| pool.close().await)
    }
}

fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Creates the database file (mode 0600) and any missing parent directories (mode 0700).
/// Explicit modes are not widened by the umask, so this holds even under `umask 000`.
fn create_private_file(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("could not create database directory {}", dir.display()))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("could not create database file {}", path.display()))?;
    restrict_if_exists(path)
}

/// Takes group and other permissions away from an existing file.
fn restrict_if_exists(path: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
            std::fs::set_permissions(path, Permissions::from_mode(0o600))
                .with_context(|| format!("could not restrict permissions of {}", path.display()))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("could not inspect {}", path.display())),
    }
}
