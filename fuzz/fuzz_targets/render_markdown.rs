//! `slack::render`: an agent's Markdown to Slack mrkdwn, and a whole answer (text, SQL,
//! suggestions) into messages — the splitting at Slack's limits is where a char boundary
//! could be missed.
#![no_main]

use databricks_slack_bot::agent::AgentAnswer;
use databricks_slack_bot::slack::render::{Attribution, answer, mrkdwn_from_markdown};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = mrkdwn_from_markdown(text);
    // `text \0 sql \0 suggestion \0 suggestion …`
    let mut parts = text.split('\0');
    let mut reply = AgentAnswer::text(parts.next().unwrap_or_default());
    reply.sql = parts.next().map(str::to_owned);
    reply.suggestions = parts.map(str::to_owned).collect();
    let by = Attribution {
        databricks_user: "asker@example.com",
        agent: "Genie",
    };
    let _ = answer(&reply, &by, Some("1700000000.000100"), Some("answer-id"));
});
