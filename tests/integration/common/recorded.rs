//! Databricks answers recorded from the real service, in `tests/fixtures/databricks/`
//! (each file names its public source in `_source`). Fakes answer with these rather than
//! with shapes written from our own reading of the API.

use std::path::Path;

use serde_json::Value;
use wiremock::ResponseTemplate;

/// Every recorded way a real workspace refuses the token itself: a numeric 403, "JWT has
/// expired", 401 with `WWW-Authenticate`, with a request id, as an HTML page, a plain-text 400.
pub const TOKEN_REFUSALS: [&str; 6] = [
    "invalid-access-token-403",
    "expired-token-403-jwt",
    "unauthenticated-401",
    "unauthenticated-401-reqid",
    "unauthenticated-401-html",
    "invalid-token-400-plaintext",
];

/// One recorded answer: status, headers and body, exactly as the fixture holds them.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The fixture `tests/fixtures/databricks/{name}.json`.
pub fn recorded(name: &str) -> Recorded {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/databricks")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let fixture: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(fixture["_source"].is_string(), "{name} names no source");
    let body = match (&fixture["body"], &fixture["body_text"]) {
        (Value::Null, Value::String(text)) => text.clone().into_bytes(),
        (body, Value::Null) if !body.is_null() => serde_json::to_vec(body).unwrap(),
        _ => panic!("{name} needs exactly one of body and body_text"),
    };
    let headers = fixture["headers"]
        .as_object()
        .map(|headers| {
            headers
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().expect("header values are strings").to_owned()))
                .collect()
        })
        .unwrap_or_default();
    Recorded {
        status: fixture["status"].as_u64().expect("a status") as u16,
        headers,
        body,
    }
}

impl Recorded {
    /// The same answer with one header set (e.g. a `Retry-After` a test wants short).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The JSON body, to read or to tweak a copy of (fewer rows, another chunk).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// The same answer (status, headers) with `body` instead: a tweaked copy of [`json`](Self::json).
    pub fn with_json(mut self, body: &Value) -> Self {
        self.body = serde_json::to_vec(body).unwrap();
        self
    }

    /// For a wiremock mock.
    pub fn template(&self) -> ResponseTemplate {
        let mut template = ResponseTemplate::new(self.status).set_body_raw(self.body.clone(), &self.content_type());
        for (name, value) in &self.headers {
            if !name.eq_ignore_ascii_case("content-type") {
                template = template.insert_header(name.as_str(), value.as_str());
            }
        }
        template
    }

    /// For an axum fake.
    pub fn response(&self) -> axum::response::Response {
        let mut builder = axum::http::Response::builder().status(self.status);
        for (name, value) in &self.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        builder.body(axum::body::Body::from(self.body.clone())).unwrap()
    }

    fn content_type(&self) -> String {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map_or_else(|| "application/json".to_owned(), |(_, v)| v.clone())
    }
}

/// A recorded successful statement (`sql-statement-succeeded`) as statement `id`, with
/// `columns` (all strings) and `rows`, all of them inline in its one chunk.
pub fn statement_succeeded(id: &str, columns: &[&str], rows: Value) -> Value {
    let count = rows.as_array().map_or(0, Vec::len);
    let mut statement = recorded("sql-statement-succeeded").json();
    statement["statement_id"] = id.into();
    let manifest = &mut statement["manifest"];
    manifest["schema"] = serde_json::json!({
        "column_count": columns.len(),
        "columns": columns.iter().enumerate().map(|(position, name)| serde_json::json!(
            {"name": name, "position": position, "type_name": "STRING", "type_text": "string"}
        )).collect::<Vec<_>>(),
    });
    manifest["total_row_count"] = count.into();
    manifest["chunks"][0]["row_count"] = count.into();
    statement["result"]["row_count"] = count.into();
    statement["result"]["data_array"] = rows;
    statement
}

/// A recorded chat completion calling `tools`: `(call id, tool name, arguments as the JSON
/// string the model sends)`.
pub fn model_calls(tools: &[(&str, &str, &str)]) -> Value {
    let mut completion = recorded("serving-chat-tool-calls").json();
    completion["choices"][0]["message"]["tool_calls"] = tools
        .iter()
        .map(|(id, name, arguments)| {
            serde_json::json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}})
        })
        .collect();
    completion
}

/// A recorded chat completion whose final answer is `text`.
pub fn model_says(text: &str) -> Value {
    let mut completion = recorded("serving-chat-stop").json();
    completion["choices"][0]["message"]["content"] = text.into();
    completion
}

/// Genie's recorded message (`genie-message-executing`, its envelope as recorded) as
/// message `id` of `conversation`, in `status`, with `attachments`.
pub fn genie_message(conversation: &str, id: &str, status: &str, attachments: Value) -> Value {
    let mut message = recorded("genie-message-executing").json();
    message["message_id"] = id.into();
    message["id"] = id.into();
    message["conversation_id"] = conversation.into();
    message["status"] = status.into();
    message["attachments"] = attachments;
    message
}

/// Genie's recorded answer to `start-conversation`, as conversation `conversation` with
/// its first message `id`.
pub fn genie_started(conversation: &str, id: &str) -> Value {
    let mut started = recorded("genie-start-conversation").json();
    started["conversation_id"] = conversation.into();
    started["message_id"] = id.into();
    started["conversation"]["conversation_id"] = conversation.into();
    started["conversation"]["id"] = conversation.into();
    started["message"] = genie_message(conversation, id, "SUBMITTED", Value::Null);
    started
}

/// Genie's recorded query result, with `columns` and `rows` of a result of `total` rows.
pub fn genie_query_result(columns: &[&str], rows: Value, total: u64) -> Value {
    let statement = statement_succeeded("st-1", columns, rows);
    let mut result = recorded("genie-query-result").json();
    let response = &mut result["statement_response"];
    response["statement_id"] = statement["statement_id"].clone();
    response["manifest"]["schema"] = statement["manifest"]["schema"].clone();
    response["manifest"]["total_row_count"] = total.into();
    response["result"] = statement["result"].clone();
    result
}

/// The events of a recorded stream: each `data:` payload, `[DONE]` included.
fn stream_events(name: &str) -> Vec<String> {
    let body = String::from_utf8(recorded(name).body).unwrap();
    body.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

/// `completion` (a [`model_says`] or [`model_calls`]) as the endpoint streams it when asked
/// with `"stream": true`, built from the recorded streams (`serving-chat-stream-text`,
/// `serving-chat-stream-tool-calls`): a role chunk, the content a few words a chunk, each
/// tool call's first fragment (id, name, empty arguments) and its arguments in pieces,
/// the chunk with `finish_reason`, the `usage` chunk, and `[DONE]`.
pub fn model_streams(completion: &Value) -> Recorded {
    let text = stream_events("serving-chat-stream-text");
    let tools = stream_events("serving-chat-stream-tool-calls");
    let chunk = |at: &str| -> Value { serde_json::from_str(at).unwrap() };
    let (role, piece, finish, usage) = (
        chunk(&text[0]),
        chunk(&text[1]),
        chunk(&text[text.len() - 3]),
        chunk(&text[text.len() - 2]),
    );
    let (first_fragment, later_fragment) = (chunk(&tools[0]), chunk(&tools[1]));
    let message = &completion["choices"][0]["message"];
    let mut events = vec![role];
    let content = message["content"].as_str().unwrap_or_default();
    for words in content.split_inclusive(' ') {
        let mut next = piece.clone();
        next["choices"][0]["delta"]["content"] = words.into();
        events.push(next);
    }
    for (index, call) in message["tool_calls"].as_array().into_iter().flatten().enumerate() {
        let mut first = first_fragment.clone();
        let fragment = &mut first["choices"][0]["delta"]["tool_calls"][0];
        fragment["index"] = index.into();
        fragment["id"] = call["id"].clone();
        fragment["function"]["name"] = call["function"]["name"].clone();
        events.push(first);
        let arguments = call["function"]["arguments"].as_str().unwrap();
        let pieces = arguments
            .as_bytes()
            .chunks(7)
            .map(|p| String::from_utf8_lossy(p).into_owned());
        for arguments in pieces {
            let mut later = later_fragment.clone();
            let fragment = &mut later["choices"][0]["delta"]["tool_calls"][0];
            fragment["index"] = index.into();
            fragment["function"]["arguments"] = arguments.into();
            events.push(later);
        }
    }
    let mut finished = finish;
    finished["choices"][0]["finish_reason"] = completion["choices"][0]["finish_reason"].clone();
    events.push(finished);
    events.push(usage);
    let mut body: String = events.iter().map(|event| format!("data: {event}\n\n")).collect();
    body.push_str("data: [DONE]\n\n");
    let mut streamed = recorded("serving-chat-stream-text");
    streamed.body = body.into_bytes();
    streamed
}
