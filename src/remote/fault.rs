//! The closed taxonomy of remote failures, their stable API codes and what the broker does next.
//!
//! Every connector (in-process simulator now, WS-Management later) funnels the service's answer
//! through [`classify`], so a given server text or WSManFault code always means the same thing.

use serde::Serialize;
use std::fmt;

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
}

/// What the broker does with a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryPolicy {
    /// Another admin may succeed where this one failed: exclude this admin for the tenant, retry.
    RetryElsewhere,
    /// The service is saturated or unreachable for now: back off, then retry. Never fails the job.
    RetryLater,
    /// The session is gone but the command never started: open a fresh session and retry.
    ReopenAndRetry,
    /// Retrying cannot help: the invocation fails with the class's stable code.
    Fail,
}

impl FaultClass {
    pub const ALL: [FaultClass; 14] = [
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
        }
    }

    pub fn policy(self) -> RetryPolicy {
        match self {
            FaultClass::LogonFailed | FaultClass::TenantPermissionDenied | FaultClass::MfaRequired => {
                RetryPolicy::RetryElsewhere
            }
            FaultClass::UserShellQuotaExceeded
            | FaultClass::TenantShellQuotaExceeded
            | FaultClass::IdentityServiceUnreachable => RetryPolicy::RetryLater,
            FaultClass::SessionExpired => RetryPolicy::ReopenAndRetry,
            // A lost connection or a timeout mid-command leaves the outcome unknown: the broker
            // retries only idempotent commands (it decides that, not the taxonomy).
            FaultClass::ConnectionLost | FaultClass::Timeout => RetryPolicy::ReopenAndRetry,
            FaultClass::TenantRemotePowerShellDisabled
            | FaultClass::UnknownCmdlet
            | FaultClass::InvalidParameter
            | FaultClass::CmdletError
            | FaultClass::Protocol => RetryPolicy::Fail,
        }
    }

    /// True when the failure says nothing about whether a running command took effect.
    pub fn outcome_unknown(self) -> bool {
        matches!(self, FaultClass::ConnectionLost | FaultClass::Timeout)
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
}

impl RemoteError {
    pub fn new(class: FaultClass, message: impl Into<String>) -> Self {
        Self { class, message: message.into(), record: None }
    }
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
    if http_status == Some(401) || has("logon failed for the user") || has("access is denied") {
        return FaultClass::LogonFailed;
    }
    FaultClass::Protocol
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
