//! A person's account from Slack: `/databricks` (status, connect, disconnect, help, a
//! question), the Disconnect button with Slack's confirmation, and what disconnecting
//! means for questions in flight and late retries (TOK-07, TOK-08).

use std::time::Duration;

use crate::common::app::{Options, TestApp, audit_trail, interaction, mention, rows};
use crate::common::{PATIENCE, eventually};
use databricks_slack_bot::agent::Table;
use databricks_slack_bot::clock::Clock;
use databricks_slack_bot::domain::{TeamId, UserId};
use serde_json::{Value, json};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, ResponseTemplate};

const TEAM: &str = "T061EG9R6";
const ASKER: &str = "U061F7AUR";

/// A signed `/databricks <text>` from the asker in #general; the JSON reply.
async fn command(app: &TestApp, text: &str, trigger: &str) -> Value {
    command_in(app, ("C0LAN2Q65", "general"), text, trigger).await
}

/// A signed `/databricks <text>` from the asker in `channel` (id, name); the JSON reply.
async fn command_in(app: &TestApp, channel: (&str, &str), text: &str, trigger: &str) -> Value {
    let form = [
        ("token", "ZZZZZZWSxiZZZ2yIvs3peJ"),
        ("team_id", TEAM),
        ("team_domain", "acme"),
        ("channel_id", channel.0),
        ("channel_name", channel.1),
        ("user_id", ASKER),
        ("user_name", "alice"),
        ("command", "/databricks"),
        ("text", text),
        ("api_app_id", "A0MDYCDME"),
        ("response_url", &format!("{}/response/{trigger}", app.slack.uri())),
        ("trigger_id", trigger),
    ];
    let body = serde_urlencoded::to_string(form).unwrap();
    let response = app
        .post_signed("/slack/commands", "application/x-www-form-urlencoded", &body, &[])
        .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// "Connect Databricks" clicked in the asker's App Home.
fn home_connect_click() -> Value {
    let mut payload: Value =
        serde_json::from_str(include_str!("../fixtures/slack/block_actions_disconnect.json")).unwrap();
    payload["actions"][0]["action_id"] = json!("home_connect");
    payload["container"] = json!({"type": "view", "view_id": "V0HOME0001"});
    payload
}

/// The Disconnect button clicked by the asker, as Slack reports it once confirmed.
fn disconnect_click(app: &TestApp, trigger: &str) -> Value {
    let mut payload: Value =
        serde_json::from_str(include_str!("../fixtures/slack/block_actions_disconnect.json")).unwrap();
    payload["trigger_id"] = json!(trigger);
    payload["response_url"] = json!(format!("{}/response/{trigger}", app.slack.uri()));
    payload
}

async fn wait_for_responses(app: &TestApp, n: usize) -> Vec<Value> {
    eventually(&format!("{n} posts to response_url"), PATIENCE, || async {
        let responses = app.responses().await;
        (responses.len() >= n).then_some(responses)
    })
    .await
}

async fn spawn() -> TestApp {
    TestApp::spawn_with(Options {
        slack_mocks: vec![
            Mock::given(method("POST"))
                .and(path_regex("^/response/"))
                .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true}))),
        ],
        ..Options::default()
    })
    .await
}

fn ids() -> (TeamId, UserId) {
    (TeamId::parse(TEAM).unwrap(), UserId::parse(ASKER).unwrap())
}

#[tokio::test]
async fn status_tells_an_unlinked_person_how_to_connect_and_a_linked_one_as_whom() {
    let app = spawn().await;
    let reply = command(&app, "status", "t1").await;
    assert_eq!(reply["response_type"], "ephemeral");
    assert!(reply.to_string().contains("not connected"), "{reply}");

    app.link_asker().await;
    let reply = command(&app, "status", "t2").await.to_string();
    assert!(reply.contains("Connected as") && reply.contains("since"), "{reply}");
    assert!(reply.contains("<!date^"), "dates in the reader's time zone: {reply}");

    let (team, user) = ids();
    let link = app.store.find_link(&team, &user).await.unwrap().unwrap();
    app.store
        .mark_needs_relink(&team, &user, link.version, "invalid_grant", 0)
        .await
        .unwrap();
    let reply = command(&app, "status", "t3").await.to_string();
    assert!(
        reply.contains("has expired") && reply.contains("/databricks connect"),
        "{reply}"
    );
    app.stop().await;
}

#[tokio::test]
async fn help_unknown_words_and_overlong_questions_get_helpful_private_replies() {
    let app = spawn().await;
    for text in ["", "help"] {
        let reply = command(&app, text, &format!("h-{text}")).await.to_string();
        assert!(
            reply.contains("/databricks status") && reply.contains("/databricks disconnect"),
            "{reply}"
        );
    }
    let reply = command(&app, "statsu", "u1").await.to_string();
    assert!(
        reply.contains("I don't know `statsu`") && reply.contains("/databricks help"),
        "{reply}"
    );
    let reply = command(&app, &"why is revenue down ".repeat(200), "long")
        .await
        .to_string();
    assert!(reply.contains("too long"), "{reply}");
    assert!(app.job_states().await.is_empty(), "nothing was queued");
    app.stop().await;
}

#[tokio::test]
async fn connect_gives_a_fresh_private_link_that_works() {
    let app = spawn().await;
    let reply = command(&app, "connect", "c1").await;
    let text = reply.to_string();
    let start = text.find("https://bot.example.com/link/").expect("a link") + 29;
    let id = &text[start..start + 22];
    let claimed = app
        .claim_link(id)
        .await
        .map_err(|r| r.status())
        .expect("the link works");
    assert!(claimed.location.contains("/oidc/v1/authorize"), "{}", claimed.location);
    // A second `connect` voids the first link.
    command(&app, "connect", "c2").await;
    let (status, page) = app.get(&format!("/link/{id}")).await;
    assert_eq!(status, 410, "{page}");
    app.stop().await;
}

#[tokio::test]
async fn a_question_by_command_is_acknowledged_at_once_and_answered_only_to_the_person() {
    let app = spawn().await;
    app.link_asker().await;
    let reply = command(&app, "how many orders last week?", "q1").await;
    assert!(reply.to_string().contains("Looking into it"), "{reply}");
    let answers = wait_for_responses(&app, 1).await;
    let answer = answers[0].to_string();
    assert!(answer.contains("answer: how many orders last week?"), "{answer}");
    assert!(app.slack_calls("chat.postMessage").await.is_empty(), "nothing public");
    assert!(
        app.slack_calls("chat.postEphemeral").await.is_empty(),
        "through the response_url"
    );
    app.stop().await;
}

// A command may come from a conversation the bot is not in (here a direct message between
// two people): the full result goes to the person's own direct messages with the bot.
#[tokio::test]
async fn a_command_answers_csv_goes_to_the_persons_direct_messages_with_the_bot() {
    let app = spawn().await;
    app.link_asker().await;
    *app.agent.table.lock().unwrap() = Some(Table::of(
        (0..50).map(|c| format!("column_{c}")).collect(),
        (0..20)
            .map(|r| (0..50).map(|c| Some(format!("r{r}c{c}"))).collect())
            .collect(),
    ));
    command_in(&app, ("D0TWOPEOPLE", "directmessage"), "all the orders", "csv").await;
    let attached = app.wait_for_calls("files.completeUploadExternal", 1).await;
    assert_eq!(attached[0]["channel_id"], "D0DM000001", "{attached:?}");
    assert!(attached[0].get("thread_ts").is_none(), "{attached:?}");
    let answers = wait_for_responses(&app, 1).await;
    assert!(answers[0].to_string().contains("answer: all the orders"), "{answers:?}");
    assert_eq!(app.settled_job_states().await, ["done"]);
    app.stop().await;
}

#[tokio::test]
async fn a_command_answer_whose_response_url_is_used_up_arrives_by_direct_message() {
    let app = spawn().await;
    app.link_asker().await;
    Mock::given(method("POST"))
        .and(wiremock::matchers::path("/response/used-up"))
        .respond_with(ResponseTemplate::new(404).set_body_string("expired_url"))
        .with_priority(1)
        .mount(&app.slack)
        .await;
    command(&app, "how many orders last week?", "used-up").await;
    let dms = app.wait_for_calls("chat.postMessage", 1).await;
    assert_eq!(dms[0]["channel"], "D0DM000001", "the person's own direct messages");
    assert!(
        dms[0].to_string().contains("answer: how many orders last week?"),
        "{}",
        dms[0]
    );
    assert_eq!(app.settled_job_states().await, ["done"]);
    app.stop().await;
}

#[tokio::test]
async fn disconnect_asks_first_then_forgets_the_link_and_tokens_and_a_second_click_is_harmless() {
    let app = spawn().await;
    app.link_asker().await;
    let reply = command(&app, "disconnect", "d0").await;
    let button = &reply["blocks"][1]["elements"][0];
    assert_eq!(button["action_id"], "disconnect");
    assert!(
        button["confirm"]["title"]["text"]
            .as_str()
            .unwrap()
            .contains("Disconnect"),
        "{reply}"
    );
    assert!(app.job_states().await.is_empty(), "nothing happens before the click");

    assert_eq!(app.post_interaction(&disconnect_click(&app, "d1")).await, 200);
    let told = wait_for_responses(&app, 1).await;
    assert!(told[0].to_string().contains("Disconnected"), "{}", told[0]);
    assert_eq!(told[0]["replace_original"], true);
    let (team, user) = ids();
    assert!(
        app.store.find_link(&team, &user).await.unwrap().is_none(),
        "link and tokens gone"
    );
    let trail = audit_trail(&app.db_url).await;
    assert_eq!(trail, [("unlink".to_owned(), "user".to_owned())]);
    let home = app.wait_for_calls("views.publish", 1).await;
    assert!(
        home[0].to_string().contains("not connected"),
        "App Home shows the new state"
    );

    // Disconnect twice: idempotent, and said so.
    app.post_interaction(&disconnect_click(&app, "d2")).await;
    let told = wait_for_responses(&app, 2).await;
    assert!(told[1].to_string().contains("already disconnected"), "{}", told[1]);
    assert_eq!(audit_trail(&app.db_url).await.len(), 1);
    assert_eq!(app.settled_job_states().await, ["done", "done"]);
    app.stop().await;
}

// TOK-08: every disconnect path is a signed Slack request.
#[tokio::test]
async fn unsigned_or_stale_disconnect_attempts_are_refused_and_remove_nothing() {
    let app = spawn().await;
    app.link_asker().await;
    let body = interaction(&disconnect_click(&app, "x1"));
    let unsigned = app
        .client
        .post(app.url("/slack/interactions"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    let stale_ts = app.clock.now() - 600;
    let stale = app
        .client
        .post(app.url("/slack/interactions"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", stale_ts.to_string())
        .header(
            "x-slack-signature",
            databricks_slack_bot::slack::signature::sign(crate::common::app::SIGNING_SECRET, stale_ts, body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 401);
    for path in [
        "/disconnect?team=T061EG9R6&user=U061F7AUR",
        "/links/T061EG9R6/U061F7AUR",
    ] {
        let (status, _) = app.get(path).await;
        assert_eq!(status, 404, "no unauthenticated route removes a link: {path}");
    }
    let (team, user) = ids();
    assert!(app.store.find_link(&team, &user).await.unwrap().is_some());
    assert!(app.job_states().await.is_empty());
    app.stop().await;
}

// TOK-07: after a disconnect, nothing is answered with the old connection.
#[tokio::test]
async fn a_question_in_flight_during_a_disconnect_is_not_answered_and_a_late_retry_asks_to_connect() {
    let app = spawn().await;
    app.link_asker().await;
    *app.agent.delay.lock().unwrap() = Some(Duration::from_millis(700));
    app.post_event(&mention("Ev1", "<@U0LAN0Z89> in flight?")).await;
    eventually("the question to reach the agent", PATIENCE, || async {
        (!app.agent.requests.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    app.post_interaction(&disconnect_click(&app, "d1")).await;
    wait_for_responses(&app, 1).await;
    assert_eq!(app.settled_job_states().await, ["done", "done"]);
    let answers: Vec<Value> = app
        .slack_calls("chat.update")
        .await
        .into_iter()
        .chain(app.slack_calls("chat.postMessage").await)
        .filter(|m| m.to_string().contains("answer: in flight?"))
        .collect();
    assert!(
        answers.is_empty(),
        "the answer made with the old token was dropped: {answers:?}"
    );
    let told = app.wait_for_calls("chat.postEphemeral", 1).await;
    assert!(told[0].to_string().contains("disconnected"), "{}", told[0]);

    // A late retry of an event never stored before: a connect prompt, not an answer.
    *app.agent.delay.lock().unwrap() = None;
    app.post_event(&mention("Ev2", "<@U0LAN0Z89> late retry?")).await;
    let prompts = app.wait_for_calls("chat.postEphemeral", 2).await;
    assert!(prompts[1].to_string().contains("Connect Databricks"), "{}", prompts[1]);
    assert_eq!(
        app.agent.requests.lock().unwrap().len(),
        1,
        "the agent was not asked again"
    );
    app.stop().await;
}

fn home_opened(event_id: &str, tab: &str) -> Value {
    let mut event: Value = serde_json::from_str(include_str!("../fixtures/slack/event_app_home_opened.json")).unwrap();
    event["event_id"] = json!(event_id);
    event["event"]["tab"] = json!(tab);
    event
}

#[tokio::test]
async fn app_home_shows_the_current_state_each_time_it_is_opened() {
    let app = spawn().await;
    app.post_event(&home_opened("Ev1", "home")).await;
    let views = app.wait_for_calls("views.publish", 1).await;
    assert_eq!(views[0]["user_id"], ASKER);
    let home = views[0]["view"].to_string();
    assert!(
        home.contains("not connected") && home.contains("home_connect"),
        "{home}"
    );

    app.link_asker().await;
    app.post_event(&home_opened("Ev2", "home")).await;
    let views = app.wait_for_calls("views.publish", 2).await;
    let home = views[1]["view"].to_string();
    assert!(
        home.contains("Connected as") && home.contains("\"disconnect\""),
        "{home}"
    );

    // Someone whose connection expired is offered Connect again.
    let (team, user) = ids();
    let link = app.store.find_link(&team, &user).await.unwrap().unwrap();
    app.store
        .mark_needs_relink(&team, &user, link.version, "invalid_grant", 0)
        .await
        .unwrap();
    app.post_event(&home_opened("Ev3", "home")).await;
    let views = app.wait_for_calls("views.publish", 3).await;
    let home = views[2]["view"].to_string();
    assert!(home.contains("has expired") && home.contains("home_connect"), "{home}");

    // The Messages tab is not App Home.
    app.post_event(&home_opened("Ev4", "messages")).await;
    assert_eq!(app.settled_job_states().await.len(), 3);
    app.stop().await;
}

#[tokio::test]
async fn connect_in_app_home_sends_a_fresh_link_by_direct_message() {
    let app = spawn().await;
    let payload = home_connect_click();
    assert_eq!(app.post_interaction(&payload).await, 200);
    let dms = app.wait_for_calls("chat.postMessage", 1).await;
    assert_eq!(dms[0]["channel"], "D0DM000001");
    assert!(
        dms[0].to_string().contains("https://bot.example.com/link/"),
        "{}",
        dms[0]
    );
    app.stop().await;
}

async fn pending_links(app: &TestApp) -> i64 {
    let counted: Vec<(i64,)> = rows(&app.db_url, "SELECT COUNT(*) FROM pending_links").await;
    counted[0].0
}

/// The app, with Slack saying the asker is from another organisation (Slack Connect).
async fn spawn_for_a_stranger() -> TestApp {
    TestApp::spawn_with(Options {
        slack_mocks: vec![
            Mock::given(path("/api/users.info")).respond_with(ResponseTemplate::new(200).set_body_json(
                json!({"ok": true, "user": {"id": ASKER, "team_id": "TOTHERORG", "is_stranger": true}}),
            )),
        ],
        ..Options::default()
    })
    .await
}

// EVT-05 (issue 12): `/databricks connect` from someone of another organisation makes no
// link, as their mentions get no answer.
#[tokio::test]
async fn connect_by_command_refuses_a_person_from_another_organisation() {
    let app = spawn_for_a_stranger().await;

    let reply = command(&app, "connect", "c1").await.to_string();

    assert!(
        reply.contains("I can only answer people from this workspace"),
        "{reply}"
    );
    assert!(!reply.contains("/link/"), "{reply}");
    assert_eq!(pending_links(&app).await, 0);
    app.stop().await;
}

// EVT-05 (issue 12): nor does "Connect Databricks" in App Home.
#[tokio::test]
async fn connect_in_app_home_refuses_a_person_from_another_organisation() {
    let app = spawn_for_a_stranger().await;
    let payload = home_connect_click();

    assert_eq!(app.post_interaction(&payload).await, 200);

    let dms = app.wait_for_calls("chat.postMessage", 1).await;
    let dm = dms[0].to_string();
    assert!(dm.contains("I can only answer people from this workspace"), "{dm}");
    assert!(!dm.contains("/link/"), "{dm}");
    assert_eq!(pending_links(&app).await, 0);
    app.stop().await;
}

// GENIE_SPACES: `/databricks status` says which space answers in the channel it is used
// in, and App Home which answers in general.
#[tokio::test]
async fn status_and_app_home_say_which_genie_space_answers() {
    let app = TestApp::spawn_with(Options {
        slack_mocks: vec![
            Mock::given(method("POST"))
                .and(path_regex("^/response/"))
                .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true}))),
        ],
        extra_env: vec![
            ("GENIE_SPACE_ID", String::new()),
            (
                "GENIE_SPACES",
                "C0SALES=01ef-sales,C0FIN=01f0-finance,*=01ee-all".into(),
            ),
        ],
        ..Options::default()
    })
    .await;
    let in_sales = command_in(&app, ("C0SALES", "sales"), "status", "s1").await.to_string();
    assert!(
        in_sales.contains("In this channel, questions go to the Genie space `01ef-sales`"),
        "{in_sales}"
    );
    let elsewhere = command_in(&app, ("C0LAN2Q65", "general"), "status", "s2")
        .await
        .to_string();
    assert!(elsewhere.contains("the Genie space `01ee-all`"), "{elsewhere}");

    app.post_event(&home_opened("Ev1", "home")).await;
    let home = app.wait_for_calls("views.publish", 1).await[0]["view"].to_string();
    assert!(
        home.contains("Questions go to the Genie space `01ee-all`. 2 channels have a Genie space of their own."),
        "{home}"
    );
    app.stop().await;
}

// App Home lists the person's last questions with where each stands and a link to its
// message — never anything of an answer.
#[tokio::test]
async fn app_home_lists_the_last_questions_without_their_answers() {
    let app = spawn().await;
    app.link_asker().await;
    app.post_event(&mention("EvQ1", "<@U0LAN0Z89> how many orders shipped?"))
        .await;
    app.wait_for_answer("answer: how many orders shipped?").await;
    command(&app, "which region sold most?", "q-cmd").await;
    app.settled_job_states().await;

    app.post_event(&home_opened("EvHome", "home")).await;
    let views = app.wait_for_calls("views.publish", 1).await;
    let home = views[0]["view"].to_string();
    assert!(home.contains("Your recent questions"), "{home}");
    assert!(
        home.contains(
            "<https://acme.slack.com/archives/C0LAN2Q65/p1515449522000016|how many orders shipped?> — answered"
        ),
        "{home}"
    );
    assert!(home.contains("• which region sold most? — answered"), "{home}");
    assert!(!home.contains("answer: "), "no answer data: {home}");
    let permalinks = app.slack_calls("chat.getPermalink").await;
    assert_eq!(permalinks.len(), 1, "a /databricks question has no message to link to");
    app.stop().await;
}
