//! From a signed `app_mention` by a linked person to the answer in the thread, for every
//! agent backend, against the fake Slack, the fake Databricks workspace (its API answered
//! by per-test mocks) and a fake external agent — asserting what the person saw and that
//! Databricks (or the company's agent) only ever received that person's token.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::common::app::{Options, TestApp, fast_workers, mention};
use crate::common::fake_databricks::FakeState;
use crate::common::recorded::{
    genie_message, genie_query_result, genie_started, model_calls, model_says, recorded, statement_succeeded,
};
use crate::common::{PATIENCE, eventually};
use databricks_slack_bot::clock::Clock;
use databricks_slack_bot::domain::{TeamId, UserId};
use databricks_slack_bot::jobs::worker::WorkerConfig;
use databricks_slack_bot::store::audit::Actor;
use serde_json::{Value, json};
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, Respond, ResponseTemplate};

const ASKER: &str = "asker@example.com";
const SPACE: &str = "01ef-space";

fn ok(body: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(body)
}

async fn spawn(env: Vec<(&'static str, String)>) -> TestApp {
    let app = TestApp::spawn_with(Options {
        extra_env: env,
        configured_agent: true,
        ..Options::default()
    })
    .await;
    app.link_asker().await;
    app
}

/// A mention in the thread the first question started.
fn follow_up(event_id: &str, text: &str) -> Value {
    let mut event = mention(event_id, text);
    event["event"]["ts"] = json!("1515449600.000100");
    event["event"]["thread_ts"] = json!("1515449522.000016");
    event
}

fn genie(rest: &str) -> String {
    format!("/api/2.0/genie/spaces/{SPACE}{rest}")
}

fn completed(conversation: &str, message: &str, attachments: Value) -> Value {
    genie_message(conversation, message, "COMPLETED", attachments)
}

/// Genie's first answer in a thread: text, SQL, two rows, and two suggested follow-ups.
async fn mount_genie_first_answer(api: &MockServer) {
    Mock::given(method("POST"))
        .and(path(genie("/start-conversation")))
        .respond_with(ok(genie_started("c-1", "m-1")))
        .expect(1)
        .mount(api)
        .await;
    mount_genie_first_message(api).await;
}

/// Genie's answer to message `m-1` of conversation `c-1`, and its query result.
async fn mount_genie_first_message(api: &MockServer) {
    Mock::given(method("GET"))
        .and(path(genie("/conversations/c-1/messages/m-1")))
        .respond_with(ok(completed(
            "c-1",
            "m-1",
            json!([
                {"attachment_id": "a-text", "text": {"content": "Revenue grew **12%** in Q2."}},
                {"attachment_id": "a-query", "query": {"query": "SELECT quarter, revenue FROM sales",
                                                        "statement_id": "st-1"}},
                {"attachment_id": "a-sq", "suggested_questions": {"questions": ["Which region grew most?"]}},
            ]),
        )))
        .mount(api)
        .await;
    Mock::given(method("GET"))
        .and(path(genie(
            "/conversations/c-1/messages/m-1/attachments/a-query/query-result",
        )))
        .respond_with(ok(genie_query_result(
            &["quarter", "revenue"],
            json!([["Q1", "100"], ["Q2", "<b>&`112`"]]),
            2,
        )))
        .mount(api)
        .await;
}

#[tokio::test]
async fn genie_answers_in_the_thread_and_a_follow_up_continues_the_same_conversation() {
    let app = spawn(vec![("GENIE_SPACE_ID", SPACE.into())]).await;
    let api = &app.databricks.api;
    mount_genie_first_answer(api).await;

    app.post_event(&mention("Ev1", "<@U0LAN0Z89> how did revenue change?"))
        .await;
    let answer = app.wait_for_answer("Revenue grew").await;
    let text = answer.to_string();
    assert!(
        text.contains("Revenue grew *12%* in Q2."),
        "Markdown became mrkdwn: {text}"
    );
    assert!(
        text.contains("SELECT quarter, revenue FROM sales"),
        "the generated SQL: {text}"
    );
    assert!(text.contains("&lt;b&gt;&amp;"), "cells are escaped: {text}");
    assert!(text.contains("ask_suggestion_0") && text.contains("Which region grew most?"));
    assert!(text.contains("'s Databricks permissions · Genie"), "{text}");
    let placeholder = &app.slack_calls("chat.postMessage").await[0];
    assert_eq!(placeholder["thread_ts"], "1515449522.000016");

    // The follow-up in the same thread goes to the same Genie conversation.
    Mock::given(method("POST"))
        .and(path(genie("/conversations/c-1/messages")))
        .respond_with(ok(genie_message("c-1", "m-2", "SUBMITTED", Value::Null)))
        .expect(1)
        .mount(api)
        .await;
    Mock::given(method("GET"))
        .and(path(genie("/conversations/c-1/messages/m-2")))
        .respond_with(ok(completed(
            "c-1",
            "m-2",
            json!([{"attachment_id": "a-2", "text": {"content": "The West grew most."}}]),
        )))
        .mount(api)
        .await;
    app.post_event(&follow_up("Ev2", "<@U0LAN0Z89> which region grew most?"))
        .await;
    app.wait_for_answer("The West grew most.").await;
    let sent: Vec<Value> = api
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == genie("/conversations/c-1/messages"))
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(sent, [json!({"content": "which region grew most?"})]);

    let callers = app.databricks.api_callers().await;
    assert!(callers.len() >= 5);
    assert!(
        callers.iter().all(|c| c.as_deref() == Some(ASKER)),
        "only the asker's token reached Databricks: {callers:?}"
    );
    let metrics = app.get("/metrics").await.1;
    assert!(
        metrics.contains(r#"answers_total{agent="Genie",outcome="answered"} 2"#),
        "{metrics}"
    );
    app.stop().await; // the `expect(1)`s are checked when the mocks drop
}

/// Answers Genie's start-conversation, and then revokes every access token the fake
/// workspace has issued, as if the person's token expired while Genie worked. Keeps how
/// many token requests the workspace had seen by then.
struct StartThenRevoke(Arc<Mutex<FakeState>>, Arc<AtomicUsize>);

impl Respond for StartThenRevoke {
    fn respond(&self, _: &wiremock::Request) -> ResponseTemplate {
        let mut state = self.0.lock().unwrap();
        state.revoke_access_tokens();
        self.1.store(state.token_requests.len(), Ordering::SeqCst);
        ok(genie_started("c-1", "m-1"))
    }
}

// TOK-06 (issue 11): the token is refused (a real workspace's numeric 403) after Genie took the
// question; the bot refreshes once, sends that poll again, and Genie is asked once.
#[tokio::test]
async fn a_token_revoked_while_genie_works_is_refreshed_and_genie_is_asked_once() {
    let app = spawn(vec![("GENIE_SPACE_ID", SPACE.into())]).await;
    let api = &app.databricks.api;
    let at_revocation = Arc::new(AtomicUsize::new(0));
    Mock::given(method("POST"))
        .and(path(genie("/start-conversation")))
        .respond_with(StartThenRevoke(app.databricks.state.clone(), at_revocation.clone()))
        .expect(1)
        .mount(api)
        .await;
    mount_genie_first_message(api).await;

    app.post_event(&mention("Ev1", "<@U0LAN0Z89> how did revenue change?"))
        .await;
    app.wait_for_answer("Revenue grew").await;

    let token_requests = app.databricks.state.lock().unwrap().token_requests.len();
    assert_eq!(
        token_requests,
        at_revocation.load(Ordering::SeqCst) + 1,
        "one refresh after the revocation"
    );
    assert_eq!(app.settled_job_states().await, ["done"]);
    assert!(
        app.slack_calls("chat.postEphemeral").await.is_empty(),
        "no \"no access\""
    );
    // What alerting reads (deploy/prometheus/alerts.yaml): refreshes by outcome, Slack
    // calls by method and outcome, the queue and the links as the database has them.
    let metrics = app.get("/metrics").await.1;
    for line in [
        r#"token_refreshes_total{outcome="refreshed"} "#,
        r#"slack_api_calls_total{method="chat.postMessage",outcome="ok"} "#,
        r#"jobs{state="done"} 1"#,
        r#"jobs{state="queued"} 0"#,
        r#"links{status="active"} 1"#,
        "oldest_due_job_age_seconds 0",
    ] {
        assert!(metrics.contains(line), "{line}:\n{metrics}");
    }
    app.stop().await; // start-conversation's `expect(1)` is checked when the mocks drop
}

#[tokio::test]
async fn a_clicked_suggestion_is_asked_as_the_person_who_clicked_in_the_same_thread() {
    let app = spawn(vec![("GENIE_SPACE_ID", SPACE.into())]).await;
    mount_genie_first_answer(&app.databricks.api).await;
    Mock::given(method("POST"))
        .and(path(genie("/conversations/c-1/messages")))
        .respond_with(ok(genie_message("c-1", "m-2", "SUBMITTED", Value::Null)))
        .mount(&app.databricks.api)
        .await;
    Mock::given(method("GET"))
        .and(path(genie("/conversations/c-1/messages/m-2")))
        .respond_with(ok(completed(
            "c-1",
            "m-2",
            json!([{"attachment_id": "a-2", "text": {"content": "The West."}}]),
        )))
        .mount(&app.databricks.api)
        .await;
    app.post_event(&mention("Ev1", "<@U0LAN0Z89> how did revenue change?"))
        .await;
    app.wait_for_answer("Revenue grew").await;

    assert_eq!(
        click(
            &app,
            "1111.2222.suggestion",
            "ask_suggestion_0",
            "Which region grew most?",
            Some("1515449522.000016")
        )
        .await,
        200
    );
    // A double click arrives with the same trigger: asked once.
    click(
        &app,
        "1111.2222.suggestion",
        "ask_suggestion_0",
        "Which region grew most?",
        Some("1515449522.000016"),
    )
    .await;
    app.wait_for_answer("The West.").await;
    let posts = app.slack_calls("chat.postMessage").await;
    assert!(posts.iter().all(|p| p["thread_ts"] == "1515449522.000016"), "{posts:?}");
    assert_eq!(app.settled_job_states().await, ["done", "done"]);
    app.stop().await;
}

/// Genie answers with a 10,000-row × 50-column result ("All rows.").
async fn mount_genie_wide_result(api: &MockServer) {
    Mock::given(method("POST"))
        .and(path(genie("/start-conversation")))
        .respond_with(ok(genie_started("c-1", "m-1")))
        .mount(api)
        .await;
    Mock::given(method("GET"))
        .and(path(genie("/conversations/c-1/messages/m-1")))
        .respond_with(ok(completed(
            "c-1",
            "m-1",
            json!([{"attachment_id": "a-q", "query": {"query": "SELECT * FROM wide", "description": "All rows."}}]),
        )))
        .mount(api)
        .await;
    let columns: Vec<String> = (0..50).map(|c| format!("column_{c}")).collect();
    let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
    let rows: Vec<Vec<String>> = (0..10_000)
        .map(|r| (0..50).map(|c| format!("r{r}c{c}")).collect())
        .collect();
    Mock::given(method("GET"))
        .and(path(genie(
            "/conversations/c-1/messages/m-1/attachments/a-q/query-result",
        )))
        .respond_with(ok(genie_query_result(&columns, json!(rows), 10_000)))
        .mount(api)
        .await;
}

#[tokio::test]
async fn a_large_result_is_shown_in_part_and_attached_whole_as_a_csv_in_the_thread() {
    let app = spawn(vec![("GENIE_SPACE_ID", SPACE.into())]).await;
    mount_genie_wide_result(&app.databricks.api).await;

    app.post_event(&mention("Ev1", "<@U0LAN0Z89> everything please")).await;
    let answer = app.wait_for_answer("All rows.").await;
    let text = answer.to_string();
    assert!(text.contains("10 of 10,000 rows"), "{text}");
    let complete = app.wait_for_calls("files.completeUploadExternal", 1).await;
    assert_eq!(complete[0]["channel_id"], "C0LAN2Q65");
    assert_eq!(complete[0]["thread_ts"], "1515449522.000016");
    let csv = String::from_utf8(app.uploaded().await).unwrap();
    assert_eq!(csv.lines().count(), 10_001);
    assert!(csv.contains("r9999c49"));
    let asked_length = &app.slack_calls("files.getUploadURLExternal").await[0]["length"];
    assert_eq!(asked_length.as_str().unwrap(), csv.len().to_string());
    app.stop().await;
}

#[tokio::test]
async fn no_access_is_told_privately_as_the_persons_answer_and_the_placeholder_goes_away() {
    let app = spawn(vec![("GENIE_SPACE_ID", SPACE.into())]).await;
    Mock::given(method("POST"))
        .and(path(genie("/start-conversation")))
        .respond_with(recorded("permission-denied-403").template())
        .mount(&app.databricks.api)
        .await;
    app.post_event(&mention("Ev1", "<@U0LAN0Z89> secret numbers?")).await;
    let told = app.wait_for_calls("chat.postEphemeral", 1).await;
    let text = told[0].to_string();
    assert!(
        text.contains("don't have access") && text.contains("USE CATALOG on Catalog"),
        "{text}"
    );
    assert!(text.contains("ref `job-1`"), "a correlation id: {text}");
    assert_eq!(
        app.slack_calls("chat.delete").await.len(),
        1,
        "the placeholder is removed"
    );
    assert_eq!(app.settled_job_states().await, ["done"], "an answer, not a failure");
    let metrics = app.get("/metrics").await.1;
    assert!(
        metrics.contains(r#"answers_total{agent="Genie",outcome="no_access"} 1"#),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_llm_agent_runs_sql_as_the_person_and_answers_with_the_table() {
    let app = spawn(vec![
        ("DATABRICKS_SERVING_ENDPOINT", "chat-model".into()),
        ("DATABRICKS_WAREHOUSE_ID", "wh-1".into()),
    ])
    .await;
    let api = &app.databricks.api;
    let tool_call = model_calls(&[(
        "call-1",
        "run_sql",
        r#"{"statement": "SELECT count(*) AS n FROM orders"}"#,
    )]);
    let final_answer = model_says("You have **3** orders.");
    Mock::given(method("POST"))
        .and(path("/serving-endpoints/chat/completions"))
        .respond_with(ok(tool_call))
        .up_to_n_times(1)
        .mount(api)
        .await;
    Mock::given(method("POST"))
        .and(path("/serving-endpoints/chat/completions"))
        .respond_with(ok(final_answer))
        .mount(api)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/2.0/sql/statements"))
        .respond_with(ok(statement_succeeded("st-1", &["n"], json!([["3"]]))))
        .mount(api)
        .await;

    app.post_event(&mention("Ev1", "<@U0LAN0Z89> how many orders?")).await;
    let answer = app.wait_for_answer("You have").await.to_string();
    assert!(answer.contains("You have *3* orders."), "{answer}");
    assert!(answer.contains("SELECT count(*) AS n FROM orders"), "{answer}");
    let requests = api.received_requests().await.unwrap();
    let statement: Value = requests
        .iter()
        .find(|r| r.url.path() == "/api/2.0/sql/statements")
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .unwrap();
    assert_eq!(statement["warehouse_id"], "wh-1");
    let model: Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(model["model"], "chat-model");
    assert!(
        app.databricks
            .api_callers()
            .await
            .iter()
            .all(|c| c.as_deref() == Some(ASKER)),
        "the model endpoint and the warehouse saw only the asker's token"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_companys_http_agent_gets_the_persons_token_and_its_answer_reaches_the_thread() {
    let agent = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/ask"))
        .respond_with(ok(
            json!({"text": "From your agent: 7 open incidents", "suggestions": ["Which are P1?"]}),
        ))
        .mount(&agent)
        .await;
    let app = spawn(vec![("AGENT_URL", format!("{}/ask", agent.uri()))]).await;
    app.post_event(&mention("Ev1", "<@U0LAN0Z89> open incidents?")).await;
    let answer = app.wait_for_answer("7 open incidents").await.to_string();
    assert!(answer.contains("Which are P1?"), "{answer}");
    let received = &agent.received_requests().await.unwrap()[0];
    let token = received.headers["authorization"]
        .to_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap();
    assert_eq!(app.databricks.owner_of(token).as_deref(), Some(ASKER));
    let body: Value = serde_json::from_slice(&received.body).unwrap();
    assert_eq!(body["question"], "open incidents?");
    assert_eq!(body["user"]["slack_user_id"], "U061F7AUR");
    assert_eq!(body["thread"]["thread_ts"], "1515449522.000016");
    app.stop().await;
}

#[tokio::test]
async fn an_adk_agent_gets_the_token_only_as_temporary_state_and_keeps_one_session_per_thread() {
    let adk = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/apps/ops_agent/users/T061EG9R6:U061F7AUR/sessions"))
        .respond_with(ok(
            json!({"id": "s-1", "appName": "ops_agent", "userId": "T061EG9R6:U061F7AUR", "state": {}}),
        ))
        .expect(1)
        .mount(&adk)
        .await;
    // `/run_sse` streams events as `data: <event>` frames (tests/fixtures/adk/).
    let event =
        json!({"author": "ops_agent", "content": {"role": "model", "parts": [{"text": "All pipelines are green."}]}});
    Mock::given(method("POST"))
        .and(path("/run_sse"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(format!("data: {event}\n\n"), "text/event-stream"))
        .mount(&adk)
        .await;
    let app = spawn(vec![("AGENT_URL", adk.uri()), ("ADK_APP_NAME", "ops_agent".into())]).await;
    app.post_event(&mention("Ev1", "<@U0LAN0Z89> pipelines ok?")).await;
    app.wait_for_answer("All pipelines are green.").await;
    app.post_event(&follow_up("Ev2", "<@U0LAN0Z89> and yesterday?")).await;
    eventually("both questions to be answered", PATIENCE, || async {
        (app.job_states().await == ["done", "done"]).then_some(())
    })
    .await;
    let runs: Vec<Value> = adk
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/run_sse")
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(runs.len(), 2);
    for run in &runs {
        assert_eq!(run["session_id"], "s-1", "one session for the thread");
        let token = run["state_delta"]["temp:databricks_token"].as_str().unwrap();
        assert_eq!(app.databricks.owner_of(token).as_deref(), Some(ASKER));
        assert_eq!(run["state_delta"]["temp:databricks_host"], app.databricks.uri);
    }
    app.stop().await;
}

/// The app answering privately, with the company's agent saying `text` to every question
/// (the agent's server lives as long as the returned one).
async fn spawn_private(text: &str) -> (TestApp, MockServer) {
    let agent = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ok(json!({"text": text})))
        .mount(&agent)
        .await;
    let app = spawn(vec![
        ("AGENT_URL", agent.uri()),
        ("ANSWER_VISIBILITY", "private".into()),
    ])
    .await;
    (app, agent)
}

/// A signed click on a button of a message in #general (C0LAN2Q65) by the asker.
async fn click(app: &TestApp, trigger: &str, action_id: &str, value: &str, thread_ts: Option<&str>) -> u16 {
    let mut payload = json!({
        "type": "block_actions",
        "team": {"id": "T061EG9R6", "domain": "acme"},
        "user": {"id": "U061F7AUR", "username": "alice", "team_id": "T061EG9R6"},
        "api_app_id": "A0MDYCDME",
        "trigger_id": trigger,
        "container": {"type": "message", "message_ts": "1700000000.000100", "channel_id": "C0LAN2Q65",
                      "is_ephemeral": thread_ts.is_none()},
        "channel": {"id": "C0LAN2Q65", "name": "general"},
        "response_url": format!("{}/response/{trigger}", app.slack.uri()),
        "actions": [{"type": "button", "action_id": action_id, "block_id": "b",
                     "value": value, "action_ts": "1700000001.000100"}]
    });
    if let Some(thread_ts) = thread_ts {
        payload["message"] = json!({"type": "message", "ts": "1700000000.000100", "thread_ts": thread_ts,
                                    "text": "an answer"});
    }
    app.post_interaction(&payload).await
}

#[tokio::test]
async fn private_answers_are_ephemeral_without_a_public_placeholder() {
    let (app, _agent) = spawn_private("Only you can see this").await;
    app.post_event(&mention("Ev1", "<@U0LAN0Z89> my numbers?")).await;
    let told = app.wait_for_calls("chat.postEphemeral", 1).await;
    assert!(told[0].to_string().contains("Only you can see this"), "{}", told[0]);
    assert_eq!(told[0]["user"], "U061F7AUR");
    assert!(app.slack_calls("chat.postMessage").await.is_empty(), "nothing public");
    app.stop().await;
}

#[tokio::test]
async fn a_private_answer_is_shared_in_the_thread_once_by_its_asker() {
    let (app, _agent) = spawn_private("Revenue: 12 <units>").await;
    Mock::given(method("POST"))
        .and(wiremock::matchers::path_regex("^/response/"))
        .respond_with(ok(json!({"ok": true})))
        .mount(&app.slack)
        .await;
    app.post_event(&mention("Ev1", "<@U0LAN0Z89> revenue?")).await;
    let told = app.wait_for_calls("chat.postEphemeral", 1).await;
    let share = told[0]["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
        .find(|e| e["action_id"] == "share_answer")
        .expect("a Share in channel button");
    let id = share["value"].as_str().unwrap().to_owned();
    assert!(id.len() >= 40, "an unguessable id");

    assert_eq!(click(&app, "2222.share", "share_answer", &id, None).await, 200);
    let posted = app.wait_for_calls("chat.postMessage", 1).await;
    let text = posted[0].to_string();
    assert!(
        text.contains("Revenue: 12 &lt;units&gt;") && text.contains("Shared by <@U061F7AUR>"),
        "{text}"
    );
    assert_eq!(posted[0]["thread_ts"], "1515449522.000016");
    assert!(!text.contains("share_answer"), "no second share button in public");

    // The private copy is deleted; a second click shares nothing more.
    click(&app, "3333.share-again", "share_answer", &id, None).await;
    assert_eq!(app.settled_job_states().await, ["done", "done", "done"]);
    let responses = app.responses().await;
    assert!(responses.iter().any(|r| r["delete_original"] == true), "{responses:?}");
    assert!(
        responses.iter().any(|r| r.to_string().contains("already shared")),
        "{responses:?}"
    );
    assert_eq!(app.slack_calls("chat.postMessage").await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_suggestion_clicked_on_a_private_answer_continues_its_conversation() {
    let agent = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ok(json!({"text": "Private numbers", "suggestions": ["And last year?"],
                                "conversation": {"turn": 1}})))
        .mount(&agent)
        .await;
    let app = spawn(vec![
        ("AGENT_URL", agent.uri()),
        ("ANSWER_VISIBILITY", "private".into()),
    ])
    .await;
    app.post_event(&mention("Ev1", "<@U0LAN0Z89> my numbers?")).await;
    let told = app.wait_for_calls("chat.postEphemeral", 1).await;
    let actions = told[0]["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "actions")
        .unwrap()
        .clone();
    assert_eq!(actions["block_id"], "thread:1515449522.000016");

    // The click on an ephemeral message carries no `message`, only the block id.
    let payload = json!({
        "type": "block_actions",
        "team": {"id": "T061EG9R6", "domain": "acme"},
        "user": {"id": "U061F7AUR", "username": "alice", "team_id": "T061EG9R6"},
        "api_app_id": "A0MDYCDME",
        "trigger_id": "4444.suggest-private",
        "container": {"type": "message", "message_ts": "1700000000.000200", "channel_id": "C0LAN2Q65",
                      "is_ephemeral": true},
        "channel": {"id": "C0LAN2Q65", "name": "general"},
        "actions": [{"type": "button", "action_id": "ask_suggestion_0", "block_id": actions["block_id"],
                     "value": "And last year?", "action_ts": "1700000001.000100"}]
    });
    assert_eq!(app.post_interaction(&payload).await, 200);
    let told = app.wait_for_calls("chat.postEphemeral", 2).await;
    assert!(
        told[1].get("thread_ts").is_none(),
        "where the person sees it (Slack hides ephemerals in a thread without replies): {}",
        told[1]
    );
    let asked: Vec<Value> = agent
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(asked[1]["question"], "And last year?");
    assert_eq!(
        asked[1]["conversation"],
        json!({"turn": 1}),
        "the thread's conversation continues"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_40000_character_answer_with_markup_reaches_slack_as_valid_messages_in_the_thread() {
    let paragraph = format!(
        "Revenue <b> & `code` for <@U999> and <!channel>. {}",
        "word ".repeat(150)
    );
    let long = vec![paragraph; 50].join("\n\n");
    assert!(long.chars().count() >= 40_000);
    let agent = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ok(json!({"text": long})))
        .mount(&agent)
        .await;
    let app = spawn(vec![("AGENT_URL", agent.uri())]).await;
    app.post_event(&mention("Ev1", "<@U0LAN0Z89> tell me everything")).await;
    app.wait_for_answer("Answered with").await;
    let mut messages = app.slack_calls("chat.update").await;
    messages.extend(
        app.slack_calls("chat.postMessage")
            .await
            .into_iter()
            .filter(|m| !m.to_string().contains("Thinking")),
    );
    assert!(messages.len() >= 4, "split into several messages: {}", messages.len());
    for message in &messages {
        assert_eq!(message["channel"], "C0LAN2Q65");
        let blocks = message["blocks"].as_array().unwrap();
        assert!(blocks.len() <= 50);
        let size: usize = blocks.iter().map(|b| b.to_string().chars().count()).sum();
        assert!(size <= 13_000, "{size} characters of blocks");
        assert!(message["text"].as_str().unwrap().chars().count() <= 40_000);
        for block in blocks {
            if let Some(text) = block["text"]["text"].as_str() {
                assert!(text.chars().count() <= 3000);
                assert!(
                    !text.contains("<@U999>") && !text.contains("<!channel>"),
                    "nobody is pinged"
                );
            }
        }
    }
    assert_eq!(messages.iter().map(words).sum::<usize>(), 150 * 50, "nothing lost");
    let posts = app.slack_calls("chat.postMessage").await;
    assert!(
        posts.iter().all(|p| p["thread_ts"] == "1515449522.000016"),
        "all in the thread"
    );
    app.stop().await;
}

/// How many times "word" appears in a message's blocks (its fallback text aside).
fn words(message: &Value) -> usize {
    message["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|block| block["text"]["text"].as_str())
        .map(|text| text.matches("word").count())
        .sum()
}

/// Slack's answer when something failed on its side: retried.
fn slack_internal_error() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"ok": false, "error": "internal_error"}))
}

/// Slack failing every post that carries part of the long answer (the placeholder aside).
fn failing_answer_posts() -> Mock {
    Mock::given(path("/api/chat.postMessage"))
        .and(body_string_contains("word"))
        .respond_with(slack_internal_error())
}

/// An app whose company agent answers every question with a long text (two or more
/// messages, 3,000 "word"s), and whose fake Slack answers with `slack_mocks` first.
async fn spawn_long_answer(slack_mocks: Vec<Mock>, workers: WorkerConfig) -> (TestApp, MockServer) {
    let long = vec![format!("Part of the answer: {}", "word ".repeat(150)); 20].join("\n\n");
    let agent = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ok(json!({"text": long})))
        .mount(&agent)
        .await;
    let app = TestApp::spawn_with(Options {
        extra_env: vec![("AGENT_URL", agent.uri())],
        configured_agent: true,
        slack_mocks,
        workers: Some(workers),
        ..Options::default()
    })
    .await;
    app.link_asker().await;
    app.post_event(&mention("Ev1", "<@U0LAN0Z89> tell me everything")).await;
    (app, agent)
}

/// The calls to `api_method` that carried part of the long answer.
async fn answer_parts(app: &TestApp, api_method: &str) -> Vec<Value> {
    let calls = app.slack_calls(api_method).await;
    calls.into_iter().filter(|call| words(call) > 0).collect()
}

// A Slack failure part-way through a long answer is retried from where it stopped: the
// agent is asked once, the placeholder replaced once, and every part reaches the thread
// once.
#[tokio::test]
async fn a_slack_failure_part_way_through_an_answer_resumes_it_without_asking_again() {
    // The answer's second message (the first replaces the placeholder) fails once.
    let fail_once = failing_answer_posts().up_to_n_times(1);
    let (app, agent) = spawn_long_answer(vec![fail_once], fast_workers()).await;
    app.retry_now(1).await;
    assert_eq!(app.settled_job_states().await, ["done"]);

    assert_eq!(
        agent.received_requests().await.unwrap().len(),
        1,
        "the agent was asked once"
    );
    let placeholders = app.slack_calls("chat.postMessage").await;
    let placeholders = placeholders.iter().filter(|m| m.to_string().contains("Thinking"));
    assert_eq!(placeholders.count(), 1);
    let replaced = answer_parts(&app, "chat.update").await;
    assert_eq!(replaced.len(), 1, "the placeholder became the first part, once");
    let posted = answer_parts(&app, "chat.postMessage").await;
    assert!(posted.len() >= 2, "{} parts posted", posted.len());
    assert_eq!(posted[0], posted[1], "the part that failed was sent again, and only it");
    let delivered: usize = replaced.iter().chain(&posted[1..]).map(words).sum();
    assert_eq!(delivered, 150 * 20, "every word arrived once");
    assert!(
        app.slack_calls("chat.postEphemeral").await.is_empty(),
        "nothing to apologise for"
    );
    app.stop().await;
}

// When Slack keeps failing, the person learns that the rest of their answer is missing —
// no silent half answer, and no "Thinking…" left behind.
#[tokio::test]
async fn when_the_rest_of_an_answer_cannot_be_posted_the_person_is_told() {
    let always_fail = failing_answer_posts();
    let workers = WorkerConfig {
        max_attempts: 2,
        ..fast_workers()
    };
    let (app, agent) = spawn_long_answer(vec![always_fail], workers).await;
    app.retry_now(1).await;
    assert_eq!(app.settled_job_states().await, ["failed"]);

    assert_eq!(
        agent.received_requests().await.unwrap().len(),
        1,
        "the agent was asked once"
    );
    assert_eq!(
        answer_parts(&app, "chat.update").await.len(),
        1,
        "the first part was shown"
    );
    let told = app.wait_for_calls("chat.postEphemeral", 1).await;
    let text = told[0]["text"].as_str().unwrap();
    assert!(
        text.contains("the rest of the answer could not be posted: Slack is not answering me")
            && text.contains("ref `job-1`"),
        "{text}"
    );
    assert!(
        app.slack_calls("chat.delete").await.is_empty(),
        "no placeholder was left to delete"
    );
    app.stop().await;
}

// TOK-07 holds for the rest of an answer too: once the person disconnects, what was not
// posted yet is dropped, and they are told why.
#[tokio::test]
async fn the_rest_of_an_answer_is_dropped_when_the_person_disconnects_before_the_retry() {
    let fail_once = failing_answer_posts().up_to_n_times(1);
    let (app, _agent) = spawn_long_answer(vec![fail_once], fast_workers()).await;
    // Not the first chat.update: that is the agent's progress, before the answer exists.
    eventually("the first try to fail part-way", PATIENCE, || async {
        (app.jobs().await == [("queued".to_owned(), 1)]).then_some(())
    })
    .await;
    let (team, user) = (TeamId::parse("T061EG9R6").unwrap(), UserId::parse("U061F7AUR").unwrap());
    let now = app.clock.now();
    assert!(app.store.delete_link(&team, &user, Actor::User, now).await.unwrap());
    app.retry_now(1).await;
    assert_eq!(app.settled_job_states().await, ["done"]);

    assert_eq!(
        answer_parts(&app, "chat.postMessage").await.len(),
        1,
        "only the failed try"
    );
    let told = app.wait_for_calls("chat.postEphemeral", 1).await;
    assert!(
        told[0]["text"]
            .as_str()
            .unwrap()
            .contains("You disconnected Databricks"),
        "{told:?}"
    );
    app.stop().await;
}

// A CSV that Slack fails to take for a moment is attached on the retry; the answer above
// it is not posted again and Genie is not asked again.
#[tokio::test]
async fn a_csv_that_fails_to_attach_once_is_attached_on_the_retry_alone() {
    let fail_once = Mock::given(path("/api/files.completeUploadExternal"))
        .respond_with(slack_internal_error())
        .up_to_n_times(1);
    let app = TestApp::spawn_with(Options {
        extra_env: vec![("GENIE_SPACE_ID", SPACE.into())],
        configured_agent: true,
        slack_mocks: vec![fail_once],
        ..Options::default()
    })
    .await;
    app.link_asker().await;
    mount_genie_wide_result(&app.databricks.api).await;
    app.post_event(&mention("Ev1", "<@U0LAN0Z89> everything please")).await;
    app.retry_now(1).await;
    assert_eq!(app.settled_job_states().await, ["done"]);

    let completed = app.slack_calls("files.completeUploadExternal").await;
    assert_eq!(completed.len(), 2, "failed once, then attached");
    assert_eq!(completed[1]["thread_ts"], "1515449522.000016");
    let answers = |calls: Vec<Value>| calls.iter().filter(|c| c.to_string().contains("All rows.")).count();
    assert_eq!(
        answers(app.slack_calls("chat.update").await),
        1,
        "the answer was shown once"
    );
    assert_eq!(answers(app.slack_calls("chat.postMessage").await), 0);
    let started = app.databricks.api.received_requests().await.unwrap();
    let started = started.iter().filter(|r| r.url.path().ends_with("/start-conversation"));
    assert_eq!(started.count(), 1, "Genie was asked once");
    assert!(app.slack_calls("chat.postEphemeral").await.is_empty());
    app.stop().await;
}

// Slack refuses a message over a block the company's agent sent (an image it cannot
// fetch): the answer's words still reach the thread, with a note.
#[tokio::test]
async fn an_answer_whose_agent_blocks_slack_refuses_still_arrives_in_words() {
    let agent = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ok(json!({
            "text": "Revenue grew 12% in Q2.",
            "blocks": [{"type": "image", "image_url": "https://charts.invalid/q2.png", "alt_text": "Q2"}],
        })))
        .mount(&agent)
        .await;
    let refused = |api_method: &str| {
        Mock::given(path(format!("/api/{api_method}")))
            .and(body_string_contains("charts.invalid"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": false, "error": "invalid_blocks"})))
    };
    let app = TestApp::spawn_with(Options {
        extra_env: vec![("AGENT_URL", agent.uri())],
        configured_agent: true,
        slack_mocks: vec![refused("chat.update"), refused("chat.postMessage")],
        ..Options::default()
    })
    .await;
    app.link_asker().await;
    app.post_event(&mention("Ev1", "<@U0LAN0Z89> how is revenue?")).await;
    assert_eq!(app.settled_job_states().await, ["done"]);

    let shown = app.wait_for_answer("could not be shown in Slack").await.to_string();
    assert!(
        shown.contains("Revenue grew 12% in Q2.") && !shown.contains("charts.invalid"),
        "{shown}"
    );
    assert!(shown.contains("Databricks permissions"), "{shown}");
    assert!(
        app.slack_calls("chat.postEphemeral").await.is_empty(),
        "no apology needed"
    );
    app.stop().await;
}

/// The app with the default `ANSWER_VISIBILITY` (auto), an http agent answering `text`,
/// and Slack answering `conversations.info` with `info`.
async fn spawn_auto(text: &str, info: ResponseTemplate) -> (TestApp, MockServer) {
    let agent = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ok(json!({"text": text})))
        .mount(&agent)
        .await;
    let app = TestApp::spawn_with(Options {
        extra_env: vec![("AGENT_URL", agent.uri())],
        configured_agent: true,
        slack_mocks: vec![Mock::given(path("/api/conversations.info")).respond_with(info)],
        ..Options::default()
    })
    .await;
    app.link_asker().await;
    (app, agent)
}

/// `conversations.info` of #general as Slack describes a channel shared with another
/// organisation (Slack Connect), or pending being shared.
fn shared_channel(flag: &str) -> ResponseTemplate {
    let mut channel = json!({"id": "C0LAN2Q65", "name": "general", "is_channel": true, "is_private": false,
                             "is_shared": true, "is_ext_shared": false, "is_org_shared": false,
                             "is_pending_ext_shared": false});
    channel[flag] = json!(true);
    ok(json!({"ok": true, "channel": channel}))
}

// Issue 12 (TOK-07): by default, an answer in a channel shared with another organisation is
// private to the asker (with a Share button), since a thread reply would show their data to
// people outside the organisation; and so while Slack cannot say whether it is shared.
#[tokio::test]
async fn by_default_answers_in_a_channel_shared_with_another_organisation_are_private() {
    for info in [
        shared_channel("is_ext_shared"),
        shared_channel("is_pending_ext_shared"),
        ok(json!({"ok": false, "error": "missing_scope", "needed": "channels:read"})),
    ] {
        let (app, _agent) = spawn_auto("Revenue: 12", info).await;
        app.post_event(&mention("Ev1", "<@U0LAN0Z89> my numbers?")).await;

        let told = app.wait_for_calls("chat.postEphemeral", 1).await;
        let answer = told[0].to_string();
        assert!(answer.contains("Revenue: 12") && answer.contains("share"), "{answer}");
        assert!(app.slack_calls("chat.postMessage").await.is_empty(), "nothing public");
        app.stop().await;
    }
}

// ... and in the workspace's own channels, answers go in the thread, as before.
#[tokio::test]
async fn by_default_answers_in_the_organisations_own_channels_go_in_the_thread() {
    let (app, _agent) = spawn_auto("Revenue: 12", shared_channel("is_org_shared")).await;
    app.post_event(&mention("Ev1", "<@U0LAN0Z89> my numbers?")).await;

    app.wait_for_answer("Revenue: 12").await;
    assert!(app.slack_calls("chat.postEphemeral").await.is_empty());
    let asked: Vec<Value> = app.slack_calls("conversations.info").await;
    assert_eq!(asked.len(), 1);
    app.stop().await;
}

// GENIE_SPACES (issue 14): a channel mapped to a space the person may not run gets
// Databricks' own reason, and their link stays as it was: a refusal of the space is not a
// refusal of their token.
#[tokio::test]
async fn a_channel_mapped_to_a_space_the_person_cannot_run_gets_databricks_reason_and_keeps_the_link() {
    let app = spawn(vec![
        ("GENIE_SPACES", "C0LAN2Q65=01f0-fin,*=01ef-space".into()),
        ("GENIE_SPACE_ID", String::new()),
    ])
    .await;
    Mock::given(method("POST"))
        .and(path("/api/2.0/genie/spaces/01f0-fin/start-conversation"))
        .respond_with(recorded("permission-denied-403").template())
        .expect(1)
        .mount(&app.databricks.api)
        .await;
    let (team, user) = (TeamId::parse("T061EG9R6").unwrap(), UserId::parse("U061F7AUR").unwrap());
    let before = app.store.find_link(&team, &user).await.unwrap().expect("linked");
    app.post_event(&mention("Ev1", "<@U0LAN0Z89> finance numbers?")).await;
    let told = app.wait_for_calls("chat.postEphemeral", 1).await[0].to_string();
    assert!(
        told.contains("don't have access") && told.contains("USE CATALOG on Catalog"),
        "{told}"
    );
    assert!(!told.contains("/link/"), "no new connect prompt: {told}");
    assert_eq!(app.settled_job_states().await, ["done"]);
    let after = app.store.find_link(&team, &user).await.unwrap().expect("still linked");
    assert_eq!(
        (after.status, after.databricks_user_id),
        (before.status, before.databricks_user_id),
        "the link is untouched"
    );
    app.stop().await;
}

// Issue 15: someone with questions running sees at once that the next ones were taken —
// "Queued behind your other question…" in each one's thread — though their per-person
// slots are full; each placeholder is then taken over by its answer.
#[tokio::test]
async fn questions_waiting_for_the_persons_slot_say_so_at_once_and_are_answered_in_place() {
    let app = TestApp::spawn_with(Options {
        workers: Some(crate::common::app::fast_workers()),
        ..Options::default()
    })
    .await;
    app.link_asker().await;
    *app.agent.delay.lock().unwrap() = Some(std::time::Duration::from_secs(2));
    let threads: Vec<String> = (1..=6).map(|i| format!("1515449600.00000{i}")).collect();
    for (i, thread) in threads.iter().enumerate() {
        let mut asked = mention(&format!("EvQ{i}"), &format!("<@U0LAN0Z89> question {i}?"));
        asked["event"]["ts"] = json!(thread);
        app.post_event(&asked).await;
    }
    // Two run (the default per-person limit); four wait, and say so in their threads.
    let shown = eventually("a visible reply to every question", PATIENCE, || async {
        let posted = app.slack_calls("chat.postMessage").await;
        let placeholders: Vec<Value> = posted
            .into_iter()
            .filter(|m| m.to_string().contains("Thinking…") || m.to_string().contains("Queued behind"))
            .collect();
        (placeholders.len() >= 6).then_some(placeholders)
    })
    .await;
    assert_eq!(
        *app.agent.finished.lock().unwrap(),
        0,
        "every reply came before any answer"
    );
    let queued: Vec<&Value> = shown
        .iter()
        .filter(|m| m.to_string().contains("Queued behind your other question…"))
        .collect();
    assert_eq!(queued.len(), 4, "{shown:?}");
    let mut replied: Vec<&str> = shown.iter().map(|m| m["thread_ts"].as_str().unwrap()).collect();
    replied.sort();
    assert_eq!(replied, threads, "one reply in each question's own thread");

    for i in 0..6 {
        app.wait_for_answer(&format!("answer: question {i}?")).await;
    }
    eventually("every job done", PATIENCE, || async {
        (app.job_states().await == ["done"; 6]).then_some(())
    })
    .await;
    let posted = app.slack_calls("chat.postMessage").await;
    assert_eq!(posted.len(), 6, "the answers took the placeholders over: {posted:?}");
    app.stop().await;
}
