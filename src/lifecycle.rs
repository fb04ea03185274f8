//! Whether the process is running or draining, and the signals that end it.

use tokio_util::sync::CancellationToken;

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
