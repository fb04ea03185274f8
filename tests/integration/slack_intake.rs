//! Slack intake end to end: the app on port 0, a fake Slack Web API, real databases.
//! What is asserted is what a person would see (messages posted to the fake Slack) and
//! what was stored.

use std::time::{Duration, Instant};

use crate::common::app::{SIGNING_SECRET, TestApp, fake_slack, mention, slack_calls};
use crate::common::{PATIENCE, TestDb, eventually};
use databricks_slack_bot::agent::AgentError;
use databricks_slack_bot::clock::Clock;
use databricks_slack_bot::crypto::hash_secret;
use databricks_slack_bot::slack::signature::sign;
use serde_json::{Value, json};
use wiremock::matchers::path;
use wiremock::{Mock, ResponseTemplate};

const ASKER_TEAM: &str = "T061EG9R6";
const ASKER: &str = "U061F7AUR";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/slack/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The link id in a connect prompt's button URL.
fn link_id_of(prompt: &Value) -> String {
    let url = prompt["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
        .find_map(|e| e["url"].as_str().map(str::to_owned))
        .expect("the prompt has a URL button");
    url.strip_prefix("https://bot.example.com/link/")
        .expect("the button points at PUBLIC_BASE_URL/link/{id}")
        .to_owned()
}

async fn pending_link(db_url: &str, id: &str) -> Option<(String, String, String, Option<String>, String, i64, i64)> {
    let sql = "SELECT team_id, user_id, channel_id, thread_ts, status, created_at, expires_at FROM pending_links WHERE id_hash = $1";
    let hash = hash_secret(id).to_vec();
    if db_url.starts_with("sqlite") {
        let pool = sqlx::SqlitePool::connect(db_url).await.unwrap();
        sqlx::query_as(sql).bind(hash).fetch_optional(&pool).await.unwrap()
    } else {
        let pool = sqlx::PgPool::connect(db_url).await.unwrap();
        sqlx::query_as(sql).bind(hash).fetch_optional(&pool).await.unwrap()
    }
}

// The "done when": a signed mention from an unlinked person is acked and gets
// exactly one private prompt whose button opens a pending link.
#[tokio::test]
async fn an_unlinked_person_gets_one_private_prompt_whose_button_opens_a_pending_link() {
    for db in TestDb::all().await {
        let app = TestApp::spawn_with(crate::common::app::Options {
            db: Some(db.url.clone()),
            ..Default::default()
        })
        .await;
        let response = app
            .post_event(&mention("Ev1", "<@U0LAN0Z89> how many orders last week?"))
            .await;
        assert_eq!(response.status(), 200, "{}", db.name);

        let prompts = app.wait_for_calls("chat.postEphemeral", 1).await;
        assert_eq!(prompts.len(), 1, "{}", db.name);
        let prompt = &prompts[0];
        assert_eq!(prompt["user"], ASKER, "only the asker sees it");
        assert_eq!(prompt["channel"], "C0LAN2Q65");
        assert!(
            prompt.get("thread_ts").is_none(),
            "Slack hides ephemerals in a thread without replies"
        );
        assert!(prompt.to_string().contains("own Databricks permissions"), "{prompt}");

        let id = link_id_of(prompt);
        let (team, user, channel, thread, status, created, expires) = pending_link(&app.db_url, &id)
            .await
            .expect("the button's link is pending");
        assert_eq!(
            (team.as_str(), user.as_str(), channel.as_str()),
            (ASKER_TEAM, ASKER, "C0LAN2Q65")
        );
        assert_eq!(
            thread.as_deref(),
            Some("1515449522.000016"),
            "the answer will start a thread"
        );
        assert_eq!(status, "pending");
        assert_eq!(expires - created, 600, "ten minutes");
        assert_eq!(
            app.settled_job_states().await,
            ["waiting"],
            "the question waits for the connection"
        );
        assert!(app.slack_calls("chat.postMessage").await.is_empty(), "nothing public");
        assert!(
            app.agent.requests.lock().unwrap().is_empty(),
            "no answer without a link"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn a_direct_message_from_an_unlinked_person_gets_the_prompt_as_a_plain_message() {
    let app = TestApp::spawn().await;
    let event: Value = serde_json::from_str(&fixture("event_message_im.json")).unwrap();
    assert_eq!(app.post_event(&event).await.status(), 200);
    let messages = app.wait_for_calls("chat.postMessage", 1).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["channel"], "D0PNCRP9N");
    assert!(
        messages[0].get("thread_ts").is_none(),
        "answered in the conversation itself"
    );
    link_id_of(&messages[0]);
    assert!(app.slack_calls("chat.postEphemeral").await.is_empty());
    app.stop().await;
}

// A burst of questions gets one prompt; all of them wait for the connection.
#[tokio::test]
async fn questions_asked_right_after_a_prompt_wait_for_the_same_link() {
    let app = TestApp::spawn().await;
    for i in 0..3 {
        app.post_event(&mention(&format!("EvBurst{i}"), "<@U0LAN0Z89> burst"))
            .await;
    }
    app.wait_for_calls("chat.postEphemeral", 1).await;
    eventually("all three questions to wait", PATIENCE, || async {
        (app.job_states().await == ["waiting", "waiting", "waiting"]).then_some(())
    })
    .await;
    assert_eq!(app.settled_job_states().await, ["waiting", "waiting", "waiting"]);
    assert_eq!(app.slack_calls("chat.postEphemeral").await.len(), 1, "one prompt");
    app.stop().await;
}

// A later question brings a new link, which voids the older one.
#[tokio::test]
async fn a_later_question_voids_the_first_link() {
    let app = TestApp::spawn().await;
    app.post_event(&mention("Ev1", "<@U0LAN0Z89> first")).await;
    let first = app.wait_for_calls("chat.postEphemeral", 1).await;
    app.clock.advance(61);
    app.post_event(&mention("Ev2", "<@U0LAN0Z89> second")).await;
    let both = app.wait_for_calls("chat.postEphemeral", 2).await;
    assert_eq!(both.len(), 2);
    let (old, new) = (link_id_of(&first[0]), link_id_of(&both[1]));
    assert_ne!(old, new);
    assert_eq!(pending_link(&app.db_url, &old).await.unwrap().4, "superseded");
    assert_eq!(pending_link(&app.db_url, &new).await.unwrap().4, "pending");
    app.stop().await;
}

#[tokio::test]
async fn a_linked_persons_question_goes_to_the_agent_and_the_answer_to_the_thread() {
    let app = TestApp::spawn().await;
    app.link_asker().await;
    app.post_event(&mention("Ev1", "<@U0LAN0Z89> revenue by <region> & year?"))
        .await;
    // A placeholder in the thread, replaced by the answer.
    let answer = app.wait_for_answer("answer: revenue").await;
    let posts = app.slack_calls("chat.postMessage").await;
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_eq!(posts[0]["channel"], "C0LAN2Q65");
    assert_eq!(posts[0]["thread_ts"], "1515449522.000016");
    assert!(posts[0].to_string().contains("Thinking"), "{}", posts[0]);
    assert_eq!(answer["channel"], "C0LAN2Q65");
    assert_eq!(answer["ts"], "1700000000.000100", "the placeholder's ts");
    let text = answer.to_string();
    assert!(
        text.contains("answer: revenue by &lt;region&gt; &amp; year?"),
        "escaped: {text}"
    );
    assert!(text.contains("asker@example.com"), "says whose permissions: {text}");
    assert_eq!(app.agent.tokens().len(), 1, "the agent got the person's access token");
    assert!(
        app.agent.tokens()[0].starts_with("at-"),
        "a token from the fake Databricks"
    );
    let asked = app.agent.requests.lock().unwrap().clone();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].question, "revenue by <region> & year?");
    assert_eq!(asked[0].context.user.as_str(), ASKER);
    assert!(
        app.slack_calls("chat.postEphemeral").await.is_empty(),
        "no prompt for a linked person"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_prompt_for_a_question_asked_inside_a_thread_stays_in_that_thread() {
    let app = TestApp::spawn().await;
    let event: Value = serde_json::from_str(&fixture("event_app_mention_in_thread.json")).unwrap();
    app.post_event(&event).await;
    let prompts = app.wait_for_calls("chat.postEphemeral", 1).await;
    assert_eq!(prompts[0]["thread_ts"], "1515449522.000016");
    app.stop().await;
}

#[tokio::test]
async fn an_empty_mention_gets_a_short_help_reply() {
    let app = TestApp::spawn().await;
    app.post_event(&mention("Ev1", "<@U0LAN0Z89>  ")).await;
    let help = app.wait_for_calls("chat.postEphemeral", 1).await;
    assert_eq!(help.len(), 1);
    assert!(help[0].to_string().contains("Ask me a question"), "{}", help[0]);
    assert_eq!(
        app.settled_job_states().await,
        ["done"],
        "nothing waits on an empty question"
    );
    app.stop().await;
}

// EVT-05: someone from another organisation in a shared channel gets no link.
#[tokio::test]
async fn a_person_from_another_organisation_is_politely_refused() {
    let app = TestApp::spawn_with(crate::common::app::Options {
        slack_mocks: vec![
            Mock::given(path("/api/users.info")).respond_with(ResponseTemplate::new(200).set_body_json(
                json!({"ok": true, "user": {"id": ASKER, "team_id": "TOTHERORG", "is_stranger": true}}),
            )),
        ],
        ..Default::default()
    })
    .await;
    app.post_event(&mention("Ev1", "<@U0LAN0Z89> show me your data")).await;
    let replies = app.wait_for_calls("chat.postEphemeral", 1).await;
    assert_eq!(replies.len(), 1);
    assert!(
        replies[0]
            .to_string()
            .contains("only answer people from this workspace"),
        "{}",
        replies[0]
    );
    assert_eq!(app.settled_job_states().await, ["done"], "no link offered");
    app.stop().await;
}

// EVT-02: one answer however many times Slack delivers the event.
#[tokio::test]
async fn the_same_event_delivered_four_times_makes_one_job_and_one_prompt() {
    let app = TestApp::spawn().await;
    let event = mention("EvRetry", "<@U0LAN0Z89> retried question");
    for retry in ["", "1", "2", "3"] {
        let extra: Vec<(&str, &str)> = if retry.is_empty() {
            vec![]
        } else {
            vec![("x-slack-retry-num", retry), ("x-slack-retry-reason", "http_timeout")]
        };
        let r = app
            .post_signed("/slack/events", "application/json", &event.to_string(), &extra)
            .await;
        assert_eq!(r.status(), 200, "every delivery is acknowledged");
    }
    app.wait_for_calls("chat.postEphemeral", 1).await;
    // Every delivery was stored or found a duplicate before its ack, and a worker posts
    // before it records the outcome: once every job has settled, no other prompt can come.
    let settled = app.settled_job_states().await;
    assert_eq!(app.slack_calls("chat.postEphemeral").await.len(), 1);
    assert_eq!(settled, ["waiting"]);
    app.stop().await;
}

// EVT-02 across replicas: two processes sharing Postgres, the same event to both at once.
#[tokio::test]
async fn the_same_event_reaching_two_replicas_on_postgres_is_answered_once() {
    let Some(db) = TestDb::postgres().await else { return };
    let slack = fake_slack(Vec::new()).await;
    let replica = || {
        TestApp::spawn_with(crate::common::app::Options {
            db: Some(db.url.clone()),
            slack: Some(slack.clone()),
            ..Default::default()
        })
    };
    let (a, b) = (replica().await, replica().await);
    let event = mention("EvTwoReplicas", "<@U0LAN0Z89> which replica answers?");
    let (ra, rb) = tokio::join!(a.post_event(&event), b.post_event(&event));
    assert_eq!((ra.status().as_u16(), rb.status().as_u16()), (200, 200));
    a.wait_for_calls("chat.postEphemeral", 1).await;
    // Both deliveries were stored or found a duplicate before their acks: once every job
    // (in the shared database) has settled, neither replica can post another prompt.
    let settled = a.settled_job_states().await;
    assert_eq!(slack_calls(&slack, "chat.postEphemeral").await.len(), 1);
    assert_eq!(settled, ["waiting"]);
    a.stop().await;
    b.stop().await;
}

// EVT-03
#[tokio::test]
async fn our_own_messages_and_bot_messages_produce_nothing() {
    let app = TestApp::spawn().await;
    let bot: Value = serde_json::from_str(&fixture("event_message_im_from_bot.json")).unwrap();
    let mut own = mention("EvOwn", "<@U0LAN0Z89> echo");
    own["event"]["user"] = json!("U0LAN0Z89");
    let mut edited: Value = serde_json::from_str(&fixture("event_message_im.json")).unwrap();
    edited["event"]["subtype"] = json!("message_changed");
    edited["event_id"] = json!("EvEdit");
    for event in [&bot, &own, &edited] {
        assert_eq!(app.post_event(event).await.status(), 200);
    }
    // A fixed wait: an ignored event leaves no trace, so there is no end event to await.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let requests = app.slack.received_requests().await.unwrap();
    assert!(requests.is_empty(), "nothing posted: {requests:?}");
    assert!(app.job_states().await.is_empty());
    app.stop().await;
}

// EVT-01: a downstream that takes 10 s does not slow the acknowledgement (REL-04, in
// part: a hanging agent leaves Slack's acknowledgements alone).
#[tokio::test]
async fn the_ack_returns_at_once_even_when_slack_and_the_agent_are_slow() {
    let app = TestApp::spawn_with(crate::common::app::Options {
        slack_mocks: vec![
            Mock::given(path("/api/chat.postMessage"))
                .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(10))),
        ],
        ..Default::default()
    })
    .await;
    app.link_asker().await;
    *app.agent.delay.lock().unwrap() = Some(Duration::from_secs(10));
    let started = Instant::now();
    for i in 0..5 {
        let r = app
            .post_event(&mention(&format!("EvSlow{i}"), "<@U0LAN0Z89> slow?"))
            .await;
        assert_eq!(r.status(), 200);
    }
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(1), "5 acks took {elapsed:?}");
    assert_eq!(app.job_states().await.len(), 5, "all five are queued before the ack");
    app.lifecycle.begin_shutdown();
}

// REL-06: acknowledged, then the process dies before answering; the next one answers once.
#[tokio::test]
async fn a_question_acknowledged_before_a_crash_is_answered_once_after_restart() {
    for db in TestDb::all().await {
        let slack = fake_slack(Vec::new()).await;
        let first = TestApp::spawn_with(crate::common::app::Options {
            db: Some(db.url.clone()),
            slack: Some(slack.clone()),
            workers: None,
            ..Default::default()
        })
        .await;
        assert_eq!(
            first
                .post_event(&mention("EvCrash", "<@U0LAN0Z89> still there?"))
                .await
                .status(),
            200
        );
        first.server.abort(); // the crash
        let _ = first.server.await;

        let second = TestApp::spawn_with(crate::common::app::Options {
            db: Some(db.url.clone()),
            slack: Some(slack.clone()),
            ..Default::default()
        })
        .await;
        second.wait_for_calls("chat.postEphemeral", 1).await;
        // Once the job has settled, no other prompt can come.
        let settled = second.settled_job_states().await;
        assert_eq!(slack_calls(&slack, "chat.postEphemeral").await.len(), 1, "{}", db.name);
        assert_eq!(settled, ["waiting"]);
        second.stop().await;
    }
}

#[tokio::test]
async fn when_slack_refuses_an_ephemeral_the_prompt_goes_by_direct_message() {
    let app = TestApp::spawn_with(crate::common::app::Options {
        slack_mocks: vec![Mock::given(path("/api/chat.postEphemeral")).respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"ok": false, "error": "user_not_in_channel"})),
        )],
        ..Default::default()
    })
    .await;
    app.post_event(&mention("Ev1", "<@U0LAN0Z89> hello?")).await;
    let dms = app.wait_for_calls("chat.postMessage", 1).await;
    assert_eq!(dms.len(), 1);
    assert_eq!(
        dms[0]["channel"], "D0DM000001",
        "the DM that conversations.open returned"
    );
    link_id_of(&dms[0]);
    let opened = app.slack_calls("conversations.open").await;
    assert_eq!(opened[0]["users"], json!(ASKER), "a string, as Slack documents it");
    app.stop().await;
}

// REL-05 for Slack: a 429 is waited out and the message still arrives.
#[tokio::test]
async fn a_rate_limited_post_is_retried_after_retry_after() {
    let app = TestApp::spawn_with(crate::common::app::Options {
        slack_mocks: vec![
            Mock::given(path("/api/chat.postEphemeral"))
                .respond_with(
                    ResponseTemplate::new(429)
                        .insert_header("retry-after", "1")
                        .set_body_json(json!({"ok": false, "error": "ratelimited"})),
                )
                .up_to_n_times(1),
        ],
        ..Default::default()
    })
    .await;
    app.post_event(&mention("Ev1", "<@U0LAN0Z89> hello?")).await;
    let calls = app.wait_for_calls("chat.postEphemeral", 2).await;
    assert_eq!(calls.len(), 2, "one refused, one delivered");
    eventually("the question to wait", PATIENCE, || async {
        (app.job_states().await == ["waiting"]).then_some(())
    })
    .await;
    assert_eq!(app.settled_job_states().await, ["waiting"]);
    app.stop().await;
}

// A question that keeps failing ends with a message to the person, never silence (REL-04,
// in part: after bounded retries the person hears it is temporarily unavailable).
#[tokio::test]
async fn a_question_that_keeps_failing_ends_with_a_message_to_the_person() {
    let app = TestApp::spawn_with(crate::common::app::Options {
        workers: Some(databricks_slack_bot::jobs::worker::WorkerConfig {
            max_attempts: 3,
            ..crate::common::app::fast_workers()
        }),
        ..Default::default()
    })
    .await;
    app.link_asker().await;
    *app.agent.fail_with.lock().unwrap() = Some(AgentError::transient("warehouse starting"));
    app.post_event(&mention("Ev1", "<@U0LAN0Z89> will this work?")).await;
    // Let each backoff pass only once the failed run is recorded: moving the clock while a
    // run is under way could lapse its lease and have the job taken twice.
    app.retry_now(1).await;
    app.retry_now(2).await;
    assert_eq!(app.settled_job_states().await, ["failed"]);
    assert_eq!(app.agent.requests.lock().unwrap().len(), 3, "three attempts");
    let told = app.wait_for_calls("chat.postEphemeral", 1).await;
    assert_eq!(told.len(), 1);
    let text = told[0].to_string();
    assert!(text.contains("couldn't answer") && text.contains("job-"), "{text}");
    assert!(
        text.contains("warehouse starting; please try again in a few minutes"),
        "an agent's transient reason is written for the person: {text}"
    );
    // One placeholder throughout: it says why it waits between tries, each try takes it
    // over again, and it goes when the person is told.
    let placeholders = app.slack_calls("chat.postMessage").await;
    assert_eq!(placeholders.len(), 1, "{placeholders:?}");
    let updates = app.slack_calls("chat.update").await;
    let shown: Vec<&str> = updates.iter().map(|u| u["text"].as_str().unwrap()).collect();
    let busy = "Taking longer than usual — I'll try again in a moment…";
    assert_eq!(shown, [busy, "Thinking…", busy, "Thinking…", busy]);
    let deleted = app.slack_calls("chat.delete").await;
    assert_eq!(deleted.len(), 1, "removed once, at the end");
    assert!(updates.iter().all(|u| u["ts"] == deleted[0]["ts"]), "{updates:?}");
    app.stop().await;
}

// REL-04: once the agent has failed five times in a row, further questions wait in the
// queue for the pause instead of tying up workers on it; when it answers again every
// question is answered — nothing dropped, nobody told of a failure.
#[tokio::test]
async fn an_agent_that_keeps_failing_is_given_a_pause_and_no_question_is_lost() {
    let app = TestApp::spawn_with(crate::common::app::Options {
        workers: Some(databricks_slack_bot::jobs::worker::WorkerConfig {
            per_user_limit: 1, // one question at a time, so the count is exact
            ..crate::common::app::fast_workers()
        }),
        ..Default::default()
    })
    .await;
    app.link_asker().await;
    *app.agent.fail_with.lock().unwrap() = Some(AgentError::transient("Databricks is temporarily unavailable"));
    for i in 1..=7 {
        // Seven mentions, each starting its own thread.
        let mut event = mention(&format!("Ev{i}"), &format!("<@U0LAN0Z89> question {i}?"));
        event["event"]["ts"] = json!(format!("1515449522.00001{i}"));
        app.post_event(&event).await;
    }
    eventually("every question to have been tried once", PATIENCE, || async {
        let jobs = app.jobs().await;
        (jobs.len() == 7 && jobs.iter().all(|(state, runs)| state == "queued" && *runs == 1)).then_some(())
    })
    .await;
    let asked = || app.agent.requests.lock().unwrap().len();
    assert_eq!(asked(), 5, "the agent was left alone after five failures in a row");
    assert_eq!(
        app.job_states().await,
        ["queued"; 7],
        "every question waits to be asked again"
    );

    *app.agent.fail_with.lock().unwrap() = None;
    app.clock.advance(301); // past the pause and every backoff
    assert_eq!(app.settled_job_states().await, ["done"; 7]);
    for i in 1..=7 {
        app.wait_for_answer(&format!("answer: question {i}?")).await;
    }
    assert!(
        app.slack_calls("chat.postEphemeral").await.is_empty(),
        "nobody was told of a failure"
    );
    app.stop().await;
}

// SIG-01 through the running app, with the clock fixed at the vector's timestamp.
#[tokio::test]
async fn slacks_official_signing_vector_is_accepted_with_a_fixed_clock() {
    let vector: Value = serde_json::from_str(include_str!("../fixtures/slack-signing-vector.json")).unwrap();
    let app = TestApp::spawn_with(crate::common::app::Options {
        extra_env: vec![(
            "SLACK_SIGNING_SECRET",
            vector["signing_secret"].as_str().unwrap().to_owned(),
        )],
        ..Default::default()
    })
    .await;
    app.clock.set(vector["timestamp"].as_str().unwrap().parse().unwrap());
    let response = app
        .client
        .post(app.url("/slack/commands"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", vector["timestamp"].as_str().unwrap())
        .header("x-slack-signature", vector["signature"].as_str().unwrap())
        .body(vector["body"].as_str().unwrap().to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["response_type"], "ephemeral");

    app.clock.advance(301);
    let stale = app
        .client
        .post(app.url("/slack/commands"))
        .header("x-slack-request-timestamp", vector["timestamp"].as_str().unwrap())
        .header("x-slack-signature", vector["signature"].as_str().unwrap())
        .body(vector["body"].as_str().unwrap().to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 401, "the same request is stale five minutes later");
    app.stop().await;
}

// SIG-02..SIG-07: every forgery is an opaque 401 and nothing happens.
#[tokio::test]
async fn forged_stale_and_garbled_requests_get_401_and_change_nothing() {
    let app = TestApp::spawn().await;
    let body = mention("EvForged", "<@U0LAN0Z89> forged").to_string();
    let now = app.clock.now();
    let good = sign(SIGNING_SECRET, now, body.as_bytes());
    // (case, headers as ("ts" | "sig", value), body)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, String);
    let cases: Vec<Case> = vec![
        (
            "mutated body",
            vec![("ts", now.to_string()), ("sig", good.clone())],
            body.replace("forged", "f0rged"),
        ),
        (
            "301 s old",
            vec![
                ("ts", (now - 301).to_string()),
                ("sig", sign(SIGNING_SECRET, now - 301, body.as_bytes())),
            ],
            body.clone(),
        ),
        (
            "301 s ahead",
            vec![
                ("ts", (now + 301).to_string()),
                ("sig", sign(SIGNING_SECRET, now + 301, body.as_bytes())),
            ],
            body.clone(),
        ),
        ("no headers", vec![], body.clone()),
        ("no signature", vec![("ts", now.to_string())], body.clone()),
        (
            "garbled signature",
            vec![("ts", now.to_string()), ("sig", "v0=zz".into())],
            body.clone(),
        ),
        (
            "wrong version",
            vec![("ts", now.to_string()), ("sig", good.replace("v0=", "v1="))],
            body.clone(),
        ),
        (
            "garbled timestamp",
            vec![("ts", "yesterday".into()), ("sig", good.clone())],
            body.clone(),
        ),
        (
            "other secret",
            vec![
                ("ts", now.to_string()),
                ("sig", sign("not-the-secret", now, body.as_bytes())),
            ],
            body.clone(),
        ),
    ];
    for route in ["/slack/events", "/slack/commands", "/slack/interactions"] {
        for (name, headers, body) in &cases {
            let mut request = app.client.post(app.url(route)).body(body.clone());
            for (k, v) in headers {
                let header = if *k == "ts" {
                    "x-slack-request-timestamp"
                } else {
                    "x-slack-signature"
                };
                request = request.header(header, v);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{route}: {name}");
            assert!(response.text().await.unwrap().is_empty(), "{route}: {name}: opaque");
        }
    }
    // A signed url_verification with a bad signature does not echo the challenge (SIG-07c).
    let challenge = fixture("url_verification.json");
    let r = app
        .client
        .post(app.url("/slack/events"))
        .header("x-slack-request-timestamp", now.to_string())
        .header("x-slack-signature", sign("wrong", now, challenge.as_bytes()))
        .body(challenge.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(!r.text().await.unwrap().contains("3eZbrw1a"));

    // A fixed wait: a refused request leaves no trace, so there is no end event to await.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(app.job_states().await.is_empty(), "no job from a forgery");
    assert!(
        app.slack.received_requests().await.unwrap().is_empty(),
        "no Slack call from a forgery"
    );
    app.stop().await;
}

// SIG-06
#[tokio::test]
async fn an_oversize_signed_body_is_refused_with_413_before_anything_runs() {
    let app = TestApp::spawn().await;
    let mut event = mention("EvBig", "x");
    event["event"]["text"] = json!("x".repeat(300 * 1024));
    let r = app.post_event(&event).await;
    assert_eq!(r.status(), 413);
    assert!(app.job_states().await.is_empty());
    app.stop().await;
}

// SIG-07: the challenge is echoed exactly; the legacy token field is ignored either way.
#[tokio::test]
async fn url_verification_echoes_the_challenge_and_the_legacy_token_is_ignored() {
    let app = TestApp::spawn().await;
    let r = app
        .post_signed(
            "/slack/events",
            "application/json",
            &fixture("url_verification.json"),
            &[],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    );

    let mut event = mention("EvToken", "<@U0LAN0Z89> token?");
    event["token"] = json!("a-wrong-legacy-token");
    assert_eq!(app.post_event(&event).await.status(), 200);
    assert_eq!(app.wait_for_calls("chat.postEphemeral", 1).await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn malformed_and_unknown_payloads_get_clear_answers_and_no_panic() {
    let app = TestApp::spawn().await;
    let malformed = app
        .post_signed("/slack/events", "application/json", "{not json", &[])
        .await;
    assert_eq!(malformed.status(), 400);
    assert_eq!(malformed.headers()["x-slack-no-retry"], "1");

    let unknown = json!({"type": "event_callback", "team_id": "T061EG9R6", "api_app_id": "A1", "event_id": "EvNew",
                         "event_time": 1, "event": {"type": "brand_new_event", "foo": 1}});
    assert_eq!(app.post_event(&unknown).await.status(), 200);
    let unknown_envelope = json!({"type": "something_else"});
    assert_eq!(app.post_event(&unknown_envelope).await.status(), 400);

    let bad_interaction = app
        .post_signed(
            "/slack/interactions",
            "application/x-www-form-urlencoded",
            "payload=%7Bnope",
            &[],
        )
        .await;
    assert_eq!(bad_interaction.status(), 400);
    let ssl_check = app
        .client
        .post(app.url("/slack/commands"))
        .body("ssl_check=1&token=x")
        .send()
        .await
        .unwrap();
    assert_eq!(ssl_check.status(), 200, "Slack's unsigned ssl_check probe");
    assert_eq!(app.get("/healthz").await.0, 200, "still serving");
    assert!(app.job_states().await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn clicking_the_connect_button_is_acknowledged() {
    let app = TestApp::spawn().await;
    let mut payload: Value = serde_json::from_str(&fixture("block_actions_disconnect.json")).unwrap();
    payload["actions"][0]["action_id"] = json!("connect_databricks");
    payload["actions"][0]["value"] = json!(null);
    assert_eq!(app.post_interaction(&payload).await, 200);
    app.stop().await;
}

// EVT-05: a link belongs to (team, user). The same user id asking from another workspace
// (here one whose users.info says so, so the person is not a stranger there) finds no
// link: they get a prompt of their own for that workspace, and the linked person's token
// is never touched.
#[tokio::test]
async fn the_same_user_id_in_another_workspace_does_not_use_this_workspaces_link() {
    let app = TestApp::spawn_with(crate::common::app::Options {
        slack_mocks: vec![
            Mock::given(path("/api/users.info")).respond_with(ResponseTemplate::new(200).set_body_json(
                json!({"ok": true, "user": {"id": ASKER, "team_id": "T0OTHERWS", "is_bot": false, "name": "alice",
                       "profile": {"email": "asker@example.com"}}}),
            )),
        ],
        ..Default::default()
    })
    .await;
    app.link_asker().await;
    let mut event = mention("EvOtherTeam", "<@U0LAN0Z89> whose data is this?");
    event["team_id"] = json!("T0OTHERWS");
    event["event"]["team"] = json!("T0OTHERWS");
    event["authorizations"][0]["team_id"] = json!("T0OTHERWS");
    assert_eq!(app.post_event(&event).await.status(), 200);

    let prompts = app.wait_for_calls("chat.postEphemeral", 1).await;
    assert_eq!(prompts.len(), 1);
    assert_eq!(prompts[0]["user"], ASKER);
    let (team, user, ..) = pending_link(&app.db_url, &link_id_of(&prompts[0]))
        .await
        .expect("a pending link");
    assert_eq!((team.as_str(), user.as_str()), ("T0OTHERWS", ASKER));
    assert_eq!(app.settled_job_states().await, ["waiting"]);
    assert!(app.agent.requests.lock().unwrap().is_empty(), "no answer");
    assert!(
        app.databricks.token_requests().is_empty(),
        "the other workspace's link was not used"
    );
    assert!(app.slack_calls("chat.postMessage").await.is_empty());
    app.stop().await;
}

// SIG-05: the signature is checked over the bytes as sent, before anything parses them.
// Signed JSON with its own spacing is accepted; the same JSON re-serialised, under the
// same signature, is refused.
#[tokio::test]
async fn the_signature_covers_the_body_as_sent_not_as_re_serialised() {
    let app = TestApp::spawn().await;
    let event = mention("EvRaw", "<@U0LAN0Z89> raw bytes?");
    let as_sent = serde_json::to_string_pretty(&event).unwrap();
    let now = app.clock.now();
    let signature = sign(SIGNING_SECRET, now, as_sent.as_bytes());
    let post = |body: String| {
        app.client
            .post(app.url("/slack/events"))
            .header("content-type", "application/json")
            .header("x-slack-request-timestamp", now.to_string())
            .header("x-slack-signature", &signature)
            .body(body)
            .send()
    };
    let re_serialised = serde_json::to_string(&serde_json::from_str::<Value>(&as_sent).unwrap()).unwrap();
    assert_ne!(re_serialised, as_sent);
    assert_eq!(post(re_serialised).await.unwrap().status(), 401);
    assert!(app.job_states().await.is_empty());

    assert_eq!(post(as_sent).await.unwrap().status(), 200);
    assert_eq!(app.wait_for_calls("chat.postEphemeral", 1).await.len(), 1);
    assert_eq!(app.settled_job_states().await, ["waiting"]);
    app.stop().await;
}

// LOG-02: every refused Slack request leaves a warning with the route and a reason code
// (and nothing of what was sent), while the caller only sees an empty 401.
#[tokio::test]
async fn a_refused_signature_is_logged_with_its_reason_and_the_caller_learns_nothing() {
    let logs = crate::common::logs::Captured::default();
    // This test's runtime is single-threaded, so the app's request handling logs here.
    let _guard = tracing::subscriber::set_default(logs.subscriber());
    let app = TestApp::spawn().await;
    let body = mention("EvLogged", "<@U0LAN0Z89> body-CANARY").to_string();
    let now = app.clock.now();
    let forged = sign("not-the-secret", now, body.as_bytes());
    let cases = [
        (
            "signature does not match",
            vec![
                ("x-slack-request-timestamp", now.to_string()),
                ("x-slack-signature", forged.clone()),
            ],
        ),
        (
            "timestamp is more than 300 seconds from now",
            vec![
                ("x-slack-request-timestamp", (now - 301).to_string()),
                ("x-slack-signature", sign(SIGNING_SECRET, now - 301, body.as_bytes())),
            ],
        ),
        ("missing or repeated signature headers", vec![]),
    ];
    for (reason, headers) in &cases {
        let mut request = app.client.post(app.url("/slack/events")).body(body.clone());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{reason}");
        assert!(response.text().await.unwrap().is_empty(), "{reason}: opaque");
    }
    app.stop().await;

    let logs = logs.text();
    let refusals: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("refused a request that is not signed by Slack"))
        .collect();
    assert_eq!(refusals.len(), cases.len(), "{logs}");
    for ((reason, _), line) in cases.iter().zip(&refusals) {
        assert!(line.contains("WARN") && line.contains("/slack/events"), "{line}");
        assert!(line.contains(reason), "{reason} not in {line}");
    }
    assert!(!logs.contains("CANARY") && !logs.contains(&forged), "{logs}");
    assert!(!logs.contains(SIGNING_SECRET));
}

// LOG-02: a flood of forged requests writes one line per reason and window, with the
// count of those left out — not a line each.
#[tokio::test]
async fn a_flood_of_forged_requests_is_logged_once_per_window_with_a_count() {
    let logs = crate::common::logs::Captured::default();
    let _guard = tracing::subscriber::set_default(logs.subscriber());
    let app = TestApp::spawn().await;
    let body = mention("EvFlood", "<@U0LAN0Z89> hi").to_string();
    let forge = |app: &TestApp| {
        let now = app.clock.now();
        app.client
            .post(app.url("/slack/events"))
            .header("x-slack-request-timestamp", now.to_string())
            .header("x-slack-signature", sign("not-the-secret", now, body.as_bytes()))
            .body(body.clone())
            .send()
    };
    for _ in 0..30 {
        assert_eq!(forge(&app).await.unwrap().status(), 401);
    }
    app.clock.advance(10);
    assert_eq!(forge(&app).await.unwrap().status(), 401);
    app.stop().await;

    let logs = logs.text();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("refused a request that is not signed by Slack"))
        .collect();
    assert_eq!(lines.len(), 2, "{logs}");
    assert!(lines[0].contains("not_logged_since_last=0"), "{}", lines[0]);
    assert!(lines[1].contains("not_logged_since_last=29"), "{}", lines[1]);
}

// Issue 11: two follow-ups in one thread sent 50 ms apart: the second is asked only after
// the first is answered (a Genie conversation never has two runs at once), while a
// question in another thread runs beside them.
#[tokio::test]
async fn follow_ups_in_one_thread_are_answered_one_after_another() {
    let app = TestApp::spawn().await;
    app.link_asker().await;
    *app.agent.delay.lock().unwrap() = Some(Duration::from_millis(300));
    let in_thread = |event_id: &str, text: &str| {
        let mut event = mention(event_id, text);
        event["event"]["ts"] = json!(format!("1515449600.00010{}", &event_id[2..]));
        event["event"]["thread_ts"] = json!("1515449522.000016");
        event
    };
    app.post_event(&in_thread("Ev1", "<@U0LAN0Z89> first")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    app.post_event(&in_thread("Ev2", "<@U0LAN0Z89> second")).await;
    let mut elsewhere = mention("Ev3", "<@U0LAN0Z89> elsewhere");
    elsewhere["event"]["ts"] = json!("1515449999.000001");
    app.post_event(&elsewhere).await;
    assert_eq!(app.settled_job_states().await, ["done", "done", "done"]);
    let order = app.agent.finished_before.lock().unwrap().clone();
    let asked = |question: &str| order.iter().find(|(q, _)| q == question).unwrap().1;
    assert_eq!(asked("first"), 0);
    assert!(
        asked("second") >= 1,
        "the follow-up waited for the first answer: {order:?}"
    );
    assert!(
        asked("elsewhere") < 2,
        "another thread did not wait for both: {order:?}"
    );
    app.stop().await;
}

/// `users.info` for the asker as a person of an Enterprise Grid org, homed in `team`.
fn grid_person(team: &str, enterprise: &str) -> Mock {
    Mock::given(path("/api/users.info")).respond_with(ResponseTemplate::new(200).set_body_json(json!({
        "ok": true,
        "user": {"id": ASKER, "team_id": team, "is_bot": false, "name": "alice",
                 "enterprise_user": {"id": ASKER, "enterprise_id": enterprise, "enterprise_name": "Org",
                                     "is_admin": false, "is_owner": false, "teams": [team]}}})))
}

/// `auth.test` for a bot whose workspace belongs to the grid org `enterprise`.
fn grid_bot(enterprise: &str) -> Mock {
    Mock::given(path("/api/auth.test")).respond_with(ResponseTemplate::new(200).set_body_json(json!({
        "ok": true, "user_id": "U0LAN0Z89", "team_id": ASKER_TEAM, "team": "Acme",
        "url": "https://acme.slack.com/", "bot_id": "B0LAN0Z8A",
        "enterprise_id": enterprise, "is_enterprise_install": true})))
}

/// The teams the stored jobs are keyed under.
async fn job_teams(app: &TestApp) -> Vec<String> {
    crate::common::app::rows::<(String,)>(&app.db_url, "SELECT team_id FROM jobs ORDER BY id")
        .await
        .into_iter()
        .map(|(team,)| team)
        .collect()
}

// EVT-05 / Enterprise Grid: an org-wide install's mention, whose authorization names no
// workspace (`team_id: null`), is read, keyed to the workspace it was asked in, answered.
#[tokio::test]
async fn an_org_wide_install_mention_is_answered_in_the_workspace_it_was_asked_in() {
    let app = TestApp::spawn().await;
    let event: Value = serde_json::from_str(&fixture("event_app_mention_org_wide.json")).unwrap();
    assert!(event["authorizations"][0]["team_id"].is_null());
    let response = app.post_event(&event).await;
    assert_eq!(response.status(), 200);
    let prompts = app.wait_for_calls("chat.postEphemeral", 1).await;
    assert_eq!(prompts[0]["user"], "W061F7AUR");
    assert!(
        prompts[0].to_string().contains("https://bot.example.com/link/"),
        "{}",
        prompts[0]
    );
    assert_eq!(job_teams(&app).await, [ASKER_TEAM]);
    app.stop().await;
}

// Slack Connect: the envelope can name the workspace a message came from; the link key is
// the installation's workspace, from `authorizations`, as Bolt reads it.
#[tokio::test]
async fn a_shared_channel_mention_is_keyed_to_the_installations_workspace() {
    let app = TestApp::spawn().await;
    let mut event = mention("EvShared", "<@U0LAN0Z89> how are sales?");
    event["team_id"] = json!("T0OTHERORG");
    event["is_ext_shared_channel"] = json!(true);
    app.post_event(&event).await;
    app.wait_for_calls("chat.postEphemeral", 1).await;
    assert_eq!(job_teams(&app).await, [ASKER_TEAM]);
    app.stop().await;
}

// EVT-05: a person of another Enterprise Grid org (Slack Connect between two grids) is
// external even when Slack does not mark them `is_stranger`; a person of the bot's own
// org homed in another of its workspaces is a member.
#[tokio::test]
async fn a_grid_person_is_a_member_only_of_their_own_organisation() {
    for (their_org, refused) in [("E0OTHERORG", true), ("E0GRIDORG", false)] {
        let app = TestApp::spawn_with(crate::common::app::Options {
            slack_mocks: vec![grid_person("T0SECONDWS", their_org), grid_bot("E0GRIDORG")],
            ..Default::default()
        })
        .await;
        app.post_event(&mention("EvGrid", "<@U0LAN0Z89> show me the numbers"))
            .await;
        let replies = app.wait_for_calls("chat.postEphemeral", 1).await;
        let reply = replies[0].to_string();
        assert_eq!(
            reply.contains("only answer people from this workspace"),
            refused,
            "{their_org}: {reply}"
        );
        assert_eq!(reply.contains("/link/"), !refused, "{their_org}: {reply}");
        app.stop().await;
    }
}

// The same with a bot outside any grid org: an enterprise user homed elsewhere is external.
#[tokio::test]
async fn a_grid_person_is_external_to_a_workspace_outside_any_grid() {
    let app = TestApp::spawn_with(crate::common::app::Options {
        slack_mocks: vec![grid_person("T0SECONDWS", "E0GRIDORG")],
        ..Default::default()
    })
    .await;
    app.post_event(&mention("EvNoGrid", "<@U0LAN0Z89> show me the numbers"))
        .await;
    let replies = app.wait_for_calls("chat.postEphemeral", 1).await;
    assert!(
        replies[0]
            .to_string()
            .contains("only answer people from this workspace"),
        "{}",
        replies[0]
    );
    app.stop().await;
}

// An org-wide install's click may carry `team: null`: the clicker's workspace stands in.
#[tokio::test]
async fn an_org_wide_click_without_a_team_reaches_the_clickers_link() {
    let app = TestApp::spawn().await;
    app.link_asker().await;
    let mut payload: Value = serde_json::from_str(&fixture("block_actions_disconnect.json")).unwrap();
    payload["team"] = Value::Null;
    payload["response_url"] = json!(format!("{}/response/grid", app.slack.uri()));
    assert_eq!(app.post_interaction(&payload).await, 200);
    assert_eq!(app.settled_job_states().await, ["done"]);
    let team = databricks_slack_bot::domain::TeamId::parse(ASKER_TEAM).unwrap();
    let user = databricks_slack_bot::domain::UserId::parse(ASKER).unwrap();
    assert!(
        app.store.find_link(&team, &user).await.unwrap().is_none(),
        "disconnected"
    );
    app.stop().await;
}

// Issue 15: on Postgres a question queued by one replica wakes another's workers at once
// (LISTEN/NOTIFY), instead of waiting for their next poll — here a minute away.
#[tokio::test]
async fn a_question_queued_by_one_replica_is_taken_by_anothers_workers_without_waiting_for_a_poll() {
    let Some(db) = TestDb::postgres().await else { return };
    let slack = fake_slack(Vec::new()).await;
    let intake_only = TestApp::spawn_with(crate::common::app::Options {
        db: Some(db.url.clone()),
        slack: Some(slack.clone()),
        workers: None,
        ..Default::default()
    })
    .await;
    let workers = TestApp::spawn_with(crate::common::app::Options {
        db: Some(db.url.clone()),
        slack: Some(slack.clone()),
        databricks: Some(intake_only.databricks.clone()),
        workers: Some(databricks_slack_bot::jobs::worker::WorkerConfig {
            poll_interval: Duration::from_secs(60),
            ..databricks_slack_bot::jobs::worker::WorkerConfig::default()
        }),
        ..Default::default()
    })
    .await;
    intake_only.link_asker().await;
    // The workers' first look at the queue has found it empty; from now on they poll
    // once a minute.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let acked = intake_only
        .post_event(&mention("EvReplica", "<@U0LAN0Z89> which replica?"))
        .await;
    assert_eq!(acked.status(), 200);
    workers.wait_for_answer("answer: which replica?").await;
    workers.stop().await;
    intake_only.stop().await;
}

// Issue 15: a stalled database (another process holds SQLite's write lock) leaves Slack
// without an acknowledgement; Slack's retry, once the database is back, succeeds; and the
// delivery is recorded once, whole.
#[tokio::test]
async fn a_stalled_database_leaves_slack_unacknowledged_and_its_retry_is_recorded_once() {
    use sqlx::Connection;

    let app = TestApp::spawn().await;
    let path = app.db_url.strip_prefix("sqlite://").unwrap().to_owned();
    let mut stall = sqlx::SqliteConnection::connect(&format!("sqlite://{path}"))
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut stall).await.unwrap();

    let event = mention("EvStall", "<@U0LAN0Z89> anyone there?");
    let body = event.to_string();
    let signed = |retry: Option<&str>| {
        let ts = app.clock.now();
        let mut request = reqwest::Client::new()
            .post(app.url("/slack/events"))
            .timeout(Duration::from_secs(3)) // Slack's own patience
            .header("content-type", "application/json")
            .header("x-slack-request-timestamp", ts.to_string())
            .header("x-slack-signature", sign(SIGNING_SECRET, ts, body.as_bytes()))
            .body(body.clone());
        if let Some(retry) = retry {
            request = request
                .header("x-slack-retry-num", retry)
                .header("x-slack-retry-reason", "http_timeout");
        }
        request.send()
    };
    match signed(None).await {
        Ok(response) => assert!(response.status().is_server_error(), "{}", response.status()),
        Err(error) => assert!(error.is_timeout(), "{error}"),
    }
    sqlx::query("ROLLBACK").execute(&mut stall).await.unwrap();
    stall.close().await.unwrap();

    let retried = signed(Some("1")).await.unwrap();
    assert_eq!(retried.status(), 200);
    eventually("the question answered once", PATIENCE, || async {
        let states = app.job_states().await;
        (states.len() == 1 && app.slack_calls("chat.postEphemeral").await.len() == 1).then_some(states)
    })
    .await;
    let recorded: Vec<(String,)> = crate::common::app::rows(&app.db_url, "SELECT event_id FROM slack_events").await;
    assert_eq!(recorded, [("EvStall".to_owned(),)]);
    app.stop().await;
}
