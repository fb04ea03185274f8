//! `POST /slack/events` after the signature check: the raw body into slack-morphism's
//! `SlackPushEvent` (as `http::slack::events` does), then what intake reads of a callback
//! (`access_lost`, `question_from`). A panic here is a body Slack (or anyone holding the
//! signing secret) could send to take a request down.
#![no_main]

use databricks_slack_bot::intake::events::{access_lost, question_from};
use libfuzzer_sys::fuzz_target;
use slack_morphism::prelude::*;

fuzz_target!(|body: &[u8]| {
    let Ok(SlackPushEvent::EventCallback(callback)) = serde_json::from_slice::<SlackPushEvent>(body) else {
        return;
    };
    let _ = access_lost(&callback);
    if let Ok(question) = question_from(&callback) {
        // What intake keeps of a question never carries a mention's markup or padding.
        assert_eq!(
            question.text,
            question.text.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }
});
