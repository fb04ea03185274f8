//! `databricks::api::parse_retry_after`, which reads the `Retry-After` of Databricks and of
//! an external agent: any header text, no panic; a value is whole seconds.
#![no_main]

use databricks_slack_bot::databricks::api::parse_retry_after;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|value: &[u8]| {
    // A header value reaches the parser only through `HeaderValue::to_str`, i.e. visible ASCII.
    let Ok(value) = std::str::from_utf8(value) else {
        return;
    };
    if let Some(wait) = parse_retry_after(value) {
        assert_eq!(wait.subsec_nanos(), 0);
        let digits = value.trim().trim_start_matches('+');
        assert_eq!(digits.parse::<u64>().ok(), Some(wait.as_secs()));
    }
});
