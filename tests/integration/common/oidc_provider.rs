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
