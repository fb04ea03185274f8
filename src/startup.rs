//! Building and running the service: bind, serve, and shut down gracefully.
//!
//! Shutdown (SIGTERM or Ctrl-C) flips readiness to false, stops accepting connections and
//! lets in-flight requests finish, up to a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::http::{self, AppState, metrics::Metrics};
use crate::store::Store;

/// How long in-flight work may take to finish once shutdown begins.
pub const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(20);

/// Whether the process is running or draining; shared by everything that must stop.
#[derive(Clone, Debug, Default)]
pub struct Lifecycle {
    shutdown: CancellationToken,
}

impl Lifecycle {
    /// Begins shutdown: readiness turns false and no new work is accepted.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Completes when shutdown begins.
    pub async fn draining(&self) {
        self.shutdown.cancelled().await
    }
}

/// A bound, ready-to-run service.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    drain_deadline: Duration,
}

impl Application {
    /// Binds `addr` (port 0 picks a free port) over an opened, migrated store.
    pub async fn bind(addr: SocketAddr, store: Store) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("could not listen on {addr} (BIND_ADDR)"))?;
        Ok(Self {
            listener,
            state: AppState {
                store,
                metrics: Arc::new(Metrics::new()),
                lifecycle: Lifecycle::default(),
            },
            drain_deadline: DEFAULT_DRAIN_DEADLINE,
        })
    }

    /// Changes how long shutdown waits for in-flight work.
    pub fn with_drain_deadline(mut self, deadline: Duration) -> Self {
        self.drain_deadline = deadline;
        self
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// A handle to start shutdown from elsewhere (signals, tests).
    pub fn lifecycle(&self) -> Lifecycle {
        self.state.lifecycle.clone()
    }

    /// Serves until shutdown begins, then drains in-flight requests until the deadline.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let lifecycle = self.state.lifecycle.clone();
        let store = self.state.store.clone();
        let router = http::router(self.state);
        let graceful = lifecycle.clone();
        let mut server = tokio::spawn(
            axum::serve(self.listener, router)
                .with_graceful_shutdown(async move { graceful.draining().await })
                .into_future(),
        );
        tokio::select! {
            finished = &mut server => {
                finished.context("HTTP server task failed")?.context("HTTP server failed")?;
                return Ok(());
            }
            () = lifecycle.draining() => {}
        }
        tracing::info!(
            deadline_s = self.drain_deadline.as_secs(),
            "shutting down: draining in-flight requests"
        );
        let outcome = match tokio::time::timeout(self.drain_deadline, &mut server).await {
            Ok(finished) => finished
                .context("HTTP server task failed")?
                .context("HTTP server failed"),
            Err(_) => {
                server.abort();
                tracing::warn!("drain deadline passed; remaining requests were cut off");
                Ok(())
            }
        };
        store.close().await;
        tracing::info!("stopped");
        outcome
    }
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
