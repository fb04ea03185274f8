//! The command line: `serve` (default), `check`, `migrate`, `keys generate|rotate`,
//! `links list|remove`, `health`.
//!
//! Exit codes: 0 ok, 1 runtime failure, 2 bad configuration or usage, 124 `serve` did not
//! finish shutting down within `SHUTDOWN_DRAIN_SECONDS` plus a margin and was ended.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;

use crate::agent;
use crate::clock::{Clock, SystemClock};
use crate::config::{self, Config, ConfigError, DatabaseConfig, Env, IdentityCheck, Traces, vault_and_database};
use crate::crypto::generate_key;
use crate::databricks::authority::Authority;
use crate::databricks::broker::rotation::{rotate_all, rotate_pending_links, sealed_under_unknown_keys, unknown_keys};
use crate::databricks::oauth::http_client;
use crate::domain::{TeamId, UserId, WorkspaceHost};
use crate::lifecycle::shutdown_signal;
use crate::slack::api::SlackApi;
use crate::startup::{Application, Dependencies};
use crate::store::Store;
use crate::store::audit::Actor;
use crate::store::links::Link;
use crate::telemetry;

/// How long `health` waits for the bot's answer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);
/// How long exiting waits for finished spans and queued log lines.
const EXIT_FLUSH: Duration = Duration::from_secs(2);
/// How long past the drain deadline a stopping `serve` may take before it is ended.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);
/// The exit code of a `serve` ended by its shutdown deadline (as `timeout(1)`'s).
const EXIT_SHUTDOWN_DEADLINE: i32 = 124;

/// Answer Databricks questions in Slack, as the person who asked.
#[derive(Debug, Parser)]
#[command(name = "databricks-slack-bot", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply migrations and run the bot (the default).
    Serve,
    /// Validate configuration and reach the database, Slack and Databricks; print a report.
    Check,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage token encryption keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Inspect and remove people's Databricks links.
    #[command(subcommand)]
    Links(LinksCommand),
    /// Ask the bot running here whether it is up (`GET /healthz` on BIND_ADDR), for
    /// container health checks: exit 0 when it answers 200, 1 otherwise.
    Health {
        /// Ask whether it is ready for traffic instead (`GET /readyz`).
        #[arg(long)]
        ready: bool,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Print a fresh random 32-byte key, base64, for TOKEN_ENCRYPTION_KEYS.
    Generate,
    /// Re-encrypt every stored secret under the primary (first) key. Resumable.
    Rotate {
        /// Rows re-encrypted per batch.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        batch_size: i64,
    },
}

#[derive(Debug, Subcommand)]
enum LinksCommand {
    /// List links (never secrets).
    List {
        /// Only this Slack team (e.g. T0123ABCD).
        #[arg(long)]
        team: Option<TeamId>,
    },
    /// Delete one person's link.
    Remove {
        /// Slack team id, e.g. T0123ABCD.
        #[arg(long)]
        team: TeamId,
        /// Slack user id, e.g. U0123ABCD.
        #[arg(long)]
        user: UserId,
    },
}

/// Why a command failed, which decides the exit code.
enum Failure {
    Config(ConfigError),
    Runtime(anyhow::Error),
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Config(e)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Runtime(e.into())
    }
}

/// Runs the command line and returns the process exit code.
/// Writes a line of a command's output. A reader that went away (`links list | head -1`)
/// ends the command quietly and successfully, as Unix tools do; stdout failing otherwise
/// (a full disk) ends it with failure. Never a panic.
fn emit(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(error) = out.write_fmt(line).and_then(|()| out.write_all(b"\n")) {
        std::process::exit(i32::from(error.kind() != std::io::ErrorKind::BrokenPipe));
    }
}

/// `println!` through [`emit`].
macro_rules! say {
    ($($arg:tt)*) => {
        emit(format_args!($($arg)*))
    };
}

pub async fn run(cli: Cli) -> ExitCode {
    let env = match Env::from_process() {
        Ok(env) => env,
        Err(e) => return report(Failure::Config(e)),
    };
    let command = cli.command.unwrap_or(Command::Serve);
    // Only a running bot has traces worth exporting.
    telemetry::init(&env, matches!(command, Command::Serve));
    let outcome = match command {
        Command::Serve => serve(&env).await,
        Command::Check => check(&env).await,
        Command::Migrate => migrate(&env).await,
        Command::Keys(KeysCommand::Generate) => {
            say!("{}", generate_key().expose_secret());
            eprintln!(
                "Add it in front of TOKEN_ENCRYPTION_KEYS as <id>:<key> (e.g. k2:<key>,k1:<old key>), then run `keys rotate`."
            );
            Ok(())
        }
        Command::Keys(KeysCommand::Rotate { batch_size }) => rotate(&env, batch_size).await,
        Command::Links(LinksCommand::List { team }) => list_links(&env, team.as_ref()).await,
        Command::Links(LinksCommand::Remove { team, user }) => remove_link(&env, &team, &user).await,
        Command::Health { ready } => health(&env, ready).await,
    };
    // Spans and log lines still queued go out first, but a stalled collector or log pipe
    // cannot hold up the exit.
    telemetry::flush(EXIT_FLUSH);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => report(failure),
    }
}

fn report(failure: Failure) -> ExitCode {
    match failure {
        Failure::Config(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
        Failure::Runtime(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(env: &Env) -> Result<(), Failure> {
    let config = Config::load(env)?;
    let app = Application::build(&config, Dependencies::for_config(&config)).await?;
    let lifecycle = app.lifecycle();
    let hard_deadline = app.drain_deadline() + SHUTDOWN_MARGIN;
    tokio::spawn(async move {
        shutdown_signal().await;
        lifecycle.begin_shutdown();
        exit_anyway_after(hard_deadline);
    });
    // Which google-adk answers, logged when known; serving does not wait for it.
    if let Some(adk) = agent::adk_of(&config.agent) {
        tokio::spawn(async move { adk.probe_version().await.log() });
    }
    tracing::info!(addr = %app.local_addr(), "listening");
    app.run_until_stopped().await?;
    Ok(())
}

/// Ends the process `after` from now with [`EXIT_SHUTDOWN_DEADLINE`], whatever is still
/// running: a drain that hangs (a database that stopped answering, a write to a stalled
/// pipe) must not keep a process that was told to stop.
fn exit_anyway_after(after: Duration) {
    let watchdog = std::thread::Builder::new()
        .name("shutdown-deadline".into())
        .spawn(move || {
            std::thread::sleep(after);
            tracing::error!(
                deadline_s = after.as_secs(),
                "shutdown did not finish in time; exiting anyway"
            );
            telemetry::flush(EXIT_FLUSH);
            std::process::exit(EXIT_SHUTDOWN_DEADLINE);
        });
    if let Err(error) = watchdog {
        tracing::warn!(error = %error, "could not start the shutdown deadline");
    }
}

async fn health(env: &Env, ready: bool) -> Result<(), Failure> {
    let addr = config::probe_addr(env)?;
    let path = if ready { "/readyz" } else { "/healthz" };
    let client = reqwest::Client::builder()
        .timeout(HEALTH_TIMEOUT)
        .no_proxy()
        .build()
        .context("could not build an HTTP client")?;
    let response = client
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .with_context(|| format!("{path} on {addr} did not answer"))?;
    match response.status() {
        reqwest::StatusCode::OK => {
            say!("{path} ok ({addr})");
            Ok(())
        }
        status => Err(anyhow::anyhow!("{path} on {addr} answered {status}").into()),
    }
}

async fn check(env: &Env) -> Result<(), Failure> {
    let config = Config::load(env)?;
    let mode = if config.slack.app_token.is_some() {
        "Socket Mode"
    } else {
        "HTTP events"
    };
    let agent = config.agent.kind.as_str();
    say!(
        "configuration  ok ({mode}; agent: {agent}; keys: primary {})",
        config.vault.primary_key_id()
    );
    let metrics_on = config.metrics_bind_addr.map_or_else(
        || format!("{} with everything else", config.bind_addr),
        |addr| format!("{addr} only (METRICS_BIND_ADDR)"),
    );
    let clients = match config.trusted_proxies.len() {
        0 => "the TCP peer".to_owned(),
        n => format!("X-Forwarded-For via {n} trusted proxy range(s)"),
    };
    say!("exposure       /metrics on {metrics_on}; linking rate-limited per client, from {clients}");
    let spaces = &config.agent.genie_spaces;
    if !spaces.is_empty() {
        // Spaces are reached only as a person (the bot has no identity of its own at
        // Databricks): a wrong id shows in the first answer, in Databricks' words.
        let mapped: Vec<String> = spaces
            .channels()
            .map(|(channel, space)| format!("{channel} → {space}"))
            .collect();
        let default = spaces.default_space().unwrap_or("none");
        say!(
            "genie          ok (default space {default}; {} channel(s) mapped{}{})",
            mapped.len(),
            if mapped.is_empty() { "" } else { ": " },
            mapped.join(", ")
        );
    }
    if config.identity_check == IdentityCheck::None {
        say!(
            "linking        WARNING: LINK_IDENTITY_CHECK=none: whoever opens a person's link can connect any \
             Databricks account to that person's Slack user"
        );
    }
    match config::traces(env) {
        Ok(Traces::Off(why)) => say!("traces         off ({why})"),
        Ok(Traces::On(export)) => {
            let route = format!(
                "{} to {}; service {}; sampler {}",
                export.protocol.as_str(),
                export.endpoint,
                export.service_name,
                export.sampler.name
            );
            // Spans are only dropped when the collector is down: answers go on.
            match telemetry::probe_collector(&export).await {
                Ok(()) => say!("traces         ok ({route})"),
                Err(why) => say!(
                    "traces         WARNING: the collector did not take an empty export ({why}); spans would be \
                     dropped, answers are unaffected ({route})"
                ),
            }
        }
        // Optional: `serve` runs without them rather than not at all.
        Err(problems) => {
            for problem in problems.0 {
                say!(
                    "traces         WARNING: {}: {}; `serve` exports no traces until this is fixed",
                    problem.var,
                    problem.expected
                );
            }
        }
    }
    let database = match Store::connect(&config.database).await {
        Ok(store) => {
            let probe = async {
                store.ping().await?;
                let pending = store.pending_migrations().await?;
                // Counted on the schema `serve` would run on; an older one is migrated first.
                let unknown = match pending {
                    0 => Some(unknown_keys(&store, &config.vault).await?),
                    _ => None,
                };
                Ok::<_, sqlx::Error>((pending, unknown))
            }
            .await;
            store.close().await;
            probe.map_err(anyhow::Error::from)
        }
        Err(e) => Err(e),
    };
    let mut healthy = true;
    if let Ok((_, Some(unknown))) = &database {
        if unknown.is_empty() {
            say!("stored secrets ok (all under configured keys)");
        } else {
            say!("stored secrets FAILED: {}", sealed_under_unknown_keys(unknown));
            healthy = false;
        }
    }
    match database.map(|(pending, _)| pending) {
        Ok(0) => say!("database       ok ({})", describe(&config.database)),
        Ok(n) => say!(
            "database       ok ({}); {n} migration(s) pending, applied by `serve` or `migrate`",
            describe(&config.database)
        ),
        Err(e) => {
            say!("database       FAILED: {e:#}");
            healthy = false;
        }
    }
    match SlackApi::new(&config.slack.api_url, &config.slack.bot_token)?
        .auth_test()
        .await
    {
        Ok(bot) => say!(
            "slack          ok (workspace {} {}, bot user {})",
            bot.team,
            bot.team_id,
            bot.user_id
        ),
        Err(e) => {
            say!("slack          FAILED: auth.test: {e}");
            healthy = false;
        }
    }
    let authority = Authority::new(&config.databricks, &config.public_base_url, http_client());
    match authority.discovery().await {
        Ok(discovery) => say!(
            "databricks     ok ({}: sign-in at {} discovered at {}; token endpoint {})",
            authority.mode(),
            authority.provider(),
            authority.discovery_url(),
            discovery.token_endpoint
        ),
        Err(e) => {
            say!(
                "databricks     FAILED: {e} ({}: sign-in at {})",
                authority.mode(),
                authority.provider()
            );
            healthy = false;
        }
    }
    if let Some(probe) = authority.probe_exchange().await {
        match probe {
            Ok(url) => say!("exchange       ok (the workspace's token exchange answers at {url})"),
            Err(e) => {
                say!("exchange       FAILED: {e}");
                healthy = false;
            }
        }
    }
    // A warning only: the bot runs with any ADK, the asker's token just does not reach
    // the agent on an old one.
    if let Some(adk) = agent::adk_of(&config.agent) {
        say!("adk            {}", adk.probe_version().await);
    }
    if healthy {
        Ok(())
    } else {
        Err(anyhow::anyhow!("check failed").into())
    }
}

fn describe(database: &DatabaseConfig) -> String {
    match database {
        DatabaseConfig::Sqlite { path } => format!("sqlite {}", path.display()),
        DatabaseConfig::Postgres { .. } => "postgres".to_owned(),
    }
}

async fn migrate(env: &Env) -> Result<(), Failure> {
    let database = DatabaseConfig::from_env(env)?;
    let store = Store::connect(&database).await?;
    let pending = store.pending_migrations().await?;
    store.migrate().await?;
    store.close().await;
    say!("migrations applied: {pending} ({})", describe(&database));
    Ok(())
}

async fn rotate(env: &Env, batch_size: i64) -> Result<(), Failure> {
    let (database, vault) = vault_and_database(env)?;
    let store = Store::open(&database).await?;
    let primary = vault.primary_key_id().clone();
    let total = rotate_all(&store, &vault, batch_size, |batch| {
        eprintln!(
            "batch: {} re-encrypted, {} changed meanwhile, {} unreadable",
            batch.resealed,
            batch.changed_meanwhile,
            batch.failures.len()
        );
    })
    .await?;
    say!(
        "re-encrypted {} link(s) under key {primary}; {} already re-encrypted by a concurrent refresh",
        total.resealed,
        total.changed_meanwhile
    );
    // Pending links' secrets are bound to the workspace; without it they are left to
    // expire (they live ten minutes).
    match env.get("DATABRICKS_HOST").map(WorkspaceHost::parse) {
        Some(Ok(workspace)) => {
            let pending = rotate_pending_links(&store, &vault, &workspace).await?;
            say!(
                "re-encrypted {} sign-in(s) in progress; {} could not be opened and will fail",
                pending.resealed,
                pending.unreadable
            );
        }
        _ => say!("sign-ins in progress left as they are (DATABRICKS_HOST is not set); they expire in 10 minutes"),
    }
    store.close().await;
    if total.failures.is_empty() {
        return Ok(());
    }
    for failure in &total.failures {
        eprintln!(
            "  could not open the link of {} in {}: {}",
            failure.user, failure.team, failure.error
        );
    }
    Err(anyhow::anyhow!(
        "{} link(s) could not be re-encrypted; they stay as they are (restore the missing key, or remove them with `links remove`)",
        total.failures.len()
    )
    .into())
}

async fn list_links(env: &Env, team: Option<&TeamId>) -> Result<(), Failure> {
    let database = DatabaseConfig::from_env(env)?;
    let store = Store::open(&database).await?;
    let links = store.list_links(team).await?;
    store.close().await;
    say!("{}", links_table(&links).trim_end_matches('\n'));
    Ok(())
}

/// The `links list` table: ids, Databricks user, status and dates — never secrets.
fn links_table(links: &[Link]) -> String {
    let mut rows = vec![[
        "TEAM".to_owned(),
        "USER".to_owned(),
        "DATABRICKS USER".to_owned(),
        "STATUS".to_owned(),
        "KEY".to_owned(),
        "LINKED".to_owned(),
        "LAST USED".to_owned(),
    ]];
    for link in links {
        rows.push([
            link.team.to_string(),
            link.user.to_string(),
            link.databricks_user_name.clone(),
            link.status.as_str().to_owned(),
            link.key_id.clone(),
            format_time(Some(link.linked_at)),
            format_time(link.last_used_at),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|col| rows.iter().map(|r| r[col].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if links.is_empty() {
        out.push_str("(no links)\n");
    }
    out
}

fn format_time(seconds: Option<i64>) -> String {
    seconds
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map_or_else(|| "-".to_owned(), |t| t.strftime("%Y-%m-%d %H:%MZ").to_string())
}

async fn remove_link(env: &Env, team: &TeamId, user: &UserId) -> Result<(), Failure> {
    let database = DatabaseConfig::from_env(env)?;
    let store = Store::open(&database).await?;
    let removed = store
        .delete_link(team, user, Actor::AdminCli, SystemClock.now())
        .await?;
    store.close().await;
    if removed {
        say!("removed the link of {user} in {team}");
    } else {
        say!("{user} in {team} has no link; nothing to remove");
    }
    Ok(())
}
