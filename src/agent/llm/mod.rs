//! A tool-calling loop on a Databricks model-serving endpoint, as the person.
//!
//! The model (any chat endpoint with OpenAI-compatible function calling, reached through
//! `/serving-endpoints/chat/completions`) gets a short system prompt, the thread's recent
//! turns and the question, and may call [`tools`] that reach Databricks with the asker's
//! own token, so it sees only what they may see. Model calls, tool calls and the size of
//! every tool result are bounded.

pub mod read_only;
pub mod tools;

use std::sync::Mutex;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::agent::genie::Genie;
use crate::agent::{Agent, AgentAnswer, AgentError, AgentRequest, Progress};
use crate::config::GenieSpaces;
use crate::databricks::api::Databricks;
use tools::{GenieTool, Toolbox};

/// The OpenAI-compatible chat endpoint of Databricks model serving (`model` names the endpoint).
const CHAT_PATH: &str = "/serving-endpoints/chat/completions";
/// Model calls for one question before giving up.
const MAX_MODEL_CALLS: usize = 8;
/// Earlier messages of the thread (questions and answers) the model is shown.
const MAX_TURNS: usize = 6;
/// Longest earlier message kept, in bytes (an answer's own text gets half of it, its SQL
/// the rest).
const MAX_TURN_BYTES: usize = 3000;
/// Said when the model ends without words or a result.
const NO_ANSWER: &str = "I couldn't put an answer together. Try asking in other words.";

/// Answers with a model on a serving endpoint that calls Databricks tools as the person.
pub struct Llm {
    http: reqwest::Client,
    endpoint: String,
    warehouse_id: Option<String>,
    /// The Genie space `ask_genie` asks, through the Genie agent.
    genie: Option<Genie>,
}

impl Llm {
    /// A model on serving `endpoint`; `run_sql` only with a warehouse, `ask_genie` only with
    /// a Genie space.
    pub fn new(
        http: reqwest::Client,
        endpoint: String,
        warehouse_id: Option<String>,
        genie_spaces: Option<GenieSpaces>,
    ) -> Self {
        Self {
            genie: genie_spaces.map(|spaces| Genie::new(http.clone(), spaces)),
            http,
            endpoint,
            warehouse_id,
        }
    }
}

#[async_trait]
impl Agent for Llm {
    fn name(&self) -> &str {
        "Databricks AI"
    }

    async fn answer(&self, request: &AgentRequest, progress: &dyn Progress) -> Result<AgentAnswer, AgentError> {
        // However the steps add up (model calls, statements, Genie), an answer ends within
        // the bound the token broker plans for.
        match tokio::time::timeout(ANSWER_DEADLINE, self.work(request, progress)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(AgentError::Failed(format!(
                "I couldn't finish within {} minutes; try a narrower question",
                ANSWER_DEADLINE.as_secs() / 60
            ))),
        }
    }
}

/// Longest one answer may take.
const ANSWER_DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);

impl Llm {
    /// The tool-calling loop.
    async fn work(&self, request: &AgentRequest, progress: &dyn Progress) -> Result<AgentAnswer, AgentError> {
        let progress = &Changes::new(progress);
        let context = &request.context;
        let bearer = context.bearer();
        let db = Databricks::new(&self.http, &context.host, &bearer);
        let mut conversation = Conversation::from_value(request.conversation.as_ref());
        let genie = self.genie.as_ref().map(|agent| GenieTool {
            agent,
            request,
            conversation: conversation.genie.take(),
        });
        let mut tools = Toolbox::new(db, self.warehouse_id.as_deref(), genie, progress);
        let definitions = tools.definitions();
        let system = system_prompt(
            &context.databricks_user_name,
            self.warehouse_id.is_some(),
            self.genie.is_some(),
        );
        let mut messages = vec![json!({"role": "system", "content": system})];
        messages.extend(conversation.turns.iter().map(|turn| json!(turn)));
        messages.push(json!({"role": "user", "content": request.question}));

        for step in 1..=MAX_MODEL_CALLS {
            progress.working_on("Thinking…").await;
            let chat = ChatRequest {
                model: &self.endpoint,
                messages: &messages,
                tools: &definitions,
            };
            let completion: Completion = db.post(CHAT_PATH, &chat).await?;
            let Some(Choice { message }) = completion.choices.into_iter().next() else {
                tracing::warn!("the model endpoint answered without a choice");
                return Err(AgentError::Failed(NO_ANSWER.into()));
            };
            let calls = message.tool_calls.unwrap_or_default();
            if calls.is_empty() {
                tracing::info!(model_calls = step, "the model answered");
                let text = text_of(&message.content);
                conversation.push(Role::User, request.question.clone());
                return finish(text, tools, conversation);
            }
            messages.push(json!({"role": "assistant", "content": message.content, "tool_calls": calls}));
            for call in &calls {
                let result = tools.call(&call.function.name, &call.function.arguments).await?;
                messages.push(json!({"role": "tool", "tool_call_id": call.id, "content": result}));
            }
        }
        tracing::info!(
            model_calls = MAX_MODEL_CALLS,
            "the model did not finish within its steps"
        );
        Err(AgentError::Failed(match tools.last_failure {
            Some(failure) => format!("I couldn't finish answering. The last query failed: {failure}"),
            None => "I couldn't finish answering in the steps I'm allowed. Try a narrower question.".into(),
        }))
    }
}

/// Progress passed on only when the status changes (tools in a row all say "Looking at
/// tables…").
struct Changes<'p> {
    progress: &'p dyn Progress,
    last: Mutex<String>,
}

impl<'p> Changes<'p> {
    fn new(progress: &'p dyn Progress) -> Self {
        Self {
            progress,
            last: Mutex::new(String::new()),
        }
    }
}

#[async_trait]
impl Progress for Changes<'_> {
    async fn working_on(&self, status: &str) {
        {
            let mut last = self.last.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if *last == status {
                return;
            }
            status.clone_into(&mut last);
        }
        self.progress.working_on(status).await;
    }
}

/// The answer from the model's final `text`, the last successful query, and the thread's
/// turns with this question and answer added.
fn finish(text: String, tools: Toolbox<'_>, mut conversation: Conversation) -> Result<AgentAnswer, AgentError> {
    conversation.genie = tools.genie_conversation().cloned();
    let (sql, table) = match tools.last_query {
        Some(query) => (Some(query.sql), query.table),
        None => (None, None),
    };
    let text = match (text.is_empty(), tools.last_failure) {
        (false, _) => text,
        (true, Some(failure)) => return Err(AgentError::Failed(format!("The query failed: {failure}"))),
        (true, None) if table.is_some() => "Here is what I found.".to_owned(),
        (true, None) => {
            return Err(AgentError::Failed(NO_ANSWER.into()));
        }
    };
    let mut remembered = truncate(&text, MAX_TURN_BYTES / 2);
    if let Some(sql) = &sql {
        // The query shown with the answer, so a follow-up ("and by month?") can build on it.
        remembered.push_str("\n\nSQL used:\n");
        remembered.push_str(sql);
    }
    conversation.push(Role::Assistant, remembered);
    Ok(AgentAnswer {
        text,
        sql,
        table,
        conversation: Some(json!(conversation)),
        ..AgentAnswer::default()
    })
}

fn system_prompt(user_name: &str, can_query: bool, has_genie: bool) -> String {
    let query = if can_query {
        ", then query with run_sql. Query results are shown to them as a table under your answer, so summarise \
         them instead of repeating rows"
    } else {
        ""
    };
    let genie = if has_genie {
        " A Genie space curated for this workspace's data answers through ask_genie; try it first for questions \
         about the business."
    } else {
        ""
    };
    format!(
        "You answer questions about a Databricks workspace in Slack for {user_name}. Every tool runs as them, \
         with their permissions, so you see only what they can see. Use the tools rather than guessing: find \
         tables with list_catalogs, list_schemas and list_tables, check columns with describe_table{query}.{genie} \
         You can only read, never change anything. When a tool says permission denied, tell them plainly which \
         object they lack access to. Keep answers short: a few sentences or a short list. Slack shows your \
         answer: use *bold*, `code` and bullet lists, no tables or headings."
    )
}

/// `text` cut to at most `max` bytes on a character boundary, marked when cut.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The text of a message's content: a string, or (reasoning models) a list of parts of
/// which the `text` ones count.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(text) => text.trim().to_owned(),
        Value::Array(parts) => parts
            .iter()
            .filter(|part| part["type"] == "text")
            .filter_map(|part| part["text"].as_str())
            .collect::<String>()
            .trim()
            .to_owned(),
        _ => String::new(),
    }
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: &'a [Value],
    tools: &'a [Value],
}

#[derive(Deserialize)]
struct Completion {
    #[serde(default)]
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: AssistantMessage,
}

#[derive(Deserialize)]
struct AssistantMessage {
    /// A string, `null` beside tool calls, or a list of content parts.
    #[serde(default)]
    content: Value,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCall>>,
}

/// A tool call as the model sent it; echoed back verbatim before the tool's result.
#[derive(Serialize, Deserialize)]
struct ToolCall {
    id: String,
    #[serde(rename = "type", default = "function_type")]
    kind: String,
    function: FunctionCall,
}

fn function_type() -> String {
    "function".into()
}

#[derive(Serialize, Deserialize)]
struct FunctionCall {
    name: String,
    /// A string of JSON, as OpenAI sends it (some models send an object).
    #[serde(default)]
    arguments: Value,
}

/// What is kept of a thread between questions: its last questions and answers and the
/// Genie conversation it continues, never tool results or tokens
/// (`{"turns": [{"role": "user", "content": …}, …], "genie": {…}}`).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Conversation {
    #[serde(default)]
    turns: Vec<Turn>,
    /// What the Genie agent keeps (its conversation id), when `ask_genie` was used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    genie: Option<Value>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Turn {
    role: Role,
    content: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Role {
    User,
    Assistant,
}

impl Conversation {
    /// The turns kept after the previous answer; anything unreadable starts afresh.
    fn from_value(value: Option<&Value>) -> Self {
        let mut conversation: Self = value
            .and_then(|value| serde_json::from_value(value.clone()).ok())
            .unwrap_or_default();
        conversation.bound();
        conversation
    }

    fn push(&mut self, role: Role, content: String) {
        self.turns.push(Turn { role, content });
        self.bound();
    }

    /// The last [`MAX_TURNS`], each bounded, starting with a question (chat templates
    /// expect a user message first).
    fn bound(&mut self) {
        let excess = self.turns.len().saturating_sub(MAX_TURNS);
        self.turns.drain(..excess);
        while self.turns.first().is_some_and(|turn| turn.role == Role::Assistant) {
            self.turns.remove(0);
        }
        for turn in &mut self.turns {
            if turn.content.len() > MAX_TURN_BYTES {
                turn.content = truncate(&turn.content, MAX_TURN_BYTES);
            }
        }
    }
}
