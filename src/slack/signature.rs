//! Slack request signing: `v0=hex(HMAC-SHA256(secret, "v0:{timestamp}:{raw body}"))`,
//! compared in constant time, with the timestamp within ±300 s of our clock.
//!
//! We verify ourselves rather than through slack-morphism's listener layer because its
//! verifier reads the system clock, which makes Slack's official test vector (and the
//! ±300 s boundaries) impossible to test; the algorithm is the same.

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// `X-Slack-Request-Timestamp`.
pub const TIMESTAMP_HEADER: &str = "x-slack-request-timestamp";
/// `X-Slack-Signature`.
pub const SIGNATURE_HEADER: &str = "x-slack-signature";
/// How far a request's timestamp may be from our clock, either way.
pub const MAX_SKEW_SECONDS: i64 = 300;

/// Why a request was not accepted as Slack's. Logged as a reason code; the caller only
/// ever sees an opaque 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing or repeated signature headers")]
    MissingHeader,
    #[error("timestamp is not a number of seconds")]
    BadTimestamp,
    #[error("timestamp is more than 300 seconds from now")]
    Stale,
    #[error("signature is malformed")]
    Malformed,
    #[error("signature does not match")]
    Mismatch,
}

/// The single value of `name`, refusing absent, repeated or non-ASCII headers.
fn single<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, SignatureError> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => value.to_str().map_err(|_| SignatureError::MissingHeader),
        _ => Err(SignatureError::MissingHeader),
    }
}

/// Checks that `body` was signed by Slack with `secret` within ±300 s of `now`.
pub fn verify(secret: &SecretString, headers: &HeaderMap, body: &[u8], now: i64) -> Result<(), SignatureError> {
    let timestamp = single(headers, TIMESTAMP_HEADER)?;
    let signature = single(headers, SIGNATURE_HEADER)?;
    if timestamp.is_empty() || timestamp.len() > 12 || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignatureError::BadTimestamp);
    }
    let ts: i64 = timestamp.parse().map_err(|_| SignatureError::BadTimestamp)?;
    let expected = signature
        .strip_prefix("v0=")
        .filter(|hex| hex.len() == 64)
        .and_then(|h| hex::decode(h).ok())
        .ok_or(SignatureError::Malformed)?;

    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()).expect("HMAC takes any key length");
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac.verify_slice(&expected).map_err(|_| SignatureError::Mismatch)?;

    if now.abs_diff(ts) > MAX_SKEW_SECONDS.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    Ok(())
}

/// Signs `body` the way Slack does; for tests and load generators that play Slack.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("v0:{timestamp}:").as_bytes());
    mac.update(body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    use super::*;

    /// Slack's published example (docs "Verifying requests from Slack").
    const VECTOR: &str = include_str!("../../tests/fixtures/slack-signing-vector.json");

    struct Vector {
        secret: SecretString,
        ts: i64,
        body: String,
        signature: String,
    }

    fn vector() -> Vector {
        let v: serde_json::Value = serde_json::from_str(VECTOR).unwrap();
        Vector {
            secret: SecretString::from(v["signing_secret"].as_str().unwrap().to_owned()),
            ts: v["timestamp"].as_str().unwrap().parse().unwrap(),
            body: v["body"].as_str().unwrap().to_owned(),
            signature: v["signature"].as_str().unwrap().to_owned(),
        }
    }

    fn headers(ts: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(TIMESTAMP_HEADER, HeaderValue::from_str(ts).unwrap());
        h.insert(SIGNATURE_HEADER, HeaderValue::from_str(sig).unwrap());
        h
    }

    // SIG-01
    #[test]
    fn slacks_official_vector_is_accepted_at_its_own_time() {
        let v = vector();
        assert_eq!(
            sign("8f742231b10e8888abcd99yyyzzz85a5", v.ts, v.body.as_bytes()),
            v.signature
        );
        let h = headers(&v.ts.to_string(), &v.signature);
        assert_eq!(verify(&v.secret, &h, v.body.as_bytes(), v.ts), Ok(()));
    }

    // SIG-02
    #[test]
    fn any_change_to_the_body_is_refused() {
        let v = vector();
        let h = headers(&v.ts.to_string(), &v.signature);
        let mut bodies = vec![
            format!("{}------", v.body),
            v.body.replace("%2F", "/"),
            v.body.replace("text=&", "text=+&"),
        ];
        let mut flipped = v.body.clone().into_bytes();
        flipped[10] ^= 1;
        bodies.push(String::from_utf8(flipped).unwrap());
        for body in bodies {
            assert_eq!(
                verify(&v.secret, &h, body.as_bytes(), v.ts),
                Err(SignatureError::Mismatch)
            );
        }
    }

    // SIG-03
    #[test]
    fn timestamps_are_accepted_within_300_seconds_either_way_and_no_further() {
        let secret = SecretString::from("s3cret".to_owned());
        let ts = 1_700_000_000;
        let body = b"{}";
        let h = headers(&ts.to_string(), &sign("s3cret", ts, body));
        assert_eq!(verify(&secret, &h, body, ts + 300), Ok(()));
        assert_eq!(verify(&secret, &h, body, ts - 300), Ok(()));
        assert_eq!(verify(&secret, &h, body, ts + 301), Err(SignatureError::Stale));
        assert_eq!(verify(&secret, &h, body, ts - 301), Err(SignatureError::Stale));
        let ms = ts * 1000;
        let h = headers(&ms.to_string(), &sign("s3cret", ms, body));
        assert!(verify(&secret, &h, body, ts).is_err(), "milliseconds are not seconds");
    }

    // SIG-04
    #[test]
    fn missing_repeated_or_garbled_headers_are_refused() {
        let secret = SecretString::from("s3cret".to_owned());
        let ts = 1_700_000_000;
        let good = sign("s3cret", ts, b"{}");
        let cases: Vec<(HeaderMap, SignatureError)> = vec![
            (HeaderMap::new(), SignatureError::MissingHeader),
            (
                {
                    let mut h = headers(&ts.to_string(), &good);
                    h.remove(SIGNATURE_HEADER);
                    h
                },
                SignatureError::MissingHeader,
            ),
            (
                {
                    let mut h = headers(&ts.to_string(), &good);
                    h.append(SIGNATURE_HEADER, HeaderValue::from_str(&good).unwrap());
                    h
                },
                SignatureError::MissingHeader,
            ),
            (headers("", &good), SignatureError::BadTimestamp),
            (headers("17e8", &good), SignatureError::BadTimestamp),
            (headers("-1700000000", &good), SignatureError::BadTimestamp),
            (
                headers(&ts.to_string(), &good.replace("v0=", "v1=")),
                SignatureError::Malformed,
            ),
            (
                headers(&ts.to_string(), good.trim_start_matches("v0=")),
                SignatureError::Malformed,
            ),
            (
                headers(&ts.to_string(), &good[..good.len() - 1]),
                SignatureError::Malformed,
            ),
            (
                headers(&ts.to_string(), &format!("{}zz", &good[..good.len() - 2])),
                SignatureError::Malformed,
            ),
            (headers(&ts.to_string(), ""), SignatureError::Malformed),
        ];
        for (h, expected) in cases {
            assert_eq!(verify(&secret, &h, b"{}", ts), Err(expected), "{h:?}");
        }
    }

    #[test]
    fn a_signature_made_with_another_secret_is_refused() {
        let ts = 1_700_000_000;
        let h = headers(&ts.to_string(), &sign("other", ts, b"{}"));
        assert_eq!(
            verify(&SecretString::from("s3cret".to_owned()), &h, b"{}", ts),
            Err(SignatureError::Mismatch)
        );
    }

    // SIG-05: the signature covers the raw bytes, so the same JSON re-serialised does not
    // verify; and `verify` compares every byte of the signature (through
    // `Mac::verify_slice`, which is constant time), not a prefix.
    #[test]
    fn the_signature_covers_the_raw_bytes_and_every_byte_of_it_counts() {
        let secret = SecretString::from("s3cret".to_owned());
        let ts = 1_700_000_000;
        let raw = "{ \"type\" : \"event_callback\",\n  \"event\": {\"text\": \"caf\\u00e9\"} }";
        let good = sign("s3cret", ts, raw.as_bytes());
        let h = headers(&ts.to_string(), &good);
        assert_eq!(verify(&secret, &h, raw.as_bytes(), ts), Ok(()));
        let value: serde_json::Value = serde_json::from_str(raw).unwrap();
        let re_serialised = serde_json::to_string(&value).unwrap();
        assert_eq!(
            verify(&secret, &h, re_serialised.as_bytes(), ts),
            Err(SignatureError::Mismatch)
        );
        for at in [3, 34, good.len() - 1] {
            let mut wrong = good.clone().into_bytes();
            wrong[at] = if wrong[at] == b'0' { b'1' } else { b'0' };
            let h = headers(&ts.to_string(), std::str::from_utf8(&wrong).unwrap());
            assert_eq!(
                verify(&secret, &h, raw.as_bytes(), ts),
                Err(SignatureError::Mismatch),
                "hex digit {at}"
            );
        }
    }

    proptest! {
        // FZ-01: any header values and body, at any time: an answer, never a panic.
        #[test]
        fn any_headers_and_body_get_an_answer_without_panicking(
            ts in "\\PC{0,20}",
            sig in "\\PC{0,80}",
            body in proptest::collection::vec(any::<u8>(), 0..256),
            now in any::<i64>(),
        ) {
            let mut h = HeaderMap::new();
            if let (Ok(ts), Ok(sig)) = (HeaderValue::from_str(&ts), HeaderValue::from_str(&sig)) {
                h.insert(TIMESTAMP_HEADER, ts);
                h.insert(SIGNATURE_HEADER, sig);
            }
            let _ = verify(&SecretString::from("s3cret".to_owned()), &h, &body, now);
        }

        // FZ-01: flipping any one bit of a signed body breaks the signature.
        #[test]
        fn any_one_bit_flip_of_the_body_is_refused(
            body in proptest::collection::vec(any::<u8>(), 1..512),
            bit in any::<usize>(),
        ) {
            let ts = 1_700_000_000;
            let h = headers(&ts.to_string(), &sign("s3cret", ts, &body));
            let secret = SecretString::from("s3cret".to_owned());
            prop_assert_eq!(verify(&secret, &h, &body, ts), Ok(()));
            let mut flipped = body.clone();
            let bit = bit % (body.len() * 8);
            flipped[bit / 8] ^= 1 << (bit % 8);
            prop_assert_eq!(verify(&secret, &h, &flipped, ts), Err(SignatureError::Mismatch));
        }
    }
}
