//! Entra ID's refusals, as it sends them: an OAuth `error`, an `AADSTSnnnn:` description with
//! trace and correlation ids, the code again in `error_codes`, HTTP 400 (401 for client
//! authentication failures). The texts are Entra's, shortened where they only add advice.

use serde_json::{json, Value as Json};
use uuid::Uuid;

/// A refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraError {
    pub status: u16,
    pub error: &'static str,
    pub code: u32,
    pub text: String,
    pub suberror: Option<&'static str>,
    /// Seconds to wait (503 only).
    pub retry_after: Option<u64>,
}

impl EntraError {
    fn new(status: u16, error: &'static str, code: u32, text: impl Into<String>) -> EntraError {
        EntraError { status, error, code, text: text.into(), suberror: None, retry_after: None }
    }

    /// The label tests and stats use: `AADSTS700082`.
    pub fn label(&self) -> String {
        format!("AADSTS{}", self.code)
    }

    /// The JSON body, with fresh trace and correlation ids.
    pub fn body(&self, origin: &str) -> Json {
        let (trace, correlation) = (Uuid::new_v4(), Uuid::new_v4());
        let timestamp = chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string();
        let mut body = json!({
            "error": self.error,
            "error_description": format!(
                "AADSTS{}: {}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\nTimestamp: {timestamp}",
                self.code, self.text
            ),
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": trace.to_string(),
            "correlation_id": correlation.to_string(),
            "error_uri": format!("{origin}/error?code={}", self.code),
        });
        if let Some(s) = self.suberror {
            body["suberror"] = json!(s);
        }
        body
    }

    pub fn tenant_not_found(tenant: &str) -> EntraError {
        Self::new(
            400,
            "invalid_request",
            90002,
            format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."),
        )
    }

    pub fn app_not_found(client_id: &str, tenant: &str) -> EntraError {
        Self::new(
            400,
            "unauthorized_client",
            700016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the \
                 application has not been installed by the administrator of the tenant or consented to by any user in the tenant."
            ),
        )
    }

    pub fn consent_missing(client_id: &str, name: &str) -> EntraError {
        Self::new(
            400,
            "invalid_grant",
            65001,
            format!(
                "The user or administrator has not consented to use the application with ID '{client_id}' named '{name}'. \
                 Send an interactive authorization request for this user and resource."
            ),
        )
    }

    pub fn bad_secret(client_id: &str) -> EntraError {
        Self::new(
            401,
            "invalid_client",
            7000215,
            format!(
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not \
                 the client secret ID, for a secret added to app '{client_id}'."
            ),
        )
    }

    pub fn credential_missing() -> EntraError {
        Self::new(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        )
    }

    pub fn bad_assertion(reason: &str, thumbprint: &str) -> EntraError {
        Self::new(
            401,
            "invalid_client",
            700027,
            format!("Client assertion contains an invalid signature. [Reason - {reason}, Thumbprint of key used by client: '{thumbprint}']"),
        )
    }

    pub fn assertion_time() -> EntraError {
        Self::new(401, "invalid_client", 700024, "Client assertion is not within its valid time range.")
    }

    pub fn assertion_client_mismatch() -> EntraError {
        Self::new(
            401,
            "invalid_client",
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter.",
        )
    }

    pub fn refresh_token_unknown() -> EntraError {
        Self::new(400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid.")
    }

    pub fn refresh_token_other_client() -> EntraError {
        Self::new(
            400,
            "invalid_grant",
            70000,
            "The provided value for 'refresh_token' is not valid: it was issued to another client.",
        )
    }

    pub fn refresh_token_expired(issued: &str, lifetime_seconds: u64) -> EntraError {
        Self::new(
            400,
            "invalid_grant",
            700082,
            format!("The refresh token has expired due to inactivity. The token was issued on {issued} and was inactive for {lifetime_seconds} seconds."),
        )
    }

    pub fn refresh_token_revoked() -> EntraError {
        Self::new(
            400,
            "invalid_grant",
            50173,
            "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password.",
        )
    }

    pub fn user_not_in_tenant(upn: &str, tenant: &str) -> EntraError {
        Self::new(
            400,
            "invalid_grant",
            50020,
            format!("User account '{upn}' from identity provider does not exist in tenant '{tenant}' and cannot access the application in that tenant."),
        )
    }

    pub fn mfa_required(resource: &str) -> EntraError {
        EntraError {
            suberror: Some("basic_action"),
            ..Self::new(
                400,
                "invalid_grant",
                50076,
                format!(
                    "Due to a configuration change made by your administrator, or because you moved to a new location, you \
                     must use multi-factor authentication to access '{resource}'."
                ),
            )
        }
    }

    pub fn scope_invalid(scope: &str) -> EntraError {
        Self::new(
            400,
            "invalid_scope",
            1002012,
            format!("The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier."),
        )
    }

    pub fn missing(parameter: &str) -> EntraError {
        Self::new(
            400,
            "invalid_request",
            900144,
            format!("The request body must contain the following parameter: '{parameter}'."),
        )
    }

    pub fn unsupported_grant(grant: &str) -> EntraError {
        Self::new(
            400,
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{grant}'."),
        )
    }

    pub fn public_client_not_allowed() -> EntraError {
        Self::new(
            400,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'. (Public client flows are not allowed for this application.)",
        )
    }

    pub fn authorization_pending() -> EntraError {
        Self::new(
            400,
            "authorization_pending",
            70016,
            "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
        )
    }

    pub fn slow_down() -> EntraError {
        Self::new(400, "slow_down", 70016, "OAuth 2.0 device flow error. Polling too fast: slow down.")
    }

    pub fn device_code_expired() -> EntraError {
        Self::new(
            400,
            "expired_token",
            70020,
            "The provided value for the input parameter 'device_code' is not valid. This device code has expired.",
        )
    }

    pub fn device_code_unknown() -> EntraError {
        Self::new(
            400,
            "bad_verification_code",
            70000,
            "The provided value for the input parameter 'device_code' is not valid.",
        )
    }

    pub fn device_code_declined() -> EntraError {
        Self::new(400, "authorization_declined", 70000, "The end user denied the authorization request.")
    }

    pub fn unavailable(retry_after: u64) -> EntraError {
        EntraError {
            retry_after: Some(retry_after),
            ..Self::new(503, "temporarily_unavailable", 90033, "A transient error has occurred. Please try again.")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client classifies what the simulator sends exactly as it classifies Entra.
    #[test]
    fn bodies_classify_as_entra_answers_do() {
        use crate::remote::FaultClass::*;
        let cases = [
            (EntraError::refresh_token_revoked(), ReauthRequired),
            (EntraError::refresh_token_expired("2026-01-01T00:00:00Z", 60), ReauthRequired),
            (EntraError::refresh_token_unknown(), ReauthRequired),
            (EntraError::mfa_required("https://outlook.office365.com"), MfaRequired),
            (EntraError::consent_missing("a", "n"), ConsentRequired),
            (EntraError::app_not_found("a", "t"), ConsentRequired),
            (EntraError::bad_secret("a"), InvalidClient),
            (EntraError::bad_assertion("The key was not found.", "x"), InvalidClient),
            (EntraError::credential_missing(), InvalidClient),
            (EntraError::user_not_in_tenant("u", "t"), TenantPermissionDenied),
            (EntraError::device_code_expired(), ReauthRequired),
            (EntraError::unavailable(1), IdentityServiceUnreachable),
        ];
        for (e, class) in cases {
            let body = serde_json::to_vec(&e.body("http://sim")).unwrap();
            assert_eq!(crate::identity::error::from_answer(e.status, &body, None).class, class, "{}", e.label());
        }
        let body = EntraError::refresh_token_revoked().body("http://sim");
        assert!(body["error_description"].as_str().unwrap().starts_with("AADSTS50173: The provided grant"));
        assert_eq!(body["error_codes"], json!([50173]));
    }
}
