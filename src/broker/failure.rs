//! What a remote failure means for the broker: one table for every connector.
//!
//! Connectors (WinRM/PSRP, Exchange Online REST, the in-process simulator) only say *what
//! happened*, as a [`FaultClass`] plus two facts about it (`outcome_unknown`,
//! `proves_not_started`). Everything that follows from it is decided here, once:
//! - for an **invocation** whose command failed: run it again, or end it ([`may_run_again`]);
//! - for the **session** that ran it: keep it, drop it, or close it ([`session_after`]);
//! - for the **pool**, when opening a session failed: whom to leave alone, which cap to lower,
//!   how to back off ([`after_open_failure`]); and when the service pushed back on a command
//!   (429/503): whose calls in flight to lower for a cool-down ([`after_command_failure`]).
//!
//! docs/errors.md renders this table for callers; the test below pins it.

use super::scheduler::AfterCommand;
use crate::remote::FaultClass;

/// The family a failure belongs to, by what can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryPolicy {
    /// Another admin may succeed where this one failed: exclude this admin, retry.
    RetryElsewhere,
    /// The service is saturated or unreachable for now: back off, then retry. Never fails the job.
    RetryLater,
    /// The session is gone (or unusable): open a fresh one and retry — always when the command
    /// never started, only idempotent commands when the outcome is unknown.
    ReopenAndRetry,
    /// Retrying cannot help: the invocation fails with the class's stable code.
    Fail,
}

pub fn policy(class: FaultClass) -> RetryPolicy {
    use FaultClass::*;
    match class {
        LogonFailed
        | TenantPermissionDenied
        | MfaRequired
        | ReauthRequired
        | InvalidClient
        | ConsentRequired
        | AccountLocked
        | ClockSkew => RetryPolicy::RetryElsewhere,
        UserShellQuotaExceeded
        | TenantShellQuotaExceeded
        | IdentityServiceUnreachable
        | ServiceUnavailable
        | Throttled => RetryPolicy::RetryLater,
        // A lost connection, a timeout, a bare server error or a shell lost mid-command leave the
        // outcome unknown: only idempotent commands are retried (see `may_run_again`).
        SessionExpired | ConnectionLost | Timeout | ServerError | SessionLost => RetryPolicy::ReopenAndRetry,
        TenantRemotePowerShellDisabled
        | UnknownCmdlet
        | InvalidParameter
        | CmdletError
        | Protocol
        | PrincipalUnknown => RetryPolicy::Fail,
    }
}

/// Whether an invocation whose attempt failed with `class` may run again. The rule: a command
/// that is not idempotent runs again only when the failure proves it never started; anything
/// else that can be retried is retried (within `max_attempts`).
pub fn may_run_again(class: FaultClass, idempotent: bool) -> bool {
    match policy(class) {
        RetryPolicy::Fail => false,
        _ if class.proves_not_started() => true,
        // The outcome is unknown (connection lost, timeout, bare server error, shell lost under
        // the command), or a live session said something unexpected (quota, logon): only a
        // command that is safe to run twice is repeated.
        _ => idempotent,
    }
}

/// What a failure says about the session that ran the command.
pub fn session_after(class: FaultClass) -> AfterCommand {
    use FaultClass::*;
    match class {
        // The command ran (or PowerShell refused it): the session is fine.
        UnknownCmdlet | InvalidParameter | CmdletError => AfterCommand::Keep,
        // The request never reached the session (503, throttled): it is as it was.
        ServiceUnavailable | Throttled => AfterCommand::Keep,
        // The server no longer has the session: nothing to close.
        SessionExpired | SessionLost => AfterCommand::Gone,
        // Anything else leaves the session in an unknown state.
        _ => AfterCommand::Close,
    }
}

/// What the pool does when opening a session for (admin, tenant) failed with a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolEffect {
    /// Someone outside the broker holds the admin's sessions: its effective cap drops to what
    /// the broker holds, for the quota cool-down. The work waits; it does not fail.
    LowerAdminCap,
    /// Likewise for the tenant's cap.
    LowerTenantCap,
    /// No admin can help with this tenant (its remote PowerShell is off): queued work fails.
    BlockTenant,
    /// The admin's identity is unusable everywhere (bad password, MFA demanded, refresh token
    /// revoked, bad client secret, account locked, clock skew): left alone for the cool-down.
    BlockAdmin,
    /// The admin may not act for this tenant (no permission, no consent there, or an answer no
    /// retry can change): left alone for this tenant only.
    BlockPair,
    /// Transient (identity service down, connection lost, 503, throttled): back the admin off,
    /// at least as long as the service asked.
    BackOff,
    /// The service pushed back on a call the admin made (429, or 503 with `Retry-After`): the
    /// admin's effective cap (its calls in flight) drops to one less than it holds, never below
    /// one, for the quota cool-down (longer if the service asked); idle sessions over it close.
    EaseOffAdmin,
}

pub fn after_open_failure(class: FaultClass) -> PoolEffect {
    use FaultClass::*;
    match class {
        UserShellQuotaExceeded => PoolEffect::LowerAdminCap,
        TenantShellQuotaExceeded => PoolEffect::LowerTenantCap,
        TenantRemotePowerShellDisabled => PoolEffect::BlockTenant,
        LogonFailed | MfaRequired | ReauthRequired | InvalidClient | AccountLocked | ClockSkew => {
            PoolEffect::BlockAdmin
        }
        TenantPermissionDenied | ConsentRequired => PoolEffect::BlockPair,
        _ if policy(class) == RetryPolicy::Fail => PoolEffect::BlockPair,
        _ => PoolEffect::BackOff,
    }
}

/// What the pool does when a command failed with a class on a live session (besides what
/// becomes of the invocation and the session): only a push-back from the service changes it.
/// The admin is eased off rather than the tenant, since the service's budgets are per identity
/// (calls in flight per user or application) first.
pub fn after_command_failure(class: FaultClass) -> Option<PoolEffect> {
    use FaultClass::*;
    match class {
        Throttled | ServiceUnavailable => Some(PoolEffect::EaseOffAdmin),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AfterCommand::{Close, Gone, Keep};
    use FaultClass::*;
    use PoolEffect::*;

    /// The whole table: for every class, whether a read / a write runs again after a failed
    /// command, what becomes of the session, and what a failed open does to the pool.
    #[test]
    fn one_table_for_every_failure() {
        let table = [
            // class, read retried, write retried, session, failed open
            (LogonFailed, true, false, Close, BlockAdmin),
            (TenantPermissionDenied, true, false, Close, BlockPair),
            (TenantRemotePowerShellDisabled, false, false, Close, BlockTenant),
            (UserShellQuotaExceeded, true, false, Close, LowerAdminCap),
            (TenantShellQuotaExceeded, true, false, Close, LowerTenantCap),
            (IdentityServiceUnreachable, true, false, Close, BackOff),
            (MfaRequired, true, false, Close, BlockAdmin),
            (SessionExpired, true, true, Gone, BackOff),
            (ConnectionLost, true, false, Close, BackOff),
            (UnknownCmdlet, false, false, Keep, BlockPair),
            (InvalidParameter, false, false, Keep, BlockPair),
            (CmdletError, false, false, Keep, BlockPair),
            (Timeout, true, false, Close, BackOff),
            (Protocol, false, false, Close, BlockPair),
            (ServiceUnavailable, true, true, Keep, BackOff),
            (ServerError, true, false, Close, BackOff),
            (Throttled, true, true, Keep, BackOff),
            (SessionLost, true, false, Gone, BackOff),
            (ReauthRequired, true, false, Close, BlockAdmin),
            (ConsentRequired, true, false, Close, BlockPair),
            (InvalidClient, true, false, Close, BlockAdmin),
            (AccountLocked, true, false, Close, BlockAdmin),
            (ClockSkew, true, false, Close, BlockAdmin),
            (PrincipalUnknown, false, false, Close, BlockPair),
        ];
        assert_eq!(table.len(), FaultClass::ALL.len(), "every class is in the table");
        for (class, read, write, session, pool) in table {
            assert_eq!(may_run_again(class, true), read, "read after {class}");
            assert_eq!(may_run_again(class, false), write, "write after {class}");
            assert_eq!(session_after(class), session, "session after {class}");
            assert_eq!(after_open_failure(class), pool, "failed open with {class}");
            let eased = matches!(class, Throttled | ServiceUnavailable).then_some(EaseOffAdmin);
            assert_eq!(after_command_failure(class), eased, "failed command with {class}");
        }
    }

    /// The retry rule rests on the connectors' two facts: no class lets a write repeat when its
    /// outcome is unknown, and every class that proves a command never started is retryable.
    #[test]
    fn no_write_repeats_with_an_unknown_outcome() {
        for class in FaultClass::ALL {
            assert!(!(class.outcome_unknown() && may_run_again(class, false)), "{class}");
            if class.outcome_unknown() || class.proves_not_started() {
                assert_ne!(policy(class), RetryPolicy::Fail, "{class} must be retryable");
            }
        }
    }
}
