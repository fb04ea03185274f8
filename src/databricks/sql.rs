//! The SQL Statement Execution API (`/api/2.0/sql/statements`), as the person.
//!
//! A statement is submitted with a short wait; if it is still `PENDING` (the warehouse is
//! starting) or `RUNNING`, it is polled with backoff up to a bound and cancelled when the
//! bound passes. Execution failures are HTTP 200 with state `FAILED`: they come back as a
//! [`StatementResponse`], not an error, because they are the person's answer.
//!
//! A result comes in chunks: the first inline with the statement, the rest fetched by
//! index ([`fetch_table`]) up to [`ROW_LIMIT`] rows, each written to the table's CSV as it
//! arrives rather than held as rows. A result Databricks cut (`truncated`,
//! past `row_limit` or `byte_limit`) or whose rows were not all fetched is marked so, and
//! the person is told only its first rows are shown.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::databricks::Progress;
use crate::databricks::api::{self, ApiError, Databricks, path_segment};

/// A table of results: its columns, its first rows, and every row fetched as CSV.
///
/// A large result is never held as rows: each chunk is written to [`Table::csv`] as it
/// arrives and only the first [`KEPT_ROWS`] rows stay parsed, so a 50,000-row result costs
/// its CSV text and one chunk at a time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    pub columns: Vec<String>,
    /// The first rows (at most [`KEPT_ROWS`]), as strings (`None` is SQL NULL).
    pub rows: Vec<Vec<Option<String>>>,
    /// Rows fetched: those in `rows` and those only in `csv`.
    pub fetched_rows: u64,
    /// Rows the whole result has, when known (may exceed `fetched_rows`).
    pub total_rows: Option<u64>,
    /// Whether the fetched rows are only the first rows of the result: Databricks cut it at
    /// a limit, or not every chunk was fetched. Then `total_rows` may undercount too
    /// (whether Databricks counts rows before or after the cut is not documented).
    pub truncated: bool,
    /// The header and every fetched row as RFC 4180 CSV, written as rows arrive.
    pub csv: String,
}

/// Rows a [`Table`] keeps parsed: as many as anything reads (ten shown inline, a chart of
/// up to 100, fifty for a model). The rest are only in its CSV.
pub const KEPT_ROWS: usize = 100;

impl Table {
    /// A table of `columns` and no rows yet.
    pub fn new(columns: Vec<String>) -> Self {
        let mut csv = String::new();
        csv_line(&mut csv, columns.iter().map(|c| Some(c.as_str())));
        Self {
            columns,
            csv,
            ..Self::default()
        }
    }

    /// A table of `columns` holding `rows`.
    pub fn of(columns: Vec<String>, rows: Vec<Vec<Option<String>>>) -> Self {
        let mut table = Self::new(columns);
        table.push_rows(rows);
        table
    }

    /// Appends `rows` (a chunk) to the CSV, keeping them parsed while fewer than
    /// [`KEPT_ROWS`] are.
    pub fn push_rows(&mut self, rows: impl IntoIterator<Item = Vec<Option<String>>>) {
        for row in rows {
            csv_line(&mut self.csv, row.iter().map(Option::as_deref));
            if self.rows.len() < KEPT_ROWS {
                self.rows.push(row);
            }
            self.fetched_rows += 1;
        }
    }
}

/// One CSV record (RFC 4180: quoted when it holds a comma, quote or line break; NULL is
/// empty), ended by CRLF.
fn csv_line<'a>(out: &mut String, fields: impl Iterator<Item = Option<&'a str>>) {
    for (i, value) in fields.enumerate() {
        if i > 0 {
            out.push(',');
        }
        let value = value.unwrap_or("");
        if value.contains([',', '"', '\n', '\r']) {
            out.push('"');
            out.push_str(&value.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(value);
        }
    }
    out.push_str("\r\n");
}

/// Rows fetched at most, over all of a result's chunks: the CSV attached to an answer holds
/// no more. Sent as `row_limit` too, so Databricks stops there and says so (`truncated`).
pub const ROW_LIMIT: u64 = 100_000;
/// Bytes of result asked for at most (`byte_limit`). An INLINE result over 25 MiB fails the
/// whole statement; under a byte limit Databricks cuts the result instead and says so.
/// Well below 25 MiB because Databricks counts bytes of its own representation, which
/// "might not match the final size" of the JSON it sends.
pub const BYTE_LIMIT: u64 = 16 * 1024 * 1024;
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

/// What a succeeded statement's result holds: its columns, row count and chunks.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    #[serde(default)]
    pub schema: Option<Schema>,
    #[serde(default)]
    pub total_row_count: Option<u64>,
    /// Whether Databricks cut the result at `row_limit` or `byte_limit`.
    #[serde(default)]
    pub truncated: Option<bool>,
    /// The result's chunks, in order.
    #[serde(default)]
    pub chunks: Option<Vec<ChunkInfo>>,
}

/// One chunk of a result, as the manifest lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct ChunkInfo {
    #[serde(default)]
    pub chunk_index: Option<u32>,
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

/// One chunk of rows: the `result` of a statement (its first chunk), or the answer of
/// `GET …/result/chunks/{n}` (any chunk; the same shape).
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "WireResult")]
pub struct ResultData {
    /// `JSON_ARRAY` rows: strings or null. Databricks can send `null` for the whole array,
    /// and sends none at all when the rows are elsewhere (another chunk, external links).
    pub data_array: Option<Vec<Vec<Option<String>>>>,
    /// The chunk after this one; absent on the last.
    pub next_chunk_index: Option<u32>,
}

/// [`ResultData`] as it arrives: the rows as `data_array`, or in the older typed form
/// `data_typed_array` (`[{"values": [{"str": "…"}, {}]}]`, `{}` for null) that Genie's
/// message-level query result sent (databricks-sdk-java #424).
#[derive(Deserialize)]
struct WireResult {
    #[serde(default)]
    data_array: Option<Vec<Vec<Option<String>>>>,
    #[serde(default)]
    data_typed_array: Option<Vec<TypedRow>>,
    #[serde(default)]
    next_chunk_index: Option<u32>,
}

#[derive(Deserialize)]
struct TypedRow {
    #[serde(default)]
    values: Vec<TypedValue>,
}

#[derive(Deserialize)]
struct TypedValue {
    #[serde(default)]
    str: Option<String>,
}

impl From<WireResult> for ResultData {
    fn from(wire: WireResult) -> Self {
        let typed = wire.data_typed_array.map(|rows| {
            rows.into_iter()
                .map(|row| row.values.into_iter().map(|value| value.str).collect())
                .collect()
        });
        Self {
            data_array: wire.data_array.or(typed),
            next_chunk_index: wire.next_chunk_index,
        }
    }
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

    /// The rows received with the statement (its first chunk), with their column names;
    /// marked truncated when Databricks cut the result or more chunks were not fetched.
    /// [`fetch_table`] fetches the other chunks.
    pub fn into_table(self) -> Option<Table> {
        let truncated = self.next_chunk().is_some();
        let manifest = self.manifest?;
        let columns: Vec<String> = manifest
            .schema
            .map(|s| s.columns.into_iter().map(|c| c.name).collect())
            .unwrap_or_default();
        let mut table = Table::new(columns);
        if let Some(rows) = self.result.and_then(|r| r.data_array) {
            table.push_rows(rows);
        }
        table.total_rows = manifest.total_row_count.or(Some(table.fetched_rows));
        table.truncated = truncated || manifest.truncated == Some(true);
        Some(table)
    }

    /// The chunk to fetch after what came with the statement: the one its `result` names
    /// next or, when rows were counted but none came (no `data_array`), the first chunk
    /// the manifest lists (0 when it lists none).
    fn next_chunk(&self) -> Option<u32> {
        let result = self.result.as_ref();
        if result.is_some_and(|r| r.data_array.is_some()) {
            return result.and_then(|r| r.next_chunk_index);
        }
        let manifest = self.manifest.as_ref()?;
        if manifest.total_row_count.unwrap_or(0) == 0 {
            return None;
        }
        let listed = manifest.chunks.as_ref().and_then(|chunks| chunks.first());
        Some(listed.and_then(|c| c.chunk_index).unwrap_or(0))
    }
}

/// The rows of the finished statement `response`, fetched chunk after chunk
/// (`GET …/result/chunks/{n}`, each naming the next) up to [`ROW_LIMIT`] rows, and no
/// further. The table is marked truncated when Databricks cut the result or rows were left
/// unfetched. A chunk that fails after some rows arrived leaves those rows, marked
/// truncated, rather than losing the answer; a refused token still ends it.
pub async fn fetch_table(db: &Databricks<'_>, response: StatementResponse) -> Result<Option<Table>, ApiError> {
    let mut next = response.next_chunk();
    let statement_id = path_segment(&response.statement_id);
    let manifest_says = response.manifest.as_ref().and_then(|m| m.truncated) == Some(true);
    let Some(mut table) = response.into_table() else {
        return Ok(None);
    };
    let mut fetched: Option<u32> = None;
    let mut over = false;
    while let Some(index) = next {
        // A chunk naming one already fetched would otherwise be fetched forever.
        if table.fetched_rows >= ROW_LIMIT || fetched.is_some_and(|last| index <= last) {
            break;
        }
        let path = format!("/api/2.0/sql/statements/{statement_id}/result/chunks/{index}");
        let chunk: ResultData = match db.get(&path, &[]).await {
            Ok(chunk) => chunk,
            Err(error) if table.fetched_rows == 0 || error == ApiError::InvalidToken => return Err(error),
            Err(error) => {
                tracing::warn!(error = %error, chunk = index, "could not fetch a result chunk; showing the rows before it");
                break;
            }
        };
        fetched = Some(index);
        // No rows inline (external links): nothing more can be read here.
        let Some(rows) = chunk.data_array else {
            break;
        };
        let room = ROW_LIMIT - table.fetched_rows;
        over = rows.len() as u64 > room;
        table.push_rows(rows.into_iter().take(room as usize));
        next = chunk.next_chunk_index;
    }
    table.truncated = manifest_says || over || next.is_some();
    Ok(Some(table))
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
        "byte_limit": BYTE_LIMIT,
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
