//! Every recorded way a real workspace fails a call (`tests/fixtures/databricks/`) against
//! every Databricks call an answer or a link makes (issue 11): a refused token is renewed
//! once and only the refused call is sent again; every other failure is told for what it
//! is, and no call is sent again that should not be.

use std::sync::Arc;

use crate::common::agents::{self, Renewer, Shown};
use crate::common::recorded::{TOKEN_REFUSALS, recorded};
use databricks_slack_bot::agent::llm::Llm;
use databricks_slack_bot::agent::llm::tools::Toolbox;
use databricks_slack_bot::agent::{Agent, AgentError};
use databricks_slack_bot::databricks::api::{ApiError, Databricks, http_client};
use databricks_slack_bot::databricks::bearer::Bearer;
use databricks_slack_bot::databricks::genie::{GenieSpace, MessageRef};
use databricks_slack_bot::databricks::sql::{self, StatementResponse};
use databricks_slack_bot::domain::WorkspaceHost;
use futures_util::future::join_all;
use secrecy::SecretString;
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer};

/// The token each call starts with, and the one the renewal gives.
const EXPIRING: &str = "at-expiring";
const RENEWED: &str = "at-renewed";
const SPACE: &str = "space-1";
const WAREHOUSE: &str = "wh-123";

/// Passing failures told at once: gateways, an unavailable service, and a rate limit whose
/// `Retry-After` (100 s) is longer than a call waits inline.
const PASSING: [&str; 5] = [
    "gateway-502",
    "gateway-503",
    "gateway-503-no-healthy-upstream",
    "temporarily-unavailable-503",
    "rate-limited-429-retry-after",
];

/// Rate limits without `Retry-After`: waited out (1 s) and the call sent again.
const WAITED_OUT: [&str; 2] = ["rate-limited-429", "rate-limited-429-concurrent"];

/// What the caller made of a call.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Answered,
    /// A result chunk failed after the first rows arrived: those rows, marked truncated.
    FirstRowsOnly,
    TokenRefused,
    NoAccess(String),
    Passing,
    Unreadable,
    Other(String),
}

/// A Databricks call, made through the client that makes it while answering or linking.
#[derive(Clone, Copy, Debug)]
enum Call {
    GenieStart,
    GenieFollowUp,
    GeniePoll,
    GenieQueryResult,
    GenieExecuteQuery,
    GenieConversations,
    GenieMessages,
    Statement,
    StatementChunk,
    ScimMe,
    UnityCatalogTables,
    RunSqlTool,
    Serving,
}

impl Call {
    const ALL: [Call; 13] = [
        Call::GenieStart,
        Call::GenieFollowUp,
        Call::GeniePoll,
        Call::GenieQueryResult,
        Call::GenieExecuteQuery,
        Call::GenieConversations,
        Call::GenieMessages,
        Call::Statement,
        Call::StatementChunk,
        Call::ScimMe,
        Call::UnityCatalogTables,
        Call::RunSqlTool,
        Call::Serving,
    ];

    /// The call's method and path, and the recorded success Databricks answers it with.
    fn route(self) -> (&'static str, String, &'static str) {
        let genie = |rest: &str| format!("/api/2.0/genie/spaces/{SPACE}{rest}");
        let attachment = |rest: &str| genie(&format!("/conversations/c-1/messages/m-1/attachments/a-query{rest}"));
        match self {
            Call::GenieStart => ("POST", genie("/start-conversation"), "genie-start-conversation"),
            Call::GenieFollowUp => ("POST", genie("/conversations/c-1/messages"), "genie-message-executing"),
            Call::GeniePoll => (
                "GET",
                genie("/conversations/c-1/messages/m-1"),
                "genie-message-completed",
            ),
            Call::GenieQueryResult => ("GET", attachment("/query-result"), "genie-query-result"),
            Call::GenieExecuteQuery => ("POST", attachment("/execute-query"), "genie-execute-query"),
            Call::GenieConversations => ("GET", genie("/conversations"), "genie-list-conversations"),
            Call::GenieMessages => ("GET", genie("/conversations/c-1/messages"), "genie-list-messages"),
            Call::Statement | Call::RunSqlTool => ("POST", "/api/2.0/sql/statements".into(), "sql-statement-succeeded"),
            Call::StatementChunk => (
                "GET",
                format!(
                    "/api/2.0/sql/statements/{}/result/chunks/1",
                    truncated_statement().statement_id
                ),
                "sql-statement-result-chunk",
            ),
            Call::ScimMe => ("GET", "/api/2.0/preview/scim/v2/Me".into(), "scim-me"),
            Call::UnityCatalogTables => ("GET", "/api/2.1/unity-catalog/tables".into(), "uc-list-tables"),
            Call::Serving => (
                "POST",
                "/serving-endpoints/chat/completions".into(),
                "serving-chat-stop",
            ),
        }
    }

    /// Makes the call against `server` with [`EXPIRING`], renewed by `renewer`.
    async fn make(self, server: &MockServer, renewer: Arc<Renewer>) -> Seen {
        let http = http_client();
        let host = WorkspaceHost::parse(&server.uri()).unwrap();
        let bearer = Bearer::new(SecretString::from(EXPIRING), 1, Some(renewer.clone()));
        let db = Databricks::new(&http, &host, &bearer);
        let genie = GenieSpace::new(Databricks::new(&http, &host, &bearer), SPACE);
        let at = MessageRef {
            conversation_id: "c-1".into(),
            message_id: "m-1".into(),
        };
        let progress = Shown::default();
        match self {
            Call::GenieStart => api(genie.start_conversation("How did revenue change?").await),
            Call::GenieFollowUp => api(genie.send_message("c-1", "And in Q4?").await),
            Call::GeniePoll => api(genie.message(&at).await),
            Call::GenieQueryResult => api(genie.query_result(&at, "a-query").await),
            Call::GenieExecuteQuery => api(genie.execute_query(&at, "a-query").await),
            Call::GenieConversations => api(genie.recent_conversations().await),
            Call::GenieMessages => api(genie.messages("c-1").await),
            Call::Statement => api(sql::execute(&db, WAREHOUSE, "SELECT 1", &progress).await),
            Call::StatementChunk => {
                let statement = truncated_statement();
                let first_rows = statement.clone().into_table().unwrap().fetched_rows;
                match sql::fetch_table(&db, statement).await {
                    Ok(Some(table)) if table.fetched_rows == first_rows => Seen::FirstRowsOnly,
                    result => api(result),
                }
            }
            Call::ScimMe => api(db.current_user().await),
            Call::UnityCatalogTables => {
                let mut tools = Toolbox::new(db, Some(WAREHOUSE), None, &progress);
                tool(
                    tools
                        .call("list_tables", &json!({"catalog": "main", "schema": "sales"}))
                        .await,
                )
            }
            Call::RunSqlTool => {
                let mut tools = Toolbox::new(db, Some(WAREHOUSE), None, &progress);
                tool(tools.call("run_sql", &json!({"statement": "SELECT 1"})).await)
            }
            Call::Serving => {
                let llm = Llm::new(http.clone(), "databricks-claude-sonnet".into(), None, None);
                let mut request = agents::request(&server.uri(), EXPIRING, "How did revenue change?", None);
                request.context.renew = Some(renewer);
                agent(llm.answer(&request, &progress).await.map(drop))
            }
        }
    }
}

/// The recorded statement whose first chunk came inline and whose second is fetched.
fn truncated_statement() -> StatementResponse {
    serde_json::from_value(recorded("sql-statement-succeeded-truncated").json()).unwrap()
}

fn api<T>(result: Result<T, ApiError>) -> Seen {
    match result {
        Ok(_) => Seen::Answered,
        Err(ApiError::InvalidToken) => Seen::TokenRefused,
        Err(ApiError::PermissionDenied(message)) => Seen::NoAccess(message),
        Err(ApiError::RateLimited { .. } | ApiError::Transient(_) | ApiError::Timeout) => Seen::Passing,
        Err(ApiError::Unexpected(_)) => Seen::Unreadable,
        Err(error) => Seen::Other(error.to_string()),
    }
}

fn agent(result: Result<(), AgentError>) -> Seen {
    match result {
        Ok(()) => Seen::Answered,
        Err(AgentError::Unauthorized) => Seen::TokenRefused,
        Err(AgentError::NoAccess(message)) => Seen::NoAccess(message),
        Err(AgentError::Transient { .. }) => Seen::Passing,
        Err(AgentError::Failed(message)) if message == "Databricks gave an answer I could not read" => Seen::Unreadable,
        Err(error) => Seen::Other(error.to_string()),
    }
}

/// A tool's result: what ends the answer, or what the model is told.
fn tool(result: Result<String, AgentError>) -> Seen {
    match result {
        Ok(told) => match told.strip_prefix("permission denied: ") {
            Some(message) => Seen::NoAccess(message.into()),
            None if told == "error: Databricks sent an answer that could not be read" => Seen::Unreadable,
            None if told.starts_with("error") => Seen::Other(told),
            None => Seen::Answered,
        },
        Err(error) => agent(Err(error)),
    }
}

/// What `call` should make of the recorded `shape`, and how many times it is sent.
fn expected(shape: &str, call: Call) -> (Seen, usize) {
    let partial = |seen| match call {
        // Rows already arrived: they are kept, not lost to a later chunk's failure.
        Call::StatementChunk => Seen::FirstRowsOnly,
        _ => seen,
    };
    if TOKEN_REFUSALS.contains(&shape) || WAITED_OUT.contains(&shape) {
        (Seen::Answered, 2)
    } else if PASSING.contains(&shape) {
        (partial(Seen::Passing), 1)
    } else if shape == "permission-denied-403" {
        let denial = recorded(shape).json()["message"].as_str().unwrap().to_owned();
        (partial(Seen::NoAccess(denial)), 1)
    } else if shape == "login-redirect-200-html" {
        (partial(Seen::Unreadable), 1)
    } else {
        panic!("no expectation for {shape}")
    }
}

/// `call` when its first request is answered as the recorded `shape`, and the rest as
/// Databricks answers it when it works. Asserts what was sent, and returns what was seen.
async fn make_with_first_answer(call: Call, shape: &str) -> Seen {
    let server = MockServer::start().await;
    let (verb, route, success) = call.route();
    Mock::given(method(verb))
        .and(path(route.as_str()))
        .respond_with(recorded(shape).template())
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method(verb))
        .and(path(route.as_str()))
        .respond_with(recorded(success).template())
        .mount(&server)
        .await;
    let renewer = Arc::new(Renewer::default());

    let seen = call.make(&server, renewer.clone()).await;

    let sent: Vec<_> = server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.method.as_str() == verb && r.url.path() == route)
        .collect();
    let (_, times) = expected(shape, call);
    assert_eq!(sent.len(), times, "{call:?} / {shape}: sent {} times", sent.len());
    let renewals = renewer.renewals.lock().unwrap().clone();
    if TOKEN_REFUSALS.contains(&shape) {
        assert_eq!(renewals, [1], "{call:?} / {shape}: renewed once");
        agents::assert_bearer(&sent[1..], RENEWED);
    } else {
        assert!(
            renewals.is_empty(),
            "{call:?} / {shape}: renewed though the token was not refused"
        );
        agents::assert_bearer(&sent, EXPIRING);
    }
    seen
}

// TOK-06 and issue 11's "each shape against every client that can receive it".
#[tokio::test]
async fn each_recorded_failure_against_every_databricks_call() {
    let shapes = TOKEN_REFUSALS
        .iter()
        .chain(&PASSING)
        .chain(&WAITED_OUT)
        .chain(&["permission-denied-403", "login-redirect-200-html"]);
    for shape in shapes {
        // The calls of one shape run at once, so waiting out a rate limit costs 1 s per shape.
        let seen = join_all(Call::ALL.map(|call| make_with_first_answer(call, shape))).await;
        for (call, seen) in Call::ALL.into_iter().zip(seen) {
            assert_eq!(seen, expected(shape, call).0, "{call:?} / {shape}");
        }
    }
}

// The renewal itself cannot help: a token revoked at the server between the refresh and
// the call is refused again, and the caller hears so once, without a third try.
#[tokio::test]
async fn a_token_refused_again_after_renewal_is_told_after_two_tries() {
    for call in Call::ALL {
        let server = MockServer::start().await;
        let (verb, route, _) = call.route();
        Mock::given(method(verb))
            .and(path(route.as_str()))
            .respond_with(recorded("invalid-access-token-403").template())
            .mount(&server)
            .await;
        let renewer = Arc::new(Renewer::default());

        let seen = call.make(&server, renewer.clone()).await;

        assert_eq!(seen, Seen::TokenRefused, "{call:?}");
        assert_eq!(server.received_requests().await.unwrap().len(), 2, "{call:?}");
        assert_eq!(renewer.renewals.lock().unwrap().len(), 1, "{call:?}");
    }
}

// A private-link workspace, or a host that is not the workspace, sends API calls to its
// sign-in page: the operator is told that, not a JSON parser's complaint about `<`.
#[tokio::test]
async fn a_sign_in_page_instead_of_json_is_named_for_the_operator() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(recorded("login-redirect-200-html").template())
        .mount(&server)
        .await;
    let http = http_client();
    let host = WorkspaceHost::parse(&server.uri()).unwrap();
    let bearer = Bearer::fixed(SecretString::from(EXPIRING));

    let error = Databricks::new(&http, &host, &bearer).current_user().await.unwrap_err();

    let ApiError::Unexpected(detail) = error else {
        panic!("{error:?}")
    };
    assert!(detail.contains("a web page instead of JSON"), "{detail}");
    assert!(detail.contains("DATABRICKS_HOST"), "{detail}");
    assert!(!detail.contains('<'), "{detail}");
}
