//! What the identity provider's refusals mean: Entra ID's OAuth error answers mapped onto the
//! broker's failure classes (the broker's one failure table then decides retries and pool
//! effects: `broker::failure`).
//!
//! Entra answers a refused token request with HTTP 400 or 401 and a JSON body such as
//! `{"error":"invalid_grant","error_description":"AADSTS700082: The refresh token has expired
//! …","error_codes":[700082],…}`. The `AADSTS` number says far more than the OAuth `error`
//! (`invalid_grant` covers a revoked refresh token as well as a missing consent), so it is
//! matched first; the OAuth error and then the HTTP status are the fallbacks.

use crate::remote::{FaultClass, RemoteError};
use serde::Deserialize;
use std::time::Duration;

/// Entra's error body (the fields that matter here).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TokenErrorBody {
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub error_description: String,
    #[serde(default)]
    pub error_codes: Vec<u32>,
}

impl TokenErrorBody {
    /// Parses an error answer; anything that is not Entra's JSON gives an empty body.
    pub fn parse(body: &[u8]) -> TokenErrorBody {
        serde_json::from_slice(body).unwrap_or_default()
    }

    /// The AADSTS codes: `error_codes`, else the `AADSTSnnnn:` the description starts with.
    pub fn codes(&self) -> Vec<u32> {
        if !self.error_codes.is_empty() {
            return self.error_codes.clone();
        }
        aadsts_code(&self.error_description).into_iter().collect()
    }

    /// The description's first line: Entra appends trace and correlation ids on later lines.
    pub fn summary(&self) -> &str {
        self.error_description.split(['\r', '\n']).next().unwrap_or("").trim()
    }
}

/// `AADSTS700082: The refresh token …` → 700082.
pub fn aadsts_code(description: &str) -> Option<u32> {
    let rest = &description[description.find("AADSTS")? + "AADSTS".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The class of a refused token request.
pub fn classify(http_status: u16, error: &str, codes: &[u32]) -> FaultClass {
    for code in codes {
        let class = match code {
            // MFA demanded (by policy, or enrolment missing), or a strong-auth claim expired.
            50076 | 50079 | 50074 => Some(FaultClass::MfaRequired),
            // The application is not consented, not present in this tenant, or the resource's
            // service principal is missing there: this tenant only.
            65001 | 700016 | 650052 | 500011 => Some(FaultClass::ConsentRequired),
            // The tenant does not exist, or the partner user has no access to it.
            90002 | 50020 => Some(FaultClass::TenantPermissionDenied),
            // The application's own credentials: bad, expired or missing secret or assertion.
            7000215 | 7000222 | 700027 | 7000218 | 700024 | 700023 | 50012 => Some(FaultClass::InvalidClient),
            // The refresh token is expired, revoked, or was issued for something else: sign in again.
            700082 | 50173 | 70043 | 50133 | 70000 | 700084 | 54005 | 70008 => Some(FaultClass::ReauthRequired),
            50053 | 50057 => Some(FaultClass::AccountLocked),
            50126 => Some(FaultClass::LogonFailed),
            _ => None,
        };
        if let Some(class) = class {
            return class;
        }
    }
    match error {
        "invalid_client" => FaultClass::InvalidClient,
        "invalid_grant" | "interaction_required" | "expired_token" | "authorization_declined" | "access_denied" => {
            FaultClass::ReauthRequired
        }
        "unauthorized_client" | "consent_required" => FaultClass::ConsentRequired,
        "temporarily_unavailable" | "server_error" => FaultClass::IdentityServiceUnreachable,
        _ if http_status == 429 || http_status >= 500 => FaultClass::IdentityServiceUnreachable,
        _ => FaultClass::Protocol,
    }
}

/// The failure for a non-success answer of the token (or device-code) endpoint.
pub fn from_answer(http_status: u16, body: &[u8], retry_after: Option<Duration>) -> RemoteError {
    let parsed = TokenErrorBody::parse(body);
    let class = classify(http_status, &parsed.error, &parsed.codes());
    let message = if parsed.error.is_empty() {
        format!("identity provider answered HTTP {http_status}")
    } else {
        format!("identity provider refused the token request: {}: {}", parsed.error, parsed.summary())
    };
    RemoteError::new(class, message)
        .with_retry_after(retry_after.filter(|_| class == FaultClass::IdentityServiceUnreachable))
}

/// The failure for a token request that got no answer.
pub fn unreachable(what: impl std::fmt::Display) -> RemoteError {
    RemoteError::new(FaultClass::IdentityServiceUnreachable, format!("identity provider unreachable: {what}"))
}

/// `Retry-After` in seconds (fractions allowed); HTTP dates are not used by Entra.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let text = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let secs: f64 = text.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use FaultClass::*;

    fn body(error: &str, description: &str, codes: &[u32]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "error": error, "error_description": description, "error_codes": codes,
            "timestamp": "2026-01-01 00:00:00Z", "trace_id": "t", "correlation_id": "c"
        }))
        .unwrap()
    }

    /// Entra's answers as they arrive, and the class each one gets.
    #[test]
    fn entra_answers_classify() {
        let cases: [(u16, &str, &str, &[u32], FaultClass); 14] = [
            (400, "invalid_grant", "AADSTS700082: The refresh token has expired due to inactivity.", &[700082], ReauthRequired),
            (400, "invalid_grant", "AADSTS50173: The provided grant has expired due to it being revoked.", &[50173], ReauthRequired),
            (400, "invalid_grant", "AADSTS50076: Due to a configuration change made by your administrator, or because you moved to a new location, you must use multi-factor authentication.", &[50076], MfaRequired),
            (400, "interaction_required", "AADSTS50079: Due to a configuration change made by your administrator, you must enroll in multi-factor authentication.", &[50079], MfaRequired),
            (400, "invalid_grant", "AADSTS65001: The user or administrator has not consented to use the application.", &[65001], ConsentRequired),
            (400, "unauthorized_client", "AADSTS700016: Application with identifier 'x' was not found in the directory 'y'.", &[700016], ConsentRequired),
            (401, "invalid_client", "AADSTS7000215: Invalid client secret provided.", &[7000215], InvalidClient),
            (401, "invalid_client", "AADSTS700027: Client assertion contains an invalid signature.", &[700027], InvalidClient),
            (400, "invalid_grant", "AADSTS50020: User account from identity provider does not exist in tenant.", &[50020], TenantPermissionDenied),
            (400, "invalid_request", "AADSTS90002: Tenant 'nope' not found.", &[90002], TenantPermissionDenied),
            (400, "invalid_grant", "no code here", &[], ReauthRequired),
            (401, "invalid_client", "no code here", &[], InvalidClient),
            (503, "temporarily_unavailable", "AADSTS90033: A transient error has occurred.", &[90033], IdentityServiceUnreachable),
            (400, "invalid_request", "AADSTS900144: The request body must contain the following parameter: 'grant_type'.", &[900144], Protocol),
        ];
        for (status, error, description, codes, class) in cases {
            assert_eq!(from_answer(status, &body(error, description, codes), None).class, class, "{description}");
        }
    }

    #[test]
    fn codes_come_from_the_description_when_the_list_is_missing() {
        let body = br#"{"error":"invalid_grant","error_description":"AADSTS65001: no consent\r\nTrace ID: 1"}"#;
        let err = from_answer(400, body, None);
        assert_eq!(err.class, ConsentRequired);
        assert!(err.message.ends_with("invalid_grant: AADSTS65001: no consent"), "{}", err.message);
    }

    #[test]
    fn unanswered_and_overloaded_requests_are_transient_and_keep_the_wait() {
        let err = from_answer(503, b"<html>Service Unavailable</html>", Some(Duration::from_secs(7)));
        assert_eq!((err.class, err.retry_after), (IdentityServiceUnreachable, Some(Duration::from_secs(7))));
        assert_eq!(from_answer(429, b"", None).class, IdentityServiceUnreachable);
        assert_eq!(from_answer(502, b"bad gateway", None).class, IdentityServiceUnreachable);
        let refused =
            from_answer(401, &body("invalid_client", "AADSTS7000215: x", &[7000215]), Some(Duration::from_secs(7)));
        assert_eq!(refused.retry_after, None, "a refusal is not a wait");
        assert_eq!(unreachable("connection refused").class, IdentityServiceUnreachable);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, "1.5".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(1500)));
    }
}
