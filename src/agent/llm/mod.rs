//! A tool-calling loop on a Databricks model-serving endpoint, as the person.
//!
//! The model (any chat endpoint with OpenAI-compatible function calling, reached through
//! `/serving-endpoints/chat/completions`) gets a short system prompt, the thread's recent
//! turns and the question, and may call [`tools`] that reach Databricks with the asker's
//! own token, so it sees only what they may see. Model calls, tool calls and the size of
//! every tool result are bounded.
//!
//! # Streaming
//!
//! The model is asked with `"stream": true` and its words are shown as they come
//! ([`Progress::writing`]). The endpoint answers server-sent events as in OpenAI's chat
//! completions streaming: `data: <chat.completion.chunk>` events whose
//! `choices[0].delta` carries a piece of `content` (a string, or a list of parts of which
//! the `text` ones count) or `tool_calls` fragments (the first of each `index` names its
//! `id` and function, later ones add pieces of the `arguments` string), then a chunk with
//! `finish_reason`, maybe one with `usage` and no choices, and `data: [DONE]`. An endpoint
//! (or a gateway before it) that ignores `stream` and answers `application/json` is read
//! whole, as before.
//!
//! A model turn may write some words and then call tools; those words were shown, so the
//! answer is every turn's words in order, a blank line between turns, never only the last
//! turn's. Whitespace at either end of the prose is held back until more words follow, so
//! what is written never starts or ends with it. A stream that goes quiet for
//! [`IDLE_TIMEOUT`] or breaks is worth asking again later: the tools only read.

pub mod read_only;
pub mod tools;

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::agent::genie::Genie;
use crate::agent::sse::{self, Events, Interrupted};
use crate::agent::{Agent, AgentAnswer, AgentError, AgentRequest, Progress};
use crate::config::GenieSpaces;
use crate::databricks::api::{Databricks, read_json};
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
/// Said when the model's stream went quiet, broke, or ended before the model finished.
const STOPPED: &str = "the model stopped answering mid-way";
/// Said when the model's stream is not the chunks expected.
const UNREADABLE: &str = "the model sent an answer I couldn't read";
/// Longest the model may stay silent in the middle of its stream.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest one streamed model call may take in all (the Databricks client's 30 s is for
/// calls answered whole).
const MODEL_CALL_TIMEOUT: Duration = Duration::from_secs(300);
/// The most of one streamed chunk held, in bytes.
const MAX_CHUNK_BYTES: usize = 1024 * 1024;

/// Answers with a model on a serving endpoint that calls Databricks tools as the person.
pub struct Llm {
    http: reqwest::Client,
    endpoint: String,
    warehouse_id: Option<String>,
    /// The Genie space `ask_genie` asks, through the Genie agent.
    genie: Option<Genie>,
    idle_timeout: Duration,
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
            idle_timeout: IDLE_TIMEOUT,
        }
    }

    /// The same agent with another idle limit for the model's stream (tests use a short one).
    pub fn with_idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout;
        self
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

        let mut prose = Prose::new(progress);
        for step in 1..=MAX_MODEL_CALLS {
            progress.working_on("Thinking…").await;
            let chat = ChatRequest {
                model: &self.endpoint,
                messages: &messages,
                tools: &definitions,
                stream: true,
            };
            let message = self.ask_model(&db, &chat, &mut prose).await?;
            let calls = message.tool_calls.unwrap_or_default();
            if calls.is_empty() {
                tracing::info!(model_calls = step, "the model answered");
                let text = prose.answer(text_of(&message.content));
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

    /// One model turn: its message, its words written to `prose` as they stream.
    async fn ask_model(
        &self,
        db: &Databricks<'_>,
        chat: &ChatRequest<'_>,
        prose: &mut Prose<'_>,
    ) -> Result<AssistantMessage, AgentError> {
        prose.next_turn();
        let mut response = db.post_streaming(CHAT_PATH, chat, MODEL_CALL_TIMEOUT).await?;
        let streams = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("text/event-stream"));
        if !streams {
            // Some endpoints, and gateways in front of them, ignore `stream` and answer whole.
            let completion: Completion = read_json(response, CHAT_PATH).await?;
            let Some(Choice { message }) = completion.choices.into_iter().next() else {
                tracing::warn!("the model endpoint answered without a choice");
                return Err(AgentError::Failed(NO_ANSWER.into()));
            };
            return Ok(message);
        }
        let mut events = Events::new(MAX_CHUNK_BYTES);
        let mut turn = StreamedTurn::default();
        loop {
            let chunk = match sse::next_chunk(&mut response, self.idle_timeout).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(interrupted) => {
                    match interrupted {
                        Interrupted::Idle => tracing::warn!(
                            idle_secs = self.idle_timeout.as_secs_f64(),
                            "the model sent nothing for too long mid-answer"
                        ),
                        Interrupted::Broken(error) => {
                            tracing::warn!(error = %error.without_url(), "the model's stream broke mid-answer")
                        }
                    }
                    return Err(AgentError::transient(STOPPED));
                }
            };
            let read = events.feed(&chunk).map_err(|_| {
                tracing::warn!(limit = MAX_CHUNK_BYTES, "one of the model's chunks is too large");
                AgentError::Failed(UNREADABLE.into())
            })?;
            for event in read {
                turn.take(&event.data, prose).await?;
            }
            if turn.done {
                break;
            }
        }
        if let Some(event) = events.finish() {
            turn.take(&event.data, prose).await?;
        }
        turn.message()
    }
}

/// One model turn as its stream arrives.
#[derive(Default)]
struct StreamedTurn {
    /// The turn's words, as written.
    text: String,
    /// Tool calls by their `index`, built from their fragments.
    calls: std::collections::BTreeMap<u64, ToolCall>,
    /// Why the model stopped, once it said.
    finish_reason: Option<String>,
    /// `[DONE]` arrived.
    done: bool,
}

impl StreamedTurn {
    /// Reads one event's data: a chunk, or `[DONE]`.
    async fn take(&mut self, data: &str, prose: &mut Prose<'_>) -> Result<(), AgentError> {
        if self.done {
            return Ok(());
        }
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let chunk: Chunk = serde_json::from_str(data).map_err(|error| {
            tracing::warn!(error = %error, "one of the model's chunks is not the JSON expected");
            AgentError::Failed(UNREADABLE.into())
        })?;
        // One answer is asked for (no `n`), so only the first choice counts.
        let Some(choice) = chunk.choices.into_iter().find(|choice| choice.index == 0) else {
            return Ok(());
        };
        let Delta { content, tool_calls } = choice.delta.unwrap_or_default();
        let words = pieces_of(&content);
        if !words.is_empty() {
            self.text.push_str(&words);
            prose.write(&words).await;
        }
        for fragment in tool_calls.unwrap_or_default() {
            let call = self.calls.entry(fragment.index).or_insert_with(|| ToolCall {
                id: String::new(),
                kind: function_type(),
                function: FunctionCall {
                    name: String::new(),
                    arguments: Value::String(String::new()),
                },
            });
            if let Some(id) = fragment.id {
                call.id = id;
            }
            if let Some(function) = fragment.function {
                if let Some(name) = function.name.filter(|_| call.function.name.is_empty()) {
                    call.function.name = name;
                }
                if let (Some(piece), Value::String(arguments)) = (function.arguments, &mut call.function.arguments) {
                    arguments.push_str(&piece);
                }
            }
        }
        if choice.finish_reason.is_some() {
            self.finish_reason = choice.finish_reason;
        }
        Ok(())
    }

    /// The turn's message, once its stream has ended; a stream cut before the model said
    /// why it stopped is no message.
    fn message(self) -> Result<AssistantMessage, AgentError> {
        if self.finish_reason.is_none() && !self.done {
            tracing::warn!("the model's stream ended before it finished");
            return Err(AgentError::transient(STOPPED));
        }
        let calls: Vec<ToolCall> = self.calls.into_values().collect();
        Ok(AssistantMessage {
            content: if self.text.is_empty() {
                Value::Null
            } else {
                Value::String(self.text)
            },
            tool_calls: (!calls.is_empty()).then_some(calls),
        })
    }
}

/// The answer's prose across the model's turns, written as it comes.
struct Prose<'p> {
    progress: &'p dyn Progress,
    /// Everything written so far: the start of the answer's text.
    written: String,
    /// Whitespace held back until words follow it.
    held: String,
    /// Whether this turn has written anything yet.
    turn_wrote: bool,
}

impl<'p> Prose<'p> {
    fn new(progress: &'p dyn Progress) -> Self {
        Self {
            progress,
            written: String::new(),
            held: String::new(),
            turn_wrote: false,
        }
    }

    /// A new model turn begins: whitespace the last one ended with is dropped.
    fn next_turn(&mut self) {
        self.held.clear();
        self.turn_wrote = false;
    }

    /// Writes `words`, holding back whitespace at the edges; a turn's first words after
    /// an earlier turn's follow a blank line.
    async fn write(&mut self, words: &str) {
        self.held.push_str(words);
        if self.held.trim().is_empty() {
            return;
        }
        let mut piece = String::new();
        if !self.turn_wrote {
            if !self.written.is_empty() {
                piece.push_str("\n\n");
            }
            self.held = self.held.trim_start().to_owned();
            self.turn_wrote = true;
        }
        let end = self.held.trim_end().len();
        piece.push_str(&self.held[..end]);
        self.held.drain(..end);
        self.written.push_str(&piece);
        self.progress.writing(&piece).await;
    }

    /// The answer's text: everything written, and after it `unwritten` (the last turn's
    /// words when they came whole rather than streamed).
    fn answer(self, unwritten: String) -> String {
        match (self.written.is_empty(), unwritten.is_empty()) {
            (true, _) => unwritten,
            (false, true) => self.written,
            (false, false) if self.turn_wrote => self.written,
            (false, false) => format!("{}\n\n{unwritten}", self.written),
        }
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

    async fn writing(&self, text: &str) {
        self.progress.writing(text).await;
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

/// The text of a message's content, trimmed.
fn text_of(content: &Value) -> String {
    pieces_of(content).trim().to_owned()
}

/// The words in a message's content or a chunk's delta, as they are: a string, or
/// (reasoning models) a list of parts of which the `text` ones count.
fn pieces_of(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|part| part["type"] == "text")
            .filter_map(|part| part["text"].as_str())
            .collect(),
        _ => String::new(),
    }
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: &'a [Value],
    tools: &'a [Value],
    stream: bool,
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

/// One `chat.completion.chunk` of a streamed answer.
#[derive(Deserialize)]
struct Chunk {
    /// Empty in the last chunk, which carries `usage` only.
    #[serde(default)]
    choices: Vec<ChunkChoice>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    index: u64,
    delta: Option<Delta>,
    finish_reason: Option<String>,
}

#[derive(Default, Deserialize)]
struct Delta {
    /// A piece of the words: a string, `null`, or a list of content parts.
    #[serde(default)]
    content: Value,
    tool_calls: Option<Vec<CallFragment>>,
}

/// A piece of a tool call: the first of an `index` names its `id` and function, the
/// rest add to its `arguments`.
#[derive(Deserialize)]
struct CallFragment {
    index: u64,
    id: Option<String>,
    function: Option<FunctionFragment>,
}

#[derive(Deserialize)]
struct FunctionFragment {
    name: Option<String>,
    arguments: Option<String>,
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
