//! An agent's answer as Slack messages, within Slack's limits.
//!
//! - Prose is Markdown from a model or an agent: converted to mrkdwn (bold, headings,
//!   links) and escaped, so it can never mention, link or ping anyone on its own.
//! - Limits (`../reference/slack.md` §2.9): a section holds at most 3000 characters, a
//!   message at most 50 blocks, and Slack refuses messages whose blocks add up to roughly
//!   13,200 characters (`msg_blocks_too_long`, undocumented), so long answers are split
//!   across several messages at paragraph or line boundaries, never inside a code fence.
//! - Tables: the first rows and the columns that fit, in a monospace block; anything
//!   larger is attached as a CSV file (the rows fetched; a result cut short says so).
//! - The last message carries the suggested follow-ups as buttons and a context line
//!   saying whose permissions answered.

use slack_morphism::prelude::*;

use crate::agent::{AgentAnswer, Table};
use crate::slack::actions::{Action, feedback_value};
use crate::slack::api::FileUpload;
use crate::slack::messages::{context, escape_mrkdwn, section, truncate};
use crate::store::feedback::Rating;

/// Characters of mrkdwn in one section block.
const SECTION_LIMIT: usize = 3000;
/// Characters of block text per message, under Slack's ~13.2k aggregate limit.
const MESSAGE_TEXT_BUDGET: usize = 11_000;
/// Blocks per message.
const MESSAGE_BLOCK_LIMIT: usize = 50;
/// Characters of the plain-text fallback (notifications, screen readers).
const FALLBACK_LIMIT: usize = 300;
/// Table rows shown inline.
const TABLE_ROWS: usize = 10;
/// Characters of one cell shown inline.
const CELL_WIDTH: usize = 30;
/// Width of an inline table line; columns that do not fit go to the CSV.
const TABLE_WIDTH: usize = 110;
/// Suggested follow-ups offered as buttons.
const MAX_SUGGESTIONS: usize = 5;
/// Characters of a button label.
const BUTTON_LABEL_LIMIT: usize = 75;
/// Characters of a button value (Slack allows 2000).
const BUTTON_VALUE_LIMIT: usize = 2000;

/// Prefix of the block id of an answer's buttons, followed by the answer's thread.
pub const THREAD_BLOCK_PREFIX: &str = "thread:";

/// An answer ready to post: one or more messages, and a CSV when the table is larger than
/// what fits inline.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub messages: Vec<SlackMessageContent>,
    pub csv: Option<FileUpload>,
}

/// Who answered, for the context line.
pub struct Attribution<'a> {
    /// The Databricks user whose permissions were used.
    pub databricks_user: &'a str,
    /// The agent's name ("Genie").
    pub agent: &'a str,
}

/// Renders `answer`. `share` adds a "Share in channel" button carrying that value (for
/// private answers); `feedback`, the answer's job id, adds the thumbs up and down.
///
/// `thread` is the thread the answer is in: it rides on the buttons' block id, so a click
/// on a suggestion continues that thread even from an ephemeral message (whose click
/// payload carries no thread).
pub fn answer(
    answer: &AgentAnswer,
    by: &Attribution<'_>,
    thread: Option<&str>,
    share: Option<&str>,
    feedback: Option<i64>,
) -> Rendered {
    let mut blocks = prose_blocks(&answer.text);
    if let Some(sql) = answer.sql.as_deref().filter(|s| !s.trim().is_empty()) {
        blocks.push(section(code_block("Generated SQL", sql.trim())));
    }
    let mut csv = None;
    if let Some(table) = answer.table.as_ref().filter(|t| !t.columns.is_empty()) {
        let inline = inline_table(table);
        blocks.push(section(inline.text));
        if inline.partial {
            csv = Some(csv_file(table));
            blocks.push(context(inline.note));
        } else if !inline.note.is_empty() {
            blocks.push(context(inline.note));
        }
    }
    blocks.extend(answer.blocks.iter().cloned());

    let mut closing: Vec<SlackBlock> = Vec::new();
    let mut buttons: Vec<SlackActionBlockElement> = answer
        .suggestions
        .iter()
        .filter(|s| !s.trim().is_empty())
        .take(MAX_SUGGESTIONS)
        .enumerate()
        .map(|(i, question)| {
            SlackBlockButtonElement::new(pt!(truncate(question.trim(), BUTTON_LABEL_LIMIT)))
                .with_action_id(Action::Suggestion(i).id())
                .with_value(truncate(question.trim(), BUTTON_VALUE_LIMIT))
                .into()
        })
        .collect();
    if let Some(share) = share {
        buttons.push(
            SlackBlockButtonElement::new(pt!("Share in channel"))
                .with_action_id(Action::Share.id())
                .with_value(share.to_owned())
                .into(),
        );
    }
    if !buttons.is_empty() {
        let mut actions = SlackActionsBlock::new(buttons);
        if let Some(thread) = thread {
            actions = actions.with_block_id(format!("{THREAD_BLOCK_PREFIX}{thread}").into());
        }
        closing.push(actions.into());
    }
    if let Some(job) = feedback {
        let button = |label: &str, rating| SlackFeedbackButtonItem::new(pt!(label), feedback_value(rating, job));
        let thumbs = SlackBlockFeedbackButtonsElement::new(
            button("Good answer", Rating::Positive),
            button("Not helpful", Rating::Negative),
        )
        .with_action_id(Action::Feedback.id());
        closing.push(SlackContextActionsBlock::new(vec![thumbs.into()]).into());
    }
    closing.push(context(format!(
        "Answered with {}'s Databricks permissions · {}",
        escape_mrkdwn(by.databricks_user),
        escape_mrkdwn(by.agent)
    )));

    // Slack reads `text` as mrkdwn too (notifications): escaped like everything else.
    let fallback = if answer.text.trim().is_empty() {
        "Here is your answer".to_owned()
    } else {
        escape_mrkdwn(&truncate(answer.text.trim(), FALLBACK_LIMIT))
    };
    Rendered {
        messages: pack(blocks, closing, &fallback),
        csv,
    }
}

/// Prose alone, as messages within Slack's limits: no buttons, no context line (the rest
/// of a streamed answer Slack would not take as part of its stream).
pub fn prose(markdown: &str) -> Vec<SlackMessageContent> {
    let blocks = prose_blocks(markdown);
    if blocks.is_empty() {
        return Vec::new();
    }
    pack(
        blocks,
        Vec::new(),
        &escape_mrkdwn(&truncate(markdown.trim(), FALLBACK_LIMIT)),
    )
}

/// Markdown as mrkdwn sections (none for blank text: Slack refuses an empty section).
fn prose_blocks(markdown: &str) -> Vec<SlackBlock> {
    let text = mrkdwn_from_markdown(markdown.trim());
    if text.is_empty() {
        return Vec::new();
    }
    split(&text, SECTION_LIMIT).into_iter().map(section).collect()
}

/// `content` with only the kinds of blocks this module makes — sections of text, context
/// lines of text, buttons — and a note that something was left out; `None` when there was
/// nothing else. For when Slack refuses a message over blocks the company's agent sent
/// (`invalid_blocks`, such as an image Slack could not fetch): the answer's words still
/// arrive.
pub fn plain(content: &SlackMessageContent) -> Option<SlackMessageContent> {
    fn ours(block: &SlackBlock) -> bool {
        match block {
            SlackBlock::Section(section) => {
                section.text.is_some() && section.fields.is_none() && section.accessory.is_none()
            }
            SlackBlock::Context(context) => context
                .elements
                .iter()
                .all(|element| !matches!(element, SlackContextBlockElement::Image(_))),
            SlackBlock::Actions(_) => true,
            _ => false,
        }
    }
    let blocks = content.blocks.as_ref()?;
    let mut kept: Vec<SlackBlock> = blocks.iter().filter(|block| ours(block)).cloned().collect();
    if kept.len() == blocks.len() {
        return None;
    }
    kept.push(context("_Part of this answer could not be shown in Slack._".to_owned()));
    Some(SlackMessageContent {
        blocks: Some(kept),
        ..content.clone()
    })
}

/// Splits `blocks` into messages within the block and text budgets; `closing` ends the
/// last one.
fn pack(blocks: Vec<SlackBlock>, closing: Vec<SlackBlock>, fallback: &str) -> Vec<SlackMessageContent> {
    let closing_size: usize = closing.iter().map(block_size).sum();
    let mut messages: Vec<Vec<SlackBlock>> = vec![Vec::new()];
    let mut size = 0;
    for block in blocks {
        let current = messages.last_mut().expect("never empty");
        let block_len = block_size(&block);
        if !current.is_empty() && (current.len() + 1 > MESSAGE_BLOCK_LIMIT || size + block_len > MESSAGE_TEXT_BUDGET) {
            messages.push(Vec::new());
            size = 0;
        }
        messages.last_mut().expect("never empty").push(block);
        size += block_len;
    }
    let last = messages.last_mut().expect("never empty");
    if !last.is_empty()
        && (last.len() + closing.len() > MESSAGE_BLOCK_LIMIT || size + closing_size > MESSAGE_TEXT_BUDGET)
    {
        messages.push(Vec::new());
    }
    messages.last_mut().expect("never empty").extend(closing);
    let parts = messages.len();
    messages
        .into_iter()
        .enumerate()
        .map(|(i, blocks)| {
            let text = if parts == 1 {
                fallback.to_owned()
            } else {
                format!("{fallback} ({}/{parts})", i + 1)
            };
            SlackMessageContent::new().with_text(text).with_blocks(blocks)
        })
        .collect()
}

/// Characters a block contributes to Slack's aggregate limit (its JSON is a fair proxy).
fn block_size(block: &SlackBlock) -> usize {
    serde_json::to_string(block).map_or(0, |json| json.chars().count())
}

/// Splits mrkdwn into pieces of at most `limit` characters, preferring paragraph, then
/// line, then word boundaries, and closing and reopening a code fence cut in two.
fn split(text: &str, limit: usize) -> Vec<String> {
    const FENCE: &str = "```";
    // Room for a fence closed at the end of a piece and reopened at the next.
    let room = limit - 2 * (FENCE.len() + 1);
    let mut pieces = Vec::new();
    let mut rest = text.to_owned();
    let mut reopen = false;
    while !rest.is_empty() {
        let mut piece = if reopen { format!("{FENCE}\n") } else { String::new() };
        let budget = room - piece.chars().count();
        if rest.chars().count() <= budget {
            piece.push_str(&rest);
            pieces.push(piece);
            break;
        }
        let cut = cut_point(&rest, budget);
        let head = rest[..cut].trim_end();
        piece.push_str(head);
        // A fence left open in this piece is closed here and reopened in the next.
        reopen = !piece.matches(FENCE).count().is_multiple_of(2);
        if reopen {
            piece.push('\n');
            piece.push_str(FENCE);
        }
        pieces.push(piece);
        rest = rest[cut..].trim_start_matches([' ', '\n']).to_owned();
    }
    pieces
}

/// The byte index at which to cut `text` so the head has at most `budget` characters.
fn cut_point(text: &str, budget: usize) -> usize {
    let hard = text.char_indices().nth(budget).map_or(text.len(), |(i, _)| i);
    let head = &text[..hard];
    let at_least = hard / 2;
    for boundary in ["\n\n", "\n", " "] {
        if let Some(i) = head.rfind(boundary).filter(|i| *i >= at_least) {
            return i + boundary.len();
        }
    }
    hard
}

/// Converts common Markdown to Slack mrkdwn and escapes it: `**bold**` and `__bold__` →
/// `*bold*`, `# Heading` → `*Heading*`, `[label](https://…)` → `<https://…|label>`.
/// Code spans and fences are left as they are (mrkdwn shares them), but escaped.
pub fn mrkdwn_from_markdown(markdown: &str) -> String {
    let mut out = String::with_capacity(markdown.len());
    let mut in_fence = false;
    for (i, line) in markdown.lines().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            out.push_str(&escape_mrkdwn(line));
            continue;
        }
        if in_fence {
            out.push_str(&escape_mrkdwn(line));
            continue;
        }
        let trimmed = line.trim_start();
        let heading = trimmed.trim_start_matches('#');
        if trimmed.starts_with('#') && heading.starts_with(' ') && trimmed.len() - heading.len() <= 6 {
            out.push('*');
            out.push_str(&inline_markdown(heading.trim()));
            out.push('*');
        } else {
            out.push_str(&inline_markdown(line));
        }
    }
    out
}

/// One line outside code fences: bold and links converted, code spans kept, escaped.
fn inline_markdown(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('`')
            && let Some(end) = after.find('`')
        {
            out.push('`');
            out.push_str(&escape_mrkdwn(&after[..end]));
            out.push('`');
            rest = &after[end + 1..];
            continue;
        }
        if let Some(after) = rest.strip_prefix("**").or_else(|| rest.strip_prefix("__"))
            && let Some(end) = after.find(&rest[..2])
            && end > 0
        {
            out.push('*');
            out.push_str(&escape_mrkdwn(&after[..end]));
            out.push('*');
            rest = &after[end + 2..];
            continue;
        }
        if let Some(after) = rest.strip_prefix('[')
            && let Some(close) = after.find("](")
            && let Some(end) = after[close + 2..].find(')')
        {
            let label = &after[..close];
            let url = &after[close + 2..close + 2 + end];
            if (url.starts_with("https://") || url.starts_with("http://"))
                && !url.contains(['<', '>', '|', ' '])
                && !label.is_empty()
            {
                out.push_str(&format!("<{}|{}>", url.replace('&', "&amp;"), escape_mrkdwn(label)));
                rest = &after[close + 3 + end..];
                continue;
            }
        }
        let next = rest.chars().next().expect("not empty");
        out.push_str(&escape_mrkdwn(&next.to_string()));
        rest = &rest[next.len_utf8()..];
    }
    out
}

/// A titled code block, cut to fit one section.
fn code_block(title: &str, code: &str) -> String {
    let budget = SECTION_LIMIT - title.len() - 16;
    format!("*{title}*\n```\n{}\n```", truncate(&fenced(code), budget))
}

/// Text safe inside a mrkdwn code fence: escaped, and with backticks replaced by a
/// look-alike so a cell or a query cannot close the fence.
fn fenced(text: &str) -> String {
    escape_mrkdwn(text).replace('`', "\u{2035}")
}

struct InlineTable {
    /// The section's mrkdwn.
    text: String,
    /// What the inline table leaves out, for the context line.
    note: String,
    /// Whether rows or columns were left out (the full result then goes in a CSV).
    partial: bool,
}

/// The first rows and the columns that fit, aligned in a code block.
fn inline_table(table: &Table) -> InlineTable {
    let fetched_rows = table.rows.len().min(TABLE_ROWS);
    let widths = column_widths(table, fetched_rows);
    let shown_columns = columns_that_fit(&widths);
    let (body, emitted) = within_a_section(table_lines(table, &widths[..shown_columns], fetched_rows));
    // The header and its rule come first; what is left are rows.
    let shown_rows = emitted.saturating_sub(2).min(fetched_rows);
    let (note, partial) = left_out(table, shown_rows, shown_columns);
    InlineTable {
        text: format!("```\n{body}```"),
        note,
        partial,
    }
}

/// A cell as shown inline: one line, at most `CELL_WIDTH` characters.
fn cell(value: &Option<String>) -> String {
    let raw = value.as_deref().unwrap_or("NULL").replace(['\n', '\r', '\t'], " ");
    truncate(&raw, CELL_WIDTH)
}

/// The width of each column over its header and the first `rows` rows.
fn column_widths(table: &Table, rows: usize) -> Vec<usize> {
    (0..table.columns.len())
        .map(|c| {
            let header = truncate(&table.columns[c], CELL_WIDTH).chars().count();
            table.rows[..rows]
                .iter()
                .map(|row| row.get(c).map_or(4, |v| cell(v).chars().count()))
                .fold(header, usize::max)
        })
        .collect()
}

/// How many leading columns fit in `TABLE_WIDTH` (always at least one).
fn columns_that_fit(widths: &[usize]) -> usize {
    let mut shown = 0;
    let mut line_width = 0;
    for width in widths {
        let next = line_width + width + if shown > 0 { 2 } else { 0 };
        if shown > 0 && next > TABLE_WIDTH {
            break;
        }
        line_width = next;
        shown += 1;
    }
    shown
}

/// The header, its rule and the first `rows` rows, padded to `widths` (one per shown
/// column).
fn table_lines(table: &Table, widths: &[usize], rows: usize) -> Vec<String> {
    let line = |cells: Vec<String>| -> String {
        cells
            .iter()
            .zip(widths)
            .map(|(text, width)| format!("{text:<width$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut lines = vec![line(
        table.columns[..widths.len()]
            .iter()
            .map(|c| truncate(c, CELL_WIDTH))
            .collect(),
    )];
    lines.push(line(widths.iter().map(|w| "-".repeat(*w)).collect()));
    for row in &table.rows[..rows] {
        lines.push(line(
            (0..widths.len())
                .map(|c| row.get(c).map_or_else(String::new, cell))
                .collect(),
        ));
    }
    lines
}

/// The lines, escaped for the code block, that fit in one section whatever the cell
/// contents (escaping can triple a line), and how many that is: rows that do not fit
/// are left to the CSV.
fn within_a_section(lines: Vec<String>) -> (String, usize) {
    let mut body = String::new();
    let mut emitted = 0;
    for line in lines {
        let escaped = fenced(&line);
        if body.chars().count() + escaped.chars().count() + 1 > SECTION_LIMIT - 16 {
            break;
        }
        body.push_str(&escaped);
        body.push('\n');
        emitted += 1;
    }
    (body, emitted)
}

/// The note under an inline table saying what it leaves out, and whether it left out
/// anything (then the fetched rows go in a CSV). A truncated result says that only its
/// first rows are there, so no one takes them for the whole.
fn left_out(table: &Table, shown_rows: usize, shown_columns: usize) -> (String, bool) {
    let fetched = table.fetched_rows;
    let total = table.total_rows.unwrap_or(fetched).max(fetched);
    if fetched == 0 {
        if total > 0 {
            // Counted but not readable here (e.g. offered only as external links).
            let note = format!(
                "The result has {} rows, but they could not be fetched.",
                thousands(total)
            );
            return (note, false);
        }
        return ("The query returned no rows.".into(), false);
    }
    let mut parts = Vec::new();
    if (shown_rows as u64) < total {
        parts.push(format!("{} of {} rows", shown_rows, thousands(total)));
    }
    if shown_columns < table.columns.len() {
        parts.push(format!("{} of {} columns", shown_columns, table.columns.len()));
    }
    let partial = !parts.is_empty();
    let mut note = if partial {
        format!("Showing {}. ", parts.join(" and "))
    } else {
        String::new()
    };
    if table.truncated {
        note.push_str(&format!(
            "The result was too large to fetch in full: only its first {} rows are {}.",
            thousands(fetched),
            if partial { "attached as a CSV file" } else { "shown" }
        ));
    } else if partial {
        note.push_str("The full result is attached as a CSV file");
        if fetched < total {
            note.push_str(&format!(" (its first {} rows)", thousands(fetched)));
        }
        note.push('.');
    }
    (note, partial)
}

/// `1234567` → `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The fetched rows as a CSV file.
fn csv_file(table: &Table) -> FileUpload {
    FileUpload::text("result.csv", "Query result", "text/csv", table.csv.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn plain_keeps_the_words_and_buttons_and_drops_the_agents_rich_blocks() {
        let with_blocks = AgentAnswer {
            text: "Revenue grew.".into(),
            suggestions: vec!["Why?".into()],
            blocks: serde_json::from_value(serde_json::json!([
                {"type": "image", "image_url": "https://example.com/chart.png", "alt_text": "chart"},
                {"type": "section", "text": {"type": "mrkdwn", "text": "see"},
                 "accessory": {"type": "image", "image_url": "https://example.com/x.png", "alt_text": "x"}},
                {"type": "divider"},
            ]))
            .unwrap(),
            ..AgentAnswer::default()
        };
        let message = answer(&with_blocks, &BY, None, None, None).messages.remove(0);
        let shown = serde_json::to_value(plain(&message).expect("something to leave out")).unwrap();
        let types: Vec<&str> = shown["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["section", "actions", "context", "context"]);
        let json = shown.to_string();
        assert!(json.contains("Revenue grew.") && json.contains("Why?") && json.contains("Alice"));
        assert!(json.contains("could not be shown in Slack") && !json.contains("chart.png"));
        assert_eq!(shown["text"], serde_json::to_value(&message).unwrap()["text"]);

        let ours = answer(&AgentAnswer::text("Fine."), &BY, None, None, None)
            .messages
            .remove(0);
        assert!(plain(&ours).is_none(), "nothing of ours is left out");
    }

    const BY: Attribution<'static> = Attribution {
        databricks_user: "Alice <Asker>",
        agent: "Genie",
    };

    fn json(messages: &[SlackMessageContent]) -> Vec<Value> {
        messages.iter().map(|m| serde_json::to_value(m).unwrap()).collect()
    }

    /// Every Slack limit this module promises, checked on a rendered message.
    fn assert_within_limits(message: &Value) {
        let blocks = message["blocks"].as_array().unwrap();
        assert!(blocks.len() <= MESSAGE_BLOCK_LIMIT, "{} blocks", blocks.len());
        let total: usize = blocks.iter().map(|b| b.to_string().chars().count()).sum();
        assert!(total <= 13_000, "{total} characters of blocks");
        for block in blocks {
            if let Some(text) = block["text"]["text"].as_str() {
                assert!(
                    text.chars().count() <= SECTION_LIMIT,
                    "section of {}",
                    text.chars().count()
                );
                assert_eq!(text.matches("```").count() % 2, 0, "balanced fences: {text}");
            }
            for element in block["elements"].as_array().into_iter().flatten() {
                if let Some(label) = element["text"]["text"].as_str() {
                    assert!(label.chars().count() <= BUTTON_LABEL_LIMIT);
                }
                if let Some(value) = element["value"].as_str() {
                    assert!(value.chars().count() <= BUTTON_VALUE_LIMIT);
                }
            }
        }
        assert!(message["text"].as_str().unwrap().chars().count() <= 40_000);
    }

    fn table(rows: usize, columns: usize, cell: impl Fn(usize, usize) -> String) -> Table {
        Table::of(
            (0..columns).map(|c| format!("col_{c}")).collect(),
            (0..rows)
                .map(|r| (0..columns).map(|c| Some(cell(r, c))).collect())
                .collect(),
        )
    }

    /// An answer that is only `table`, rendered in a channel thread.
    fn only_table(table: Table) -> Rendered {
        answer(
            &AgentAnswer {
                table: Some(table),
                ..AgentAnswer::default()
            },
            &BY,
            None,
            None,
            None,
        )
    }

    #[test]
    fn markdown_becomes_mrkdwn_and_nothing_can_ping_anyone() {
        let md = "# Totals\n**Revenue** is up & <@U123> said <!channel>; see [the docs](https://x.example/a?b=1&c=2).\n`a<b` __done__";
        assert_eq!(
            mrkdwn_from_markdown(md),
            "*Totals*\n*Revenue* is up &amp; &lt;@U123&gt; said &lt;!channel&gt;; see \
             <https://x.example/a?b=1&amp;c=2|the docs>.\n`a&lt;b` *done*"
        );
        // A link whose target could smuggle mrkdwn is left as plain, escaped text.
        assert_eq!(
            mrkdwn_from_markdown("[x](https://a|<!here>)"),
            "[x](https://a|&lt;!here&gt;)"
        );
        assert_eq!(
            mrkdwn_from_markdown("```\n<b> & **x**\n```"),
            "```\n&lt;b&gt; &amp; **x**\n```"
        );
    }

    #[test]
    fn a_short_answer_is_one_message_with_the_attribution_last() {
        let rendered = answer(&AgentAnswer::text("42 orders"), &BY, None, None, None);
        let messages = json(&rendered.messages);
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0]["text"], "42 orders");
        let blocks = messages[0]["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["text"]["text"], "42 orders");
        let context = blocks.last().unwrap().to_string();
        assert!(context.contains("Answered with Alice &lt;Asker&gt;'s Databricks permissions · Genie"));
        assert!(rendered.csv.is_none());
    }

    #[test]
    fn a_40000_character_answer_is_split_into_valid_messages_losing_nothing() {
        let paragraph = "word ".repeat(199) + "end.";
        let mut text = vec![paragraph.clone(); 40].join("\n\n");
        text.push_str("\n\n```\n");
        text.push_str(&"select 1 from t\n".repeat(300));
        text.push_str("```");
        assert!(text.chars().count() > 40_000);
        let messages = json(&answer(&AgentAnswer::text(&text), &BY, None, None, None).messages);
        assert!(messages.len() >= 4, "{} messages", messages.len());
        for message in &messages {
            assert_within_limits(message);
        }
        let words: usize = messages
            .iter()
            .flat_map(|m| m["blocks"].as_array().unwrap().clone())
            .filter_map(|b| b["text"]["text"].as_str().map(|t| t.matches("word").count()))
            .sum();
        assert_eq!(words, 199 * 40, "every word arrives");
        let selects: usize = messages
            .iter()
            .map(|m| m.to_string().matches("select 1 from t").count())
            .sum();
        assert_eq!(selects, 300);
    }

    #[test]
    fn a_long_word_without_spaces_is_still_cut_within_limits() {
        let messages = json(&answer(&AgentAnswer::text("x".repeat(20_000)), &BY, None, None, None).messages);
        for message in &messages {
            assert_within_limits(message);
        }
    }

    #[test]
    fn a_10000_row_50_column_result_shows_a_corner_and_attaches_everything_as_csv() {
        let t = table(10_000, 50, |r, c| format!("r{r}c{c}"));
        let rendered = answer(
            &AgentAnswer {
                text: "Here you go".into(),
                sql: Some("SELECT * FROM big".into()),
                table: Some(t),
                ..AgentAnswer::default()
            },
            &BY,
            None,
            None,
            None,
        );
        let messages = json(&rendered.messages);
        for message in &messages {
            assert_within_limits(message);
        }
        let all = messages[0].to_string();
        assert!(all.contains("r9c0") && !all.contains("r10c0"), "ten rows inline");
        assert!(all.contains("SELECT * FROM big"));
        assert!(all.contains("10 of 10,000 rows and"), "{all}");
        let csv = String::from_utf8(rendered.csv.expect("a CSV").bytes().to_vec()).unwrap();
        assert_eq!(csv.lines().count(), 10_001);
        assert!(csv.starts_with("col_0,col_1,"));
        assert!(csv.contains("r9999c49"));
    }

    #[test]
    fn cells_with_markup_cannot_break_out_of_the_table() {
        let t = table(3, 3, |r, c| match c {
            0 => format!("<@U{r}> & <!here>"),
            1 => "```rm```\nnext".into(),
            _ => "a,\"b\"".into(),
        });
        let rendered = only_table(t);
        let messages = json(&rendered.messages);
        assert_within_limits(&messages[0]);
        let table = messages[0]["blocks"][0]["text"]["text"].as_str().unwrap();
        assert!(table.contains("&lt;@U0&gt; &amp; &lt;!here&gt;"), "{table}");
        assert!(!table.contains("<@U0>"));
        assert_eq!(table.matches("```").count(), 2, "only our own fence: {table}");
        assert!(rendered.csv.is_none(), "three rows fit inline");
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let t = table(
            1,
            2,
            |_, c| if c == 0 { "a,\"b\"".into() } else { "line\nbreak".into() },
        );
        let csv = String::from_utf8(csv_file(&t).bytes().to_vec()).unwrap();
        assert_eq!(csv, "col_0,col_1\r\n\"a,\"\"b\"\"\",\"line\nbreak\"\r\n");
    }

    #[test]
    fn suggestions_become_buttons_and_a_private_answer_gets_a_share_button() {
        let long = "q".repeat(3000);
        let rendered = answer(
            &AgentAnswer {
                text: "Done".into(),
                suggestions: vec!["What about last week?".into(), long, " ".into()],
                ..AgentAnswer::default()
            },
            &BY,
            Some("1700000000.000100"),
            Some("share-id"),
            None,
        );
        let message = &json(&rendered.messages)[0];
        assert_within_limits(message);
        let blocks = message["blocks"].as_array().unwrap();
        let actions = blocks.iter().find(|b| b["type"] == "actions").unwrap();
        let elements = actions["elements"].as_array().unwrap();
        assert_eq!(elements.len(), 3, "two suggestions (the blank one dropped) and Share");
        assert_eq!(elements[0]["action_id"], "ask_suggestion_0");
        assert_eq!(elements[0]["value"], "What about last week?");
        assert_eq!(elements[1]["action_id"], "ask_suggestion_1");
        assert_eq!(elements[2]["action_id"], Action::Share.id().0);
        assert_eq!(elements[2]["value"], "share-id");
        assert_eq!(
            actions["block_id"], "thread:1700000000.000100",
            "the thread rides on the buttons"
        );
    }

    #[test]
    fn a_truncated_result_says_only_its_first_rows_are_shown_and_the_csv_is_not_called_full() {
        let note = |t: Table| {
            let rendered = only_table(t);
            (json(&rendered.messages)[0].to_string(), rendered.csv.is_some())
        };
        let (fits, csv) = note(Table {
            truncated: true,
            ..table(3, 2, |r, c| format!("r{r}c{c}"))
        });
        assert!(
            fits.contains("The result was too large to fetch in full: only its first 3 rows are shown."),
            "{fits}"
        );
        assert!(!csv);
        let (large, csv) = note(Table {
            truncated: true,
            ..table(10_000, 2, |r, c| format!("r{r}c{c}"))
        });
        assert!(
            large.contains(
                "Showing 10 of 10,000 rows. The result was too large to fetch in full: only its first 10,000 rows \
                 are attached as a CSV file."
            ),
            "{large}"
        );
        assert!(!large.contains("full result"), "{large}");
        assert!(csv);
    }

    #[test]
    fn rows_counted_but_not_fetched_are_not_called_no_rows() {
        let rendered = only_table(Table {
            total_rows: Some(150),
            truncated: true,
            ..table(0, 2, |_, _| String::new())
        });
        let text = json(&rendered.messages)[0].to_string();
        assert!(
            text.contains("The result has 150 rows, but they could not be fetched."),
            "{text}"
        );
        assert!(!text.contains("no rows"), "{text}");
    }

    #[test]
    fn an_empty_result_says_so() {
        let rendered = only_table(table(0, 2, |_, _| String::new()));
        assert!(json(&rendered.messages)[0].to_string().contains("no rows"));
        assert!(rendered.csv.is_none());
    }
}
