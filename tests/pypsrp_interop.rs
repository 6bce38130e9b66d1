//! Interop: pypsrp (an independent Python PSRP client) against the wire simulator.
//!
//! Needs `python3` with the `venv` module (Debian: `python3-venv`) and access to PyPI the first
//! time: the test creates a virtualenv `<target>/pyenv/pypsrp` and installs pypsrp 0.9.1 into it,
//! then reuses it (see `common::pyenv`; `PSBROKER_PYTHON` picks another interpreter,
//! `PSBROKER_PYENV` another place for the venvs).
//! Missing or broken Python is a test failure, never a skip.

mod common;

use psbroker::config::SimulatorConfig;
use psbroker::remote::PsValue;
use psbroker::sim::wire::{self, WireOptions};
use psbroker::sim::{SimAccount, Simulator};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const PYPSRP: &str = "pypsrp==0.9.1";
/// pyspnego's Kerberos needs MIT's GSSAPI and krb5 bindings (built against Debian's
/// `libkrb5-dev`; `.ci/run` installs it).
const GSSAPI: &str = "gssapi==1.12.0";
const KRB5: &str = "krb5==0.10.0";
const TENANT: &str = "contoso.onmicrosoft.com";
const ALICE: &str = "alice@partner.onmicrosoft.com";
const BOB: &str = "bob@partner.onmicrosoft.com";
const USER_QUOTA_TEXT: &str = "The WS-Management service cannot process the request. The maximum number of concurrent shells for this user has been exceeded. Close existing shells or raise the quota for this user.";

/// Runs the pypsrp client script (`cmd`, arguments set) and answers the JSON document it
/// printed, with its stderr. The script prints JSON whatever pypsrp did (an exception is a field
/// the caller asserts on); exiting otherwise, or printing no JSON, fails the test here.
async fn what_pypsrp_saw(mut cmd: tokio::process::Command) -> (Value, String) {
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.kill_on_drop(true).output())
        .await
        .expect("pypsrp client timed out")
        .expect("run the pypsrp client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "pypsrp client exited with {}:\n{stdout}\n{stderr}", out.status);
    let seen = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("pypsrp client printed no JSON ({e}):\n{stdout}\n{stderr}"));
    (seen, stderr)
}

fn simulator() -> Simulator {
    let cfg = SimulatorConfig {
        mailboxes_per_tenant: 25,
        user_shell_cap: 3,
        open_latency_ms: 0,
        command_latency_ms: 0,
        close_latency_ms: 0,
        ..SimulatorConfig::default()
    };
    let accounts = vec![
        SimAccount { upn: ALICE.into(), password: "pa".into(), tenants: vec!["*".into()] },
        SimAccount { upn: BOB.into(), password: "pb".into(), tenants: vec!["*".into()] },
    ];
    Simulator::new(&cfg, accounts, vec![TENANT.into(), "fabrikam.onmicrosoft.com".into()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pypsrp_drives_the_wire_simulator() {
    let python =
        tokio::task::spawn_blocking(|| common::pyenv::venv("pypsrp", &[PYPSRP]).python).await.expect("venv setup task");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/pypsrp_client.py");

    let sim = simulator();
    let options = WireOptions { idle_receive_wait: Duration::from_millis(200), ..WireOptions::default() };
    let (addr, server) =
        wire::spawn_with(sim.clone(), "127.0.0.1:0".parse().unwrap(), options).await.expect("bind the wire server");

    let mut child = tokio::process::Command::new(&python);
    child.arg(&script).args(["--host", "127.0.0.1", "--port", &addr.port().to_string(), "--tenant", TENANT]).args([
        "--user",
        ALICE,
        "--password",
        "pa",
    ]);
    let (seen, stderr) = what_pypsrp_saw(child).await;
    assert!(seen.get("exception").is_none(), "pypsrp raised:\n{}\n{stderr}", seen["traceback"].as_str().unwrap_or(""));

    // The pool opened (RunspacePoolState.OPENED = 2).
    assert_eq!(seen["pool_state"], 2, "{seen:#}");

    // Get-Mailbox -ResultSize 3: three objects, the same ones the service holds.
    let mailboxes = seen["mailboxes"].as_array().expect("mailboxes");
    assert_eq!(mailboxes.len(), 3, "{seen:#}");
    assert_eq!(seen["mailbox_state"], 4, "PSInvocationState.COMPLETED: {seen:#}");
    assert_eq!(seen["mailbox_had_errors"], false);
    let shell = sim.open_shell(BOB, "pb", TENANT, "Microsoft.Exchange").unwrap();
    let direct = sim
        .run(&shell, uuid::Uuid::new_v4(), "Get-Mailbox", &[("ResultSize".into(), PsValue::Int32(3))])
        .expect("Get-Mailbox in process");
    sim.close_shell(&shell).unwrap();
    for (wire_obj, direct_obj) in mailboxes.iter().zip(&direct.objects) {
        let PsValue::Object(o) = direct_obj else { panic!("not an object: {direct_obj:?}") };
        for name in ["Name", "PrimarySmtpAddress"] {
            let expected = o.get(name).and_then(PsValue::as_str).expect(name);
            assert_eq!(wire_obj[name].as_str(), Some(expected), "{name}: {seen:#}");
        }
        assert!(wire_obj["PrimarySmtpAddress"].as_str().unwrap().contains('@'));
    }

    // An unknown cmdlet: the pipeline fails (state 5) with PowerShell's error record.
    let bad = &seen["bad"];
    assert_eq!(bad["had_errors"], true, "{seen:#}");
    assert_eq!(bad["state"], 5, "PSInvocationState.FAILED: {seen:#}");
    let err = &bad["errors"][0];
    assert!(err["fqeid"].as_str().unwrap_or("").contains("CommandNotFoundException"), "{seen:#}");
    let message = err["message"].as_str().unwrap_or("");
    assert!(message.contains("Get-NoSuchThing") && message.contains("is not recognized"), "{seen:#}");

    // The user's three shells are enumerated with the names pypsrp gave them.
    let mut names: Vec<&str> =
        seen["enumerated"].as_array().expect("enumerated").iter().filter_map(|s| s["name"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["interop-1", "interop-2", "interop-3"], "{seen:#}");
    for s in seen["enumerated"].as_array().unwrap() {
        assert_eq!(s["owner"], ALICE);
        assert_eq!(s["resource_uri"], "http://schemas.microsoft.com/powershell/Microsoft.Exchange");
    }

    assert_fourth_refused_and_pools_closed(&seen);

    // 25 mailboxes through a 10 KiB envelope: split over several Receives, nothing lost.
    assert_eq!(seen["large"]["count"], 25, "{seen:#}");
    assert_eq!(seen["large"]["distinct"], 25, "{seen:#}");
    assert_eq!(seen["large"]["had_errors"], false);

    let stats = sim.stats();
    assert!(stats.open_by_user.is_empty(), "shells left open: {:?}", stats.open_by_user);
    assert_eq!(stats.max_by_user.get(ALICE), Some(&3));
    server.abort();
}

/// The `psbroker sim` binary on a free loopback port with the logon methods `logon` sets
/// (`[simulator]` keys), Alice's account in `realm_user` form; the log line that announces the
/// listener must name `method`.
fn sim_binary(dir: &Path, user: &str, logon: &str, method: &str) -> (common::tools::KillOnDrop, u16) {
    let config = dir.join("sim.toml");
    std::fs::write(
        &config,
        format!(
            r#"[[admins]]
name = "alice"
upn = "{user}"
credential = "literal:pa"

[[tenants]]
domain = "{TENANT}"

[profiles.default]
kind = "simulator"

[simulator]
user_shell_cap = 3
open_latency_ms = 0
command_latency_ms = 0
close_latency_ms = 0
tenants = ["{TENANT}"]
{logon}

[[simulator.accounts]]
upn = "{user}"
password = "pa"
"#
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_psbroker"))
        .args(["sim", "--config"])
        .arg(&config)
        .args(["--listen", "127.0.0.1:0"])
        .env("NO_COLOR", "1")
        .env("PSBROKER_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("psbroker sim starts");
    let stderr = child.stderr.take().unwrap();
    let child = common::tools::KillOnDrop(child);
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let port = loop {
        let line = lines.next().expect("psbroker sim exited before listening").unwrap();
        if let Some(addr) = line.split("addr=").nth(1).filter(|_| line.contains("remote PowerShell endpoint")) {
            assert!(line.contains(method), "the log names the logon methods: {line}");
            break addr.trim().rsplit(':').next().unwrap().parse::<u16>().unwrap();
        }
    };
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
    (child, port)
}

/// NTLM as the only logon method (clear SOAP refused after the logon, as Windows'
/// AllowUnencrypted=false).
fn ntlm_only_sim(dir: &Path) -> (common::tools::KillOnDrop, u16) {
    sim_binary(dir, ALICE, "auth = [\"ntlm\"]", "NTLM")
}

/// What pypsrp saw on a logged-on, sealed conversation: the pool opened, Get-Mailbox's
/// objects, an unknown cmdlet's error record, the fourth pool refused with the quota fault.
fn assert_sealed_conversation_worked(seen: &Value, stderr: &str) {
    assert!(seen.get("exception").is_none(), "pypsrp raised:\n{}\n{stderr}", seen["traceback"].as_str().unwrap_or(""));
    assert_eq!(seen["pool_state"], 2, "{seen:#}");
    let mailboxes = seen["mailboxes"].as_array().expect("mailboxes");
    assert_eq!(mailboxes.len(), 3, "{seen:#}");
    assert!(mailboxes.iter().all(|m| m["PrimarySmtpAddress"].as_str().is_some_and(|a| a.contains('@'))), "{seen:#}");
    assert_eq!(seen["mailbox_state"], 4, "{seen:#}");
    let bad = &seen["bad"];
    assert_eq!(bad["state"], 5, "{seen:#}");
    let err = &bad["errors"][0];
    assert!(err["fqeid"].as_str().unwrap_or("").contains("CommandNotFoundException"), "{seen:#}");
    assert!(err["message"].as_str().unwrap_or("").contains("is not recognized"), "{seen:#}");
    assert_fourth_refused_and_pools_closed(seen);
}

/// The fourth pool was refused with WinRM's quota fault and the service's words, and closing
/// the pools deleted their shells.
fn assert_fourth_refused_and_pools_closed(seen: &Value) {
    let quota = &seen["quota"];
    assert_eq!(quota["refused"], true, "{seen:#}");
    assert_eq!(quota["code"], 2_150_859_173u64, "{seen:#}");
    assert_eq!(quota["message"], USER_QUOTA_TEXT, "{seen:#}");
    assert!(seen.get("close_errors").is_none(), "{seen:#}");
    assert_eq!(seen["after_close"].as_array().map(Vec::len), Some(0), "{seen:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pypsrp_over_ntlm_with_message_encryption_drives_psbroker_sim() {
    let python =
        tokio::task::spawn_blocking(|| common::pyenv::venv("pypsrp", &[PYPSRP]).python).await.expect("venv setup task");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/pypsrp_client.py");
    let dir = tempfile::tempdir().unwrap();
    let (_sim, port) = ntlm_only_sim(dir.path());

    let client = |auth: &str, password: &str, encryption: &str| {
        let mut cmd = tokio::process::Command::new(&python);
        cmd.arg(&script).args(["--host", "127.0.0.1", "--port", &port.to_string(), "--tenant", TENANT]).args([
            "--user",
            ALICE,
            "--password",
            password,
            "--auth",
            auth,
            "--encryption",
            encryption,
        ]);
        what_pypsrp_saw(cmd)
    };
    let (seen, stderr) = client("ntlm", "pa", "always").await;
    assert_sealed_conversation_worked(&seen, &stderr);
    assert_eq!(seen["large"]["count"], 25, "{seen:#}");

    // A wrong password: pypsrp's NTLM logon is refused.
    let (seen, _) = client("ntlm", "wrong", "always").await;
    let refused = seen["exception"].as_str().unwrap_or("");
    assert!(refused.contains("AuthenticationError") || refused.contains("401"), "{seen:#}");
    // Basic is not offered by this listener: refused with 401.
    let (seen, _) = client("basic", "pa", "never").await;
    let refused = seen["exception"].as_str().unwrap_or("");
    assert!(refused.contains("AuthenticationError") || refused.contains("401"), "Basic must be refused: {seen:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pypsrp_logs_on_with_a_client_certificate_over_https() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
    let python =
        tokio::task::spawn_blocking(|| common::pyenv::venv("pypsrp", &[PYPSRP]).python).await.expect("venv setup task");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/pypsrp_client.py");
    let dir = tempfile::tempdir().unwrap();

    // A test CA issuing the listener's certificate and Alice's client certificate (CN = her UPN).
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "psbroker interop CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server =
        CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().signed_by(&server_key, &ca, &ca_key).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params.distinguished_name.push(DnType::CommonName, ALICE);
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = client_params.signed_by(&client_key, &ca, &ca_key).unwrap();
    let (ca_file, cert_file, key_file) =
        (dir.path().join("ca.pem"), dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&ca_file, ca.pem()).unwrap();
    std::fs::write(&cert_file, client.pem()).unwrap();
    std::fs::write(&key_file, client_key.serialize_pem()).unwrap();

    let sim = simulator();
    let tls =
        wire::client_auth_config(server.pem().as_bytes(), server_key.serialize_pem().as_bytes(), ca.pem().as_bytes())
            .unwrap();
    let options =
        WireOptions { idle_receive_wait: Duration::from_millis(200), tls: Some(tls), ..WireOptions::default() };
    let (addr, server) =
        wire::spawn_with(sim.clone(), "127.0.0.1:0".parse().unwrap(), options).await.expect("bind the wire server");

    let mut child = tokio::process::Command::new(&python);
    child
        .arg(&script)
        .args(["--host", "127.0.0.1", "--port", &addr.port().to_string(), "--tenant", TENANT])
        .args(["--user", ALICE, "--password", "unused", "--auth", "certificate"])
        .arg("--ca-file")
        .arg(&ca_file)
        .arg("--cert-pem")
        .arg(&cert_file)
        .arg("--key-pem")
        .arg(&key_file);
    let (seen, stderr) = what_pypsrp_saw(child).await;
    assert!(seen.get("exception").is_none(), "pypsrp raised:\n{}\n{stderr}", seen["traceback"].as_str().unwrap_or(""));
    assert_eq!(seen["mailboxes"].as_array().map(Vec::len), Some(3), "{seen:#}");
    assert_eq!(seen["bad"]["state"], 5, "{seen:#}");
    // The shells were the certificate's account's: three, the fourth refused.
    for s in seen["enumerated"].as_array().expect("enumerated") {
        assert_eq!(s["owner"], ALICE, "{seen:#}");
    }
    assert_eq!(seen["quota"]["refused"], true, "{seen:#}");
    assert_eq!(seen["quota"]["message"], USER_QUOTA_TEXT, "{seen:#}");
    assert_eq!(sim.stats().max_by_user.get(ALICE), Some(&3));
    server.abort();
}

/// pypsrp logs on with Kerberos (pyspnego over MIT's GSSAPI, `Authorization: Kerberos`, tickets
/// from a real KDC) to the `psbroker sim` binary holding the keytab of `HTTP/localhost`, every
/// message sealed (`application/HTTP-Kerberos-session-encrypted`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pypsrp_over_kerberos_with_message_encryption_drives_psbroker_sim() {
    use common::kdc::{start_kdc, REALM};
    let python = tokio::task::spawn_blocking(|| common::pyenv::venv("pypsrp-kerberos", &[PYPSRP, GSSAPI, KRB5]).python)
        .await
        .expect("venv setup task");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/pypsrp_client.py");
    let kdc = tokio::task::spawn_blocking(start_kdc).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let alice = format!("alice@{REALM}");
    let logon = format!(
        "auth = []\nkerberos_principal = \"HTTP/localhost@{REALM}\"\nkerberos_keytab = \"{}\"",
        kdc.keytab.display()
    );
    let (_sim, port) = sim_binary(dir.path(), &alice, &logon, "Kerberos");

    let client = |password: &str| {
        let mut cmd = tokio::process::Command::new(&python);
        cmd.arg(&script)
            // `localhost`: the service principal is HTTP/localhost.
            .args(["--host", "localhost", "--port", &port.to_string(), "--tenant", TENANT])
            .args(["--user", &alice, "--password", password, "--auth", "kerberos", "--encryption", "always"])
            .env("KRB5_CONFIG", kdc.krb5_conf())
            .env("KRB5CCNAME", format!("FILE:{}", kdc.dir().join("ccache").display()));
        what_pypsrp_saw(cmd)
    };
    let (seen, stderr) = client("pa").await;
    assert_sealed_conversation_worked(&seen, &stderr);

    // A wrong password: the KDC refuses pre-authentication, so pypsrp gets no ticket.
    let (seen, _) = client("wrong").await;
    assert!(seen.get("exception").is_some() && seen.get("mailboxes").is_none(), "{seen:#}");
}
