//! Traces over OTLP/HTTP, from the binary as an operator runs it (the subscriber is the
//! process's): one trace per question from Slack's delivery through the job, the token
//! broker and the agent to Slack's answer; the W3C context carried on to the company's
//! agent; nothing secret in any span; and a collector that hangs never holding up an
//! answer. The collector is a fake on loopback that decodes what it is sent with the
//! OTLP protobuf definitions (opentelemetry-proto), in protobuf and in JSON.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::common::app::{self, BOT_TOKEN, SIGNING_SECRET, config_env, mention};
use crate::common::fake_databricks::{FakeDatabricks, FakeUser};
use crate::common::replica::Replica;
use crate::common::{KEY_A, Person, TestDb, eventually, vault};

const QUESTION: &str = "How many CANARYQUESTION orders shipped last week";
const ANSWER: &str = "Exactly CANARYANSWER orders";
const ADK_APP: &str = "data_agent";

/// A collector answering every export after `delay`.
async fn collector(delay: Duration) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/traces"))
        .respond_with(ResponseTemplate::new(200).set_delay(delay))
        .mount(&server)
        .await;
    server
}

/// Every span the collector was sent, and each export's raw body.
async fn exported(collector: &MockServer) -> (Vec<Span>, Vec<Vec<u8>>, Vec<Vec<KeyValue>>) {
    let mut spans = Vec::new();
    let mut resources = Vec::new();
    let mut bodies = Vec::new();
    for request in collector.received_requests().await.unwrap_or_default() {
        let content_type = request.headers["content-type"].to_str().unwrap().to_owned();
        let export: ExportTraceServiceRequest = match content_type.as_str() {
            "application/x-protobuf" => ExportTraceServiceRequest::decode(&request.body[..]).unwrap(),
            "application/json" => serde_json::from_slice(&request.body).unwrap(),
            other => panic!("an export sent as {other}"),
        };
        for resource_spans in export.resource_spans {
            resources.push(resource_spans.resource.map(|r| r.attributes).unwrap_or_default());
            for scope in resource_spans.scope_spans {
                spans.extend(scope.spans);
            }
        }
        bodies.push(request.body);
    }
    (spans, bodies, resources)
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(text) => Some(text.as_str()),
            _ => None,
        })
}

/// The spans as an indented tree, children in start order: what the README shows.
fn tree(spans: &[Span]) -> String {
    fn walk(spans: &[Span], parent: &[u8], depth: usize, out: &mut String) {
        let mut children: Vec<&Span> = spans.iter().filter(|s| s.parent_span_id == parent).collect();
        children.sort_by_key(|s| s.start_time_unix_nano);
        for span in children {
            let detail: Vec<String> = ["route", "slack.method", "databricks.api", "refresh", "outcome", "agent"]
                .iter()
                .filter_map(|key| Some(format!("{key}={}", attribute(&span.attributes, key)?)))
                .collect();
            out.push_str(&format!("{}{} {}\n", "  ".repeat(depth), span.name, detail.join(" ")));
            walk(spans, &span.span_id, depth + 1, out);
        }
    }
    let mut out = String::new();
    walk(spans, &[], 0, &mut out);
    out
}

/// The question, as Slack delivers it.
fn question(event_id: &str) -> Value {
    mention(event_id, &format!("<@{}> {QUESTION}", app::BOT_USER))
}

/// Starts the bot in `world` and waits until it is ready.
async fn start(world: &World) -> Replica {
    let mut bot = Replica::start(world.db.dir.path(), "bot", world.env.clone());
    bot.wait_until_ready().await;
    bot
}

/// Stops `bot` with SIGTERM; its exit status and logs.
async fn stop(mut bot: Replica) -> (std::process::ExitStatus, String) {
    bot.sigterm();
    let status = bot.exited(Duration::from_secs(30)).await;
    (status, bot.logs())
}

/// Which of the company's agents answers, and the fake serving it.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Http,
    Adk,
}

async fn fake_agent(kind: Kind) -> MockServer {
    let agent = MockServer::start().await;
    match kind {
        Kind::Http => {
            Mock::given(method("POST"))
                .and(path("/agent"))
                .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "text": ANSWER })))
                .mount(&agent)
                .await;
        }
        Kind::Adk => {
            let sessions = format!("/apps/{ADK_APP}/users/T061EG9R6:U061F7AUR/sessions");
            Mock::given(path(sessions))
                .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                    "id": "s-1", "appName": ADK_APP, "userId": "T061EG9R6:U061F7AUR",
                    "state": {}, "events": [], "lastUpdateTime": 1743711430.02
                })))
                .mount(&agent)
                .await;
            let event = json!({
                "id": "e1", "invocationId": "i1", "author": ADK_APP,
                "content": { "role": "model", "parts": [{ "text": ANSWER }] }
            });
            Mock::given(path("/run_sse"))
                .respond_with(
                    ResponseTemplate::new(200).set_body_raw(format!("data: {event}\n\n"), "text/event-stream"),
                )
                .mount(&agent)
                .await;
        }
    }
    agent
}

/// A linked asker, Slack, Databricks and `kind` of agent, and the bot's environment with
/// traces to `collector` in `protocol`.
struct World {
    db: TestDb,
    slack: MockServer,
    agent: MockServer,
    _databricks: FakeDatabricks,
    refresh_token: String,
    env: Vec<(&'static str, String)>,
}

async fn world(kind: Kind, collector: &MockServer, protocol: &str) -> World {
    world_with(kind, collector, protocol, None).await
}

/// [`world`], in Socket Mode over the WebSocket at `socket` when one is given.
async fn world_with(kind: Kind, collector: &MockServer, protocol: &str, socket: Option<&str>) -> World {
    let db = TestDb::sqlite();
    let slack = MockServer::start().await;
    if let Some(url) = socket {
        Mock::given(path("/api/apps.connections.open"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true, "url": url})))
            .mount(&slack)
            .await;
    }
    app::mount_slack_defaults(&slack).await;
    let databricks = FakeDatabricks::start().await;
    let agent = fake_agent(kind).await;

    let store = db.open().await;
    let refresh_token = databricks.grant(&FakeUser::asker());
    let asker = FakeUser::asker();
    let person = Person {
        workspace: databricks_slack_bot::domain::WorkspaceHost::parse(&databricks.uri).unwrap(),
        ..Person::new("T061EG9R6", "U061F7AUR")
    };
    let now = jiff::Timestamp::now().as_second();
    person
        .link_as(
            &store,
            &vault(&[KEY_A]),
            &refresh_token,
            now,
            (&asker.id, &asker.user_name),
        )
        .await;
    store.close().await;

    let mut env = config_env(&db.url, &slack.uri(), &databricks.uri);
    env.retain(|(key, _)| *key != "GENIE_SPACE_ID");
    env.extend([
        (
            "AGENT_URL",
            format!(
                "{}{}",
                agent.uri(),
                if matches!(kind, Kind::Http) { "/agent" } else { "" }
            ),
        ),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.uri()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned()),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test".to_owned()),
    ]);
    if matches!(kind, Kind::Adk) {
        env.push(("ADK_APP_NAME", ADK_APP.to_owned()));
    }
    if socket.is_some() {
        env.push(("SLACK_APP_TOKEN", "xapp-1-test-CANARY".to_owned()));
    }
    World {
        db,
        slack,
        agent,
        _databricks: databricks,
        refresh_token,
        env,
    }
}

/// Whether a call to the fake Slack carried `text`.
async fn slack_was_sent(slack: &MockServer, text: &str) -> bool {
    let calls = slack.received_requests().await.unwrap_or_default();
    calls
        .iter()
        .any(|call| String::from_utf8_lossy(&call.body).contains(text))
}

fn one_named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let named: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(named.len(), 1, "one span named {name:?} in\n{}", tree(spans));
    named[0]
}

/// Whether `span` is `ancestor` or lies under it.
fn under(spans: &[Span], span: &Span, ancestor: &Span) -> bool {
    let mut at = span;
    loop {
        if at.span_id == ancestor.span_id {
            return true;
        }
        match spans.iter().find(|s| s.span_id == at.parent_span_id) {
            Some(parent) => at = parent,
            None => return false,
        }
    }
}

// LOG-01 (no secret in telemetry) for traces; issue 16: one trace per question.
#[tokio::test]
async fn a_question_is_one_trace_from_slack_to_the_answer_and_the_agent_continues_it() {
    for (kind, protocol) in [(Kind::Http, "http/protobuf"), (Kind::Adk, "http/json")] {
        let collector = collector(Duration::ZERO).await;
        let mut world = world(kind, &collector, protocol).await;
        world
            .env
            .push(("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=CANARY-otlp%20key".to_owned()));
        let bot = start(&world).await;
        let client = reqwest::Client::new();

        let acked = bot.deliver(&client, &question("EvTrace1"), None).await.unwrap();
        assert_eq!(acked.status(), 200);
        eventually("the answer in Slack", Duration::from_secs(20), || async {
            slack_was_sent(&world.slack, ANSWER).await.then_some(())
        })
        .await;
        eventually("the job's span at the collector", Duration::from_secs(20), || async {
            let (spans, ..) = exported(&collector).await;
            spans.iter().any(|s| s.name == "job question").then_some(())
        })
        .await;
        let (status, log) = stop(bot).await;
        assert!(status.success(), "{kind:?}: exit {status}\n{log}");
        let (spans, bodies, resources) = exported(&collector).await;
        let shown = tree(&spans);
        eprintln!("{kind:?} over {protocol}:\n{shown}");

        // One trace: the delivery's request is its root, the job continues it.
        let request = spans
            .iter()
            .find(|s| s.name == "POST /slack/events")
            .unwrap_or_else(|| panic!("no request span in\n{shown}"));
        assert!(request.parent_span_id.is_empty(), "{shown}");
        // The readiness probes the start waited on are not traced.
        assert!(
            spans
                .iter()
                .all(|s| attribute(&s.attributes, "route") != Some("/readyz")),
            "{shown}"
        );
        assert_eq!(attribute(&request.attributes, "route"), Some("/slack/events"));
        let job = one_named(&spans, "job question");
        assert_eq!(
            job.parent_span_id, request.span_id,
            "the job continues the delivery's trace\n{shown}"
        );
        assert!(
            job.links
                .iter()
                .any(|link| link.span_id == request.span_id && link.trace_id == request.trace_id),
            "the job links to the acknowledgement\n{shown}"
        );
        let question: Vec<&Span> = spans.iter().filter(|s| s.trace_id == request.trace_id).collect();
        for name in ["databricks token", "databricks token refresh", "agent"] {
            let span = one_named(&spans, name);
            assert_eq!(
                span.trace_id, request.trace_id,
                "{name} in the question's trace\n{shown}"
            );
            assert!(under(&spans, span, job), "{name} under the job\n{shown}");
        }
        let token = one_named(&spans, "databricks token");
        assert_eq!(attribute(&token.attributes, "refresh"), Some("refreshed"), "{shown}");
        assert_eq!(
            one_named(&spans, "databricks token refresh").parent_span_id,
            token.span_id,
            "{shown}"
        );
        let slack_calls: Vec<&&Span> = question.iter().filter(|s| s.name.starts_with("slack ")).collect();
        assert!(!slack_calls.is_empty(), "{shown}");
        for call in &slack_calls {
            assert!(under(&spans, call, job), "{} under the job\n{shown}", call.name);
            assert_eq!(attribute(&call.attributes, "outcome"), Some("ok"), "{shown}");
        }
        assert!(
            slack_calls
                .iter()
                .any(|s| s.name == "slack chat.postMessage" || s.name == "slack chat.update"),
            "{shown}"
        );

        // The agent was told the trace, as a child of the agent span.
        let agent_span = one_named(&spans, "agent");
        let expected = format!(
            "00-{}-{}-01",
            hex::encode(&request.trace_id),
            hex::encode(&agent_span.span_id)
        );
        let asked: Vec<Request> = world.agent.received_requests().await.unwrap();
        let answering: Vec<&Request> = asked.iter().filter(|r| r.method.as_str() == "POST").collect();
        assert!(!answering.is_empty());
        for call in answering {
            let traceparent = call.headers.get("traceparent").map(|v| v.to_str().unwrap());
            assert_eq!(traceparent, Some(expected.as_str()), "{kind:?} {}", call.url.path());
        }

        // Each export carried the collector's key, decoded once; JSON is OTLP's JSON, with
        // hex ids (not protobuf's base64) and camelCase names.
        for request in collector.received_requests().await.unwrap() {
            assert_eq!(request.headers["x-api-key"], "CANARY-otlp key");
            if protocol == "http/json" {
                let json: Value = serde_json::from_slice(&request.body).unwrap();
                let span = &json["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
                let trace_id = span["traceId"].as_str().unwrap();
                assert!(
                    trace_id.len() == 32 && trace_id.chars().all(|c| c.is_ascii_hexdigit()),
                    "{span}"
                );
                assert!(span["startTimeUnixNano"].is_string(), "int64 as a string: {span}");
            }
        }

        // The resource names the service; nothing secret or said is in any export.
        assert!(
            resources
                .iter()
                .all(|r| attribute(r, "service.name") == Some("databricks-slack-bot"))
        );
        assert!(
            resources
                .iter()
                .all(|r| attribute(r, "deployment.environment") == Some("test"))
        );
        let access_tokens: Vec<String> = world
            .agent
            .received_requests()
            .await
            .unwrap()
            .iter()
            .filter_map(|r| {
                let bearer = r.headers.get("authorization").and_then(|v| v.to_str().ok());
                let adk: Option<Value> = serde_json::from_slice(&r.body).ok();
                bearer
                    .and_then(|b| b.strip_prefix("Bearer ").map(str::to_owned))
                    .or_else(|| Some(adk?["state_delta"].as_object()?.values().next()?.as_str()?.to_owned()))
            })
            .collect();
        assert!(!access_tokens.is_empty(), "the agent got the asker's token");
        let secrets: Vec<&str> = [
            BOT_TOKEN,
            SIGNING_SECRET,
            world.refresh_token.as_str(),
            "CANARYQUESTION",
            "CANARYANSWER",
            "CANARY-otlp",
        ]
        .into_iter()
        .chain(access_tokens.iter().map(String::as_str))
        .collect();
        for body in &bodies {
            for secret in &secrets {
                assert!(
                    !body.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{secret} exported in a span"
                );
            }
        }
    }
}

// Issue 16: an OTLP endpoint that is down or slow never slows or blocks answers.
#[tokio::test]
async fn a_collector_that_hangs_drops_spans_and_counts_them_but_answers_go_on() {
    let hanging = collector(Duration::from_secs(60)).await;
    let mut world = world(Kind::Http, &hanging, "http/protobuf").await;
    world.env.extend([
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "30000".to_owned()),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "4".to_owned()),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2".to_owned()),
        ("SHUTDOWN_DRAIN_SECONDS", "3".to_owned()),
    ]);
    let bot = start(&world).await;
    let client = reqwest::Client::new();

    // Three questions, one after another, each answered while the first export still
    // waits for its 30 s timeout: nothing waits for the collector.
    for n in 1..=3 {
        let acked = bot
            .deliver(&client, &question(&format!("EvHang{n}")), None)
            .await
            .unwrap();
        assert_eq!(acked.status(), 200);
        eventually("the answer in Slack", Duration::from_secs(15), || async {
            let calls = world.slack.received_requests().await.unwrap_or_default();
            let answers = calls
                .iter()
                .filter(|c| String::from_utf8_lossy(&c.body).contains(ANSWER))
                .count();
            (answers >= n).then_some(())
        })
        .await;
    }
    let dropped = eventually("spans counted as dropped", Duration::from_secs(10), || async {
        let metrics = bot.get("/metrics").await;
        let dropped: HashMap<&str, f64> = metrics
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("trace_spans_dropped_total{reason=\"")?;
                let (reason, value) = rest.split_once("\"} ")?;
                Some((
                    if reason == "queue_full" { "queue_full" } else { "other" },
                    value.parse().ok()?,
                ))
            })
            .collect();
        dropped.get("queue_full").is_some_and(|n| *n > 0.0).then_some(dropped)
    })
    .await;
    assert!(dropped["queue_full"] >= 1.0, "{dropped:?}");

    // Shutdown gives up on the collector too: the drain, then at most the flush's 2 s.
    let started = std::time::Instant::now();
    let (status, log) = stop(bot).await;
    assert!(status.success(), "exit {status}\n{log}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}\n{log}",
        started.elapsed()
    );
    assert!(
        hanging.received_requests().await.is_some_and(|r| !r.is_empty()),
        "export was tried"
    );
}

// Issue 16: over Socket Mode the delivery's span is the trace's root as the request's is
// over HTTP, and the job continues it.
#[tokio::test(flavor = "multi_thread")]
async fn a_socket_mode_question_is_one_trace_too() {
    use futures_util::SinkExt;

    let (ws_url, mut sockets) = crate::socket_mode::fake_socket_server().await;
    let collector = collector(Duration::ZERO).await;
    let world = world_with(Kind::Http, &collector, "http/protobuf", Some(&ws_url)).await;
    let bot = start(&world).await;
    let mut ws = tokio::time::timeout(Duration::from_secs(10), sockets.recv())
        .await
        .expect("the bot connects")
        .unwrap();

    ws.send(crate::socket_mode::envelope(
        "env-1",
        "events_api",
        question("EvTraceSocket"),
    ))
    .await
    .unwrap();
    assert_eq!(crate::socket_mode::next_ack(&mut ws).await["envelope_id"], "env-1");
    eventually("the answer in Slack", Duration::from_secs(20), || async {
        slack_was_sent(&world.slack, ANSWER).await.then_some(())
    })
    .await;
    let spans = eventually("the job's span at the collector", Duration::from_secs(20), || async {
        let (spans, ..) = exported(&collector).await;
        spans.iter().any(|s| s.name == "job question").then_some(spans)
    })
    .await;
    let shown = tree(&spans);
    let (_, bodies, _) = exported(&collector).await;
    for body in &bodies {
        let body = String::from_utf8_lossy(body);
        assert!(
            !body.contains("xapp-1-test-CANARY") && !body.contains("CANARYQUESTION"),
            "{body}"
        );
    }
    let delivery = one_named(&spans, "socket_mode event");
    assert!(delivery.parent_span_id.is_empty(), "{shown}");
    let job = one_named(&spans, "job question");
    assert_eq!(job.parent_span_id, delivery.span_id, "{shown}");
    assert!(under(&spans, one_named(&spans, "agent"), job), "{shown}");
    let (status, log) = stop(bot).await;
    assert!(status.success(), "exit {status}\n{log}");
}

// Issue 16: a misconfigured OTEL_* variable never stops the bot (platforms inject them into
// every pod): it answers, exports nothing, and says why in its log.
#[tokio::test]
async fn a_bot_with_bad_otel_settings_answers_without_traces_and_says_why() {
    let collector = collector(Duration::ZERO).await;
    let mut world = world(Kind::Http, &collector, "grpc").await;
    world
        .env
        .push(("OTEL_EXPORTER_OTLP_HEADERS", "api-key=CANARY-otlp-key".to_owned()));
    let bot = start(&world).await;
    let acked = bot
        .deliver(&reqwest::Client::new(), &question("EvBadOtel"), None)
        .await
        .unwrap();
    assert_eq!(acked.status(), 200);
    eventually("the answer in Slack", Duration::from_secs(20), || async {
        slack_was_sent(&world.slack, ANSWER).await.then_some(())
    })
    .await;
    let (status, log) = stop(bot).await;
    assert!(status.success(), "exit {status}\n{log}");
    assert!(
        log.contains("no traces are exported") && log.contains("OTEL_EXPORTER_OTLP_PROTOCOL: grpc is not built in"),
        "{log}"
    );
    assert!(!log.contains("CANARY-otlp-key"), "{log}");
    assert!(collector.received_requests().await.unwrap().is_empty());
    // Nothing traced: the job row keeps no traceparent, and the agent is sent none.
    let kept: Vec<(Option<String>,)> = app::rows(&world.db.url, "SELECT traceparent FROM jobs").await;
    assert_eq!(kept, [(None,)]);
    let asked = world.agent.received_requests().await.unwrap();
    assert!(!asked.is_empty() && asked.iter().all(|r| !r.headers.contains_key("traceparent")));
}
