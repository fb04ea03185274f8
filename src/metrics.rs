//! `/metrics`: Prometheus text exposition of request counts and latencies, of answers by
//! agent and outcome, and of token-endpoint refusals an operator must act on.
//!
//! Labels are the HTTP method, the *matched route template* (`/link/{id}`, never the real
//! path, which may carry a link id), the status code, the agent's name and a fixed set of
//! outcomes, so no secret and no unbounded value ever becomes a label.

use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: String,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnswerLabels {
    agent: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: &'static str,
}

/// How a question with a linked asker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerOutcome {
    /// An answer was posted.
    Answered,
    /// Databricks said the person may not see it (their answer, told privately).
    NoAccess,
    /// The agent could not answer; the person was told why.
    Failed,
    /// Will be retried (rate limits, timeouts, 5xx).
    Retry,
    /// The person disconnected meanwhile; the answer was dropped.
    Dropped,
}

impl AnswerOutcome {
    fn as_str(self) -> &'static str {
        match self {
            AnswerOutcome::Answered => "answered",
            AnswerOutcome::NoAccess => "no_access",
            AnswerOutcome::Failed => "failed",
            AnswerOutcome::Retry => "retry",
            AnswerOutcome::Dropped => "dropped",
        }
    }
}

/// Why spans were dropped instead of exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanDrop {
    /// The export queue was full: the collector is slow or down.
    QueueFull,
    /// The collector refused the batch, or did not answer in time.
    ExportFailed,
}

/// Spans dropped, process-wide like [`LOG_LINES_DROPPED`]: one exporter serves the
/// process.
static SPANS_DROPPED: LazyLock<Family<ReasonLabels, Counter>> =
    LazyLock::new(|| counted_from_zero(&["queue_full", "export_failed"]));

/// A counter family with each of `reasons` shown from the start, at 0: a series that first
/// appears at its first count (say, 40 spans dropped at once) gives `increase()` nothing to
/// compare, and its alert would miss the first burst.
fn counted_from_zero(reasons: &[&'static str]) -> Family<ReasonLabels, Counter> {
    let family = Family::default();
    for &reason in reasons {
        drop(family.get_or_create(&ReasonLabels { reason }));
    }
    family
}

/// Counts `spans` dropped for `reason`.
pub fn count_dropped_spans(reason: SpanDrop, spans: u64) {
    let reason = match reason {
        SpanDrop::QueueFull => "queue_full",
        SpanDrop::ExportFailed => "export_failed",
    };
    SPANS_DROPPED.get_or_create(&ReasonLabels { reason }).inc_by(spans);
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Why a log line was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogDrop {
    /// The writer's queue was full: the log pipe is not being read fast enough.
    QueueFull,
    /// Writing it failed (`EPIPE`: the reader is gone; `ENOSPC`).
    WriteFailed,
}

/// Log lines dropped. The log writer is the process's, not one service's, so this counter
/// is too: every registry shows the same one.
static LOG_LINES_DROPPED: LazyLock<Family<ReasonLabels, Counter>> =
    LazyLock::new(|| counted_from_zero(&["queue_full", "write_failed"]));

/// Counts a log line dropped for `reason`.
pub fn count_dropped_log_line(reason: LogDrop) {
    let reason = match reason {
        LogDrop::QueueFull => "queue_full",
        LogDrop::WriteFailed => "write_failed",
    };
    LOG_LINES_DROPPED.get_or_create(&ReasonLabels { reason }).inc();
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlackCallLabels {
    method: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The states a job can be in (`jobs.state`).
const JOB_STATES: [&str; 5] = ["queued", "running", "waiting", "done", "failed"];
/// The statuses a link can have (`links.status`).
const LINK_STATUSES: [&str; 2] = ["active", "needs_relink"];

/// How a refresh of a person's access token ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// New tokens, stored.
    Refreshed,
    /// Another process refreshed first; its tokens are used.
    Superseded,
    /// The grant is dead: the person must connect again.
    NeedsRelink,
    /// The token endpoint refused the bot's own request (an operator must act).
    Misconfigured,
    /// The token endpoint was down, slow or rate limiting: tried again later.
    Transient,
    /// The stored refresh token could not be opened (its key is gone).
    Unreadable,
}

impl RefreshOutcome {
    /// Its label: `token_refreshes_total{outcome}`, and the token span's `refresh`.
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshOutcome::Refreshed => "refreshed",
            RefreshOutcome::Superseded => "superseded",
            RefreshOutcome::NeedsRelink => "needs_relink",
            RefreshOutcome::Misconfigured => "misconfigured",
            RefreshOutcome::Transient => "transient",
            RefreshOutcome::Unreadable => "unreadable",
        }
    }
}

/// The process's metrics registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
    answers: Family<AnswerLabels, Counter>,
    agent_duration: Family<AgentLabels, Histogram, fn() -> Histogram>,
    token_refusals: Family<CodeLabels, Counter>,
    feedback: Family<FeedbackLabels, Counter>,
    jobs: Family<StateLabels, Gauge>,
    oldest_due_job_age: Gauge,
    links: Family<StatusLabels, Gauge>,
    slack_calls: Family<SlackCallLabels, Counter>,
    refreshes: Family<OutcomeLabels, Counter>,
    breaker_open_until: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeedbackLabels {
    agent: String,
    rating: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with the HTTP metrics registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests served", requests.clone());
        // 1 ms .. ~16 s
        let latency: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 15)));
        registry.register(
            "http_request_duration_seconds",
            "Time to produce an HTTP response",
            latency.clone(),
        );
        let answers = Family::<AnswerLabels, Counter>::default();
        registry.register(
            "answers",
            "Questions of linked people, by agent and outcome",
            answers.clone(),
        );
        // 100 ms .. ~14 min
        let agent_duration: Family<AgentLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.1, 2.0, 14)));
        registry.register(
            "agent_duration_seconds",
            "Time an agent took to answer (or fail)",
            agent_duration.clone(),
        );
        let token_refusals = Family::<CodeLabels, Counter>::default();
        registry.register(
            "token_endpoint_refusals",
            "Refreshes the token endpoint refused for a reason of the bot's (an operator must act), by OAuth code",
            token_refusals.clone(),
        );
        let feedback = Family::<FeedbackLabels, Counter>::default();
        registry.register(
            "answer_feedback",
            "Thumbs up or down on answers, by agent and rating (a repeated click counts once)",
            feedback.clone(),
        );
        let jobs = Family::<StateLabels, Gauge>::default();
        registry.register(
            "jobs",
            "Jobs in the database by state, as of the scrape (the same on every replica)",
            jobs.clone(),
        );
        let oldest_due_job_age = Gauge::default();
        registry.register(
            "oldest_due_job_age_seconds",
            "How long the oldest queued job has been due without a worker taking it (0: none)",
            oldest_due_job_age.clone(),
        );
        let links = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "links",
            "People's Databricks links by status, as of the scrape",
            links.clone(),
        );
        let slack_calls = Family::<SlackCallLabels, Counter>::default();
        registry.register(
            "slack_api_calls",
            "Slack Web API calls by method and outcome (ok, error, rate_limited, timeout, unreachable)",
            slack_calls.clone(),
        );
        let refreshes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "token_refreshes",
            "Refreshes of people's access tokens by outcome",
            refreshes.clone(),
        );
        let breaker_open_until = Gauge::default();
        registry.register(
            "agent_breaker_open_until_timestamp_seconds",
            "Until when this process's breaker holds questions back from the agent (open while later than now)",
            breaker_open_until.clone(),
        );
        registry.register(
            "log_lines_dropped",
            "Log lines dropped rather than block: the log pipe was full (queue_full) or failing (write_failed)",
            LOG_LINES_DROPPED.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Spans dropped rather than hold up an answer: the export queue was full (queue_full) or the collector failed (export_failed)",
            SPANS_DROPPED.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            requests,
            latency,
            answers,
            agent_duration,
            token_refusals,
            feedback,
            jobs,
            oldest_due_job_age,
            links,
            slack_calls,
            refreshes,
            breaker_open_until,
        }
    }

    /// Sets the queue's gauges: jobs per state (as `store` counts them; a state with none
    /// is 0) and how long the oldest due job has waited, in seconds.
    pub fn set_queue(&self, per_state: &[(String, i64)], oldest_due_age: i64) {
        for state in JOB_STATES {
            self.jobs
                .get_or_create(&StateLabels { state })
                .set(count_of(per_state, state));
        }
        self.oldest_due_job_age.set(oldest_due_age.max(0));
    }

    /// Sets the links per status.
    pub fn set_links(&self, per_status: &[(String, i64)]) {
        for status in LINK_STATUSES {
            self.links
                .get_or_create(&StatusLabels { status })
                .set(count_of(per_status, status));
        }
    }

    /// Counts a Slack Web API call of `method` that ended in `outcome`.
    pub fn record_slack_call(&self, method: &'static str, outcome: &'static str) {
        self.slack_calls
            .get_or_create(&SlackCallLabels { method, outcome })
            .inc();
    }

    /// Counts a refresh of a person's access token.
    pub fn record_refresh(&self, outcome: RefreshOutcome) {
        self.refreshes
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// Notes that the agent's breaker holds questions back until `unix_seconds`.
    pub fn breaker_open_until(&self, unix_seconds: i64) {
        self.breaker_open_until.set(unix_seconds);
    }

    /// Counts one question of a linked person that `agent` worked on `seconds`.
    pub fn record_answer(&self, agent: &str, outcome: AnswerOutcome, seconds: f64) {
        self.answers
            .get_or_create(&AnswerLabels {
                agent: agent.to_owned(),
                outcome: outcome.as_str(),
            })
            .inc();
        self.agent_duration
            .get_or_create(&AgentLabels {
                agent: agent.to_owned(),
            })
            .observe(seconds);
    }

    /// Counts a refresh the token endpoint refused with `code` (one of a fixed few).
    pub fn record_token_refusal(&self, code: &'static str) {
        self.token_refusals.get_or_create(&CodeLabels { code }).inc();
    }

    /// Counts a rating (`positive` or `negative`) of an answer of `agent`.
    pub fn record_feedback(&self, agent: &str, rating: &'static str) {
        self.feedback
            .get_or_create(&FeedbackLabels {
                agent: agent.to_owned(),
                rating,
            })
            .inc();
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String cannot fail");
        out
    }
}

/// The count `counts` (as a `GROUP BY` gives them) holds for `name`; 0 when it has none.
fn count_of(counts: &[(String, i64)], name: &str) -> i64 {
    counts.iter().find(|(n, _)| n == name).map_or(0, |(_, count)| *count)
}

/// Only well-known methods become labels; anything else is `OTHER`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "OTHER",
    }
}

/// Middleware counting every request and timing it.
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics
        .latency
        .get_or_create(&RouteLabels {
            method,
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// `GET /metrics`.
pub async fn render(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_link_breaker_and_slack_series_render_with_every_state_present() {
        let metrics = Metrics::new();
        metrics.set_queue(&[("queued".into(), 3), ("done".into(), 7)], 42);
        metrics.set_links(&[("needs_relink".into(), 2)]);
        metrics.breaker_open_until(1_800_000_030);
        metrics.record_slack_call("chat.postMessage", "rate_limited");
        metrics.record_refresh(RefreshOutcome::NeedsRelink);
        let text = metrics.render();
        for line in [
            r#"jobs{state="queued"} 3"#,
            r#"jobs{state="running"} 0"#,
            r#"jobs{state="done"} 7"#,
            "oldest_due_job_age_seconds 42",
            r#"links{status="active"} 0"#,
            r#"links{status="needs_relink"} 2"#,
            "agent_breaker_open_until_timestamp_seconds 1800000030",
            r#"slack_api_calls_total{method="chat.postMessage",outcome="rate_limited"} 1"#,
            r#"token_refreshes_total{outcome="needs_relink"} 1"#,
        ] {
            assert!(text.contains(line), "{line}:\n{text}");
        }
    }
}
