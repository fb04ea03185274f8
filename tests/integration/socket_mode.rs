//! Socket Mode against a local WebSocket fake: `apps.connections.open` returns a `ws://`
//! URL on loopback, and the fake plays Slack's side of the protocol.

use std::time::Duration;

use crate::common::app::{Options, TestApp};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use wiremock::matchers::path;
use wiremock::{Mock, ResponseTemplate};

pub(crate) type Socket = WebSocketStream<tokio::net::TcpStream>;

/// Accepts every connection the bot opens, greets it with `hello` and hands it over.
pub(crate) async fn fake_socket_server() -> (String, mpsc::UnboundedReceiver<Socket>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/link", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
                let hello = json!({"type": "hello", "num_connections": 1, "connection_info": {"app_id": "A1"}});
                ws.send(Message::Text(hello.to_string().into())).await.unwrap();
                let _ = tx.send(ws);
            });
        }
    });
    (url, rx)
}

/// Reads frames until an ack (`{"envelope_id": …}`) arrives.
pub(crate) async fn next_ack(ws: &mut Socket) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an ack within 10 s")
            .expect("the connection stays open")
            .unwrap();
        if let Message::Text(text) = frame {
            let value: Value = serde_json::from_str(&text).unwrap();
            if value.get("envelope_id").is_some() {
                return value;
            }
        }
    }
}

pub(crate) fn envelope(id: &str, kind: &str, payload: Value) -> Message {
    let envelope = json!({"envelope_id": id, "type": kind, "accepts_response_payload": false,
                          "retry_attempt": 0, "retry_reason": "", "payload": payload});
    Message::Text(envelope.to_string().into())
}

/// The app in Socket Mode, and the WebSocket it opened to the fake Slack.
async fn connected_app() -> (TestApp, Socket) {
    let (ws_url, mut sockets) = fake_socket_server().await;
    let app = TestApp::spawn_with(Options {
        slack_mocks: vec![
            Mock::given(path("/api/apps.connections.open"))
                .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true, "url": ws_url}))),
        ],
        extra_env: vec![("SLACK_APP_TOKEN", "xapp-1-test-CANARY".into())],
        ..Default::default()
    })
    .await;
    let ws = tokio::time::timeout(Duration::from_secs(10), sockets.recv())
        .await
        .expect("the bot connects")
        .unwrap();
    (app, ws)
}

#[tokio::test]
async fn socket_mode_events_are_acknowledged_and_answered_through_the_same_queue() {
    let (app, mut ws) = connected_app().await;

    // An envelope type nobody knows: no crash, and the connection keeps working.
    ws.send(Message::Text(
        json!({"type": "brand_new", "envelope_id": "env-0"}).to_string().into(),
    ))
    .await
    .unwrap();

    let event: Value = serde_json::from_str(include_str!("../fixtures/slack/event_app_mention.json")).unwrap();
    ws.send(envelope("env-1", "events_api", event.clone())).await.unwrap();
    let mut ack = next_ack(&mut ws).await;
    if ack["envelope_id"] == "env-0" {
        ack = next_ack(&mut ws).await;
    }
    assert_eq!(ack["envelope_id"], "env-1");

    // The same event again (Slack redelivers in Socket Mode too): still one prompt.
    ws.send(envelope("env-2", "events_api", event)).await.unwrap();
    assert_eq!(next_ack(&mut ws).await["envelope_id"], "env-2");

    let prompts = app.wait_for_calls("chat.postEphemeral", 1).await;
    assert_eq!(prompts.len(), 1);
    assert!(prompts[0].to_string().contains("https://bot.example.com/link/"));
    // Both envelopes were stored or found a duplicate before their acks, and a worker posts
    // before it records the outcome: once every job has settled, no other prompt can come.
    let settled = app.settled_job_states().await;
    assert_eq!(app.slack_calls("chat.postEphemeral").await.len(), 1);
    assert_eq!(settled, ["waiting"], "the question waits for the connection");

    // The app-level token went only to apps.connections.open.
    let opened = app.slack.received_requests().await.unwrap();
    let with_app_token = opened
        .iter()
        .filter(|r| {
            r.headers
                .get("authorization")
                .is_some_and(|v| v.to_str().unwrap().contains("xapp-1-test"))
        })
        .map(|r| r.url.path().to_owned())
        .collect::<Vec<_>>();
    assert!(
        with_app_token.iter().all(|p| p == "/api/apps.connections.open"),
        "{with_app_token:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_socket_mode_delivery_that_cannot_be_stored_is_left_unacknowledged() {
    let (ws_url, mut sockets) = fake_socket_server().await;
    let app = TestApp::spawn_with(Options {
        slack_mocks: vec![
            Mock::given(path("/api/apps.connections.open"))
                .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true, "url": ws_url}))),
        ],
        extra_env: vec![("SLACK_APP_TOKEN", "xapp-1-test".into())],
        workers: None,
        ..Default::default()
    })
    .await;
    let mut ws = sockets.recv().await.unwrap();
    app.store.close().await; // the database is gone

    let event: Value = serde_json::from_str(include_str!("../fixtures/slack/event_app_mention.json")).unwrap();
    ws.send(envelope("env-lost", "events_api", event)).await.unwrap();
    // A fixed wait: withholding an ack is an absence the bot gives no end event for.
    let ack = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) if text.contains("envelope_id") => return text.to_string(),
                Some(Ok(_)) => continue,
                _ => std::future::pending::<()>().await,
            }
        }
    })
    .await;
    assert!(ack.is_err(), "no ack, so Slack redelivers: {ack:?}");
    app.lifecycle.begin_shutdown();
}

// The slash command and button clicks reach the same handlers over Socket Mode: the
// command's reply rides on the acknowledgement, and a Disconnect click forgets the link.
#[tokio::test]
async fn socket_mode_commands_and_clicks_reach_the_same_handlers() {
    let (app, mut ws) = connected_app().await;
    app.link_asker().await;

    let command = json!({"token": "x", "team_id": "T061EG9R6", "team_domain": "acme", "channel_id": "C0LAN2Q65",
                         "channel_name": "general", "user_id": "U061F7AUR", "user_name": "alice",
                         "command": "/databricks", "text": "status", "api_app_id": "A0MDYCDME",
                         "response_url": "https://hooks.slack.com/commands/T061EG9R6/1/x",
                         "trigger_id": "1.2.status"});
    ws.send(envelope("env-cmd", "slash_commands", command)).await.unwrap();
    let ack = next_ack(&mut ws).await;
    assert_eq!(ack["envelope_id"], "env-cmd");
    assert!(ack["payload"].to_string().contains("Connected as"), "{ack}");

    let mut click: Value =
        serde_json::from_str(include_str!("../fixtures/slack/block_actions_disconnect.json")).unwrap();
    click["response_url"] = json!(format!("{}/response/1", app.slack.uri()));
    ws.send(envelope("env-click", "interactive", click)).await.unwrap();
    assert_eq!(next_ack(&mut ws).await["envelope_id"], "env-click");
    assert_eq!(app.settled_job_states().await, ["done"]);
    let team = databricks_slack_bot::domain::TeamId::parse("T061EG9R6").unwrap();
    let user = databricks_slack_bot::domain::UserId::parse("U061F7AUR").unwrap();
    assert!(
        app.store.find_link(&team, &user).await.unwrap().is_none(),
        "disconnected"
    );
    app.stop().await;
}

// Enterprise Grid over Socket Mode: slack-morphism cannot read an org-wide install's frame
// (`authorizations[0].team_id: null`) and acknowledges it anyway; the bot settles it and
// stores the question before that ack (a multi-threaded runtime, as the binary's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_wide_install_frame_is_stored_before_its_ack() {
    let (app, mut ws) = connected_app().await;
    let event: Value = serde_json::from_str(include_str!("../fixtures/slack/event_app_mention_org_wide.json")).unwrap();
    ws.send(envelope("env-grid", "events_api", event)).await.unwrap();
    assert_eq!(next_ack(&mut ws).await["envelope_id"], "env-grid");
    let stored: Vec<(String,)> = crate::common::app::rows(&app.db_url, "SELECT team_id FROM jobs").await;
    assert_eq!(stored, [("T061EG9R6".to_owned(),)], "stored before the ack");
    let prompts = app.wait_for_calls("chat.postEphemeral", 1).await;
    assert_eq!(prompts[0]["user"], "W061F7AUR");
    app.stop().await;
}
