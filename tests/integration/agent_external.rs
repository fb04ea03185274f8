//! The company's own agent, over plain HTTP and on a Google ADK api_server: what the agent
//! receives, what the asker gets back, and how failures read. Each agent is a wiremock
//! server on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::agents::{self, Shown, Then};
use crate::common::logs::Captured;
use databricks_slack_bot::agent::adk::{Adk, VersionReport};
use databricks_slack_bot::agent::external::HttpAgent;
use databricks_slack_bot::agent::{Agent, AgentAnswer, AgentError, AgentRequest};
use serde_json::{Value, json};
use slack_morphism::prelude::SlackBlock;
use url::Url;
use wiremock::matchers::{body_json, body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TOKEN: &str = "dapi-CANARY-person-access-token";
const HOST: &str = "https://dbc-123.cloud.databricks.com";
const APP: &str = "data_agent";
const ADK_USER: &str = "T0TEAM1:U0ASKER1";
const SESSIONS: &str = "/apps/data_agent/users/T0TEAM1:U0ASKER1/sessions";

fn question(text: &str, conversation: Option<Value>) -> AgentRequest {
    agents::request(HOST, TOKEN, text, conversation)
}

/// A client like the bot's, with a timeout short enough for a test to outlast.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap()
}

fn http_agent(server: &MockServer) -> HttpAgent {
    HttpAgent::new(client(), Url::parse(&format!("{}/agent", server.uri())).unwrap())
}

fn adk(server: &MockServer) -> Adk {
    Adk::new(client(), Url::parse(&server.uri()).unwrap(), APP.into())
}

async fn ask(agent: &dyn Agent, request: &AgentRequest) -> Result<AgentAnswer, AgentError> {
    let shown = Shown::default();
    let answer = agent.answer(request, &shown).await;
    assert_eq!(shown.seen(), ["Asking your agent…"]);
    if let Err(error) = &answer {
        assert!(!format!("{error:?}").contains(TOKEN), "the token leaked into {error:?}");
    }
    answer
}

fn failed(message: &str) -> AgentError {
    AgentError::Failed(message.into())
}

fn transient(reason: &str) -> AgentError {
    AgentError::transient(reason)
}

fn said(text: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({ "text": text }))
}

// ---- http ----------------------------------------------------------------------------

/// What the HTTP agent makes of `response` to the question "q".
async fn http_agent_answering(response: ResponseTemplate) -> Result<AgentAnswer, AgentError> {
    let server = MockServer::start().await;
    Mock::given(method("POST")).respond_with(response).mount(&server).await;
    ask(&http_agent(&server), &question("q", None)).await
}

#[tokio::test]
async fn the_http_agent_gets_the_question_with_the_askers_token_identity_and_thread() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/agent"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header("content-type", "application/json"))
        .and(body_json(json!({
            "question": "How many orders last week?",
            "user": {
                "slack_team_id": "T0TEAM1",
                "slack_user_id": "U0ASKER1",
                "databricks_user_id": "4242",
                "databricks_user_name": "ada@example.com",
                "databricks_host": HOST
            },
            "thread": { "channel": "C0CHANNEL", "thread_ts": "1712345678.000100" },
            "conversation": null
        })))
        .respond_with(said("1,234 orders."))
        .expect(1)
        .mount(&server)
        .await;

    let answer = ask(&http_agent(&server), &question("How many orders last week?", None))
        .await
        .unwrap();

    assert_eq!(answer.text, "1,234 orders.");
    assert!(answer.blocks.is_empty() && answer.suggestions.is_empty());
    assert_eq!(answer.conversation, None);
}

#[tokio::test]
async fn a_follow_up_hands_the_agent_back_the_conversation_it_kept() {
    let server = MockServer::start().await;
    let kept = json!({ "id": "conv-7", "turns": ["How many orders?"] });
    Mock::given(body_partial_json(json!({ "conversation": null })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "text": "1,234.", "conversation": kept })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(body_partial_json(
        json!({ "question": "And before?", "conversation": kept }),
    ))
    .respond_with(said("1,100."))
    .expect(1)
    .mount(&server)
    .await;
    let agent = http_agent(&server);

    let first = ask(&agent, &question("How many orders?", None)).await.unwrap();
    assert_eq!(first.conversation.as_ref(), Some(&kept));
    let second = ask(&agent, &question("And before?", first.conversation)).await.unwrap();

    assert_eq!(second.text, "1,100.");
    assert_eq!(second.conversation, None, "an answer without conversation forgets it");
}

#[tokio::test]
async fn an_answer_with_blocks_and_suggestions_keeps_them() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "text": "Orders by region",
            "blocks": [
                { "type": "header", "text": { "type": "plain_text", "text": "Orders" } },
                { "type": "section", "text": { "type": "mrkdwn", "text": "*EMEA* 700" } },
                { "type": "divider" }
            ],
            "suggestions": ["And by country?", "  "]
        })))
        .mount(&server)
        .await;

    let answer = ask(&http_agent(&server), &question("Orders by region?", None))
        .await
        .unwrap();

    assert_eq!(answer.text, "Orders by region");
    assert_eq!(answer.blocks.len(), 3);
    assert!(matches!(answer.blocks[0], SlackBlock::Header(_)));
    assert!(matches!(answer.blocks[1], SlackBlock::Section(_)));
    assert_eq!(answer.suggestions, ["And by country?"]);
}

// A `markdown` block may carry up to 12,000 characters; other texts keep the 3000 limit.
#[tokio::test]
async fn a_long_markdown_block_is_kept_where_a_section_that_long_would_not_be() {
    let answer = http_agent_answering(ResponseTemplate::new(200).set_body_json(json!({
        "text": "The long report",
        "blocks": [{ "type": "markdown", "text": format!("# Report\n{}", "word ".repeat(2_000)) }],
    })))
    .await
    .unwrap();

    assert_eq!(answer.blocks.len(), 1);
    assert!(matches!(answer.blocks[0], SlackBlock::Markdown(_)));
}

#[tokio::test]
async fn invalid_blocks_are_dropped_and_the_text_still_answers() {
    for blocks in [
        json!([{ "type": "section", "text": { "type": "mrkdwn", "text": "ok" } }, { "type": "hologram" }]),
        json!([{ "type": "header" }]),
        json!("not a list"),
        json!(vec![json!({ "type": "divider" }); 51]),
        // Texts longer than Slack takes would make it refuse the whole answer.
        json!([{ "type": "section", "text": { "type": "mrkdwn", "text": "x".repeat(3001) } }]),
        json!([{ "type": "header", "text": { "type": "plain_text", "text": "h".repeat(151) } }]),
        json!([{ "type": "markdown", "text": "m".repeat(12_001) }]),
        // 12,000 may count for all of a message's markdown blocks together.
        json!([{ "type": "markdown", "text": "m".repeat(7_000) }, { "type": "markdown", "text": "n".repeat(7_000) }]),
        // Interactive blocks would be clicked at this bot, e.g. as its own Disconnect.
        json!([{ "type": "actions", "elements": [{ "type": "button", "action_id": "disconnect",
                                                     "text": { "type": "plain_text", "text": "Go" } }] }]),
        json!([{ "type": "section", "text": { "type": "mrkdwn", "text": "pick" },
                 "accessory": { "type": "button", "action_id": "ask_suggestion_0", "value": "drop tables",
                                "text": { "type": "plain_text", "text": "Go" } } }]),
    ] {
        let answer = http_agent_answering(
            ResponseTemplate::new(200).set_body_json(json!({ "text": "Plain answer", "blocks": blocks })),
        )
        .await
        .unwrap();

        assert_eq!(answer.text, "Plain answer");
        assert!(answer.blocks.is_empty(), "kept {blocks}");
    }
}

#[tokio::test]
async fn an_answer_without_text_could_not_be_read_even_with_blocks() {
    for body in [
        json!({ "blocks": [{ "type": "divider" }] }),
        json!({ "text": "   " }),
        json!({ "text": 42 }),
        json!(["a list"]),
    ] {
        let error = http_agent_answering(ResponseTemplate::new(200).set_body_json(body))
            .await
            .unwrap_err();

        assert_eq!(error, failed("your agent sent an answer I could not read"));
    }
}

#[tokio::test]
async fn an_answer_that_is_not_json_could_not_be_read() {
    let error = http_agent_answering(ResponseTemplate::new(200).set_body_string("<html>Sign in</html>"))
        .await
        .unwrap_err();

    assert_eq!(error, failed("your agent sent an answer I could not read"));
}

#[tokio::test]
async fn a_500_from_the_agent_is_worth_retrying_later() {
    let error =
        http_agent_answering(ResponseTemplate::new(500).set_body_string("Traceback (most recent call last): …"))
            .await
            .unwrap_err();

    assert_eq!(error, transient("your agent is unavailable right now"));
}

#[tokio::test]
async fn a_rate_limited_agent_says_when_to_retry() {
    let error = http_agent_answering(ResponseTemplate::new(429).insert_header("retry-after", "7"))
        .await
        .unwrap_err();

    assert_eq!(
        error,
        AgentError::Transient {
            reason: "your agent is unavailable right now".into(),
            retry_after: Some(Duration::from_secs(7)),
        }
    );
}

#[tokio::test]
async fn an_agent_slower_than_the_timeout_did_not_answer_in_time() {
    let error = http_agent_answering(said("too late").set_delay(Duration::from_secs(2)))
        .await
        .unwrap_err();

    assert_eq!(error, transient("your agent did not answer in time"));
}

#[tokio::test]
async fn an_agent_nobody_listens_for_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let agent = HttpAgent::new(client(), Url::parse(&format!("http://127.0.0.1:{port}/agent")).unwrap());

    let error = ask(&agent, &question("q", None)).await.unwrap_err();

    assert_eq!(error, transient("your agent is unavailable right now"));
}

#[tokio::test]
async fn a_401_from_the_agent_is_its_own_refusal_not_a_databricks_token_problem() {
    for status in [401, 403] {
        let error = http_agent_answering(
            ResponseTemplate::new(status).insert_header("www-authenticate", r#"Bearer realm="gateway""#),
        )
        .await
        .unwrap_err();

        assert_eq!(error, failed("your agent refused the request"), "HTTP {status}");
    }
}

// Without a way to renew the token (none was given), the refusal goes to the caller.
#[tokio::test]
async fn an_agent_saying_the_bearer_is_an_invalid_token_is_unauthorized_when_nothing_renews_it() {
    let error = http_agent_answering(
        ResponseTemplate::new(401).insert_header("www-authenticate", r#"Bearer error="invalid_token""#),
    )
    .await
    .unwrap_err();

    assert_eq!(error, AgentError::Unauthorized);
}

// Issue 11: the agent's 401 invalid_token gets the token renewed and that one request sent
// again, with the same Idempotency-Key so the agent can tell it is the same question.
#[tokio::test]
async fn an_agent_refusing_the_token_gets_the_request_again_with_a_renewed_token_and_the_same_key() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header("authorization", "Bearer at-renewed"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"text": "42 orders"})))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401).insert_header("www-authenticate", r#"Bearer error="invalid_token""#))
        .mount(&server)
        .await;
    let renewer = std::sync::Arc::new(agents::Renewer::default());
    let mut asked = question("how many orders?", None);
    asked.context.renew = Some(renewer.clone());

    let answer = ask(&http_agent(&server), &asked).await.unwrap();

    assert_eq!(answer.text, "42 orders");
    assert_eq!(*renewer.renewals.lock().unwrap(), [1]);
    let keys: Vec<String> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.headers["idempotency-key"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys, [asked.key.clone(), asked.key], "two tries of one question");
}

// ---- adk -----------------------------------------------------------------------------

/// The ADK fixture `tests/fixtures/adk/{name}.json`.
fn adk_fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/adk/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// `events` framed as ADK's `/run_sse` frames them.
fn sse(events: &[Value]) -> String {
    events.iter().map(|event| format!("data: {event}\n\n")).collect()
}

/// A `/run_sse` answer streaming `events`.
fn streaming(events: &[Value]) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(sse(events), "text/event-stream; charset=utf-8")
}

/// The recorded `/run_sse` answer in `name`.
fn recorded_stream(name: &str) -> ResponseTemplate {
    let fixture = adk_fixture(name);
    streaming(fixture["events"].as_array().unwrap())
}

/// The recorded JSON answer in `name`.
fn recorded_json(name: &str) -> ResponseTemplate {
    let fixture = adk_fixture(name);
    ResponseTemplate::new(fixture["status"].as_u64().unwrap() as u16).set_body_json(&fixture["body"])
}

fn session(id: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": id, "appName": APP, "userId": ADK_USER, "state": {}, "events": [], "lastUpdateTime": 1743711430.02
    }))
}

/// The events ADK streams for a run that called one tool and then answered.
fn ran(answer: &str) -> ResponseTemplate {
    streaming(&[
        json!({
            "id": "e1", "invocationId": "i1", "author": APP,
            "content": { "role": "model", "parts": [
                { "text": "I should count the orders.", "thought": true },
                { "functionCall": { "id": "c1", "name": "run_sql", "args": { "sql": "SELECT count(*) FROM orders" } } }
            ] }
        }),
        json!({
            "id": "e2", "invocationId": "i1", "author": APP,
            "content": { "role": "user", "parts": [
                { "functionResponse": { "id": "c1", "name": "run_sql", "response": { "rows": [[1234]] } } }
            ] }
        }),
        json!({
            "id": "e3", "invocationId": "i1", "author": APP,
            "content": { "role": "model", "parts": [{ "text": answer }] }
        }),
    ])
}

/// What the ADK agent makes of `events` from its run of the question "q" in a new session.
async fn adk_running(events: ResponseTemplate) -> Result<AgentAnswer, AgentError> {
    let server = MockServer::start().await;
    Mock::given(path(SESSIONS))
        .respond_with(session("s-1"))
        .mount(&server)
        .await;
    Mock::given(path("/run_sse")).respond_with(events).mount(&server).await;
    ask(&adk(&server), &question("q", None)).await
}

fn run_in(session_id: &str) -> wiremock::matchers::BodyPartialJsonMatcher {
    body_partial_json(json!({ "session_id": session_id }))
}

#[tokio::test]
async fn the_first_adk_question_creates_a_session_and_runs_with_the_token_in_temp_state() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(SESSIONS))
        .respond_with(session("s-1"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/run_sse"))
        .and(body_json(json!({
            "app_name": APP,
            "user_id": ADK_USER,
            "session_id": "s-1",
            "new_message": { "role": "user", "parts": [{ "text": "How many orders?" }] },
            "streaming": true,
            "state_delta": {
                "temp:databricks_token": TOKEN,
                "temp:databricks_host": HOST
            }
        })))
        .respond_with(ran("We have 1,234 orders."))
        .expect(1)
        .mount(&server)
        .await;

    let answer = ask(&adk(&server), &question("How many orders?", None)).await.unwrap();

    assert_eq!(answer.text, "We have 1,234 orders.");
    assert_eq!(answer.conversation, Some(json!({ "session_id": "s-1" })));
    for request in server.received_requests().await.unwrap() {
        assert!(
            request.headers.get("authorization").is_none(),
            "the token goes only in temp: state"
        );
    }
}

#[tokio::test]
async fn an_adk_follow_up_reuses_the_threads_session_without_creating_another() {
    let server = MockServer::start().await;
    Mock::given(path(SESSIONS))
        .respond_with(session("s-2"))
        .expect(0)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/run_sse"))
        .and(run_in("s-1"))
        .and(body_partial_json(
            json!({ "new_message": { "parts": [{ "text": "And before?" }] } }),
        ))
        .respond_with(ran("1,100 the week before."))
        .expect(1)
        .mount(&server)
        .await;

    let answer = ask(
        &adk(&server),
        &question("And before?", Some(json!({ "session_id": "s-1" }))),
    )
    .await
    .unwrap();

    assert_eq!(answer.text, "1,100 the week before.");
    assert_eq!(answer.conversation, Some(json!({ "session_id": "s-1" })));
}

#[tokio::test]
async fn a_session_adk_no_longer_has_is_replaced_once() {
    let server = MockServer::start().await;
    Mock::given(path("/run_sse"))
        .and(run_in("s-gone"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({ "detail": "Session not found: s-gone" })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path(SESSIONS))
        .respond_with(session("s-new"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/run_sse"))
        .and(run_in("s-new"))
        .respond_with(ran("Fresh answer."))
        .expect(1)
        .mount(&server)
        .await;

    let answer = ask(&adk(&server), &question("q", Some(json!({ "session_id": "s-gone" }))))
        .await
        .unwrap();

    assert_eq!(answer.text, "Fresh answer.");
    assert_eq!(answer.conversation, Some(json!({ "session_id": "s-new" })));
}

#[tokio::test]
async fn a_session_lost_again_right_after_creation_fails_instead_of_looping() {
    let server = MockServer::start().await;
    Mock::given(path("/run_sse"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({ "detail": "Session not found" })))
        .expect(2)
        .mount(&server)
        .await;
    Mock::given(path(SESSIONS))
        .respond_with(session("s-new"))
        .expect(1)
        .mount(&server)
        .await;

    let error = ask(&adk(&server), &question("q", Some(json!({ "session_id": "s-gone" }))))
        .await
        .unwrap_err();

    assert_eq!(error, failed("your agent sent an answer I could not read"));
}

#[tokio::test]
async fn a_streamed_adk_answer_is_the_final_event_not_the_partial_ones_before_it() {
    let answer = adk_running(recorded_stream("run-sse-streamed")).await.unwrap();

    assert_eq!(answer.text, "We shipped 1,234 orders last week.");
}

#[tokio::test]
async fn an_adk_runs_partial_words_are_written_as_they_come() {
    let server = MockServer::start().await;
    Mock::given(path(SESSIONS))
        .respond_with(session("s-1"))
        .mount(&server)
        .await;
    Mock::given(path("/run_sse"))
        .respond_with(recorded_stream("run-sse-streamed"))
        .mount(&server)
        .await;
    let shown = Shown::default();

    let answer = adk(&server).answer(&question("q", None), &shown).await.unwrap();

    assert_eq!(shown.written(), ["We shipped ", "1,234 orders ", "last week."]);
    assert!(answer.text.starts_with(&shown.written().concat()));
}

#[tokio::test]
async fn the_adk_answer_is_the_final_agent_text_not_thoughts_tool_calls_or_the_user() {
    let answer = adk_running(streaming(&[
        json!({ "author": "user", "content": { "role": "user", "parts": [{ "text": "the question" }] } }),
        json!({ "author": APP, "content": { "role": "model", "parts": [
            { "text": "Let me check." },
            { "functionCall": { "name": "run_sql", "args": {} } }
        ] } }),
        json!({ "author": APP, "content": { "role": "user", "parts": [
            { "functionResponse": { "name": "run_sql", "response": { "result": "1234" } } }
        ] } }),
        json!({ "author": APP, "content": { "role": "model", "parts": [
            { "text": "Counting rows…", "thought": true },
            { "text": "1,234 orders." }
        ] } }),
    ]))
    .await
    .unwrap();

    assert_eq!(answer.text, "1,234 orders.");
}

#[tokio::test]
async fn an_adk_run_ending_without_a_final_event_says_the_agent_finished_without_an_answer() {
    let events = adk_fixture("run-sse-streamed")["events"].as_array().unwrap().clone();
    let partial_only = &events[..events.len() - 1];
    for stream in [
        streaming(partial_only),
        streaming(&[]),
        streaming(&[json!({ "author": APP, "content": { "parts": [{ "functionCall": { "name": "x" } }] } })]),
    ] {
        let error = adk_running(stream).await.unwrap_err();

        assert_eq!(error, failed("your agent finished without an answer"));
    }
}

#[tokio::test]
async fn an_adk_run_that_raised_is_the_agents_problem() {
    let error = adk_running(recorded_stream("run-sse-error-frame")).await.unwrap_err();

    assert_eq!(error, failed("your agent ran into a problem answering"));
}

#[tokio::test]
async fn an_adk_stream_that_is_not_adk_events_could_not_be_read() {
    let error = adk_running(ResponseTemplate::new(200).set_body_raw("data: <html>\n\n", "text/event-stream"))
        .await
        .unwrap_err();

    assert_eq!(error, failed("your agent sent an answer I could not read"));
}

#[tokio::test]
async fn a_500_from_adk_is_worth_retrying_later() {
    let error = adk_running(ResponseTemplate::new(500).set_body_string("Internal Server Error"))
        .await
        .unwrap_err();

    assert_eq!(error, transient("your agent is unavailable right now"));
}

#[tokio::test]
async fn an_adk_agent_slower_than_the_timeout_did_not_answer_in_time() {
    let error = adk_running(ran("too late").set_delay(Duration::from_secs(2)))
        .await
        .unwrap_err();

    assert_eq!(error, transient("your agent did not answer in time"));
}

/// An ADK that accepts one `/run_sse`, streams `first` and then does `then`; how many
/// requests it got.
async fn adk_stopping_after(first: Value, then: Then) -> (Url, Arc<AtomicUsize>) {
    agents::streaming_then(sse(std::slice::from_ref(&first)), then).await
}

#[tokio::test]
async fn an_adk_run_that_goes_quiet_after_starting_stopped_answering_and_is_not_asked_again() {
    let first = adk_fixture("run-sse-streamed")["events"][0].clone();
    let (url, requests) = adk_stopping_after(first, Then::GoesQuiet).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let agent = Adk::new(client, url, APP.into()).with_idle_timeout(Duration::from_millis(300));

    let error = ask(&agent, &question("q", Some(json!({ "session_id": "s-1" }))))
        .await
        .unwrap_err();

    assert_eq!(error, failed("your agent stopped answering"));
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}

// A connection reset after the run began: the agent may have acted, so it is not run again.
#[tokio::test]
async fn an_adk_run_cut_off_mid_stream_is_not_asked_again() {
    let first = adk_fixture("run-sse-streamed")["events"][0].clone();
    let (url, requests) = adk_stopping_after(first, Then::Resets).await;
    let agent = Adk::new(reqwest::Client::new(), url, APP.into());

    let error = ask(&agent, &question("q", Some(json!({ "session_id": "s-1" }))))
        .await
        .unwrap_err();

    assert_eq!(error, failed("your agent stopped answering"));
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_adk_server_refusing_the_bot_is_a_plain_refusal() {
    let server = MockServer::start().await;
    Mock::given(path(SESSIONS))
        .respond_with(ResponseTemplate::new(403).set_body_string("Forbidden"))
        .mount(&server)
        .await;

    let error = ask(&adk(&server), &question("q", None)).await.unwrap_err();

    assert_eq!(error, failed("your agent refused the request"));
}

/// What the version probe reports of an ADK answering `GET /version` with `response`.
async fn adk_version(response: ResponseTemplate) -> VersionReport {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/version"))
        .respond_with(response)
        .expect(1)
        .mount(&server)
        .await;
    adk(&server).probe_version().await
}

#[tokio::test]
async fn the_version_probe_tells_a_supported_adk_from_an_old_or_unknown_one() {
    assert_eq!(
        adk_version(recorded_json("version")).await,
        VersionReport::Supported("1.27.1".into())
    );
    assert_eq!(
        adk_version(recorded_json("version-2.1.0")).await,
        VersionReport::Unsupported("2.1.0".into())
    );
    let old = json!({ "version": "1.26.0", "language": "python", "language_version": "3.12.3" });
    assert_eq!(
        adk_version(ResponseTemplate::new(200).set_body_json(old)).await,
        VersionReport::Unsupported("1.26.0".into())
    );
    for unknown in [
        recorded_json("version-404"),
        ResponseTemplate::new(200).set_body_json(json!({ "version": "latest" })),
        ResponseTemplate::new(200).set_body_string("<html>ok</html>"),
        ResponseTemplate::new(502),
    ] {
        let report = adk_version(unknown).await;

        assert!(matches!(report, VersionReport::Unknown(_)), "{report:?}");
    }
}

// ---- logs ----------------------------------------------------------------------------

#[tokio::test]
async fn an_agent_echoing_the_request_back_in_an_error_does_not_put_the_token_in_the_logs() {
    let logs = Captured::default();
    // This test's runtime is single-threaded, so everything it awaits logs here.
    let _guard = tracing::subscriber::set_default(logs.subscriber());
    let server = MockServer::start().await;
    // FastAPI's 422 echoes the offending request body, state_delta and all.
    Mock::given(path(SESSIONS))
        .respond_with(session("s-1"))
        .mount(&server)
        .await;
    Mock::given(path("/run_sse"))
        .respond_with(ResponseTemplate::new(422).set_body_json(json!({ "detail": [{
            "type": "missing", "loc": ["body", "x"], "msg": "Field required",
            "input": { "state_delta": { "temp:databricks_token": TOKEN } }
        }] })))
        .mount(&server)
        .await;
    Mock::given(path("/agent"))
        .respond_with(ResponseTemplate::new(500).set_body_string(format!("bad header: Bearer {TOKEN}")))
        .mount(&server)
        .await;

    let adk_error = ask(&adk(&server), &question("q", None)).await.unwrap_err();
    let http_error = ask(&http_agent(&server), &question("q", None)).await.unwrap_err();

    assert_eq!(adk_error, failed("your agent could not handle the request"));
    assert_eq!(http_error, transient("your agent is unavailable right now"));
    let logs = logs.text();
    assert!(logs.contains("Field required") && logs.contains("bad header"), "{logs}");
    assert!(!logs.contains(TOKEN), "{logs}");
}

// ---- http, streamed ------------------------------------------------------------------

/// `events` (name, data) as the http agent streams them (see `agent::external`).
fn http_stream(events: &[(&str, Value)]) -> ResponseTemplate {
    let body: String = events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect();
    ResponseTemplate::new(200).set_body_raw(body, "text/event-stream")
}

/// What the HTTP agent answers, writes and shows when it streams `events`.
async fn http_agent_streaming(events: &[(&str, Value)]) -> (Result<AgentAnswer, AgentError>, Shown) {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(http_stream(events))
        .mount(&server)
        .await;
    let shown = Shown::default();
    let answer = http_agent(&server).answer(&question("q", None), &shown).await;
    let asked = &server.received_requests().await.unwrap()[0];
    assert_eq!(asked.headers["accept"], "application/json, text/event-stream");
    (answer, shown)
}

#[tokio::test]
async fn a_streamed_http_answer_writes_its_deltas_and_shows_its_statuses() {
    let (answer, shown) = http_agent_streaming(&[
        ("status", json!({ "status": "Counting orders…" })),
        ("delta", json!({ "text": "We shipped " })),
        ("something_new", json!({ "ignored": true })),
        ("delta", json!({ "text": "1,234 orders." })),
        (
            "answer",
            json!({ "suggestions": ["And the week before?"], "conversation": { "turns": 1 } }),
        ),
    ])
    .await;

    let answer = answer.unwrap();
    assert_eq!(shown.seen(), ["Asking your agent…", "Counting orders…"]);
    assert_eq!(shown.written(), ["We shipped ", "1,234 orders."]);
    assert_eq!(answer.text, "We shipped 1,234 orders.");
    assert_eq!(answer.suggestions, ["And the week before?"]);
    assert_eq!(answer.conversation, Some(json!({ "turns": 1 })));
}

#[tokio::test]
async fn an_answer_text_that_does_not_begin_with_the_deltas_follows_them_instead_of_replacing_them() {
    let (answer, _) = http_agent_streaming(&[
        ("delta", json!({ "text": "We shipped " })),
        ("answer", json!({ "text": "We shipped 1,234 orders." })),
    ])
    .await;
    assert_eq!(answer.unwrap().text, "We shipped 1,234 orders.");

    let (answer, shown) = http_agent_streaming(&[
        ("delta", json!({ "text": "We shipped 12" })),
        ("answer", json!({ "text": "Sorry: we shipped 1,234 orders." })),
    ])
    .await;
    let text = answer.unwrap().text;
    assert!(text.starts_with(&shown.written().concat()));
    assert_eq!(text, "We shipped 12\n\nSorry: we shipped 1,234 orders.");
}

#[tokio::test]
async fn an_error_event_is_told_in_the_agents_words_and_retried_only_when_it_says_so() {
    let (answer, _) = http_agent_streaming(&[
        ("delta", json!({ "text": "Looking" })),
        (
            "error",
            json!({ "error": "The orders service is down.", "retryable": true }),
        ),
    ])
    .await;
    assert_eq!(answer.unwrap_err(), transient("The orders service is down."));

    let (answer, _) = http_agent_streaming(&[("error", json!({ "error": "You may not see orders." }))]).await;
    assert_eq!(answer.unwrap_err(), failed("You may not see orders."));
}

#[tokio::test]
async fn a_stream_without_an_answer_event_or_with_a_bad_one_is_not_an_answer() {
    let (answer, _) = http_agent_streaming(&[("delta", json!({ "text": "We shipped" }))]).await;
    assert_eq!(answer.unwrap_err(), failed("your agent stopped answering"));

    let (answer, _) = http_agent_streaming(&[("delta", json!("not an object"))]).await;
    assert_eq!(
        answer.unwrap_err(),
        failed("your agent sent an answer I could not read")
    );

    let (answer, _) = http_agent_streaming(&[("answer", json!({}))]).await;
    assert_eq!(
        answer.unwrap_err(),
        failed("your agent sent an answer I could not read")
    );
}

// The agent may have acted by the time it goes quiet, so it is not asked again.
#[tokio::test]
async fn a_streamed_http_answer_that_goes_quiet_stopped_answering_and_is_not_asked_again() {
    let first = format!("event: delta\ndata: {}\n\n", json!({ "text": "We shipped" }));
    let (url, requests) = agents::streaming_then(first, Then::GoesQuiet).await;
    let agent = HttpAgent::new(reqwest::Client::new(), url).with_idle_timeout(Duration::from_millis(300));
    let shown = Shown::default();

    let error = agent.answer(&question("q", None), &shown).await.unwrap_err();

    assert_eq!(error, failed("your agent stopped answering"));
    assert_eq!(shown.written(), ["We shipped"]);
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}
