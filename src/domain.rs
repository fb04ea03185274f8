//! Validated identifiers that travel through the bot.
//!
//! A Slack team id, a Slack user id and a Databricks workspace host together name whose
//! token a row holds. Each is parsed once at the edge, so a bare `String` never reaches the
//! store or the vault.

use std::fmt;

use url::Url;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("a Slack {kind} id must be 1 to 32 upper-case letters and digits starting with {prefixes}")]
    SlackId { kind: &'static str, prefixes: &'static str },
    #[error(
        "a workspace host must be an https:// URL (plain http only for loopback) without path, query or credentials"
    )]
    WorkspaceHost,
}

/// Slack ids are short upper-case alphanumerics with a type prefix (`T…` teams, `U…`/`W…`
/// users). Checking the shape keeps junk out of keys, logs and audit rows.
fn is_slack_id(s: &str, prefixes: &[char]) -> bool {
    (2..=32).contains(&s.len())
        && s.starts_with(prefixes)
        && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

macro_rules! slack_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, [$($prefix:literal),+]) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Parses and validates the id.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                if is_slack_id(s, &[$($prefix),+]) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(IdError::SlackId { kind: $kind, prefixes: concat!($($prefix, " "),+).trim_ascii_end() })
                }
            }

            /// The id as Slack writes it.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Self::parse(&<String as serde::Deserialize>::deserialize(d)?).map_err(serde::de::Error::custom)
            }
        }
    };
}

slack_id!(
    /// A Slack workspace (team) id, e.g. `T0123ABCD`; `E…` for an Enterprise Grid org.
    TeamId,
    "team",
    ['T', 'E']
);
slack_id!(
    /// A Slack user id, e.g. `U0123ABCD` (or `W…` on Enterprise Grid).
    UserId,
    "user",
    ['U', 'W']
);

/// Whether `host` is a loopback name or address, the only place plain `http://` is allowed.
pub fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// A URL we may send tokens to: `https://`, or `http://` on a loopback host (tests, local
/// development) — never plain http across a network.
pub fn is_secure_or_loopback(url: &Url) -> bool {
    match url.scheme() {
        "https" => url.host().is_some(),
        "http" => is_loopback_host(url),
        _ => false,
    }
}

/// A Databricks workspace, normalised to its origin (`https://dbc-123.cloud.databricks.com`).
///
/// It is part of every link's key and of the vault's associated data, so the same
/// workspace must always be spelled the same way.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkspaceHost(String);

impl WorkspaceHost {
    /// Parses `https://host[:port][/]`; refuses paths, queries, credentials and plain http
    /// to anything but loopback.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let url = Url::parse(s.trim()).map_err(|_| IdError::WorkspaceHost)?;
        let bare = url.path() == "/"
            && url.query().is_none()
            && url.fragment().is_none()
            && url.username().is_empty()
            && url.password().is_none();
        if !bare || !is_secure_or_loopback(&url) {
            return Err(IdError::WorkspaceHost);
        }
        Ok(Self(url.origin().ascii_serialization()))
    }

    /// The origin, without a trailing slash.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `self` joined with an absolute API path such as `/api/2.0/preview/scim/v2/Me`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.0, path)
    }
}

impl fmt::Display for WorkspaceHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A person in one Slack conversation: who, and where — the thread's root, or `None` for
/// a direct message outside a thread.
#[derive(Debug, Clone, Copy)]
pub struct PersonIn<'a> {
    pub team: &'a TeamId,
    pub user: &'a UserId,
    pub channel: &'a str,
    pub thread_ts: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_ids_accept_real_shapes_and_refuse_junk() {
        assert!(TeamId::parse("T0123ABCD").is_ok());
        assert!(TeamId::parse("E0123ABCD").is_ok());
        assert!(UserId::parse("U2CERLKJA").is_ok());
        assert!(UserId::parse("W012AB").is_ok());
        for bad in ["", "T", "t0123", "U0123", "T01 23", "T0123;DROP", &"T".repeat(40)] {
            assert!(TeamId::parse(bad).is_err(), "{bad:?} accepted as a team id");
        }
        assert!(UserId::parse("T0123ABCD").is_err());
    }

    #[test]
    fn workspace_hosts_are_normalised_to_their_origin() {
        let a = WorkspaceHost::parse("https://DBC-1.cloud.databricks.com/").unwrap();
        let b = WorkspaceHost::parse("https://dbc-1.cloud.databricks.com").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "https://dbc-1.cloud.databricks.com");
        assert_eq!(
            WorkspaceHost::parse("http://127.0.0.1:8080").unwrap().url("/api/x"),
            "http://127.0.0.1:8080/api/x"
        );
    }

    #[test]
    fn workspace_hosts_refuse_plain_http_paths_and_credentials() {
        for bad in [
            "http://dbc-1.cloud.databricks.com",
            "https://dbc-1.cloud.databricks.com/some/path",
            "https://user:pw@dbc-1.cloud.databricks.com",
            "https://dbc-1.cloud.databricks.com/?o=1",
            "ftp://dbc-1.cloud.databricks.com",
            "dbc-1.cloud.databricks.com",
        ] {
            assert!(WorkspaceHost::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
