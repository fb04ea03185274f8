//! The HTTP server on port 0: probes, metrics, limits and shutdown.

use std::time::Duration;

use crate::common::TestDb;
use crate::common::app::{TestApp, build_offline};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use databricks_slack_bot::http::MAX_BODY_BYTES;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceExt;

#[tokio::test]
async fn health_and_readiness_answer_when_the_database_is_reachable() {
    let app = TestApp::spawn().await;
    assert_eq!(app.get("/healthz").await, (200, "ok".into()));
    assert_eq!(app.get("/readyz").await, (200, "ready".into()));
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_status() {
    let app = TestApp::spawn().await;
    app.get("/healthz").await;
    app.get("/healthz").await;
    app.get("/no/such/path?code=CANARY-code").await;
    let (status, body) = app.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains(r#"http_requests_total{method="GET",route="/healthz",status="200"} 2"#),
        "{body}"
    );
    assert!(body.contains(r#"route="unmatched",status="404""#), "{body}");
    assert!(body.contains("http_request_duration_seconds_bucket"), "{body}");
    assert!(!body.contains("CANARY") && !body.contains("/no/such/path"), "{body}");
}

// SIG-06: an oversize body is refused on its declared length, before any handler reads it.
#[tokio::test]
async fn an_oversize_body_is_refused_with_413() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .get(app.url("/healthz"))
        .body(vec![b'x'; MAX_BODY_BYTES + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
}

#[tokio::test]
async fn readiness_is_false_while_draining_and_when_the_database_is_gone() {
    let db = TestDb::sqlite();
    // Nothing outside is called: the app is only built, and its router driven in-process.
    let app = build_offline(&db.url, Vec::new()).await;
    let (router, lifecycle, store) = (app.router(), app.lifecycle(), app.store());
    let readyz = || Request::get("/readyz").body(Body::empty()).unwrap();

    let ready = router.clone().oneshot(readyz()).await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);

    store.close().await;
    let gone = router.clone().oneshot(readyz()).await.unwrap();
    assert_eq!(gone.status(), StatusCode::SERVICE_UNAVAILABLE);

    lifecycle.begin_shutdown();
    let draining = router.oneshot(readyz()).await.unwrap();
    assert_eq!(draining.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = axum::body::to_bytes(draining.into_body(), 1024).await.unwrap();
    assert_eq!(&body[..], b"draining");
}

// REL-06: shutdown answers what was asked, does not wait on idle keep-alive clients, and
// stops accepting connections.
#[tokio::test]
async fn shutdown_does_not_hang_on_idle_connections_and_then_refuses_new_ones() {
    let app = TestApp::spawn().await;

    // A keep-alive connection that has been answered and now sits idle.
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    app.lifecycle.begin_shutdown();
    tokio::time::timeout(Duration::from_secs(3), app.server)
        .await
        .expect("server stops well within the drain deadline")
        .unwrap()
        .unwrap();
    assert_eq!(
        idle.read(&mut buf).await.unwrap_or(0),
        0,
        "the idle connection was closed"
    );
    assert!(
        TcpStream::connect(app.addr).await.is_err(),
        "no new connections after shutdown"
    );
}
