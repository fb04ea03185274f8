//! `POST /slack/commands` after the signature check: the form body into slack-morphism's
//! `SlackCommandEvent` (as `http::slack::commands` does), then `Command::parse` of its text.
#![no_main]

use databricks_slack_bot::intake::commands::{Command, MAX_QUESTION_CHARS};
use libfuzzer_sys::fuzz_target;
use slack_morphism::prelude::*;

fuzz_target!(|body: &[u8]| {
    let Ok(command) = serde_urlencoded::from_bytes::<SlackCommandEvent>(body) else {
        return;
    };
    let text = command.text.as_deref().unwrap_or_default();
    match Command::parse(text) {
        Command::Question(q) | Command::Unknown(q) => {
            assert!(q.chars().count() <= MAX_QUESTION_CHARS);
            assert_eq!(q, q.trim());
        }
        _ => {}
    }
});
