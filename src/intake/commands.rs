//! `/databricks`, over HTTP or Socket Mode: `status`, `connect`, `disconnect`, `help`, or
//! a question answered privately.
//!
//! Slack wants a reply within 3 seconds, so only quick things happen here: a database
//! read (`status`), creating a link (`connect`), showing the Disconnect button (which
//! confirms once more before anything is deleted). A question is queued and answered
//! later through the command's `response_url`, only to the person.

use slack_morphism::prelude::*;
use url::Url;

use crate::clock::SharedClock;
use crate::config::GenieSpaces;
use crate::domain::{PersonIn, TeamId, UserId};
use crate::intake::events::Intake;
use crate::jobs::Work;
use crate::jobs::question::Question;
use crate::linking::offer_link;
use crate::slack::api::{Membership, SlackApi};
use crate::slack::messages;
use crate::store::Store;

/// Longest question accepted (Slack allows commands of about 4000 characters).
pub const MAX_QUESTION_CHARS: usize = 3000;

/// What `/databricks <text>` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    Help,
    Status,
    Connect,
    Disconnect,
    /// A single word we do not know: more likely a mistyped command than a question.
    Unknown(&'a str),
    Question(&'a str),
    TooLong,
}

impl<'a> Command<'a> {
    /// Reads the command's text.
    pub fn parse(text: &'a str) -> Self {
        let text = text.trim();
        if text.chars().count() > MAX_QUESTION_CHARS {
            return Command::TooLong;
        }
        match text.to_ascii_lowercase().as_str() {
            "" | "help" | "?" => Command::Help,
            "status" | "whoami" => Command::Status,
            "connect" | "login" | "link" | "reconnect" => Command::Connect,
            "disconnect" | "logout" | "unlink" => Command::Disconnect,
            _ if !text.contains(char::is_whitespace) && !text.ends_with('?') => Command::Unknown(text),
            _ => Command::Question(text),
        }
    }
}

/// Answers `/databricks`.
#[derive(Clone)]
pub struct Commands {
    pub intake: Intake,
    pub store: Store,
    pub slack: SlackApi,
    pub public_base_url: Url,
    pub clock: SharedClock,
    pub genie_spaces: GenieSpaces,
}

impl Commands {
    /// Whether the person is from another organisation. When Slack cannot say right now,
    /// no: the link's identity check still stands between them and anyone's data.
    async fn is_external(&self, team: &TeamId, user: &UserId) -> bool {
        match self.slack.membership(team, user).await {
            Ok(membership) => membership == Membership::External,
            Err(error) => {
                tracing::warn!(error = %error, "could not tell whether a person is from this organisation");
                false
            }
        }
    }

    /// The immediate, private reply to `command`. An `Err` means nothing was done; the
    /// caller answers with an error so the person sees the command failed.
    pub async fn handle(&self, command: &SlackCommandEvent) -> Result<SlackMessageContent, sqlx::Error> {
        let (Ok(team), Ok(user)) = (
            TeamId::parse(command.team_id.as_ref()),
            UserId::parse(command.user_id.as_ref()),
        ) else {
            tracing::warn!("a command without a well-formed team or user");
            return Ok(messages::command_help());
        };
        let text = command.text.as_deref().unwrap_or_default();
        let parsed = Command::parse(text);
        tracing::info!(
            command = match parsed {
                Command::Question(_) => "question",
                Command::Unknown(_) => "unknown",
                _ => text.trim(),
            },
            "slash command"
        );
        Ok(match parsed {
            Command::Help => messages::command_help(),
            Command::Unknown(word) => messages::unknown_command(word),
            Command::TooLong => messages::question_too_long(MAX_QUESTION_CHARS),
            Command::Status => messages::status(
                self.store.find_link(&team, &user).await?.as_ref(),
                messages::genie_spaces_line(&self.genie_spaces, Some(command.channel_id.as_ref())),
            ),
            Command::Disconnect => messages::disconnect_confirm(self.store.find_link(&team, &user).await?.as_ref()),
            // EVT-05: nobody from another organisation is linked, as nobody is answered.
            Command::Connect if self.is_external(&team, &user).await => messages::external_user_refusal(),
            Command::Connect => {
                let to = PersonIn {
                    team: &team,
                    user: &user,
                    channel: command.channel_id.as_ref(),
                    thread_ts: None,
                };
                let reconnect = self.store.find_link(&team, &user).await?.is_some();
                match offer_link(&self.store, &self.public_base_url, to, self.clock.now(), 0).await? {
                    Some(offer) => messages::connect_prompt(&offer.url, messages::Invitation::again_if(reconnect)),
                    None => messages::command_help(),
                }
            }
            Command::Question(question) => {
                let channel = command.channel_id.to_string();
                let question = Question {
                    team,
                    user,
                    is_dm: channel.starts_with('D'),
                    channel,
                    ts: String::new(),
                    thread_ts: None,
                    text: question.to_owned(),
                    bot_user_id: None,
                    response_url: Some(command.response_url.0.clone()),
                };
                let key = format!("command:{}", command.trigger_id);
                self.intake.enqueue(&key, &Work::Question(question)).await?;
                messages::looking_into_it()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_read_generously_and_anything_else_is_a_question() {
        assert_eq!(Command::parse(""), Command::Help);
        assert_eq!(Command::parse("  HELP "), Command::Help);
        assert_eq!(Command::parse("status"), Command::Status);
        assert_eq!(Command::parse("Connect"), Command::Connect);
        assert_eq!(Command::parse("disconnect"), Command::Disconnect);
        assert_eq!(Command::parse("statsu"), Command::Unknown("statsu"));
        assert_eq!(Command::parse("revenue?"), Command::Question("revenue?"));
        assert_eq!(
            Command::parse("how many orders last week?"),
            Command::Question("how many orders last week?")
        );
        assert_eq!(Command::parse(&"why ".repeat(1000)), Command::TooLong);
    }
}
