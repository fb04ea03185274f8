//! `POST /slack/interactions` after the signature check: the form's `payload` field, then
//! its JSON into slack-morphism's `SlackInteractionEvent` (as `http::slack::interactions`
//! does), then what a block action is read for: `Action::parse` of each `action_id` and,
//! for a suggestion, `question_from_suggestion`.
#![no_main]

use databricks_slack_bot::intake::events::question_from_suggestion;
use databricks_slack_bot::slack::actions::Action;
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use slack_morphism::prelude::*;

/// The route's private `InteractionForm`: one field.
#[derive(Deserialize)]
struct InteractionForm {
    payload: String,
}

fuzz_target!(|body: &[u8]| {
    let Ok(form) = serde_urlencoded::from_bytes::<InteractionForm>(body) else {
        return;
    };
    let Ok(SlackInteractionEvent::BlockActions(actions)) = serde_json::from_str::<SlackInteractionEvent>(&form.payload)
    else {
        return;
    };
    for action in actions.actions.iter().flatten() {
        let parsed = Action::parse(action.action_id.as_ref());
        // Every id we read back is one we could have written.
        if let Some(parsed) = parsed {
            assert_eq!(Action::parse(parsed.id().as_ref()), Some(parsed));
        }
        if let Some(Action::Suggestion(_)) = parsed
            && let Ok(question) = question_from_suggestion(&actions, action)
        {
            assert!(!question.text.is_empty());
        }
    }
});
