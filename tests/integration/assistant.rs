//! Slack's assistant threads: a new thread is greeted with suggested prompts; a question
//! in it shows progress as the thread's status (`assistant.threads.setStatus`, checked
//! against Slack's documented arguments: `channel_id`, `thread_ts`, `status`), titles the
//! thread once, and is answered in it. Where Slack refuses the status, a placeholder
//! message is shown as in any thread.

use crate::common::app::{Options, TestApp};
use serde_json::{Value, json};
use wiremock::matchers::path;
use wiremock::{Mock, ResponseTemplate};

const THREAD: &str = "1764547200.000100";
const DM: &str = "D0PNCRP9N";

fn fixture(name: &str) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(format!("{}/tests/fixtures/slack/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap(),
    )
    .unwrap()
}

fn ok_for(method: &'static str, answer: Value) -> Mock {
    Mock::given(path(format!("/api/{method}"))).respond_with(ResponseTemplate::new(200).set_body_json(answer))
}

async fn spawn(status_answer: Value) -> TestApp {
    TestApp::spawn_with(Options {
        slack_mocks: vec![
            ok_for("assistant.threads.setStatus", status_answer),
            ok_for("assistant.threads.setTitle", json!({"ok": true})),
            ok_for("assistant.threads.setSuggestedPrompts", json!({"ok": true})),
        ],
        ..Default::default()
    })
    .await
}

/// The person's question in the assistant thread, as `message.im` delivers it.
fn asked_in_thread(event_id: &str, text: &str) -> Value {
    let mut event = fixture("event_message_im.json");
    event["event_id"] = json!(event_id);
    event["event"]["text"] = json!(text);
    event["event"]["thread_ts"] = json!(THREAD);
    event["event"]["ts"] = json!("1764547300.000200");
    event
}

async fn start_thread(app: &TestApp) {
    app.post_event(&fixture("event_assistant_thread_started.json")).await;
    app.wait_for_calls("assistant.threads.setSuggestedPrompts", 1).await;
}

#[tokio::test]
async fn a_new_thread_is_greeted_and_a_question_in_it_shows_status_titles_it_and_is_answered_there() {
    let app = spawn(json!({"ok": true})).await;
    app.link_asker().await;
    start_thread(&app).await;
    let greeting = &app.slack_calls("chat.postMessage").await[0];
    assert_eq!(
        (greeting["channel"].as_str(), greeting["thread_ts"].as_str()),
        (Some(DM), Some(THREAD))
    );
    assert!(
        greeting["text"].as_str().unwrap().starts_with("Hi! Ask me anything"),
        "{greeting}"
    );
    let prompts = &app.slack_calls("assistant.threads.setSuggestedPrompts").await[0];
    assert_eq!(
        (prompts["channel_id"].as_str(), prompts["thread_ts"].as_str()),
        (Some(DM), Some(THREAD))
    );
    let prompts = prompts["prompts"].as_array().unwrap();
    assert_eq!(prompts.len(), 3);
    assert!(
        prompts
            .iter()
            .all(|p| p["title"].is_string() && p["message"].is_string()),
        "{prompts:?}"
    );

    app.post_event(&asked_in_thread("EvA1", "how many orders shipped?"))
        .await;
    let answer = app.wait_for_answer("answer: how many orders shipped?").await;
    assert_eq!(answer["thread_ts"], THREAD, "answered in the thread");
    let statuses = app.slack_calls("assistant.threads.setStatus").await;
    assert_eq!(
        statuses[0],
        json!({"channel_id": DM, "thread_ts": THREAD, "status": "is thinking…"})
    );
    let titles = app.slack_calls("assistant.threads.setTitle").await;
    assert_eq!(
        titles,
        [json!({"channel_id": DM, "thread_ts": THREAD, "title": "how many orders shipped?"})]
    );
    let posted = app.slack_calls("chat.postMessage").await;
    assert!(
        posted.iter().all(|m| !m.to_string().contains("Thinking…")),
        "no placeholder message: {posted:?}"
    );

    // A second question: status again, no second title.
    app.post_event(&asked_in_thread("EvA2", "and the week before?")).await;
    app.wait_for_answer("answer: and the week before?").await;
    assert_eq!(app.slack_calls("assistant.threads.setTitle").await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_status_slack_refuses_falls_back_to_a_placeholder_message() {
    let app = spawn(json!({"ok": false, "error": "not_allowed"})).await;
    app.link_asker().await;
    start_thread(&app).await;
    app.post_event(&asked_in_thread("EvA1", "how many orders shipped?"))
        .await;
    app.wait_for_answer("answer: how many orders shipped?").await;
    let posted = app.slack_calls("chat.postMessage").await;
    assert!(
        posted
            .iter()
            .any(|m| m.to_string().contains("Thinking…") && m["thread_ts"] == THREAD),
        "{posted:?}"
    );
    app.stop().await;
}

// Linking from inside the thread: the prompt is shown there, and once connected the kept
// question is answered there.
#[tokio::test]
async fn an_unlinked_person_gets_the_prompt_in_the_thread() {
    let app = spawn(json!({"ok": true})).await;
    start_thread(&app).await;
    app.post_event(&asked_in_thread("EvA1", "how many orders shipped?"))
        .await;
    let prompts = app.wait_for_calls("chat.postMessage", 2).await;
    let prompt = prompts
        .iter()
        .find(|m| m.to_string().contains("/link/"))
        .expect("a connect prompt");
    assert_eq!(prompt["thread_ts"], THREAD, "{prompt}");
    app.stop().await;
}

/// The prompts a new thread was given, as their messages.
async fn prompts_given(app: &TestApp) -> Vec<String> {
    let given = &app.slack_calls("assistant.threads.setSuggestedPrompts").await[0];
    given["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["message"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_new_thread_suggests_the_genie_spaces_own_sample_questions_when_the_person_may_read_them() {
    use crate::common::recorded::recorded;
    use wiremock::matchers::{method, query_param};

    // An editor of the space reads its export; someone who may only run it gets the
    // space without one, or a refusal (which of the two is not documented): both get the
    // configured prompts.
    for (answer, expected) in [
        (
            "genie-get-space-serialized",
            vec![
                "What was revenue by region last quarter?",
                "Which products sold best this month?",
            ],
        ),
        ("genie-get-space", vec![]),
        ("permission-denied-403", vec![]),
    ] {
        let app = spawn(json!({"ok": true})).await;
        app.link_asker().await;
        Mock::given(method("GET"))
            .and(path("/api/2.0/genie/spaces/01ef-space"))
            .and(query_param("include_serialized_space", "true"))
            .respond_with(recorded(answer).template())
            .expect(1)
            .mount(&app.databricks.api)
            .await;
        start_thread(&app).await;
        let prompts = prompts_given(&app).await;
        if expected.is_empty() {
            assert_eq!(prompts.len(), 3, "{answer}: the configured prompts: {prompts:?}");
            assert!(!prompts.iter().any(|p| p.contains("last quarter?")), "{answer}");
        } else {
            assert_eq!(prompts, expected, "{answer}");
        }
        app.stop().await;
    }
}

#[tokio::test]
async fn an_unlinked_person_gets_the_configured_prompts_without_a_call_to_databricks() {
    let app = spawn(json!({"ok": true})).await;
    start_thread(&app).await;
    assert_eq!(prompts_given(&app).await.len(), 3);
    let asked = app.databricks.api.received_requests().await.unwrap_or_default();
    assert!(asked.is_empty(), "{asked:?}");
    app.stop().await;
}

#[tokio::test]
async fn an_answer_in_an_assistant_thread_streams_there_without_naming_a_recipient() {
    let streams = ["chat.startStream", "chat.appendStream", "chat.stopStream"]
        .map(|method| ok_for(method, json!({"ok": true, "channel": DM, "ts": "1764547400.000300"})));
    let app = TestApp::spawn_with(Options {
        slack_mocks: vec![
            ok_for("assistant.threads.setStatus", json!({"ok": true})),
            ok_for("assistant.threads.setTitle", json!({"ok": true})),
            ok_for("assistant.threads.setSuggestedPrompts", json!({"ok": true})),
        ]
        .into_iter()
        .chain(streams)
        .collect(),
        ..Default::default()
    })
    .await;
    app.link_asker().await;
    *app.agent.pieces.lock().unwrap() = Some((
        vec!["Orders ".into(), "shipped: 42.".into()],
        std::time::Duration::from_millis(10),
    ));
    start_thread(&app).await;
    app.post_event(&asked_in_thread("EvA1", "how many orders shipped?"))
        .await;
    app.wait_for_calls("chat.stopStream", 1).await;
    let start = &app.slack_calls("chat.startStream").await[0];
    assert_eq!(
        (start["channel"].as_str(), start["thread_ts"].as_str()),
        (Some(DM), Some(THREAD))
    );
    // "Required when streaming to channels": a DM names no recipient.
    assert!(
        start.get("recipient_user_id").is_none() && start.get("recipient_team_id").is_none(),
        "{start}"
    );
    assert_eq!(
        app.slack_calls("assistant.threads.setStatus").await.len(),
        1,
        "the status until text shows"
    );
    app.stop().await;
}
