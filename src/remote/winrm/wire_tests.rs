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

pub(super) const TENANT: &str = "contoso.onmicrosoft.com";
pub(super) const ALICE: &str = "alice@partner.onmicrosoft.com";
const NAME: &str = "psbroker:e2e";

pub(super) fn simulator(user_shell_cap: u32) -> Simulator {
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

pub(super) fn target(addr: SocketAddr, secret: &str) -> SessionTarget {
    SessionTarget {
        admin_upn: ALICE.into(),
        credential: SecretString::from(secret.to_string()),
        tenant: TENANT.into(),
        connection_uri: format!("http://{addr}/powershell-liveid?DelegatedOrg={TENANT}"),
        configuration_name: "Microsoft.Exchange".into(),
        tokens: None,
    }
}

pub(super) fn options() -> WinrmOptions {
    WinrmOptions {
        allow_plain_http: true,
        request_timeout: Duration::from_secs(20),
        operation_timeout: Duration::from_secs(5),
        shell_name: NAME.into(),
        ..WinrmOptions::default()
    }
}

pub(super) fn get_mailbox(parameters: Vec<(String, PsValue)>) -> Command {
    Command { invocation_id: Uuid::new_v4(), cmdlet: "Get-Mailbox".into(), parameters }
}

/// The same command through the in-process connector.
pub(super) async fn in_process(sim: &Simulator, target: &SessionTarget, command: &Command) -> CommandOutput {
    let session = sim.connector().open(target).await.unwrap();
    let out = session.invoke(command).await.unwrap();
    session.close().await.unwrap();
    out
}

pub(super) fn assert_same(wire: &CommandOutput, direct: &CommandOutput) {
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

// ---- injected faults, step by step -----------------------------------------------------------
//
// Each case injects one fault kind with certainty on one WS-Management action, through the
// simulator's runtime fault settings, and checks the class the connector reports and what the
// service really did. The broker's retry rule rests on these: a class that `proves_not_started`
// only when the command did not run, an outcome-unknown class whenever it may have.

use crate::config::FaultConfig;
use crate::sim::FaultKind;

fn only(action: &str, set: impl FnOnce(&mut FaultConfig)) -> FaultConfig {
    // Spikes always longer than any request timeout below (a Receive's is 1.3 s).
    let mut f = FaultConfig {
        actions: vec![action.into()],
        latency_spike_min_ms: 1500,
        latency_spike_ms: 1500,
        ..FaultConfig::default()
    };
    set(&mut f);
    f
}

fn set_mailbox() -> Command {
    Command {
        invocation_id: Uuid::new_v4(),
        cmdlet: "Set-Mailbox".into(),
        parameters: vec![
            ("Identity".into(), PsValue::String("user001".into())),
            ("Office".into(), PsValue::String("7".into())),
        ],
    }
}

/// Short request timeout, so a latency spike is a timeout.
fn impatient() -> WinrmOptions {
    WinrmOptions { request_timeout: Duration::from_millis(300), operation_timeout: Duration::from_secs(1), ..options() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_faults_say_whether_the_command_may_have_run() {
    let sim = simulator(3);
    let addr = serve(&sim, false).await;
    let c = WinrmConnector::new(impatient()).unwrap();
    // (fault on the Command, expected class, did the write run)
    let cases: [(FaultConfig, FaultClass, Option<u32>); 5] = [
        (only("Command", |f| f.http_503 = 1.0), FaultClass::ServiceUnavailable, None),
        (only("Command", |f| f.shell_expiry = 1.0), FaultClass::SessionExpired, None),
        (only("Command", |f| f.drop_before = 1.0), FaultClass::ConnectionLost, None),
        (only("Command", |f| f.drop_after = 1.0), FaultClass::ConnectionLost, Some(1)),
        (only("Command", |f| f.latency_spike = 1.0), FaultClass::Timeout, Some(1)),
    ];
    for (faults, class, runs) in cases {
        sim.set_faults(FaultConfig::default());
        let session = c.open(&target(addr, "pa")).await.unwrap();
        sim.set_faults(faults.clone());
        let write = set_mailbox();
        let err = session.invoke(&write).await.unwrap_err();
        assert_eq!(err.class, class, "{faults:?}: {}", err.message);
        assert_eq!(sim.stats().executions.get(&write.invocation_id).copied(), runs, "{faults:?}");
        // Only a refusal that proves the command never started lets a write run again.
        assert_eq!(err.class.proves_not_started(), runs.is_none() && class != FaultClass::ConnectionLost);
        assert_eq!(err.class.outcome_unknown(), !err.class.proves_not_started());
        if class == FaultClass::ServiceUnavailable {
            assert_eq!(err.retry_after, Some(Duration::from_secs(1)), "Retry-After is passed on");
        }
        sim.set_faults(FaultConfig::default());
        session.close().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1600)).await; // the last spike's answer
    assert!(sim.list_shells(ALICE).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_faults_after_the_command_ran_hide_its_outcome() {
    let sim = simulator(3);
    let addr = serve(&sim, false).await;
    let c = WinrmConnector::new(impatient()).unwrap();
    let cases: [(FaultConfig, FaultClass); 5] = [
        (only("Receive", |f| f.drop_before = 1.0), FaultClass::ConnectionLost),
        (only("Receive", |f| f.drop_after = 1.0), FaultClass::ConnectionLost),
        (only("Receive", |f| f.http_500 = 1.0), FaultClass::ServerError),
        (only("Receive", |f| f.latency_spike = 1.0), FaultClass::Timeout),
        // The shell vanished under the running command: not `session_expired`, which would
        // let the broker run the write again.
        (only("Receive", |f| f.shell_expiry = 1.0), FaultClass::SessionLost),
    ];
    for (faults, class) in cases {
        sim.set_faults(FaultConfig::default());
        let session = c.open(&target(addr, "pa")).await.unwrap();
        sim.set_faults(faults.clone());
        let write = set_mailbox();
        let err = session.invoke(&write).await.unwrap_err();
        assert_eq!(err.class, class, "{faults:?}: {}", err.message);
        assert!(err.class.outcome_unknown() && !err.class.proves_not_started(), "{class}");
        assert_eq!(sim.stats().executions.get(&write.invocation_id), Some(&1), "it ran, on Command");
        let recorded = &sim.stats().pipeline_faults[&write.invocation_id];
        assert_eq!(recorded.len(), 1, "{recorded:?}");
        sim.set_faults(FaultConfig::default());
        session.close().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert!(sim.list_shells(ALICE).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_never_reached_a_server_so_receive_signal_and_delete_are_repeated() {
    let sim = simulator(3);
    let addr = serve(&sim, false).await;
    let c = WinrmConnector::new(impatient()).unwrap();
    for action in ["Receive", "Signal", "Delete"] {
        let session = c.open(&target(addr, "pa")).await.unwrap();
        sim.set_faults(only(action, |f| f.http_503 = 1.0));
        let lift = {
            let sim = sim.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(700)).await;
                sim.set_faults(FaultConfig::default());
            })
        };
        let write = set_mailbox();
        session.invoke(&write).await.unwrap();
        session.close().await.unwrap();
        lift.await.unwrap();
        assert_eq!(sim.stats().executions.get(&write.invocation_id), Some(&1), "{action}");
        assert!(sim.list_shells(ALICE).is_empty(), "{action}");
    }
    assert!(sim.stats().injected[&FaultKind::Http503] >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_and_delete_faults_never_fail_a_command_and_a_lost_delete_answer_is_retried() {
    let sim = simulator(3);
    let addr = serve(&sim, false).await;
    let c = WinrmConnector::new(impatient()).unwrap();
    let session = c.open(&target(addr, "pa")).await.unwrap();
    sim.set_faults(only("Signal", |f| f.drop_after = 1.0));
    let out = session.invoke(&get_mailbox(vec![("ResultSize".into(), PsValue::Int32(2))])).await.unwrap();
    assert_eq!(out.objects.len(), 2, "the result stands whatever happens to the Signal");
    // The Delete is processed, its answer lost, every time: the retry finds the shell gone,
    // which counts as deleted... until the answers keep getting lost: then close reports it.
    sim.set_faults(only("Delete", |f| f.drop_after = 1.0));
    let err = session.close().await.unwrap_err();
    assert_eq!(err.class, FaultClass::ConnectionLost);
    assert!(sim.list_shells(ALICE).is_empty(), "the first Delete did its work");
    assert_eq!(sim.stats().injected[&FaultKind::DropAfter], 1 + 4, "one Signal, four Delete attempts");
    // Lost once, then answered: the retry's "not found" is success.
    sim.set_faults(FaultConfig::default());
    let session = c.open(&target(addr, "pa")).await.unwrap();
    sim.set_faults(only("Delete", |f| f.drop_before = 1.0));
    let lift = {
        let sim = sim.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            sim.set_faults(FaultConfig::default());
        })
    };
    session.close().await.unwrap();
    lift.await.unwrap();
    assert!(sim.list_shells(ALICE).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_faults_never_leave_a_shell_behind() {
    let sim = simulator(3);
    let addr = serve(&sim, false).await;
    let c = WinrmConnector::new(impatient()).unwrap();
    let t = target(addr, "pa");
    let cases: [(FaultConfig, FaultClass, Option<Duration>); 9] = [
        (only("Create", |f| f.http_503 = 1.0), FaultClass::ServiceUnavailable, Some(Duration::from_secs(1))),
        (only("Create", |f| f.drop_before = 1.0), FaultClass::ConnectionLost, None),
        (only("Create", |f| f.drop_after = 1.0), FaultClass::ConnectionLost, None),
        (only("Create", |f| f.http_500 = 1.0), FaultClass::ServerError, None),
        (only("Create", |f| f.latency_spike = 1.0), FaultClass::Timeout, None),
        (only("Create", |f| f.user_quota = 1.0), FaultClass::UserShellQuotaExceeded, None),
        (only("Create", |f| f.tenant_quota = 1.0), FaultClass::TenantShellQuotaExceeded, None),
        (
            only("Create", |f| {
                f.throttle = 1.0;
                f.throttle_wait_seconds = 9;
            }),
            FaultClass::Throttled,
            Some(Duration::from_secs(9)),
        ),
        // The affinity probe itself.
        (only("Enumerate", |f| f.drop_after = 1.0), FaultClass::ConnectionLost, None),
    ];
    for (faults, class, retry_after) in cases {
        sim.set_faults(faults.clone());
        let err = c.open_session(&t).await.unwrap_err();
        sim.set_faults(FaultConfig::default());
        assert_eq!((err.class, err.retry_after), (class, retry_after), "{faults:?}: {}", err.message);
        // A spiked Create finishes on the server after the client gave up; the clean-up
        // Delete found it there already.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(sim.list_shells(ALICE).is_empty(), "{faults:?} left a shell");
    }
    let stats = sim.stats();
    assert!(stats.shells_opened >= 2, "the lost and late answers were to Creates that did create");
    assert_eq!(stats.shells_opened, stats.shells_closed);
    assert_eq!(stats.shells_never_used, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_affinity_probe_a_lost_create_answer_leaks_the_shell() {
    let sim = simulator(3);
    let addr = serve(&sim, false).await;
    let c = WinrmConnector::new(WinrmOptions { affinity_probe: false, ..impatient() }).unwrap();
    sim.set_faults(only("Create", |f| f.drop_after = 1.0));
    let err = c.open_session(&target(addr, "pa")).await.unwrap_err();
    assert_eq!(err.class, FaultClass::ConnectionLost);
    // The clean-up Delete had no affinity cookie: it landed on "another server".
    assert_eq!(sim.list_shells(ALICE).len(), 1, "this is why the connector pins affinity first");
    sim.set_shell_lifetime(Duration::ZERO);
    assert_eq!(sim.stats().shells_never_used, 1, "the service saw it leak");
}

/// The simulator on HTTPS with a self-signed certificate for 127.0.0.1; returns its address and
/// the certificate as a root to trust.
async fn serve_https(sim: &Simulator) -> (SocketAddr, reqwest::Certificate) {
    let dir = tempfile::tempdir().unwrap();
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let files = crate::config::TlsConfig { cert_file: dir.path().join("c.pem"), key_file: dir.path().join("k.pem") };
    std::fs::write(&files.cert_file, cert.pem()).unwrap();
    std::fs::write(&files.key_file, key_pair.serialize_pem()).unwrap();
    let tls = crate::tls::load(&files).await.unwrap().get_inner();
    let options = WireOptions { tls: Some(tls), ..WireOptions::default() };
    let (addr, _task) = wire::spawn_with(sim.clone(), "127.0.0.1:0".parse().unwrap(), options).await.unwrap();
    (addr, reqwest::Certificate::from_pem(cert.pem().as_bytes()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_endpoints_are_verified_against_the_extra_roots() {
    let sim = simulator(3);
    let (addr, root) = serve_https(&sim).await;
    let mut t = target(addr, "pa");
    t.connection_uri = t.connection_uri.replacen("http://", "https://", 1);
    let strict = WinrmOptions { allow_plain_http: false, ..options() };

    // An internal CA the connector was not told about: refused as configuration, not retried
    // as a network blip, and the message says it is the certificate.
    let untrusting = WinrmConnector::new(strict.clone()).unwrap();
    let err = untrusting.open(&t).await.err().expect("an unknown certificate must be refused");
    assert_eq!(err.class, FaultClass::Protocol, "{err}");
    assert!(err.message.to_ascii_lowercase().contains("certificate"), "{err}");
    assert!(sim.list_shells(ALICE).is_empty());

    let trusting = WinrmConnector::new(WinrmOptions { extra_roots: vec![root], ..strict }).unwrap();
    let session = trusting.open(&t).await.unwrap();
    let out = session.invoke(&get_mailbox(vec![("ResultSize".into(), PsValue::Int32(3))])).await.unwrap();
    assert_eq!(out.objects.len(), 3);
    session.close().await.unwrap();
    assert!(sim.list_shells(ALICE).is_empty());
}
