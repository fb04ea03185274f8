//! Every button the bot puts in Slack, as one type: an `action_id` is written and read
//! here only, so a button and what its click does cannot drift apart.

use slack_morphism::prelude::SlackActionId;

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
        }
    }

    /// The button an `action_id` names, if it is one of ours.
    pub fn parse(action_id: &str) -> Option<Self> {
        match action_id {
            "connect_databricks" => Some(Action::Connect),
            "home_connect" => Some(Action::HomeConnect),
            "disconnect" => Some(Action::Disconnect),
            "share_answer" => Some(Action::Share),
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
        ] {
            assert_eq!(Action::parse(&action.id().0), Some(action));
        }
        for foreign in ["", "ask_suggestion_", "ask_suggestion_x", "share", "Disconnect"] {
            assert_eq!(Action::parse(foreign), None, "{foreign}");
        }
    }
}
