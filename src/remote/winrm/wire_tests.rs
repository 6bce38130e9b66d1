//! End to end: the connector against the simulator on the real wire ([`crate::sim::wire`]), and
//! the same commands through the in-process connector, which must agree.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;
use uuid::Uuid;

use super::*;
use crate::config::SimulatorConfig;
use crate::remote::{Command, CommandOutput, PsValue};
use crate::sim::wire::{self, WireOptions};
use crate::sim::{sim_token, SimAccount, Simulator};

const TENANT: &str = "contoso.onmicrosoft.com";
const ALICE: &str = "alice@partner.onmicrosoft.com";
const NAME: &str = "psbroker:e2e";

fn simulator(user_shell_cap: u32) -> Simulator {
    let cfg = SimulatorConfig {
        mailboxes_per_tenant: 40,
        user_shell_cap,
        open_latency_ms: 0,
        command_latency_ms: 0,
        close_latency_ms: 0,
        ..SimulatorConfig::default()
    };
    let accounts = vec![SimAccount { upn: ALICE.into(), password: "pa".into(), tenants: vec!["*".into()] }];
    Simulator::new(&cfg, accounts, vec![TENANT.into(), "fabrikam.onmicrosoft.com".into()])
}

async fn serve(sim: &Simulator, redirect_first: bool) -> SocketAddr {
    let options =
        WireOptions { redirect_first, idle_receive_wait: Duration::from_millis(200), ..WireOptions::default() };
    let (addr, _task) = wire::spawn_with(sim.clone(), "127.0.0.1:0".parse().unwrap(), options).await.unwrap();
    addr
}

fn target(addr: SocketAddr, secret: &str) -> SessionTarget {
    SessionTarget {
        admin_upn: ALICE.into(),
        credential: SecretString::from(secret.to_string()),
        tenant: TENANT.into(),
        connection_uri: format!("http://{addr}/powershell-liveid?DelegatedOrg={TENANT}"),
        configuration_name: "Microsoft.Exchange".into(),
    }
}

fn options() -> WinrmOptions {
    WinrmOptions {
        allow_plain_http: true,
        request_timeout: Duration::from_secs(20),
        operation_timeout: Duration::from_secs(5),
        shell_name: NAME.into(),
        ..WinrmOptions::default()
    }
}

fn get_mailbox(parameters: Vec<(String, PsValue)>) -> Command {
    Command { invocation_id: Uuid::new_v4(), cmdlet: "Get-Mailbox".into(), parameters }
}

/// The same command through the in-process connector.
async fn in_process(sim: &Simulator, target: &SessionTarget, command: &Command) -> CommandOutput {
    let session = sim.connector().open(target).await.unwrap();
    let out = session.invoke(command).await.unwrap();
    session.close().await.unwrap();
    out
}

fn assert_same(wire: &CommandOutput, direct: &CommandOutput) {
    assert_eq!(wire.objects.len(), direct.objects.len());
    for (w, d) in wire.objects.iter().zip(&direct.objects) {
        assert_eq!(w, d);
    }
    assert_eq!(wire.warnings, direct.warnings);
    // Exchange's error ids carry a fresh RequestId per request; the rest must agree.
    let without_request_id = |r: &crate::remote::ErrorRecord| {
        let id = r.fully_qualified_error_id.split_once("] ").map_or(&*r.fully_qualified_error_id, |(_, rest)| rest);
        (r.message.clone(), r.category.clone(), r.target.clone(), id.to_string())
    };
    let wire_errors: Vec<_> = wire.errors.iter().map(without_request_id).collect();
    let direct_errors: Vec<_> = direct.errors.iter().map(without_request_id).collect();
    assert_eq!(wire_errors, direct_errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_mailbox_over_the_wire_matches_the_in_process_simulator() {
    let sim = simulator(3);
    let addr = serve(&sim, false).await;
    let t = target(addr, "pa");
    let c = WinrmConnector::new(options()).unwrap();
    let session = c.open(&t).await.unwrap();
    assert_eq!(sim.list_shells(ALICE).len(), 1);

    let command = get_mailbox(vec![("ResultSize".into(), PsValue::Int32(10))]);
    let wire_out = session.invoke(&command).await.unwrap();
    assert_eq!(wire_out.objects.len(), 10);
    assert_eq!(wire_out.warnings.len(), 1, "the ResultSize warning: {:?}", wire_out.warnings);
    assert_same(&wire_out, &in_process(&sim, &t, &command).await);

    // A non-terminating error next to the output, and terminating ones classified.
    let missing = get_mailbox(vec![("Identity".into(), PsValue::String("nobody-here".into()))]);
    let out = session.invoke(&missing).await.unwrap();
    assert!(out.objects.is_empty());
    assert_eq!(out.errors.len(), 1);
    assert_same(&out, &in_process(&sim, &t, &missing).await);
    let unknown = Command { invocation_id: Uuid::new_v4(), cmdlet: "Get-Nothing".into(), parameters: vec![] };
    assert_eq!(session.invoke(&unknown).await.unwrap_err().class, FaultClass::UnknownCmdlet);
    let bad = get_mailbox(vec![("NoSuchParameter".into(), PsValue::Int32(1))]);
    assert_eq!(session.invoke(&bad).await.unwrap_err().class, FaultClass::InvalidParameter);

    session.close().await.unwrap();
    assert!(sim.list_shells(ALICE).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_envelopes_still_carry_everything() {
    let sim = simulator(3);
    let addr = serve(&sim, false).await;
    let t = target(addr, "pa");
    let c = WinrmConnector::new(WinrmOptions { max_envelope_size: 4096, ..options() }).unwrap();
    let session = c.open(&t).await.unwrap();
    let command = get_mailbox(vec![
        ("ResultSize".into(), PsValue::String("Unlimited".into())),
        ("Filter".into(), PsValue::String(format!("Name -ne '{}'", "x".repeat(5000)))),
    ]);
    let out = session.invoke(&command).await.unwrap();
    assert_eq!(out.objects.len(), 40);
    assert_same(&out, &in_process(&sim, &t, &command).await);
    session.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_bearer_tokens_and_quota() {
    let sim = simulator(2);
    let addr = serve(&sim, false).await;
    let c = WinrmConnector::new(options()).unwrap();
    let err = c.open_session(&target(addr, "wrong")).await.unwrap_err();
    assert_eq!(err.class, FaultClass::LogonFailed, "{}", err.message);

    let bearer = format!("Bearer {}", sim_token(ALICE));
    let a = c.open_session(&target(addr, &bearer)).await.unwrap();
    assert!(a.endpoint().ends_with("&BasicAuthToOAuthConversion=true"), "{}", a.endpoint());
    let b = c.open_session(&target(addr, "pa")).await.unwrap();
    let err = c.open_session(&target(addr, "pa")).await.unwrap_err();
    assert_eq!(err.class, FaultClass::UserShellQuotaExceeded, "{}", err.message);
    a.close().await.unwrap();
    let again = c.open_session(&target(addr, "pa")).await.unwrap();
    b.close().await.unwrap();
    again.close().await.unwrap();
    assert!(sim.list_shells(ALICE).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_and_affinity_cookies() {
    let sim = simulator(3);
    let addr = serve(&sim, true).await;
    let t = target(addr, "pa");
    let err = WinrmConnector::new(options()).unwrap().open_session(&t).await.unwrap_err();
    assert_eq!(err.class, FaultClass::Protocol);
    assert!(err.message.contains("redirection is not allowed by the profile"), "{}", err.message);

    let c = WinrmConnector::new(WinrmOptions { allow_redirection: true, ..options() }).unwrap();
    let session = c.open_session(&t).await.unwrap();
    assert!(session.endpoint().contains("redirected=1"), "{}", session.endpoint());
    // Every later request must carry the session's MS-WSMAN cookie, or the shell is "not found".
    for _ in 0..3 {
        session.invoke(&get_mailbox(vec![("ResultSize".into(), PsValue::Int32(2))])).await.unwrap();
    }
    session.close().await.unwrap();
    assert!(sim.list_shells(ALICE).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_listed_by_name_and_only_ours_are_reaped() {
    let sim = simulator(5);
    let addr = serve(&sim, false).await;
    let t = target(addr, "pa");
    let ours = WinrmConnector::new(options()).unwrap();
    let other = WinrmConnector::new(WinrmOptions { shell_name: "another-tool".into(), ..options() }).unwrap();
    let leaked = [ours.open_session(&t).await.unwrap(), ours.open_session(&t).await.unwrap()];
    let theirs = other.open_session(&t).await.unwrap();

    let listed = ours.enumerate_shells(&t).await.unwrap();
    let mut names: Vec<_> = listed.iter().map(|s| s.name.clone().unwrap_or_default()).collect();
    names.sort();
    assert_eq!(names, ["another-tool", NAME, NAME]);
    assert!(listed.iter().all(|s| s.resource_uri.as_deref().is_some_and(|u| u.ends_with("/Microsoft.Exchange"))));

    // The wire simulator pins each shell to the MS-WSMAN cookie it was created under (a server
    // of the farm): a fresh conversation cannot delete it, exactly as on Exchange Online.
    let reaped = ours.reap_orphans(&t, NAME).await.unwrap();
    assert_eq!(reaped, 0);
    assert_eq!(sim.list_shells(ALICE).len(), 3);

    for s in leaked {
        s.close().await.unwrap();
    }
    theirs.close().await.unwrap();
    assert!(sim.list_shells(ALICE).is_empty());
}
