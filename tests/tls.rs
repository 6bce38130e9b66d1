//! HTTPS on the API listener: the real daemon serves rustls with the configured PEM files, the
//! CLI trusts a private CA with `--ca-cert`, plain HTTP and untrusted clients get nowhere, and a
//! SIGHUP swaps the certificate without a restart (a broken file keeps the old one).

mod common;

use common::daemon::Daemon;
use serde_json::{json, Value as Json};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A self-signed certificate for localhost and 127.0.0.1, written as `cert.pem` / `key.pem`.
fn write_self_signed(dir: &Path) -> reqwest::Certificate {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key_pair.serialize_pem()).unwrap();
    reqwest::Certificate::from_pem(cert.pem().as_bytes()).unwrap()
}

/// A client that trusts only `root` (no system roots), opening fresh connections each time.
fn client_trusting(root: reqwest::Certificate, token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .pool_max_idle_per_host(0)
        .default_headers(headers)
        .build()
        .unwrap()
}

fn tls_config(dir: &Path, listen: &str) -> String {
    let base = common::config_text(1, 1, 1, 1, "").replacen("127.0.0.1:0", listen, 1);
    format!(
        "{base}\n[store]\nurl = \"sqlite://{db}\"\n[server.tls]\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n",
        db = dir.join("psbroker.db").display(),
        cert = dir.join("cert.pem").display(),
        key = dir.join("key.pem").display(),
    )
}

fn sighup(daemon: &Daemon) {
    assert!(Command::new("kill").args(["-HUP", &daemon.child.id().to_string()]).status().unwrap().success());
}

async fn wait_for_log(daemon: &Daemon, needle: &str, seen_before: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = daemon.log.lock().unwrap().join("\n");
        if log.matches(needle).count() > seen_before {
            return;
        }
        assert!(Instant::now() < deadline, "no '{needle}' in the log:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_daemon_serves_https_and_rotates_its_certificate_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let first = write_self_signed(dir.path());
    let config = dir.path().join("psbroker.toml");
    std::fs::write(&config, tls_config(dir.path(), "127.0.0.1:0")).unwrap();
    let daemon = Daemon::start(&config, "info");
    assert!(daemon.url.starts_with("https://127.0.0.1:"), "{}", daemon.url);
    let token = std::fs::read_to_string(dir.path().join("api-token")).unwrap().trim().to_string();

    let client = client_trusting(first.clone(), &token);
    let answer: Json = client
        .post(format!("{}/v1/invocations", daemon.url))
        .json(&json!({"tenant": common::tenant(0), "cmdlet": "Get-Mailbox", "parameters": {"ResultSize": 1}}))
        .send()
        .await
        .expect("an HTTPS request with the right CA")
        .json()
        .await
        .unwrap();
    assert_eq!(answer["status"], "succeeded", "{answer}");

    let plain = daemon.url.replacen("https://", "http://", 1);
    let refused = reqwest::get(format!("{plain}/healthz")).await;
    assert!(refused.is_err() || !refused.unwrap().status().is_success(), "plain HTTP must not be served");
    let untrusted = reqwest::Client::new().get(format!("{}/healthz", daemon.url)).send().await;
    assert!(untrusted.is_err(), "a client that does not trust the certificate must fail the handshake");

    // The CLI reaches it with --ca-cert, and says why it cannot without.
    let cli = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_psbroker"))
            .args(["status", "--url", &daemon.url, "--token-file"])
            .arg(dir.path().join("api-token"))
            .args(extra)
            .env_remove("PSBROKER_TOKEN")
            .output()
            .unwrap()
    };
    let ca = dir.path().join("cert.pem");
    let ok = cli(&["--ca-cert", ca.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains(&common::tenant(0)), "{:?}", ok);
    let without = cli(&[]);
    assert!(!without.status.success());
    assert!(String::from_utf8_lossy(&without.stderr).contains("cannot reach the daemon"), "{without:?}");

    // Rotation: new files, SIGHUP, and new connections see the new certificate.
    let second = write_self_signed(dir.path());
    sighup(&daemon);
    wait_for_log(&daemon, "TLS certificate reloaded", 0).await;
    let renewed = client_trusting(second.clone(), &token).get(format!("{}/healthz", daemon.url)).send().await;
    assert!(renewed.expect("the renewed certificate is served").status().is_success());
    assert!(
        client_trusting(first, &token).get(format!("{}/healthz", daemon.url)).send().await.is_err(),
        "the old certificate is no longer served"
    );

    // A broken key file is refused and the current certificate stays.
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    sighup(&daemon);
    wait_for_log(&daemon, "keeping the previous TLS certificate", 0).await;
    let still = client_trusting(second, &token).get(format!("{}/healthz", daemon.url)).send().await;
    assert!(still.expect("the previous certificate is still served").status().is_success());

    let log = daemon.log.clone();
    assert!(daemon.terminate(), "SIGTERM drains and exits 0:\n{}", log.lock().unwrap().join("\n"));
}

#[tokio::test]
async fn tls_allows_a_non_loopback_listener_and_keeps_metrics_behind_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let root = write_self_signed(dir.path());
    let config = psbroker::config::Config::from_toml(&tls_config(dir.path(), "0.0.0.0:0"))
        .expect("a non-loopback listener with TLS needs no override");
    let app = psbroker::app::Application::build(config).await.unwrap().spawn();
    let url = format!("https://127.0.0.1:{}", app.addr.port());
    let token = std::fs::read_to_string(dir.path().join("api-token")).unwrap().trim().to_string();
    let anonymous = client_trusting(root.clone(), "not-a-token");
    let metrics = anonymous.get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 401, "metrics are not open to the network");
    let with_token = client_trusting(root, &token).get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(with_token.status(), 200);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn unreadable_certificate_files_stop_the_start_with_their_paths() {
    let dir = tempfile::tempdir().unwrap();
    let config = psbroker::config::Config::from_toml(&tls_config(dir.path(), "127.0.0.1:0")).unwrap();
    let err = match psbroker::app::Application::build(config).await {
        Ok(_) => panic!("started without certificate files"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("cert.pem") && err.contains("key.pem"), "{err}");
}

/// Issue 8: the HTTPS listener has the same limits as plain HTTP (one accept loop serves both):
/// a client that never completes its handshake is cut off by the header timeout, the
/// connection limit makes room for real callers, and the Host check applies.
#[tokio::test]
async fn https_connections_have_the_same_limits() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let root = write_self_signed(dir.path());
    let text = tls_config(dir.path(), "127.0.0.1:0").replacen(
        "[server]\n",
        "[server]\nheader_read_timeout_seconds = 0.5\nmax_connections = 5\n",
        1,
    );
    let config = psbroker::config::Config::from_toml(&text).unwrap();
    let app = psbroker::app::Application::build(config).await.unwrap().spawn();
    let token = std::fs::read_to_string(dir.path().join("api-token")).unwrap().trim().to_string();

    let started = Instant::now();
    let mut stalled = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap(); // the start of a ClientHello, no more
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "a stalled handshake is closed: {read:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "closed after {:?}", started.elapsed());

    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(tokio::net::TcpStream::connect(app.addr).await.unwrap());
    }
    let client = client_trusting(root.clone(), &token);
    let pools = client.get(format!("https://localhost:{}/v1/pools", app.addr.port())).send().await.unwrap();
    assert_eq!(pools.status(), 200, "room is made for a real caller past 20 idle connections");

    let rebinding = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .resolve("evil.example", app.addr)
        .build()
        .unwrap();
    let r = rebinding.get(format!("https://evil.example:{}/healthz", app.addr.port())).send().await;
    // The certificate does not name evil.example: the handshake fails — or, with a certificate
    // that did, the Host check would answer 421. Either way nothing is served.
    assert!(r.is_err() || r.unwrap().status() == 421);
    app.stop().await.unwrap();
}
