//! The Genie agent against a fake Genie space on loopback: what the person gets back, and
//! what Databricks received (always the person's own token).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::agents::{self, Shown};
use crate::common::recorded::{TOKEN_REFUSALS, genie_message, genie_started, recorded};
use databricks_slack_bot::agent::genie::{Genie, Timing};
use databricks_slack_bot::agent::{Agent, AgentAnswer, AgentError, AgentRequest, Table, Unwatched};
use databricks_slack_bot::config::GenieSpaces;
use databricks_slack_bot::databricks::api::http_client;
use serde_json::{Value, json};
use wiremock::matchers::{bearer_token, body_json, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const TOKEN: &str = "the-askers-own-token";
const SPACE: &str = "space-1";
const QUESTION: &str = "How did revenue change last quarter?";
const SQL: &str = "SELECT quarter, SUM(revenue) AS revenue FROM sales GROUP BY quarter";

fn fast() -> Timing {
    Timing {
        first_wait: Duration::from_millis(2),
        longest_wait: Duration::from_millis(10),
        bound: Duration::from_secs(5),
    }
}

fn genie(timing: Timing) -> Genie {
    Genie::new(http_client(), GenieSpaces::everywhere(SPACE)).with_timing(timing)
}

fn request(server: &MockServer, conversation: Option<Value>) -> AgentRequest {
    agents::request(&server.uri(), TOKEN, QUESTION, conversation)
}

/// Asks [`QUESTION`] in a new thread, with nobody watching.
async fn ask(server: &MockServer) -> Result<AgentAnswer, AgentError> {
    genie(fast()).answer(&request(server, None), &Unwatched).await
}

/// Answers with each response in turn, then repeats the last.
struct InTurn {
    responses: Vec<ResponseTemplate>,
    next: AtomicUsize,
}

fn in_turn(responses: Vec<ResponseTemplate>) -> InTurn {
    InTurn {
        responses,
        next: AtomicUsize::new(0),
    }
}

impl Respond for InTurn {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let turn = self.next.fetch_add(1, Ordering::SeqCst);
        self.responses[turn.min(self.responses.len() - 1)].clone()
    }
}

fn ok(body: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(body)
}

fn conversation_path(conversation: &str) -> String {
    format!("/api/2.0/genie/spaces/{SPACE}/conversations/{conversation}")
}

fn message_path(conversation: &str, message: &str) -> String {
    format!("{}/messages/{message}", conversation_path(conversation))
}

fn attachment_path(conversation: &str, message: &str, attachment: &str, action: &str) -> String {
    format!(
        "{}/attachments/{attachment}/{action}",
        message_path(conversation, message)
    )
}

/// Message `id` of `conversation` in `status`, asking [`QUESTION`] in [`SPACE`].
fn message(conversation: &str, id: &str, status: &str, attachments: Value) -> Value {
    let mut message = genie_message(conversation, id, status, attachments);
    message["space_id"] = json!(SPACE);
    message["content"] = json!(QUESTION);
    message
}

fn failed(kind: &str, error: &str) -> Value {
    let mut failed = message("c-1", "m-1", "FAILED", Value::Null);
    failed["error"] = json!({"error": error, "type": kind});
    failed
}

/// Genie's full answer: prose, a query, and follow-up questions both ways Genie sends them.
fn answer_attachments() -> Value {
    json!([
        {"attachment_id": "a-text", "text": {"id": "t-1", "content": "Revenue grew 12% in Q3."}},
        {"attachment_id": "a-query", "query": {
            "title": "Revenue by quarter",
            "description": "Sums revenue per quarter.",
            "query": SQL,
            "statement_id": "st-1",
            "query_result_metadata": {"row_count": 2},
        }},
        {"attachment_id": "a-follow", "text": {"content": "What about Q4?", "purpose": "FOLLOW_UP_QUESTION"}},
        {"attachment_id": "a-suggested", "suggested_questions": {
            "questions": ["Which region grew most?", "What about Q4?"],
        }},
    ])
}

/// A poll finding Genie's [`answer_attachments`] complete.
fn completed() -> ResponseTemplate {
    ok(message("c-1", "m-1", "COMPLETED", answer_attachments()))
}

/// Genie's recorded query result (columns `quarter` and `revenue`) in `state`, with
/// `data_array` as its rows.
fn statement(state: &str, data_array: Value) -> Value {
    let mut result = recorded("genie-query-result").json();
    let statement = &mut result["statement_response"];
    statement["statement_id"] = json!("st-1");
    statement["status"]["state"] = json!(state);
    statement["result"]["data_array"] = data_array;
    result
}

fn two_quarters() -> Value {
    statement("SUCCEEDED", json!([["Q2", "100"], ["Q3", null]]))
}

fn the_two_quarters_table() -> Table {
    Table {
        total_rows: Some(2),
        ..Table::of(
            vec!["quarter".into(), "revenue".into()],
            vec![
                vec![Some("Q2".into()), Some("100".into())],
                vec![Some("Q3".into()), None],
            ],
        )
    }
}

/// `start-conversation` creating conversation `c-1` with message `m-1`.
async fn starts_conversation(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path(format!("/api/2.0/genie/spaces/{SPACE}/start-conversation")))
        .and(bearer_token(TOKEN))
        .and(body_json(json!({"content": QUESTION})))
        .respond_with(ok(genie_started("c-1", "m-1")))
        .mount(server)
        .await;
}

/// Polls of message `m-1` in conversation `c-1` answered with `responses` in turn.
async fn polls(server: &MockServer, responses: Vec<ResponseTemplate>) {
    Mock::given(method("GET"))
        .and(path(message_path("c-1", "m-1")))
        .and(bearer_token(TOKEN))
        .respond_with(in_turn(responses))
        .mount(server)
        .await;
}

async fn query_result(server: &MockServer, body: Value) {
    Mock::given(method("GET"))
        .and(path(attachment_path("c-1", "m-1", "a-query", "query-result")))
        .and(bearer_token(TOKEN))
        .respond_with(ok(body))
        .mount(server)
        .await;
}

/// A recorded `FAILED` message (tests/fixtures/databricks/), as message `m-1` of `c-1`.
fn recorded_failure(fixture: &str) -> Value {
    let mut body = recorded(fixture).json();
    body["conversation_id"] = json!("c-1");
    body["message_id"] = json!("m-1");
    body["id"] = json!("m-1");
    body
}

/// The failure when the message polls as `response`.
async fn error_of(response: Value) -> AgentError {
    let server = MockServer::start().await;
    starts_conversation(&server).await;
    polls(&server, vec![ok(response)]).await;
    ask(&server).await.expect_err("Genie did not answer")
}

/// The failure when Genie answers every `POST` as the recorded `fixture`.
async fn error_when_refused(fixture: &str) -> AgentError {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(recorded(fixture).template())
        .mount(&server)
        .await;
    ask(&server).await.unwrap_err()
}

#[tokio::test]
async fn a_new_thread_starts_a_conversation_and_answers_with_text_sql_table_and_suggestions() {
    let server = MockServer::start().await;
    starts_conversation(&server).await;
    polls(
        &server,
        vec![
            ok(message("c-1", "m-1", "SUBMITTED", json!([]))),
            ok(message("c-1", "m-1", "PENDING_WAREHOUSE", json!([]))),
            ok(message("c-1", "m-1", "EXECUTING_QUERY", json!([]))),
            completed(),
        ],
    )
    .await;
    query_result(&server, two_quarters()).await;
    let progress = Shown::default();

    let answer = genie(fast()).answer(&request(&server, None), &progress).await.unwrap();

    assert_eq!(answer.text, "Revenue grew 12% in Q3.");
    assert_eq!(answer.sql.as_deref(), Some(SQL));
    assert_eq!(answer.table, Some(the_two_quarters_table()));
    assert_eq!(answer.suggestions, ["What about Q4?", "Which region grew most?"]);
    assert_eq!(
        answer.conversation,
        Some(json!({"conversation_id": "c-1", "space_id": SPACE, "message_id": "m-1"}))
    );
    assert_eq!(
        progress.seen(),
        [
            "Asking Genie…",
            "Waiting for the SQL warehouse to start…",
            "Running query…"
        ]
    );
    let received = server.received_requests().await.unwrap();
    assert_eq!(received.len(), 6, "start, four polls, one query result");
    agents::assert_bearer(&received, TOKEN);
}

#[tokio::test]
async fn a_follow_up_continues_the_kept_conversation_instead_of_starting_one() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/api/2.0/genie/spaces/{SPACE}/start-conversation")))
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("{}/messages", conversation_path("c-kept"))))
        .and(bearer_token(TOKEN))
        .and(body_json(json!({"content": QUESTION})))
        .respond_with(ok(message("c-kept", "m-2", "SUBMITTED", json!([]))))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(message_path("c-kept", "m-2")))
        .and(bearer_token(TOKEN))
        .respond_with(ok(message(
            "c-kept",
            "m-2",
            "COMPLETED",
            json!([
                {"attachment_id": "a-1", "text": {"content": "Q4 was flat."}},
                {"attachment_id": "a-2", "text": {"content": "And Q1?", "purpose": "FOLLOW_UP_QUESTION"}},
            ]),
        )))
        .mount(&server)
        .await;

    let kept = json!({"conversation_id": "c-kept", "space_id": SPACE});
    let answer = genie(fast())
        .answer(&request(&server, Some(kept.clone())), &Unwatched)
        .await
        .unwrap();

    assert_eq!(answer.text, "Q4 was flat.");
    assert_eq!(answer.suggestions, ["And Q1?"]);
    assert_eq!((answer.sql, answer.table), (None, None));
    let mut kept_after = kept;
    kept_after["message_id"] = json!("m-2");
    assert_eq!(
        answer.conversation,
        Some(kept_after),
        "the answer's message is kept too"
    );
    server.verify().await;
}

#[tokio::test]
async fn a_kept_conversation_that_genie_no_longer_has_is_replaced_by_a_new_one() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("{}/messages", conversation_path("c-gone"))))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({
            "error_code": "RESOURCE_DOES_NOT_EXIST",
            "message": "Conversation c-gone does not exist.",
        })))
        .expect(1)
        .mount(&server)
        .await;
    starts_conversation(&server).await;
    polls(&server, vec![completed()]).await;
    query_result(&server, two_quarters()).await;

    let answer = genie(fast())
        .answer(
            &request(&server, Some(json!({"conversation_id": "c-gone"}))),
            &Unwatched,
        )
        .await
        .unwrap();

    assert_eq!(
        answer.conversation,
        Some(json!({"conversation_id": "c-1", "space_id": SPACE, "message_id": "m-1"}))
    );
    server.verify().await;
}

#[tokio::test]
async fn kept_state_that_is_unreadable_or_from_another_space_starts_a_new_conversation() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("{}/messages", conversation_path("c-old"))))
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&server)
        .await;
    starts_conversation(&server).await;
    polls(&server, vec![completed()]).await;
    query_result(&server, two_quarters()).await;

    for kept in [
        json!("not an object"),
        json!({"conversation_id": 42}),
        json!({"conversation_id": "c-old", "space_id": "another-space"}),
    ] {
        let answer = genie(fast())
            .answer(&request(&server, Some(kept)), &Unwatched)
            .await
            .unwrap();
        assert_eq!(
            answer.conversation,
            Some(json!({"conversation_id": "c-1", "space_id": SPACE, "message_id": "m-1"}))
        );
    }
    server.verify().await;
}

#[tokio::test]
async fn a_message_failed_by_genies_rate_limit_is_transient() {
    let error = error_of(recorded_failure("genie-message-failed-rate-limit")).await;
    assert!(
        matches!(&error, AgentError::Transient { reason, .. } if reason.starts_with("Genie is busy right now")),
        "{error:?}"
    );
}

// A query Genie ran that the warehouse refused for want of a grant is the person's
// answer (no access), in Databricks' words.
#[tokio::test]
async fn a_message_failed_in_sql_execution_for_want_of_a_grant_is_no_access() {
    let error = error_of(recorded_failure("genie-message-failed-sql-execution")).await;
    match error {
        AgentError::NoAccess(said) => assert!(said.contains("does not have SELECT on Table"), "{said}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_message_failed_for_another_reason_says_why_in_plain_words() {
    let error = error_of(failed(
        "GENERIC_CHAT_COMPLETION_EXCEPTION",
        "The question could not be interpreted.",
    ))
    .await;
    assert_eq!(
        error,
        AgentError::Failed("Genie could not answer: The question could not be interpreted.".into())
    );
}

#[tokio::test]
async fn a_message_failed_for_want_of_the_warehouse_is_no_access() {
    let error = error_of(recorded_failure("genie-message-failed-warehouse-access")).await;
    assert_eq!(
        error,
        AgentError::NoAccess(
            "User does not have CAN USE permission on the SQL warehouse attached to this space.".into()
        )
    );
}

#[tokio::test]
async fn a_cancelled_message_fails_and_is_not_asked_again() {
    let error = error_of(message("c-1", "m-1", "CANCELLED", json!([]))).await;
    assert_eq!(error, AgentError::Failed("the question was cancelled in Genie".into()));
}

#[tokio::test]
async fn an_expired_query_result_is_run_again_and_its_rows_are_answered() {
    let server = MockServer::start().await;
    starts_conversation(&server).await;
    polls(
        &server,
        vec![ok(message("c-1", "m-1", "QUERY_RESULT_EXPIRED", answer_attachments()))],
    )
    .await;
    Mock::given(method("POST"))
        .and(path(attachment_path("c-1", "m-1", "a-query", "execute-query")))
        .and(bearer_token(TOKEN))
        .respond_with(ok(statement("RUNNING", Value::Null)))
        .expect(1)
        .mount(&server)
        .await;
    query_result(&server, two_quarters()).await;
    let progress = Shown::default();

    let answer = genie(fast()).answer(&request(&server, None), &progress).await.unwrap();

    assert_eq!(answer.text, "Revenue grew 12% in Q3.");
    assert_eq!(answer.sql.as_deref(), Some(SQL));
    assert_eq!(answer.table, Some(the_two_quarters_table()));
    assert_eq!(progress.seen(), ["Asking Genie…", "Running query…"]);
    server.verify().await;
}

#[tokio::test]
async fn a_rate_limited_poll_is_waited_out_and_the_answer_still_arrives() {
    let server = MockServer::start().await;
    starts_conversation(&server).await;
    polls(
        &server,
        vec![
            recorded("rate-limited-429-retry-after")
                .with_header("Retry-After", "0")
                .template(),
            completed(),
        ],
    )
    .await;
    query_result(&server, two_quarters()).await;

    let answer = ask(&server).await.unwrap();

    assert_eq!(answer.table, Some(the_two_quarters_table()));
    let polled = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == message_path("c-1", "m-1"))
        .count();
    assert_eq!(polled, 2);
}

#[tokio::test]
async fn a_passing_server_error_while_polling_is_polled_through_instead_of_asking_again() {
    let server = MockServer::start().await;
    starts_conversation(&server).await;
    polls(
        &server,
        vec![recorded("temporarily-unavailable-503").template(), completed()],
    )
    .await;
    query_result(&server, two_quarters()).await;

    let answer = ask(&server).await.unwrap();

    assert_eq!(answer.table, Some(the_two_quarters_table()));
}

#[tokio::test]
async fn polls_that_keep_failing_end_the_answer_as_transient() {
    let server = MockServer::start().await;
    starts_conversation(&server).await;
    polls(&server, vec![ResponseTemplate::new(500)]).await;

    let error = ask(&server).await.unwrap_err();

    assert_eq!(error, AgentError::transient("Databricks is temporarily unavailable"));
    let polled = server.received_requests().await.unwrap().len() - 1;
    assert_eq!(polled, 4, "the first poll and three more");
}

#[tokio::test]
async fn a_message_that_never_finishes_fails_at_the_bound_without_a_retry() {
    let server = MockServer::start().await;
    starts_conversation(&server).await;
    polls(&server, vec![ok(message("c-1", "m-1", "ASKING_AI", json!([])))]).await;
    let timing = Timing {
        bound: Duration::from_millis(150),
        ..fast()
    };
    let started = Instant::now();

    let error = genie(timing)
        .answer(&request(&server, None), &Unwatched)
        .await
        .unwrap_err();

    assert_eq!(
        error,
        AgentError::Failed("Genie did not finish within 150 milliseconds".into())
    );
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert!(
        server.received_requests().await.unwrap().len() > 3,
        "polled more than once"
    );
}

// TOK-06 (issue 11): a token that expires while Genie is still working (a real workspace's numeric
// 403 on a poll) is renewed and only that poll is sent again: Genie is asked once.
#[tokio::test]
async fn a_token_refused_mid_answer_is_renewed_and_only_the_refused_call_is_sent_again() {
    let server = MockServer::start().await;
    starts_conversation(&server).await;
    Mock::given(method("GET"))
        .and(path(message_path("c-1", "m-1")))
        .and(bearer_token("at-renewed"))
        .respond_with(completed())
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(message_path("c-1", "m-1")))
        .respond_with(recorded("invalid-access-token-403").template())
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(attachment_path("c-1", "m-1", "a-query", "query-result")))
        .and(bearer_token("at-renewed"))
        .respond_with(ok(two_quarters()))
        .mount(&server)
        .await;
    let renewer = Arc::new(agents::Renewer::default());
    let mut asked = request(&server, None);
    asked.context.renew = Some(renewer.clone());

    let answer = genie(fast()).answer(&asked, &Unwatched).await.unwrap();

    assert_eq!(answer.table, Some(the_two_quarters_table()));
    assert_eq!(
        *renewer.renewals.lock().unwrap(),
        [1],
        "renewed once, from the refused version"
    );
    let requests = server.received_requests().await.unwrap();
    let starts = requests.iter().filter(|r| r.method.as_str() == "POST").count();
    assert_eq!(starts, 1, "the question was asked once");
}

// The renewed token refused as well: the caller hears Unauthorized, with no third try.
#[tokio::test]
async fn a_renewed_token_refused_again_is_unauthorized() {
    let server = MockServer::start().await;
    starts_conversation(&server).await;
    Mock::given(method("GET"))
        .respond_with(recorded("expired-token-403-jwt").template())
        .mount(&server)
        .await;
    let renewer = Arc::new(agents::Renewer::default());
    let mut asked = request(&server, None);
    asked.context.renew = Some(renewer.clone());

    let error = genie(fast()).answer(&asked, &Unwatched).await.unwrap_err();

    assert_eq!(error, AgentError::Unauthorized);
    assert_eq!(renewer.renewals.lock().unwrap().len(), 1);
}

/// Milliseconds since the epoch, as Genie stamps what it receives.
fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The recorded conversation list, its first conversation `c-1` started by [`QUESTION`] now.
fn listed_conversations() -> ResponseTemplate {
    let fixture = recorded("genie-list-conversations");
    let mut body = fixture.json();
    body["conversations"][0] = json!({"conversation_id": "c-1", "title": QUESTION, "created_timestamp": now_millis()});
    fixture.with_json(&body).template()
}

/// The recorded message list of `c-1`, holding `question` as message `m-1`, received now.
fn listed_messages(question: &str) -> ResponseTemplate {
    let fixture = recorded("genie-list-messages");
    let mut body = fixture.json();
    let listed = &mut body["messages"][0];
    listed["message_id"] = json!("m-1");
    listed["id"] = json!("m-1");
    listed["conversation_id"] = json!("c-1");
    listed["content"] = json!(question);
    listed["created_timestamp"] = json!(now_millis());
    fixture.with_json(&body).template()
}

/// Genie holding [`QUESTION`] as message `m-1` of `c-1`, answered: its message list, the
/// poll and the query result.
async fn genie_has_the_question(server: &MockServer) {
    Mock::given(method("GET"))
        .and(path(format!("{}/messages", conversation_path("c-1"))))
        .respond_with(listed_messages(QUESTION))
        .mount(server)
        .await;
    polls(server, vec![completed()]).await;
    query_result(server, two_quarters()).await;
}

// Issue 11: the gateway failed after Genie took the question (a recorded 502): the bot
// finds the conversation Genie started and follows it instead of asking again.
#[tokio::test]
async fn a_question_whose_answer_was_lost_is_found_in_genie_not_asked_again() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/api/2.0/genie/spaces/{SPACE}/start-conversation")))
        .respond_with(recorded("gateway-502").template())
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/api/2.0/genie/spaces/{SPACE}/conversations")))
        .respond_with(listed_conversations())
        .mount(&server)
        .await;
    genie_has_the_question(&server).await;

    let answer = ask(&server).await.unwrap();

    assert_eq!(answer.table, Some(the_two_quarters_table()));
    assert_eq!(answer.conversation.unwrap()["conversation_id"], "c-1");
}

// A follow-up whose answer was lost is found among the conversation's messages.
#[tokio::test]
async fn a_follow_up_whose_answer_was_lost_is_found_in_its_conversation() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("{}/messages", conversation_path("c-1"))))
        .respond_with(recorded("gateway-503").template())
        .expect(1)
        .mount(&server)
        .await;
    genie_has_the_question(&server).await;
    let kept = json!({"conversation_id": "c-1", "space_id": SPACE});

    let answer = genie(fast())
        .answer(&request(&server, Some(kept)), &Unwatched)
        .await
        .unwrap();

    assert_eq!(answer.table, Some(the_two_quarters_table()));
}

/// A later try of [`QUESTION`], first taken up a minute ago.
fn retried(server: &MockServer, conversation: Option<Value>) -> AgentRequest {
    let mut retried = request(server, conversation);
    retried.retry_since = Some(now_millis() / 1000 - 60);
    retried
}

// Issue 11: the bot stopped (or the try failed) after Genie took the question: the next try
// finds the conversation Genie started and follows it; nothing is asked again.
#[tokio::test]
async fn a_retried_question_genie_already_has_is_followed_not_asked_again() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ok(genie_started("c-2", "m-2")))
        .expect(0)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/api/2.0/genie/spaces/{SPACE}/conversations")))
        .respond_with(listed_conversations())
        .mount(&server)
        .await;
    genie_has_the_question(&server).await;

    let answer = genie(fast()).answer(&retried(&server, None), &Unwatched).await.unwrap();

    assert_eq!(answer.table, Some(the_two_quarters_table()));
    assert_eq!(answer.conversation.unwrap()["conversation_id"], "c-1");
    server.verify().await;
}

// The same for a follow-up: found among its conversation's messages, not sent again.
#[tokio::test]
async fn a_retried_follow_up_genie_already_has_is_followed_not_sent_again() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ok(genie_message("c-1", "m-2", "SUBMITTED", Value::Null)))
        .expect(0)
        .mount(&server)
        .await;
    genie_has_the_question(&server).await;
    let kept = json!({"conversation_id": "c-1", "space_id": SPACE});

    let answer = genie(fast())
        .answer(&retried(&server, Some(kept)), &Unwatched)
        .await
        .unwrap();

    assert_eq!(answer.table, Some(the_two_quarters_table()));
    server.verify().await;
}

// A retry whose question Genie never got (the earlier try failed before asking) asks it.
#[tokio::test]
async fn a_retried_question_genie_never_got_is_asked_once() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/api/2.0/genie/spaces/{SPACE}/conversations")))
        .respond_with(recorded("genie-list-conversations").template())
        .mount(&server)
        .await;
    starts_conversation(&server).await;
    polls(&server, vec![completed()]).await;
    query_result(&server, two_quarters()).await;

    let answer = genie(fast()).answer(&retried(&server, None), &Unwatched).await.unwrap();

    assert_eq!(answer.table, Some(the_two_quarters_table()));
    let starts = server.received_requests().await.unwrap();
    assert_eq!(starts.iter().filter(|r| r.method.as_str() == "POST").count(), 1);
}

// When Genie has no such question, it never got it: the failure stands, and the retry
// may ask.
#[tokio::test]
async fn a_lost_question_genie_never_received_stays_a_passing_failure() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(recorded("gateway-502").template())
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/api/2.0/genie/spaces/{SPACE}/conversations")))
        .respond_with(recorded("genie-list-conversations").template())
        .mount(&server)
        .await;

    let error = ask(&server).await.unwrap_err();

    assert!(matches!(error, AgentError::Transient { .. }), "{error:?}");
}

// Every way a real workspace refuses a token (a numeric 403, "JWT has expired", 401 with
// WWW-Authenticate or as an HTML page, a plain-text 400) asks the caller to refresh.
#[tokio::test]
async fn every_recorded_token_refusal_is_unauthorized_so_the_caller_refreshes() {
    for fixture in TOKEN_REFUSALS {
        assert_eq!(error_when_refused(fixture).await, AgentError::Unauthorized, "{fixture}");
    }
}

#[tokio::test]
async fn a_permission_denial_is_no_access_in_databricks_own_words() {
    let error = error_when_refused("permission-denied-403").await;

    assert_eq!(
        error,
        AgentError::NoAccess("User does not have USE CATALOG on Catalog 'main'.".into())
    );
}

// A gateway's page is a passing failure, and none of its HTML reaches the person.
#[tokio::test]
async fn gateway_pages_and_unavailability_are_transient() {
    for fixture in [
        "gateway-502",
        "gateway-503",
        "gateway-503-no-healthy-upstream",
        "temporarily-unavailable-503",
    ] {
        match error_when_refused(fixture).await {
            AgentError::Transient { reason, .. } => assert!(!reason.contains('<'), "{fixture}: {reason}"),
            other => panic!("{fixture}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_null_data_array_is_a_table_without_rows_not_a_failure() {
    let server = MockServer::start().await;
    starts_conversation(&server).await;
    polls(&server, vec![completed()]).await;
    let mut empty = statement("SUCCEEDED", Value::Null);
    empty["statement_response"]["manifest"]["total_row_count"] = json!(0);
    query_result(&server, empty).await;

    let answer = ask(&server).await.unwrap();

    let table = answer.table.expect("a table");
    assert_eq!(table.columns, ["quarter", "revenue"]);
    assert!(table.rows.is_empty());
    assert_eq!(table.total_rows, Some(0));
}

#[tokio::test]
async fn a_query_that_failed_in_the_warehouse_is_told_beside_genies_answer() {
    let server = MockServer::start().await;
    starts_conversation(&server).await;
    polls(&server, vec![completed()]).await;
    let mut failed_statement = statement("FAILED", Value::Null);
    failed_statement["statement_response"]["status"]["error"] =
        json!({"error_code": "BAD_REQUEST", "message": "[TABLE_OR_VIEW_NOT_FOUND] sales"});
    query_result(&server, failed_statement).await;

    let answer = ask(&server).await.unwrap();

    assert_eq!(
        answer.text,
        "Revenue grew 12% in Q3.\n\nThe query failed: [TABLE_OR_VIEW_NOT_FOUND] sales"
    );
    assert_eq!(answer.sql.as_deref(), Some(SQL));
    assert_eq!(answer.table, None);
}

/// Genie answering exactly as recorded: `start-conversation` as `start`, every poll of the
/// message it names as `completed`, and its query result as `result`. Returns the recorded
/// answer and the id of the conversation started.
async fn recorded_genie(start: &str, completed: &str, result: &str) -> (MockServer, Value, String) {
    let server = MockServer::start().await;
    let started = recorded(start).json();
    let message = &started["message"];
    let conversation = message["conversation_id"].as_str().unwrap();
    let id = message["id"].as_str().unwrap();
    Mock::given(method("POST"))
        .and(path(format!("/api/2.0/genie/spaces/{SPACE}/start-conversation")))
        .respond_with(recorded(start).template())
        .mount(&server)
        .await;
    let answer = recorded(completed).json();
    Mock::given(method("GET"))
        .and(path(message_path(conversation, id)))
        .respond_with(in_turn(vec![
            recorded("genie-message-executing-no-attachments").template(),
            recorded("genie-message-executing").template(),
            recorded(completed).template(),
        ]))
        .mount(&server)
        .await;
    let query = answer["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a.get("query").is_some())
        .unwrap();
    let attachment = query["attachment_id"].as_str().unwrap();
    Mock::given(method("GET"))
        .and(path(attachment_path(conversation, id, attachment, "query-result")))
        .respond_with(recorded(result).template())
        .mount(&server)
        .await;
    (server, answer, conversation.to_owned())
}

// Genie's answers as recorded, each variant the sources disagree on (ids only in the nested
// message, attachments absent while the query runs, text without an attachment id or with
// a purpose, rows as `data_typed_array`), read into the same answer.
#[tokio::test]
async fn genie_answers_as_recorded_in_every_variant_read_the_same() {
    let variants = [
        (
            "genie-start-conversation",
            "genie-message-completed",
            "genie-query-result",
        ),
        (
            "genie-start-conversation-docs-sample",
            "genie-message-completed",
            "genie-query-result",
        ),
        (
            "genie-start-conversation",
            "genie-message-completed-sdk-fields",
            "genie-query-result",
        ),
        (
            "genie-start-conversation",
            "genie-message-completed",
            "genie-query-result-data-typed-array",
        ),
    ];
    for (start, completed, result) in variants {
        let (server, recorded_answer, conversation) = recorded_genie(start, completed, result).await;
        let attachments = recorded_answer["attachments"].as_array().unwrap();
        let of = |kind: &str| attachments.iter().find_map(|a| a.get(kind)).unwrap().clone();

        let answer = ask(&server)
            .await
            .unwrap_or_else(|e| panic!("{start}/{completed}/{result}: {e:?}"));

        let case = format!("{start} / {completed} / {result}");
        assert_eq!(answer.text, of("text")["content"].as_str().unwrap(), "{case}");
        assert_eq!(answer.sql.as_deref(), of("query")["query"].as_str(), "{case}");
        assert_eq!(
            answer.suggestions,
            of("suggested_questions")["questions"].as_array().unwrap().clone(),
            "{case}"
        );
        let table = answer.table.unwrap_or_else(|| panic!("{case}: no table"));
        assert_eq!(table.columns, ["quarter", "revenue"], "{case}");
        assert_eq!(
            table.rows,
            [
                [Some("2025-Q2".to_owned()), Some("1204500.00".to_owned())],
                [Some("2025-Q3".to_owned()), Some("1311250.50".to_owned())]
            ],
            "{case}"
        );
        let kept = answer.conversation.unwrap();
        assert_eq!(kept["conversation_id"], json!(conversation), "{case}");
        assert_eq!(kept["space_id"], SPACE, "{case}");
        assert!(
            kept["message_id"].as_str().is_some_and(|m| !m.is_empty()),
            "{case}: {kept}"
        );
    }
}

// GENIE_SPACES: each channel asks its own space, others the default; a thread stays with
// the space its conversation started in; a channel without a space is told so.
#[tokio::test]
async fn each_channel_asks_its_own_genie_space_and_a_thread_stays_in_its_space() {
    let server = MockServer::start().await;
    for space in ["space-sales", "space-default"] {
        Mock::given(method("POST"))
            .and(path(format!("/api/2.0/genie/spaces/{space}/start-conversation")))
            .respond_with(ok(genie_started(&format!("c-{space}"), "m-1")))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(format!(
                "/api/2.0/genie/spaces/{space}/conversations/c-{space}/messages/m-1"
            )))
            .respond_with(ok(message(
                &format!("c-{space}"),
                "m-1",
                "COMPLETED",
                json!([{"attachment_id": "a-1", "text": {"content": format!("answered by {space}")}}]),
            )))
            .mount(&server)
            .await;
    }
    let spaces = GenieSpaces::parse("C0SALES=space-sales, *=space-default").unwrap();
    let agent = Genie::new(http_client(), spaces).with_timing(fast());
    let in_channel = |channel: &str, kept: Option<Value>| {
        let mut request = request(&server, kept);
        request.thread.channel = channel.into();
        request
    };

    let sales = agent.answer(&in_channel("C0SALES", None), &Unwatched).await.unwrap();
    assert_eq!(sales.text, "answered by space-sales");
    assert_eq!(sales.conversation.as_ref().unwrap()["space_id"], "space-sales");
    let elsewhere = agent.answer(&in_channel("C0OTHER", None), &Unwatched).await.unwrap();
    assert_eq!(elsewhere.text, "answered by space-default");

    // A follow-up in a thread whose conversation began in the sales space stays there,
    // wherever the channel now points.
    Mock::given(method("POST"))
        .and(path(
            "/api/2.0/genie/spaces/space-sales/conversations/c-space-sales/messages",
        ))
        .respond_with(ok(genie_message("c-space-sales", "m-1", "SUBMITTED", Value::Null)))
        .expect(1)
        .mount(&server)
        .await;
    let follow_up = agent
        .answer(&in_channel("C0OTHER", sales.conversation.clone()), &Unwatched)
        .await
        .unwrap();
    assert_eq!(follow_up.text, "answered by space-sales");

    let unmapped = Genie::new(http_client(), GenieSpaces::parse("C0SALES=space-sales").unwrap()).with_timing(fast());
    let error = unmapped
        .answer(&in_channel("C0OTHER", None), &Unwatched)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, AgentError::Failed(words) if words.contains("no Genie space answers in this channel")),
        "{error:?}"
    );
    server.verify().await;
}
