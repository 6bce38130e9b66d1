//! What a cmdlet does, decided before anything runs: **read**, **write**, **destructive**, or
//! **host-level / session-tampering**. Modelled on JEA's VisibleCmdlets: roles are granted
//! classes, not verbs, and the class comes from an explicit table first and the verb last.
//!
//! 1. *Host-level or session-tampering* ([`DENIED_CMDLETS`]): cmdlets that reach the remote
//!    machine itself (files, registry, processes, services, network, WMI/CIM), run or load code
//!    (modules, types, jobs, scheduled tasks, remoting, events), or change the shared pooled
//!    session other tokens use next (variables, preference variables, aliases, functions via
//!    providers, transcripts, debugging). No role may run them.
//! 2. *Parameter rules* ([`PARAMETER_RULES`]): a parameter that turns a read into a change —
//!    `Search-Mailbox -DeleteContent` deletes mail, `-TargetMailbox` copies it. Any unambiguous
//!    abbreviation of the parameter counts (PowerShell binds prefixes); `false` (a switch turned
//!    off) does not.
//! 3. *Cmdlet rules* ([`CMDLET_RULES`]): cmdlets whose verb says less than they do
//!    (`Test-Mailflow` sends mail; `Disable-Mailbox` deletes the mailbox's directory object).
//! 4. *Verb*: Get, Search, Find, Test, Measure read ([`READ_VERBS`]); Remove and Clear are
//!    destructive; every other verb writes.
//!
//! The class decides the role check (read-only: reads only) and whether a command may run
//! twice by default (reads only: `idempotent` defaults to true for reads, never for the rest).

use super::pattern::Glob;
use serde_json::{Map, Value as Json};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    Read,
    Write,
    Destructive,
    HostLevel,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Read => "read",
            Class::Write => "write",
            Class::Destructive => "destructive",
            Class::HostLevel => "host-level",
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a cmdlet has its class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// A deny-list entry (a glob) matched.
    DenyList(&'static str),
    /// A parameter given decides (its full name).
    Parameter(&'static str),
    /// The cmdlet is listed by name.
    Cmdlet,
    /// Only the verb decided.
    Verb,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    pub class: Class,
    pub reason: Reason,
}

/// Verbs whose cmdlets only read, unless a rule above says otherwise.
pub const READ_VERBS: [&str; 5] = ["Get", "Search", "Find", "Test", "Measure"];

/// Verbs whose cmdlets delete or wipe.
pub const DESTRUCTIVE_VERBS: [&str; 2] = ["Remove", "Clear"];

/// Host-level and session-tampering cmdlets (globs, case-insensitive): refused for every token.
pub const DENIED_CMDLETS: &[&str] = &[
    // Code: expressions, script blocks, types, objects, modules, snap-ins, history.
    "Invoke-*",
    "Add-Type",
    "New-Object",
    "*-Module",
    "*-ModuleMember",
    "*-PSSnapin",
    "ForEach-Object",
    "Where-Object",
    "Measure-Command",
    "Trace-Command",
    "*-TraceSource",
    "*-History",
    "*-TypeData",
    "Update-FormatData",
    "Register-ArgumentCompleter",
    "*-ExperimentalFeature",
    "Install-*",
    "Uninstall-*",
    "*-Package",
    "*-PackageSource",
    "*-PackageProvider",
    "*-PSRepository",
    "*-PSResource",
    "Save-Module",
    "Publish-Module",
    // Jobs, thread jobs, scheduled jobs and tasks, events.
    "*-Job",
    "*-ThreadJob",
    "*-ScheduledJob",
    "*-ScheduledJobOption",
    "*-JobTrigger",
    "*-ScheduledTask",
    "*-ScheduledTask*",
    "Register-*Event",
    "*-Event",
    "*-EventSubscriber",
    // Remoting and sessions.
    "*-PSSession",
    "*-PSSessionConfiguration",
    "*-PSSessionConfigurationFile",
    "*-PSSessionOption",
    "*-PSHostProcess",
    "*-PSRemoting",
    "*-PSRoleCapabilityFile",
    "*-Runspace",
    "*-RunspaceDebug",
    "*-WSMan*",
    "Connect-PSSession",
    "Connect-ExchangeOnline",
    "Connect-IPPSSession",
    "Disconnect-ExchangeOnline",
    "Enter-*",
    "Exit-*",
    // CIM and WMI.
    "*-Cim*",
    "*-Wmi*",
    // Providers: files, registry, certificates, variables, aliases, functions, drives.
    "*-Item",
    "*-ItemProperty",
    "*-ItemPropertyValue",
    "*-ChildItem",
    "*-Content",
    "*-Location",
    "*-PSDrive",
    "*-PSProvider",
    "*-Path",
    "*-Acl",
    "*-Variable",
    "*-Alias",
    "*-Clipboard",
    "*-Clixml",
    "*-Csv",
    "Out-File",
    "Out-Printer",
    "Out-GridView",
    "Tee-Object",
    "*-Transcript",
    "Export-Console",
    "Export-FormatData",
    "Import-LocalizedData",
    "Import-PowerShellDataFile",
    "*-Credential",
    "*-AuthenticodeSignature",
    "*-PfxCertificate",
    // Debugging and session behaviour.
    "*-PSBreakpoint",
    "*-PSDebug",
    "*-StrictMode",
    "*-PSReadLine*",
    "*-PSCallStack",
    "Show-*",
    // The machine: processes, services, computer, OS, network.
    "*-Process",
    "*-Service",
    "*-Computer",
    "*-ComputerSecureChannel",
    "*-ComputerRestore",
    "*-ComputerMachinePassword",
    "*-ExecutionPolicy",
    "*-HotFix",
    "*-WindowsFeature",
    "*-WindowsOptionalFeature",
    "*-EventLog",
    "*-WinEvent",
    "*-LocalUser",
    "*-LocalGroup",
    "*-LocalGroupMember",
    "*-SmbShare",
    "*-SmbMapping",
    "*-Net*",
    "Test-Connection",
    "Resolve-DnsName",
    "Send-MailMessage",
    "Start-BitsTransfer",
    "Set-Date",
    "Set-Culture",
    "Set-TimeZone",
    "Start-Sleep",
];

/// A parameter that makes a cmdlet do more than its verb says.
pub struct ParameterRule {
    pub cmdlet: &'static str,
    pub parameter: &'static str,
    pub class: Class,
}

pub const PARAMETER_RULES: &[ParameterRule] = &[
    ParameterRule { cmdlet: "Search-Mailbox", parameter: "DeleteContent", class: Class::Destructive },
    ParameterRule { cmdlet: "Search-Mailbox", parameter: "TargetMailbox", class: Class::Write },
    ParameterRule { cmdlet: "Search-Mailbox", parameter: "TargetFolder", class: Class::Write },
    ParameterRule { cmdlet: "New-ComplianceSearchAction", parameter: "Purge", class: Class::Destructive },
];

/// Cmdlets whose class is not their verb's.
pub const CMDLET_RULES: &[(&str, Class)] = &[
    ("Test-Mailflow", Class::Write),
    ("Test-Message", Class::Write),
    ("Test-ExchangeSearch", Class::Write),
    ("Disable-Mailbox", Class::Destructive),
    ("Disable-RemoteMailbox", Class::Destructive),
    ("Disable-MailUser", Class::Destructive),
    ("Disable-MailContact", Class::Destructive),
    ("Disable-DistributionGroup", Class::Destructive),
];

/// Whether a parameter given as `given` reaches the parameter `full`: equal ignoring case, or an
/// abbreviation of it (PowerShell binds any unambiguous prefix, and the broker cannot know
/// what else the cmdlet takes, so every prefix counts).
pub fn binds_to(given: &str, full: &str) -> bool {
    !given.is_empty() && given.len() <= full.len() && full[..given.len()].eq_ignore_ascii_case(given)
}

pub fn verb(cmdlet: &str) -> &str {
    cmdlet.split('-').next().unwrap_or("")
}

fn has_verb(cmdlet: &str, verbs: &[&str]) -> bool {
    let v = verb(cmdlet);
    verbs.iter().any(|x| x.eq_ignore_ascii_case(v))
}

/// The deny-list as globs, built once (authorization runs for every item of a batch).
static DENIED_GLOBS: std::sync::LazyLock<Vec<(&'static str, Glob)>> =
    std::sync::LazyLock::new(|| DENIED_CMDLETS.iter().map(|d| (*d, Glob::new(d))).collect());

thread_local! {
    /// The last cmdlet looked up on this thread and its answer: a batch repeats one cmdlet
    /// thousands of times, and the deny-list has over a hundred globs to try.
    static LAST_LOOKUP: std::cell::RefCell<(String, Option<&'static str>)> = const { std::cell::RefCell::new((String::new(), None)) };
}

/// The deny-list entry that matches `cmdlet`, if any.
pub fn denied_by(cmdlet: &str) -> Option<&'static str> {
    LAST_LOOKUP.with_borrow_mut(|(last, answer)| {
        if last != cmdlet || last.is_empty() {
            *answer = DENIED_GLOBS.iter().find(|(_, glob)| glob.matches(cmdlet)).map(|(entry, _)| *entry);
            last.clear();
            last.push_str(cmdlet);
        }
        *answer
    })
}

pub fn classify(cmdlet: &str, parameters: &Map<String, Json>) -> Classification {
    if let Some(entry) = denied_by(cmdlet) {
        return Classification { class: Class::HostLevel, reason: Reason::DenyList(entry) };
    }
    let switched_on = |v: &Json| !matches!(v, Json::Bool(false));
    let by_parameter = PARAMETER_RULES
        .iter()
        .filter(|r| r.cmdlet.eq_ignore_ascii_case(cmdlet))
        .filter(|r| parameters.iter().any(|(name, value)| binds_to(name, r.parameter) && switched_on(value)))
        .max_by_key(|r| r.class);
    if let Some(rule) = by_parameter {
        return Classification { class: rule.class, reason: Reason::Parameter(rule.parameter) };
    }
    if let Some((_, class)) = CMDLET_RULES.iter().find(|(name, _)| name.eq_ignore_ascii_case(cmdlet)) {
        return Classification { class: *class, reason: Reason::Cmdlet };
    }
    let class = if has_verb(cmdlet, &READ_VERBS) {
        Class::Read
    } else if has_verb(cmdlet, &DESTRUCTIVE_VERBS) {
        Class::Destructive
    } else {
        Class::Write
    };
    Classification { class, reason: Reason::Verb }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn class(cmdlet: &str, params: Json) -> Class {
        classify(cmdlet, params.as_object().unwrap()).class
    }

    #[test]
    fn the_issues_cmdlets_are_host_level() {
        for c in [
            "Get-Content",
            "Get-ChildItem",
            "Test-NetConnection",
            "Set-Variable",
            "Set-Alias",
            "Stop-Process",
            "Stop-Computer",
            "Restart-Computer",
            "Set-ItemProperty",
            "Register-ScheduledJob",
            "Start-ThreadJob",
            "Export-Clixml",
            "Import-Clixml",
            "Tee-Object",
            "Start-Transcript",
            "New-CimSession",
            "Get-WmiObject",
            "Register-ScheduledTask",
            "Import-Module",
            "Enter-PSSession",
            "Set-Location",
            "New-PSDrive",
            "Invoke-Expression",
            "Start-Job",
            "Remove-Variable",
            "Get-Item",
            "New-Item",
        ] {
            assert_eq!(class(c, json!({})), Class::HostLevel, "{c}");
        }
    }

    #[test]
    fn exchange_cmdlets_keep_their_classes() {
        for (c, want) in [
            ("Get-Mailbox", Class::Read),
            ("get-mailboxstatistics", Class::Read),
            ("Search-UnifiedAuditLog", Class::Read),
            ("Test-MAPIConnectivity", Class::Read),
            ("Set-Mailbox", Class::Write),
            ("New-Mailbox", Class::Write),
            ("Start-ManagedFolderAssistant", Class::Write),
            ("Remove-Mailbox", Class::Destructive),
            ("Clear-MobileDevice", Class::Destructive),
            ("Disable-Mailbox", Class::Destructive),
            ("Test-Mailflow", Class::Write),
            ("Get-MailboxItem", Class::Read),
            ("Get-ExchangeCertificate", Class::Read),
        ] {
            assert_eq!(class(c, json!({})), want, "{c}");
        }
    }

    #[test]
    fn parameters_decide_where_they_change_what_a_cmdlet_does() {
        let c = classify(
            "Search-Mailbox",
            json!({"Identity": "u", "DeleteContent": true, "Force": true}).as_object().unwrap(),
        );
        assert_eq!((c.class, c.reason), (Class::Destructive, Reason::Parameter("DeleteContent")));
        assert_eq!(class("search-mailbox", json!({"deletec": true})), Class::Destructive, "abbreviated");
        assert_eq!(class("Search-Mailbox", json!({"DeleteContent": false})), Class::Read, "switch off");
        assert_eq!(class("Search-Mailbox", json!({"TargetMailbox": "x"})), Class::Write);
        assert_eq!(class("Search-Mailbox", json!({"TargetMailbox": "x", "Del": true})), Class::Destructive);
        assert_eq!(class("Search-Mailbox", json!({"SearchQuery": "x"})), Class::Read);
        assert_eq!(class("New-ComplianceSearchAction", json!({"Purge": true})), Class::Destructive);
    }

    #[test]
    fn the_remembered_lookup_answers_for_the_cmdlet_asked() {
        for _ in 0..2 {
            assert_eq!(denied_by("Invoke-Expression"), Some("Invoke-*"));
            assert_eq!(denied_by("Invoke-Expression"), Some("Invoke-*"), "the same cmdlet again");
            assert_eq!(denied_by("Set-Mailbox"), None);
            assert_eq!(denied_by("set-mailbox"), None);
            assert_eq!(denied_by("invoke-command"), Some("Invoke-*"), "another cmdlet, another answer");
            assert_eq!(denied_by(""), None);
        }
    }

    #[test]
    fn abbreviations_bind_to_the_full_name_only() {
        assert!(binds_to("Ident", "Identity") && binds_to("IDENTITY", "Identity"));
        assert!(!binds_to("Identity2", "Identity") && !binds_to("", "Identity") && !binds_to("x", "Identity"));
        assert!(!binds_to("é", "Identity"), "non-ASCII never panics");
    }
}
