//! Databricks answers recorded from the real service, in `tests/fixtures/databricks/`
//! (each file names its public source in `_source`). Fakes answer with these rather than
//! with shapes written from our own reading of the API.

use std::path::Path;

use serde_json::Value;
use wiremock::ResponseTemplate;

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
