//! Where a Slack event becomes a job. Shared by the Events API route and Socket Mode.
//!
//! Only `app_mention` (channels) and `message.im` (direct messages) become questions. Our
//! own messages, other bots', and anything with a subtype (edits, joins, bot posts) are
//! dropped here so the bot can never answer itself. The rest is recorded and enqueued in
//! one transaction — de-duplicated on `event_id` across retries, modes and replicas —
//! before Slack is acknowledged.

use std::sync::Arc;

use slack_morphism::prelude::*;
use tokio::sync::Notify;

use crate::clock::SharedClock;
use crate::domain::{TeamId, UserId};
use crate::questions::{QUESTION_JOB, Question};
use crate::store::Store;
use crate::store::jobs::{Delivery, NewJob};

/// What intake did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new question, now durably queued.
    Enqueued,
    /// A redelivery of an event already queued.
    Duplicate,
    /// Not something to answer; the reason is for logs.
    Ignored(&'static str),
}

/// Accepts events into the durable queue.
#[derive(Clone)]
pub struct Intake {
    store: Store,
    clock: SharedClock,
    wake: Arc<Notify>,
}

impl Intake {
    /// Intake over `store`; `wake` is notified when a job is enqueued.
    pub fn new(store: Store, clock: SharedClock, wake: Arc<Notify>) -> Self {
        Self { store, clock, wake }
    }

    /// Accepts one event callback. An `Err` means nothing was stored: the caller must not
    /// acknowledge, so Slack delivers the event again.
    pub async fn accept(&self, callback: &SlackPushEventCallback) -> Result<Outcome, sqlx::Error> {
        let question = match question_from(callback) {
            Ok(question) => question,
            Err(reason) => return Ok(Outcome::Ignored(reason)),
        };
        self.enqueue(callback.event_id.as_ref(), &question).await
    }

    /// Queues `question` once per `delivery_key` (an event id, or an interaction's trigger
    /// id): the key and the job are stored in one transaction.
    pub async fn enqueue(&self, delivery_key: &str, question: &Question) -> Result<Outcome, sqlx::Error> {
        let payload = serde_json::to_string(&question).expect("a question serialises");
        let job = NewJob {
            kind: QUESTION_JOB,
            team: &question.team,
            user: &question.user,
            payload: &payload,
        };
        let delivery = self
            .store
            .enqueue_event_job(delivery_key, &job, self.clock.now())
            .await?;
        Ok(match delivery {
            Delivery::Enqueued => {
                self.wake.notify_one();
                Outcome::Enqueued
            }
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
    })
}

/// Removes mentions of the bot (`<@UBOT>` or `<@UBOT|name>`) and trims; with the bot's id
/// unknown, only a leading mention is removed.
/// The question behind a click on a suggested follow-up: asked by whoever clicked, in the
/// thread of the answer that offered it.
pub fn question_from_suggestion(
    actions: &SlackInteractionBlockActionsEvent,
    suggestion: &str,
) -> Result<Question, &'static str> {
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
    let thread_ts = actions
        .message
        .as_ref()
        .and_then(|m| m.origin.thread_ts.as_ref())
        .map(ToString::to_string);
    let text = suggestion.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        return Err("empty suggestion");
    }
    Ok(Question {
        team,
        user,
        is_dm: channel.starts_with('D'),
        channel,
        ts: container.message_ts.to_string(),
        thread_ts,
        text,
        bot_user_id: None,
    })
}

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

    #[test]
    fn every_mention_of_the_bot_is_removed_and_others_kept() {
        assert_eq!(
            strip_mentions("<@UBOT> hi <@UBOT|databricks> there <@UOTHER>", Some("UBOT")),
            "hi there <@UOTHER>"
        );
        assert_eq!(strip_mentions("  <@UBOT>  ", Some("UBOT")), "");
        assert_eq!(strip_mentions("<@UX> what now", None), "what now");
    }
}
