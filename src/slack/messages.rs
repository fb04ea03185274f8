//! What the bot says in Slack, in one place: Block Kit for prompts and replies, with a
//! plain-text fallback on every message (notifications and screen readers use it).

use slack_morphism::prelude::*;
use url::Url;

/// `action_id` of the "Connect Databricks" URL button (its click is acked, nothing more).
pub const CONNECT_ACTION_ID: &str = "connect_databricks";

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

/// The private invitation to connect Databricks, with the single-use link. `reconnect`
/// when a previous connection stopped working.
pub fn connect_prompt(link: &Url, reconnect: bool) -> SlackMessageContent {
    let button = SlackBlockButtonElement::new(pt!("Connect Databricks"))
        .with_action_id(CONNECT_ACTION_ID.into())
        .with_url(link.clone())
        .with_style(SlackBlockButtonStyle::Primary);
    let headline = if reconnect {
        "*Your Databricks connection has expired — connect again to get an answer.*"
    } else {
        "*Connect your Databricks account to get an answer.*"
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

/// `action_id` of the "Disconnect" button on the linked confirmation.
pub const DISCONNECT_ACTION_ID: &str = "disconnect";

/// The direct message confirming a new link, with a way out if it was not them.
pub fn linked(shown_name: &str, user_name: &str, workspace: &str) -> SlackMessageContent {
    let text = format!(
        "Linked as *{}* ({}) in {}. I'll answer your Databricks questions with this account's permissions.",
        escape_mrkdwn(shown_name),
        escape_mrkdwn(user_name),
        escape_mrkdwn(workspace)
    );
    let disconnect = SlackBlockButtonElement::new(pt!("Disconnect"))
        .with_action_id(DISCONNECT_ACTION_ID.into())
        .with_value(DISCONNECT_ACTION_ID.into())
        .with_style(SlackBlockButtonStyle::Danger);
    SlackMessageContent::new()
        .with_text(format!("Linked as {shown_name} ({user_name}) in {workspace}"))
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

/// The placeholder in the thread while an answer is being worked on.
pub fn working(status: &str) -> SlackMessageContent {
    SlackMessageContent::new()
        .with_text(status.to_owned())
        .with_blocks(vec![context(format!(
            ":hourglass_flowing_sand: {}",
            escape_mrkdwn(status)
        ))])
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let json = serde_json::to_value(connect_prompt(&link, true)).unwrap();
        let button = &json["blocks"][1]["elements"][0];
        assert_eq!(button["url"], "https://bot.example.com/link/abc");
        assert_eq!(button["action_id"], CONNECT_ACTION_ID);
        assert_eq!(button["style"], "primary");
        assert!(json["text"].as_str().unwrap().contains("Connect"));
        assert!(json.to_string().contains("own Databricks permissions"));
    }
}
