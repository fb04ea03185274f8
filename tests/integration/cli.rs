//! The binary as an operator uses it: configuration errors, key generation, migrations,
//! links administration, key rotation, file permissions and graceful shutdown.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::common::replica::{free_port, post_signed};
use crate::common::{KEY_A, KEY_B, Person, TestDb, bin, eventually, vault};
use base64::Engine;
use databricks_slack_bot::store::links::LinkStatus;

const NOW: i64 = 1_800_000_000;

/// A complete, valid configuration; secrets are canaries that must never be printed.
/// Slack is a closed loopback port unless a test replaces `SLACK_API_URL`.
pub(crate) fn valid_env(database_url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("SLACK_API_URL", "http://127.0.0.1:9/api".into()),
        ("BIND_ADDR", "127.0.0.1:0".into()),
        ("PUBLIC_BASE_URL", "https://bot.example.com".into()),
        ("DATABASE_URL", database_url.into()),
        ("TOKEN_ENCRYPTION_KEYS", KEY_A.into()),
        ("SLACK_BOT_TOKEN", "xoxb-test-CANARYBOT".into()),
        ("SLACK_SIGNING_SECRET", "CANARY-signing-secret".into()),
        ("DATABRICKS_HOST", "http://127.0.0.1:9".into()),
        ("DATABRICKS_CLIENT_ID", "client-id".into()),
        ("DATABRICKS_CLIENT_SECRET", "CANARY-client-secret".into()),
        ("GENIE_SPACE_ID", "01ef-space".into()),
    ]
}

const CANARIES: &[&str] = &[
    "CANARYBOT",
    "CANARY-signing-secret",
    "CANARY-client-secret",
    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
];

fn run(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("binary runs")
}

/// Runs the binary off the async runtime, so fakes served by the runtime keep answering.
async fn run_async(cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || run(cmd)).await.unwrap()
}

/// A fake Slack that answers `auth.test`; returns the `SLACK_API_URL` to use.
async fn fake_slack() -> (wiremock::MockServer, String) {
    let slack = wiremock::MockServer::start().await;
    crate::common::app::mount_slack_defaults(&slack).await;
    let url = format!("{}/api", slack.uri());
    (slack, url)
}

pub(crate) fn set(env: &mut Vec<(&'static str, String)>, key: &'static str, value: String) {
    env.retain(|(k, _)| *k != key);
    env.push((key, value));
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

pub(crate) fn assert_no_canary(all: &str) {
    for canary in CANARIES {
        assert!(!all.contains(canary), "secret {canary} printed:\n{all}");
    }
}

fn with_env(db: &TestDb, args: &[&str], env: &[(&'static str, String)]) -> Command {
    let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    bin(db.dir.path(), args, &vars)
}

#[test]
fn an_empty_environment_lists_every_missing_variable_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(bin(dir.path(), &[], &[]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let all = text(&out);
    for var in [
        "PUBLIC_BASE_URL",
        "TOKEN_ENCRYPTION_KEYS",
        "SLACK_BOT_TOKEN",
        "SLACK_SIGNING_SECRET",
        "DATABRICKS_HOST",
        "DATABRICKS_CLIENT_ID",
        "AGENT",
    ] {
        assert!(all.contains(var), "{var} not named:\n{all}");
    }
    assert!(
        !dir.path().join("data").exists(),
        "nothing is created before configuration is valid"
    );
}

#[test]
fn each_required_variable_missing_on_its_own_is_named_and_exits_2() {
    let db = TestDb::sqlite();
    for missing in [
        "PUBLIC_BASE_URL",
        "TOKEN_ENCRYPTION_KEYS",
        "SLACK_BOT_TOKEN",
        "SLACK_SIGNING_SECRET",
        "DATABRICKS_HOST",
        "DATABRICKS_CLIENT_ID",
    ] {
        let env: Vec<_> = valid_env(&db.url).into_iter().filter(|(k, _)| *k != missing).collect();
        let out = run(with_env(&db, &["check"], &env));
        let all = text(&out);
        assert_eq!(out.status.code(), Some(2), "{missing}: {all}");
        assert!(all.contains(&format!("{missing}: is required")), "{missing}: {all}");
        assert_eq!(all.matches("  - ").count(), 1, "only {missing} is wrong: {all}");
        assert_no_canary(&all);
    }
}

#[test]
fn malformed_values_are_all_reported_at_once_without_echoing_secrets() {
    let db = TestDb::sqlite();
    let mut env = valid_env(&db.url);
    // Wrong length, not base64, duplicate id — each a separate problem.
    set(
        &mut env,
        "TOKEN_ENCRYPTION_KEYS",
        format!(
            "{KEY_A},ka:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=,kshort:Q0FOQVJZLXNob3J0,kbad:CANARY-not-base64!"
        ),
    );
    set(
        &mut env,
        "DATABASE_URL",
        "mysql://user:CANARY-client-secret@db/bot".into(),
    );
    set(&mut env, "DATABRICKS_HOST", "http://dbc-1.cloud.databricks.com".into());
    set(&mut env, "SLACK_API_URL", "http://slack.internal/api".into());
    let out = run(with_env(&db, &["check"], &env));
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    for expected in [
        "TOKEN_ENCRYPTION_KEYS: key id `ka` appears more than once",
        "TOKEN_ENCRYPTION_KEYS: entry 3 decodes to 12 bytes",
        "TOKEN_ENCRYPTION_KEYS: entry 4 is not valid base64",
        "DATABASE_URL: must start with sqlite://",
        "DATABRICKS_HOST: must be a workspace origin",
        "SLACK_API_URL: must be an https:// URL",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
    assert_no_canary(&all);
    assert!(!all.contains("Q0FOQVJZ") && !all.contains("CANARY-not-base64"), "{all}");
}

#[test]
fn a_dotenv_file_is_read_and_real_environment_variables_win_over_it() {
    let db = TestDb::sqlite();
    std::fs::write(
        db.dir.path().join(".env"),
        "# comment\nDATABASE_URL=mysql://nowhere/bot\n",
    )
    .unwrap();
    let from_file = run(bin(db.dir.path(), &["migrate"], &[]));
    assert_eq!(from_file.status.code(), Some(2), "{}", text(&from_file));
    assert!(text(&from_file).contains("DATABASE_URL: must start with sqlite://"));

    let overridden = run(db.command(&["migrate"]));
    assert!(overridden.status.success(), "{}", text(&overridden));
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(run(bin(dir.path(), &["frobnicate"], &[])).status.code(), Some(2));
    let bad_team = run(bin(
        dir.path(),
        &["links", "remove", "--team", "nope", "--user", "U1"],
        &[],
    ));
    assert_eq!(bad_team.status.code(), Some(2), "{}", text(&bad_team));
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_generate_prints_a_fresh_32_byte_base64_key_that_the_config_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<String> = (0..2)
        .map(|_| {
            let out = run(bin(dir.path(), &["keys", "generate"], &[]));
            assert!(out.status.success());
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        })
        .collect();
    assert_ne!(keys[0], keys[1]);
    for key in &keys {
        let bytes = base64::engine::general_purpose::STANDARD.decode(key).unwrap();
        assert_eq!(bytes.len(), 32);
    }
    // Usable as is, or with an id in front.
    let db = TestDb::sqlite();
    let (_slack, slack_url) = fake_slack().await;
    let databricks = crate::common::fake_databricks::FakeDatabricks::start().await;
    for entry in [keys[0].clone(), format!("k2:{},{}", keys[0], keys[1])] {
        let mut env = valid_env(&db.url);
        set(&mut env, "TOKEN_ENCRYPTION_KEYS", entry);
        set(&mut env, "SLACK_API_URL", slack_url.clone());
        set(&mut env, "DATABRICKS_HOST", databricks.uri.clone());
        let out = run_async(with_env(&db, &["check"], &env)).await;
        assert!(out.status.success(), "{}", text(&out));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_then_check_report_on_both_backends() {
    let (_slack, slack_url) = fake_slack().await;
    let databricks = crate::common::fake_databricks::FakeDatabricks::start().await;
    for db in TestDb::all().await {
        let out = run(db.command(&["migrate"]));
        assert!(out.status.success(), "{}: {}", db.name, text(&out));
        let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
            .unwrap()
            .count();
        assert!(
            text(&out).contains(&format!("migrations applied: {migrations}")),
            "{}",
            text(&out)
        );
        let again = run(db.command(&["migrate"]));
        assert!(text(&again).contains("migrations applied: 0"), "{}", text(&again));

        let mut env = valid_env(&db.url);
        set(&mut env, "SLACK_API_URL", slack_url.clone());
        set(&mut env, "DATABRICKS_HOST", databricks.uri.clone());
        let check = run_async(with_env(&db, &["check"], &env)).await;
        let all = text(&check);
        assert!(check.status.success(), "{}: {all}", db.name);
        assert!(
            all.contains("configuration  ok") && all.contains("database       ok"),
            "{all}"
        );
        assert!(
            all.contains("slack          ok (workspace Acme T061EG9R6, bot user U0LAN0Z89)"),
            "{all}"
        );
        assert_no_canary(&all);
    }
}

// Issue 16: `check` names misconfigured OTEL_* variables (never a header's value) and says
// whether the collector takes an export. Traces are optional: neither a bad OTEL_* value
// nor a collector that is down fails `check`.
#[tokio::test(flavor = "multi_thread")]
async fn check_names_bad_otel_variables_and_whether_the_collector_takes_an_export() {
    use wiremock::matchers::{header, method, path};

    let db = TestDb::sqlite();
    let (_slack, slack_url) = fake_slack().await;
    let databricks = crate::common::fake_databricks::FakeDatabricks::start().await;
    let mut env = valid_env(&db.url);
    set(&mut env, "SLACK_API_URL", slack_url);
    set(&mut env, "DATABRICKS_HOST", databricks.uri.clone());

    let mut bad = env.clone();
    set(
        &mut bad,
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "http://collector.internal:4318".into(),
    );
    set(&mut bad, "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into());
    set(&mut bad, "OTEL_EXPORTER_OTLP_HEADERS", "api-key=CANARY-otlp-key".into());
    set(&mut bad, "OTEL_TRACES_SAMPLER_ARG", "0.5".into());
    set(&mut bad, "OTEL_TRACES_SAMPLER", "traceidratio".into());
    set(&mut bad, "OTEL_BSP_MAX_QUEUE_SIZE", "lots".into());
    let out = run_async(with_env(&db, &["check"], &bad)).await;
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    for var in [
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_BSP_MAX_QUEUE_SIZE",
    ] {
        assert!(
            all.contains(&format!("traces         WARNING: {var}: ")),
            "{var} not named: {all}"
        );
    }
    assert!(
        all.contains("sent in the clear") && all.contains("grpc is not built in"),
        "{all}"
    );
    assert!(!all.contains("CANARY-otlp-key"), "{all}");

    let collector = wiremock::MockServer::start().await;
    wiremock::Mock::given(method("POST"))
        .and(path("/v1/traces"))
        .and(header("api-key", "CANARY-otlp-key"))
        .and(header("content-type", "application/x-protobuf"))
        .respond_with(wiremock::ResponseTemplate::new(200))
        .expect(1)
        .mount(&collector)
        .await;
    let mut good = env.clone();
    set(&mut good, "OTEL_EXPORTER_OTLP_ENDPOINT", collector.uri());
    set(
        &mut good,
        "OTEL_EXPORTER_OTLP_HEADERS",
        "api-key=CANARY-otlp-key".into(),
    );
    let out = run_async(with_env(&db, &["check"], &good)).await;
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let expected = format!(
        "traces         ok (http/protobuf to {}/v1/traces; service databricks-slack-bot; sampler parentbased_always_on)",
        collector.uri()
    );
    assert!(all.contains(&expected), "{all}");
    assert!(!all.contains("CANARY-otlp-key"), "{all}");

    let mut down = env.clone();
    set(&mut down, "OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9".into());
    let out = run_async(with_env(&db, &["check"], &down)).await;
    let all = text(&out);
    assert!(
        out.status.success(),
        "a collector that is down does not fail check: {all}"
    );
    assert!(
        all.contains("traces         WARNING: the collector did not take an empty export (no connection)"),
        "{all}"
    );

    let out = run_async(with_env(&db, &["check"], &env)).await;
    assert!(
        text(&out).contains("traces         off (OTEL_EXPORTER_OTLP_ENDPOINT is not set)"),
        "{}",
        text(&out)
    );
    set(&mut bad, "OTEL_SDK_DISABLED", "true".into());
    let out = run_async(with_env(&db, &["check"], &bad)).await;
    assert!(
        text(&out).contains("traces         off (OTEL_SDK_DISABLED=true)"),
        "{}",
        text(&out)
    );
}

// Issue 11: `check` says which google-adk answers at AGENT_URL, and warns (without failing)
// when it is one that would not give the agent the asker's token.
#[tokio::test(flavor = "multi_thread")]
async fn check_reports_the_adk_version_and_warns_of_one_that_drops_the_token() {
    let (_slack, slack_url) = fake_slack().await;
    let databricks = crate::common::fake_databricks::FakeDatabricks::start().await;
    let db = TestDb::sqlite();
    for (fixture, line) in [
        ("version", "adk            ok (google-adk 1.27.1)"),
        (
            "version-2.1.0",
            "adk            WARNING: google-adk 2.1.0 does not give the agent the asker's token",
        ),
    ] {
        let adk = wiremock::MockServer::start().await;
        let recorded: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(format!(
                "{}/tests/fixtures/adk/{fixture}.json",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap(),
        )
        .unwrap();
        wiremock::Mock::given(wiremock::matchers::path("/version"))
            .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(&recorded["body"]))
            .expect(1)
            .mount(&adk)
            .await;
        let mut env = valid_env(&db.url);
        set(&mut env, "SLACK_API_URL", slack_url.clone());
        set(&mut env, "DATABRICKS_HOST", databricks.uri.clone());
        set(&mut env, "AGENT", "adk".into());
        set(&mut env, "AGENT_URL", adk.uri());
        set(&mut env, "ADK_APP_NAME", "sales_agent".into());

        let out = run_async(with_env(&db, &["check"], &env)).await;

        let all = text(&out);
        assert!(out.status.success(), "{fixture}: {all}");
        assert!(all.contains(line), "{fixture}: {all}");
        adk.verify().await;
    }
}

// LNK-01 (issue 12): running without an identity check needs its acknowledgement, and
// `check` warns of it even then.
#[tokio::test(flavor = "multi_thread")]
async fn no_identity_check_must_be_acknowledged_and_check_warns_of_it() {
    let (_slack, slack_url) = fake_slack().await;
    let databricks = crate::common::fake_databricks::FakeDatabricks::start().await;
    let db = TestDb::sqlite();
    let mut env = valid_env(&db.url);
    set(&mut env, "SLACK_API_URL", slack_url);
    set(&mut env, "DATABRICKS_HOST", databricks.uri.clone());
    set(&mut env, "LINK_IDENTITY_CHECK", "none".into());

    let refused = run_async(with_env(&db, &["check"], &env)).await;
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(
        text(&refused).contains("LINK_IDENTITY_CHECK_NONE_ACKNOWLEDGED"),
        "{}",
        text(&refused)
    );

    set(&mut env, "LINK_IDENTITY_CHECK_NONE_ACKNOWLEDGED", "yes".into());
    let warned = run_async(with_env(&db, &["check"], &env)).await;
    let all = text(&warned);
    assert!(warned.status.success(), "{all}");
    assert!(
        all.contains("linking        WARNING: LINK_IDENTITY_CHECK=none"),
        "{all}"
    );
}

#[test]
fn check_fails_with_exit_1_and_names_what_is_unreachable() {
    let db = TestDb::sqlite();
    let env = valid_env("postgres://nobody@127.0.0.1:1/none");
    let out = run(with_env(&db, &["check"], &env));
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("database       FAILED"), "{all}");
    assert!(all.contains("slack          FAILED: auth.test"), "{all}");
    assert!(
        all.contains("databricks     FAILED: the OAuth discovery document is unusable"),
        "{all}"
    );
    assert_no_canary(&all);
}

#[tokio::test(flavor = "multi_thread")]
async fn check_reports_a_rejected_slack_token() {
    let slack = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::path("/api/auth.test"))
        .respond_with(
            wiremock::ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"ok": false, "error": "invalid_auth"})),
        )
        .mount(&slack)
        .await;
    let db = TestDb::sqlite();
    let mut env = valid_env(&db.url);
    set(&mut env, "SLACK_API_URL", format!("{}/api", slack.uri()));
    let out = run_async(with_env(&db, &["check"], &env)).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("slack          FAILED: auth.test: Slack refused the call: invalid_auth"),
        "{all}"
    );
    let received = slack.received_requests().await.unwrap();
    assert_eq!(
        received[0].headers["authorization"].to_str().unwrap(),
        "Bearer xoxb-test-CANARYBOT",
        "the bot token goes only in the Authorization header"
    );
    assert_no_canary(&all);
}

#[tokio::test]
async fn links_list_and_remove_work_on_real_data_and_never_print_secrets() {
    for db in TestDb::all().await {
        let store = db.open().await;
        let v = vault(&[KEY_A]);
        Person::new("T1", "UALICE")
            .link(&store, &v, "doau-CANARY-list", NOW)
            .await;
        Person::new("T2", "UBOB")
            .link(&store, &v, "doau-CANARY-list", NOW)
            .await;
        store.close().await;

        let out = run(db.command(&["links", "list"]));
        let all = text(&out);
        assert!(out.status.success(), "{all}");
        assert!(
            all.contains("UALICE") && all.contains("UBOB") && all.contains("ualice@example.com"),
            "{all}"
        );
        assert!(all.contains("active") && all.contains("2027-01-15 08:00Z"), "{all}");
        assert!(!all.contains("CANARY"), "{all}");

        let t2 = text(&run(db.command(&["links", "list", "--team", "T2"])));
        assert!(t2.contains("UBOB") && !t2.contains("UALICE"), "{t2}");

        let removed = run(db.command(&["links", "remove", "--team", "T1", "--user", "UALICE"]));
        assert!(removed.status.success());
        assert!(text(&removed).contains("removed the link of UALICE in T1"));
        let twice = run(db.command(&["links", "remove", "--team", "T1", "--user", "UALICE"]));
        assert!(twice.status.success(), "removing twice is not an error");
        assert!(text(&twice).contains("has no link"));

        let store = db.open().await;
        assert!(
            store
                .list_links(None)
                .await
                .unwrap()
                .iter()
                .all(|l| l.user.as_str() == "UBOB")
        );
        store.close().await;
    }
}

// CRY-05 through the command line, with LOG-01's canary check on full trace logs.
#[tokio::test]
async fn keys_rotate_reseals_real_rows_and_logs_no_secret_even_at_trace() {
    for db in TestDb::all().await {
        let store = db.open().await;
        let people: Vec<Person> = (0..5).map(|i| Person::new("T1", &format!("U{i}"))).collect();
        for p in &people {
            p.link(&store, &vault(&[KEY_A]), "doau-CANARY-rotate", NOW).await;
        }
        store.close().await;

        let keys = format!("{KEY_B},{KEY_A}");
        let env = [
            ("DATABASE_URL", db.url.as_str()),
            ("TOKEN_ENCRYPTION_KEYS", keys.as_str()),
            ("RUST_LOG", "trace"),
            ("LOG_FORMAT", "json"),
        ];
        let out = run(bin(db.dir.path(), &["keys", "rotate", "--batch-size", "2"], &env));
        let all = text(&out);
        assert!(out.status.success(), "{}: {all}", db.name);
        assert!(all.contains("re-encrypted 5 link(s) under key kb"), "{all}");
        assert!(!all.contains("CANARY"), "secret in output:\n{all}");
        assert!(
            !all.contains("ICEiIyQlJico") && !all.contains("AAECAwQFBgcI"),
            "key in output"
        );

        let store = db.open().await;
        for p in &people {
            let link = store.find_link(&p.team, &p.user).await.unwrap().unwrap();
            assert_eq!(link.key_id, "kb");
            assert_eq!(link.status, LinkStatus::Active);
            assert!(vault(&[KEY_B]).open(p.binding(), &link.sealed_refresh_token).is_ok());
        }
        store.close().await;
    }
}

// CRY-06 (issue 12): links sealed under a key no longer configured are counted at once:
// `check` fails naming the key and the count, and `serve` refuses to start, instead of
// each person finding out when their question fails.
#[tokio::test(flavor = "multi_thread")]
async fn secrets_under_a_missing_key_stop_the_start_and_fail_check_with_their_count() {
    let (_slack, slack_url) = fake_slack().await;
    let databricks = crate::common::fake_databricks::FakeDatabricks::start().await;
    let db = TestDb::sqlite();
    let store = db.open().await;
    let retired = vault(&["kc:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="]);
    for i in 0..3 {
        Person::new("T1", &format!("UOLD{i}"))
            .link(&store, &retired, "rt-CANARY-retired", NOW)
            .await;
    }
    Person::new("T1", "UNEW")
        .link(&store, &vault(&[KEY_A]), "rt-new", NOW)
        .await;
    store.close().await;
    let mut env = valid_env(&db.url);
    set(&mut env, "SLACK_API_URL", slack_url);
    set(&mut env, "DATABRICKS_HOST", databricks.uri.clone());

    let checked = run_async(with_env(&db, &["check"], &env)).await;
    let all = text(&checked);
    assert_eq!(checked.status.code(), Some(1), "{all}");
    assert!(
        all.contains("stored secrets FAILED: 3 stored secret(s) are sealed under key ids TOKEN_ENCRYPTION_KEYS does not have: kc (3)"),
        "{all}"
    );

    let served = run_async(with_env(&db, &["serve"], &env)).await;
    let all = text(&served);
    assert!(!served.status.success(), "{all}");
    assert!(all.contains("kc (3)"), "{all}");
    assert_no_canary(&all);
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Starts `serve` (the default command) through `sh` with `umask 000`.
fn start_server(db: &TestDb, port: u16) -> std::process::Child {
    let mut env = valid_env(&db.url);
    env.retain(|(k, _)| *k != "BIND_ADDR");
    env.push(("BIND_ADDR", format!("127.0.0.1:{port}")));
    Command::new("sh")
        .args(["-c", "umask 000; exec \"$0\"", crate::common::BIN])
        .current_dir(db.dir.path())
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Posts a signed `app_mention` delivery `event_id` (its message `1700000000.{n}`) to the
/// binary serving on `port` with [`valid_env`]'s signing secret.
pub(crate) async fn post_mention(
    client: &reqwest::Client,
    port: u16,
    event_id: &str,
    n: usize,
) -> reqwest::Result<reqwest::Response> {
    let body = serde_json::json!({
        "type": "event_callback", "team_id": "T061EG9R6", "api_app_id": "A1",
        "event_id": event_id, "event_time": 1,
        "authorizations": [{"team_id": "T061EG9R6", "user_id": "U0LAN0Z89", "is_bot": true}],
        "event": {"type": "app_mention", "user": "U061F7AUR", "channel": "C0LAN2Q65",
                  "text": "<@U0LAN0Z89> still there?", "ts": format!("1700000000.{n:06}")}
    });
    post_signed(client, port, "CANARY-signing-secret", body.to_string(), None).await
}

/// Waits (up to 20 s) until the server `child` accepts connections on `port`; panics with
/// its stderr if it exits first.
pub(crate) async fn wait_until_serving(port: u16, child: &mut std::process::Child) {
    eventually("the server to start", Duration::from_secs(20), || {
        let serving = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        if !serving && let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!("server exited early with {status}: {err}");
        }
        std::future::ready(serving.then_some(()))
    })
    .await;
}

// CRY-09 (permissions) and REL-06 (SIGTERM drains and exits cleanly), with the process
// started under umask 000.
#[tokio::test]
async fn serve_creates_a_private_database_even_under_umask_000_and_stops_cleanly_on_sigterm() {
    let db = TestDb::sqlite();
    let path = db.sqlite_path().unwrap();
    let port = free_port();
    let mut child = start_server(&db, port);
    wait_until_serving(port, &mut child).await;

    assert_eq!(mode(path.parent().unwrap()), 0o700, "database directory");
    for suffix in ["", "-wal", "-shm"] {
        let file = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }

    // LOG-01: request logs name the route template, never the path or query string.
    for path in ["/healthz?code=CANARY-code&state=CANARY-state", "/link/CANARY-link-id"] {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        std::io::Write::write_all(
            &mut conn,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 "), "{response}");
    }

    // The container health check: the binary asks itself, with only the bot's BIND_ADDR
    // (an unspecified address is probed on loopback).
    for (args, says) in [
        (&["health"][..], "/healthz ok"),
        (&["health", "--ready"][..], "/readyz ok"),
    ] {
        let probe = run_async(with_env(&db, args, &[("BIND_ADDR", format!("0.0.0.0:{port}"))])).await;
        assert!(probe.status.success(), "{}", text(&probe));
        assert!(text(&probe).contains(says), "{}", text(&probe));
    }

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = eventually("the server to stop on SIGTERM", Duration::from_secs(25), || {
        std::future::ready(child.try_wait().unwrap())
    })
    .await;
    let mut logs = String::new();
    child.stderr.take().unwrap().read_to_string(&mut logs).unwrap();
    assert!(status.success(), "exit {status}: {logs}");
    assert!(logs.contains("SIGTERM received") && logs.contains("stopped"), "{logs}");
    assert!(
        logs.contains(r#""route":"/healthz""#),
        "requests are logged with their route: {logs}"
    );
    assert!(
        !logs.contains("CANARY"),
        "a path or query string reached the logs: {logs}"
    );
    assert_no_canary(&logs);
}

#[test]
fn the_slack_manifests_point_at_our_routes_and_differ_only_in_transport() {
    let http = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/manifest.yml")).unwrap();
    let socket = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/manifest.socket-mode.yml")).unwrap();
    for route in ["/slack/events", "/slack/commands", "/slack/interactions"] {
        assert!(http.contains(&format!("https://bot.example.com{route}")), "{route}");
        assert!(!socket.contains(route), "socket mode needs no {route} URL");
    }
    assert!(http.contains("socket_mode_enabled: false") && socket.contains("socket_mode_enabled: true"));
    let body = |m: &str| -> Vec<String> {
        m.lines()
            .filter(|l| {
                !l.trim_start().starts_with('#') && !l.contains("bot.example.com") && !l.contains("socket_mode_enabled")
            })
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        body(&http),
        body(&socket),
        "scopes, events and features are the same in both"
    );
    for needed in [
        "app_mention",
        "message.im",
        "app_home_opened",
        "app_uninstalled",
        "tokens_revoked",
        "assistant_thread_started",
        "assistant:write",
        "assistant_view:",
        "command: /databricks",
    ] {
        assert!(http.contains(needed), "{needed}");
    }
}

// DATABRICKS_AUTH (issue 13): `check` reaches each mode's endpoints — Entra's discovery
// document for entra-obo; the IdP's and the workspace's token exchange for
// token-federation — and fails, naming them, when they are unreachable.
#[tokio::test(flavor = "multi_thread")]
async fn check_reaches_the_endpoints_of_each_identity_provider_mode() {
    let (_slack, slack_url) = fake_slack().await;
    let databricks = std::sync::Arc::new(crate::common::fake_databricks::FakeDatabricks::start().await);
    let entra = crate::common::fake_entra::FakeEntra::start(databricks.clone()).await;
    let idp = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::path("/.well-known/openid-configuration"))
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "issuer": idp.uri(),
            "authorization_endpoint": format!("{}/authorize", idp.uri()),
            "token_endpoint": format!("{}/token", idp.uri()),
            "jwks_uri": format!("{}/jwks", idp.uri()),
            "code_challenge_methods_supported": ["S256"]})))
        .mount(&idp)
        .await;
    let db = TestDb::sqlite();
    let base = |mode: &[(&'static str, String)]| {
        let mut env = valid_env(&db.url);
        set(&mut env, "SLACK_API_URL", slack_url.clone());
        set(&mut env, "DATABRICKS_HOST", databricks.uri.clone());
        for (k, v) in mode {
            set(&mut env, k, v.clone());
        }
        env
    };
    let federation = [
        ("DATABRICKS_AUTH", "token-federation".to_owned()),
        ("IDP_ISSUER", idp.uri()),
        ("IDP_CLIENT_ID", "bot".to_owned()),
    ];

    let out = run_async(with_env(&db, &["check"], &base(&entra.env()))).await;
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("databricks     ok (entra-obo: sign-in at Entra ID discovered at")
            && all.contains("/oauth2/v2.0/token"),
        "{all}"
    );
    assert!(!all.contains("exchange "), "{all}");
    assert_no_canary(&all);

    let out = run_async(with_env(&db, &["check"], &base(&federation))).await;
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("databricks     ok (token-federation: sign-in at the identity provider"),
        "{all}"
    );
    assert!(
        all.contains(&format!(
            "exchange       ok (the workspace's token exchange answers at {}/oidc/v1/token)",
            databricks.uri
        )),
        "{all}"
    );

    // The workspace unreachable: the exchange line fails and names it.
    let mut gone = base(&federation);
    set(&mut gone, "DATABRICKS_HOST", "http://127.0.0.1:9".into());
    let out = run_async(with_env(&db, &["check"], &gone)).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("exchange       FAILED: http://127.0.0.1:9/oidc/v1/token cannot be reached"),
        "{all}"
    );
}

// GENIE_SPACES (issue 14): a malformed mapping exits 2 naming the entry; a good one is
// listed by `check`.
#[tokio::test(flavor = "multi_thread")]
async fn a_genie_space_mapping_is_validated_and_listed_by_check() {
    let (_slack, slack_url) = fake_slack().await;
    let databricks = crate::common::fake_databricks::FakeDatabricks::start().await;
    let db = TestDb::sqlite();
    let mut env = valid_env(&db.url);
    set(&mut env, "SLACK_API_URL", slack_url);
    set(&mut env, "DATABRICKS_HOST", databricks.uri.clone());
    set(&mut env, "GENIE_SPACES", "C0SALES=01ef-sales,general=01f0".into());
    let out = run_async(with_env(&db, &["check"], &env)).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("GENIE_SPACES") && all.contains("`general=01f0`"), "{all}");

    set(&mut env, "GENIE_SPACES", "C0SALES=01ef-sales,C0FIN=01f0-fin".into());
    let out = run_async(with_env(&db, &["check"], &env)).await;
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains(
            "genie          ok (default space 01ef-space; 2 channel(s) mapped: C0FIN → 01f0-fin, C0SALES → 01ef-sales)"
        ),
        "{all}"
    );
}

// Group commit keeps durability (issue 15): signed deliveries from 32 connections at once,
// the process SIGKILLed in the middle of the load; every delivery that was acknowledged is
// in the database with its job, and nothing is half-recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_delivery_survives_a_sigkill_in_the_middle_of_a_load() {
    use std::sync::{Arc, Mutex};

    let db = TestDb::sqlite();
    let port = free_port();
    let mut env = valid_env(&db.url);
    set(&mut env, "BIND_ADDR", format!("127.0.0.1:{port}"));
    // Logs go nowhere: a pipe nobody reads would fill up (issue 17).
    let mut child = Command::new(crate::common::BIN)
        .current_dir(db.dir.path())
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until_serving(port, &mut child).await;

    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let client = reqwest::Client::new();
    let senders: Vec<_> = (0..32)
        .map(|sender| {
            let (client, acked) = (client.clone(), acked.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    let id = format!("EvKill{sender}x{i}");
                    match post_mention(&client, port, &id, i).await {
                        Ok(response) if response.status() == 200 => acked.lock().unwrap().push(id),
                        Ok(_) => {}
                        Err(_) => return, // the process is gone
                    }
                }
            })
        })
        .collect();
    eventually("a few hundred acknowledgements", Duration::from_secs(30), || {
        std::future::ready((acked.lock().unwrap().len() >= 300).then_some(()))
    })
    .await;
    child.kill().unwrap(); // SIGKILL, while the senders keep sending
    child.wait().unwrap();
    for sender in senders {
        sender.await.unwrap();
    }

    let acked = acked.lock().unwrap().clone();
    let recorded: Vec<(String,)> = crate::common::app::rows(&db.url, "SELECT event_id FROM slack_events").await;
    let recorded: std::collections::HashSet<String> = recorded.into_iter().map(|(id,)| id).collect();
    let lost: Vec<&String> = acked.iter().filter(|id| !recorded.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged deliveries lost, such as {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    let (jobs,): (i64,) = crate::common::app::rows(&db.url, "SELECT COUNT(*) FROM jobs").await[0];
    assert_eq!(
        jobs as usize,
        recorded.len(),
        "one job per recorded delivery, no more, no less"
    );
}

#[test]
fn health_fails_with_exit_1_when_nothing_answers_and_2_for_a_bad_bind_addr() {
    let db = TestDb::sqlite();
    let closed = run(with_env(
        &db,
        &["health"],
        &[("BIND_ADDR", format!("127.0.0.1:{}", free_port()))],
    ));
    assert_eq!(closed.status.code(), Some(1), "{}", text(&closed));
    assert!(text(&closed).contains("/healthz on 127.0.0.1:"), "{}", text(&closed));
    let bad = run(with_env(&db, &["health"], &[("BIND_ADDR", "port 3000".into())]));
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(text(&bad).contains("BIND_ADDR"), "{}", text(&bad));
}

// Issue 17, item 3: a command whose reader goes away, as in `links list | head -1`, ends
// quietly and successfully, as Unix tools do — no panic, whatever is left unprinted.
#[tokio::test]
async fn links_list_into_a_reader_that_stops_after_one_line_exits_cleanly() {
    let db = TestDb::sqlite();
    let store = db.open().await;
    let v = vault(&[KEY_A]);
    // Far more than a pipe holds (64 KiB), so the command is still writing when `head` goes.
    for i in 0..1500 {
        Person::new("T1", &format!("UMANY{i:05}"))
            .link(&store, &v, "doau-CANARY-many", NOW)
            .await;
    }
    store.close().await;
    let mut piped = Command::new("bash");
    piped
        .args(["-c", "set -o pipefail; \"$0\" links list | head -1", crate::common::BIN])
        .current_dir(db.dir.path())
        .env_clear()
        .env("DATABASE_URL", &db.url)
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    let out = run(piped);
    let all = text(&out);
    assert!(
        out.status.success(),
        "the command's own status, through pipefail: {all}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("TEAM"), "{all}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1, "{all}");
    assert!(!all.contains("panicked") && !all.contains("Broken pipe"), "{all}");
}
