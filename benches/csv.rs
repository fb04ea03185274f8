//! Memory of a large SQL result made into the CSV under an answer, measured on the heap.
//!
//! ```text
//! cargo bench --bench csv [-- ROWS CHUNK_ROWS]     (defaults: 50000, 5000)
//! ```
//!
//! A fake SQL Statement Execution API (the recorded statement and chunk shapes) serves a
//! result of ROWS rows of eight columns in chunks of CHUNK_ROWS, pre-rendered so serving
//! them allocates nothing of note. The bench submits the statement and reads the result
//! as the llm agent's `run_sql` does (`sql::execute`, `sql::fetch_table`), renders the
//! answer, and serialises the CSV as the job's outbox keeps it. A counting allocator
//! reports the heap each phase adds at its peak over what was live before it, beside the
//! CSV's size and the largest chunk's: the target is one chunk plus the CSV being
//! written. For comparison it reports what the same rows cost held as parsed rows.

#[allow(dead_code)] // the bench uses a few of the tests' helpers
#[path = "../tests/integration/common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Bytes;
use axum::extract::Path;
use axum::routing::{get, post};
use common::recorded::recorded;
use databricks_slack_bot::agent::AgentAnswer;
use databricks_slack_bot::databricks::Unwatched;
use databricks_slack_bot::databricks::api::{Databricks, http_client};
use databricks_slack_bot::databricks::bearer::Bearer;
use databricks_slack_bot::databricks::sql::{self, ResultData};
use databricks_slack_bot::domain::WorkspaceHost;
use databricks_slack_bot::slack::render::{self, Attribution};
use secrecy::SecretString;
use serde_json::{Value, json};
use support::{memory_of, serve};

#[allow(dead_code)] // the bench serves a router and reads its own memory, nothing more
mod support;

/// The system allocator, counting the bytes live and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is passed to `System` unchanged; only the counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    /// Counted as the change in size: large blocks grow in place (glibc moves them with
    /// `mremap`), so the old and new block are not both resident.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            grew(new_size - layout.size());
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static HEAP: Counting = Counting;

/// What a phase added to the heap: at its peak, and still held after it.
struct Phase {
    peak: usize,
    held: usize,
}

/// Runs `phase`, measuring the heap it adds over what was live before it.
async fn measure<T>(phase: impl Future<Output = T>) -> (T, Phase) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let out = phase.await;
    let peak = PEAK.load(Ordering::Relaxed) - before;
    let held = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    (out, Phase { peak, held })
}

const COLUMNS: [&str; 8] = [
    "order_id",
    "order_date",
    "region",
    "customer",
    "product",
    "quantity",
    "unit_price",
    "status",
];
const STATEMENT_ID: &str = "01f0b2c3-d4e5-1f60-9a8b-7c6d5e4f3a21";

fn row(i: usize) -> Value {
    let regions = ["EMEA", "AMER", "APAC", "LATAM"];
    let statuses = ["shipped", "returned", "pending, awaiting \"stock\""];
    json!([
        (100_000 + i).to_string(),
        format!("2025-{:02}-{:02}", i % 12 + 1, i % 28 + 1),
        regions[i % 4],
        format!("Customer {}", i % 997),
        format!("SKU-{:05}", i % 3_001),
        (i % 17 + 1).to_string(),
        format!("{}.{:02}", i % 500 + 1, i % 100),
        statuses[i % 3],
    ])
}

/// Chunk `index` of `rows` rows in chunks of `chunk_rows`, in the recorded chunk's shape.
fn chunk_body(index: usize, rows: usize, chunk_rows: usize) -> Value {
    let from = index * chunk_rows;
    let count = chunk_rows.min(rows - from);
    let mut body = recorded("sql-statement-result-chunk").json();
    body["chunk_index"] = index.into();
    body["row_offset"] = from.into();
    body["row_count"] = count.into();
    body["data_array"] = (from..from + count).map(row).collect();
    if from + count < rows {
        body["next_chunk_index"] = (index + 1).into();
    }
    body
}

/// The statement's answer (the recorded SUCCEEDED shape, chunk 0 inline) and each later
/// chunk, as the bytes served.
fn result_bodies(rows: usize, chunk_rows: usize) -> (Bytes, Vec<Bytes>) {
    let chunks = rows.div_ceil(chunk_rows);
    let mut statement = recorded("sql-statement-succeeded-truncated").json();
    statement["statement_id"] = STATEMENT_ID.into();
    let column = statement["manifest"]["schema"]["columns"][0].clone();
    statement["manifest"]["schema"]["columns"] = COLUMNS
        .iter()
        .enumerate()
        .map(|(position, name)| {
            let mut column = column.clone();
            column["name"] = (*name).into();
            column["position"] = position.into();
            column
        })
        .collect();
    statement["manifest"]["schema"]["column_count"] = COLUMNS.len().into();
    statement["manifest"]["truncated"] = false.into();
    statement["manifest"]["total_row_count"] = rows.into();
    statement["manifest"]["total_chunk_count"] = chunks.into();
    statement["manifest"]["chunks"] = (0..chunks)
        .map(|i| json!({"chunk_index": i, "row_offset": i * chunk_rows, "row_count": chunk_rows.min(rows - i * chunk_rows)}))
        .collect();
    statement["result"] = chunk_body(0, rows, chunk_rows);
    let later = (0..chunks)
        .map(|i| Bytes::from(chunk_body(i, rows, chunk_rows).to_string()))
        .collect();
    (Bytes::from(statement.to_string()), later)
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let rows: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(50_000);
    let chunk_rows: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5_000);
    assert!(rows as u64 <= sql::ROW_LIMIT, "at most ROW_LIMIT rows are fetched");

    let (statement, chunks) = result_bodies(rows, chunk_rows);
    let largest_chunk = chunks.iter().map(Bytes::len).max().unwrap_or(0).max(statement.len());
    let chunks = Arc::new(chunks);
    let json_response = |body: Bytes| ([("content-type", "application/json")], body);
    let app = axum::Router::new()
        .route(
            "/api/2.0/sql/statements",
            post(move || {
                let statement = statement.clone();
                async move { json_response(statement) }
            }),
        )
        .route(
            "/api/2.0/sql/statements/{id}/result/chunks/{index}",
            get({
                let chunks = chunks.clone();
                move |Path((_, index)): Path<(String, usize)>| {
                    let body = chunks[index].clone();
                    async move { json_response(body) }
                }
            }),
        );
    let url = serve(app).await;

    let http = http_client();
    let host = WorkspaceHost::parse(&url).unwrap();
    let bearer = Bearer::fixed(SecretString::from("dapi-bench"));
    let db = Databricks::new(&http, &host, &bearer);
    // Warm the connection so its buffers are not counted against the result.
    sql::execute(&db, "wh-bench", "SELECT 1", &Unwatched).await.unwrap();

    let (table, fetch) = measure(async {
        let response = sql::execute(&db, "wh-bench", "SELECT * FROM main.sales.orders", &Unwatched)
            .await
            .unwrap();
        sql::fetch_table(&db, response).await.unwrap().expect("a table")
    })
    .await;
    assert_eq!(table.fetched_rows as usize, rows, "every row fetched");
    assert_eq!(table.csv.lines().count(), rows + 1, "a header and every row");
    let csv_bytes = table.csv.len();
    let table_csv_capacity = table.csv.capacity();

    let answer = AgentAnswer {
        text: "Here are the orders.".into(),
        table: Some(table),
        ..AgentAnswer::default()
    };
    let by = Attribution {
        databricks_user: "bench@example.com",
        agent: "Databricks",
    };
    let (rendered, render) = measure(async { render::answer(&answer, &by, None, None, Some(1)) }).await;
    let (stored, outbox) = measure(async { serde_json::to_string(&rendered.csv).unwrap() }).await;
    assert!(stored.len() >= csv_bytes);
    drop((stored, rendered, answer));

    let largest = chunks.iter().max_by_key(|body| body.len()).expect("a chunk");
    let (one, one_chunk) = measure(async { serde_json::from_slice::<ResultData>(largest).unwrap() }).await;
    drop(one);
    let bound = largest_chunk + one_chunk.held + table_csv_capacity;
    let (parsed, as_rows) = measure(async {
        chunks
            .iter()
            .map(|body| serde_json::from_slice::<ResultData>(body).unwrap())
            .collect::<Vec<_>>()
    })
    .await;
    drop(parsed);

    let (hwm, _) = memory_of(std::process::id());
    println!(
        "A {rows}-row, {}-column result in chunks of {chunk_rows} rows",
        COLUMNS.len()
    );
    println!("  CSV written                        {}", mib(csv_bytes));
    println!(
        "  one chunk                          {} as served, {} parsed",
        mib(largest_chunk),
        mib(one_chunk.held)
    );
    println!(
        "  fetch into a table, heap at peak   {}   ({:.2}× one chunk, served and parsed, + the CSV's buffer); held after: {}",
        mib(fetch.peak),
        fetch.peak as f64 / bound as f64,
        mib(fetch.held)
    );
    println!(
        "  render the answer, heap at peak    {}   (the CSV file under the answer)",
        mib(render.peak)
    );
    println!(
        "  the outbox's JSON, heap at peak    {}   (what the job stores)",
        mib(outbox.peak)
    );
    println!(
        "  the same rows held parsed          {}   (what fetching did before rows streamed to CSV)",
        mib(as_rows.held)
    );
    println!("  process peak RSS (VmHWM)           {hwm:.1} MiB, including the fake's served bodies");
}
