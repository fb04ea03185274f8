//! The SQL Statement Execution API (`/api/2.0/sql/statements`), as the person.
//!
//! A statement is submitted with a short wait; if it is still `PENDING` (the warehouse is
//! starting) or `RUNNING`, it is polled with backoff up to a bound and cancelled when the
//! bound passes. Execution failures are HTTP 200 with state `FAILED`: they come back as a
//! [`StatementResponse`], not an error, because they are the person's answer.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::databricks::Progress;
use crate::databricks::api::{self, ApiError, Databricks, path_segment};

/// A table of results: the first rows of a query, as strings (`None` is SQL NULL).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
    /// Rows the whole result has, when known (may exceed `rows.len()`).
    pub total_rows: Option<u64>,
}

/// Rows fetched inline at most (the first chunk); more are counted, not fetched.
pub const ROW_LIMIT: u64 = 10_000;
/// Longest a statement may run before it is cancelled.
const STATEMENT_DEADLINE: Duration = Duration::from_secs(120);

/// A statement's state and, once it succeeded, its first rows.
#[derive(Debug, Clone, Deserialize)]
pub struct StatementResponse {
    pub statement_id: String,
    pub status: StatementStatus,
    #[serde(default)]
    pub manifest: Option<Manifest>,
    #[serde(default)]
    pub result: Option<ResultData>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StatementStatus {
    /// `PENDING`, `RUNNING`, `SUCCEEDED`, `FAILED`, `CANCELED` or `CLOSED`.
    pub state: String,
    #[serde(default)]
    pub error: Option<StatementError>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StatementError {
    #[serde(default, deserialize_with = "api::error_code")]
    pub error_code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    #[serde(default)]
    pub schema: Option<Schema>,
    #[serde(default)]
    pub total_row_count: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Schema {
    #[serde(default)]
    pub columns: Vec<Column>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Column {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ResultData {
    /// `JSON_ARRAY` rows: strings or null. Databricks can send `null` for the whole array.
    #[serde(default)]
    pub data_array: Option<Vec<Vec<Option<String>>>>,
}

impl StatementResponse {
    /// Whether the statement is still queued or running.
    pub fn is_running(&self) -> bool {
        matches!(self.status.state.as_str(), "PENDING" | "RUNNING")
    }

    /// The failure message of a `FAILED` (or `CANCELED`, `CLOSED`) statement.
    pub fn failure(&self) -> Option<String> {
        match self.status.state.as_str() {
            "SUCCEEDED" | "PENDING" | "RUNNING" => None,
            state => Some(
                self.status
                    .error
                    .as_ref()
                    .and_then(|e| e.message.clone())
                    .unwrap_or_else(|| format!("the statement ended {}", state.to_ascii_lowercase())),
            ),
        }
    }

    /// The rows received, with their column names.
    pub fn table(&self) -> Option<Table> {
        let manifest = self.manifest.as_ref()?;
        let columns: Vec<String> = manifest
            .schema
            .as_ref()
            .map(|s| s.columns.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default();
        let rows = self
            .result
            .as_ref()
            .and_then(|r| r.data_array.clone())
            .unwrap_or_default();
        Some(Table {
            total_rows: manifest.total_row_count.or(Some(rows.len() as u64)),
            columns,
            rows,
        })
    }
}

/// Runs `statement` on `warehouse_id` and waits (bounded) for it to finish.
pub async fn execute(
    db: &Databricks<'_>,
    warehouse_id: &str,
    statement: &str,
    progress: &dyn Progress,
) -> Result<StatementResponse, ApiError> {
    let body = json!({
        "statement": statement,
        "warehouse_id": warehouse_id,
        "disposition": "INLINE",
        "format": "JSON_ARRAY",
        "row_limit": ROW_LIMIT,
        "wait_timeout": "10s",
        "on_wait_timeout": "CONTINUE",
    });
    let response: StatementResponse = db.post("/api/2.0/sql/statements", &body).await?;
    wait(db, response, progress).await
}

/// Polls a submitted statement until it finishes, cancelling it past the deadline.
async fn wait(
    db: &Databricks<'_>,
    mut response: StatementResponse,
    progress: &dyn Progress,
) -> Result<StatementResponse, ApiError> {
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(500);
    while response.is_running() {
        if response.status.state == "PENDING" {
            progress.working_on("Waiting for the SQL warehouse to start…").await;
        } else {
            progress.working_on("Running query…").await;
        }
        if started.elapsed() + delay > STATEMENT_DEADLINE {
            let path = format!(
                "/api/2.0/sql/statements/{}/cancel",
                path_segment(&response.statement_id)
            );
            if let Err(error) = db.post::<serde_json::Value>(&path, &json!({})).await {
                tracing::warn!(error = %error, "could not cancel a statement that ran too long");
            }
            return Err(ApiError::Timeout);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
        let path = format!("/api/2.0/sql/statements/{}", path_segment(&response.statement_id));
        response = db.get(&path, &[]).await?;
    }
    Ok(response)
}
