//! Streamed answers: an agent's text appears in the thread as it is written
//! (`chat.startStream`, `chat.appendStream`, `chat.stopStream`), throttled; the rest of the
//! answer ends the stream. The fake Slack checks each call against the arguments Slack
//! documents for these methods (docs.slack.dev/reference/methods/chat.startStream,
//! chat.appendStream, chat.stopStream) and refuses anything else with
//! `invalid_arguments`, as Slack does.

use std::time::Duration;

use crate::common::app::{Options, TestApp, mention};
use crate::common::{PATIENCE, eventually};
use databricks_slack_bot::agent::{AgentError, Table};
use serde_json::{Value, json};
use wiremock::matchers::path;
use wiremock::{Mock, Request, Respond, ResponseTemplate};

/// The question's message: the thread the answer streams into.
const QUESTION_TS: &str = "1515449522.000016";
const CHANNEL: &str = "C0LAN2Q65";
/// The placeholder's `ts` (the fake's `chat.postMessage`) and the stream's.
const PLACEHOLDER_TS: &str = "1700000000.000100";
const STREAM_TS: &str = "1515449600.000900";

/// One of the streaming methods, answering as Slack does when its arguments are the
/// documented ones.
struct Documented(&'static str);

impl Documented {
    /// Why Slack would refuse `body`, if it would.
    fn refusal(&self, body: &Value) -> Option<String> {
        let allowed: &[&str] = match self.0 {
            "chat.startStream" => &[
                "channel",
                "thread_ts",
                "recipient_user_id",
                "recipient_team_id",
                "markdown_text",
                "chunks",
                "task_display_mode",
                "icon_emoji",
                "icon_url",
                "username",
            ],
            "chat.appendStream" => &["channel", "ts", "markdown_text", "chunks"],
            "chat.stopStream" => &[
                "channel",
                "ts",
                "markdown_text",
                "blocks",
                "metadata",
                "chunks",
                "session_status",
            ],
            other => return Some(format!("not a streaming method: {other}")),
        };
        let object = body.as_object()?;
        if let Some(unknown) = object.keys().find(|key| !allowed.contains(&key.as_str())) {
            return Some(format!("undocumented argument {unknown}"));
        }
        let string = |key: &str| object.get(key).and_then(Value::as_str);
        if string("channel").is_none_or(str::is_empty) {
            return Some("no channel".into());
        }
        if string("markdown_text").is_some_and(|text| text.chars().count() > 12_000) {
            return Some("markdown_text over 12,000 characters".into());
        }
        match self.0 {
            "chat.startStream" => {
                if string("thread_ts").is_none() {
                    return Some("a streamed message is a reply: thread_ts".into());
                }
                // "Required when streaming to channels."
                let in_channel = !string("channel").unwrap().starts_with('D');
                if in_channel && (string("recipient_user_id").is_none() || string("recipient_team_id").is_none()) {
                    return Some("recipient_user_id and recipient_team_id are required in channels".into());
                }
            }
            "chat.appendStream" => {
                if string("ts").is_none() || string("markdown_text").is_none() {
                    return Some("ts and markdown_text are required".into());
                }
            }
            _ => {
                if string("ts").is_none() {
                    return Some("ts is required".into());
                }
                if object
                    .get("blocks")
                    .and_then(Value::as_array)
                    .is_some_and(|b| b.len() > 50)
                {
                    return Some("more than 50 blocks".into());
                }
            }
        }
        None
    }
}

impl Respond for Documented {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        if let Some(why) = self.refusal(&body) {
            eprintln!("fake Slack refused {}: {why}", self.0);
            return ResponseTemplate::new(200).set_body_json(json!({"ok": false, "error": "invalid_arguments"}));
        }
        let channel = body["channel"].clone();
        ResponseTemplate::new(200).set_body_json(match self.0 {
            "chat.stopStream" => json!({"ok": true, "channel": channel, "ts": STREAM_TS,
                "message": {"type": "message", "user": "U0LAN0Z89", "bot_id": "B0LAN0Z8A", "text": "",
                            "ts": STREAM_TS, "thread_ts": QUESTION_TS, "parent_user_id": "U061F7AUR"}}),
            _ => json!({"ok": true, "channel": channel, "ts": STREAM_TS}),
        })
    }
}

fn streaming_methods() -> Vec<Mock> {
    ["chat.startStream", "chat.appendStream", "chat.stopStream"]
        .into_iter()
        .map(|method| Mock::given(path(format!("/api/{method}"))).respond_with(Documented(method)))
        .collect()
}

/// The app with `first` answers before the documented streaming methods, and a linked
/// asker whose agent writes `pieces`, `pause` apart.
async fn spawn(first: Vec<Mock>, env: Vec<(&'static str, String)>, pieces: &[&str], pause: Duration) -> TestApp {
    let app = TestApp::spawn_with(Options {
        slack_mocks: first.into_iter().chain(streaming_methods()).collect(),
        extra_env: env,
        ..Options::default()
    })
    .await;
    app.link_asker().await;
    *app.agent.pieces.lock().unwrap() = Some((pieces.iter().map(|p| p.to_string()).collect(), pause));
    app
}

/// Every text the stream was given, in order, as the person reads it.
async fn streamed_text(app: &TestApp) -> String {
    let mut text = String::new();
    for method in ["chat.startStream", "chat.appendStream", "chat.stopStream"] {
        for call in app.slack_calls(method).await {
            text.push_str(call["markdown_text"].as_str().unwrap_or_default());
        }
    }
    text.replace('\u{200B}', "")
}

/// Pieces of 30 characters: ten of them make 300.
fn pieces() -> Vec<String> {
    (0..10).map(|i| format!("Piece {i} of the answer, fine. ")).collect()
}

#[tokio::test]
async fn an_answer_streams_into_the_thread_as_it_is_written_throttled_and_the_rest_ends_it() {
    let pieces = pieces();
    let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
    let app = spawn(vec![], vec![], &refs, Duration::from_millis(40)).await;
    *app.agent.table.lock().unwrap() = Some(Table::of(
        vec!["region".into(), "orders".into()],
        vec![vec![Some("EMEA".into()), Some("42".into())]],
    ));
    app.post_event(&mention("Ev0STREAM1", "<@U0LAN0Z89> how many orders?"))
        .await;
    let stop = &app.wait_for_calls("chat.stopStream", 1).await[0];

    let start = &app.slack_calls("chat.startStream").await[0];
    assert_eq!(start["channel"], CHANNEL);
    assert_eq!(start["thread_ts"], QUESTION_TS, "a reply in the question's thread");
    assert_eq!(
        (&start["recipient_user_id"], &start["recipient_team_id"]),
        (&json!("U061F7AUR"), &json!("T061EG9R6"))
    );
    assert_eq!(start["markdown_text"], pieces[0].as_str(), "the first words start it");
    assert_eq!(streamed_text(&app).await, pieces.concat(), "every word, once, in order");
    let appends = app.slack_calls("chat.appendStream").await;
    assert!(
        !appends.is_empty() && appends.len() <= 3,
        "nine pieces 40 ms apart make at most a few appends (300 ms or 200 characters): {appends:?}"
    );
    assert!(appends.iter().all(|a| a["ts"] == STREAM_TS));

    // The table, the feedback buttons and whose permissions end the stream.
    assert_eq!(stop["ts"], STREAM_TS);
    let blocks = stop["blocks"].to_string();
    assert!(blocks.contains("EMEA"), "{blocks}");
    assert!(blocks.contains("feedback_buttons"), "{blocks}");
    assert!(blocks.contains("Answered with"), "{blocks}");
    // The placeholder made way for the stream; the answer was not posted a second time.
    let deleted = app.slack_calls("chat.delete").await;
    assert!(deleted.iter().any(|d| d["ts"] == PLACEHOLDER_TS), "{deleted:?}");
    let repeated = app
        .slack_calls("chat.update")
        .await
        .into_iter()
        .chain(app.slack_calls("chat.postMessage").await);
    assert!(repeated.into_iter().all(|m| !m.to_string().contains("Piece 9")));
    eventually("the job done", PATIENCE, || async {
        (app.job_states().await == ["done"]).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_stream_slack_refuses_falls_back_to_replacing_the_placeholder() {
    let refused = Mock::given(path("/api/chat.startStream")).respond_with(
        ResponseTemplate::new(200).set_body_json(json!({"ok": false, "error": "channel_type_not_supported"})),
    );
    let app = spawn(
        vec![refused],
        vec![],
        &["All ", "orders ", "shipped."],
        Duration::from_millis(10),
    )
    .await;
    app.post_event(&mention("Ev0STREAM2", "<@U0LAN0Z89> did orders ship?"))
        .await;
    let answer = app.wait_for_answer("All orders shipped.").await;
    assert_eq!(
        answer["ts"], PLACEHOLDER_TS,
        "the placeholder is replaced, as without streaming"
    );
    assert!(app.slack_calls("chat.appendStream").await.is_empty());
    assert!(app.slack_calls("chat.stopStream").await.is_empty());
}

#[tokio::test]
async fn private_answers_do_not_stream() {
    let app = spawn(
        vec![],
        vec![("ANSWER_VISIBILITY", "private".into())],
        &["Only ", "for you."],
        Duration::from_millis(10),
    )
    .await;
    app.post_event(&mention("Ev0STREAM3", "<@U0LAN0Z89> my numbers?")).await;
    let ephemeral = &app.wait_for_calls("chat.postEphemeral", 1).await[0];
    assert!(ephemeral.to_string().contains("Only for you."), "{ephemeral}");
    assert!(app.slack_calls("chat.startStream").await.is_empty());
}

#[tokio::test]
async fn a_rate_limited_append_waits_as_asked_and_loses_no_text() {
    let limited = Mock::given(path("/api/chat.appendStream"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "1"))
        .up_to_n_times(1);
    let pieces = pieces();
    let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
    // 10 pieces 150 ms apart: an append is due every other piece, and the 429's second
    // of waiting ends before the last one.
    let app = spawn(vec![limited], vec![], &refs, Duration::from_millis(150)).await;
    app.post_event(&mention("Ev0STREAM4", "<@U0LAN0Z89> how many orders?"))
        .await;
    let stop = app.wait_for_calls("chat.stopStream", 1).await.remove(0);
    let start = app.slack_calls("chat.startStream").await.remove(0);
    // The first append met the 429; the calls Slack took are the others.
    let appends = app.slack_calls("chat.appendStream").await;
    let text_of = |call: &Value| {
        call["markdown_text"]
            .as_str()
            .unwrap_or_default()
            .replace('\u{200B}', "")
    };
    let taken: Vec<&Value> = std::iter::once(&start).chain(&appends[1..]).chain([&stop]).collect();
    assert_eq!(
        taken.iter().map(|call| text_of(call)).collect::<String>(),
        pieces.concat(),
        "every word, once, in order: {taken:?}"
    );
    let next = appends.get(1).unwrap_or(&stop);
    assert!(
        text_of(next).starts_with(&text_of(&appends[0])),
        "the call after the 429 begins with what it refused: {appends:?} {stop}"
    );
}

#[tokio::test]
async fn an_agent_failing_mid_stream_ends_the_stream_in_words_and_tells_the_asker_why() {
    let app = spawn(
        vec![],
        vec![],
        &["Revenue in EMEA ", "rose by "],
        Duration::from_millis(10),
    )
    .await;
    *app.agent.fail_with.lock().unwrap() = Some(AgentError::Failed("the warehouse was deleted".into()));
    app.post_event(&mention("Ev0STREAM5", "<@U0LAN0Z89> revenue?")).await;
    let stop = &app.wait_for_calls("chat.stopStream", 1).await[0];
    let last = stop["markdown_text"].as_str().unwrap();
    assert!(last.contains("could not finish this answer"), "{stop}");
    assert!(!last.contains("warehouse"), "the reason goes privately: {stop}");
    assert_eq!(streamed_text(&app).await.matches("Revenue in EMEA rose by").count(), 1);
    let told = &app.wait_for_calls("chat.postEphemeral", 1).await[0];
    assert!(told.to_string().contains("the warehouse was deleted"), "{told}");
}

#[tokio::test]
async fn an_agent_failing_for_a_moment_mid_stream_ends_it_and_the_next_try_streams_afresh() {
    let app = spawn(vec![], vec![], &["Counting ", "orders…"], Duration::from_millis(10)).await;
    *app.agent.fail_with.lock().unwrap() = Some(AgentError::transient("Databricks is temporarily unavailable"));
    app.post_event(&mention("Ev0STREAM6", "<@U0LAN0Z89> orders?")).await;
    let stop = &app.wait_for_calls("chat.stopStream", 1).await[0];
    assert!(
        stop["markdown_text"]
            .as_str()
            .unwrap()
            .contains("Interrupted: Databricks is temporarily unavailable"),
        "{stop}"
    );
    *app.agent.fail_with.lock().unwrap() = None;
    app.retry_now(1).await;
    let stops = app.wait_for_calls("chat.stopStream", 2).await;
    assert_eq!(
        app.slack_calls("chat.startStream").await.len(),
        2,
        "the retry streams anew"
    );
    assert!(stops[1]["blocks"].to_string().contains("Answered with"), "{stops:?}");
    eventually("the job done", PATIENCE, || async {
        (app.job_states().await == ["done"]).then_some(())
    })
    .await;
}

// A worker that dies while its agent writes leaves a stream open: the next try of the
// question closes it, in words, before answering again.
#[tokio::test]
async fn a_stream_left_open_by_a_dead_worker_is_closed_by_the_next_try() {
    use crate::common::TestDb;
    use crate::common::app::fake_slack;
    use databricks_slack_bot::clock::Clock;

    let db = TestDb::sqlite();
    let slack = fake_slack(streaming_methods()).await;
    let first = TestApp::spawn_with(Options {
        db: Some(db.url.clone()),
        slack: Some(slack.clone()),
        ..Options::default()
    })
    .await;
    first.link_asker().await;
    *first.agent.pieces.lock().unwrap() = Some((vec!["Half an answer".into()], Duration::from_secs(600)));
    first.post_event(&mention("Ev0STREAM7", "<@U0LAN0Z89> orders?")).await;
    first.wait_for_calls("chat.startStream", 1).await;
    first.server.abort(); // the crash, mid-stream
    let _ = first.server.await;

    let second = TestApp::spawn_with(Options {
        db: Some(db.url.clone()),
        slack: Some(slack.clone()),
        ..Options::default()
    })
    .await;
    // The dead worker's lease runs out.
    second.clock.advance(second.clock.now() - first.clock.now() + 61);
    let stop = &second.wait_for_calls("chat.stopStream", 1).await[0];
    assert_eq!(stop["ts"], STREAM_TS);
    assert!(
        stop["markdown_text"]
            .as_str()
            .unwrap()
            .contains("Interrupted. Answering again below"),
        "{stop}"
    );
    second.wait_for_answer("answer: orders?").await;
    second.stop().await;
}

// End to end with the llm agent: the serving endpoint streams (chunks recorded from a real
// OpenAI-compatible stream), a tool runs as the person, and the model's words stream into
// the thread, the query's table following them.
#[tokio::test]
async fn the_llm_agents_words_stream_from_the_serving_endpoint_into_the_thread() {
    use crate::common::recorded::{model_calls, model_says, model_streams, statement_succeeded};
    use wiremock::matchers::{body_partial_json, method};

    let app = TestApp::spawn_with(Options {
        slack_mocks: streaming_methods(),
        extra_env: vec![
            ("DATABRICKS_SERVING_ENDPOINT", "chat-model".into()),
            ("DATABRICKS_WAREHOUSE_ID", "wh-1".into()),
        ],
        configured_agent: true,
        ..Options::default()
    })
    .await;
    app.link_asker().await;
    let api = &app.databricks.api;
    let tool_call = model_calls(&[(
        "call-1",
        "run_sql",
        r#"{"statement": "SELECT count(*) AS n FROM orders"}"#,
    )]);
    let words = "You have 3 orders, all shipped on time this week.";
    Mock::given(method("POST"))
        .and(path("/serving-endpoints/chat/completions"))
        .and(body_partial_json(json!({"stream": true})))
        .respond_with(model_streams(&tool_call).template())
        .up_to_n_times(1)
        .mount(api)
        .await;
    Mock::given(method("POST"))
        .and(path("/serving-endpoints/chat/completions"))
        .and(body_partial_json(json!({"stream": true})))
        .respond_with(model_streams(&model_says(words)).template())
        .mount(api)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/2.0/sql/statements"))
        .respond_with(ResponseTemplate::new(200).set_body_json(statement_succeeded("st-1", &["n"], json!([["3"]]))))
        .mount(api)
        .await;

    app.post_event(&mention("Ev0STREAM8", "<@U0LAN0Z89> how many orders?"))
        .await;
    let stop = &app.wait_for_calls("chat.stopStream", 1).await[0];
    assert_eq!(streamed_text(&app).await, words, "the model's words, as it wrote them");
    assert!(
        app.slack_calls("chat.startStream").await[0]["markdown_text"]
            .as_str()
            .unwrap()
            .starts_with("You")
    );
    let blocks = stop["blocks"].to_string();
    assert!(blocks.contains("SELECT count(*) AS n FROM orders"), "{blocks}");
    assert!(blocks.contains("Databricks AI"), "{blocks}");
    app.stop().await;
}

// A stream Slack would only end without the answer's blocks is ended with its text, and
// the message follows on its own; when that message fails for a moment, its retry does
// not go through the stream again (nor repeat its text).
#[tokio::test]
async fn a_stream_ended_without_its_blocks_is_not_ended_again_when_its_message_is_retried() {
    use wiremock::matchers::body_string_contains;

    let blocks_refused = Mock::given(path("/api/chat.stopStream"))
        .and(body_string_contains("\"blocks\""))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": false, "error": "invalid_blocks"})));
    let message_fails_once = Mock::given(path("/api/chat.postMessage"))
        .and(body_string_contains("Answered with"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1);
    let app = spawn(
        vec![blocks_refused, message_fails_once],
        vec![],
        &["Orders ", "shipped: 42."],
        Duration::from_millis(10),
    )
    .await;
    app.post_event(&mention("Ev0STREAM9", "<@U0LAN0Z89> orders?")).await;
    app.wait_for_calls("chat.stopStream", 2).await;
    app.retry_now(1).await;
    eventually("the job done", PATIENCE, || async {
        (app.job_states().await == ["done"]).then_some(())
    })
    .await;
    let stops = app.slack_calls("chat.stopStream").await;
    assert_eq!(stops.len(), 2, "with the blocks, then without; never again: {stops:?}");
    let posted = app.slack_calls("chat.postMessage").await;
    let answers: Vec<&Value> = posted
        .iter()
        .filter(|m| m.to_string().contains("Answered with"))
        .collect();
    assert_eq!(answers.len(), 2, "the message, then its retry: {posted:?}");
    assert!(
        posted.iter().all(|m| !m.to_string().contains("shipped: 42.")),
        "the streamed text is not posted again: {posted:?}"
    );
}
