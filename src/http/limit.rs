//! A per-client rate limit on the browser side of linking (`/link/*` and both OAuth
//! callbacks), so a script cannot walk link ids or callback states at line speed (LNK-06).
//! The ids are 128-bit and unguessable anyway; the limit keeps the noise, the database
//! lookups and the log lines of such a walk small. Slack's routes, the probes and
//! `/metrics` are not limited: Slack sends from few addresses in bursts, and a probe must
//! never be told to wait.
//!
//! The client is the TCP peer. Behind a reverse proxy every request comes from the proxy,
//! so `TRUSTED_PROXIES` names the proxies whose `X-Forwarded-For` is believed; anyone
//! else's is ignored, or a script would send a new address with each request.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;

use super::pages::message;

/// The quota of one client on the linking routes: bursts of 20, refilled at 30 a minute
/// (one every 2 s). A whole linking flow is about 6 requests and a person may start
/// again a few times, so a person never meets it; a script gets 20 tries, then one every
/// 2 s, and an idle client is back to a full burst after 40 s.
pub const LINK_QUOTA: Quota = Quota::per_minute(NonZeroU32::new(30).unwrap()).allow_burst(NonZeroU32::new(20).unwrap());

/// How often (in checks) clients whose allowance is full again are forgotten. So the
/// state holds the clients seen in about the last 40 s (a full refill at [`LINK_QUOTA`])
/// plus at most this many, and tidying costs one pass over it per this many requests.
const TIDY_EVERY: usize = 1024;

/// The reverse proxies whose `X-Forwarded-For` is believed (`TRUSTED_PROXIES`); none by
/// default.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Trusts the proxies at these addresses and ranges.
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client behind a connection from `peer`. Only a trusted peer's
    /// `X-Forwarded-For` is read, right to left: each trusted proxy appended the address
    /// it was connected from, so the right-most address that is not a trusted proxy is the
    /// client; what lies left of it was written by the client and proves nothing. When
    /// every address is a trusted proxy, the left-most is the client; an unreadable
    /// entry ends the walk at the last address read.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.contains(client) {
            return client;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .collect();
        for hop in hops.iter().rev() {
            let Some(address) = parse_hop(hop) else {
                break;
            };
            client = address;
            if !self.contains(address) {
                break;
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, or an address with a port as some proxies
/// write it (`203.0.113.7:41234`, `[2001:db8::1]:41234`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    let ip = hop
        .parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))?;
    Some(ip.to_canonical())
}

/// The key a client is counted under: its IPv4 address, or the /64 of its IPv6 address —
/// one host usually holds a whole /64 and could otherwise take a fresh address per
/// request.
fn bucket(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u128::MAX >> 64))),
    }
}

/// The per-client limiter of the linking routes.
pub struct ClientLimit {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    proxies: TrustedProxies,
    checks: AtomicUsize,
}

impl ClientLimit {
    /// A limiter giving each client `quota`, reading forwarded addresses from `proxies`.
    pub fn new(quota: Quota, proxies: TrustedProxies) -> Self {
        Self {
            limiter: RateLimiter::dashmap(quota),
            proxies,
            checks: AtomicUsize::new(0),
        }
    }

    /// The same limiter, with a fresh state, giving each client `quota` instead.
    pub fn with_quota(&self, quota: Quota) -> Self {
        Self::new(quota, self.proxies.clone())
    }

    /// Counts one request from the client behind `peer`; `Err` says how long until it may
    /// send the next one.
    pub fn check(&self, peer: IpAddr, headers: &HeaderMap) -> Result<(), Duration> {
        let key = bucket(self.proxies.client(peer, headers));
        let outcome = self
            .limiter
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()));
        if self.checks.fetch_add(1, Ordering::Relaxed) % TIDY_EVERY == TIDY_EVERY - 1 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        outcome
    }
}

/// Middleware: answers 429 with `Retry-After` and a plain page when the client is over
/// its quota, and does nothing else. A request without a peer address — the router
/// driven in-process, as some tests do — is not limited: `run_until_stopped`, the only
/// place the router is served, always records the peer.
pub async fn limit(State(limit): State<Arc<ClientLimit>>, request: Request, next: Next) -> Response {
    let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<SocketAddr>>().copied() else {
        return next.run(request).await;
    };
    match limit.check(peer.ip(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(wait) => too_many_requests(wait),
    }
}

fn too_many_requests(wait: Duration) -> Response {
    // Whole seconds, rounded up: a client that waits exactly this long gets through.
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let seconds = seconds.max(1);
    let mut response = message(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many attempts",
        &[
            "Too many requests came from your network in a short time.".to_owned(),
            format!("Wait {seconds} seconds, then open the link from Slack again."),
        ],
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn trusting(nets: &[&str]) -> TrustedProxies {
        let parse = |n: &&str| n.parse().unwrap_or_else(|_| IpNet::from(ip(n)));
        TrustedProxies::new(nets.iter().map(parse).collect())
    }

    // LNK-06: with no trusted proxy, a client's own X-Forwarded-For changes nothing.
    #[test]
    fn without_trusted_proxies_the_peer_is_the_client() {
        let headers = forwarded(&["203.0.113.9"]);
        assert_eq!(
            TrustedProxies::default().client(ip("198.51.100.4"), &headers),
            ip("198.51.100.4")
        );
        let proxies = trusting(&["10.0.0.0/8"]);
        assert_eq!(proxies.client(ip("198.51.100.4"), &headers), ip("198.51.100.4"));
    }

    // LNK-06: the right-most address no trusted proxy wrote is the client; what the client
    // put to its left is ignored.
    #[test]
    fn behind_trusted_proxies_the_right_most_untrusted_address_is_the_client() {
        let proxies = trusting(&["10.0.0.0/8", "192.0.2.1"]);
        let headers = forwarded(&["1.1.1.1, 203.0.113.9", "192.0.2.1, 10.1.2.3"]);
        assert_eq!(proxies.client(ip("10.0.0.1"), &headers), ip("203.0.113.9"));
        assert_eq!(
            proxies.client(ip("10.0.0.1"), &forwarded(&["203.0.113.9:41234"])),
            ip("203.0.113.9")
        );
        assert_eq!(
            proxies.client(ip("10.0.0.1"), &forwarded(&["[2001:db8::7]:41234"])),
            ip("2001:db8::7")
        );
    }

    #[test]
    fn behind_trusted_proxies_a_missing_or_unreadable_header_falls_back_to_the_nearest_hop() {
        let proxies = trusting(&["10.0.0.0/8"]);
        assert_eq!(proxies.client(ip("10.0.0.1"), &HeaderMap::new()), ip("10.0.0.1"));
        assert_eq!(
            proxies.client(ip("10.0.0.1"), &forwarded(&["203.0.113.9, nonsense, 10.0.0.2"])),
            ip("10.0.0.2")
        );
        assert_eq!(
            proxies.client(ip("10.0.0.1"), &forwarded(&["10.0.0.3, 10.0.0.2"])),
            ip("10.0.0.3")
        );
    }

    #[test]
    fn an_ipv4_mapped_peer_counts_as_its_ipv4_address() {
        let proxies = trusting(&["127.0.0.1"]);
        assert_eq!(
            proxies.client(ip("::ffff:127.0.0.1"), &forwarded(&["203.0.113.9"])),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_bit_prefix() {
        assert_eq!(bucket(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(bucket(ip("203.0.113.9")), ip("203.0.113.9"));
    }

    // LNK-06: the quota's burst passes, the next request waits, and another client is
    // unaffected.
    #[test]
    fn a_client_over_its_burst_is_told_how_long_to_wait() {
        let limit = ClientLimit::new(LINK_QUOTA, TrustedProxies::default());
        let (one, other) = (ip("203.0.113.9"), ip("203.0.113.10"));
        for _ in 0..LINK_QUOTA.burst_size().get() {
            assert!(limit.check(one, &HeaderMap::new()).is_ok());
        }
        let wait = limit.check(one, &HeaderMap::new()).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(2), "{wait:?}");
        assert!(limit.check(other, &HeaderMap::new()).is_ok());
    }

    #[test]
    fn the_page_says_when_to_try_again() {
        let response = too_many_requests(Duration::from_millis(1500));
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    }
}
