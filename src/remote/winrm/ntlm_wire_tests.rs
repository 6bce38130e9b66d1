//! End to end over NTLM with message encryption: the connector against the simulator's NTLM
//! listener on plain HTTP (no Basic, no clear SOAP accepted), with a recording proxy in between
//! to show that nothing of the conversation travels in clear.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

use super::wire_tests::{assert_same, get_mailbox, in_process, options, simulator, target, ALICE};
use super::*;
use crate::remote::{Command, PsValue};
use crate::sim::wire::{self, WireOptions};
use crate::sim::Simulator;

const USER_QUOTA_TEXT: &str = "The WS-Management service cannot process the request. The maximum number of concurrent \
                               shells for this user has been exceeded. Close existing shells or raise the quota for \
                               this user.";

/// The simulator's listener with NTLM only (or Basic only), refusing clear SOAP after NTLM.
async fn serve(sim: &Simulator, ntlm: bool) -> SocketAddr {
    let options =
        WireOptions { idle_receive_wait: Duration::from_millis(200), ntlm, basic: !ntlm, ..WireOptions::default() };
    let (addr, _task) = wire::spawn_with(sim.clone(), "127.0.0.1:0".parse().unwrap(), options).await.unwrap();
    addr
}

/// NTLM, sealed; plain `http://` is allowed by the sealing alone.
fn ntlm_options() -> WinrmOptions {
    WinrmOptions { auth: WinrmAuth::Ntlm, allow_plain_http: false, ..options() }
}

/// A TCP proxy to `upstream` that records every byte in both directions.
async fn recording_proxy(upstream: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(upstream).await else { return };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pump(cr, sw, record.clone()));
            tokio::spawn(pump(sr, cw, record.clone()));
        }
    });
    (addr, seen)
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    record: Arc<Mutex<Vec<u8>>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        record.lock().unwrap().extend_from_slice(&buf[..n]);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_mailbox_errors_and_the_quota_over_sealed_ntlm_match_the_in_process_simulator() {
    let sim = simulator(3);
    let addr = serve(&sim, true).await;
    let t = target(addr, "pa");
    let c = WinrmConnector::new(ntlm_options()).unwrap();
    let session = c.open_session(&t).await.unwrap();

    let command = get_mailbox(vec![("ResultSize".into(), PsValue::Int32(10))]);
    let wire_out = session.invoke(&command).await.unwrap();
    assert_eq!(wire_out.objects.len(), 10);
    assert_same(&wire_out, &in_process(&sim, &t, &command).await);

    // An error record next to the output, and a terminating error classified.
    let missing = get_mailbox(vec![("Identity".into(), PsValue::String("nobody-here".into()))]);
    let out = session.invoke(&missing).await.unwrap();
    assert_eq!(out.errors.len(), 1);
    assert_same(&out, &in_process(&sim, &t, &missing).await);
    let unknown = Command { invocation_id: Uuid::new_v4(), cmdlet: "Get-Nothing".into(), parameters: vec![] };
    assert_eq!(session.invoke(&unknown).await.unwrap_err().class, FaultClass::UnknownCmdlet);

    // Three shells are the user's quota: the fourth is refused with the service's words.
    let second = c.open_session(&t).await.unwrap();
    let third = c.open_session(&t).await.unwrap();
    let err = c.open_session(&t).await.unwrap_err();
    assert_eq!(err.class, FaultClass::UserShellQuotaExceeded, "{}", err.message);
    assert!(err.message.contains(USER_QUOTA_TEXT), "{}", err.message);

    // Enumeration and orphan reaping work over the same kind of conversation.
    assert_eq!(c.enumerate_shells(&t).await.unwrap().len(), 3);
    for s in [session, second, third] {
        s.close().await.unwrap();
    }
    assert!(sim.list_shells(ALICE).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_ntlm_conversation_shows_no_soap_or_clixml_in_clear() {
    let sim = simulator(3);
    let addr = serve(&sim, true).await;
    let (proxy, seen) = recording_proxy(addr).await;
    let c = WinrmConnector::new(ntlm_options()).unwrap();
    let session = c.open_session(&target(proxy, "pa")).await.unwrap();
    let out = session.invoke(&get_mailbox(vec![("ResultSize".into(), PsValue::Int32(3))])).await.unwrap();
    assert_eq!(out.objects.len(), 3);
    session.close().await.unwrap();

    let bytes = seen.lock().unwrap().clone();
    assert!(contains(&bytes, "multipart/encrypted"), "the conversation went through the proxy, sealed");
    assert!(contains(&bytes, "Authorization: Negotiate") || contains(&bytes, "authorization: Negotiate"));
    // CLIXML travels base64-encoded inside rsp:Stream (answers) and rsp:Arguments (commands):
    // neither element, nor any SOAP, may be visible.
    let clear_words =
        ["Envelope", "soap+xml;charset=UTF-8\r\n", "rsp:Stream", "rsp:Arguments", "Get-Mailbox", "<Obj", "ShellId"];
    for clear in clear_words {
        assert!(!contains(&bytes, clear), "{clear:?} travelled in clear");
    }

    // The same recorder sees everything of a Basic conversation (so it would have seen it).
    let basic_sim = simulator(3);
    let basic_addr = serve(&basic_sim, false).await;
    let (proxy, seen) = recording_proxy(basic_addr).await;
    let c = WinrmConnector::new(WinrmOptions { allow_plain_http: true, ..options() }).unwrap();
    let session = c.open_session(&target(proxy, "pa")).await.unwrap();
    session.invoke(&get_mailbox(vec![("ResultSize".into(), PsValue::Int32(3))])).await.unwrap();
    session.close().await.unwrap();
    let bytes = seen.lock().unwrap().clone();
    assert!(contains(&bytes, "Envelope") && contains(&bytes, "rsp:Stream") && contains(&bytes, "rsp:Arguments"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_lockout_and_no_common_method_have_their_codes() {
    let sim = simulator(3);
    let addr = serve(&sim, true).await;
    let c = WinrmConnector::new(ntlm_options()).unwrap();

    let err = c.open_session(&target(addr, "wrong")).await.unwrap_err();
    assert_eq!(err.class, FaultClass::LogonFailed, "{}", err.message);
    assert!(!err.message.contains("wrong"), "the password never appears: {}", err.message);

    sim.set_account_locked(ALICE, true);
    let err = c.open_session(&target(addr, "pa")).await.unwrap_err();
    assert_eq!(err.class, FaultClass::AccountLocked, "{}", err.message);
    sim.set_account_locked(ALICE, false);
    c.open_session(&target(addr, "pa")).await.unwrap().close().await.unwrap();

    // A Basic-only endpoint: NTLM is refused, naming what the endpoint offers.
    let basic_only = serve(&sim, false).await;
    let err = c.open_session(&target(basic_only, "pa")).await.unwrap_err();
    assert_eq!(err.class, FaultClass::Protocol, "{}", err.message);
    assert!(err.message.contains("offers Basic"), "{}", err.message);

    // An NTLM-only endpoint: Basic is refused, naming what the endpoint offers.
    let basic = WinrmConnector::new(options()).unwrap();
    let err = basic.open_session(&target(addr, "pa")).await.unwrap_err();
    assert_eq!(err.class, FaultClass::Protocol, "{}", err.message);
    assert!(err.message.contains("offers Negotiate"), "{}", err.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_soap_after_an_ntlm_logon_needs_both_sides_to_opt_out() {
    let sim = simulator(3);
    let addr = serve(&sim, true).await;
    // Opting out of encryption on an http:// endpoint needs allow_plain_http.
    let clear = WinrmOptions { auth: WinrmAuth::Ntlm, message_encryption: false, allow_plain_http: false, ..options() };
    let err = WinrmConnector::new(clear.clone()).unwrap().open_session(&target(addr, "pa")).await.unwrap_err();
    assert_eq!(err.class, FaultClass::Protocol, "{}", err.message);

    // The listener (AllowUnencrypted false) refuses clear SOAP from a logged-on connection.
    let clear = WinrmOptions { allow_plain_http: true, ..clear };
    let err = WinrmConnector::new(clear.clone()).unwrap().open_session(&target(addr, "pa")).await.unwrap_err();
    assert_eq!(err.class, FaultClass::LogonFailed, "{}", err.message);

    // With both sides opted out it works, in clear.
    let options = WireOptions {
        idle_receive_wait: Duration::from_millis(200),
        ntlm: true,
        allow_unencrypted: true,
        ..WireOptions::default()
    };
    let (open_addr, _task) = wire::spawn_with(sim.clone(), "127.0.0.1:0".parse().unwrap(), options).await.unwrap();
    let session = WinrmConnector::new(clear).unwrap().open_session(&target(open_addr, "pa")).await.unwrap();
    let out = session.invoke(&get_mailbox(vec![("ResultSize".into(), PsValue::Int32(2))])).await.unwrap();
    assert_eq!(out.objects.len(), 2);
    session.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_or_timed_out_connection_logs_on_again_and_faults_keep_their_meaning() {
    use crate::config::FaultConfig;
    let sim = simulator(3);
    let addr = serve(&sim, true).await;
    let impatient = WinrmOptions {
        request_timeout: Duration::from_millis(300),
        operation_timeout: Duration::from_secs(1),
        ..ntlm_options()
    };
    let c = WinrmConnector::new(impatient).unwrap();
    let only_command = |set: fn(&mut FaultConfig)| {
        let mut f = FaultConfig {
            actions: vec!["Command".into()],
            latency_spike_min_ms: 1500,
            latency_spike_ms: 1500,
            ..FaultConfig::default()
        };
        set(&mut f);
        f
    };
    let cases: [(FaultConfig, FaultClass, Option<u32>); 3] = [
        (only_command(|f| f.drop_before = 1.0), FaultClass::ConnectionLost, None),
        (only_command(|f| f.drop_after = 1.0), FaultClass::ConnectionLost, Some(1)),
        (only_command(|f| f.latency_spike = 1.0), FaultClass::Timeout, Some(1)),
    ];
    for (faults, class, runs) in cases {
        sim.set_faults(FaultConfig::default());
        let session = c.open_session(&target(addr, "pa")).await.unwrap();
        sim.set_faults(faults.clone());
        let write = Command {
            invocation_id: Uuid::new_v4(),
            cmdlet: "Set-Mailbox".into(),
            parameters: vec![
                ("Identity".into(), PsValue::String("user001".into())),
                ("Office".into(), PsValue::String("7".into())),
            ],
        };
        let err = session.invoke(&write).await.unwrap_err();
        assert_eq!(err.class, class, "{faults:?}: {}", err.message);
        assert_eq!(sim.stats().executions.get(&write.invocation_id).copied(), runs, "{faults:?}");
        sim.set_faults(FaultConfig::default());
        // The connection that logged on is gone: the session logs on again on a new one.
        let out = session.invoke(&get_mailbox(vec![("ResultSize".into(), PsValue::Int32(2))])).await.unwrap();
        assert_eq!(out.objects.len(), 2, "{faults:?}");
        session.close().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1600)).await; // the last spike's answer
    assert!(sim.list_shells(ALICE).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_small_envelopes_and_orphan_deletion_work_over_sealed_ntlm() {
    let sim = simulator(3);
    let options = WireOptions {
        idle_receive_wait: Duration::from_millis(200),
        redirect_first: true,
        ntlm: true,
        basic: false,
        ..WireOptions::default()
    };
    let (addr, _task) = wire::spawn_with(sim.clone(), "127.0.0.1:0".parse().unwrap(), options).await.unwrap();
    let t = target(addr, "pa");
    let c = WinrmConnector::new(WinrmOptions { allow_redirection: true, max_envelope_size: 4096, ..ntlm_options() })
        .unwrap();
    let session = c.open_session(&t).await.unwrap();
    assert!(session.endpoint().contains("redirected=1"), "{}", session.endpoint());
    // 40 mailboxes through 4 KiB envelopes: many sealed Receives, in order.
    let out = session.invoke(&get_mailbox(vec![("ResultSize".into(), PsValue::String("Unlimited".into()))])).await;
    assert_eq!(out.unwrap().objects.len(), 40);
    // A shell left open is deleted by another conversation, from its resume token (endpoint and
    // affinity cookie), which logs on anew.
    let token = session.resume_token().expect("a WinRM session has a resume token");
    std::mem::forget(session);
    assert_eq!(sim.list_shells(ALICE).len(), 1);
    assert!(c.delete_orphan(&t, &token).await.unwrap());
    assert!(sim.list_shells(ALICE).is_empty());
}
