//! The closed taxonomy of remote failures and their stable API codes: what happened, never what
//! to do about it (that is `broker::failure`, one table for every connector).
//!
//! The WinRM connector and the simulator funnel the service's answer through [`classify`], so a
//! given server text or WSManFault code always means the same thing; the Exchange Online REST
//! connector and the identity module map their HTTP and OAuth errors onto the same classes.

use serde::Serialize;
use std::fmt;
use std::time::Duration;

/// Why a remote operation failed. Closed on purpose: callers branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultClass {
    /// Bad user name or password.
    LogonFailed,
    /// The admin is not allowed to manage this tenant (RBAC / delegated admin).
    TenantPermissionDenied,
    /// The tenant's policy turns remote PowerShell off.
    TenantRemotePowerShellDisabled,
    /// "The maximum number of concurrent shells for this user has been exceeded."
    UserShellQuotaExceeded,
    /// "The maximum number of concurrent shells for this tenant has been exceeded."
    TenantShellQuotaExceeded,
    /// The identity (Live ID / Entra ID) service could not be reached.
    IdentityServiceUnreachable,
    /// The account must pass multi-factor authentication, which remote PowerShell cannot do.
    MfaRequired,
    /// The shell expired, was deleted, or is unknown to the server; the command did not start.
    SessionExpired,
    /// The transport failed; whether a running command ran is unknown.
    ConnectionLost,
    /// PowerShell could not find the command.
    UnknownCmdlet,
    /// Parameter binding failed (unknown parameter, wrong type, missing mandatory value).
    InvalidParameter,
    /// The command ran and reported an error.
    CmdletError,
    /// The remote did not answer within the operation's time limit.
    Timeout,
    /// The remote answered with something this client does not understand.
    Protocol,
    /// HTTP 503 (a load balancer or front end with no server to give the request to): the request
    /// was not processed. Usually comes with `Retry-After`.
    ServiceUnavailable,
    /// HTTP 500/502/504 without a SOAP fault (a web server's or gateway's error page): the server
    /// failed somewhere while handling the request, so whether a running command ran is unknown.
    ServerError,
    /// Exchange's budget throttling ("you have exceeded your budget to create runspace. Please
    /// wait for N seconds", or HTTP 429): refused, not processed; wait as told.
    Throttled,
    /// The shell vanished while a command was in flight (shell not found after the command was
    /// accepted): the command may or may not have run.
    SessionLost,
    /// The identity's refresh token expired or was revoked (`invalid_grant`, AADSTS700082):
    /// someone must sign in again (`psbroker login`).
    ReauthRequired,
    /// The application is not consented (or not known) in this tenant (AADSTS65001,
    /// AADSTS700016): this tenant only.
    ConsentRequired,
    /// The identity provider refused the client's own credentials (a bad secret, a bad or
    /// unknown certificate assertion: `invalid_client`, AADSTS7000215, AADSTS700027).
    InvalidClient,
    /// The account is locked out or disabled.
    AccountLocked,
    /// Kerberos: the client's and the KDC's (or the server's) clocks are too far apart.
    ClockSkew,
    /// Kerberos: the service principal (SPN) or the client principal is unknown to the KDC.
    PrincipalUnknown,
}

impl FaultClass {
    pub const ALL: [FaultClass; 24] = [
        FaultClass::LogonFailed,
        FaultClass::TenantPermissionDenied,
        FaultClass::TenantRemotePowerShellDisabled,
        FaultClass::UserShellQuotaExceeded,
        FaultClass::TenantShellQuotaExceeded,
        FaultClass::IdentityServiceUnreachable,
        FaultClass::MfaRequired,
        FaultClass::SessionExpired,
        FaultClass::ConnectionLost,
        FaultClass::UnknownCmdlet,
        FaultClass::InvalidParameter,
        FaultClass::CmdletError,
        FaultClass::Timeout,
        FaultClass::Protocol,
        FaultClass::ServiceUnavailable,
        FaultClass::ServerError,
        FaultClass::Throttled,
        FaultClass::SessionLost,
        FaultClass::ReauthRequired,
        FaultClass::ConsentRequired,
        FaultClass::InvalidClient,
        FaultClass::AccountLocked,
        FaultClass::ClockSkew,
        FaultClass::PrincipalUnknown,
    ];

    /// The stable code callers see in `error.code` (also the metrics label).
    pub fn code(self) -> &'static str {
        match self {
            FaultClass::LogonFailed => "logon_failed",
            FaultClass::TenantPermissionDenied => "tenant_permission_denied",
            FaultClass::TenantRemotePowerShellDisabled => "tenant_remote_powershell_disabled",
            FaultClass::UserShellQuotaExceeded => "user_shell_quota_exceeded",
            FaultClass::TenantShellQuotaExceeded => "tenant_shell_quota_exceeded",
            FaultClass::IdentityServiceUnreachable => "identity_service_unreachable",
            FaultClass::MfaRequired => "mfa_required",
            FaultClass::SessionExpired => "session_expired",
            FaultClass::ConnectionLost => "connection_lost",
            FaultClass::UnknownCmdlet => "unknown_cmdlet",
            FaultClass::InvalidParameter => "invalid_parameter",
            FaultClass::CmdletError => "cmdlet_error",
            FaultClass::Timeout => "remote_timeout",
            FaultClass::Protocol => "protocol_error",
            FaultClass::ServiceUnavailable => "service_unavailable",
            FaultClass::ServerError => "server_error",
            FaultClass::Throttled => "throttled",
            FaultClass::SessionLost => "session_lost",
            FaultClass::ReauthRequired => "reauth_required",
            FaultClass::ConsentRequired => "consent_required",
            FaultClass::InvalidClient => "invalid_client",
            FaultClass::AccountLocked => "account_locked",
            FaultClass::ClockSkew => "clock_skew",
            FaultClass::PrincipalUnknown => "principal_unknown",
        }
    }

    /// True when the failure says nothing about whether a running command took effect.
    pub fn outcome_unknown(self) -> bool {
        matches!(
            self,
            FaultClass::ConnectionLost | FaultClass::Timeout | FaultClass::ServerError | FaultClass::SessionLost
        )
    }

    /// True when a failed `invoke` of this class proves the command never started, so even a
    /// write may run again. Connectors guarantee it: they report these classes from `invoke`
    /// only for a refusal of the request that would have started the command (a shell that
    /// was gone before it, a 503 that never reached a server, a throttled request); once the
    /// command may have started, a lost shell is [`FaultClass::SessionLost`].
    pub fn proves_not_started(self) -> bool {
        matches!(self, FaultClass::SessionExpired | FaultClass::ServiceUnavailable | FaultClass::Throttled)
    }
}

impl fmt::Display for FaultClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A PowerShell error record, reduced to what callers need.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ErrorRecord {
    pub message: String,
    pub category: String,
    pub fully_qualified_error_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// A classified remote failure with the service's own words.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{class}: {message}")]
pub struct RemoteError {
    pub class: FaultClass,
    pub message: String,
    /// The terminating error record, when the failure came from PowerShell itself.
    pub record: Option<ErrorRecord>,
    /// How long the service asked the client to wait (HTTP `Retry-After`, or Exchange's
    /// "Please wait for N seconds").
    pub retry_after: Option<Duration>,
    /// The id the request was sent under (Exchange Online's `client-request-id`), when the
    /// transport has one: what the service's support asks for.
    pub request_id: Option<String>,
}

impl RemoteError {
    pub fn new(class: FaultClass, message: impl Into<String>) -> Self {
        let message = message.into();
        let retry_after = if class == FaultClass::Throttled { wait_hint(&message) } else { None };
        Self { class, message, record: None, retry_after, request_id: None }
    }

    /// The failure of a pipeline that ended with a terminating error record.
    pub fn from_record(class: FaultClass, record: ErrorRecord) -> Self {
        Self { class, message: record.message.clone(), record: Some(record), retry_after: None, request_id: None }
    }

    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        if retry_after.is_some() {
            self.retry_after = retry_after;
        }
        self
    }

    pub fn with_request_id(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }
}

/// The wait Exchange's budget throttling asks for: "… Please wait for 44 seconds."
pub fn wait_hint(message: &str) -> Option<Duration> {
    let lower = message.to_ascii_lowercase();
    let rest = &lower[lower.find("please wait for ")? + "please wait for ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let secs: u64 = digits.parse().ok()?;
    rest[digits.len()..].trim_start().starts_with("second").then(|| Duration::from_secs(secs))
}

/// WSManFault code for "maximum number of concurrent shells for this user has been exceeded".
pub const WSMAN_QUOTA_LIMIT: u32 = 2_150_859_173;
/// WSManFault code for "the shell was not found" (expired, deleted or another server's).
pub const WSMAN_SHELL_NOT_FOUND: u32 = 2_150_858_843;
/// WSManFault code for "Receive had nothing to say within the operation timeout" (benign).
pub const WSMAN_OPERATION_TIMEOUT: u32 = 2_150_858_793;

/// Classifies a failure to open or use a shell from what the service said: the HTTP status,
/// the WSManFault code if any, and the message text (the seeds' texts are matched literally).
pub fn classify(http_status: Option<u16>, wsman_code: Option<u32>, message: &str) -> FaultClass {
    let text = message.to_ascii_lowercase();
    let has = |needle: &str| text.contains(needle);
    // Refusals in front of (or at the door of) the service: nothing was processed.
    if http_status == Some(503) {
        return FaultClass::ServiceUnavailable;
    }
    if http_status == Some(429) || has("exceeded your budget to create runspace") {
        return FaultClass::Throttled;
    }
    if has("maximum number of concurrent shells for this tenant") {
        return FaultClass::TenantShellQuotaExceeded;
    }
    if wsman_code == Some(WSMAN_QUOTA_LIMIT)
        || has("maximum number of concurrent shells for this user")
        || has("maximum number of connections allowed")
    {
        return FaultClass::UserShellQuotaExceeded;
    }
    if wsman_code == Some(WSMAN_SHELL_NOT_FOUND)
        || has("shell was not found")
        || has("maximum number of commands for this shell")
    {
        return FaultClass::SessionExpired;
    }
    if has("does not have permission to manage this tenant") {
        return FaultClass::TenantPermissionDenied;
    }
    if has("ability to connect to this tenant by using a remote powershell session has been disabled") {
        return FaultClass::TenantRemotePowerShellDisabled;
    }
    if has("failed to connect live id servers") || has("can not load live id module") {
        return FaultClass::IdentityServiceUnreachable;
    }
    if has("multi-factor authentication") || has("aadsts50076") || has("aadsts50079") {
        return FaultClass::MfaRequired;
    }
    if has("clock skew too great") || has("krb_ap_err_skew") {
        return FaultClass::ClockSkew;
    }
    // Windows' words for STATUS_ACCOUNT_LOCKED_OUT and STATUS_ACCOUNT_DISABLED (NTLM, Kerberos).
    if has("account is currently locked out") || has("account is currently disabled") {
        return FaultClass::AccountLocked;
    }
    if http_status == Some(401) || has("logon failed for the user") || has("access is denied") {
        return FaultClass::LogonFailed;
    }
    FaultClass::Protocol
}

/// Classifies an HTTP error whose body is not a SOAP fault: a load balancer's, gateway's or web
/// server's page rather than WinRM's answer. A 503 was never processed; a bare 500/502/504 says
/// the server failed somewhere while handling the request, so what it did is unknown.
pub fn classify_bare_http(http_status: u16, body: &str) -> FaultClass {
    match classify(Some(http_status), None, body) {
        FaultClass::Protocol if matches!(http_status, 500 | 502 | 504) => FaultClass::ServerError,
        class => class,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_texts_classify_to_their_class() {
        let cases = [
            ("The WS-Management service cannot process the request. The maximum number of concurrent shells for this user has been exceeded. Close existing shells or raise the quota for this user.", FaultClass::UserShellQuotaExceeded),
            ("The WS-Management service cannot process the request. The maximum number of concurrent shells for this tenant has been exceeded. Close existing shells or raise the quota for this tenant.", FaultClass::TenantShellQuotaExceeded),
            ("The user 'user@foo.com' does not have permission to manage this tenant. Permissions can be granted by assigning the user to the appropriate RBAC role.", FaultClass::TenantPermissionDenied),
            ("The ability to connect to this tenant by using a remote PowerShell session has been disabled. Please contact Lync Help to check Tenant Powershell Policy of this tenant.", FaultClass::TenantRemotePowerShellDisabled),
            ("Failed to connect live id servers. Make sure proxy is enabled or machine has network connection to live id servers.", FaultClass::IdentityServiceUnreachable),
            ("Logon failed for the user 'kenmyer@litwareinc.com'. Please create a new PSCredential object, making sure that you have used the correct user name and password.", FaultClass::LogonFailed),
            ("Fail to create a runspace because you have exceeded the maximum number of connections allowed : 3 for the policy party : MaxConcurrency", FaultClass::UserShellQuotaExceeded),
            ("[AuthZRequestId=4cdfc096][FailureCategory=AuthZ-AuthorizationException] Fail to create runspace because you have exceeded your budget to create runspace. Please wait for 2 seconds.", FaultClass::Throttled),
        ];
        for (text, class) in cases {
            assert_eq!(classify(Some(500), None, text), class, "{text}");
        }
    }

    #[test]
    fn wsman_codes_and_http_status_classify() {
        assert_eq!(classify(Some(500), Some(WSMAN_QUOTA_LIMIT), "x"), FaultClass::UserShellQuotaExceeded);
        assert_eq!(classify(Some(500), Some(WSMAN_SHELL_NOT_FOUND), "x"), FaultClass::SessionExpired);
        assert_eq!(classify(Some(401), None, ""), FaultClass::LogonFailed);
        assert_eq!(classify(Some(500), None, "something odd"), FaultClass::Protocol);
    }

    #[test]
    fn bare_http_errors_say_whether_anything_was_processed() {
        assert_eq!(classify_bare_http(503, "Service Unavailable"), FaultClass::ServiceUnavailable);
        assert_eq!(classify_bare_http(503, ""), FaultClass::ServiceUnavailable);
        assert_eq!(classify_bare_http(429, "Too Many Requests"), FaultClass::Throttled);
        for status in [500, 502, 504] {
            assert_eq!(classify_bare_http(status, "<html>Internal Server Error</html>"), FaultClass::ServerError);
        }
        // A text the service uses still wins over the status.
        assert_eq!(classify_bare_http(500, "Logon failed for the user 'x'"), FaultClass::LogonFailed);
        assert_eq!(classify_bare_http(400, "Bad Request"), FaultClass::Protocol);
        // With a SOAP fault the server answered: an unknown fault text is a protocol error.
        assert_eq!(classify(Some(500), None, "something odd"), FaultClass::Protocol);
    }

    #[test]
    fn budget_throttling_carries_its_wait() {
        let text = "Fail to create a runspace because you have exceeded your budget to create runspace. Please wait for 44 seconds.";
        let e = RemoteError::new(classify(Some(500), None, text), text);
        assert_eq!((e.class, e.retry_after), (FaultClass::Throttled, Some(Duration::from_secs(44))));
        assert_eq!(wait_hint("please wait for 1 second."), Some(Duration::from_secs(1)));
        assert_eq!(wait_hint("Please wait for a while"), None);
        assert_eq!(wait_hint("Please wait for 5 minutes"), None);
        assert_eq!(RemoteError::new(FaultClass::ConnectionLost, text).retry_after, None);
    }

    /// The two properties the broker's retry rule is built on, for every class.
    #[test]
    fn every_class_knows_whether_a_command_may_have_run() {
        use FaultClass::*;
        for class in FaultClass::ALL {
            let unknown = matches!(class, ConnectionLost | Timeout | ServerError | SessionLost);
            let not_started = matches!(class, SessionExpired | ServiceUnavailable | Throttled);
            assert_eq!(class.outcome_unknown(), unknown, "{class}");
            assert_eq!(class.proves_not_started(), not_started, "{class}");
            assert!(!(unknown && not_started), "{class}");
        }
    }

    #[test]
    fn codes_are_unique() {
        let mut codes: Vec<_> = FaultClass::ALL.iter().map(|c| c.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), FaultClass::ALL.len());
    }
}

/// Classifies a PowerShell error record that ended a pipeline, by its FullyQualifiedErrorId
/// (the part before the first comma is the error id, the rest names the command).
pub fn classify_error_record(record: &ErrorRecord) -> FaultClass {
    let id = record.fully_qualified_error_id.split(',').next().unwrap_or("").trim();
    match id {
        "CommandNotFoundException" => FaultClass::UnknownCmdlet,
        "NamedParameterNotFound"
        | "ParameterArgumentValidationError"
        | "ParameterArgumentTransformationError"
        | "MissingArgument"
        | "MissingMandatoryParameter"
        | "ParameterAlreadyBound"
        | "AmbiguousParameter"
        | "PositionalParameterNotFound"
        | "CannotConvertArgumentNoMessage"
        | "CannotConvertArgument" => FaultClass::InvalidParameter,
        _ => FaultClass::CmdletError,
    }
}

#[cfg(test)]
mod record_tests {
    use super::*;

    fn record(id: &str) -> ErrorRecord {
        ErrorRecord {
            message: String::new(),
            category: String::new(),
            fully_qualified_error_id: id.into(),
            target: None,
        }
    }

    #[test]
    fn error_ids_classify() {
        assert_eq!(classify_error_record(&record("CommandNotFoundException")), FaultClass::UnknownCmdlet);
        assert_eq!(classify_error_record(&record("NamedParameterNotFound,Get-Mailbox")), FaultClass::InvalidParameter);
        assert_eq!(
            classify_error_record(&record(
                "[Server=X],8A1B2C3D,Microsoft.Exchange.Management.RecipientTasks.GetMailbox"
            )),
            FaultClass::CmdletError
        );
    }
}
