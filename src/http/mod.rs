//! The HTTP surface: routes, shared state and the middleware every request passes through
//! (metrics, a tracing span naming the matched route, a body limit and a timeout), plus a
//! per-client rate limit on the linking routes.
//!
//! `/metrics` is served with the other routes, or, when `METRICS_BIND_ADDR` is set, only on
//! a listener of its own with the probes ([`metrics_router`]), so the public address does
//! not show request counts and latencies to the world.

pub mod health;
pub mod limit;
pub mod link;
pub mod pages;
pub mod slack;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRef, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use tracing::Span;

use crate::clock::SharedClock;
use crate::lifecycle::Lifecycle;
use crate::linking::LinkFlow;
use crate::metrics::{self, Metrics};
use crate::store::Store;
use crate::telemetry;

/// Largest request body accepted. Slack's payloads are a few KiB; the limit is enforced
/// on the raw stream, before any handler or signature check buffers it (SIG-06).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Longest a request may take end to end before it is answered 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What handlers share. Cheap to clone: everything inside is shared.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub lifecycle: Lifecycle,
    /// The Slack routes, when HTTP events are configured (a signing secret is set).
    pub slack: Option<Arc<slack::SlackRoutes>>,
    /// The linking routes.
    pub link: Arc<LinkFlow>,
    /// The per-client rate limit on the linking routes (LNK-06).
    pub link_limit: Arc<limit::ClientLimit>,
    pub clock: SharedClock,
}

/// Whether the public router serves `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsRoute {
    /// With the other routes (no `METRICS_BIND_ADDR`).
    Public,
    /// Only on its own listener, from [`metrics_router`]; the public router answers 404.
    Separate,
}

impl FromRef<AppState> for Arc<Metrics> {
    fn from_ref(state: &AppState) -> Self {
        state.metrics.clone()
    }
}

/// Builds the public router: Slack's routes, linking's (rate-limited per client), the
/// probes, and `/metrics` when it is [`MetricsRoute::Public`].
pub fn router(state: AppState, metrics_route: MetricsRoute) -> Router {
    let slack_routes = state.slack.clone().map(slack::router).unwrap_or_default();
    // `route_layer`: only requests that match a linking route count against the quota.
    let link_routes = link::router(state.link.clone()).route_layer(axum::middleware::from_fn_with_state(
        state.link_limit.clone(),
        limit::limit,
    ));
    let registry = state.metrics.clone();
    let mut own = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    if metrics_route == MetricsRoute::Public {
        own = own.route("/metrics", get(render_metrics));
    }
    let routes = own.with_state(state).merge(slack_routes).merge(link_routes);
    with_middleware(routes, registry)
}

/// Builds the router of the `METRICS_BIND_ADDR` listener: `/metrics` and the probes, for
/// Prometheus and the orchestrator on a private address.
pub fn metrics_router(state: AppState) -> Router {
    let registry = state.metrics.clone();
    let routes = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(render_metrics))
        .with_state(state);
    with_middleware(routes, registry)
}

/// How long `/metrics` waits for the database's counts before answering without them.
const GAUGE_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /metrics`: the registry, after reading the queue's and the links' gauges from the
/// database. A database that does not answer in time leaves them as they were, so the
/// rest is still scraped.
async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    let now = state.clock.now();
    let read = async {
        let per_state = state.store.jobs_per_state().await?;
        let oldest_due = state.store.oldest_due_job(now).await?;
        let per_status = state.store.links_per_status().await?;
        Ok::<_, sqlx::Error>((per_state, oldest_due, per_status))
    };
    match tokio::time::timeout(GAUGE_READ_TIMEOUT, read).await {
        Ok(Ok((per_state, oldest_due, per_status))) => {
            state
                .metrics
                .set_queue(&per_state, oldest_due.map_or(0, |due| now - due));
            state.metrics.set_links(&per_status);
        }
        Ok(Err(error)) => tracing::warn!(error = %error, "could not read the queue and link counts for /metrics"),
        Err(_) => tracing::warn!("the queue and link counts for /metrics took too long to read"),
    }
    metrics::render(State(state.metrics)).await
}

/// The middleware every request passes through, whichever listener it came to.
fn with_middleware(routes: Router, registry: Arc<Metrics>) -> Router {
    routes
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(axum::middleware::from_fn_with_state(registry, metrics::track))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(|response: &axum::response::Response, latency: Duration, span: &Span| {
                    span.record("status", response.status().as_u16());
                    if response.status().is_server_error() {
                        span.record("otel.status_code", "error");
                    }
                    tracing::info!(latency_ms = latency.as_millis() as u64, "request served");
                })
                .on_request(())
                .on_failure(()),
        )
}

/// A span per request recording the method and the matched route template only: the real
/// path may hold a link id and the query string an OAuth code or state.
fn request_span(request: &Request) -> Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    let span = match route {
        // Probes and scrapes: frequent, and nobody's question. A target outside this
        // crate's keeps them out of traces, which follow the crate's own.
        "/healthz" | "/readyz" | "/metrics" => tracing::info_span!(
            target: "probes",
            "http",
            method = %request.method(),
            route,
            status = tracing::field::Empty
        ),
        _ => tracing::info_span!(
            "http",
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            method = %request.method(),
            route,
            status = tracing::field::Empty
        ),
    };
    telemetry::describe_span(&span, "server", || format!("{} {route}", request.method()));
    span
}
