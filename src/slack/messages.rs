//! What the bot says in Slack, in one place: Block Kit for prompts and replies, with a
//! plain-text fallback on every message (notifications and screen readers use it).

use slack_morphism::prelude::*;

use crate::config::GenieSpaces;
use crate::domain::UserId;
use crate::slack::actions::Action;
use crate::store::links::{Link, LinkStatus};
use url::Url;

/// Escapes the three characters mrkdwn treats as control characters, and only those.
pub fn escape_mrkdwn(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A section of mrkdwn (at most 3000 characters).
pub(crate) fn section(mrkdwn: String) -> SlackBlock {
    SlackSectionBlock::new().with_text(md!(mrkdwn)).into()
}

/// A context line of small mrkdwn.
pub(crate) fn context(mrkdwn: String) -> SlackBlock {
    SlackContextBlock::new(vec![SlackContextBlockElement::MarkDown(SlackBlockMarkDownText::new(
        mrkdwn,
    ))])
    .into()
}

/// Why someone is invited to connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invitation {
    /// Not connected yet.
    First,
    /// A previous connection stopped working; `why` in words, when the sign-in said
    /// (say, "your organisation now asks for multi-factor authentication").
    Again { why: Option<&'static str> },
}

impl Invitation {
    /// `Again` (with no reason) when `reconnect`, else `First`.
    pub fn again_if(reconnect: bool) -> Self {
        if reconnect {
            Invitation::Again { why: None }
        } else {
            Invitation::First
        }
    }
}

/// The private invitation to connect Databricks, with the single-use link.
pub fn connect_prompt(link: &Url, invitation: Invitation) -> SlackMessageContent {
    let button = SlackBlockButtonElement::new(pt!("Connect Databricks"))
        .with_action_id(Action::Connect.id())
        .with_url(link.clone())
        .with_style(SlackBlockButtonStyle::Primary);
    let headline = match invitation {
        Invitation::Again { why: Some(why) } => format!("*Connect Databricks again to get an answer:* {why}."),
        Invitation::Again { why: None } => {
            "*Your Databricks connection has expired — connect again to get an answer.*".to_owned()
        }
        Invitation::First => "*Connect your Databricks account to get an answer.*".to_owned(),
    };
    let blocks = vec![
        section(format!(
            "{headline}\nI answer with your own Databricks permissions, so you only ever see data you can already access."
        )),
        SlackActionsBlock::new(vec![button.into()]).into(),
        context(
            "The link is just for you, works once and expires in 10 minutes. \
             Your question is saved: I'll answer it here once you've connected."
                .to_owned(),
        ),
    ];
    SlackMessageContent::new()
        .with_text("Connect your Databricks account to get an answer".into())
        .with_blocks(blocks)
}

/// A "Disconnect" button that asks Slack to confirm before it reports the click.
fn disconnect_button() -> SlackBlockButtonElement {
    SlackBlockButtonElement::new(pt!("Disconnect"))
        .with_action_id(Action::Disconnect.id())
        .with_value("disconnect".into())
        .with_style(SlackBlockButtonStyle::Danger)
        .with_confirm(SlackBlockConfirmItem::new(
            pt!("Disconnect Databricks?"),
            md!("I'll forget your Databricks connection and stop answering as you until you connect again."),
            pt!("Disconnect"),
            pt!("Keep it"),
        ))
}

/// The direct message confirming a new link, with a way out if it was not them.
pub fn linked(shown_name: &str, user_name: &str, workspace: &str) -> SlackMessageContent {
    let text = format!(
        "Linked as *{}* ({}) in {}. I'll answer your Databricks questions with this account's permissions.",
        escape_mrkdwn(shown_name),
        escape_mrkdwn(user_name),
        escape_mrkdwn(workspace)
    );
    let disconnect = disconnect_button();
    SlackMessageContent::new()
        .with_text(format!(
            "Linked as {} ({}) in {}",
            escape_mrkdwn(shown_name),
            escape_mrkdwn(user_name),
            escape_mrkdwn(workspace)
        ))
        .with_blocks(vec![
            section(text),
            context("Not you? Disconnect, and tell your Databricks admin.".to_owned()),
            SlackActionsBlock::new(vec![disconnect.into()]).into(),
        ])
}

/// The reply to an empty question.
pub fn help(bot_user_id: Option<&str>) -> SlackMessageContent {
    let mention = bot_user_id.map_or_else(|| "me".to_owned(), |id| format!("<@{id}>"));
    let text = format!(
        "Ask me a question about your Databricks data — mention {mention} in a channel with your question, \
         or send it to me here in a direct message. For example:\n\
         • _How many orders did we ship last week?_\n\
         • _Which tables can I read in main.sales?_\n\
         I answer with your own Databricks permissions. `/databricks help` lists what else I can do."
    );
    SlackMessageContent::new()
        .with_text("Ask me a question about your Databricks data".into())
        .with_blocks(vec![section(text)])
}

/// `/databricks help`.
pub fn command_help() -> SlackMessageContent {
    let text = "*`/databricks`* — your Databricks connection and questions:\n\
        • `/databricks status` — whether you're connected, as whom, since when\n\
        • `/databricks connect` — a fresh private link to connect (or reconnect)\n\
        • `/databricks disconnect` — forget your connection\n\
        • `/databricks <question>` — ask privately, e.g. `/databricks how many orders last week?`\n\
        You can also mention me in a channel or send me a direct message. \
        I always answer with your own Databricks permissions.";
    SlackMessageContent::new()
        .with_text("How to use /databricks".into())
        .with_blocks(vec![section(text.to_owned())])
}

/// The reply to `/databricks <one unknown word>`.
pub fn unknown_command(word: &str) -> SlackMessageContent {
    let text = format!(
        "I don't know `{}`. Try `/databricks help`, or ask a whole question such as \
         `/databricks how many orders last week?`",
        escape_mrkdwn(word).replace('`', "'")
    );
    SlackMessageContent::new().with_text(text)
}

/// The reply to a `/databricks` question longer than we accept.
pub fn question_too_long(limit: usize) -> SlackMessageContent {
    SlackMessageContent::new().with_text(format!(
        "That question is too long for me ({limit} characters at most). Could you ask it more briefly?"
    ))
}

/// The acknowledgement of a `/databricks` question (the answer follows privately).
pub fn looking_into_it() -> SlackMessageContent {
    SlackMessageContent::new()
        .with_text(":hourglass_flowing_sand: Looking into it — only you will see the answer.".into())
}

/// A date Slack shows in the reader's own time zone.
fn slack_date(unix: i64) -> String {
    let fallback =
        jiff::Timestamp::from_second(unix).map_or_else(|_| unix.to_string(), |t| t.strftime("%Y-%m-%d").to_string());
    format!("<!date^{unix}^{{date_short}}|{fallback}>")
}

/// Where the person's connection stands, for `/databricks status` and App Home.
pub fn status_text(link: Option<&Link>) -> String {
    match link {
        None => "You're *not connected* to Databricks. Ask me a question, or use `/databricks connect`, \
                 and I'll send you a private link."
            .to_owned(),
        Some(link) => {
            let name = link
                .databricks_display_name
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or(&link.databricks_user_name);
            let mut text = format!(
                "Connected as *{}* ({}) in {} since {}.",
                escape_mrkdwn(name),
                escape_mrkdwn(&link.databricks_user_name),
                escape_mrkdwn(&link.workspace.to_string()),
                slack_date(link.linked_at)
            );
            if let Some(used) = link.last_used_at {
                text.push_str(&format!(" Last used {}.", slack_date(used)));
            }
            if !link.scopes.is_empty() {
                text.push_str(&format!(" Scopes: `{}`.", escape_mrkdwn(&link.scopes)));
            }
            if link.status == LinkStatus::NeedsRelink {
                text = format!(
                    ":warning: Your Databricks connection *has expired* — use `/databricks connect` (or ask me \
                     anything) to connect again.\n{text}"
                );
            }
            text
        }
    }
}

/// Which Genie space answers: in `channel` (for `/databricks status`), or in general (App
/// Home, which is in no channel). `None` when no Genie space is configured.
pub fn genie_spaces_line(spaces: &GenieSpaces, channel: Option<&str>) -> Option<String> {
    if spaces.is_empty() {
        return None;
    }
    Some(match channel {
        Some(channel) => match spaces.for_channel(channel) {
            Some(space) => format!(
                "In this channel, questions go to the Genie space `{}`.",
                escape_mrkdwn(space)
            ),
            None => "No Genie space answers in this channel; ask your Slack admin to map one.".to_owned(),
        },
        None => {
            let own = spaces.channels().count();
            let others = match own {
                0 => String::new(),
                1 => " One channel has a Genie space of its own.".to_owned(),
                n => format!(" {n} channels have a Genie space of their own."),
            };
            match spaces.default_space() {
                Some(space) => format!("Questions go to the Genie space `{}`.{others}", escape_mrkdwn(space)),
                None => format!("Only mapped channels have a Genie space.{others}"),
            }
        }
    })
}

/// `/databricks status`, with which Genie space answers where it was asked.
pub fn status(link: Option<&Link>, answering: Option<String>) -> SlackMessageContent {
    let text = status_text(link);
    let mut blocks = vec![section(text.clone())];
    blocks.extend(answering.map(context));
    SlackMessageContent::new().with_text(text).with_blocks(blocks)
}

/// `/databricks disconnect`: a last look before the button (which confirms once more).
pub fn disconnect_confirm(link: Option<&Link>) -> SlackMessageContent {
    let Some(link) = link else {
        return SlackMessageContent::new()
            .with_text("You're not connected to Databricks, so there's nothing to disconnect.".into());
    };
    let text = format!(
        "Disconnect your Databricks account *{}*? I'll forget the connection and its tokens, \
         and stop answering as you until you connect again.",
        escape_mrkdwn(&link.databricks_user_name)
    );
    SlackMessageContent::new().with_text(text.clone()).with_blocks(vec![
        section(text),
        SlackActionsBlock::new(vec![disconnect_button().into()]).into(),
    ])
}

/// After a disconnect (or a second click on Disconnect).
pub fn disconnected(was_connected: bool) -> SlackMessageContent {
    let text = if was_connected {
        ":wave: Disconnected. I've forgotten your Databricks connection; ask me anything to connect again."
    } else {
        "You're not connected to Databricks (already disconnected). Ask me anything to connect again."
    };
    SlackMessageContent::new().with_text(text.into())
}

/// For a question whose asker disconnected while it was being answered.
pub fn dropped_after_disconnect() -> SlackMessageContent {
    SlackMessageContent::new().with_text(
        "You disconnected Databricks while I was working on your question, so I've dropped the answer. \
         Ask again to connect and get it."
            .into(),
    )
}

/// One of a person's recent questions, as App Home lists it: never any of its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentQuestion {
    pub text: String,
    /// Where it stands: answered, failed, waiting for a link, being answered.
    pub state: &'static str,
    /// The question's message, when it has one to link to (not for `/databricks`).
    pub link: Option<Url>,
}

/// The longest question text App Home shows before cutting it short.
const RECENT_QUESTION_CHARS: usize = 80;

/// At most `limit` characters of `text`, with an ellipsis when cut.
pub fn truncate(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(limit.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

fn recent_questions(recent: &[RecentQuestion]) -> Option<SlackBlock> {
    if recent.is_empty() {
        return None;
    }
    let lines: Vec<String> = recent
        .iter()
        .map(|q| {
            // `|` would end a link's text early.
            let text = escape_mrkdwn(&truncate(&q.text, RECENT_QUESTION_CHARS)).replace('|', "¦");
            match &q.link {
                Some(url) => format!("• <{url}|{text}> — {}", q.state),
                None => format!("• {text} — {}", q.state),
            }
        })
        .collect();
    Some(section(format!("*Your recent questions*\n{}", lines.join("\n"))))
}

/// The App Home tab: status, Connect or Disconnect, which Genie space answers, the
/// person's last questions (never their answers), and a short help.
pub fn home(
    link: Option<&Link>,
    bot_user_id: Option<&str>,
    answering: Option<String>,
    recent: &[RecentQuestion],
) -> Vec<SlackBlock> {
    let mention = bot_user_id.map_or_else(|| "me".to_owned(), |id| format!("<@{id}>"));
    let button: SlackActionBlockElement = match link {
        Some(link) if link.status == LinkStatus::Active => disconnect_button().into(),
        _ => SlackBlockButtonElement::new(pt!("Connect Databricks"))
            .with_action_id(Action::HomeConnect.id())
            .with_style(SlackBlockButtonStyle::Primary)
            .into(),
    };
    let mut blocks = vec![
        SlackHeaderBlock::new(pt!("Databricks")).into(),
        section(status_text(link)),
        SlackActionsBlock::new(vec![button]).into(),
    ];
    blocks.extend(answering.map(context));
    if let Some(recent) = recent_questions(recent) {
        blocks.extend([SlackDividerBlock::new().into(), recent]);
    }
    blocks.extend([
        SlackDividerBlock::new().into(),
        section(format!(
            "*Ask me about your data* — mention {mention} in a channel, send me a message here, or use \
             `/databricks <question>`. For example:\n\
             • _How many orders did we ship last week?_\n\
             • _Which tables can I read in main.sales?_\n\
             • _Show revenue by region for this quarter_"
        )),
        context(
            "I answer with your own Databricks permissions: you only ever see data you can already access.".to_owned(),
        ),
    ]);
    blocks
}

/// The first message of a new assistant thread.
pub fn assistant_greeting() -> SlackMessageContent {
    let text = "Hi! Ask me anything about your Databricks data — I answer with your own Databricks \
                permissions, so you only see data you can already access. Pick a suggestion below, or type \
                your question.";
    SlackMessageContent::new().with_text(text.to_owned())
}

/// The refusal for people from another organisation in a shared channel.
pub fn external_user_refusal() -> SlackMessageContent {
    let text = "Sorry — I can only answer people from this workspace's organisation. \
                Ask someone on the team who owns this channel to run the question for you.";
    SlackMessageContent::new().with_text(text.into())
}

/// The message for a question that could not be answered, with a reference the person
/// can give an operator (the logs carry the cause under the same reference).
pub fn could_not_answer(reason: &str, reference: &str) -> SlackMessageContent {
    let text = format!(
        "Sorry, I couldn't answer that: {}. (ref `{reference}`)",
        escape_mrkdwn(reason.trim_end_matches('.'))
    );
    SlackMessageContent::new().with_text(text)
}

/// Databricks says the person may not see what they asked about. That is their answer,
/// not a failure of the bot, so it reads like one.
pub fn no_access(databricks_says: &str, reference: &str) -> SlackMessageContent {
    let text = format!(
        ":lock: Databricks says you don't have access to that: _{}_. \
         Ask the owner of the data to grant you access, then ask again. (ref `{reference}`)",
        escape_mrkdwn(databricks_says.trim().trim_end_matches('.'))
    );
    SlackMessageContent::new().with_text(text)
}

/// The line under an answer its asker shared from a private reply.
pub fn shared_by(user: &UserId) -> SlackBlock {
    context(format!("Shared by <@{}>", user.as_str()))
}

/// The placeholder in the thread while an answer is being worked on.
pub fn working(status: &str) -> SlackMessageContent {
    SlackMessageContent::new()
        .with_text(escape_mrkdwn(status))
        .with_blocks(vec![context(format!(
            ":hourglass_flowing_sand: {}",
            escape_mrkdwn(status)
        ))])
}

#[cfg(test)]
mod tests {
    use super::*;

    // Slack reads a message's `text` as mrkdwn too (notifications, screen readers): words
    // from outside the bot are escaped there exactly as in the blocks.
    #[test]
    fn every_text_fallback_escapes_words_from_outside_as_the_blocks_do() {
        let hostile = "<!channel> & <@U0BOSS>";
        let escaped = "&lt;!channel&gt; &amp; &lt;@U0BOSS&gt;";
        for message in [
            linked(hostile, hostile, hostile),
            working(hostile),
            could_not_answer(hostile, "job-1"),
            no_access(hostile, "job-1"),
            unknown_command(hostile),
        ] {
            let text = message.text.clone().unwrap_or_default();
            assert!(!text.contains("<!channel>") && !text.contains("<@U0BOSS>"), "{text}");
            assert!(text.contains("&lt;!channel&gt;"), "{text}");
            let blocks = serde_json::to_string(&message.blocks).unwrap();
            assert!(!blocks.contains("<!channel>"), "{blocks}");
        }
        assert!(linked(hostile, "a", "b").text.unwrap().contains(escaped));
    }

    #[test]
    fn mrkdwn_control_characters_are_escaped_and_nothing_else() {
        assert_eq!(
            escape_mrkdwn("a < b && c > <@U1> *bold*"),
            "a &lt; b &amp;&amp; c &gt; &lt;@U1&gt; *bold*"
        );
    }

    #[test]
    fn the_connect_prompt_carries_the_link_on_a_primary_button() {
        let link = Url::parse("https://bot.example.com/link/abc").unwrap();
        let json = serde_json::to_value(connect_prompt(&link, Invitation::Again { why: None })).unwrap();
        let button = &json["blocks"][1]["elements"][0];
        assert_eq!(button["url"], "https://bot.example.com/link/abc");
        assert_eq!(button["action_id"], Action::Connect.id().0);
        assert_eq!(button["style"], "primary");
        assert!(json["text"].as_str().unwrap().contains("Connect"));
        assert!(json.to_string().contains("own Databricks permissions"));
    }
}
