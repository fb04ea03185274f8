//! Thumbs up or down under each answer: the `feedback_buttons` element in a
//! `context_actions` block (Slack's Block Kit reference). A click is recorded once per
//! answer and person (with an audit event and `answer_feedback_total`); the asker's
//! rating of a Genie answer reaches Genie's message feedback
//! (`POST …/messages/{message_id}/feedback`, `{"rating": "POSITIVE"}`, as databricks-sdk-go
//! `SendMessageFeedback` sends it) as the asker. Anyone else is thanked, not forwarded.

use crate::common::app::{Options, TestApp, audit_trail};
use serde_json::{Value, json};
use wiremock::matchers::{body_json, method, path, path_regex};
use wiremock::{Mock, ResponseTemplate};

const FEEDBACK: &str = "/api/2.0/genie/spaces/01ef-space/conversations/c-9/messages/m-9/feedback";

async fn spawn() -> TestApp {
    let app = TestApp::spawn_with(Options {
        slack_mocks: vec![
            Mock::given(method("POST"))
                .and(path_regex("^/response/"))
                .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true}))),
        ],
        ..Options::default()
    })
    .await;
    // The agent answers as Genie does: it keeps the space, conversation and message.
    *app.agent.conversation.lock().unwrap() =
        Some(json!({"space_id": "01ef-space", "conversation_id": "c-9", "message_id": "m-9"}));
    // Answered with `{}`, and with nothing at all: the SDKs read no answer from this call.
    for (rating, answer) in [
        ("POSITIVE", ResponseTemplate::new(200).set_body_json(json!({}))),
        ("NEGATIVE", ResponseTemplate::new(200)),
    ] {
        Mock::given(method("POST"))
            .and(path(FEEDBACK))
            .and(body_json(json!({"rating": rating})))
            .respond_with(answer)
            .mount(&app.databricks.api)
            .await;
    }
    app
}

/// The feedback element under an answer.
fn thumbs(answer: &Value) -> Value {
    answer["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "context_actions")
        .map(|b| b["elements"][0].clone())
        .unwrap_or_else(|| panic!("no feedback buttons: {answer}"))
}

/// `user` clicks the button with `value`, as Slack posts a feedback_buttons click.
async fn click(app: &TestApp, user: &str, value: &str, trigger: &str) {
    let payload = json!({
        "type": "block_actions",
        "team": {"id": "T061EG9R6", "domain": "acme"},
        "user": {"id": user, "username": "someone", "team_id": "T061EG9R6"},
        "api_app_id": "A0MDYCDME",
        "token": "ZZZZZZWSxiZZZ2yIvs3peJ",
        "trigger_id": trigger,
        "container": {"type": "message", "message_ts": "1515449522.000016", "channel_id": "C0LAN2Q65", "is_ephemeral": false},
        "channel": {"id": "C0LAN2Q65", "name": "general"},
        "response_url": format!("{}/response/{trigger}", app.slack.uri()),
        "actions": [{"type": "feedback_buttons", "action_id": "answer_feedback", "block_id": "fb",
                     "value": value, "action_ts": "1515449600.000100"}]
    });
    assert_eq!(app.post_interaction(&payload).await, 200);
    app.settled_job_states().await;
}

async fn genie_ratings(app: &TestApp) -> Vec<Value> {
    app.databricks
        .api
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == FEEDBACK)
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

fn counted(metrics: &str, rating: &str) -> Option<String> {
    let series = format!("answer_feedback_total{{agent=\"Recording\",rating=\"{rating}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&series).map(str::to_owned))
}

#[tokio::test]
async fn the_askers_thumbs_reach_genie_as_them_once_per_change() {
    let logs = crate::common::logs::Captured::default();
    let _guard = tracing::subscriber::set_default(logs.subscriber());
    let app = spawn().await;
    app.link_asker().await;
    app.post_event(&crate::common::app::mention("Ev1", "<@U0LAN0Z89> how many orders?"))
        .await;
    let answer = app.wait_for_answer("answer: how many orders?").await;
    let element = thumbs(&answer);
    assert_eq!(element["type"], "feedback_buttons");
    assert_eq!(element["action_id"], "answer_feedback");
    let (up, down) = (
        element["positive_button"]["value"].as_str().unwrap().to_owned(),
        element["negative_button"]["value"].as_str().unwrap().to_owned(),
    );
    assert!(
        up.starts_with("positive:") && down.starts_with("negative:"),
        "{element}"
    );
    assert!(element["positive_button"]["text"]["type"] == "plain_text");

    click(&app, "U061F7AUR", &up, "t1").await;
    click(&app, "U061F7AUR", &up, "t2").await; // a second click of the same button
    click(&app, "U061F7AUR", &down, "t3").await; // changed their mind

    assert_eq!(
        genie_ratings(&app).await,
        [json!({"rating": "POSITIVE"}), json!({"rating": "NEGATIVE"})]
    );
    assert!(
        !logs.text().contains("Genie did not take a rating"),
        "both answers read as taken"
    );
    assert!(
        app.databricks
            .api_callers()
            .await
            .iter()
            .flatten()
            .all(|who| who == "asker@example.com"),
        "forwarded as the asker"
    );
    let metrics = app.get("/metrics").await.1;
    assert_eq!(counted(&metrics, "positive").as_deref(), Some("1"), "{metrics}");
    assert_eq!(counted(&metrics, "negative").as_deref(), Some("1"), "{metrics}");
    let feedback = audit_trail(&app.db_url)
        .await
        .into_iter()
        .filter(|(kind, _)| kind == "feedback")
        .count();
    assert_eq!(feedback, 2, "one audit event per change");
    let thanks = app.responses().await;
    assert_eq!(thanks.len(), 3, "every click is thanked: {thanks:?}");
    assert!(
        thanks
            .iter()
            .all(|t| t["text"] == "Thanks for the feedback!" && t["replace_original"] == false)
    );
    app.stop().await;
}

#[tokio::test]
async fn someone_elses_click_or_one_after_disconnecting_is_recorded_not_forwarded() {
    let app = spawn().await;
    app.link_asker().await;
    app.post_event(&crate::common::app::mention("Ev1", "<@U0LAN0Z89> how many orders?"))
        .await;
    let up = thumbs(&app.wait_for_answer("answer: how many orders?").await)["positive_button"]["value"]
        .as_str()
        .unwrap()
        .to_owned();

    click(&app, "U0SOMEONE", &up, "t1").await;
    assert!(genie_ratings(&app).await.is_empty(), "not the asker: not forwarded");

    let (team, user) = (
        databricks_slack_bot::domain::TeamId::parse("T061EG9R6").unwrap(),
        databricks_slack_bot::domain::UserId::parse("U061F7AUR").unwrap(),
    );
    app.store
        .delete_link(&team, &user, databricks_slack_bot::store::audit::Actor::User, 0)
        .await
        .unwrap();
    click(&app, "U061F7AUR", &up, "t2").await;
    assert!(
        genie_ratings(&app).await.is_empty(),
        "no token after disconnecting: not forwarded"
    );

    let metrics = app.get("/metrics").await.1;
    assert_eq!(counted(&metrics, "positive").as_deref(), Some("2"), "{metrics}");
    assert_eq!(app.responses().await.len(), 2, "both thanked");

    // A made-up answer id or value: thanked, nothing recorded, nothing breaks.
    click(&app, "U061F7AUR", "positive:999999", "t3").await;
    click(&app, "U061F7AUR", "glowing:1", "t4").await;
    let metrics = app.get("/metrics").await.1;
    assert_eq!(counted(&metrics, "positive").as_deref(), Some("2"), "{metrics}");
    app.stop().await;
}
