//! The tools the model may call. Each is a Databricks call made as the person, so the model
//! sees exactly what they may see: Unity Catalog browsing, read-only SQL on the configured
//! warehouse, the configured Genie space (through the [`Genie`] agent), and who-am-I.
//!
//! A tool never fails the answer for a reason the model can explain (a permission denied,
//! a missing table, a failed or refused statement, bad arguments): that goes back to the
//! model as the tool's result. Only a refused token and transient Databricks failures end
//! the answer.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::agent::genie::Genie;
use crate::agent::{Agent, AgentError, AgentRequest, Progress, Table};
use crate::databricks::api::{ApiError, Databricks, path_segment};
use crate::databricks::sql;

use super::{read_only, truncate};

/// Rows of a query result the model sees; the person gets every row received.
const MODEL_ROWS: usize = 50;
/// Longest tool result sent to the model, in bytes of JSON.
const MAX_RESULT_BYTES: usize = 8 * 1024;
/// Longest single value (a cell, a comment) sent to the model, in bytes.
const MAX_VALUE_BYTES: usize = 200;
/// Unity Catalog pages fetched for one listing.
const MAX_PAGES: usize = 5;
/// Catalogs, schemas or tables listed at most.
const MAX_ITEMS: usize = 200;
/// Columns described at most.
const MAX_COLUMNS: usize = 300;
/// Tool calls allowed for one question, across all model steps.
const MAX_TOOL_CALLS: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    WhoAmI,
    ListCatalogs,
    ListSchemas,
    ListTables,
    DescribeTable,
    RunSql,
    AskGenie,
}

impl Tool {
    const ALL: [Tool; 7] = [
        Tool::WhoAmI,
        Tool::ListCatalogs,
        Tool::ListSchemas,
        Tool::ListTables,
        Tool::DescribeTable,
        Tool::RunSql,
        Tool::AskGenie,
    ];

    fn name(self) -> &'static str {
        match self {
            Tool::WhoAmI => "whoami",
            Tool::ListCatalogs => "list_catalogs",
            Tool::ListSchemas => "list_schemas",
            Tool::ListTables => "list_tables",
            Tool::DescribeTable => "describe_table",
            Tool::RunSql => "run_sql",
            Tool::AskGenie => "ask_genie",
        }
    }

    /// The OpenAI-style function definition the model is given.
    fn definition(self) -> Value {
        let string = |description: &str| json!({"type": "string", "description": description});
        let (description, properties) = match self {
            Tool::WhoAmI => (
                "Who the person asking is in Databricks: user name, display name, emails. Every tool runs as them.",
                json!({}),
            ),
            Tool::ListCatalogs => ("List the Unity Catalog catalogs the person can see.", json!({})),
            Tool::ListSchemas => (
                "List the schemas of a catalog that the person can see.",
                json!({"catalog": string("Catalog name")}),
            ),
            Tool::ListTables => (
                "List the tables and views of a schema, with their type and comment.",
                json!({"catalog": string("Catalog name"), "schema": string("Schema name")}),
            ),
            Tool::DescribeTable => (
                "Describe one table or view: its comment and its columns' names, types and comments.",
                json!({"full_name": string("catalog.schema.table")}),
            ),
            Tool::RunSql => (
                "Run one read-only Databricks SQL statement (SELECT, WITH, SHOW, DESCRIBE or EXPLAIN) on the SQL \
                 warehouse as the person and get its first rows. Use catalog.schema.table names. Add a LIMIT when a \
                 sample is enough.",
                json!({"statement": string("One SQL statement")}),
            ),
            Tool::AskGenie => (
                "Ask the workspace's Genie space, which knows a curated set of tables and writes and runs SQL for \
                 them. Follow-ups in the same Slack thread continue the same Genie conversation.",
                json!({"question": string("The question, in plain words")}),
            ),
        };
        let required: Vec<&String> = properties.as_object().map(|p| p.keys().collect()).unwrap_or_default();
        json!({
            "type": "function",
            "function": {
                "name": self.name(),
                "description": description,
                "parameters": {"type": "object", "properties": properties, "required": required},
            },
        })
    }
}

#[derive(Deserialize)]
struct SchemaArgs {
    catalog: String,
}

#[derive(Deserialize)]
struct TableArgs {
    catalog: String,
    schema: String,
}

#[derive(Deserialize)]
struct DescribeArgs {
    full_name: String,
}

#[derive(Deserialize)]
struct SqlArgs {
    statement: String,
}

#[derive(Deserialize)]
struct GenieArgs {
    question: String,
}

/// The Genie space, asked as the person of `request`, and the Genie conversation of the
/// thread (continued by every `ask_genie`).
pub struct GenieTool<'a> {
    pub agent: &'a Genie,
    pub request: &'a AgentRequest,
    pub conversation: Option<Value>,
}

/// A statement that succeeded, with every row received: shown to the person under the answer.
#[derive(Debug)]
pub struct Query {
    pub sql: String,
    pub table: Option<Table>,
}

/// Why a tool produced no result.
enum ToolFailure {
    /// Something the model should hear and can explain or work around.
    ToModel(String),
    /// Something that ends the answer (a refused token, Databricks unavailable).
    Abort(AgentError),
}

impl From<ApiError> for ToolFailure {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::PermissionDenied(message) => Self::ToModel(format!("permission denied: {message}")),
            ApiError::Rejected { code, message, .. } if code.is_empty() => Self::ToModel(format!("error: {message}")),
            ApiError::Rejected { code, message, .. } => Self::ToModel(format!("error: {code}: {message}")),
            ApiError::Timeout => Self::ToModel("error: Databricks did not answer in time".into()),
            // Logged, with its detail, where it was read.
            ApiError::Unexpected(_) => Self::ToModel("error: Databricks sent an answer that could not be read".into()),
            error @ (ApiError::InvalidToken | ApiError::RateLimited { .. } | ApiError::Transient(_)) => {
                Self::Abort(error.into())
            }
        }
    }
}

/// The tools for one answer, as one person.
pub struct Toolbox<'a> {
    db: Databricks<'a>,
    warehouse_id: Option<&'a str>,
    genie: Option<GenieTool<'a>>,
    progress: &'a dyn Progress,
    calls: usize,
    /// The last statement that succeeded.
    pub last_query: Option<Query>,
    /// Why the last statement failed, unless one succeeded since: what the person hears
    /// if the model gives up.
    pub last_failure: Option<String>,
}

impl<'a> Toolbox<'a> {
    /// The tools for `db`'s person; `run_sql` only with a warehouse, `ask_genie` only with
    /// a Genie space.
    pub fn new(
        db: Databricks<'a>,
        warehouse_id: Option<&'a str>,
        genie: Option<GenieTool<'a>>,
        progress: &'a dyn Progress,
    ) -> Self {
        Self {
            db,
            warehouse_id,
            genie,
            progress,
            calls: 0,
            last_query: None,
            last_failure: None,
        }
    }

    fn available(&self) -> impl Iterator<Item = Tool> + '_ {
        Tool::ALL.into_iter().filter(|tool| match tool {
            Tool::RunSql => self.warehouse_id.is_some(),
            Tool::AskGenie => self.genie.is_some(),
            _ => true,
        })
    }

    /// The thread's Genie conversation after this answer, to keep for the next question.
    pub fn genie_conversation(&self) -> Option<&Value> {
        self.genie.as_ref().and_then(|genie| genie.conversation.as_ref())
    }

    /// The definitions of the tools available, for the model.
    pub fn definitions(&self) -> Vec<Value> {
        self.available().map(Tool::definition).collect()
    }

    /// Runs the tool `name` with the model's `arguments` (a JSON string, or an object) and
    /// returns the result for the model; `Err` only when the answer cannot go on.
    pub async fn call(&mut self, name: &str, arguments: &Value) -> Result<String, AgentError> {
        let Some(tool) = self.available().find(|tool| tool.name() == name) else {
            let names: Vec<&str> = self.available().map(Tool::name).collect();
            return Ok(format!(
                "error: there is no tool named {name:?}; the tools are {}",
                names.join(", ")
            ));
        };
        self.calls += 1;
        if self.calls > MAX_TOOL_CALLS {
            return Ok("error: no more tool calls are allowed for this question; answer with what you have".into());
        }
        tracing::debug!(tool = name, "the model called a tool");
        let result = match parse_arguments(arguments) {
            Ok(arguments) => self.run(tool, arguments).await,
            Err(error) => Err(ToolFailure::ToModel(format!(
                "error: the arguments are not a JSON object ({error}); call {name} again with valid JSON"
            ))),
        };
        match result {
            Ok(value) => Ok(bounded(&value)),
            Err(ToolFailure::ToModel(message)) => Ok(truncate(&message, MAX_RESULT_BYTES)),
            Err(ToolFailure::Abort(error)) => Err(error),
        }
    }

    async fn run(&mut self, tool: Tool, arguments: Value) -> Result<Value, ToolFailure> {
        match tool {
            Tool::WhoAmI => self.whoami().await,
            Tool::ListCatalogs => {
                self.progress.working_on("Looking at tables…").await;
                self.list("/api/2.1/unity-catalog/catalogs", &[], "catalogs").await
            }
            Tool::ListSchemas => {
                let args: SchemaArgs = arguments_of(tool, arguments)?;
                self.progress.working_on("Looking at tables…").await;
                let query = [("catalog_name", args.catalog.as_str())];
                self.list("/api/2.1/unity-catalog/schemas", &query, "schemas").await
            }
            Tool::ListTables => {
                let args: TableArgs = arguments_of(tool, arguments)?;
                self.progress.working_on("Looking at tables…").await;
                let query = [
                    ("catalog_name", args.catalog.as_str()),
                    ("schema_name", args.schema.as_str()),
                    ("omit_columns", "true"),
                    ("omit_properties", "true"),
                ];
                self.list("/api/2.1/unity-catalog/tables", &query, "tables").await
            }
            Tool::DescribeTable => {
                let args: DescribeArgs = arguments_of(tool, arguments)?;
                self.progress.working_on("Looking at tables…").await;
                self.describe_table(&args.full_name).await
            }
            Tool::RunSql => {
                let args: SqlArgs = arguments_of(tool, arguments)?;
                self.run_sql(&args.statement).await
            }
            Tool::AskGenie => {
                let args: GenieArgs = arguments_of(tool, arguments)?;
                self.ask_genie(args.question).await
            }
        }
    }

    async fn whoami(&self) -> Result<Value, ToolFailure> {
        let me = self.db.current_user().await?;
        Ok(json!({
            "user_name": me.user_name,
            "display_name": me.display_name,
            "emails": me.emails,
        }))
    }

    /// A Unity Catalog listing, page by page up to a bound: `{key: [items]}` with each
    /// item's name, comment and (for tables) type.
    async fn list(&self, path: &str, query: &[(&str, &str)], key: &str) -> Result<Value, ToolFailure> {
        let mut items = Vec::new();
        let mut page_token: Option<String> = None;
        let mut more = false;
        for _ in 0..MAX_PAGES {
            // `max_results=0` asks for the server's page size (unpaginated calls are deprecated).
            let mut page_query = query.to_vec();
            page_query.push(("max_results", "0"));
            if let Some(token) = &page_token {
                page_query.push(("page_token", token));
            }
            let page: Value = self.db.get(path, &page_query).await?;
            items.extend(page[key].as_array().into_iter().flatten().map(summary));
            page_token = page["next_page_token"]
                .as_str()
                .filter(|t| !t.is_empty())
                .map(str::to_owned);
            more = page_token.is_some();
            if !more || items.len() >= MAX_ITEMS {
                break;
            }
        }
        let truncated = more || items.len() > MAX_ITEMS;
        items.truncate(MAX_ITEMS);
        let mut listing = json!({ key: items });
        if truncated {
            listing["note"] = format!("there are more {key} than listed here").into();
        }
        Ok(listing)
    }

    async fn describe_table(&self, full_name: &str) -> Result<Value, ToolFailure> {
        // The model may quote the name as it would in SQL.
        let full_name = full_name.trim().replace('`', "");
        if full_name.split('.').count() != 3 || full_name.split('.').any(str::is_empty) {
            return Err(ToolFailure::ToModel(
                "error: full_name must be catalog.schema.table".into(),
            ));
        }
        let path = format!("/api/2.1/unity-catalog/tables/{}", path_segment(&full_name));
        let table: Value = self.db.get(&path, &[]).await?;
        let columns = table["columns"].as_array().into_iter().flatten();
        let columns: Vec<Value> = columns
            .take(MAX_COLUMNS)
            .map(|c| {
                let mut column = json!({"name": c["name"], "type": c["type_text"]});
                if let Some(comment) = c["comment"].as_str() {
                    column["comment"] = truncate(comment, MAX_VALUE_BYTES).into();
                }
                column
            })
            .collect();
        let mut description = json!({
            "full_name": table["full_name"],
            "table_type": table["table_type"],
            "columns": columns,
        });
        if let Some(comment) = table["comment"].as_str() {
            description["comment"] = truncate(comment, MAX_VALUE_BYTES * 5).into();
        }
        Ok(description)
    }

    async fn run_sql(&mut self, statement: &str) -> Result<Value, ToolFailure> {
        let warehouse_id = self.warehouse_id.expect("run_sql is offered only with a warehouse");
        let statement = read_only::check(statement).map_err(|why| {
            ToolFailure::ToModel(format!(
                "refused, nothing was run: {why}. Only one read-only statement (SELECT, WITH, SHOW, DESCRIBE or \
                 EXPLAIN) may run; put identifiers that are SQL keywords in backquotes."
            ))
        })?;
        self.progress.working_on("Running query…").await;
        let response = sql::execute(&self.db, warehouse_id, statement, self.progress)
            .await
            .map_err(|error| match error {
                ApiError::Timeout => ToolFailure::ToModel(
                    "error: the statement did not finish in time and was cancelled; try a cheaper query".into(),
                ),
                error => error.into(),
            })?;
        if let Some(failure) = response.failure() {
            self.last_failure = Some(failure.clone());
            return Err(ToolFailure::ToModel(format!("the statement failed: {failure}")));
        }
        let table = sql::fetch_table(&self.db, response).await?;
        let result = table
            .as_ref()
            .map(rows_for_model)
            .unwrap_or_else(|| json!({"rows": []}));
        self.last_failure = None;
        self.last_query = Some(Query {
            sql: statement.to_owned(),
            table,
        });
        Ok(result)
    }
    /// Asks Genie (in the thread's Genie conversation, if there is one). Its query, when it
    /// ran, is the one shown to the person, as with `run_sql`.
    async fn ask_genie(&mut self, question: String) -> Result<Value, ToolFailure> {
        let genie = self
            .genie
            .as_mut()
            .expect("ask_genie is offered only with a Genie space");
        let request = AgentRequest {
            question,
            conversation: genie.conversation.clone(),
            ..genie.request.clone()
        };
        let answer = genie
            .agent
            .answer(&request, self.progress)
            .await
            .map_err(|error| match error {
                AgentError::Unauthorized => ToolFailure::Abort(AgentError::Unauthorized),
                AgentError::NoAccess(message) => ToolFailure::ToModel(format!("permission denied: {message}")),
                AgentError::Transient { reason, .. } => {
                    ToolFailure::ToModel(format!("error: Genie is unavailable right now: {reason}"))
                }
                AgentError::Failed(message) => ToolFailure::ToModel(format!("error: {message}")),
            })?;
        if answer.conversation.is_some() {
            genie.conversation = answer.conversation;
        }
        let mut result = json!({"answer": answer.text});
        if let Some(sql) = &answer.sql {
            result["sql"] = sql.as_str().into();
        }
        if let Some(table) = &answer.table {
            result["result"] = rows_for_model(table);
        }
        if !answer.suggestions.is_empty() {
            result["suggested_questions"] = json!(answer.suggestions);
        }
        if let (Some(sql), Some(table)) = (answer.sql, answer.table) {
            self.last_failure = None;
            self.last_query = Some(Query {
                sql,
                table: Some(table),
            });
        }
        Ok(result)
    }
}

/// The model's arguments: a JSON object, usually sent as a string of JSON (an empty string
/// for no arguments).
fn parse_arguments(arguments: &Value) -> Result<Value, String> {
    let value = match arguments {
        Value::String(text) if text.trim().is_empty() => json!({}),
        Value::String(text) => serde_json::from_str(text).map_err(|e| e.to_string())?,
        Value::Null => json!({}),
        other => other.clone(),
    };
    if value.is_object() {
        Ok(value)
    } else {
        Err("not an object".into())
    }
}

fn arguments_of<T: DeserializeOwned>(tool: Tool, arguments: Value) -> Result<T, ToolFailure> {
    serde_json::from_value(arguments)
        .map_err(|e| ToolFailure::ToModel(format!("error: wrong arguments for {}: {e}", tool.name())))
}

/// A catalog, schema or table as the model sees it.
fn summary(item: &Value) -> Value {
    let mut summary = json!({"name": item["name"]});
    if let Some(kind) = item["table_type"].as_str() {
        summary["type"] = kind.into();
    }
    if let Some(comment) = item["comment"].as_str() {
        summary["comment"] = truncate(comment, MAX_VALUE_BYTES).into();
    }
    summary
}

/// The first rows of `table`, as many as fit the model's budget.
fn rows_for_model(table: &Table) -> Value {
    let cell = |value: &Option<String>| value.as_deref().map(|v| truncate(v, MAX_VALUE_BYTES));
    let mut rows: Vec<Vec<Option<String>>> = table
        .rows
        .iter()
        .take(MODEL_ROWS)
        .map(|row| row.iter().map(cell).collect())
        .collect();
    let total = table.total_rows.unwrap_or(table.fetched_rows).max(table.fetched_rows);
    loop {
        let mut result = json!({"columns": table.columns, "rows": rows, "total_rows": total});
        if (rows.len() as u64) < total {
            result["note"] = format!(
                "only the first {} rows are shown to you; the person sees the result under your answer",
                rows.len()
            )
            .into();
        }
        if table.truncated {
            // Otherwise the model may state the cut count as the whole result's.
            result["truncated"] = true.into();
            result["truncated_note"] = "the result was too large and was cut after its first rows, so total_rows \
                 may not be its true size; say so rather than give totals, the person is told too"
                .into();
        }
        if rows.is_empty() || result.to_string().len() <= MAX_RESULT_BYTES {
            return result;
        }
        rows.pop();
    }
}

/// `value` as JSON text of at most [`MAX_RESULT_BYTES`].
fn bounded(value: &Value) -> String {
    truncate(&value.to_string(), MAX_RESULT_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_for_the_model_are_bounded() {
        let table = Table {
            total_rows: Some(10_000),
            ..Table::of(
                vec!["a".into()],
                (0..500)
                    .map(|i| vec![Some(format!("{i}-{}", "x".repeat(500)))])
                    .collect(),
            )
        };
        let result = rows_for_model(&table);
        assert!(result.to_string().len() <= MAX_RESULT_BYTES);
        let rows = result["rows"].as_array().unwrap();
        assert!(!rows.is_empty() && rows.len() < MODEL_ROWS);
        assert_eq!(result["total_rows"], 10_000);
        assert!(result["note"].is_string());
        assert_eq!(truncate("ééé", 5), "é…");
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(path_segment("main.sales.my table/x"), "main.sales.my%20table%2Fx");
    }

    #[test]
    fn a_truncated_result_tells_the_model_that_its_row_count_is_not_the_whole() {
        let mut table = Table::of(vec!["a".into()], vec![vec![Some("1".into())]; 3]);
        assert!(rows_for_model(&table).get("truncated").is_none());
        table.truncated = true;
        let result = rows_for_model(&table);
        assert_eq!(result["truncated"], true);
        assert!(result["truncated_note"].as_str().unwrap().contains("cut"));
        assert_eq!(result["rows"].as_array().unwrap().len(), 3);
    }
}
