//! Every button the bot puts in Slack, as one type: an `action_id` is written and read
//! here only, so a button and what its click does cannot drift apart.

use slack_morphism::prelude::SlackActionId;

use crate::store::feedback::Rating;

/// A button of the bot's, as its `action_id` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The "Connect Databricks" URL button of a prompt: it opens the link page by itself,
    /// so its click is acknowledged and nothing more.
    Connect,
    /// "Connect Databricks" in App Home: the link is sent by DM.
    HomeConnect,
    /// "Disconnect" (on the "Linked as …" message and in App Home), confirmed by Slack.
    Disconnect,
    /// The `n`th suggested follow-up under an answer; its value is the question.
    Suggestion(usize),
    /// "Share in channel" on a private answer; its value is the answer's id.
    Share,
    /// The feedback buttons under an answer; each button's value is
    /// [`feedback_value`]`(rating, answer)`.
    Feedback,
}

/// The value of an answer's feedback button: the rating, then the answer's job id.
pub fn feedback_value(rating: Rating, answer: i64) -> String {
    format!("{}:{answer}", rating.as_str())
}

/// What a feedback button's value says: the rating and the answer.
pub fn read_feedback_value(value: &str) -> Option<(Rating, i64)> {
    let (rating, answer) = value.split_once(':')?;
    Some((Rating::parse(rating)?, answer.parse().ok()?))
}

const SUGGESTION_PREFIX: &str = "ask_suggestion_";

impl Action {
    /// The `action_id` the button carries.
    pub fn id(self) -> SlackActionId {
        match self {
            Action::Connect => "connect_databricks".into(),
            Action::HomeConnect => "home_connect".into(),
            Action::Disconnect => "disconnect".into(),
            Action::Suggestion(n) => format!("{SUGGESTION_PREFIX}{n}").into(),
            Action::Share => "share_answer".into(),
            Action::Feedback => "answer_feedback".into(),
        }
    }

    /// The button an `action_id` names, if it is one of ours.
    pub fn parse(action_id: &str) -> Option<Self> {
        match action_id {
            "connect_databricks" => Some(Action::Connect),
            "home_connect" => Some(Action::HomeConnect),
            "disconnect" => Some(Action::Disconnect),
            "share_answer" => Some(Action::Share),
            "answer_feedback" => Some(Action::Feedback),
            other => other
                .strip_prefix(SUGGESTION_PREFIX)
                .and_then(|n| n.parse().ok())
                .map(Action::Suggestion),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_button_is_read_back_as_itself_and_nothing_else_is_ours() {
        for action in [
            Action::Connect,
            Action::HomeConnect,
            Action::Disconnect,
            Action::Suggestion(0),
            Action::Suggestion(4),
            Action::Share,
            Action::Feedback,
        ] {
            assert_eq!(Action::parse(&action.id().0), Some(action));
        }
        for rating in [Rating::Positive, Rating::Negative] {
            assert_eq!(read_feedback_value(&feedback_value(rating, 42)), Some((rating, 42)));
        }
        for foreign in ["", "positive", "positive:", "positive:x", "meh:1", ":1"] {
            assert_eq!(read_feedback_value(foreign), None, "{foreign}");
        }
        for foreign in ["", "ask_suggestion_", "ask_suggestion_x", "share", "Disconnect"] {
            assert_eq!(Action::parse(foreign), None, "{foreign}");
        }
    }
}
