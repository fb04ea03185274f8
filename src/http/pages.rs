//! The few HTML pages people see in their browser while linking. Self-contained (no
//! scripts, no third-party resources), never cached, never framed, and sending no
//! referrer — the URLs around them carry OAuth codes and link ids (OA-09).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Escapes text for HTML element content and attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}

/// A page: `title` and `body` are HTML already escaped by the caller; `form_targets` are
/// the origins a form on the page may lead to (its POST answers with a redirect there).
pub fn page(status: StatusCode, title: &str, body: &str, form_targets: &[&str]) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"referrer\" content=\"no-referrer\"><title>{title}</title><style>{STYLE}</style></head>\
         <body><main><h1>{title}</h1>{body}</main></body></html>\n"
    );
    // Browsers apply `form-action` to every redirect after a form is submitted, and the
    // sign-in behind "Continue" may pass through the company's identity provider (Okta,
    // Entra…) or a Slack workspace domain, which cannot be listed in advance: any https
    // origin is allowed after the ones we know (seen blocked in Chromium otherwise).
    let csp = format!(
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' {} https:; frame-ancestors 'none'; \
         base-uri 'none'",
        form_targets.join(" ")
    );
    let mut response = (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Ok(csp) = HeaderValue::from_str(&csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    response
}

/// A page with a message and no form.
pub fn message(status: StatusCode, title: &str, paragraphs: &[String]) -> Response {
    let body: String = paragraphs.iter().map(|p| format!("<p>{p}</p>")).collect();
    page(status, &escape_html(title), &body, &[])
}

const STYLE: &str = "body{font:16px/1.5 system-ui,-apple-system,Segoe UI,sans-serif;background:#f4f4f5;color:#1b3139;margin:0}\
main{max-width:34rem;margin:10vh auto;background:#fff;padding:2rem 2.5rem;border-radius:12px;\
box-shadow:0 1px 3px rgba(0,0,0,.12)}h1{font-size:1.35rem;margin-top:0}\
button{font:inherit;font-weight:600;background:#ff3621;color:#fff;border:0;border-radius:6px;\
padding:.7rem 1.4rem;cursor:pointer}button:hover{background:#e02e1a}.who{font-weight:600}\
button.secondary{background:#fff;color:#1b3139;border:1px solid #c4c9d0}button.secondary:hover{background:#f4f4f5}\
.small{color:#5f6b7a;font-size:.9rem}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_special_characters_are_escaped() {
        assert_eq!(
            escape_html(r#"<script>alert("x") & 'y'</script>"#),
            "&lt;script&gt;alert(&quot;x&quot;) &amp; &#x27;y&#x27;&lt;/script&gt;"
        );
    }

    #[test]
    fn pages_are_never_cached_framed_or_referred() {
        let response = message(StatusCode::OK, "Hi", &["there".into()]);
        let h = response.headers();
        assert_eq!(h["cache-control"], "no-store");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(h["x-frame-options"], "DENY");
        assert!(
            h["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("frame-ancestors 'none'")
        );
    }
}
