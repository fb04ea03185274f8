//! Logging: `tracing` to stderr, pretty on a terminal and JSON elsewhere, level from
//! `RUST_LOG`. Nothing here ever formats a secret: spans carry ids and route templates.

use tracing_subscriber::EnvFilter;

use crate::config::{Env, LogFormat};

/// Default filter when `RUST_LOG` is unset: our own info, quieter dependencies.
const DEFAULT_FILTER: &str = "info,sqlx=warn,hyper=warn,tower_http=info";

/// Installs the global subscriber, reading `RUST_LOG` and `LOG_FORMAT` from `env`. Safe to
/// call more than once (later calls do nothing).
pub fn init(env: &Env) {
    let filter = env
        .get("RUST_LOG")
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match LogFormat::from_env(env) {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}
