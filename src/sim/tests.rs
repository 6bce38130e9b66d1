//! Tests of the simulated service: quotas, lifetimes, faults and their classes, cmdlet semantics,
//! execution counting and the in-process connector.

#![allow(clippy::result_large_err)] // helpers return the service API's SimFault

use super::*;
use crate::remote::{Command, PsObject, SessionTarget};
use secrecy::SecretString;
use std::time::Instant;

/// A cmdlet, its parameters and the class its failure must have.
type FaultCase<'a> = (&'a str, Vec<(&'a str, PsValue)>, FaultClass);

const CONTOSO: &str = "contoso.onmicrosoft.com";
const FABRIKAM: &str = "fabrikam.onmicrosoft.com";
const LITWARE: &str = "litware.onmicrosoft.com";
const TAILSPIN: &str = "tailspin.onmicrosoft.com";
const ALICE: &str = "alice@partner.onmicrosoft.com";
const BOB: &str = "bob@partner.onmicrosoft.com";

fn base_cfg() -> SimulatorConfig {
    SimulatorConfig {
        mailboxes_per_tenant: 30,
        remote_powershell_disabled: vec![TAILSPIN.into()],
        open_latency_ms: 0,
        command_latency_ms: 0,
        close_latency_ms: 0,
        ..SimulatorConfig::default()
    }
}

fn accounts() -> Vec<SimAccount> {
    let mut v = vec![
        SimAccount { upn: ALICE.into(), password: "pa".into(), tenants: vec!["*".into()] },
        SimAccount { upn: BOB.into(), password: "pb".into(), tenants: vec![CONTOSO.into(), FABRIKAM.into()] },
    ];
    for i in 1..=7 {
        v.push(SimAccount {
            upn: format!("u{i}@partner.onmicrosoft.com"),
            password: "pu".into(),
            tenants: vec!["*".into()],
        });
    }
    v
}

fn tenants() -> Vec<String> {
    [CONTOSO, FABRIKAM, LITWARE, TAILSPIN, "northwind.onmicrosoft.com"].iter().map(|s| s.to_string()).collect()
}

fn sim_with(cfg: SimulatorConfig) -> Simulator {
    Simulator::new(&cfg, accounts(), tenants())
}

fn sim() -> Simulator {
    sim_with(base_cfg())
}

fn open(sim: &Simulator, upn: &str, tenant: &str) -> Result<String, SimFault> {
    let pw = match upn {
        ALICE => "pa",
        BOB => "pb",
        _ => "pu",
    };
    sim.open_shell(upn, pw, tenant, "Microsoft.Exchange")
}

fn params(list: &[(&str, PsValue)]) -> Vec<(String, PsValue)> {
    list.iter().map(|(n, v)| (n.to_string(), v.clone())).collect()
}

fn s(v: &str) -> PsValue {
    PsValue::String(v.into())
}

fn obj(v: &PsValue) -> &PsObject {
    match v {
        PsValue::Object(o) => o,
        other => panic!("not an object: {other:?}"),
    }
}

fn run(sim: &Simulator, shell: &str, cmdlet: &str, p: &[(&str, PsValue)]) -> Result<CommandOutput, SimFault> {
    sim.run(shell, Uuid::new_v4(), cmdlet, &params(p))
}

const USER_QUOTA_TEXT: &str = "The WS-Management service cannot process the request. The maximum number of concurrent \
                               shells for this user has been exceeded. Close existing shells or raise the quota for this \
                               user.";
const TENANT_QUOTA_TEXT: &str = "The WS-Management service cannot process the request. The maximum number of concurrent \
                                 shells for this tenant has been exceeded. Close existing shells or raise the quota for \
                                 this tenant.";

#[test]
fn fourth_shell_of_a_user_is_refused_and_closing_frees_quota() {
    let sim = sim();
    let a = open(&sim, ALICE, CONTOSO).unwrap();
    let _b = open(&sim, ALICE, FABRIKAM).unwrap();
    let _c = open(&sim, ALICE, LITWARE).unwrap();
    assert_eq!(a.len(), 36);
    assert_eq!(a, a.to_ascii_uppercase());
    let err = open(&sim, ALICE, CONTOSO).unwrap_err();
    assert_eq!(err.http_status, 500);
    assert_eq!(err.wsman_code, Some(2_150_859_173));
    assert_eq!(err.message, USER_QUOTA_TEXT);
    assert!(err.record.is_none());
    assert_eq!(err.class(), FaultClass::UserShellQuotaExceeded);
    assert_eq!(RemoteError::from(err).class, FaultClass::UserShellQuotaExceeded);
    // Another user is not affected.
    open(&sim, BOB, CONTOSO).unwrap();
    sim.close_shell(&a).unwrap();
    open(&sim, ALICE, CONTOSO).unwrap();
    let st = sim.stats();
    assert_eq!(st.open_by_user[ALICE], 3);
    assert_eq!(st.shells_opened, 5);
    assert_eq!(st.shells_closed, 1);
    // Closing twice: the shell is gone.
    assert_eq!(sim.close_shell(&a).unwrap_err().class(), FaultClass::SessionExpired);
}

#[test]
fn twenty_first_shell_of_a_tenant_is_refused() {
    let sim = sim();
    let mut opened = Vec::new();
    let mut refused = Vec::new();
    for i in 1..=7 {
        for _ in 0..3 {
            match open(&sim, &format!("u{i}@partner.onmicrosoft.com"), CONTOSO) {
                Ok(id) => opened.push(id),
                Err(e) => refused.push(e),
            }
        }
    }
    assert_eq!(opened.len(), 20);
    assert_eq!(refused.len(), 1);
    let err = &refused[0];
    assert_eq!(err.http_status, 500);
    assert_eq!(err.wsman_code, None);
    assert_eq!(err.message, TENANT_QUOTA_TEXT);
    assert_eq!(err.class(), FaultClass::TenantShellQuotaExceeded);
    // Other tenants are unaffected; closing one frees the tenant's quota.
    open(&sim, "u7@partner.onmicrosoft.com", FABRIKAM).unwrap(); // u7 holds 2 live shells: room for one
    let st = sim.stats();
    assert_eq!(st.open_by_tenant[CONTOSO], 20);
    assert_eq!(st.max_by_tenant[CONTOSO], 20);
    sim.close_shell(&opened[0]).unwrap();
    open(&sim, ALICE, CONTOSO).unwrap();
}

#[test]
fn expired_shells_are_not_found_and_free_quota() {
    let sim = sim();
    sim.set_shell_lifetime(Duration::from_secs(60));
    let shells: Vec<_> = (0..3).map(|_| open(&sim, ALICE, CONTOSO).unwrap()).collect();
    assert_eq!(open(&sim, ALICE, CONTOSO).unwrap_err().class(), FaultClass::UserShellQuotaExceeded);
    sim.advance_time(Duration::from_secs(61));
    let id = Uuid::new_v4();
    let err = sim.run(&shells[0], id, "Get-Mailbox", &[]).unwrap_err();
    assert_eq!(err.http_status, 500);
    assert_eq!(err.wsman_code, Some(2_150_858_843));
    assert_eq!(
        err.message,
        format!(
            "The request for the Windows Remote Shell with ShellId {} failed because the shell was not found on the \
             server. Possible causes are: the specified ShellId is incorrect or the shell no longer exists on the \
             server. Provide the correct ShellId or create a new shell and try again.",
            shells[0]
        )
    );
    assert_eq!(err.class(), FaultClass::SessionExpired);
    let st = sim.stats();
    assert_eq!(st.shells_expired, 3);
    assert!(!st.executions.contains_key(&id));
    assert!(st.open_by_user.is_empty());
    assert!(sim.list_shells(ALICE).is_empty());
    for _ in 0..3 {
        open(&sim, ALICE, CONTOSO).unwrap();
    }
    assert_eq!(sim.close_shell(&shells[1]).unwrap_err().wsman_code, Some(WSMAN_SHELL_NOT_FOUND));
}

#[test]
fn lifetime_runs_on_sped_up_time() {
    // 60 s of simulated lifetime at 60 000× is one real millisecond.
    let sim = sim_with(SimulatorConfig { time_speedup: 60_000.0, shell_lifetime_seconds: 60.0, ..base_cfg() });
    let shell = open(&sim, ALICE, CONTOSO).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let err = run(&sim, &shell, "Get-Mailbox", &[]).unwrap_err();
    assert_eq!(err.class(), FaultClass::SessionExpired);
    assert_eq!(sim.stats().shells_expired, 1);
}

#[test]
fn max_commands_per_shell_rejects_without_executing() {
    let sim = sim_with(SimulatorConfig { max_commands_per_shell: 2, ..base_cfg() });
    let shell = open(&sim, ALICE, CONTOSO).unwrap();
    run(&sim, &shell, "Get-AcceptedDomain", &[]).unwrap();
    run(&sim, &shell, "Get-AcceptedDomain", &[]).unwrap();
    let id = Uuid::new_v4();
    let err =
        sim.run(&shell, id, "Set-Mailbox", &params(&[("Identity", s("user001")), ("Office", s("X"))])).unwrap_err();
    assert_eq!(err.http_status, 500);
    assert_eq!(err.wsman_code, None);
    assert_eq!(
        err.message,
        "The WS-Management service cannot process the request because the maximum number of commands for this shell \
         has been exceeded. Create a new shell and try again."
    );
    assert_eq!(err.class(), FaultClass::SessionExpired);
    let st = sim.stats();
    assert_eq!(st.commands_run, 2);
    assert!(!st.executions.contains_key(&id));
    // The command did not run: the mailbox is unchanged.
    let other = open(&sim, ALICE, CONTOSO).unwrap();
    let out = run(&sim, &other, "Get-Mailbox", &[("Identity", s("user001"))]).unwrap();
    assert_ne!(obj(&out.objects[0]).get("Office"), Some(&s("X")));
    assert_eq!(sim.list_shells(ALICE).iter().find(|i| i.shell_id == shell).unwrap().commands, 2);
}

#[test]
fn every_open_fault_has_its_text_and_class() {
    let sim = sim_with(SimulatorConfig {
        mfa_required: vec!["u1@partner.onmicrosoft.com".into()],
        denied: vec![format!("u2@partner.onmicrosoft.com:{FABRIKAM}")],
        ..base_cfg()
    });
    let mut cases: Vec<(SimFault, u16, String, FaultClass)> = Vec::new();
    let logon = |upn: &str| {
        format!(
            "Logon failed for the user '{upn}'. Please create a new PSCredential object, making sure that you have used \
             the correct user name and password."
        )
    };
    let denied = |upn: &str| {
        format!(
            "The user '{upn}' does not have permission to manage this tenant. Permissions can be granted by assigning \
             the user to the appropriate RBAC role."
        )
    };
    cases.push((sim.open_shell(ALICE, "wrong", CONTOSO, "x").unwrap_err(), 401, logon(ALICE), FaultClass::LogonFailed));
    cases.push((
        sim.open_shell("nobody@x.com", "pa", CONTOSO, "x").unwrap_err(),
        401,
        logon("nobody@x.com"),
        FaultClass::LogonFailed,
    ));
    cases.push((
        open(&sim, "u1@partner.onmicrosoft.com", CONTOSO).unwrap_err(),
        401,
        "AADSTS50076: Due to a configuration change made by your administrator, or because you moved to a new \
         location, you must use multi-factor authentication to access '00000002-0000-0ff1-ce00-000000000000'."
            .into(),
        FaultClass::MfaRequired,
    ));
    cases.push((open(&sim, BOB, LITWARE).unwrap_err(), 500, denied(BOB), FaultClass::TenantPermissionDenied));
    cases.push((
        open(&sim, ALICE, "nosuch.onmicrosoft.com").unwrap_err(),
        500,
        denied(ALICE),
        FaultClass::TenantPermissionDenied,
    ));
    cases.push((
        open(&sim, "u2@partner.onmicrosoft.com", FABRIKAM).unwrap_err(),
        500,
        denied("u2@partner.onmicrosoft.com"),
        FaultClass::TenantPermissionDenied,
    ));
    cases.push((
        open(&sim, ALICE, TAILSPIN).unwrap_err(),
        500,
        "The ability to connect to this tenant by using a remote PowerShell session has been disabled. Please contact \
         Lync Help to check Tenant Powershell Policy of this tenant."
            .into(),
        FaultClass::TenantRemotePowerShellDisabled,
    ));
    sim.set_identity_service_down(true);
    cases.push((
        open(&sim, ALICE, CONTOSO).unwrap_err(),
        500,
        "Failed to connect live id servers. Make sure proxy is enabled or machine has network connection to live id \
         servers."
            .into(),
        FaultClass::IdentityServiceUnreachable,
    ));
    // The identity service is checked first, even for bad passwords.
    assert_eq!(
        sim.open_shell(ALICE, "wrong", CONTOSO, "x").unwrap_err().class(),
        FaultClass::IdentityServiceUnreachable
    );
    sim.set_identity_service_down(false);
    for (fault, status, text, class) in cases {
        assert_eq!(fault.http_status, status, "{text}");
        assert_eq!(fault.message, text);
        assert_eq!(fault.class(), class, "{text}");
        let remote = RemoteError::from(fault);
        assert_eq!(remote.class, class);
        assert_eq!(remote.message, text);
        assert!(remote.record.is_none());
    }
    // The run-time switches turn each condition off and on.
    sim.set_remote_powershell_enabled(TAILSPIN, true);
    open(&sim, ALICE, TAILSPIN).unwrap();
    sim.set_remote_powershell_enabled(CONTOSO, false);
    assert_eq!(open(&sim, ALICE, CONTOSO).unwrap_err().class(), FaultClass::TenantRemotePowerShellDisabled);
    sim.set_denied("U2@partner.onmicrosoft.com", "FABRIKAM.onmicrosoft.com", false);
    open(&sim, "u2@partner.onmicrosoft.com", FABRIKAM).unwrap();
    sim.set_denied(ALICE, FABRIKAM, true);
    assert_eq!(open(&sim, ALICE, FABRIKAM).unwrap_err().class(), FaultClass::TenantPermissionDenied);
    sim.set_password(ALICE, "new");
    assert_eq!(open(&sim, ALICE, LITWARE).unwrap_err().class(), FaultClass::LogonFailed);
    assert!(sim.open_shell(ALICE, "new", LITWARE, "Microsoft.Exchange").is_ok());
}

#[test]
fn every_pipeline_and_shell_fault_classifies() {
    let sim = sim();
    let shell = open(&sim, ALICE, CONTOSO).unwrap();
    let cases: Vec<FaultCase> = vec![
        ("Get-Mailboxx", vec![], FaultClass::UnknownCmdlet),
        ("Get-Mailbox", vec![("Identityy", s("x"))], FaultClass::InvalidParameter),
        ("Get-Mailbox", vec![("ResultSize", s("abc"))], FaultClass::InvalidParameter),
        ("Get-Mailbox", vec![("ResultSize", PsValue::Int32(0))], FaultClass::InvalidParameter),
        ("Get-Mailbox", vec![("Filter", s("Name -gt 'a'"))], FaultClass::InvalidParameter),
        ("Get-Mailbox", vec![("ErrorAction", s("Sometimes"))], FaultClass::InvalidParameter),
        ("Set-Mailbox", vec![("Office", s("x"))], FaultClass::InvalidParameter),
        (
            "Set-Mailbox",
            vec![("Identity", s("user001")), ("HiddenFromAddressListsEnabled", s("maybe"))],
            FaultClass::InvalidParameter,
        ),
        (
            "Set-Mailbox",
            vec![("Identity", s("user001")), ("ProhibitSendQuota", s("lots"))],
            FaultClass::InvalidParameter,
        ),
        (
            "Set-Mailbox",
            vec![("Identity", s("user001")), ("ForwardingSmtpAddress", s("not an address"))],
            FaultClass::InvalidParameter,
        ),
        ("Set-Mailbox", vec![("Identity", s("user001")), ("CustomAttribute", s("x"))], FaultClass::InvalidParameter),
        ("Set-Mailbox", vec![("Identity", PsValue::Null)], FaultClass::InvalidParameter),
        ("Set-Mailbox", vec![("Identity", PsValue::List(vec![s("a")]))], FaultClass::InvalidParameter),
        ("New-MailUser", vec![("Name", s("x"))], FaultClass::InvalidParameter),
        ("Get-Mailbox", vec![("Identity", s("nobody")), ("ErrorAction", s("Stop"))], FaultClass::CmdletError),
    ];
    for (cmdlet, p, class) in cases {
        let err = run(&sim, &shell, cmdlet, &p).unwrap_err();
        assert_eq!(err.http_status, 200, "{cmdlet} {p:?}");
        let record = err.record.clone().expect("pipeline faults carry their record");
        assert_eq!(err.message, record.message);
        assert_eq!(err.class(), class, "{cmdlet} {p:?}: {record:?}");
        let remote = RemoteError::from(err);
        assert_eq!(remote.class, class);
        assert_eq!(remote.record, Some(record));
    }
    let missing = run(&sim, &shell, "New-MailUser", &[]).unwrap_err().record.unwrap();
    assert_eq!(
        missing.message,
        "Cannot process command because of one or more missing mandatory parameters: Name ExternalEmailAddress."
    );
    assert_eq!(missing.fully_qualified_error_id, "MissingMandatoryParameter,New-MailUser");
    assert_eq!(missing.category, "InvalidArgument");
    let bad = run(&sim, &shell, "get-mailbox", &[("resultsize", s("abc"))]).unwrap_err().record.unwrap();
    assert_eq!(bad.fully_qualified_error_id, "ParameterArgumentValidationError,Get-Mailbox");
    assert_eq!(bad.category, "InvalidData");
    assert!(bad.message.contains("'ResultSize'") && bad.message.contains("\"abc\""), "{}", bad.message);
    let filter = run(&sim, &shell, "Get-Mailbox", &[("Filter", s("Name -gt 'a'"))]).unwrap_err().record.unwrap();
    assert!(filter.message.contains("Invalid filter syntax"), "{}", filter.message);
    assert_eq!(sim.stats().commands_run, 1, "only the ErrorAction Stop command executed");
}

#[test]
fn get_mailbox_result_size_returns_that_many_with_properties() {
    let sim = sim();
    let shell = open(&sim, ALICE, CONTOSO).unwrap();
    let out = run(&sim, &shell, "Get-Mailbox", &[("ResultSize", PsValue::Int32(5))]).unwrap();
    assert_eq!(out.objects.len(), 5);
    assert!(out.errors.is_empty());
    assert_eq!(
        out.warnings,
        vec!["By default, only the first 5 items are returned. Use the ResultSize parameter to specify the number of \
              items returned. To return all items, specify \"-ResultSize Unlimited\". Be aware that, depending on the \
              actual number of items, returning all items can take a long time and consume a large amount of memory. \
              Also, we don't recommend storing the results in a variable. Instead, pipe the results to another task or \
              script to perform batch changes."
            .to_string()]
    );
    let first = obj(&out.objects[0]);
    assert_eq!(first.type_names[0], "Deserialized.Microsoft.Exchange.Data.Directory.Management.Mailbox");
    assert!(first
        .type_names
        .iter()
        .any(|t| t == "Deserialized.Microsoft.Exchange.Data.Directory.ADPresentationObject"));
    assert_eq!(first.type_names.last().unwrap(), "Deserialized.System.Object");
    assert_eq!(first.to_string.as_deref(), Some("user001"));
    assert_eq!(first.get("Name"), Some(&s("user001")));
    assert_eq!(first.get("Alias"), Some(&s("user001")));
    assert_eq!(first.get("PrimarySmtpAddress"), Some(&s("user001@contoso.onmicrosoft.com")));
    assert_eq!(first.get("DisplayName"), Some(&s("Adele Vance")));
    assert_eq!(first.get("RecipientTypeDetails"), Some(&s("UserMailbox")));
    assert_eq!(first.get("ProhibitSendQuota"), Some(&s("49.5 GB (53,150,220,288 bytes)")));
    assert_eq!(first.get("IssueWarningQuota"), Some(&s("49 GB (52,613,349,376 bytes)")));
    assert_eq!(first.get("HiddenFromAddressListsEnabled"), Some(&PsValue::Bool(false)));
    assert_eq!(first.get("LitigationHoldEnabled"), Some(&PsValue::Bool(false)));
    assert_eq!(first.get("ForwardingSmtpAddress"), Some(&PsValue::Null));
    for i in 1..=5 {
        assert_eq!(first.get(&format!("CustomAttribute{i}")), Some(&s("")));
    }
    assert!(matches!(first.get("Office"), Some(PsValue::String(o)) if !o.is_empty()));
    assert!(matches!(first.get("Department"), Some(PsValue::String(d)) if !d.is_empty()));
    let Some(PsValue::Guid(guid)) = first.get("Guid") else { panic!("no Guid") };
    let names: Vec<_> = out.objects.iter().map(|o| obj(o).get("Name").unwrap().display()).collect();
    assert_eq!(names, ["user001", "user002", "user003", "user004", "user005"]);

    // Deterministic across simulators; distinct across tenants.
    let again = sim_with(base_cfg());
    let s2 = open(&again, ALICE, CONTOSO).unwrap();
    let o2 = run(&again, &s2, "Get-Mailbox", &[("Identity", s("user001"))]).unwrap();
    assert_eq!(obj(&o2.objects[0]).get("Guid"), Some(&PsValue::Guid(*guid)));
    let f = open(&sim, ALICE, FABRIKAM).unwrap();
    let of = run(&sim, &f, "Get-Mailbox", &[("Identity", s("user001"))]).unwrap();
    assert_ne!(obj(&of.objects[0]).get("Guid"), Some(&PsValue::Guid(*guid)));
    assert_eq!(obj(&of.objects[0]).get("PrimarySmtpAddress"), Some(&s("user001@fabrikam.onmicrosoft.com")));

    // Identity by each key, case-insensitively.
    for id in ["USER002", "user002@CONTOSO.onmicrosoft.com", "alex vance", &first_guid_of(&sim, &shell, "user002")] {
        let o = run(&sim, &shell, "Get-Mailbox", &[("Identity", s(id))]).unwrap();
        assert_eq!(o.objects.len(), 1, "{id}");
        assert_eq!(obj(&o.objects[0]).get("Name"), Some(&s("user002")));
    }
    // Defaults: all 30 (under 1000), no warning; Unlimited; strings as numbers.
    let all = run(&sim, &shell, "Get-Mailbox", &[]).unwrap();
    assert_eq!((all.objects.len(), all.warnings.len()), (30, 0));
    assert_eq!(run(&sim, &shell, "Get-Mailbox", &[("ResultSize", s("Unlimited"))]).unwrap().objects.len(), 30);
    assert_eq!(run(&sim, &shell, "Get-Mailbox", &[("ResultSize", s("7"))]).unwrap().objects.len(), 7);
    assert_eq!(run(&sim, &shell, "Get-Mailbox", &[("ResultSize", PsValue::Int32(30))]).unwrap().warnings.len(), 0);
}

fn first_guid_of(sim: &Simulator, shell: &str, name: &str) -> String {
    let o = run(sim, shell, "Get-Mailbox", &[("Identity", s(name))]).unwrap();
    obj(&o.objects[0]).get("Guid").unwrap().display()
}

#[test]
fn default_result_size_is_1000_with_warning() {
    let sim = sim_with(SimulatorConfig { mailboxes_per_tenant: 1003, ..base_cfg() });
    let shell = open(&sim, ALICE, CONTOSO).unwrap();
    let out = run(&sim, &shell, "Get-Mailbox", &[]).unwrap();
    assert_eq!(out.objects.len(), 1000);
    assert!(out.warnings[0].starts_with("By default, only the first 1000 items are returned."));
    let out = run(&sim, &shell, "Get-Mailbox", &[("ResultSize", s("unlimited"))]).unwrap();
    assert_eq!((out.objects.len(), out.warnings.len()), (1003, 0));
    assert_eq!(obj(&out.objects[1002]).get("Name"), Some(&s("user1003")));
}

#[test]
fn set_mailbox_is_visible_to_get_mailbox() {
    let sim = sim();
    let shell = open(&sim, ALICE, CONTOSO).unwrap();
    let out = run(
        &sim,
        &shell,
        "set-mailbox",
        &[
            ("identity", s("user003@contoso.onmicrosoft.com")),
            ("DisplayName", s("Allan Renamed")),
            ("CustomAttribute1", s("cost-center-42")),
            ("CustomAttribute5", s("x")),
            ("HiddenFromAddressListsEnabled", s("$true")),
            ("LitigationHoldEnabled", PsValue::Bool(true)),
            ("ForwardingSmtpAddress", s("boss@example.com")),
            ("ProhibitSendQuota", s("10GB")),
            ("IssueWarningQuota", PsValue::Int64(9 << 30)),
            ("Office", s("42/1")),
            ("Dep", s("Research")), // unique prefix, as PowerShell allows
            ("Confirm", PsValue::Bool(false)),
        ],
    )
    .unwrap();
    assert!(out.objects.is_empty() && out.errors.is_empty() && out.warnings.is_empty(), "{out:?}");
    let got = run(&sim, &shell, "Get-Mailbox", &[("Identity", s("user003"))]).unwrap();
    let m = obj(&got.objects[0]);
    assert_eq!(m.get("DisplayName"), Some(&s("Allan Renamed")));
    assert_eq!(m.get("CustomAttribute1"), Some(&s("cost-center-42")));
    assert_eq!(m.get("CustomAttribute5"), Some(&s("x")));
    assert_eq!(m.get("HiddenFromAddressListsEnabled"), Some(&PsValue::Bool(true)));
    assert_eq!(m.get("LitigationHoldEnabled"), Some(&PsValue::Bool(true)));
    assert_eq!(m.get("ForwardingSmtpAddress"), Some(&s("smtp:boss@example.com")));
    assert_eq!(m.get("ProhibitSendQuota"), Some(&s("10 GB (10,737,418,240 bytes)")));
    assert_eq!(m.get("IssueWarningQuota"), Some(&s("9 GB (9,663,676,416 bytes)")));
    assert_eq!(m.get("Office"), Some(&s("42/1")));
    assert_eq!(m.get("Department"), Some(&s("Research")));
    // The new display name identifies the mailbox; the same object is the user.
    let by_name = run(&sim, &shell, "Get-User", &[("Identity", s("Allan Renamed"))]).unwrap();
    assert_eq!(obj(&by_name.objects[0]).get("Department"), Some(&s("Research")));
    // Clearing and no-op sets.
    run(&sim, &shell, "Set-Mailbox", &[("Identity", s("user003")), ("ForwardingSmtpAddress", PsValue::Null)]).unwrap();
    let m = run(&sim, &shell, "Get-Mailbox", &[("Identity", s("user003"))]).unwrap();
    assert_eq!(obj(&m.objects[0]).get("ForwardingSmtpAddress"), Some(&PsValue::Null));
    let noop = run(&sim, &shell, "Set-Mailbox", &[("Identity", s("user003")), ("Office", s("42/1"))]).unwrap();
    assert_eq!(
        noop.warnings,
        vec!["The command completed successfully but no settings of 'user003' have been modified."]
    );
    // WhatIf changes nothing.
    run(
        &sim,
        &shell,
        "Set-Mailbox",
        &[("Identity", s("user003")), ("Office", s("elsewhere")), ("WhatIf", PsValue::Null)],
    )
    .unwrap();
    let m = run(&sim, &shell, "Get-Mailbox", &[("Identity", s("user003"))]).unwrap();
    assert_eq!(obj(&m.objects[0]).get("Office"), Some(&s("42/1")));
    // Changes are per tenant and visible from another shell.
    let other = open(&sim, BOB, CONTOSO).unwrap();
    let m = run(&sim, &other, "Get-Mailbox", &[("Identity", s("user003"))]).unwrap();
    assert_eq!(obj(&m.objects[0]).get("CustomAttribute1"), Some(&s("cost-center-42")));
    let f = open(&sim, BOB, FABRIKAM).unwrap();
    let m = run(&sim, &f, "Get-Mailbox", &[("Identity", s("user003"))]).unwrap();
    assert_eq!(obj(&m.objects[0]).get("CustomAttribute1"), Some(&s("")));
}

#[test]
fn unknown_cmdlet_and_parameter_are_not_executed() {
    let sim = sim();
    let shell = open(&sim, ALICE, CONTOSO).unwrap();
    let id = Uuid::new_v4();
    let err = sim.run(&shell, id, "Get-Mailboxx", &[]).unwrap_err();
    let r = err.record.clone().unwrap();
    assert_eq!(
        r.message,
        "The term 'Get-Mailboxx' is not recognized as the name of a cmdlet, function, script file, or operable \
         program. Check the spelling of the name, or if a path was included, verify that the path is correct and try \
         again."
    );
    assert_eq!(r.category, "ObjectNotFound");
    assert_eq!(r.fully_qualified_error_id, "CommandNotFoundException");
    assert_eq!(r.target.as_deref(), Some("Get-Mailboxx"));
    assert_eq!((err.http_status, err.wsman_code), (200, None));
    assert_eq!(err.class(), FaultClass::UnknownCmdlet);

    let id2 = Uuid::new_v4();
    let err =
        sim.run(&shell, id2, "Get-Mailbox", &params(&[("Identity", s("user001")), ("Bogus", s("1"))])).unwrap_err();
    let r = err.record.clone().unwrap();
    assert_eq!(r.message, "A parameter cannot be found that matches parameter name 'Bogus'.");
    assert_eq!(r.category, "InvalidArgument");
    assert_eq!(r.fully_qualified_error_id, "NamedParameterNotFound,Get-Mailbox");
    assert_eq!(err.class(), FaultClass::InvalidParameter);

    let st = sim.stats();
    assert!(!st.executions.contains_key(&id) && !st.executions.contains_key(&id2));
    assert_eq!(st.commands_run, 0);
}

#[test]
fn object_not_found_is_non_terminating_and_executed() {
    let sim = sim();
    let shell = open(&sim, ALICE, CONTOSO).unwrap();
    let id = Uuid::new_v4();
    let out = sim.run(&shell, id, "Get-Mailbox", &params(&[("Identity", s("nobody"))])).unwrap();
    assert!(out.objects.is_empty());
    assert_eq!(out.errors.len(), 1);
    let r = &out.errors[0];
    assert_eq!(
        r.message,
        "The operation couldn't be performed because object 'nobody' couldn't be found on \
         'SIMPR01A001DC01.NAMPR01A001.prod.outlook.com'."
    );
    assert_eq!(r.category, "NotSpecified");
    assert!(r.fully_qualified_error_id.starts_with("[Server=SIMEXCH01,RequestId="), "{}", r.fully_qualified_error_id);
    assert!(r.fully_qualified_error_id.ends_with(
        "[FailureCategory=Cmdlet-ManagementObjectNotFoundException] 8C7F9E1B,Microsoft.Exchange.Management.RecipientTasks.GetMailbox"
    ));
    assert_eq!(r.target.as_deref(), Some("nobody"));
    assert_eq!(classify_error_record(r), FaultClass::CmdletError);
    let st = sim.stats();
    assert_eq!(st.executions[&id], 1);
    assert_eq!(st.commands_run, 1);
    // Set-Mailbox on a missing object: same, with its own class name.
    let out = run(&sim, &shell, "Set-Mailbox", &[("Identity", s("nobody")), ("Office", s("x"))]).unwrap();
    assert!(out.errors[0].fully_qualified_error_id.ends_with("RecipientTasks.SetMailbox"));
    // ErrorAction SilentlyContinue drops it.
    let out =
        run(&sim, &shell, "Get-Mailbox", &[("Identity", s("nobody")), ("ErrorAction", s("silentlycontinue"))]).unwrap();
    assert!(out.errors.is_empty());
}

#[test]
fn executions_are_counted_per_pipeline_id() {
    let sim = sim();
    let shell = open(&sim, ALICE, CONTOSO).unwrap();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let set = params(&[("Identity", s("user001")), ("CustomAttribute2", s("v"))]);
    sim.run(&shell, a, "Set-Mailbox", &set).unwrap();
    sim.run(&shell, a, "Set-Mailbox", &set).unwrap(); // a retry of the same invocation
    sim.run(&shell, b, "Get-Mailbox", &[]).unwrap();
    // A retry on a dead shell does not execute.
    let dead = open(&sim, ALICE, FABRIKAM).unwrap();
    sim.close_shell(&dead).unwrap();
    sim.run(&dead, a, "Set-Mailbox", &set).unwrap_err();
    let st = sim.stats();
    assert_eq!(st.executions[&a], 2);
    assert_eq!(st.executions[&b], 1);
    assert_eq!(st.executions.len(), 2);
    assert_eq!(st.commands_run, 3);
}

#[test]
fn high_water_marks_track_peaks_and_reset() {
    let sim = sim();
    let a1 = open(&sim, ALICE, CONTOSO).unwrap();
    let a2 = open(&sim, ALICE, CONTOSO).unwrap();
    let _b1 = open(&sim, BOB, CONTOSO).unwrap();
    let a3 = open(&sim, ALICE, FABRIKAM).unwrap();
    for id in [&a1, &a2, &a3] {
        sim.close_shell(id).unwrap();
    }
    let st = sim.stats();
    assert_eq!(st.max_by_user[ALICE], 3);
    assert_eq!(st.max_by_user[BOB], 1);
    assert_eq!(st.max_by_tenant[CONTOSO], 3);
    assert_eq!(st.max_by_tenant[FABRIKAM], 1);
    assert_eq!(st.open_by_user.get(ALICE), None);
    assert_eq!(st.open_by_tenant[CONTOSO], 1);
    sim.reset_high_water_marks();
    let st = sim.stats();
    assert_eq!(st.max_by_user.get(ALICE), None);
    assert_eq!(st.max_by_tenant[CONTOSO], 1);
    open(&sim, ALICE, LITWARE).unwrap();
    let st = sim.stats();
    assert_eq!(st.max_by_user[ALICE], 1);
    assert_eq!(st.max_by_tenant[LITWARE], 1);
    let json = serde_json::to_value(&st).unwrap();
    assert_eq!(json["shells_opened"], 5);
}

#[test]
fn mail_users_users_and_accepted_domains() {
    let sim = sim();
    let shell = open(&sim, ALICE, CONTOSO).unwrap();
    let out = run(
        &sim,
        &shell,
        "New-MailUser",
        &[
            ("Name", s("Ext Partner")),
            ("ExternalEmailAddress", s("partner@example.org")),
            ("FirstName", s("Ext")),
            ("LastName", s("Partner")),
        ],
    )
    .unwrap();
    let mu = obj(&out.objects[0]);
    assert_eq!(mu.type_names[0], "Deserialized.Microsoft.Exchange.Data.Directory.Management.MailUser");
    assert_eq!(mu.get("Alias"), Some(&s("ExtPartner")));
    assert_eq!(mu.get("ExternalEmailAddress"), Some(&s("SMTP:partner@example.org")));
    assert_eq!(mu.get("PrimarySmtpAddress"), Some(&s("ExtPartner@contoso.onmicrosoft.com")));
    // Duplicate name: the cmdlet reports an error.
    let dup =
        run(&sim, &shell, "New-MailUser", &[("Name", s("ext partner")), ("ExternalEmailAddress", s("o@example.org"))])
            .unwrap();
    assert!(dup.objects.is_empty());
    assert_eq!(dup.errors[0].message, "The name \"ext partner\" is already being used. Please try another name.");
    assert_eq!(classify_error_record(&dup.errors[0]), FaultClass::CmdletError);
    run(
        &sim,
        &shell,
        "Set-MailUser",
        &[
            ("Identity", s("Ext Partner")),
            ("HiddenFromAddressListsEnabled", PsValue::Int32(1)),
            ("CustomAttribute3", s("c3")),
            ("ExternalEmailAddress", s("SMTP:new@example.org")),
        ],
    )
    .unwrap();
    let got = run(&sim, &shell, "Get-MailUser", &[]).unwrap();
    assert_eq!(got.objects.len(), 1);
    let mu = obj(&got.objects[0]);
    assert_eq!(mu.get("HiddenFromAddressListsEnabled"), Some(&PsValue::Bool(true)));
    assert_eq!(mu.get("CustomAttribute3"), Some(&s("c3")));
    assert_eq!(mu.get("ExternalEmailAddress"), Some(&s("SMTP:new@example.org")));
    // Mail users are not mailboxes; both are users.
    let err = run(&sim, &shell, "Get-Mailbox", &[("Identity", s("Ext Partner"))]).unwrap();
    assert_eq!(err.errors.len(), 1);
    let users = run(&sim, &shell, "Get-User", &[("ResultSize", s("Unlimited"))]).unwrap();
    assert_eq!(users.objects.len(), 31);
    let last = obj(users.objects.last().unwrap());
    assert_eq!(last.type_names[0], "Deserialized.Microsoft.Exchange.Data.Directory.Management.User");
    assert_eq!(last.get("RecipientTypeDetails"), Some(&s("MailUser")));
    assert_eq!(last.get("FirstName"), Some(&s("Ext")));
    let u = run(&sim, &shell, "Get-User", &[("Identity", s("user001")), ("ResultSize", PsValue::Int32(2))]).unwrap();
    assert_eq!(obj(&u.objects[0]).get("RecipientTypeDetails"), Some(&s("UserMailbox")));
    let domains = run(&sim, &shell, "Get-AcceptedDomain", &[]).unwrap();
    assert_eq!(domains.objects.len(), 1);
    let d = obj(&domains.objects[0]);
    assert_eq!(d.get("DomainName"), Some(&s(CONTOSO)));
    assert_eq!(d.get("Default"), Some(&PsValue::Bool(true)));
    assert_eq!(d.get("DomainType"), Some(&s("Authoritative")));
}

#[test]
fn get_mailbox_filter_subset() {
    let sim = sim();
    let shell = open(&sim, ALICE, CONTOSO).unwrap();
    let sales = run(&sim, &shell, "Get-Mailbox", &[("Filter", s("Department -eq 'Sales'"))]).unwrap();
    assert!(!sales.objects.is_empty());
    assert!(sales.objects.iter().all(|o| obj(o).get("Department") == Some(&s("Sales"))));
    let like = run(&sim, &shell, "Get-Mailbox", &[("Filter", s("{Name -like 'user00*' -and Department -ne 'Sales'}"))])
        .unwrap();
    assert!(like.objects.iter().all(|o| {
        let o = obj(o);
        o.get("Name").unwrap().display().starts_with("user00") && o.get("Department") != Some(&s("Sales"))
    }));
    assert!(!like.objects.is_empty());
    let bad = run(&sim, &shell, "Get-Mailbox", &[("Filter", s("Bogus -eq 1"))]).unwrap_err().record.unwrap();
    assert!(bad.message.contains("'Bogus' is not a recognized filterable property"), "{}", bad.message);
}

#[test]
fn from_config_mirrors_the_broker_directory() {
    let cfg = Config::demo();
    let sim = Simulator::from_config(&cfg).unwrap();
    sim.open_shell(ALICE, "demo-password-alice", "northwind.onmicrosoft.com", "Microsoft.Exchange").unwrap();
    let err = sim.open_shell(BOB, "demo-password-bob", "northwind.onmicrosoft.com", "Microsoft.Exchange").unwrap_err();
    assert_eq!(err.class(), FaultClass::TenantPermissionDenied);
    let err = sim.open_shell(ALICE, "demo-password-alice", TAILSPIN, "Microsoft.Exchange").unwrap_err();
    assert_eq!(err.class(), FaultClass::TenantRemotePowerShellDisabled);

    let mut bad = Config::demo();
    bad.admins[0].credential = "env:PSBROKER_SIM_TEST_SURELY_UNSET_VAR".into();
    let err = Simulator::from_config(&bad).unwrap_err();
    assert!(err.contains("PSBROKER_SIM_TEST_SURELY_UNSET_VAR"), "{err}");

    let mut own = Config::demo();
    own.simulator.accounts = vec![crate::config::SimAccountConfig {
        upn: "x@y.com".into(),
        password: "p".into(),
        tenants: vec!["only.com".into()],
    }];
    own.simulator.tenants = vec!["only.com".into()];
    let sim = Simulator::from_config(&own).unwrap();
    sim.open_shell("x@y.com", "p", "only.com", "Microsoft.Exchange").unwrap();
    assert_eq!(
        sim.open_shell(ALICE, "demo-password-alice", CONTOSO, "Microsoft.Exchange").unwrap_err().class(),
        FaultClass::LogonFailed
    );
}

fn target(upn: &str, password: &str, tenant: &str) -> SessionTarget {
    SessionTarget {
        admin_upn: upn.into(),
        credential: SecretString::from(password.to_string()),
        tenant: tenant.into(),
        connection_uri: format!("https://ps.outlook.com/powershell-liveid?DelegatedOrg={tenant}"),
        configuration_name: "Microsoft.Exchange".into(),
        tokens: None,
    }
}

#[tokio::test]
async fn connector_end_to_end_with_latency() {
    let sim = sim();
    sim.set_latency(Duration::from_millis(60), Duration::from_millis(20), Duration::from_millis(10));
    let connector = sim.connector();

    let t = Instant::now();
    let session = connector.open(&target(ALICE, "pa", CONTOSO)).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(60), "{:?}", t.elapsed());
    assert_eq!(sim.list_shells(ALICE)[0].shell_id, session.remote_id());

    let cmd = Command {
        invocation_id: Uuid::new_v4(),
        cmdlet: "Get-Mailbox".into(),
        parameters: vec![("ResultSize".into(), PsValue::Int32(3))],
    };
    let t = Instant::now();
    let out = session.invoke(&cmd).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(20));
    assert_eq!(out.objects.len(), 3);
    assert_eq!(sim.stats().executions[&cmd.invocation_id], 1);

    let bad = Command { invocation_id: Uuid::new_v4(), cmdlet: "Get-Nothing".into(), parameters: vec![] };
    let err = session.invoke(&bad).await.unwrap_err();
    assert_eq!(err.class, FaultClass::UnknownCmdlet);
    assert!(err.message.starts_with("The term 'Get-Nothing' is not recognized"));
    assert_eq!(err.record.unwrap().fully_qualified_error_id, "CommandNotFoundException");

    let err = connector.open(&target(ALICE, "wrong", CONTOSO)).await.err().unwrap();
    assert_eq!(err.class, FaultClass::LogonFailed);
    assert!(err.record.is_none());
    let err = connector.open(&target(BOB, "pb", TAILSPIN)).await.err().unwrap();
    assert_eq!(err.class, FaultClass::TenantPermissionDenied);

    let t = Instant::now();
    session.close().await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(10));
    assert!(sim.list_shells(ALICE).is_empty());
    let err = session.invoke(&cmd).await.unwrap_err();
    assert_eq!(err.class, FaultClass::SessionExpired);
    assert_eq!(sim.stats().executions[&cmd.invocation_id], 1, "the retry on a closed shell did not execute");

    // Quota through the connector.
    sim.set_latency(Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connector.open(&target(ALICE, "pa", CONTOSO)).await.unwrap());
    }
    let err = connector.open(&target(ALICE, "pa", FABRIKAM)).await.err().unwrap();
    assert_eq!(err.class, FaultClass::UserShellQuotaExceeded);
    assert!(err.message.contains("concurrent shells for this user"));
}

#[tokio::test]
async fn connector_latency_scales_with_speedup() {
    let sim = sim_with(SimulatorConfig { time_speedup: 10.0, open_latency_ms: 2_000, ..base_cfg() });
    assert_eq!(sim.latency().0, Duration::from_millis(2_000));
    let connector = sim.connector();
    let t = Instant::now();
    let session = connector.open(&target(ALICE, "pa", CONTOSO)).await.unwrap();
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(200) && took < Duration::from_millis(1_500), "{took:?}");
    session.close().await.unwrap();
}

#[test]
fn simulator_is_send_sync_and_clones_share_state() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Simulator>();
    let sim = sim();
    let clone = sim.clone();
    open(&clone, ALICE, CONTOSO).unwrap();
    assert_eq!(sim.stats().open_by_user[ALICE], 1);
    assert!(Simulator::cmdlets().contains(&"Get-Mailbox"));
}

#[test]
fn injected_create_refusals_reach_the_in_process_connector_too() {
    let cfg = SimulatorConfig {
        faults: crate::config::FaultConfig { throttle: 1.0, throttle_wait_seconds: 3, ..Default::default() },
        ..base_cfg()
    };
    let sim = Simulator::new(&cfg, accounts(), vec![CONTOSO.into()]);
    let err = sim.open_shell(ALICE, "pa", CONTOSO, "Microsoft.Exchange").unwrap_err();
    assert!(err.message.contains("exceeded your budget to create runspace. Please wait for 3 seconds"));
    let remote = RemoteError::from(err);
    assert_eq!((remote.class, remote.retry_after), (FaultClass::Throttled, Some(Duration::from_secs(3))));
    sim.set_faults(crate::config::FaultConfig { user_quota: 1.0, ..Default::default() });
    let err = sim.open_shell(ALICE, "pa", CONTOSO, "Microsoft.Exchange").unwrap_err();
    assert_eq!((err.class(), err.wsman_code), (FaultClass::UserShellQuotaExceeded, Some(WSMAN_QUOTA_LIMIT)));
    sim.set_faults(crate::config::FaultConfig { tenant_quota: 1.0, ..Default::default() });
    assert_eq!(
        sim.open_shell(ALICE, "pa", CONTOSO, "Microsoft.Exchange").unwrap_err().class(),
        FaultClass::TenantShellQuotaExceeded
    );
    // A wrong password is still a logon failure: faults come after the service's own checks.
    assert_eq!(
        sim.open_shell(ALICE, "nope", CONTOSO, "Microsoft.Exchange").unwrap_err().class(),
        FaultClass::LogonFailed
    );
    sim.set_faults(Default::default());
    sim.open_shell(ALICE, "pa", CONTOSO, "Microsoft.Exchange").unwrap();
    let stats = sim.stats();
    assert_eq!(stats.shells_opened, 1);
    let counts: Vec<_> = stats.injected.iter().map(|(k, n)| (k.as_str(), *n)).collect();
    assert_eq!(counts, [("user_quota", 1), ("tenant_quota", 1), ("throttle", 1)]);
}
