//! What the server exposes, and to whom: `/metrics` on a listener of its own
//! (`METRICS_BIND_ADDR`), and the per-client rate limit on the linking routes (LNK-06),
//! keyed by the TCP peer or, behind `TRUSTED_PROXIES`, by `X-Forwarded-For`.
//!
//! The limit is the real one ([`LINK_QUOTA`]: bursts of 20, one more every 2 s), not the
//! test harness's default: the first 20 requests always pass, and a 429 must come within
//! the next few however slow the machine.

use std::time::Duration;

use crate::common::TestDb;
use crate::common::app::{Options, TestApp, build_offline};
use databricks_slack_bot::http::limit::LINK_QUOTA;
use tokio::net::TcpStream;

/// Requests beyond the burst within which a 429 must come (one refill per 2 s, so this
/// many requests would have to take 20 s to all pass).
const GRACE: usize = 10;

/// The app with the real quota on linking, and `env` besides the usual test configuration.
async fn spawn(env: &[(&'static str, &str)]) -> TestApp {
    TestApp::spawn_with(Options {
        extra_env: env.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        link_quota: LINK_QUOTA,
        ..Options::default()
    })
    .await
}

fn burst() -> usize {
    LINK_QUOTA.burst_size().get() as usize
}

/// `GET path` with `X-Forwarded-For: forwarded` when given; the status, `Retry-After`
/// and body.
async fn get(app: &TestApp, path: &str, forwarded: Option<&str>) -> (u16, Option<String>, String) {
    let mut request = app.client.get(app.url(path));
    if let Some(forwarded) = forwarded {
        request = request.header("x-forwarded-for", forwarded);
    }
    let response = request.send().await.unwrap();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (response.status().as_u16(), retry_after, response.text().await.unwrap())
}

/// Sends a burst's worth of `GET /link/{unknown}` (asserting none is limited), then more
/// until one is answered 429; that answer. `forwarded` gives each request's
/// `X-Forwarded-For`.
async fn exhaust(app: &TestApp, forwarded: impl Fn(usize) -> Option<String>) -> (u16, Option<String>, String) {
    for n in 0..burst() {
        let (status, _, _) = get(app, "/link/AAAAAAAAAAAAAAAAAAAAAA", forwarded(n).as_deref()).await;
        assert_eq!(status, 404, "request {n} of the burst was not let through");
    }
    for n in burst()..burst() + GRACE {
        let answer = get(app, "/link/AAAAAAAAAAAAAAAAAAAAAA", forwarded(n).as_deref()).await;
        if answer.0 == 429 {
            return answer;
        }
    }
    panic!("no 429 within {GRACE} requests past the burst");
}

async fn url_verification(app: &TestApp) -> u16 {
    let body = r#"{"token":"legacy","challenge":"challenge-1","type":"url_verification"}"#;
    app.post_signed("/slack/events", "application/json", body, &[])
        .await
        .status()
        .as_u16()
}

// LNK-06: past the burst, a client is told to wait — 429, Retry-After and the bot's own
// page — before any handler runs (the link id is unknown, and the OAuth callbacks share
// the allowance); Slack's routes and the probes are not limited.
#[tokio::test]
async fn a_client_walking_link_ids_is_told_to_wait_but_slack_and_the_probes_are_not_limited() {
    let app = spawn(&[]).await;
    let (status, retry_after, page) = exhaust(&app, |_| None).await;
    assert_eq!(status, 429);
    let retry_after: u64 = retry_after.expect("a Retry-After header").parse().unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After: {retry_after}");
    assert!(page.contains("<title>Too many attempts</title>"), "{page}");
    assert!(page.contains("open the link from Slack again"), "{page}");

    for callback in [
        "/oauth/databricks/callback?code=c&state=s",
        "/oauth/slack/callback?code=c&state=s",
        "/link/result",
    ] {
        assert_eq!(get(&app, callback, None).await.0, 429, "{callback}");
    }
    for _ in 0..burst() + GRACE {
        assert_eq!(get(&app, "/healthz", None).await.0, 200);
        assert_eq!(url_verification(&app).await, 200);
    }
    let (_, metrics) = app.get("/metrics").await;
    assert!(
        metrics.contains(r#"http_requests_total{method="GET",route="/link/{id}",status="429"}"#),
        "{metrics}"
    );
}

// LNK-06: with no trusted proxy, a client's own X-Forwarded-For is ignored: a new one per
// request does not buy a new allowance.
#[tokio::test]
async fn without_trusted_proxies_a_spoofed_forwarded_for_does_not_escape_the_limit() {
    let app = spawn(&[]).await;
    let (status, _, _) = exhaust(&app, |n| Some(format!("198.51.100.{n}"))).await;
    assert_eq!(status, 429);
}

// LNK-06: behind a trusted proxy each forwarded client has its own allowance, keyed on the
// right-most address the proxy did not itself add; addresses a client puts to its left
// do not help it.
#[tokio::test]
async fn behind_a_trusted_proxy_forwarded_clients_are_limited_separately() {
    let app = spawn(&[("TRUSTED_PROXIES", "127.0.0.1")]).await;
    let (status, _, _) = exhaust(&app, |_| Some("203.0.113.1".into())).await;
    assert_eq!(status, 429);

    let link = "/link/AAAAAAAAAAAAAAAAAAAAAA";
    assert_eq!(get(&app, link, Some("203.0.113.2")).await.0, 404, "another client");
    assert_eq!(get(&app, link, None).await.0, 404, "the proxy itself");
    assert_eq!(
        get(&app, link, Some("203.0.113.2, 203.0.113.1")).await.0,
        429,
        "the limited client, claiming to forward for another"
    );
}

// With METRICS_BIND_ADDR, /metrics is served only on its own listener (with the probes),
// and that listener stops with the public one when shutdown begins.
#[tokio::test]
async fn metrics_move_to_their_own_listener_and_stop_with_the_service() {
    let db = TestDb::sqlite();
    // Nothing outside is called: no workers, no Socket Mode.
    let app = build_offline(&db.url, vec![("METRICS_BIND_ADDR", "127.0.0.1:0".into())]).await;
    let (public, private) = (app.local_addr(), app.metrics_addr().expect("a metrics listener"));
    assert_ne!(private.port(), 0);
    let lifecycle = app.lifecycle();
    let server = tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();
    let status = |addr: std::net::SocketAddr, path: &'static str| {
        let client = client.clone();
        async move {
            let response = client.get(format!("http://{addr}{path}")).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };

    assert_eq!(status(public, "/metrics").await.0, 404);
    let (code, metrics) = status(private, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains(r#"http_requests_total{method="GET",route="unmatched",status="404"} 1"#),
        "{metrics}"
    );
    for path in ["/healthz", "/readyz"] {
        assert_eq!(status(public, path).await.0, 200, "{path} on the public listener");
        assert_eq!(status(private, path).await.0, 200, "{path} on the metrics listener");
    }

    lifecycle.begin_shutdown();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the service stops within the drain deadline")
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(public).await.is_err(), "public listener closed");
    assert!(TcpStream::connect(private).await.is_err(), "metrics listener closed");
}
