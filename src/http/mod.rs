//! The HTTP surface: routes, shared state and the middleware every request passes through
//! (metrics, a tracing span naming the matched route, a body limit and a timeout).

pub mod health;
pub mod link;
pub mod pages;
pub mod slack;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRef, MatchedPath, Request};
use axum::http::StatusCode;
use axum::routing::get;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use tracing::Span;

use crate::lifecycle::Lifecycle;
use crate::linking::LinkFlow;
use crate::metrics::{self, Metrics};
use crate::store::Store;

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
}

impl FromRef<AppState> for Arc<Metrics> {
    fn from_ref(state: &AppState) -> Self {
        state.metrics.clone()
    }
}

/// Builds the router with every route and the middleware stack.
pub fn router(state: AppState) -> Router {
    let slack_routes = state.slack.clone().map(slack::router).unwrap_or_default();
    let link_routes = link::router(state.link.clone());
    let registry = state.metrics.clone();
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::render))
        .with_state(state)
        .merge(slack_routes)
        .merge(link_routes)
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
    tracing::info_span!("http", method = %request.method(), route, status = tracing::field::Empty)
}
