//! Entra ID's token-endpoint refusals, read for what they mean to the person and to the
//! operator (`DATABRICKS_AUTH=entra-obo`).
//!
//! Entra answers RFC 6749 errors with its own code in the description:
//! `{"error": "invalid_grant", "error_description": "AADSTS50076: Due to a configuration
//! change made by your administrator, … you must use multi-factor authentication …",
//! "error_codes": [50076], "suberror": "basic_action", …}`. The codes and their meanings
//! are Microsoft's ("Microsoft Entra authentication and authorization error codes",
//! learn.microsoft.com/entra/identity-platform/reference-error-codes).
//!
//! - `invalid_grant` and `interaction_required` are the person's: they must connect again
//!   (sign in, satisfy MFA or conditional access, consent), and are told why in words.
//! - `invalid_client`, `unauthorized_client`, `invalid_scope`, `invalid_request` and the
//!   like are the bot's configuration: an operator error that leaves links alone.
//! - 429 and 5xx are transient.

use super::oauth::TokenError;

/// AADSTS codes that end a person's grant, with the reason they are given.
const PERSON_MUST_ACT: &[(u32, &str)] = &[
    (50076, MFA),
    (50079, MFA),
    (50074, MFA),
    (50158, MFA),
    (53000, CONDITIONAL_ACCESS),
    (53001, CONDITIONAL_ACCESS),
    (53002, CONDITIONAL_ACCESS),
    (53003, CONDITIONAL_ACCESS),
    (530032, CONDITIONAL_ACCESS),
    (65001, CONSENT),
    (65004, CONSENT),
    (50173, CREDENTIALS_CHANGED),
    (50133, CREDENTIALS_CHANGED),
    (50132, CREDENTIALS_CHANGED),
    (50055, CREDENTIALS_CHANGED),
    (50057, DISABLED),
    (50053, DISABLED),
    (70008, EXPIRED),
    (700082, EXPIRED),
    (700084, EXPIRED),
];

const MFA: &str = "your organisation now asks for multi-factor authentication";
const CONDITIONAL_ACCESS: &str = "a conditional access policy of your organisation requires you to sign in again";
const CONSENT: &str = "the bot needs your consent (or your admin's) to act for you in Azure Databricks";
const CREDENTIALS_CHANGED: &str = "your password changed or your sign-in sessions were revoked";
const DISABLED: &str = "your account is disabled or locked";
const EXPIRED: &str = "your sign-in expired";
const INTERACTION: &str = "your organisation asks you to sign in again (multi-factor authentication or consent)";

/// The first `AADSTS…` code in an Entra error description.
pub fn aadsts_code(description: &str) -> Option<u32> {
    let start = description.find("AADSTS")? + "AADSTS".len();
    let digits: String = description[start..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Sorts an Entra token-endpoint refusal: `error` is the OAuth code, `description` Entra's
/// text, `status` the HTTP status.
pub fn classify(error: &str, description: Option<&String>, status: Option<u16>) -> TokenError {
    let description = description.map(String::as_str).unwrap_or_default();
    let code = aadsts_code(description);
    // Entra's descriptions carry trace ids and timestamps: the code is enough for logs.
    let detail = match code {
        Some(code) => format!("{error}: AADSTS{code}"),
        None => error.to_owned(),
    };
    let why = code.and_then(|code| PERSON_MUST_ACT.iter().find(|(c, _)| *c == code).map(|(_, why)| *why));
    match error {
        "invalid_grant" => TokenError::DeadGrant { detail, why },
        "interaction_required" | "consent_required" | "login_required" => TokenError::DeadGrant {
            detail,
            why: why.or(Some(INTERACTION)),
        },
        _ if matches!(status, Some(429) | Some(500..=599)) || error == "temporarily_unavailable" => {
            TokenError::Transient(detail)
        }
        "invalid_client" => TokenError::Client("invalid_client"),
        "unauthorized_client" => TokenError::Client("unauthorized_client"),
        "invalid_scope" => TokenError::Client("invalid_scope"),
        "unsupported_grant_type" => TokenError::Client("unsupported_grant_type"),
        "invalid_request" => TokenError::Client("invalid_request"),
        _ => TokenError::Client("other"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(error: &str, description: &str, status: u16) -> TokenError {
        classify(error, Some(&description.to_owned()), Some(status))
    }

    #[test]
    fn the_aadsts_code_is_read_from_the_description() {
        assert_eq!(aadsts_code("AADSTS50076: Due to a configuration change"), Some(50076));
        assert_eq!(aadsts_code("x AADSTS700082: expired"), Some(700082));
        assert_eq!(aadsts_code("no code here"), None);
        assert_eq!(aadsts_code("AADSTS"), None);
    }

    #[test]
    fn what_the_person_must_do_ends_the_grant_with_the_reason_in_words() {
        for (error, description, words) in [
            (
                "invalid_grant",
                "AADSTS50076: you must use multi-factor authentication",
                MFA,
            ),
            (
                "invalid_grant",
                "AADSTS53003: Access has been blocked by Conditional Access policies.",
                CONDITIONAL_ACCESS,
            ),
            (
                "invalid_grant",
                "AADSTS65001: The user or administrator has not consented",
                CONSENT,
            ),
            (
                "invalid_grant",
                "AADSTS50173: The provided grant has expired due to it being revoked",
                CREDENTIALS_CHANGED,
            ),
            ("invalid_grant", "AADSTS50057: The user account is disabled.", DISABLED),
            (
                "invalid_grant",
                "AADSTS700082: The refresh token has expired due to inactivity.",
                EXPIRED,
            ),
            (
                "interaction_required",
                "AADSTS50079: Due to a configuration change",
                MFA,
            ),
            ("interaction_required", "AADSTS99999: something new", INTERACTION),
        ] {
            match refusal(error, description, 400) {
                TokenError::DeadGrant { why, detail } => {
                    assert_eq!(why, Some(words), "{description}");
                    assert!(detail.starts_with(error) && detail.contains("AADSTS"), "{detail}");
                }
                other => panic!("{description}: {other:?}"),
            }
        }
        assert!(matches!(
            refusal("invalid_grant", "AADSTS9999999: unknown", 400),
            TokenError::DeadGrant { why: None, .. }
        ));
    }

    #[test]
    fn the_bots_configuration_is_an_operator_error_and_outages_are_transient() {
        assert_eq!(
            refusal("invalid_client", "AADSTS7000215: Invalid client secret provided.", 401),
            TokenError::Client("invalid_client")
        );
        assert_eq!(
            refusal(
                "invalid_scope",
                "AADSTS70011: The provided value for scope is not valid.",
                400
            ),
            TokenError::Client("invalid_scope")
        );
        assert_eq!(
            refusal("unauthorized_client", "AADSTS700016: Application not found", 400),
            TokenError::Client("unauthorized_client")
        );
        assert!(matches!(
            refusal("temporarily_unavailable", "AADSTS90033: A transient error", 503),
            TokenError::Transient(_)
        ));
        assert!(matches!(
            refusal("server_error", "AADSTS90100", 500),
            TokenError::Transient(_)
        ));
        assert_eq!(refusal("brand_new", "", 400), TokenError::Client("other"));
    }
}
