//! `slack::signature::verify` over headers and a body the fuzzer chooses: no panic on any
//! header value, count or body; and (FZ-01) a correctly signed body is accepted exactly
//! within ±300 s, and any one-bit change to it is refused.
#![no_main]

use arbitrary::Arbitrary;
use axum::http::{HeaderMap, HeaderValue};
use databricks_slack_bot::slack::signature::{
    MAX_SKEW_SECONDS, SIGNATURE_HEADER, SignatureError, TIMESTAMP_HEADER, sign, verify,
};
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;

const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

#[derive(Debug, Arbitrary)]
struct Input {
    /// Every value of `X-Slack-Request-Timestamp` (none, one or several).
    timestamps: Vec<Vec<u8>>,
    /// Every value of `X-Slack-Signature`; when `sign_it` is set, a correct one is added.
    signatures: Vec<Vec<u8>>,
    body: Vec<u8>,
    /// Our clock, kept to 0..2^40 s (a real clock; past every 12-digit timestamp):
    /// `verify` assumes a sane clock, and an `i64::MIN` one overflows `now - ts`.
    now: u64,
    /// Sign the body correctly with the first timestamp, to reach the accepting path. Only
    /// a timestamp written canonically: Slack signs the header's text, and `sign` takes a
    /// number (`01` signed as `1` is rightly refused).
    sign_it: bool,
    /// Which bit of the body to flip for the mutation property.
    flip: u32,
}

fn headers(timestamps: &[Vec<u8>], signatures: &[Vec<u8>]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, values) in [(TIMESTAMP_HEADER, timestamps), (SIGNATURE_HEADER, signatures)] {
        for value in values {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                map.append(name, value);
            }
        }
    }
    map
}

fuzz_target!(|input: Input| {
    let secret = SecretString::from(SECRET.to_owned());
    let now = (input.now & ((1 << 40) - 1)) as i64;
    let mut signatures = input.signatures.clone();
    let signed_ts = input
        .timestamps
        .first()
        .and_then(|t| std::str::from_utf8(t).ok())
        .filter(|t| !t.is_empty() && t.len() <= 12 && t.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|t| t.parse::<i64>().ok().filter(|ts| ts.to_string() == t));
    if input.sign_it
        && let Some(ts) = signed_ts
    {
        signatures = vec![sign(SECRET, ts, &input.body).into_bytes()];
    }
    let map = headers(&input.timestamps, &signatures);
    let verdict = verify(&secret, &map, &input.body, now);

    if verdict.is_ok() {
        // Accepted: exactly one of each header, and a signature only the secret could make.
        let ts = signed_ts.expect("accepted with a well-formed timestamp");
        assert_eq!(map.get_all(TIMESTAMP_HEADER).iter().count(), 1);
        let given = map
            .get(SIGNATURE_HEADER)
            .unwrap()
            .to_str()
            .unwrap()
            .to_ascii_lowercase();
        assert_eq!(given, sign(SECRET, ts, &input.body));
        assert!(now.abs_diff(ts) <= MAX_SKEW_SECONDS as u64);

        // Any one-bit change to the body is refused.
        if !input.body.is_empty() {
            let mut body = input.body.clone();
            let bit = input.flip as usize % (body.len() * 8);
            body[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(verify(&secret, &map, &body, now), Err(SignatureError::Mismatch));
        }
    } else if input.sign_it
        && signed_ts.is_some()
        && input.timestamps.len() == 1
        && HeaderValue::from_bytes(&input.timestamps[0]).is_ok()
        && now.abs_diff(signed_ts.unwrap()) <= MAX_SKEW_SECONDS as u64
    {
        panic!("a correctly signed, fresh request was refused: {verdict:?}");
    }
});
