//! Building and running the service: bind, serve, and shut down gracefully.
//!
//! Shutdown (SIGTERM or Ctrl-C) flips readiness to false, stops accepting connections (on
//! both listeners, when `METRICS_BIND_ADDR` adds one) and lets in-flight requests finish,
//! up to a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::SecretString;
use tokio::net::TcpListener;

use crate::agent::{self, Agent};
use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::databricks::broker::rotation::{sealed_under_unknown_keys, unknown_keys};
use crate::http::limit::{ClientLimit, LINK_QUOTA, TrustedProxies};
use crate::http::slack::SlackRoutes;
use crate::http::{self, AppState, MetricsRoute};
use crate::intake::SlackIntake;
use crate::intake::socket_mode::SocketMode;
use crate::jobs::Handlers;
use crate::jobs::account::Account;
use crate::jobs::assistant::Assistant;
use crate::jobs::feedback::Feedback;
use crate::jobs::question::Questions;
use crate::jobs::retention::Retention;
use crate::jobs::share::Sharing;
use crate::jobs::worker::{WorkerConfig, Workers};
use crate::lifecycle::Lifecycle;
use crate::linking::LinkFlow;
use crate::services::Services;
use crate::slack::api::SlackApi;
use crate::store::Store;

/// What a running service is made of that tests (and later, other deployments) choose.
pub struct Dependencies {
    /// The clock for signatures, expiries and leases.
    pub clock: SharedClock,
    /// The agent that answers linked people's questions.
    pub agent: Arc<dyn Agent>,
    /// Worker pool settings; `None` makes a process that only accepts Slack events and
    /// leaves answering them to other processes sharing the database.
    pub workers: Option<WorkerConfig>,
}

impl Dependencies {
    /// The production choices for `config`.
    pub fn for_config(config: &Config) -> Self {
        Self {
            clock: Arc::new(SystemClock),
            agent: agent::from_config(&config.agent),
            workers: Some(WorkerConfig {
                concurrency: config.worker_concurrency as usize,
                per_user_limit: i64::from(config.worker_per_user_limit),
                ..WorkerConfig::default()
            }),
        }
    }
}

/// A bound, ready-to-run service.
pub struct Application {
    listener: TcpListener,
    /// The `METRICS_BIND_ADDR` listener, when there is one.
    metrics_listener: Option<TcpListener>,
    state: AppState,
    workers: Option<Workers>,
    socket_mode: Option<(SlackApi, SecretString, SlackIntake)>,
    clock: SharedClock,
    drain_deadline: Duration,
}

impl Application {
    /// Opens (and migrates) the store, builds the Slack client, the intake and the worker
    /// pool, and binds `BIND_ADDR` and `METRICS_BIND_ADDR` when set (port 0 picks a free
    /// port). Nothing runs until
    /// [`Application::run_until_stopped`].
    pub async fn build(config: &Config, deps: Dependencies) -> anyhow::Result<Self> {
        let services = Services::build(config, deps.clock.clone()).await?;
        // CRY-06: secrets under a key no longer configured are refused all at once, not
        // discovered one person at a time as their questions fail.
        let unknown = unknown_keys(&services.store, &config.vault).await?;
        if !unknown.is_empty() {
            anyhow::bail!("{}", sealed_under_unknown_keys(&unknown));
        }
        let intake = SlackIntake::new(&services);
        let workers = deps.workers.map(|worker_config| {
            let handlers = Handlers {
                questions: Questions::new(&services, deps.agent, config.answer_visibility, config.charts),
                share: Sharing::new(&services),
                account: Account::new(&services),
                feedback: Feedback::new(&services),
                assistant: Assistant::new(&services),
            };
            Workers::new(
                services.store.clone(),
                services.clock.clone(),
                Arc::new(handlers),
                worker_config,
                services.wake.clone(),
            )
        });
        let slack_routes = config
            .slack
            .signing_secret
            .clone()
            .map(|secret| Arc::new(SlackRoutes::new(secret, intake.clone(), services.clock.clone())));
        let socket_mode = config
            .slack
            .app_token
            .clone()
            .map(|token| (services.slack.clone(), token, intake));
        let listener = TcpListener::bind(config.bind_addr)
            .await
            .with_context(|| format!("could not listen on {} (BIND_ADDR)", config.bind_addr))?;
        let metrics_listener = match config.metrics_bind_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("could not listen on {addr} (METRICS_BIND_ADDR)"))?,
            ),
            None => None,
        };
        Ok(Self {
            listener,
            metrics_listener,
            state: AppState {
                store: services.store.clone(),
                metrics: services.metrics.clone(),
                lifecycle: Lifecycle::default(),
                slack: slack_routes,
                link: Arc::new(LinkFlow::new(&services, config)),
                link_limit: Arc::new(ClientLimit::new(
                    LINK_QUOTA,
                    TrustedProxies::new(config.trusted_proxies.clone()),
                )),
                clock: services.clock.clone(),
            },
            workers,
            socket_mode,
            clock: deps.clock,
            drain_deadline: config.drain_deadline,
        })
    }

    /// Changes how long shutdown waits for in-flight work (`SHUTDOWN_DRAIN_SECONDS`).
    pub fn with_drain_deadline(mut self, deadline: Duration) -> Self {
        self.drain_deadline = deadline;
        self
    }

    /// How long shutdown waits for in-flight work.
    pub fn drain_deadline(&self) -> Duration {
        self.drain_deadline
    }

    /// Changes the per-client quota on the linking routes (default [`LINK_QUOTA`]), for
    /// tests that run many linking flows from one address in a moment.
    pub fn with_link_quota(mut self, quota: governor::Quota) -> Self {
        self.state.link_limit = Arc::new(self.state.link_limit.with_quota(quota));
        self
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// The address the metrics listener actually bound, when `METRICS_BIND_ADDR` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .map(|listener| listener.local_addr().expect("a bound listener has an address"))
    }

    /// Where `/metrics` is served from: the public router unless it has its own listener.
    fn metrics_route(&self) -> MetricsRoute {
        if self.metrics_listener.is_some() {
            MetricsRoute::Separate
        } else {
            MetricsRoute::Public
        }
    }

    /// A handle to start shutdown from elsewhere (signals, tests).
    pub fn lifecycle(&self) -> Lifecycle {
        self.state.lifecycle.clone()
    }

    /// The service's public routes over its own state, to serve in-process (tests drive
    /// them with `oneshot`); `run_until_stopped` serves the same on `BIND_ADDR`. Requests
    /// served this way carry no peer address, so linking's rate limit does not apply.
    pub fn router(&self) -> axum::Router {
        http::router(self.state.clone(), self.metrics_route())
    }

    /// The store the service uses.
    pub fn store(&self) -> Store {
        self.state.store.clone()
    }

    /// Serves HTTP, runs the workers and (if configured) Socket Mode until shutdown
    /// begins; then stops taking work and drains what is in flight until the deadline.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let metrics_route = self.metrics_route();
        let lifecycle = self.state.lifecycle.clone();
        let store = self.state.store.clone();
        let socket_mode = match self.socket_mode {
            Some((api, token, intake)) => Some(SocketMode::start(&api, &token, intake).await?),
            None => None,
        };
        let workers = self
            .workers
            .map(|workers| tokio::spawn(workers.run(lifecycle.clone(), self.drain_deadline)));
        // The retention purge, on the clock the service was given.
        let retention = tokio::spawn(Retention::new(store.clone(), self.clock.clone()).run(lifecycle.clone()));
        let router = http::router(self.state.clone(), metrics_route);
        let metrics = self
            .metrics_listener
            .map(|listener| (listener, http::metrics_router(self.state)));
        let mut server = tokio::spawn(serve(self.listener, router, metrics, lifecycle.clone()));
        let early = tokio::select! {
            finished = &mut server => Some(finished),
            () = lifecycle.draining() => None,
        };
        if let Some(socket_mode) = socket_mode {
            socket_mode.stop().await;
        }
        let outcome = match early {
            Some(finished) => {
                lifecycle.begin_shutdown();
                finished
                    .context("HTTP server task failed")?
                    .context("HTTP server failed")
            }
            None => {
                tracing::info!(
                    deadline_s = self.drain_deadline.as_secs(),
                    "shutting down: draining in-flight work"
                );
                match tokio::time::timeout(self.drain_deadline, &mut server).await {
                    Ok(finished) => finished
                        .context("HTTP server task failed")?
                        .context("HTTP server failed"),
                    Err(_) => {
                        server.abort();
                        tracing::warn!("drain deadline passed; remaining requests were cut off");
                        Ok(())
                    }
                }
            }
        };
        if let Some(workers) = workers
            && workers.await.is_err()
        {
            tracing::error!("the worker pool panicked");
        }
        if retention.await.is_err() {
            tracing::error!("the retention task panicked");
        }
        store.close().await;
        tracing::info!("stopped");
        outcome
    }
}

/// Serves `router` on `listener`, and the metrics router on its own listener when there is
/// one, until shutdown begins; then both stop accepting and finish what is in flight.
/// The public router is served with each connection's peer address, the key of linking's
/// rate limit.
async fn serve(
    listener: TcpListener,
    router: axum::Router,
    metrics: Option<(TcpListener, axum::Router)>,
    lifecycle: Lifecycle,
) -> std::io::Result<()> {
    let stopping = |lifecycle: Lifecycle| async move { lifecycle.draining().await };
    let public = axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(stopping(lifecycle.clone()))
        .into_future();
    match metrics {
        None => public.await,
        Some((listener, router)) => {
            let metrics = axum::serve(listener, router)
                .with_graceful_shutdown(stopping(lifecycle))
                .into_future();
            tokio::try_join!(public, metrics).map(|_| ())
        }
    }
}
