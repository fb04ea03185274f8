//! Slack payloads as Enterprise Grid and Slack Connect send them, settled to one workspace
//! before slack-morphism's typed parse (EVT-05).
//!
//! Which workspace a delivery belongs to is the key of everything the bot keeps for a
//! person (links, pending links, conversations), so every entry point must read it the
//! same way:
//!
//! - **Events**: the installation's workspace, `authorizations[0].team_id`, over the
//!   envelope's `team_id`. In a Slack Connect channel the envelope can name the workspace
//!   the message came from rather than the installation it is delivered to, which is why
//!   Bolt reads `authorizations` first too. The envelope's `team_id`, then
//!   `context_team_id`, stand in where Slack sends no workspace there.
//! - **Interactions**: `team.id`; an org-wide install may send `team: null`, and then the
//!   clicker's `user.team_id`, or the view's `team_id`, names it.
//!
//! An org-wide install (`is_enterprise_install: true`) is one installation across the
//! organisation's workspaces. Slack documents `authorizations[0].team_id` as a workspace
//! id there too, but its SDKs type it nullable, and slack-morphism 2.31 requires it (and
//! the interaction's `team`): a `null` would fail the whole delivery. So both shapes are
//! settled here: a link is kept per workspace (a person of a grid org links once in each
//! workspace they ask from), which never lets one workspace's link answer in another.

use serde_json::Value;

/// Names the workspace an `event_callback` envelope belongs to in its `team_id`, and fills
/// every `authorizations[].team_id` Slack left `null`. Leaves anything else untouched (a
/// payload naming no workspace at all then fails the typed parse, as it should).
pub fn settle_event(envelope: &mut Value) {
    if envelope.get("type").and_then(Value::as_str) != Some("event_callback") {
        return;
    }
    let named = |v: Option<&Value>| v.and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
    let installation = envelope
        .get("authorizations")
        .and_then(|a| a.get(0))
        .and_then(|a| named(a.get("team_id")));
    let Some(team) = installation
        .or_else(|| named(envelope.get("team_id")))
        .or_else(|| named(envelope.get("context_team_id")))
    else {
        return;
    };
    if let Some(authorizations) = envelope.get_mut("authorizations").and_then(Value::as_array_mut) {
        for authorization in authorizations.iter_mut().filter_map(Value::as_object_mut) {
            if named(authorization.get("team_id")).is_none() {
                authorization.insert("team_id".into(), Value::String(team.clone()));
            }
        }
    }
    envelope["team_id"] = Value::String(team);
}

/// Fills an interaction payload's `team` when an org-wide install sent it `null` (or not
/// at all): from the clicker's `user.team_id`, else the view's `team_id`.
pub fn settle_interaction(payload: &mut Value) {
    let Some(object) = payload.as_object_mut() else {
        return;
    };
    if object
        .get("team")
        .is_some_and(|t| t.get("id").and_then(Value::as_str).is_some())
    {
        return;
    }
    let team = [("user", "team_id"), ("view", "team_id")]
        .iter()
        .find_map(|(outer, field)| object.get(*outer)?.get(*field)?.as_str().filter(|s| !s.is_empty()))
        .map(str::to_owned);
    if let Some(team) = team {
        object.insert("team".into(), serde_json::json!({ "id": team }));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use slack_morphism::prelude::*;

    use super::*;

    fn mention(outer_team: Value, authorization_team: Value) -> Value {
        json!({
            "token": "x", "team_id": outer_team, "api_app_id": "A0MDYCDME",
            "enterprise_id": "E0GRID", "context_team_id": "T0CONTEXT",
            "event": {"type": "app_mention", "user": "W0ASKER", "text": "<@W0BOT> hi",
                      "ts": "1.2", "channel": "C0GRID", "event_ts": "1.2"},
            "type": "event_callback", "event_id": "Ev1", "event_time": 1,
            "authorizations": [{"enterprise_id": "E0GRID", "team_id": authorization_team,
                                "user_id": "W0BOT", "is_bot": true, "is_enterprise_install": true}]
        })
    }

    fn parsed(mut envelope: Value) -> SlackPushEventCallback {
        settle_event(&mut envelope);
        match serde_json::from_value::<SlackPushEvent>(envelope).expect("parses once settled") {
            SlackPushEvent::EventCallback(callback) => callback,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_org_wide_install_with_a_null_authorization_team_is_the_envelopes_workspace() {
        let raw = mention(json!("T0WORKSPACE"), Value::Null);
        assert!(
            serde_json::from_value::<SlackPushEvent>(raw.clone()).is_err(),
            "slack-morphism alone cannot read this shape"
        );
        let callback = parsed(raw);
        assert_eq!(callback.team_id.as_ref(), "T0WORKSPACE");
        let authorization = &callback.authorizations.unwrap()[0];
        assert_eq!(authorization.team_id.as_ref(), "T0WORKSPACE");
        assert_eq!(authorization.user_id.as_ref(), "W0BOT");
    }

    #[test]
    fn the_installation_named_in_authorizations_wins_over_the_envelope() {
        // Slack Connect: the envelope names the workspace the message came from.
        let callback = parsed(mention(json!("T0OTHERORG"), json!("T0INSTALL")));
        assert_eq!(callback.team_id.as_ref(), "T0INSTALL");
    }

    #[test]
    fn with_no_workspace_in_envelope_or_authorizations_the_context_team_names_it() {
        let callback = parsed(mention(Value::Null, Value::Null));
        assert_eq!(callback.team_id.as_ref(), "T0CONTEXT");
    }

    #[test]
    fn a_payload_naming_no_workspace_is_left_to_fail_the_typed_parse() {
        let mut raw = mention(Value::Null, Value::Null);
        raw.as_object_mut().unwrap().remove("context_team_id");
        settle_event(&mut raw);
        assert!(serde_json::from_value::<SlackPushEvent>(raw).is_err());
    }

    #[test]
    fn other_envelopes_are_untouched() {
        let mut challenge = json!({"type": "url_verification", "challenge": "c", "token": "t"});
        let before = challenge.clone();
        settle_event(&mut challenge);
        assert_eq!(challenge, before);
        let mut not_an_object = json!([1, 2]);
        settle_event(&mut not_an_object);
        settle_interaction(&mut not_an_object);
        assert_eq!(not_an_object, json!([1, 2]));
    }

    fn click(team: Value) -> Value {
        json!({
            "type": "block_actions", "team": team, "api_app_id": "A0MDYCDME",
            "user": {"id": "W0ASKER", "team_id": "T0HOME"},
            "container": {"type": "message", "message_ts": "1.2", "channel_id": "C0GRID"},
            "trigger_id": "1.2.3", "actions": []
        })
    }

    #[test]
    fn an_org_wide_click_without_a_team_is_the_clickers_workspace() {
        for team in [Value::Null, json!({"id": null})] {
            let mut payload = click(team);
            assert!(serde_json::from_value::<SlackInteractionEvent>(payload.clone()).is_err());
            settle_interaction(&mut payload);
            match serde_json::from_value::<SlackInteractionEvent>(payload).unwrap() {
                SlackInteractionEvent::BlockActions(click) => assert_eq!(click.team.id.as_ref(), "T0HOME"),
                other => panic!("{other:?}"),
            }
        }
        let mut named = click(json!({"id": "T0NAMED"}));
        settle_interaction(&mut named);
        assert_eq!(named["team"]["id"], "T0NAMED");
    }
}
