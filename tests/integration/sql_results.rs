//! SQL results as the Statement Execution API gives them. The client runs against a fake
//! workspace (wiremock on loopback) answering with recorded shapes
//! (`tests/fixtures/databricks/`).

use crate::common::recorded::recorded;
use databricks_slack_bot::databricks::Unwatched;
use databricks_slack_bot::databricks::api::{Databricks, http_client};
use databricks_slack_bot::databricks::bearer::Bearer;
use databricks_slack_bot::databricks::sql::{self, BYTE_LIMIT, ROW_LIMIT, Table};
use databricks_slack_bot::domain::WorkspaceHost;
use secrecy::SecretString;
use serde_json::Value;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer};

const STATEMENTS: &str = "/api/2.0/sql/statements";
const MIB: u64 = 1024 * 1024;

/// Submits a statement to `server` as a person and reads its result.
async fn run(server: &MockServer) -> Table {
    let http = http_client();
    let host = WorkspaceHost::parse(&server.uri()).unwrap();
    let bearer = Bearer::fixed(SecretString::from("dapi-person"));
    let db = Databricks::new(&http, &host, &bearer);
    let response = sql::execute(&db, "wh-1", "SELECT id, name FROM main.people.all", &Unwatched)
        .await
        .unwrap();
    assert_eq!(response.failure(), None);
    response.table().expect("a table")
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
async fn a_statement_asks_for_at_most_10000_rows_and_16_mib_so_databricks_cuts_a_large_result_instead_of_failing_it() {
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
    assert_eq!(body["row_limit"], 10_000);
    assert_eq!(body["byte_limit"], BYTE_LIMIT);
    assert_eq!(body["byte_limit"], 16 * MIB);
    assert!(
        body["byte_limit"].as_u64().unwrap() < 25 * MIB,
        "an INLINE result over 25 MiB fails"
    );
}
