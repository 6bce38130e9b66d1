//! Kerberos against a real MIT KDC: the test starts `krb5kdc` (Debian `krb5-kdc`; principals
//! made with `kadmin.local` from `krb5-admin-server`) in a temporary directory on loopback with
//! its own realm, makes a user and the simulator's `HTTP/localhost` service principal with a
//! keytab; the simulator accepts Kerberos with the keytab's key (sspi's acceptor), and
//! psbroker's connector logs on with tickets from the KDC, every message sealed over plain HTTP.
//! A missing KDC is a test failure naming the package, never a skip.

mod common;

use common::kdc::{start_kdc, REALM};
use common::tools::free_port;
use psbroker::config::SimulatorConfig;
use psbroker::remote::winrm::{WinrmAuth, WinrmConnector, WinrmOptions};
use psbroker::remote::{Command, FaultClass, PsValue, RemoteSession, SessionTarget};
use psbroker::sim::wire::{self, SimKerberos, WireOptions};
use psbroker::sim::{SimAccount, Simulator};
use secrecy::SecretString;
use std::time::Duration;

const TENANT: &str = "contoso.onmicrosoft.com";
const USER_QUOTA_TEXT: &str = "The WS-Management service cannot process the request. The maximum number of concurrent shells for this user has been exceeded. Close existing shells or raise the quota for this user.";

fn simulator() -> Simulator {
    let cfg = SimulatorConfig {
        mailboxes_per_tenant: 10,
        user_shell_cap: 3,
        open_latency_ms: 0,
        command_latency_ms: 0,
        close_latency_ms: 0,
        ..SimulatorConfig::default()
    };
    // The service knows the Kerberos principal as its account, with the same password for NTLM
    // (as a domain account has).
    let accounts = vec![
        SimAccount { upn: format!("alice@{REALM}"), password: "pa".into(), tenants: vec!["*".into()] },
        SimAccount { upn: format!("bob@{REALM}"), password: "pb".into(), tenants: vec!["*".into()] },
    ];
    Simulator::new(&cfg, accounts, vec![TENANT.into()])
}

fn target(port: u16, user: &str, password: &str) -> SessionTarget {
    SessionTarget {
        admin_upn: user.into(),
        credential: SecretString::from(password.to_string()),
        tenant: TENANT.into(),
        // `localhost`: the service principal is HTTP/localhost.
        connection_uri: format!("http://localhost:{port}/PowerShell?DelegatedOrg={TENANT}"),
        configuration_name: "Microsoft.Exchange".into(),
        tokens: None,
    }
}

fn options(kdc_port: u16) -> WinrmOptions {
    WinrmOptions {
        auth: WinrmAuth::Kerberos { kdc: format!("tcp://127.0.0.1:{kdc_port}") },
        request_timeout: Duration::from_secs(20),
        operation_timeout: Duration::from_secs(5),
        shell_name: "psbroker:kerberos".into(),
        ..WinrmOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kerberos_with_a_real_kdc_logs_on_seals_and_tells_failures_apart() {
    let kdc = tokio::task::spawn_blocking(start_kdc).await.unwrap();
    let sim = simulator();
    let service = SimKerberos::from_keytab(&kdc.keytab, &format!("HTTP/localhost@{REALM}")).unwrap();
    let wire_options = WireOptions {
        idle_receive_wait: Duration::from_millis(200),
        basic: false,
        kerberos: Some(service),
        ..WireOptions::default()
    };
    let (addr, _task) = wire::spawn_with(sim.clone(), "127.0.0.1:0".parse().unwrap(), wire_options).await.unwrap();
    let c = WinrmConnector::new(options(kdc.port)).unwrap();
    let alice = target(addr.port(), &format!("alice@{REALM}"), "pa");

    // Logged on with a ticket, every message sealed (the listener refuses clear SOAP).
    let session = c.open_session(&alice).await.unwrap();
    let command = Command {
        invocation_id: uuid::Uuid::new_v4(),
        cmdlet: "Get-Mailbox".into(),
        parameters: vec![("ResultSize".into(), PsValue::Int32(3))],
    };
    assert_eq!(session.invoke(&command).await.unwrap().objects.len(), 3);
    let unknown = Command { invocation_id: uuid::Uuid::new_v4(), cmdlet: "Get-Nothing".into(), parameters: vec![] };
    assert_eq!(session.invoke(&unknown).await.unwrap_err().class, FaultClass::UnknownCmdlet);
    assert_eq!(sim.list_shells(&format!("alice@{REALM}")).len(), 1);
    let (second, third) = (c.open_session(&alice).await.unwrap(), c.open_session(&alice).await.unwrap());
    let err = c.open_session(&alice).await.unwrap_err();
    assert_eq!(err.class, FaultClass::UserShellQuotaExceeded, "{}", err.message);
    assert!(err.message.contains(USER_QUOTA_TEXT), "{}", err.message);
    for s in [session, second, third] {
        s.close().await.unwrap();
    }

    // The down-level form of the same principal works too.
    c.open_session(&target(addr.port(), &format!("{REALM}\\bob"), "pb")).await.unwrap().close().await.unwrap();

    // A wrong password: the KDC refuses pre-authentication.
    let err = c.open_session(&target(addr.port(), &format!("alice@{REALM}"), "wrong")).await.unwrap_err();
    assert_eq!(err.class, FaultClass::LogonFailed, "{}", err.message);
    assert!(!err.message.contains("wrong"), "{}", err.message);
    // A principal the KDC does not know, and a service principal it does not know.
    let err = c.open_session(&target(addr.port(), &format!("carol@{REALM}"), "pc")).await.unwrap_err();
    assert_eq!(err.class, FaultClass::PrincipalUnknown, "{}", err.message);
    let other_spn =
        WinrmConnector::new(WinrmOptions { spn: Some("HTTP/nowhere.psb.test".into()), ..options(kdc.port) }).unwrap();
    let err = other_spn.open_session(&alice).await.unwrap_err();
    assert_eq!(err.class, FaultClass::PrincipalUnknown, "{}", err.message);
    // A KDC that does not answer.
    let err = WinrmConnector::new(options(free_port())).unwrap().open_session(&alice).await.unwrap_err();
    assert_eq!(err.class, FaultClass::IdentityServiceUnreachable, "{}", err.message);

    assert!(sim.list_shells(&format!("alice@{REALM}")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_whose_clock_disagrees_is_clock_skew() {
    let kdc = tokio::task::spawn_blocking(start_kdc).await.unwrap();
    let sim = simulator();
    // No tolerance at all: the authenticator's time (whole seconds) never matches this clock,
    // as when the server's clock is off by more than its tolerance.
    let service = SimKerberos {
        max_skew: Duration::ZERO,
        ..SimKerberos::from_keytab(&kdc.keytab, &format!("HTTP/localhost@{REALM}")).unwrap()
    };
    let wire_options = WireOptions { basic: false, kerberos: Some(service), ..WireOptions::default() };
    let (addr, _task) = wire::spawn_with(sim.clone(), "127.0.0.1:0".parse().unwrap(), wire_options).await.unwrap();
    let c = WinrmConnector::new(options(kdc.port)).unwrap();
    let err = c.open_session(&target(addr.port(), &format!("alice@{REALM}"), "pa")).await.unwrap_err();
    assert_eq!(err.class, FaultClass::ClockSkew, "{}", err.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiate_prefers_kerberos_and_falls_back_to_ntlm() {
    let kdc = tokio::task::spawn_blocking(start_kdc).await.unwrap();
    let sim = simulator();
    let service = SimKerberos::from_keytab(&kdc.keytab, &format!("HTTP/localhost@{REALM}")).unwrap();
    let serve = |kerberos: Option<SimKerberos>, ntlm: bool| {
        let options = WireOptions { basic: false, ntlm, kerberos, ..WireOptions::default() };
        wire::spawn_with(sim.clone(), "127.0.0.1:0".parse().unwrap(), options)
    };
    let negotiate = |kdc: Option<String>| WinrmOptions { auth: WinrmAuth::Negotiate { kdc }, ..options(0) };
    let alice = |port: u16| target(port, &format!("alice@{REALM}"), "pa");
    let kdc_url = Some(format!("tcp://127.0.0.1:{}", kdc.port));

    // A Kerberos-only endpoint: Negotiate uses Kerberos.
    let (kerberos_only, _a) = serve(Some(service.clone()), false).await.unwrap();
    let c = WinrmConnector::new(negotiate(kdc_url.clone())).unwrap();
    c.open_session(&alice(kerberos_only.port())).await.unwrap().close().await.unwrap();
    // Without a KDC to ask, there is no NTLM there to fall back to: refused.
    let c = WinrmConnector::new(negotiate(None)).unwrap();
    assert!(c.open_session(&alice(kerberos_only.port())).await.is_err());

    // An NTLM-only endpoint: Kerberos is not offered, Negotiate falls back to NTLM.
    let (ntlm_only, _b) = serve(None, true).await.unwrap();
    let c = WinrmConnector::new(negotiate(kdc_url.clone())).unwrap();
    c.open_session(&alice(ntlm_only.port())).await.unwrap().close().await.unwrap();
    // A KDC that does not answer: NTLM.
    let (both, _c) = serve(Some(service), true).await.unwrap();
    let c = WinrmConnector::new(negotiate(Some(format!("tcp://127.0.0.1:{}", free_port())))).unwrap();
    c.open_session(&alice(both.port())).await.unwrap().close().await.unwrap();
    // A wrong password is not retried with NTLM: the KDC's refusal stands.
    let c = WinrmConnector::new(negotiate(kdc_url)).unwrap();
    let err = c.open_session(&target(both.port(), &format!("alice@{REALM}"), "wrong")).await.unwrap_err();
    assert_eq!(err.class, FaultClass::LogonFailed, "{}", err.message);
    assert!(err.message.contains("Kerberos"), "{}", err.message);
    assert!(sim.list_shells(&format!("alice@{REALM}")).is_empty());
}
