//! The query of `/oauth/slack/callback` and `/oauth/databricks/callback`, read into
//! `linking::CallbackQuery` by axum's `Query` extractor exactly as `http::link` does.
//! Also checks LOG-01 on the way: `Debug` never shows the code or the state.
#![no_main]

use axum::extract::Query;
use axum::http::Uri;
use databricks_slack_bot::linking::CallbackQuery;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|query: &[u8]| {
    let mut uri = b"/oauth/databricks/callback?".to_vec();
    uri.extend_from_slice(query);
    let Ok(uri) = Uri::try_from(uri) else {
        return;
    };
    let Ok(Query(parsed)) = Query::<CallbackQuery>::try_from_uri(&uri) else {
        return;
    };
    let shown = format!("{parsed:?}");
    // Only a value long enough not to occur in the fixed text by chance (and not inside
    // `error`, which is shown: Slack and Databricks put a reason there, not a secret).
    for secret in [&parsed.code, &parsed.state].into_iter().flatten() {
        if secret.len() >= 24 && !parsed.error.as_deref().unwrap_or_default().contains(secret.as_str()) {
            assert!(!shown.contains(secret.as_str()), "a callback secret in Debug output");
        }
    }
});
