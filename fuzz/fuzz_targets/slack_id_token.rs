//! Sign in with Slack: what Slack's token endpoint answers, through `SlackOidc::identify`
//! — the answer's JSON, the id_token's header, its RS256 signature against the JWKS, and
//! the issuer, audience, expiry, nonce and Slack ids of its claims.
//!
//! The id_token check is private and async (it fetches discovery and keys), so the target
//! runs the real `identify` against a fake issuer on loopback inside this process (the
//! test JWKS of tests/fixtures). The first byte picks what the rest is:
//! - `b'r'`: the token endpoint's raw answer body, as the fuzzer wrote it;
//! - otherwise: id_token claims as JSON text, which the harness signs with the test key
//!   (`"$ISS"` becomes the fake issuer) — the only way past the signature to the claims.
#![no_main]

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex};

use axum::Router;
use axum::http::header;
use axum::routing::{get, post};
use databricks_slack_bot::slack::oidc::SlackOidc;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;
use url::Url;

const CLIENT_ID: &str = "123.456";
const NONCE: &str = "n-0S6_WzA2Mj";
const KID: &str = "test-key-1";
const JWKS: &str = include_str!("../../tests/fixtures/slack-oidc-test-jwks.json");
const KEY: &[u8] = include_bytes!("../../tests/fixtures/slack-oidc-test-key.pem");

struct Issuer {
    runtime: tokio::runtime::Runtime,
    oidc: SlackOidc,
    origin: String,
    /// What the token endpoint answers next.
    answer: Arc<Mutex<Vec<u8>>>,
    key: EncodingKey,
}

static ISSUER: LazyLock<Issuer> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let answer = Arc::new(Mutex::new(Vec::new()));
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let origin = format!("http://{addr}");
    let discovery = serde_json::json!({
        "issuer": origin,
        "authorization_endpoint": format!("{origin}/openid/connect/authorize"),
        "token_endpoint": format!("{origin}/api/openid.connect.token"),
        "jwks_uri": format!("{origin}/openid/connect/keys"),
    })
    .to_string();
    let token_answer = answer.clone();
    let app = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], discovery) }),
        )
        .route(
            "/openid/connect/keys",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], JWKS) }),
        )
        .route(
            "/api/openid.connect.token",
            post(move || {
                let body = token_answer.lock().unwrap().clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], body) }
            }),
        );
    runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let oidc = SlackOidc::new(
        http,
        Url::parse(&origin).unwrap(),
        CLIENT_ID.into(),
        SecretString::from("client-secret".to_owned()),
        &Url::parse("https://bot.example.com").unwrap(),
    );
    Issuer {
        runtime,
        oidc,
        origin,
        answer,
        key: EncodingKey::from_rsa_pem(KEY).unwrap(),
    }
});

fuzz_target!(|data: &[u8]| {
    let issuer = &*ISSUER;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let body = if mode == b'r' {
        rest.to_vec()
    } else {
        let Ok(claims) = std::str::from_utf8(rest) else {
            return;
        };
        let Ok(claims) = serde_json::from_str::<serde_json::Value>(&claims.replace("$ISS", &issuer.origin)) else {
            return;
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(KID.into());
        let Ok(token) = jsonwebtoken::encode(&header, &claims, &issuer.key) else {
            return;
        };
        serde_json::json!({"ok": true, "id_token": token})
            .to_string()
            .into_bytes()
    };
    *issuer.answer.lock().unwrap() = body;
    let nonce_accepted = Cell::new(false);
    let identity = issuer
        .runtime
        .block_on(issuer.oidc.identify(&SecretString::from("code".to_owned()), |nonce| {
            let ok = nonce == NONCE;
            nonce_accepted.set(ok);
            ok
        }));
    if identity.is_ok() {
        // Accepted only with this attempt's nonce.
        assert!(nonce_accepted.get());
    }
});
