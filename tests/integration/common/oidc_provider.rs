//! The OpenID-certified `oidc-provider` (npm) on loopback, configured like a Databricks
//! workspace by `tests/conformance/oidc-provider-server.mjs`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Where the server and its npm install live.
pub const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/conformance");

/// The oidc-provider server, killed when dropped.
pub struct Server {
    child: Child,
    pub uri: String,
    /// Kept open: node dies of EPIPE if its stdout closes.
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts oidc-provider with `redirect_uri` as its client's only redirect URI.
pub fn start(redirect_uri: &str) -> Server {
    let mut child = Command::new("node")
        .arg("oidc-provider-server.mjs")
        .current_dir(DIR)
        .env("REDIRECT_URI", redirect_uri)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node starts");
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    let port: serde_json::Value = serde_json::from_str(&line).expect("the server prints its port");
    Server {
        child,
        uri: format!("http://127.0.0.1:{}", port["port"]),
        _stdout: stdout,
    }
}

/// Whether Node.js runs here; when it does not, says loudly that `test` is skipped.
pub fn node_available(test: &str) -> bool {
    if Command::new("node").arg("--version").output().is_err() {
        eprintln!("\n*** SKIPPING {test}: Node.js is not installed ***\n");
        return false;
    }
    true
}

/// Fails unless the npm `packages` are installed: with Node.js, a missing install is a
/// failure, not a skip.
pub fn assert_installed(packages: &[&str]) {
    for package in packages {
        assert!(
            std::path::Path::new(DIR).join("node_modules").join(package).exists(),
            "{package} is not installed: run `npm ci --prefix tests/conformance` (as .ci/run does)"
        );
    }
}

/// A browser with cookies (oidc-provider's login pages need them) that does not follow
/// redirects by itself.
pub fn browser_with_cookies() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn location(response: &reqwest::Response, base: &str) -> String {
    let to = response.headers()["location"].to_str().unwrap();
    url::Url::parse(base).unwrap().join(to).unwrap().to_string()
}

/// Signs in at oidc-provider's development login and consent pages as `login`, following
/// its redirects until it sends the browser back to the bot's callback.
pub async fn sign_in(browser: &reqwest::Client, server: &str, authorize: &str, login: &str) -> url::Url {
    let mut next = authorize.to_owned();
    for _ in 0..12 {
        if next.starts_with("https://bot.example.com/") {
            return url::Url::parse(&next).unwrap();
        }
        let response = browser.get(&next).send().await.unwrap();
        if response.status().is_redirection() {
            next = location(&response, server);
            continue;
        }
        // An interaction page: submit its form (login first, then consent).
        let html = response.text().await.unwrap();
        let action = html
            .split("action=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_else(|| panic!("no form on {next}: {html}"))
            .to_owned();
        let prompt = if html.contains("name=\"login\"") {
            "login"
        } else {
            "consent"
        };
        let form = [("prompt", prompt), ("login", login), ("password", "any")];
        let submitted = browser
            .post(url::Url::parse(server).unwrap().join(&action).unwrap())
            .form(&form)
            .send()
            .await
            .unwrap();
        assert!(
            submitted.status().is_redirection(),
            "{prompt} form: {}",
            submitted.status()
        );
        next = location(&submitted, server);
    }
    panic!("oidc-provider never sent the browser back");
}
