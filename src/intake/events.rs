//! Where a Slack event becomes a job — or, when the app loses its access to a workspace,
//! where that workspace's data is forgotten. Shared by the Events API route and Socket Mode.
//!
//! Only `app_mention` (channels) and `message.im` (direct messages) become questions. Our
//! own messages, other bots', and anything with a subtype (edits, joins, bot posts) are
//! dropped here so the bot can never answer itself. The rest is recorded and enqueued in
//! one transaction — de-duplicated on `event_id` across retries, modes and replicas —
//! before Slack is acknowledged.
//!
//! `app_uninstalled`, and `tokens_revoked` naming our bot token, purge the team (EVT-04):
//! links with their tokens, pending links, conversations and private answers are deleted
//! and every unfinished job is stopped — in one transaction with the event id, before
//! Slack is acknowledged.

use std::sync::Arc;

use serde::Deserialize;
use slack_morphism::prelude::*;
use tokio::sync::Notify;

use crate::clock::SharedClock;
use crate::domain::{TeamId, UserId};
use crate::intake::group_commit::{GroupCommit, OwnedJob};
use crate::jobs::Work;
use crate::jobs::account::AccountRequest;
use crate::jobs::assistant::ThreadStarted;
use crate::jobs::question::Question;
use crate::slack::render;
use crate::store::Store;
use crate::store::jobs::Delivery;
use crate::store::retention::TeamPurge;

/// What intake did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new question, now durably queued.
    Enqueued,
    /// A redelivery of an event already handled.
    Duplicate,
    /// The app lost its access to the event's team; what was kept for it is gone.
    Purged(TeamPurge),
    /// Not something to act on; the reason is for logs.
    Ignored(&'static str),
}

/// Why the bot can no longer act in a team.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLost {
    /// `app_uninstalled`.
    Uninstalled,
    /// `tokens_revoked` listing the bot token.
    BotTokenRevoked,
}

impl AccessLost {
    /// The Slack event type; also the reason recorded in audit rows and on stopped jobs.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessLost::Uninstalled => "app_uninstalled",
            AccessLost::BotTokenRevoked => "tokens_revoked",
        }
    }
}

/// The inner event of `tokens_revoked`, which slack-morphism does not model:
/// `{"type": "tokens_revoked", "tokens": {"oauth": [user ids], "bot": [bot user ids]}}`.
/// Either list may be missing. Only ids are sent, never tokens.
#[derive(Debug, Deserialize)]
struct TokensRevoked {
    tokens: RevokedTokens,
}

#[derive(Debug, Deserialize)]
struct RevokedTokens {
    #[serde(default)]
    bot: Vec<String>,
}

/// Accepts events into the durable queue.
#[derive(Clone)]
pub struct Intake {
    store: Store,
    clock: SharedClock,
    /// Where deliveries are recorded and their jobs enqueued, many to a transaction.
    commit: GroupCommit,
}

impl Intake {
    /// Intake over `store`; `wake` is notified when a job is enqueued.
    pub fn new(store: Store, clock: SharedClock, wake: Arc<Notify>) -> Self {
        let commit = GroupCommit::start(store.clone(), clock.clone(), wake);
        Self { store, clock, commit }
    }

    /// Accepts one event callback. An `Err` means nothing was stored: the caller must not
    /// acknowledge, so Slack delivers the event again.
    pub async fn accept(&self, callback: &SlackPushEventCallback) -> Result<Outcome, sqlx::Error> {
        match access_lost(callback) {
            Ok(Some(lost)) => return self.purge_team(callback, lost).await,
            Ok(None) => {}
            Err(reason) => return Ok(Outcome::Ignored(reason)),
        }
        if let SlackEventCallbackBody::AppHomeOpened(opened) = &callback.event {
            return self.home_opened(callback, opened).await;
        }
        if let SlackEventCallbackBody::AssistantThreadStarted(started) = &callback.event {
            return self.assistant_thread_started(callback, started).await;
        }
        let question = match question_from(callback) {
            Ok(question) => question,
            Err(reason) => return Ok(Outcome::Ignored(reason)),
        };
        self.enqueue(callback.event_id.as_ref(), &Work::Question(question))
            .await
    }

    /// A visit to the App Home tab: queue publishing it as things stand now.
    async fn home_opened(
        &self,
        callback: &SlackPushEventCallback,
        opened: &SlackAppHomeOpenedEvent,
    ) -> Result<Outcome, sqlx::Error> {
        if opened.tab.as_deref() != Some("home") {
            return Ok(Outcome::Ignored("the Messages tab was opened"));
        }
        let (Ok(team), Ok(user)) = (
            TeamId::parse(callback.team_id.as_ref()),
            UserId::parse(opened.user.as_ref()),
        ) else {
            return Ok(Outcome::Ignored("malformed team or user id"));
        };
        let home = Work::Home(AccountRequest {
            team,
            user,
            response_url: None,
        });
        self.enqueue(callback.event_id.as_ref(), &home).await
    }

    /// A new assistant thread: queue greeting the person in it.
    async fn assistant_thread_started(
        &self,
        callback: &SlackPushEventCallback,
        started: &SlackAssistantThreadStartedEvent,
    ) -> Result<Outcome, sqlx::Error> {
        let thread = &started.assistant_thread;
        let (Ok(team), Ok(user)) = (
            TeamId::parse(callback.team_id.as_ref()),
            UserId::parse(thread.user_id.as_ref()),
        ) else {
            return Ok(Outcome::Ignored("malformed team or user id"));
        };
        let work = Work::AssistantThread(ThreadStarted {
            team,
            user,
            channel: thread.channel_id.to_string(),
            thread_ts: thread.thread_ts.to_string(),
        });
        self.enqueue(callback.event_id.as_ref(), &work).await
    }

    /// Forgets the event's team. Idempotent, and de-duplicated on the event id: a
    /// redelivery does nothing (so it cannot remove links made after a reinstall).
    async fn purge_team(&self, callback: &SlackPushEventCallback, lost: AccessLost) -> Result<Outcome, sqlx::Error> {
        let Ok(team) = TeamId::parse(callback.team_id.as_ref()) else {
            return Ok(Outcome::Ignored("malformed team id"));
        };
        let purged = self
            .store
            .purge_team(callback.event_id.as_ref(), &team, lost.as_str(), self.clock.now())
            .await?;
        Ok(match purged {
            Some(purge) => {
                tracing::info!(
                    team = %team,
                    reason = lost.as_str(),
                    links = purge.links,
                    pending_links = purge.pending_links,
                    stopped_jobs = purge.stopped_jobs,
                    conversations = purge.conversations,
                    private_answers = purge.private_answers,
                    "the app lost its access to a workspace; its data was purged"
                );
                Outcome::Purged(purge)
            }
            None => Outcome::Duplicate,
        })
    }

    /// Queues `work` once per `delivery_key` (an event id, or an interaction's trigger
    /// id): the key and the job are stored in one transaction (shared with the deliveries
    /// arriving alongside, [`GroupCommit`]); then a worker is woken.
    pub async fn enqueue(&self, delivery_key: &str, work: &Work) -> Result<Outcome, sqlx::Error> {
        let (team, user) = work.person();
        let job = OwnedJob {
            kind: work.kind().as_str(),
            team: team.clone(),
            user: user.clone(),
            payload: work.encode(),
            conversation: work.conversation_key(),
        };
        Ok(match self.commit.record(delivery_key, job).await? {
            Delivery::Enqueued => Outcome::Enqueued,
            Delivery::Duplicate => Outcome::Duplicate,
        })
    }
}

/// The bot's own user id, from the event's authorizations.
fn bot_user_id(callback: &SlackPushEventCallback) -> Option<&str> {
    callback
        .authorizations
        .as_deref()?
        .iter()
        .find(|a| a.is_bot.unwrap_or(false))
        .map(|a| a.user_id.as_ref())
}

/// Whether an event says the app lost its access to the event's team: `Ok(None)` for any
/// other event, `Err` (with the reason, for logs) for a lifecycle event to ignore.
///
/// `tokens_revoked` with only user (`oauth`) tokens is ignored: the bot holds no user
/// tokens, and its bot token still works. With the bot token listed, the bot can no longer
/// act in the team, which is handled like an uninstall.
pub fn access_lost(callback: &SlackPushEventCallback) -> Result<Option<AccessLost>, &'static str> {
    match &callback.event {
        SlackEventCallbackBody::AppUninstalled(_) => Ok(Some(AccessLost::Uninstalled)),
        SlackEventCallbackBody::Unknown(event)
            if event.get("type").and_then(|t| t.as_str()) == Some(AccessLost::BotTokenRevoked.as_str()) =>
        {
            let revoked =
                TokensRevoked::deserialize(event).map_err(|_| "tokens_revoked without a readable token list")?;
            if revoked.tokens.bot.is_empty() {
                Err("only user tokens were revoked")
            } else {
                Ok(Some(AccessLost::BotTokenRevoked))
            }
        }
        _ => Ok(None),
    }
}

/// Turns an event into a question, or says why it is not one.
pub fn question_from(callback: &SlackPushEventCallback) -> Result<Question, &'static str> {
    let bot_user = bot_user_id(callback);
    let team = TeamId::parse(callback.team_id.as_ref()).map_err(|_| "malformed team id")?;
    let (user, channel, text, ts, thread_ts, is_dm) = match &callback.event {
        SlackEventCallbackBody::AppMention(m) => (
            &m.user,
            &m.channel,
            m.content.text.as_deref(),
            &m.origin.ts,
            m.origin.thread_ts.as_ref(),
            false,
        ),
        SlackEventCallbackBody::Message(m) => {
            if m.subtype.is_some() || m.hidden == Some(true) {
                return Err("message with a subtype");
            }
            if m.sender.bot_id.is_some() {
                return Err("message from a bot");
            }
            if !matches!(m.origin.channel_type.as_ref().map(|t| t.as_ref()), Some("im")) {
                return Err("message outside a direct message");
            }
            let (Some(user), Some(channel)) = (&m.sender.user, &m.origin.channel) else {
                return Err("message without user or channel");
            };
            let text = m.content.as_ref().and_then(|c| c.text.as_deref());
            (user, channel, text, &m.origin.ts, m.origin.thread_ts.as_ref(), true)
        }
        SlackEventCallbackBody::Unknown(_) => return Err("event type not handled"),
        _ => return Err("event type not handled"),
    };
    if Some(user.as_ref()) == bot_user {
        return Err("our own message");
    }
    let user = UserId::parse(user.as_ref()).map_err(|_| "malformed user id")?;
    let text = strip_mentions(text.unwrap_or_default(), bot_user);
    Ok(Question {
        team,
        user,
        channel: channel.to_string(),
        ts: ts.to_string(),
        thread_ts: thread_ts.map(ToString::to_string),
        text,
        is_dm,
        bot_user_id: bot_user.map(str::to_owned),
        response_url: None,
    })
}

/// The question behind a click on a suggested follow-up: asked by whoever clicked, in the
/// thread of the answer that offered it.
pub fn question_from_suggestion(
    actions: &SlackInteractionBlockActionsEvent,
    action: &SlackInteractionActionInfo,
) -> Result<Question, &'static str> {
    let suggestion = action.value.as_deref().unwrap_or_default();
    let team = TeamId::parse(actions.team.id.as_ref()).map_err(|_| "malformed team id")?;
    let user = actions.user.as_ref().ok_or("click without a user")?;
    let user = UserId::parse(user.id.as_ref()).map_err(|_| "malformed user id")?;
    let SlackInteractionActionContainer::Message(container) = &actions.container else {
        return Err("click outside a message");
    };
    let channel = container
        .channel_id
        .as_ref()
        .or(actions.channel.as_ref().map(|c| &c.id))
        .ok_or("click without a channel")?
        .to_string();
    // The clicked message's thread. An ephemeral answer's click carries no message, so the
    // buttons carry the answer's thread in their block id: the follow-up is then asked as
    // if on that thread's root, which keeps its conversation, and answered where an
    // ephemeral reply is seen (Slack hides ephemerals in a thread without replies).
    let in_thread = actions
        .message
        .as_ref()
        .and_then(|m| m.origin.thread_ts.as_ref())
        .map(ToString::to_string);
    let carried = action
        .block_id
        .as_ref()
        .and_then(|block| {
            block
                .to_string()
                .strip_prefix(render::THREAD_BLOCK_PREFIX)
                .map(str::to_owned)
        })
        .filter(|t| !t.is_empty());
    let (ts, thread_ts) = match (in_thread, carried) {
        (Some(thread), _) => (container.message_ts.to_string(), Some(thread)),
        (None, Some(root)) => (root, None),
        (None, None) => (container.message_ts.to_string(), None),
    };
    let text = suggestion.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        return Err("empty suggestion");
    }
    Ok(Question {
        team,
        user,
        is_dm: channel.starts_with('D'),
        channel,
        ts,
        thread_ts,
        text,
        bot_user_id: None,
        response_url: None,
    })
}

/// Removes mentions of the bot (`<@UBOT>` or `<@UBOT|name>`) and trims; with the bot's id
/// unknown, only a leading mention is removed.
fn strip_mentions(text: &str, bot_user: Option<&str>) -> String {
    let mut out = text.trim().to_owned();
    match bot_user {
        Some(id) => {
            let plain = format!("<@{id}>");
            let named = format!("<@{id}|");
            out = out.replace(&plain, " ");
            while let Some(start) = out.find(&named) {
                let end = out[start..].find('>').map_or(out.len(), |e| start + e + 1);
                out.replace_range(start..end, " ");
            }
        }
        None => {
            if out.starts_with("<@")
                && let Some(end) = out.find('>')
            {
                out.replace_range(..=end, "");
            }
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> SlackPushEventCallback {
        let path = format!("{}/tests/fixtures/slack/{name}", env!("CARGO_MANIFEST_DIR"));
        let json = std::fs::read_to_string(path).unwrap();
        match serde_json::from_str::<SlackPushEvent>(&json).unwrap() {
            SlackPushEvent::EventCallback(cb) => cb,
            other => panic!("not an event callback: {other:?}"),
        }
    }

    #[test]
    fn a_channel_mention_becomes_a_question_answered_in_a_new_thread() {
        let q = question_from(&fixture("event_app_mention.json")).unwrap();
        assert_eq!(q.text, "how many orders did we ship last week?");
        assert_eq!(q.user.as_str(), "U061F7AUR");
        assert_eq!(q.channel, "C0LAN2Q65");
        assert_eq!(q.thread_ts, None);
        assert_eq!(q.answer_thread(), Some("1515449522.000016"));
        assert!(!q.is_dm);
    }

    #[test]
    fn a_mention_inside_a_thread_is_answered_in_that_thread() {
        let q = question_from(&fixture("event_app_mention_in_thread.json")).unwrap();
        assert_eq!(q.thread_ts.as_deref(), Some("1515449522.000016"));
        assert_eq!(q.answer_thread(), Some("1515449522.000016"));
        assert_eq!(
            q.text, "and the week before?",
            "a leading mention is stripped even without authorizations"
        );
    }

    #[test]
    fn a_direct_message_is_answered_in_the_conversation() {
        let q = question_from(&fixture("event_message_im.json")).unwrap();
        assert!(q.is_dm);
        assert_eq!(q.answer_thread(), None);
        assert_eq!(q.text, "which tables can I read in main.sales?");
    }

    // EVT-03
    #[test]
    fn bot_messages_subtypes_and_our_own_messages_are_ignored() {
        assert_eq!(
            question_from(&fixture("event_message_im_from_bot.json")).unwrap_err(),
            "message with a subtype"
        );
        let mut own = fixture("event_app_mention.json");
        if let SlackEventCallbackBody::AppMention(m) = &mut own.event {
            m.user = "U0LAN0Z89".into();
        }
        assert_eq!(question_from(&own).unwrap_err(), "our own message");
        assert_eq!(
            question_from(&fixture("event_app_home_opened.json")).unwrap_err(),
            "event type not handled"
        );
    }

    fn callback(event: serde_json::Value) -> SlackPushEventCallback {
        serde_json::from_value(serde_json::json!({
            "token": "ZZZZZZWSxiZZZ2yIvs3peJ",
            "team_id": "T061EG9R6",
            "api_app_id": "A0MDYCDME",
            "event": event,
            "type": "event_callback",
            "event_id": "Ev0LAN7101",
            "event_time": 1515449900
        }))
        .unwrap()
    }

    // EVT-04
    #[test]
    fn an_uninstall_and_a_revoked_bot_token_mean_the_bot_lost_the_workspace() {
        assert_eq!(
            access_lost(&fixture("event_app_uninstalled.json")),
            Ok(Some(AccessLost::Uninstalled))
        );
        let both = callback(serde_json::json!({
            "type": "tokens_revoked",
            "tokens": {"oauth": ["U061F7AUR"], "bot": ["U0LAN0Z89"]}
        }));
        assert_eq!(access_lost(&both), Ok(Some(AccessLost::BotTokenRevoked)));
        let bot_only = callback(serde_json::json!({"type": "tokens_revoked", "tokens": {"bot": ["U0LAN0Z89"]}}));
        assert_eq!(access_lost(&bot_only), Ok(Some(AccessLost::BotTokenRevoked)));
    }

    #[test]
    fn revoked_user_tokens_alone_and_ordinary_events_are_not_a_lost_workspace() {
        let users_only = callback(serde_json::json!({"type": "tokens_revoked", "tokens": {"oauth": ["U061F7AUR"]}}));
        assert_eq!(access_lost(&users_only), Err("only user tokens were revoked"));
        let empty = callback(serde_json::json!({"type": "tokens_revoked", "tokens": {"oauth": [], "bot": []}}));
        assert_eq!(access_lost(&empty), Err("only user tokens were revoked"));
        let unreadable = callback(serde_json::json!({"type": "tokens_revoked", "tokens": "all of them"}));
        assert_eq!(
            access_lost(&unreadable),
            Err("tokens_revoked without a readable token list")
        );
        assert_eq!(access_lost(&fixture("event_app_mention.json")), Ok(None));
        assert_eq!(access_lost(&fixture("event_app_home_opened.json")), Ok(None));
    }

    #[test]
    fn every_mention_of_the_bot_is_removed_and_others_kept() {
        assert_eq!(
            strip_mentions("<@UBOT> hi <@UBOT|databricks> there <@UOTHER>", Some("UBOT")),
            "hi there <@UOTHER>"
        );
        assert_eq!(strip_mentions("  <@UBOT>  ", Some("UBOT")), "");
        assert_eq!(strip_mentions("<@UX> what now", None), "what now");
    }

    proptest::proptest! {
        // FZ-01: any text and user in an event give a question or a reason, never a
        // panic; and no mention of the bot survives into the question.
        #[test]
        fn any_text_or_user_in_an_event_is_handled_without_panicking(
            text in "\\PC{0,200}",
            user in "\\PC{0,40}",
        ) {
            let mut cb = callback(serde_json::json!({"type": "app_mention", "user": user,
                "text": format!("<@U0LAN0Z89> {text} <@U0LAN0Z89|bot>"),
                "ts": "1515449522.000016", "channel": "C0LAN2Q65", "event_ts": "1515449522000016"}));
            cb.authorizations = fixture("event_app_mention.json").authorizations;
            if let Ok(q) = question_from(&cb) {
                let mention = q.text.contains("<@U0LAN0Z89>") || q.text.contains("<@U0LAN0Z89|");
                proptest::prop_assert!(!mention, "{}", q.text);
            }
        }
    }
}
