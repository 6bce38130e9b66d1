//! Exchange Online's refusals and failures as classes of the taxonomy: what the HTTP status and
//! the OData error body say, never what to do about it (that is `broker::failure`).
//!
//! | answer | class | why |
//! |---|---|---|
//! | 400 BadRequest | `invalid_parameter` | the cmdlet refused its parameters (or threw) |
//! | 401 (after one fresh token) | `mfa_required`, `consent_required` or `logon_failed` | by the text |
//! | 403 | `unknown_cmdlet` (unless the text says whose permission is missing) | RBAC hides the cmdlets a role does not grant: unknown and forbidden look alike |
//! | 404 NotFound | `cmdlet_error` | the object the cmdlet was asked for does not exist |
//! | 429 | `throttled`, with `Retry-After` | refused before processing |
//! | 503 | `service_unavailable`, with `Retry-After` | refused before processing |
//! | 500, 502, 504 and other 5xx | `server_error` | processed or not: unknown |
//! | other 4xx | `protocol_error` | an answer this client does not expect |
//!
//! The body is read as bytes and only then looked at: a body that is not what its headers claim
//! (Exchange answers an unknown cmdlet with `Content-Encoding: gzip` on a body that is not gzip)
//! loses its message, never its status.

use crate::remote::{FaultClass, RemoteError};
use base64::Engine as _;
use serde_json::Value as Json;
use std::time::Duration;

/// How much of a body that is not an OData error is quoted in a message.
const QUOTE_CHARS: usize = 300;

/// An error answer's body, as far as it could be read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ErrorBody {
    /// An OData error (`{"error":{…}}`) or any other JSON.
    Json(Json),
    /// Text, or a description of bytes that are not text.
    Text(String),
}

impl ErrorBody {
    pub(crate) fn from_bytes(bytes: &[u8]) -> ErrorBody {
        if let Ok(json) = serde_json::from_slice::<Json>(bytes) {
            return ErrorBody::Json(json);
        }
        match std::str::from_utf8(bytes) {
            Ok(text) => ErrorBody::Text(quote(text)),
            Err(_) => ErrorBody::Text(format!("{} bytes that are not text", bytes.len())),
        }
    }

    /// The service's own words: `error.details[0].message` (the cmdlet's message), then
    /// `error.innererror.internalException.message`, then `error.message` (a generic one).
    pub(crate) fn message(&self) -> Option<String> {
        let ErrorBody::Json(json) = self else { return None };
        let error = json.get("error")?;
        fn text(v: Option<&Json>) -> Option<&str> {
            v.and_then(Json::as_str).map(str::trim).filter(|s| !s.is_empty())
        }
        text(error.pointer("/details/0/message"))
            .or_else(|| text(error.pointer("/innererror/internalException/message")))
            .or_else(|| text(error.get("message")))
            .map(str::to_string)
    }

    /// The message, or what the body was when it had none.
    fn describe(&self) -> String {
        match (self.message(), self) {
            (Some(m), _) => m,
            (None, ErrorBody::Text(t)) if !t.is_empty() => t.clone(),
            (None, ErrorBody::Json(j)) => quote(&j.to_string()),
            (None, ErrorBody::Text(_)) => "no body".to_string(),
        }
    }
}

/// What was being asked for, for the messages (and for 403, which only means "unknown cmdlet"
/// for a cmdlet call).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Call<'a> {
    Cmdlet(&'a str),
    /// The tenant-host discovery request.
    Probe,
    /// A `$batch` request as a whole.
    Batch,
}

/// Classifies an error answer other than 401 and redirects (the session handles those).
pub(crate) fn from_status(status: u16, retry_after: Option<Duration>, body: &ErrorBody, call: Call<'_>) -> RemoteError {
    let said = body.describe();
    let (class, message) = match status {
        400 => (FaultClass::InvalidParameter, said),
        404 => (FaultClass::CmdletError, said),
        403 => match (call, text_class(&said)) {
            (_, Some(class)) => (class, said),
            (Call::Cmdlet(cmdlet), None) => (
                FaultClass::UnknownCmdlet,
                format!(
                    "'{cmdlet}' is not a cmdlet this identity may run in this tenant (HTTP 403: the cmdlet does not \
                     exist, or no role assigned to the identity grants it): {said}"
                ),
            ),
            (_, None) => (FaultClass::TenantPermissionDenied, format!("HTTP 403 Forbidden: {said}")),
        },
        429 => (FaultClass::Throttled, format!("HTTP 429 Too Many Requests (not processed): {said}")),
        503 => (FaultClass::ServiceUnavailable, format!("HTTP 503 Service Unavailable (not processed): {said}")),
        500..=599 => {
            (FaultClass::ServerError, format!("HTTP {status} (the request may or may not have been processed): {said}"))
        }
        _ => (FaultClass::Protocol, format!("unexpected HTTP {status} from Exchange Online: {said}")),
    };
    let message = match call {
        Call::Cmdlet(_) => message,
        Call::Probe => format!("tenant host discovery: {message}"),
        Call::Batch => format!("$batch: {message}"),
    };
    RemoteError::new(class, message).with_retry_after(retry_after)
}

/// The class a 401 means once a fresh token was refused too: the identity cannot act here.
pub(crate) fn unauthorized(body: &ErrorBody, www_authenticate: Option<&str>) -> RemoteError {
    let said = body.describe();
    let header = www_authenticate.unwrap_or_default();
    let all = format!("{said} {header}").to_ascii_lowercase();
    let class = if all.contains("insufficient_claims") || all.contains("aadsts50076") || all.contains("aadsts50079") {
        // A fresh token that answered the claims challenge was refused again: conditional access
        // wants what a non-interactive sign-in cannot give (MFA, a compliant device).
        FaultClass::MfaRequired
    } else if all.contains("aadsts65001")
        || all.contains("aadsts700016")
        || all.contains("consent")
        || all.contains("exchange.manageasapp")
    {
        FaultClass::ConsentRequired
    } else {
        text_class(&said).unwrap_or(FaultClass::LogonFailed)
    };
    RemoteError::new(class, format!("HTTP 401 Unauthorized with a freshly issued token: {said}"))
}

/// The few texts that name a class whatever the status (the seeds' wordings).
fn text_class(text: &str) -> Option<FaultClass> {
    match crate::remote::classify(None, None, text) {
        class @ (FaultClass::TenantPermissionDenied
        | FaultClass::TenantRemotePowerShellDisabled
        | FaultClass::MfaRequired
        | FaultClass::IdentityServiceUnreachable) => Some(class),
        _ => None,
    }
}

/// `Retry-After`: seconds (Exchange may send a fraction) or an HTTP date.
pub(crate) fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// The claims a 401's `WWW-Authenticate: Bearer …, error="insufficient_claims", claims="<base64>"`
/// asks for, decoded to the JSON the token endpoint's `claims` parameter takes (as sent when it
/// is not base64 of JSON).
pub(crate) fn claims_challenge(www_authenticate: &str) -> Option<String> {
    let raw = auth_param(www_authenticate, "claims")?;
    let engines = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    let decoded = engines
        .iter()
        .filter_map(|e| e.decode(raw.trim()).ok())
        .filter_map(|bytes| String::from_utf8(bytes).ok())
        .find(|text| serde_json::from_str::<Json>(text).is_ok());
    Some(decoded.unwrap_or(raw))
}

/// One `name="value"` (or `name=token`) parameter of an authentication challenge header.
fn auth_param(header: &str, name: &str) -> Option<String> {
    let bytes = header.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &header[i..];
        let boundary = i == 0 || matches!(bytes[i - 1], b' ' | b',' | b'\t');
        if boundary && rest.len() > name.len() && rest[..name.len()].eq_ignore_ascii_case(name) {
            let after = rest[name.len()..].trim_start();
            if let Some(value) = after.strip_prefix('=') {
                let value = value.trim_start();
                return Some(match value.strip_prefix('"') {
                    Some(quoted) => {
                        let mut out = String::new();
                        let mut chars = quoted.chars();
                        while let Some(c) = chars.next() {
                            match c {
                                '"' => break,
                                '\\' => out.extend(chars.next()),
                                c => out.push(c),
                            }
                        }
                        out
                    }
                    None => value.split([',', ' ']).next().unwrap_or_default().to_string(),
                });
            }
        }
        i += rest.chars().next().map_or(1, char::len_utf8);
    }
    None
}

fn quote(text: &str) -> String {
    crate::remote::http::quote(text, QUOTE_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn odata(code: &str, message: &str, detail: Option<&str>, inner: Option<&str>) -> ErrorBody {
        let mut error = json!({"code": code, "message": message});
        if let Some(d) = detail {
            error["details"] = json!([{"code": code, "message": d, "target": ""}]);
        }
        if let Some(i) = inner {
            error["innererror"] = json!({"internalException": {"message": i}});
        }
        ErrorBody::Json(json!({ "error": error }))
    }

    #[test]
    fn the_message_comes_from_details_then_inner_then_message() {
        let all = odata("NotFound", "generic", Some("the cmdlet's words"), Some("inner words"));
        assert_eq!(all.message().as_deref(), Some("the cmdlet's words"));
        assert_eq!(odata("x", "generic", None, Some("inner words")).message().as_deref(), Some("inner words"));
        assert_eq!(odata("x", "generic", None, None).message().as_deref(), Some("generic"));
        assert_eq!(ErrorBody::from_bytes(b"<html>oops</html>").message(), None);
    }

    /// The table in the module comment, row by row.
    #[test]
    fn statuses_classify() {
        let body = odata(
            "BadRequest",
            "generic",
            Some("A parameter cannot be found that matches parameter name 'Nope'."),
            None,
        );
        let cases = [
            (400, FaultClass::InvalidParameter),
            (404, FaultClass::CmdletError),
            (403, FaultClass::UnknownCmdlet),
            (429, FaultClass::Throttled),
            (503, FaultClass::ServiceUnavailable),
            (500, FaultClass::ServerError),
            (502, FaultClass::ServerError),
            (504, FaultClass::ServerError),
            (507, FaultClass::ServerError),
            (409, FaultClass::Protocol),
            (418, FaultClass::Protocol),
        ];
        for (status, class) in cases {
            assert_eq!(from_status(status, None, &body, Call::Cmdlet("Get-Mailbox")).class, class, "{status}");
        }
        let e = from_status(400, None, &body, Call::Cmdlet("Get-Mailbox"));
        assert_eq!(e.message, "A parameter cannot be found that matches parameter name 'Nope'.");
        let e = from_status(
            404,
            None,
            &odata(
                "NotFound",
                "x",
                Some("The operation couldn't be performed because object 'nobody' couldn't be found."),
                None,
            ),
            Call::Cmdlet("Get-Mailbox"),
        );
        assert!(e.message.starts_with("The operation couldn't be performed"), "{}", e.message);
    }

    #[test]
    fn throttling_and_unavailability_carry_the_wait() {
        let body = ErrorBody::Text(String::new());
        let e = from_status(429, retry_after("2.5"), &body, Call::Cmdlet("Get-Mailbox"));
        assert_eq!((e.class, e.retry_after), (FaultClass::Throttled, Some(Duration::from_millis(2500))));
        assert!(e.class.proves_not_started());
        let e = from_status(503, retry_after("7"), &body, Call::Batch);
        assert_eq!((e.class, e.retry_after), (FaultClass::ServiceUnavailable, Some(Duration::from_secs(7))));
        assert!(e.message.starts_with("$batch: "));
        for status in [500, 502, 504] {
            assert!(from_status(status, None, &body, Call::Cmdlet("Set-Mailbox")).class.outcome_unknown());
        }
    }

    #[test]
    fn retry_after_takes_seconds_fractions_and_dates() {
        assert_eq!(retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(" 0.25 "), Some(Duration::from_millis(250)));
        assert_eq!(retry_after("-1"), None);
        assert_eq!(retry_after("soon"), None);
        let later = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        let wait = retry_after(&later).unwrap();
        assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30), "{wait:?}");
        assert_eq!(retry_after("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO), "a past date: now");
    }

    /// Exchange's unknown-cmdlet answer claims gzip and is not: its bytes are no text, and the
    /// status alone decides.
    #[test]
    fn an_unreadable_403_is_an_unknown_cmdlet() {
        let junk = ErrorBody::from_bytes(&[0x8b, 0xff, 0x00, 0x13, 0x37]);
        assert_eq!(junk, ErrorBody::Text("5 bytes that are not text".into()));
        let e = from_status(403, None, &junk, Call::Cmdlet("Get-Nothing"));
        assert_eq!(e.class, FaultClass::UnknownCmdlet);
        assert!(e.message.contains("'Get-Nothing'"), "{}", e.message);
        // A 403 that says whose permission is missing is that, whatever was asked.
        let denied = odata("Forbidden", "x", Some("The user 'a@b.com' does not have permission to manage this tenant. Permissions can be granted by assigning the user to the appropriate RBAC role."), None);
        assert_eq!(
            from_status(403, None, &denied, Call::Cmdlet("Get-Mailbox")).class,
            FaultClass::TenantPermissionDenied
        );
        assert_eq!(from_status(403, None, &junk, Call::Probe).class, FaultClass::TenantPermissionDenied);
    }

    #[test]
    fn a_second_401_names_the_identity_problem() {
        let text = |t: &str| ErrorBody::Json(json!({"error": {"code": "Unauthorized", "message": t}}));
        assert_eq!(
            unauthorized(&text("AADSTS50076: you must use multi-factor authentication"), None).class,
            FaultClass::MfaRequired
        );
        assert_eq!(
            unauthorized(&text(""), Some(r#"Bearer error="insufficient_claims", claims="e30=""#)).class,
            FaultClass::MfaRequired
        );
        assert_eq!(
            unauthorized(&text("The application lacks the Exchange.ManageAsApp permission"), None).class,
            FaultClass::ConsentRequired
        );
        assert_eq!(unauthorized(&text("AADSTS65001: consent"), None).class, FaultClass::ConsentRequired);
        assert_eq!(
            unauthorized(&text("token rejected"), Some(r#"Bearer error="invalid_token""#)).class,
            FaultClass::LogonFailed
        );
    }

    #[test]
    fn claims_challenges_decode() {
        let claims = r#"{"access_token":{"nbf":{"essential":true,"value":"1702682181"}}}"#;
        let encoded = base64::engine::general_purpose::STANDARD.encode(claims);
        let header = format!(
            r#"Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000", error="insufficient_claims", claims="{encoded}""#
        );
        assert_eq!(claims_challenge(&header).as_deref(), Some(claims));
        assert_eq!(claims_challenge(r#"Bearer error="invalid_token""#), None);
        assert_eq!(claims_challenge("Bearer claims=not-base64").as_deref(), Some("not-base64"));
        assert_eq!(auth_param(r#"Bearer realm="a \"b\"", error=x"#, "realm").as_deref(), Some(r#"a "b""#));
        assert_eq!(auth_param(r#"Bearer xclaims="no", claims="yes""#, "claims").as_deref(), Some("yes"));
    }
}
