//! The model-serving agent: a tool-calling loop on a fake Databricks workspace (wiremock on
//! loopback) whose chat endpoint plays a scripted model. What the model is sent, what
//! Databricks receives (always the person's own token, never a write), and what the asker
//! gets back.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use crate::common::agents::{self, Shown, Then};
use crate::common::recorded::{model_calls, model_says, model_streams, recorded, statement_succeeded};
use databricks_slack_bot::agent::llm::Llm;
use databricks_slack_bot::agent::{Agent, AgentAnswer, AgentError, AgentRequest};
use databricks_slack_bot::config::GenieSpaces;
use databricks_slack_bot::databricks::api::http_client;
use serde_json::{Value, json};
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const TOKEN: &str = "dapi-CANARY-person-access-token";
const ENDPOINT: &str = "databricks-claude-sonnet";
const WAREHOUSE: &str = "wh-123";
const SPACE: &str = "space-1";
const CHAT: &str = "/serving-endpoints/chat/completions";
const STATEMENTS: &str = "/api/2.0/sql/statements";

/// A fake workspace.
struct Workspace {
    server: MockServer,
}

impl Workspace {
    async fn start() -> Self {
        Self {
            server: MockServer::start().await,
        }
    }

    /// The model answers the chat endpoint with `replies`, in turn; the last one forever.
    async fn model(&self, replies: Vec<Value>) {
        Mock::given(method("POST"))
            .and(path(CHAT))
            .respond_with(InTurn(Mutex::new(replies.into())))
            .mount(&self.server)
            .await;
    }

    /// `GET`s to `at` are answered with `body`.
    async fn get(&self, at: &str, body: Value) {
        Mock::given(method("GET"))
            .and(path(at))
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .mount(&self.server)
            .await;
    }

    /// A submitted statement is answered with `body`.
    async fn statement(&self, body: Value) {
        Mock::given(method("POST"))
            .and(path(STATEMENTS))
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .mount(&self.server)
            .await;
    }

    fn agent(&self, warehouse: bool, genie: bool) -> Llm {
        Llm::new(
            http_client(),
            ENDPOINT.into(),
            warehouse.then(|| WAREHOUSE.into()),
            genie.then(|| GenieSpaces::everywhere(SPACE)),
        )
    }

    fn question(&self, text: &str, conversation: Option<Value>) -> AgentRequest {
        agents::request(&self.server.uri(), TOKEN, text, conversation)
    }

    /// Asks `text` with a warehouse and no Genie space.
    async fn ask(&self, text: &str) -> (Result<AgentAnswer, AgentError>, Vec<String>) {
        let progress = Shown::default();
        let answer = self
            .agent(true, false)
            .answer(&self.question(text, None), &progress)
            .await;
        (answer, progress.seen())
    }

    async fn requests(&self) -> Vec<Request> {
        self.server.received_requests().await.unwrap()
    }

    /// The bodies of the chat requests, in order.
    async fn calls(&self) -> Vec<Value> {
        let requests = self.requests().await;
        let chats = requests.iter().filter(|r| r.url.path() == CHAT);
        chats.map(|r| serde_json::from_slice(&r.body).unwrap()).collect()
    }

    /// The tool results the model was finally sent, by tool call id.
    async fn tool_results(&self) -> Vec<(String, String)> {
        let calls = self.calls().await;
        let last = calls.last().expect("the model was called");
        last["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "tool")
            .map(|m| {
                let id = m["tool_call_id"].as_str().unwrap().to_owned();
                (id, m["content"].as_str().unwrap().to_owned())
            })
            .collect()
    }

    async fn paths(&self) -> Vec<String> {
        self.requests().await.iter().map(|r| r.url.path().to_owned()).collect()
    }

    async fn assert_every_request_carried_the_persons_token(&self) {
        let requests = self.requests().await;
        assert!(!requests.is_empty());
        agents::assert_bearer(&requests, TOKEN);
    }
}

/// Answers with a list of replies in turn, repeating the last: streamed when asked with
/// `"stream": true`, as the endpoint does.
struct InTurn(Mutex<VecDeque<Value>>);

impl Respond for InTurn {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut replies = self.0.lock().unwrap();
        let reply = if replies.len() > 1 {
            replies.pop_front().unwrap()
        } else {
            replies[0].clone()
        };
        let asked: Value = serde_json::from_slice(&request.body).unwrap();
        if asked["stream"] == true {
            model_streams(&reply).template()
        } else {
            ResponseTemplate::new(200).set_body_json(reply)
        }
    }
}

fn call(name: &str, arguments: Value) -> Value {
    model_calls(&[("call-1", name, &arguments.to_string())])
}

/// The recorded SCIM `Me` as user 4242, `user_name`, with that one email.
fn recorded_me(user_name: &str, display_name: &str) -> Value {
    let mut me = recorded("scim-me").json();
    me["id"] = json!("4242");
    me["userName"] = json!(user_name);
    me["displayName"] = json!(display_name);
    me["emails"] = json!([{"type": "work", "value": user_name, "primary": true}]);
    me
}

const REVENUE_SQL: &str = "SELECT region, sum(amount) AS revenue FROM main.sales.orders GROUP BY region";

#[tokio::test]
async fn a_question_answered_with_a_query_carries_the_models_words_the_sql_and_the_rows() {
    let workspace = Workspace::start().await;
    workspace
        .model(vec![
            call("run_sql", json!({ "statement": format!("{REVENUE_SQL};") })),
            model_says("EMEA leads with *1200*."),
        ])
        .await;
    let rows = json!([["EMEA", "1200"], ["AMER", "900"], ["APAC", null]]);
    workspace
        .statement(statement_succeeded("s1", &["region", "revenue"], rows))
        .await;

    let (answer, shown) = workspace.ask("Which region sells most?").await;

    let answer = answer.unwrap();
    assert_eq!(answer.text, "EMEA leads with *1200*.");
    assert_eq!(answer.sql.as_deref(), Some(REVENUE_SQL));
    let table = answer.table.unwrap();
    assert_eq!(table.columns, ["region", "revenue"]);
    assert_eq!(
        table.rows,
        [
            vec![Some("EMEA".to_owned()), Some("1200".to_owned())],
            vec![Some("AMER".to_owned()), Some("900".to_owned())],
            vec![Some("APAC".to_owned()), None],
        ]
    );
    assert_eq!(shown, ["Thinking…", "Running query…", "Thinking…"]);
    workspace.assert_every_request_carried_the_persons_token().await;

    // Databricks ran the statement (without its `;`) on the warehouse.
    let requests = workspace.requests().await;
    let submitted = requests.iter().find(|r| r.url.path() == STATEMENTS).unwrap();
    let submitted: Value = serde_json::from_slice(&submitted.body).unwrap();
    assert_eq!(submitted["statement"], REVENUE_SQL);
    assert_eq!(submitted["warehouse_id"], WAREHOUSE);

    // The model was asked with the endpoint's name, the tools, the question, and then the rows.
    let model_calls = workspace.calls().await;
    assert_eq!(model_calls.len(), 2);
    assert_eq!(model_calls[0]["model"], ENDPOINT);
    let messages = model_calls[0]["messages"].as_array().unwrap();
    assert_eq!(messages[0]["role"], "system");
    assert!(messages[0]["content"].as_str().unwrap().contains("ada@example.com"));
    assert_eq!(
        messages[1],
        json!({"role": "user", "content": "Which region sells most?"})
    );
    let results = workspace.tool_results().await;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].0, "call-1");
    let result: Value = serde_json::from_str(&results[0].1).unwrap();
    assert_eq!(result["columns"], json!(["region", "revenue"]));
    assert_eq!(result["rows"][0], json!(["EMEA", "1200"]));
    assert_eq!(result["total_rows"], 3);
    let echoed = &model_calls[1]["messages"].as_array().unwrap()[2];
    assert_eq!(echoed["role"], "assistant");
    assert_eq!(echoed["tool_calls"][0]["function"]["name"], "run_sql");

    // The thread keeps the question and the answer (with its SQL), no rows and no token.
    let kept = answer.conversation.unwrap();
    let turns = kept["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 2);
    assert_eq!(turns[0], json!({"role": "user", "content": "Which region sells most?"}));
    assert_eq!(turns[1]["role"], "assistant");
    let remembered = turns[1]["content"].as_str().unwrap();
    assert!(remembered.starts_with("EMEA leads with *1200*."));
    assert!(remembered.contains(REVENUE_SQL));
    assert!(!kept.to_string().contains("AMER") && !kept.to_string().contains(TOKEN));
}

#[tokio::test]
async fn a_statement_still_pending_is_polled_until_it_succeeds() {
    let workspace = Workspace::start().await;
    workspace
        .model(vec![
            call("run_sql", json!({"statement": "SELECT 1 AS one"})),
            model_says("It is 1."),
        ])
        .await;
    workspace
        .statement(json!({"statement_id": "s-slow", "status": {"state": "PENDING"}}))
        .await;
    workspace
        .get(
            "/api/2.0/sql/statements/s-slow",
            statement_succeeded("s-slow", &["one"], json!([["1"]])),
        )
        .await;

    let (answer, shown) = workspace.ask("What is one?").await;

    let answer = answer.unwrap();
    assert_eq!(answer.table.unwrap().rows, [vec![Some("1".to_owned())]]);
    assert!(shown.contains(&"Waiting for the SQL warehouse to start…".to_owned()));
    let paths = workspace.paths().await;
    assert!(paths.contains(&"/api/2.0/sql/statements/s-slow".to_owned()));
    workspace.assert_every_request_carried_the_persons_token().await;
}

/// The start of the recorded failure's message (`sql-statement-failed`).
const NOT_FOUND: &str = "[TABLE_OR_VIEW_NOT_FOUND] The table or view `parts` cannot be found.";

/// A statement `FAILED` with HTTP 200, as recorded.
fn failed() -> Value {
    recorded("sql-statement-failed").json()
}

#[tokio::test]
async fn a_failed_statement_goes_back_to_the_model_which_explains_it() {
    let workspace = Workspace::start().await;
    workspace
        .model(vec![
            call("run_sql", json!({"statement": "SELECT * FROM main.sales.ordrs"})),
            model_says("There is no table `main.sales.ordrs`; did you mean `orders`?"),
        ])
        .await;
    workspace.statement(failed()).await;

    let (answer, _) = workspace.ask("Show me ordrs").await;

    let answer = answer.unwrap();
    assert_eq!(
        answer.text,
        "There is no table `main.sales.ordrs`; did you mean `orders`?"
    );
    assert_eq!(answer.sql, None);
    assert_eq!(answer.table, None);
    let results = workspace.tool_results().await;
    assert!(
        results[0].1.starts_with(&format!("the statement failed: {NOT_FOUND}")),
        "{}",
        results[0].1
    );
}

#[tokio::test]
async fn when_the_model_gives_up_after_a_failed_statement_the_person_hears_why_the_query_failed() {
    let workspace = Workspace::start().await;
    workspace
        .model(vec![call(
            "run_sql",
            json!({"statement": "SELECT * FROM main.sales.ordrs"}),
        )])
        .await;
    workspace.statement(failed()).await;

    let (answer, _) = workspace.ask("Show me ordrs").await;

    match answer {
        Err(AgentError::Failed(said)) => assert!(said.contains(NOT_FOUND), "{said}"),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_model_that_never_stops_calling_tools_is_stopped_after_eight_calls() {
    let workspace = Workspace::start().await;
    workspace.model(vec![call("list_catalogs", json!({}))]).await;
    workspace
        .get(
            "/api/2.1/unity-catalog/catalogs",
            json!({"catalogs": [{"name": "main"}]}),
        )
        .await;

    let (answer, _) = workspace.ask("Loop forever").await;

    match answer {
        Err(AgentError::Failed(said)) => assert!(said.starts_with("I couldn't finish"), "{said}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(workspace.calls().await.len(), 8);
}

#[tokio::test]
async fn write_statements_are_refused_and_never_reach_databricks() {
    let workspace = Workspace::start().await;
    workspace
        .model(vec![
            model_calls(&[
                ("del", "run_sql", r#"{"statement": "DELETE FROM main.sales.orders"}"#),
                (
                    "two",
                    "run_sql",
                    r#"{"statement": "SELECT 1; DROP TABLE main.sales.orders"}"#,
                ),
                (
                    "cte",
                    "run_sql",
                    r#"{"statement": "WITH t AS (SELECT 1) INSERT INTO main.sales.orders SELECT * FROM t"}"#,
                ),
                (
                    "hidden",
                    "run_sql",
                    r#"{"statement": "/* SELECT */ DROP TABLE main.sales.orders"}"#,
                ),
                // Databricks ends a `--` comment at a bare carriage return (SQL-01).
                (
                    "cr",
                    "run_sql",
                    r#"{"statement": "WITH t AS (SELECT 1) --\rINSERT INTO main.sales.orders SELECT * FROM t"}"#,
                ),
                (
                    "http",
                    "run_sql",
                    r#"{"statement": "SELECT http_request(conn => 'c', method => 'GET', path => '/') FROM main.sales.orders"}"#,
                ),
            ]),
            model_says("I can only read data, not delete it."),
        ])
        .await;
    workspace.statement(statement_succeeded("s1", &["x"], json!([]))).await;

    let (answer, _) = workspace.ask("Delete all orders").await;

    assert_eq!(answer.unwrap().text, "I can only read data, not delete it.");
    assert!(!workspace.paths().await.iter().any(|p| p.starts_with(STATEMENTS)));
    let results = workspace.tool_results().await;
    assert_eq!(results.len(), 6);
    for (id, result) in results {
        assert!(result.starts_with("refused, nothing was run"), "{id}: {result}");
    }
}

#[tokio::test]
async fn tool_calls_with_invalid_arguments_or_unknown_names_get_an_error_the_model_can_read() {
    let workspace = Workspace::start().await;
    workspace
        .model(vec![
            model_calls(&[
                ("bad-json", "list_schemas", "{\"catalog\": "),
                ("missing", "list_tables", r#"{"catalog": "main"}"#),
                ("unknown", "drop_everything", "{}"),
                ("no-genie", "ask_genie", r#"{"question": "why?"}"#),
            ]),
            model_says("Sorry, I got confused."),
        ])
        .await;

    let (answer, _) = workspace.ask("List things").await;

    assert_eq!(answer.unwrap().text, "Sorry, I got confused.");
    let results = workspace.tool_results().await;
    let ids: Vec<&str> = results.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["bad-json", "missing", "unknown", "no-genie"]);
    assert!(
        results[0].1.starts_with("error: the arguments are not a JSON object"),
        "{}",
        results[0].1
    );
    assert!(results[1].1.contains("missing field `schema`"), "{}", results[1].1);
    assert!(
        results[2]
            .1
            .starts_with("error: there is no tool named \"drop_everything\"")
    );
    assert!(results[3].1.contains("there is no tool named \"ask_genie\""));
    // Nothing reached Databricks but the model.
    assert!(workspace.paths().await.iter().all(|p| p == CHAT));
}

#[tokio::test]
async fn browsing_unity_catalog_calls_the_catalog_schema_and_table_endpoints() {
    let workspace = Workspace::start().await;
    workspace
        .model(vec![
            model_calls(&[
                ("c", "list_catalogs", ""),
                ("s", "list_schemas", r#"{"catalog": "main"}"#),
                ("t", "list_tables", r#"{"catalog": "main", "schema": "sales"}"#),
                ("d", "describe_table", r#"{"full_name": "`main`.`sales`.`orders`"}"#),
                ("w", "whoami", "{}"),
            ]),
            model_says("`main.sales.orders` has the orders."),
        ])
        .await;
    // Catalogs come in two pages.
    Mock::given(method("GET"))
        .and(path("/api/2.1/unity-catalog/catalogs"))
        .and(query_param("page_token", "p2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"catalogs": [{"name": "samples"}]})))
        .with_priority(1)
        .mount(&workspace.server)
        .await;
    workspace
        .get(
            "/api/2.1/unity-catalog/catalogs",
            json!({"catalogs": [{"name": "main", "comment": "Production"}], "next_page_token": "p2"}),
        )
        .await;
    Mock::given(method("GET"))
        .and(path("/api/2.1/unity-catalog/schemas"))
        .and(query_param("catalog_name", "main"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"schemas": [{"name": "sales"}]})))
        .mount(&workspace.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/2.1/unity-catalog/tables"))
        .and(query_param("catalog_name", "main"))
        .and(query_param("schema_name", "sales"))
        .respond_with(recorded("uc-list-tables").template())
        .mount(&workspace.server)
        .await;
    workspace
        .get(
            "/api/2.1/unity-catalog/tables/main.sales.orders",
            json!({
                "full_name": "main.sales.orders",
                "table_type": "MANAGED",
                "comment": "One row per order",
                "columns": [
                    {"name": "id", "type_text": "bigint", "nullable": false},
                    {"name": "amount", "type_text": "decimal(10,2)", "comment": "In EUR"},
                ],
                "properties": {"delta.minReaderVersion": "1"},
            }),
        )
        .await;
    workspace
        .get("/api/2.0/preview/scim/v2/Me", recorded_me("ada@example.com", "Ada"))
        .await;

    let (answer, shown) = workspace.ask("Where are orders?").await;

    assert_eq!(answer.unwrap().text, "`main.sales.orders` has the orders.");
    assert_eq!(shown, ["Thinking…", "Looking at tables…", "Thinking…"]);
    workspace.assert_every_request_carried_the_persons_token().await;
    let results: Vec<Value> = workspace
        .tool_results()
        .await
        .iter()
        .map(|(_, content)| serde_json::from_str(content).unwrap())
        .collect();
    assert_eq!(
        results[0],
        json!({"catalogs": [{"name": "main", "comment": "Production"}, {"name": "samples"}]})
    );
    assert_eq!(results[1], json!({"schemas": [{"name": "sales"}]}));
    assert_eq!(
        results[2],
        json!({"tables": [
            {"name": "orders", "type": "MANAGED", "comment": "One row per order line"},
            {"name": "revenue_by_quarter", "type": "VIEW"},
        ]})
    );
    assert_eq!(
        results[3],
        json!({
            "full_name": "main.sales.orders",
            "table_type": "MANAGED",
            "comment": "One row per order",
            "columns": [
                {"name": "id", "type": "bigint"},
                {"name": "amount", "type": "decimal(10,2)", "comment": "In EUR"},
            ],
        })
    );
    assert_eq!(results[4]["user_name"], "ada@example.com");
}

#[tokio::test]
async fn a_permission_denied_on_a_tool_goes_back_to_the_model_to_explain() {
    let workspace = Workspace::start().await;
    workspace
        .model(vec![
            call("list_tables", json!({"catalog": "main", "schema": "hr"})),
            model_says("You don't have access to `main.hr`."),
        ])
        .await;
    Mock::given(method("GET"))
        .and(path("/api/2.1/unity-catalog/tables"))
        .respond_with(recorded("permission-denied-403").template())
        .mount(&workspace.server)
        .await;

    let (answer, _) = workspace.ask("What is in HR?").await;

    assert_eq!(answer.unwrap().text, "You don't have access to `main.hr`.");
    let results = workspace.tool_results().await;
    assert_eq!(
        results[0].1,
        "permission denied: User does not have USE CATALOG on Catalog 'main'."
    );
}

#[tokio::test]
async fn a_refused_token_at_the_model_endpoint_is_unauthorized() {
    let workspace = Workspace::start().await;
    Mock::given(method("POST"))
        .and(path(CHAT))
        .respond_with(recorded("unauthenticated-401").template())
        .mount(&workspace.server)
        .await;

    let (answer, _) = workspace.ask("Anything").await;

    assert_eq!(answer.unwrap_err(), AgentError::Unauthorized);
}

#[tokio::test]
async fn a_refused_token_in_a_tool_call_is_unauthorized_not_a_tool_result() {
    let workspace = Workspace::start().await;
    workspace.model(vec![call("list_catalogs", json!({}))]).await;
    Mock::given(method("GET"))
        .and(path("/api/2.1/unity-catalog/catalogs"))
        .respond_with(recorded("invalid-access-token-403").template())
        .mount(&workspace.server)
        .await;

    let (answer, _) = workspace.ask("Catalogs?").await;

    assert_eq!(answer.unwrap_err(), AgentError::Unauthorized);
    assert_eq!(workspace.calls().await.len(), 1);
}

#[tokio::test]
async fn a_rate_limited_model_endpoint_is_transient_with_its_retry_hint() {
    let workspace = Workspace::start().await;
    Mock::given(method("POST"))
        .and(path(CHAT))
        .respond_with(recorded("rate-limited-429-retry-after").template())
        .mount(&workspace.server)
        .await;

    let (answer, _) = workspace.ask("Anything").await;

    match answer {
        Err(AgentError::Transient { retry_after, .. }) => assert_eq!(retry_after, Some(Duration::from_secs(100))),
        other => panic!("expected a transient failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_large_result_is_cut_for_the_model_but_the_answer_keeps_every_row() {
    let workspace = Workspace::start().await;
    workspace
        .model(vec![
            call("run_sql", json!({"statement": "SELECT * FROM main.sales.orders"})),
            model_says("Lots."),
        ])
        .await;
    let rows: Vec<Value> = (0..300).map(|i| json!([i.to_string(), "x".repeat(300)])).collect();
    workspace
        .statement(statement_succeeded("s1", &["id", "note"], Value::Array(rows)))
        .await;

    let (answer, _) = workspace.ask("All orders").await;

    let table = answer.unwrap().table.unwrap();
    assert_eq!(table.fetched_rows, 300);
    assert_eq!(table.csv.lines().count(), 301, "a header and every row");
    let results = workspace.tool_results().await;
    assert!(results[0].1.len() <= 8 * 1024, "{} bytes", results[0].1.len());
    let result: Value = serde_json::from_str(&results[0].1).unwrap();
    let sent = result["rows"].as_array().unwrap().len();
    assert!((1..=50).contains(&sent), "{sent} rows");
    assert_eq!(result["total_rows"], 300);
}

#[tokio::test]
async fn a_follow_up_question_shows_the_model_the_previous_turns() {
    let workspace = Workspace::start().await;
    workspace
        .model(vec![
            call("run_sql", json!({"statement": REVENUE_SQL})),
            model_says("EMEA leads."),
            model_says("By month, March was best."),
        ])
        .await;
    workspace
        .statement(statement_succeeded(
            "s1",
            &["region", "revenue"],
            json!([["EMEA", "1200"]]),
        ))
        .await;
    let agent = workspace.agent(true, false);
    let first = agent
        .answer(&workspace.question("Which region sells most?", None), &Shown::default())
        .await
        .unwrap();

    let second = agent
        .answer(
            &workspace.question("And by month?", first.conversation),
            &Shown::default(),
        )
        .await
        .unwrap();

    assert_eq!(second.text, "By month, March was best.");
    assert_eq!(second.sql, None);
    let model_calls = workspace.calls().await;
    let messages = model_calls[2]["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    assert_eq!(messages[1]["content"], "Which region sells most?");
    let earlier = messages[2]["content"].as_str().unwrap();
    assert!(
        earlier.starts_with("EMEA leads.") && earlier.contains(REVENUE_SQL),
        "{earlier}"
    );
    assert_eq!(messages[3]["content"], "And by month?");
    let turns = second.conversation.unwrap()["turns"].as_array().unwrap().len();
    assert_eq!(turns, 4);
}

#[tokio::test]
async fn long_threads_keep_only_the_last_turns_each_bounded() {
    let workspace = Workspace::start().await;
    workspace.model(vec![model_says("Fine.")]).await;
    let turns: Vec<Value> = (0..20)
        .map(|i| {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            json!({"role": role, "content": format!("turn {i} {}", "y".repeat(10_000))})
        })
        .collect();
    let agent = workspace.agent(true, false);

    agent
        .answer(
            &workspace.question("Next", Some(json!({ "turns": turns }))),
            &Shown::default(),
        )
        .await
        .unwrap();

    let model_calls = workspace.calls().await;
    let messages = model_calls[0]["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1 + 6 + 1);
    assert!(messages[1]["content"].as_str().unwrap().starts_with("turn 14 "));
    assert!(
        messages[1..7]
            .iter()
            .all(|m| m["content"].as_str().unwrap().len() <= 3000)
    );
}

#[tokio::test]
async fn run_sql_is_offered_only_with_a_warehouse_and_ask_genie_only_with_a_space() {
    let tool_names = |body: &Value| -> Vec<String> {
        let tools = body["tools"].as_array().unwrap();
        tools
            .iter()
            .map(|t| t["function"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let workspace = Workspace::start().await;
    workspace.model(vec![model_says("Hi.")]).await;

    for (warehouse, genie) in [(false, false), (true, true)] {
        workspace
            .agent(warehouse, genie)
            .answer(&workspace.question("Hello", None), &Shown::default())
            .await
            .unwrap();
    }

    let model_calls = workspace.calls().await;
    let base = [
        "whoami",
        "list_catalogs",
        "list_schemas",
        "list_tables",
        "describe_table",
    ];
    assert_eq!(tool_names(&model_calls[0]), base);
    let mut all = base.to_vec();
    all.extend(["run_sql", "ask_genie"]);
    assert_eq!(tool_names(&model_calls[1]), all);
    assert_eq!(
        model_calls[1]["tools"][5]["function"]["parameters"]["required"],
        json!(["statement"])
    );
}

#[tokio::test]
async fn ask_genie_asks_the_space_as_the_person_and_follow_ups_continue_its_conversation() {
    let workspace = Workspace::start().await;
    workspace
        .model(vec![
            call("ask_genie", json!({"question": "Top product last quarter?"})),
            model_says("Genie says *Widgets*."),
            call("ask_genie", json!({"question": "And the quarter before?"})),
            model_says("Gadgets."),
        ])
        .await;
    let spaces = format!("/api/2.0/genie/spaces/{SPACE}");
    Mock::given(method("POST"))
        .and(path(format!("{spaces}/start-conversation")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "conversation_id": "c1",
            "message_id": "m1",
            "message": {"message_id": "m1", "conversation_id": "c1", "status": "SUBMITTED"},
        })))
        .mount(&workspace.server)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("{spaces}/conversations/c1/messages")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "message_id": "m2", "conversation_id": "c1", "status": "SUBMITTED",
        })))
        .mount(&workspace.server)
        .await;
    for message in ["m1", "m2"] {
        workspace
            .get(
                &format!("{spaces}/conversations/c1/messages/{message}"),
                json!({
                    "message_id": message,
                    "conversation_id": "c1",
                    "status": "COMPLETED",
                    "attachments": [
                        {"attachment_id": "a-text", "text": {"content": "Widgets sold best."}},
                        {
                            "attachment_id": "a-query",
                            "query": {"query": "SELECT product FROM main.sales.top", "statement_id": "s9"},
                        },
                    ],
                }),
            )
            .await;
        workspace
            .get(
                &format!("{spaces}/conversations/c1/messages/{message}/attachments/a-query/query-result"),
                json!({"statement_response": statement_succeeded("s9", &["product"], json!([["Widgets"]]))}),
            )
            .await;
    }
    let agent = workspace.agent(true, true);

    let progress = Shown::default();
    let first = agent
        .answer(&workspace.question("Top product last quarter?", None), &progress)
        .await
        .unwrap();

    assert_eq!(first.text, "Genie says *Widgets*.");
    assert_eq!(first.sql.as_deref(), Some("SELECT product FROM main.sales.top"));
    assert_eq!(first.table.unwrap().rows, [vec![Some("Widgets".to_owned())]]);
    assert!(progress.seen().contains(&"Asking Genie…".to_owned()));
    let results = workspace.tool_results().await;
    let result: Value = serde_json::from_str(&results[0].1).unwrap();
    assert_eq!(result["answer"], "Widgets sold best.");
    assert_eq!(result["sql"], "SELECT product FROM main.sales.top");
    assert_eq!(result["result"]["rows"], json!([["Widgets"]]));

    let second = agent
        .answer(
            &workspace.question("And the quarter before?", first.conversation),
            &Shown::default(),
        )
        .await
        .unwrap();

    assert_eq!(second.text, "Gadgets.");
    let paths = workspace.paths().await;
    assert_eq!(paths.iter().filter(|p| p.ends_with("/start-conversation")).count(), 1);
    assert!(paths.contains(&format!("{spaces}/conversations/c1/messages")));
    workspace.assert_every_request_carried_the_persons_token().await;
}

#[tokio::test]
async fn endless_catalog_pages_stop_after_a_few_and_the_model_is_told_there_are_more() {
    let workspace = Workspace::start().await;
    workspace
        .model(vec![call("list_catalogs", json!({})), model_says("Many catalogs.")])
        .await;
    workspace
        .get(
            "/api/2.1/unity-catalog/catalogs",
            json!({"catalogs": [{"name": "again"}], "next_page_token": "more"}),
        )
        .await;

    let (answer, _) = workspace.ask("Catalogs?").await;

    assert_eq!(answer.unwrap().text, "Many catalogs.");
    let pages = workspace
        .paths()
        .await
        .iter()
        .filter(|p| p.ends_with("/catalogs"))
        .count();
    assert_eq!(pages, 5);
    let result: Value = serde_json::from_str(&workspace.tool_results().await[0].1).unwrap();
    assert_eq!(result["catalogs"].as_array().unwrap().len(), 5);
    assert_eq!(result["note"], "there are more catalogs than listed here");
}

#[tokio::test]
async fn a_burst_of_tool_calls_is_capped_and_the_rest_are_told_to_stop() {
    let workspace = Workspace::start().await;
    let burst: Vec<(String, &str, &str)> = (0..30).map(|i| (format!("c{i}"), "whoami", "{}")).collect();
    let burst: Vec<(&str, &str, &str)> = burst
        .iter()
        .map(|(id, name, args)| (id.as_str(), *name, *args))
        .collect();
    workspace
        .model(vec![model_calls(&burst), model_says("You are Ada.")])
        .await;
    workspace
        .get("/api/2.0/preview/scim/v2/Me", recorded_me("ada@example.com", "Ada"))
        .await;

    let (answer, _) = workspace.ask("Who am I, thirty times?").await;

    assert_eq!(answer.unwrap().text, "You are Ada.");
    let asked = workspace.paths().await.iter().filter(|p| p.ends_with("/Me")).count();
    assert_eq!(asked, 24);
    let results = workspace.tool_results().await;
    assert_eq!(results.len(), 30);
    assert!(results[24].1.starts_with("error: no more tool calls are allowed"));
}

#[tokio::test]
async fn an_empty_final_answer_after_a_query_still_shows_the_rows() {
    let workspace = Workspace::start().await;
    workspace
        .model(vec![
            call("run_sql", json!({"statement": "SELECT 1 AS one"})),
            model_says("  "),
        ])
        .await;
    workspace
        .statement(statement_succeeded("s1", &["one"], json!([["1"]])))
        .await;

    let (answer, _) = workspace.ask("One?").await;

    let answer = answer.unwrap();
    assert_eq!(answer.text, "Here is what I found.");
    assert_eq!(answer.sql.as_deref(), Some("SELECT 1 AS one"));
}

// ---- streaming -------------------------------------------------------------------------

/// A recorded chat completion that says `text` and calls `tool` with `arguments`.
fn says_and_calls(text: &str, tool: &str, arguments: &str) -> Value {
    let mut completion = model_calls(&[("call-1", tool, arguments)]);
    completion["choices"][0]["message"]["content"] = text.into();
    completion
}

#[tokio::test]
async fn the_models_words_are_written_as_they_stream_and_the_answer_begins_with_all_of_them() {
    let workspace = Workspace::start().await;
    workspace
        .model(vec![
            says_and_calls("Let me look around first.", "look_around", r#"{"where": "everywhere"}"#),
            model_says("There is nothing to see."),
        ])
        .await;
    let progress = Shown::default();

    let answer = workspace
        .agent(true, false)
        .answer(&workspace.question("What is there?", None), &progress)
        .await
        .unwrap();

    let written = progress.written();
    assert!(written.len() > 4, "written a few words at a time: {written:?}");
    assert_eq!(
        written.concat(),
        "Let me look around first.\n\nThere is nothing to see."
    );
    assert!(answer.text.starts_with(&written.concat()), "{:?}", answer.text);
    let calls = workspace.calls().await;
    assert!(calls.iter().all(|call| call["stream"] == true));
    let turn = calls[1]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "assistant")
        .unwrap()
        .clone();
    assert_eq!(turn["content"], "Let me look around first.");
    assert_eq!(turn["tool_calls"][0]["id"], "call-1");
    assert_eq!(turn["tool_calls"][0]["function"]["name"], "look_around");
    assert_eq!(
        turn["tool_calls"][0]["function"]["arguments"], r#"{"where": "everywhere"}"#,
        "the fragments joined"
    );
}

#[tokio::test]
async fn an_endpoint_that_answers_whole_despite_stream_is_read_as_before() {
    let workspace = Workspace::start().await;
    Mock::given(method("POST"))
        .and(path(CHAT))
        .respond_with(ResponseTemplate::new(200).set_body_json(model_says("Hello there.")))
        .mount(&workspace.server)
        .await;
    let progress = Shown::default();

    let answer = workspace
        .agent(true, false)
        .answer(&workspace.question("Hi", None), &progress)
        .await
        .unwrap();

    assert_eq!(answer.text, "Hello there.");
    assert!(progress.written().is_empty());
    assert_eq!(workspace.calls().await[0]["stream"], true);
}

#[tokio::test]
async fn a_model_stream_that_goes_quiet_is_worth_asking_again_later() {
    let opening = model_streams(&model_says("Half an answer and then"));
    let opening = String::from_utf8(opening.body).unwrap();
    let opening: String = opening.split_inclusive("\n\n").take(3).collect();
    let (url, _) = agents::streaming_then(opening, Then::GoesQuiet).await;
    let agent = Llm::new(http_client(), ENDPOINT.into(), None, None).with_idle_timeout(Duration::from_millis(300));
    let progress = Shown::default();

    let error = agent
        .answer(&agents::request(url.as_str(), TOKEN, "Anything", None), &progress)
        .await
        .unwrap_err();

    assert_eq!(error, AgentError::transient("the model stopped answering mid-way"));
    assert_eq!(
        progress.written(),
        ["Half", " an"],
        "the space after a word waits for the next one"
    );
}

#[tokio::test]
async fn a_chunk_that_is_not_json_is_said_plainly() {
    let workspace = Workspace::start().await;
    let stream = String::from_utf8(model_streams(&model_says("Fine.")).body).unwrap();
    let broken = stream.replacen("data: {", "data: {\"choices\": [", 2);
    Mock::given(method("POST"))
        .and(path(CHAT))
        .respond_with(ResponseTemplate::new(200).set_body_raw(broken, "text/event-stream"))
        .mount(&workspace.server)
        .await;

    let (answer, _) = workspace.ask("Anything").await;

    assert_eq!(
        answer.unwrap_err(),
        AgentError::Failed("the model sent an answer I couldn't read".into())
    );
}
