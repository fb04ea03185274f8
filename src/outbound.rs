//! The HTTP client every outbound call is made with (Databricks OAuth and REST, Sign in
//! with Slack, the company's own agent, the OTLP collector): it follows no redirects — a token or a bearer
//! header must never be carried to wherever a response points — and every call has a
//! connect timeout and a total timeout.

use std::time::Duration;

/// Longest a TCP/TLS connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client whose calls take at most `timeout` each.
pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(timeout)
        .build()
        .expect("a reqwest client with rustls builds")
}
