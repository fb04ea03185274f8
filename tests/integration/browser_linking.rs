//! The "done when", in a real browser: a person goes from the private prompt to
//! "Linked as …" in headless Chromium, against the app and the OpenID-certified
//! `oidc-provider` configured like a Databricks workspace (see `oidc_conformance.rs`); the
//! kept question then reaches the agent with an access token that server issued, and the
//! database holds only ciphertext of the refresh token.
//!
//! The browser is driven by `tests/conformance/browser-walkthrough.mjs` (playwright-core,
//! with the system's `/usr/bin/chromium`; it never downloads a browser). `.ci/run` installs
//! Chromium and `npm ci --prefix tests/conformance`. Without Chromium or Node.js the test
//! says so loudly and skips; with them but without the npm install it fails.
//!
//! The app is reached as `http://localhost:PORT` and the workspace as
//! `http://127.0.0.1:PORT`: two different sites, so the way back from the workspace is a
//! real cross-site redirect, as from Databricks (LNK-11: the `SameSite=Lax` binding cookie
//! must survive it).

use std::path::Path;
use std::time::Duration;

use crate::common::app::{Options, TestApp, mention};
use crate::common::oidc_provider::{self, DIR};
use crate::common::{KEY_A, PATIENCE, TestDb, eventually};
use databricks_slack_bot::crypto::{Binding, Purpose};
use databricks_slack_bot::domain::{TeamId, UserId};
use secrecy::ExposeSecret;
use serde_json::Value;

const CHROMIUM: &str = "/usr/bin/chromium";
/// The fixtures' asker; the fake Slack gives them this email, so the identity check passes.
const ASKER_EMAIL: &str = "asker@example.com";

/// Whether the browser can run here: `None` (after saying why, loudly) when Chromium or
/// Node.js is missing. A missing npm install is a failure, not a skip.
fn browser_available() -> Option<()> {
    if !Path::new(CHROMIUM).exists() {
        eprintln!("\n*** SKIPPING the browser walk-through: {CHROMIUM} is not installed ***\n");
        return None;
    }
    if !oidc_provider::node_available("the browser walk-through") {
        return None;
    }
    oidc_provider::assert_installed(&["playwright-core", "oidc-provider"]);
    Some(())
}

/// A loopback port that was free a moment ago: the app's configuration (its public URL
/// and the workspace's redirect URI) must name the port before the app binds it.
fn free_loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The "Connect Databricks" link in a private prompt the fake Slack received.
fn link_in(prompt: &Value, public_base_url: &str) -> String {
    let text = prompt.to_string();
    let start = text
        .find(&format!("{public_base_url}/link/"))
        .unwrap_or_else(|| panic!("no link in the prompt: {text}"));
    text[start..].split('"').next().unwrap().to_owned()
}

/// Runs the browser through linking from `link`, signing in as `login`; its report.
async fn walk_through(link: &str, login: &str, screenshot: &Path) -> Value {
    let run = tokio::process::Command::new("node")
        .arg("browser-walkthrough.mjs")
        .current_dir(DIR)
        .env("LINK_URL", link)
        .env("LOGIN", login)
        .env("SCREENSHOT", screenshot)
        .env("CHROMIUM", CHROMIUM)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the browser walk-through finishes within 90 s")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|_| panic!("the walk-through printed no report.\nstdout: {stdout}\nstderr: {stderr}"));
    assert!(
        output.status.success() && report["ok"] == true,
        "the browser could not finish linking (screenshot: {}):\n{report:#}\nstderr: {stderr}",
        screenshot.display()
    );
    report
}

/// Waits (up to [`PATIENCE`]) for a message containing `needle` that the fake Slack
/// received, posted or as an update of an earlier one.
async fn slack_message_containing(app: &TestApp, needle: &str) -> Value {
    let what = format!("a Slack message containing {needle:?}");
    eventually(&what, PATIENCE, || async {
        for api_method in ["chat.postMessage", "chat.update"] {
            let calls = app.slack_calls(api_method).await;
            if let Some(found) = calls.into_iter().find(|m| m.to_string().contains(needle)) {
                return Some(found);
            }
        }
        None
    })
    .await
}

/// Whether `needle` appears anywhere in the SQLite database file, its WAL or shared memory.
fn in_sqlite_files(path: &Path, needle: &str) -> bool {
    ["", "-wal", "-shm"].iter().any(|suffix| {
        std::fs::read(format!("{}{suffix}", path.display()))
            .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_links_in_a_real_browser_and_their_kept_question_is_answered() {
    let Some(()) = browser_available() else { return };
    let port = free_loopback_port();
    let public_base_url = format!("http://localhost:{port}");
    let server = oidc_provider::start(&format!("{public_base_url}/oauth/databricks/callback"));
    let db = TestDb::sqlite();
    let app = TestApp::spawn_with(Options {
        db: Some(db.url.clone()),
        extra_env: vec![
            ("BIND_ADDR", format!("127.0.0.1:{port}")),
            ("PUBLIC_BASE_URL", public_base_url.clone()),
            ("DATABRICKS_HOST", server.uri.clone()),
            ("DATABRICKS_CLIENT_ID", "conformance-client".into()),
            ("DATABRICKS_CLIENT_SECRET", "conformance-secret".into()),
        ],
        ..Default::default()
    })
    .await;

    // A question without a link: the private prompt carries the link.
    app.post_event(&mention("Ev1", "<@U0LAN0Z89> how many orders last week?"))
        .await;
    let prompts = app.wait_for_calls("chat.postEphemeral", 1).await;
    let link = link_in(prompts.first().expect("a private prompt"), &public_base_url);

    // The person opens it, continues, signs in at the workspace and consents.
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser_linking.png");
    let walk = walk_through(&link, ASKER_EMAIL, &screenshot).await;
    eprintln!("browser walk-through screenshot: {}", screenshot.display());

    // The landing page names who is linked to what, and lets its form lead only to the
    // workspace (OA-09).
    let landing = &walk["landing"];
    let text = landing["text"].as_str().unwrap();
    assert_eq!(landing["status"], 200, "{landing}");
    assert_eq!(landing["title"], "Connect Databricks", "{landing}");
    assert!(
        text.contains("@alice") && text.contains("Acme") && text.contains(&server.uri),
        "{text}"
    );
    let csp = landing["csp"].as_str().unwrap();
    assert!(csp.contains(&format!("form-action 'self' {}", server.uri)), "{csp}");

    // Continuing bound this browser with a fresh cookie that came back on the cross-site
    // redirect from the workspace (LNK-03, LNK-11); the result page then removed it.
    let cookie = walk["claimSetCookie"].as_str().expect("the claim set a cookie");
    assert!(cookie.starts_with("databricks-link="), "{cookie}");
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attribute), "{attribute} missing: {cookie}");
    }
    assert_eq!(walk["botCookiesLeft"], serde_json::json!([]), "{walk:#}");

    // It ends on the bot's result page at a clean URL: the code and state were never in
    // the address bar or history, since the callback answered with a redirect (OA-09).
    let result = &walk["final"];
    assert_eq!(result["url"], format!("{public_base_url}/link/result"), "{result}");
    assert_eq!(result["hasCodeOrState"], false, "{result}");
    assert_eq!(result["title"], "You’re connected", "{result}");
    let text = result["text"].as_str().unwrap();
    assert!(
        text.contains(&format!("Linked as {ASKER_EMAIL} in {}", server.uri)),
        "{text}"
    );
    let committed_query_names: Vec<&Value> = walk["navigations"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["query"].as_array().unwrap())
        .collect();
    assert!(
        !committed_query_names
            .iter()
            .any(|name| *name == "code" || *name == "state"),
        "{walk:#}"
    );

    // The bot's pages broke no rule of their own CSP and asked nothing of other hosts.
    let errors = walk["consoleErrors"].as_array().unwrap();
    assert!(
        !errors
            .iter()
            .any(|e| e.as_str().unwrap().contains("Content Security Policy")),
        "{errors:?}"
    );
    let blocked = walk["blockedRequests"].as_array().unwrap();
    assert!(
        blocked
            .iter()
            .all(|r| !r["from"].as_str().unwrap().starts_with(&public_base_url)),
        "{blocked:?}"
    );

    // Slack got "Linked as …" (LNK-10), and the kept question was answered in its thread.
    let confirmation = slack_message_containing(&app, "Linked as").await;
    assert!(confirmation.to_string().contains(ASKER_EMAIL), "{confirmation}");
    slack_message_containing(&app, "answer: how many orders last week?").await;
    let replies = app.slack_calls("chat.postMessage").await;
    assert!(
        replies.iter().any(|m| m["thread_ts"] == "1515449522.000016"),
        "nothing in the question's thread: {replies:?}"
    );
    assert_eq!(app.settled_job_states().await, ["done"]);

    // The agent was given an access token oidc-provider issued for this person: the
    // workspace's SCIM Me accepts it.
    let tokens = app.agent.tokens();
    assert_eq!(tokens.len(), 1, "one question, one answer");
    let access_token = tokens[0].clone();
    let me = reqwest::Client::new()
        .get(format!("{}/api/2.0/preview/scim/v2/Me", server.uri))
        .bearer_auth(&access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["userName"], ASKER_EMAIL);

    // The database holds the refresh token sealed: the row's bytes and the SQLite files
    // never contain it, nor the access token, in plain text (CRY-01).
    let link = app
        .store
        .find_link(
            &TeamId::parse("T061EG9R6").unwrap(),
            &UserId::parse("U061F7AUR").unwrap(),
        )
        .await
        .unwrap()
        .expect("linked");
    assert_eq!(link.databricks_user_name, ASKER_EMAIL);
    let binding = Binding::new(Purpose::RefreshToken, &link.team, &link.user, &link.workspace);
    let refresh_token = crate::common::vault(&[KEY_A])
        .open(binding, &link.sealed_refresh_token)
        .expect("the key opens it");
    let refresh_token = refresh_token.expose_secret().to_owned();
    assert!(
        !link
            .sealed_refresh_token
            .windows(refresh_token.len())
            .any(|w| w == refresh_token.as_bytes()),
        "only ciphertext in the row"
    );
    let sqlite = db.sqlite_path().unwrap();
    for (name, secret) in [("refresh", &refresh_token), ("access", &access_token)] {
        assert!(
            !in_sqlite_files(&sqlite, secret),
            "a plain {name} token in the database files"
        );
    }
    app.stop().await;
    assert!(!in_sqlite_files(&sqlite, &refresh_token), "after shutdown too");

    // What was sealed is the refresh token the workspace issued: it still works there.
    let refreshed = reqwest::Client::new()
        .post(format!("{}/oidc/v1/token", server.uri))
        .basic_auth("conformance-client", Some("conformance-secret"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", &refresh_token)])
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status(), 200, "{}", refreshed.text().await.unwrap());
}
