//! SQL results as the Statement Execution API gives them: in chunks, cut at a limit, or
//! counted with no rows inline. The client runs against a fake workspace (wiremock on
//! loopback) answering with recorded shapes (`tests/fixtures/databricks/`), tweaked only in
//! their rows and chunk numbers; then the note the person reads under the table, and a
//! 30 MiB result end to end to the thread.

use std::sync::Mutex;

use crate::common::app::{Options, TestApp, mention};
use crate::common::recorded::{model_calls, model_says, recorded};
use databricks_slack_bot::agent::AgentAnswer;
use databricks_slack_bot::databricks::Unwatched;
use databricks_slack_bot::databricks::api::{Databricks, http_client};
use databricks_slack_bot::databricks::bearer::Bearer;
use databricks_slack_bot::databricks::sql::{self, BYTE_LIMIT, KEPT_ROWS, ROW_LIMIT, Table};
use databricks_slack_bot::domain::WorkspaceHost;
use databricks_slack_bot::slack::render::{self, Attribution, Rendered};
use secrecy::SecretString;
use serde_json::{Value, json};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const STATEMENTS: &str = "/api/2.0/sql/statements";
/// Statement ids of the recorded responses.
const TRUNCATED_ID: &str = "01f0a1b2-c3d4-1e5f-8a9b-0c1d2e3f4a5c";
const NO_DATA_ARRAY_ID: &str = "01f0a1b2-c3d4-1e5f-8a9b-0c1d2e3f4a5d";
const MIB: u64 = 1024 * 1024;

/// The path of chunk `index` of statement `id`.
fn chunk_path(id: &str, index: u32) -> String {
    format!("{STATEMENTS}/{id}/result/chunks/{index}")
}

/// `count` rows `[id, name]` from row `from` on.
fn rows(from: usize, count: usize) -> Value {
    (from..from + count)
        .map(|i| json!([i.to_string(), format!("name-{i}")]))
        .collect()
}

/// The recorded last chunk, as chunk `index` holding `rows`, naming `next` (or none).
fn chunk(index: u32, row_offset: usize, rows: Value, next: Option<u32>) -> ResponseTemplate {
    let recorded = recorded("sql-statement-result-chunk");
    let mut body = recorded.json();
    body["chunk_index"] = index.into();
    body["row_offset"] = row_offset.into();
    body["row_count"] = rows.as_array().unwrap().len().into();
    body["data_array"] = rows;
    if let Some(next) = next {
        body["next_chunk_index"] = next.into();
    }
    recorded.with_json(&body).template()
}

/// Submits a statement to `server` as a person and reads its whole result.
async fn run(server: &MockServer) -> Table {
    let http = http_client();
    let host = WorkspaceHost::parse(&server.uri()).unwrap();
    let bearer = Bearer::fixed(SecretString::from("dapi-person"));
    let db = Databricks::new(&http, &host, &bearer);
    let response = sql::execute(&db, "wh-1", "SELECT id, name FROM main.people.all", &Unwatched)
        .await
        .unwrap();
    assert_eq!(response.failure(), None);
    sql::fetch_table(&db, response).await.unwrap().expect("a table")
}

/// `table` as the person would see it under an answer.
fn rendered(table: Table) -> Rendered {
    let answer = AgentAnswer {
        text: "Here it is.".into(),
        table: Some(table),
        ..AgentAnswer::default()
    };
    let by = Attribution {
        databricks_user: "ada@example.com",
        agent: "Genie",
    };
    render::answer(&answer, &by, None, None, None)
}

/// The note under the table: the context line that is not the attribution.
fn note(rendered: &Rendered) -> String {
    let messages = serde_json::to_value(&rendered.messages).unwrap();
    let notes: Vec<String> = messages
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["blocks"].as_array().unwrap().clone())
        .filter(|b| b["type"] == "context")
        .map(|b| b["elements"][0]["text"].as_str().unwrap().to_owned())
        .filter(|text| !text.starts_with("Answered with"))
        .collect();
    assert!(notes.len() <= 1, "{notes:?}");
    notes.into_iter().next().unwrap_or_default()
}

/// The bodies of the statements submitted to `server`.
async fn submitted(server: &MockServer) -> Vec<Value> {
    let requests = server.received_requests().await.unwrap();
    requests
        .iter()
        .filter(|r| r.method.as_str() == "POST" && r.url.path() == STATEMENTS)
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

#[tokio::test]
async fn a_statement_asks_for_at_most_100000_rows_and_16_mib_so_databricks_cuts_a_large_result_instead_of_failing_it() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(STATEMENTS))
        .respond_with(recorded("sql-statement-succeeded").template())
        .mount(&server)
        .await;

    let table = run(&server).await;

    assert_eq!(table.rows.len(), 2);
    let body = &submitted(&server).await[0];
    assert_eq!(body["disposition"], "INLINE");
    assert_eq!(body["row_limit"], ROW_LIMIT);
    assert_eq!(body["row_limit"], 100_000);
    assert_eq!(body["byte_limit"], BYTE_LIMIT);
    assert_eq!(body["byte_limit"], 16 * MIB);
    assert!(
        body["byte_limit"].as_u64().unwrap() < 25 * MIB,
        "an INLINE result over 25 MiB fails"
    );
}

/// A warehouse answering the recorded truncated statement, and its chunk 1 (fetched once)
/// with `chunk`.
async fn truncated_statement(chunk: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(STATEMENTS))
        .respond_with(recorded("sql-statement-succeeded-truncated").template())
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(chunk_path(TRUNCATED_ID, 1)))
        .respond_with(chunk)
        .expect(1)
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn a_truncated_result_follows_its_next_chunk_and_the_person_is_told_only_its_first_rows_are_shown() {
    let server = truncated_statement(recorded("sql-statement-result-chunk").template()).await;

    let table = run(&server).await;

    assert_eq!(
        table.rows,
        [
            vec![Some("1".to_owned()), Some("Alice".to_owned())],
            vec![Some("2".to_owned()), None],
            vec![Some("3".to_owned()), Some("Carol".to_owned())],
        ]
    );
    assert!(table.truncated);
    let rendered = rendered(table);
    assert_eq!(
        note(&rendered),
        "The result was too large to fetch in full: only its first 3 rows are shown."
    );
    assert!(rendered.csv.is_none(), "three rows fit inline");
}

/// Answers `GET …/result/chunks/{n}` for chunks 1 to 3 of 40,000 rows each, every one naming
/// the next (as a result of more than [`ROW_LIMIT`] rows would).
struct EndlessChunks;

impl Respond for EndlessChunks {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let index: u32 = request.url.path().rsplit('/').next().unwrap().parse().unwrap();
        let from = index as usize * 40_000;
        chunk(index, from, rows(from, 40_000), Some(index + 1))
    }
}

#[tokio::test]
async fn chunks_are_followed_until_100000_rows_are_fetched_and_no_further_each_written_to_the_csv_as_it_comes() {
    let server = MockServer::start().await;
    let recorded = recorded("sql-statement-succeeded-truncated");
    let mut body = recorded.json();
    body["manifest"]["total_row_count"] = 160_000.into();
    body["manifest"]["total_chunk_count"] = 4.into();
    body["manifest"]["chunks"] = (0..4)
        .map(|i| json!({"chunk_index": i, "row_offset": i * 40_000, "row_count": 40_000}))
        .collect();
    body["result"]["row_count"] = 40_000.into();
    body["result"]["data_array"] = rows(0, 40_000);
    Mock::given(method("POST"))
        .and(path(STATEMENTS))
        .respond_with(recorded.with_json(&body).template())
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path_regex(format!(
            "^{STATEMENTS}/{TRUNCATED_ID}/result/chunks/[0-9]+$"
        )))
        .respond_with(EndlessChunks)
        .mount(&server)
        .await;

    let table = run(&server).await;

    let requests = server.received_requests().await.unwrap();
    let fetched: Vec<&str> = requests
        .iter()
        .filter(|r| r.method.as_str() == "GET")
        .map(|r| r.url.path())
        .collect();
    assert_eq!(
        fetched,
        [chunk_path(TRUNCATED_ID, 1), chunk_path(TRUNCATED_ID, 2)],
        "120,000 rows after chunk 2: chunk 3 is not fetched"
    );
    assert_eq!(table.fetched_rows, ROW_LIMIT);
    assert_eq!(table.rows.len(), KEPT_ROWS, "only the first rows stay parsed");
    assert_eq!(table.rows[KEPT_ROWS - 1][0].as_deref(), Some("99"));
    assert!(table.truncated);
    let rendered = rendered(table);
    assert_eq!(
        note(&rendered),
        "Showing 10 of 160,000 rows. The result was too large to fetch in full: only its first 100,000 rows \
         are attached as a CSV file."
    );
    let csv = String::from_utf8(rendered.csv.expect("a CSV").bytes().to_vec()).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 100_001, "a header and every fetched row");
    assert_eq!(lines[0], "id,name");
    assert_eq!(lines[1], "0,name-0");
    assert_eq!(
        lines[100_000], "99999,name-99999",
        "in order, the last chunk cut at the limit"
    );
}

/// The recorded SUCCEEDED response with rows counted but no `data_array`, as an INLINE
/// statement gets it: that recording is of an EXTERNAL_LINKS statement, so its `result`
/// (the links) is dropped and its format is INLINE's.
fn counted_without_rows() -> ResponseTemplate {
    let recorded = recorded("sql-statement-succeeded-no-data-array");
    let mut body = recorded.json();
    body.as_object_mut().unwrap().remove("result");
    body["manifest"]["format"] = "JSON_ARRAY".into();
    recorded.with_json(&body).template()
}

#[tokio::test]
async fn a_succeeded_statement_without_a_data_array_fetches_its_first_chunk_and_shows_its_rows() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(STATEMENTS))
        .respond_with(counted_without_rows())
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(chunk_path(NO_DATA_ARRAY_ID, 0)))
        .respond_with(chunk(0, 0, rows(0, 100), Some(1)))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(chunk_path(NO_DATA_ARRAY_ID, 1)))
        .respond_with(chunk(1, 100, rows(100, 50), None))
        .expect(1)
        .mount(&server)
        .await;

    let table = run(&server).await;

    assert_eq!(table.fetched_rows, 150);
    assert!(table.csv.ends_with("149,name-149\r\n"), "both chunks, in order");
    assert!(!table.truncated);
    let rendered = rendered(table);
    assert_eq!(
        note(&rendered),
        "Showing 10 of 150 rows. The full result is attached as a CSV file."
    );
    assert_eq!(
        std::str::from_utf8(rendered.csv.expect("a CSV").bytes())
            .unwrap()
            .lines()
            .count(),
        151
    );
}

#[tokio::test]
async fn a_result_offered_only_as_external_links_is_not_called_empty() {
    let server = MockServer::start().await;
    let recorded = recorded("sql-statement-succeeded-no-data-array");
    let links = recorded.json()["result"].clone();
    Mock::given(method("POST"))
        .and(path(STATEMENTS))
        .respond_with(recorded.template())
        .mount(&server)
        .await;
    // Chunk 0 fetched again comes as links again: nothing inline to read.
    Mock::given(method("GET"))
        .and(path(chunk_path(NO_DATA_ARRAY_ID, 0)))
        .respond_with(ResponseTemplate::new(200).set_body_json(links))
        .expect(1)
        .mount(&server)
        .await;

    let table = run(&server).await;

    assert!(table.rows.is_empty());
    assert!(table.truncated);
    assert_eq!(
        note(&rendered(table)),
        "The result has 150 rows, but they could not be fetched."
    );
}

#[tokio::test]
async fn a_chunk_that_fails_leaves_the_rows_before_it_shown_as_only_the_first() {
    let server = truncated_statement(recorded("gateway-503-no-healthy-upstream").template()).await;

    let table = run(&server).await;

    assert_eq!(table.rows.len(), 2);
    assert!(table.truncated);
    assert_eq!(
        note(&rendered(table)),
        "Showing 2 of 3 rows. The result was too large to fetch in full: only its first 2 rows are attached as a \
         CSV file."
    );
}

/// A warehouse holding a 30 MiB result of narrow rows: it applies `row_limit` and
/// `byte_limit` as Databricks does, fails an INLINE result over 25 MiB that no limit cut,
/// and splits what it returns into chunks of 2,500 rows. Its `total_row_count` counts the
/// rows returned (whether Databricks counts before or after the cut is not documented;
/// after is the case where a missing note would mislead).
struct Warehouse {
    returned: Mutex<usize>,
}

impl Warehouse {
    const RESULT_BYTES: u64 = 30 * MIB;
    /// Bytes per row as Databricks counts them.
    const ROW_BYTES: u64 = 48;
    const CHUNK_ROWS: usize = 2_500;
    const ID: &'static str = "01f0a1b2-c3d4-1e5f-8a9b-0c1d2e3f4a60";

    fn submitted(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let all = Self::RESULT_BYTES / Self::ROW_BYTES;
        let by_rows = body["row_limit"].as_u64().unwrap_or(u64::MAX);
        let by_bytes = body["byte_limit"].as_u64().map_or(u64::MAX, |b| b / Self::ROW_BYTES);
        let returned = all.min(by_rows).min(by_bytes);
        if returned * Self::ROW_BYTES > 25 * MIB {
            let recorded = recorded("sql-statement-failed");
            let mut failed = recorded.json();
            failed["status"]["error"]["message"] = "The result exceeds the 25 MiB INLINE limit.".into();
            return recorded.with_json(&failed).template();
        }
        let returned = returned as usize;
        *self.returned.lock().unwrap() = returned;
        let recorded = recorded("sql-statement-succeeded-truncated");
        let mut statement = recorded.json();
        statement["statement_id"] = Self::ID.into();
        let chunks = returned.div_ceil(Self::CHUNK_ROWS);
        statement["manifest"]["truncated"] = ((returned as u64) < all).into();
        statement["manifest"]["total_row_count"] = returned.into();
        statement["manifest"]["total_chunk_count"] = chunks.into();
        statement["manifest"]["chunks"] = (0..chunks)
            .map(|i| json!({"chunk_index": i, "row_offset": i * Self::CHUNK_ROWS, "row_count": Self::CHUNK_ROWS}))
            .collect();
        statement["result"] = self.chunk_body(0);
        recorded.with_json(&statement).template()
    }

    /// Chunk `index` of what was returned, in the recorded chunk's shape.
    fn chunk_body(&self, index: usize) -> Value {
        let returned = *self.returned.lock().unwrap();
        let from = index * Self::CHUNK_ROWS;
        let count = Self::CHUNK_ROWS.min(returned - from);
        let mut body = recorded("sql-statement-result-chunk").json();
        body["chunk_index"] = index.into();
        body["row_offset"] = from.into();
        body["row_count"] = count.into();
        body["data_array"] = rows(from, count);
        if from + count < returned {
            body["next_chunk_index"] = (index + 1).into();
        }
        body
    }
}

impl Respond for Warehouse {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        if request.method.as_str() == "POST" {
            return self.submitted(request);
        }
        let index: usize = request.url.path().rsplit('/').next().unwrap().parse().unwrap();
        let recorded = recorded("sql-statement-result-chunk");
        recorded.with_json(&self.chunk_body(index)).template()
    }
}

#[tokio::test]
async fn a_30_mib_result_is_cut_the_person_is_told_and_the_csv_holds_at_most_100000_rows() {
    let app = TestApp::spawn_with(Options {
        extra_env: vec![
            ("DATABRICKS_SERVING_ENDPOINT", "chat-model".into()),
            ("DATABRICKS_WAREHOUSE_ID", "wh-1".into()),
        ],
        configured_agent: true,
        ..Options::default()
    })
    .await;
    app.link_asker().await;
    let api = &app.databricks.api;
    let tool_call = model_calls(&[("call-1", "run_sql", r#"{"statement": "SELECT * FROM events"}"#)]);
    let final_answer = model_says("Here are the events.");
    Mock::given(method("POST"))
        .and(path("/serving-endpoints/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(tool_call))
        .up_to_n_times(1)
        .mount(api)
        .await;
    Mock::given(method("POST"))
        .and(path("/serving-endpoints/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(final_answer))
        .mount(api)
        .await;
    Mock::given(path_regex(format!(
        "^{STATEMENTS}(/{}/result/chunks/[0-9]+)?$",
        Warehouse::ID
    )))
    .respond_with(Warehouse {
        returned: Mutex::new(0),
    })
    .mount(api)
    .await;

    app.post_event(&mention("Ev1", "<@U0LAN0Z89> all the events")).await;
    let answer = app.wait_for_answer("Here are the events.").await.to_string();

    assert!(
        answer.contains(
            "Showing 10 of 100,000 rows. The result was too large to fetch in full: only its first 100,000 rows \
             are attached as a CSV file."
        ),
        "{answer}"
    );
    app.wait_for_calls("files.completeUploadExternal", 1).await;
    let csv = String::from_utf8(app.uploaded().await).unwrap();
    assert_eq!(csv.lines().count() as u64, ROW_LIMIT + 1, "a header and 100,000 rows");
    assert!(
        csv.lines().last().unwrap().starts_with("99999,"),
        "the first 100,000, in order"
    );
    assert!(
        (csv.len() as u64) < 1 + ROW_LIMIT * 2 * Warehouse::ROW_BYTES,
        "{} bytes: the first rows, not 30 MiB",
        csv.len()
    );
    let chunks_fetched = api
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path().contains("/result/chunks/"))
        .count();
    assert_eq!(chunks_fetched, 39, "chunks 1 to 39 after the first");
    app.stop().await;
}
