//! `agent::llm::read_only::check`, which decides whether SQL a model wrote may run: any
//! text, no panic, no hang.
#![no_main]

use databricks_slack_bot::agent::llm::read_only::check;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|sql: &[u8]| {
    let Ok(sql) = std::str::from_utf8(sql) else {
        return;
    };
    let _ = check(sql);
});
