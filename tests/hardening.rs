//! A hostile or careless client against the real server (issue 8): bounded memory per request,
//! connection limits and timeouts, per-token rate limits, a stop that always ends, private
//! files, ambiguous names, no-store answers, the Host check and early 413s. Floods are hundreds
//! of connections against a limit set low by configuration, not tens of thousands.

mod common;

use common::daemon::Daemon;
use common::{config_text, tenant, TestApp};
use serde_json::{json, Value as Json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The demo-like test configuration with extra `[server]` keys, on a database in `dir`.
fn config_file(dir: &Path, server: &str) -> PathBuf {
    let text = config_text(1, 2, 5, 1, "").replacen("[server]\n", &format!("[server]\n{server}\n"), 1);
    let path = dir.join("psbroker.toml");
    let db = dir.join("data").join("psbroker.db");
    std::fs::write(&path, format!("{text}\n[store]\nurl = \"sqlite://{}\"\n", db.display())).unwrap();
    path
}

fn config_with(server: &str) -> String {
    config_text(1, 2, 5, 1, "").replacen("[server]\n", &format!("[server]\n{server}\n"), 1)
}

fn bootstrap_token(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("data").join("api-token")).unwrap().trim().to_string()
}

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").trim_end_matches('/').parse().unwrap()
}

/// Reads what the server sends within `limit`: up to the end of the first answer's head, or
/// until it closes. Returns the text read and whether the connection was closed.
async fn read_head(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    return (String::from_utf8_lossy(&got).into_owned(), false);
                }
            }
        }
    }
}

/// Whether the server closes the connection within `limit` (reading and dropping anything).
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

fn status_line(head: &str) -> &str {
    head.lines().next().unwrap_or("")
}

/// Peak resident memory of a process so far, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// Sockets a process holds open.
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_cost_a_small_multiple_of_the_body_limit() {
    const MIB: usize = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&config_file(dir.path(), ""), "info");
    let pid = daemon.child.id();
    let admin = psbroker::cli_token::bearer_client(&bootstrap_token(dir.path())).unwrap();
    let narrow = json!({"name": "narrow", "role": "read-only", "tenants": tenant(0)});
    let made: Json =
        admin.post(format!("{}/v1/tokens", daemon.url)).json(&narrow).send().await.unwrap().json().await.unwrap();
    let client = psbroker::cli_token::bearer_client(made["token"].as_str().unwrap()).unwrap();
    let post = |path: &str, body: String| {
        client.post(format!("{}{path}", daemon.url)).header("content-type", "application/json").body(body).send()
    };
    // Warm up: what every request costs anyway (sessions, the store, buffers) is not counted.
    for _ in 0..3 {
        let ok = json!({"tenant": tenant(0), "cmdlet": "Get-Mailbox", "parameters": {"ResultSize": 2}}).to_string();
        assert_eq!(post("/v1/invocations", ok).await.unwrap().status(), 200);
    }
    let wrapped = |value: String| {
        format!(r#"{{"tenant":"{}","cmdlet":"Get-Mailbox","parameters":{{"Identity":{value}}}}}"#, tenant(0))
    };
    let limit = 4 * MIB; // server.max_invocation_body_bytes, the default
    let fill = (limit - 200) / 2;
    let hostile = [
        ("millions of elements", wrapped(format!("[{}1]", "1,".repeat(fill - 1))), 413, "too_many_values"),
        ("deep nesting", wrapped(format!("{}1{}", "[".repeat(fill), "]".repeat(fill))), 422, "invalid_parameter_value"),
        (
            "a wide hashtable",
            wrapped(format!(
                "{{{}\"k\":1}}",
                (0..(limit - 200) / 12).map(|i| format!("\"k{i}\":1,")).collect::<String>()
            )),
            413,
            "too_many_values",
        ),
    ];
    for (what, body, status, code) in hostile {
        let body_len = body.len();
        assert!(body_len <= limit, "{what}: inside the body limit");
        let before = peak_rss(pid);
        let r = post("/v1/invocations", body).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{what}");
        let b: Json = r.json().await.unwrap();
        assert_eq!(b["error"]["code"], code, "{what}: {b}");
        let grew = peak_rss(pid).saturating_sub(before);
        println!("{what}: {} KiB body, peak RSS +{} KiB", body_len >> 10, grew >> 10);
        assert!(grew <= 4 * limit as u64, "{what}: peak RSS grew by {} MiB for a {} MiB body", grew >> 20, limit >> 20);
    }
    // A batch may be larger (server.max_body_bytes, 32 MiB): its values are bounded all together.
    let batch_limit = 32 * MIB;
    let n = (batch_limit - 300) / 2;
    let item = format!(
        r#"{{"tenant":"{}","cmdlet":"Get-Mailbox","parameters":{{"Identity":[{}1]}}}}"#,
        tenant(0),
        "1,".repeat(n - 1)
    );
    let body = format!(r#"{{"items":[{item}]}}"#);
    assert!(body.len() <= batch_limit);
    let before = peak_rss(pid);
    let r = post("/v1/batches", body).await.unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.json::<Json>().await.unwrap()["error"]["code"], "too_many_values");
    let grew = peak_rss(pid).saturating_sub(before);
    println!("batch of 16 million elements: 32 MiB body, peak RSS +{} KiB", grew >> 10);
    assert!(grew <= 3 * batch_limit as u64, "batch: peak RSS grew by {} MiB for a 32 MiB body", grew >> 20);
    assert!(daemon.terminate(), "still healthy: a clean stop");
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_idle_and_slow_connections_leave_room_for_real_callers() {
    let dir = tempfile::tempdir().unwrap();
    // Long timeouts: the connection limit and what it does at the limit are what is tested.
    let server = "max_connections = 50\nheader_read_timeout_seconds = 300\nidle_timeout_seconds = 300";
    let daemon = Daemon::start(&config_file(dir.path(), server), "info");
    let pid = daemon.child.id();
    let client = psbroker::cli_token::bearer_client(&bootstrap_token(dir.path())).unwrap();
    let invoke = json!({"tenant": tenant(0), "cmdlet": "Get-Mailbox", "parameters": {"ResultSize": 1}});
    let r = client.post(format!("{}/v1/invocations", daemon.url)).json(&invoke).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let baseline = sockets(pid);

    let addr = addr_of(&daemon.url);
    let mut held = Vec::new();
    for i in 0..400 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        if i % 2 == 1 {
            // Slowloris: a request whose headers never end.
            s.write_all(b"POST /v1/invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").await.unwrap();
        }
        held.push(s);
    }
    // The daemon has taken them all (each one past the limit in the place of an older one).
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let text = reqwest::get(format!("{}/metrics", daemon.url)).await.unwrap().text().await.unwrap();
        if metric(&text, "psbroker_http_connections_closed_total{reason=\"evicted\"}") >= 350.0 {
            break text;
        }
        assert!(Instant::now() < deadline, "the daemon did not take the connections:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(metric(&metrics, "psbroker_http_connections ") <= 51.0, "{metrics}");
    let open = sockets(pid);
    assert!(open <= baseline + 50 + 2, "{open} sockets open (baseline {baseline}, limit 50)");

    // Still answering, with and without a token, while the flood holds its sockets.
    let started = Instant::now();
    assert_eq!(reqwest::get(format!("{}/healthz", daemon.url)).await.unwrap().status(), 200);
    let r = client.post(format!("{}/v1/invocations", daemon.url)).json(&invoke).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Json>().await.unwrap()["status"], "succeeded");
    assert!(started.elapsed() < Duration::from_secs(10), "answered in {:?}", started.elapsed());

    let mut closed = 0;
    for s in &mut held {
        closed += usize::from(closed_within(s, Duration::from_millis(20)).await);
    }
    assert!(closed >= 350, "the server closed {closed} of the 400 idle and slow connections");
    assert!(daemon.terminate());
}

#[tokio::test]
async fn slow_clients_are_cut_off_by_the_header_idle_and_body_timeouts() {
    let server = "header_read_timeout_seconds = 0.5\nidle_timeout_seconds = 1.0\nbody_timeout_seconds = 1.0";
    let app = TestApp::start(&config_with(server)).await;
    let addr = app.running().addr;

    // Connected, nothing sent: closed after the header timeout.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    // One byte, then nothing: the same.
    let mut one_byte = TcpStream::connect(addr).await.unwrap();
    one_byte.write_all(b"G").await.unwrap();
    // A request whose headers never end.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap();
    for (what, s) in [("silent", &mut silent), ("one byte", &mut one_byte), ("slow headers", &mut slow)] {
        assert!(closed_within(s, Duration::from_secs(5)).await, "{what}: not closed");
    }

    // Kept alive after an answer, then idle: closed after the idle timeout, not the header one.
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    let (head, _) = read_head(&mut kept, Duration::from_secs(5)).await;
    assert!(status_line(&head).contains("200"), "{head}");
    let idle = Instant::now();
    assert!(closed_within(&mut kept, Duration::from_secs(5)).await, "idle: not closed");
    assert!(idle.elapsed() >= Duration::from_millis(900), "closed after {:?}, before the idle timeout", idle.elapsed());

    // A body that stops arriving: 408 body_timeout.
    let mut trickle = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"tenant\":",
        app.token
    );
    trickle.write_all(head.as_bytes()).await.unwrap();
    let (answer, _) = read_head(&mut trickle, Duration::from_secs(5)).await;
    assert!(status_line(&answer).contains("408"), "{answer}");
    let metrics = app.get_text("/metrics").await;
    assert!(metric(&metrics, "psbroker_http_connections_closed_total{reason=\"header_timeout\"}") >= 3.0, "{metrics}");
    assert!(metric(&metrics, "psbroker_http_connections_closed_total{reason=\"idle_timeout\"}") >= 1.0, "{metrics}");
    app.stop().await;
}

#[tokio::test]
async fn intake_is_rate_limited_per_token() {
    let server =
        "[server.rate_limit]\nrequests_per_second = 1\nrequest_burst = 3\nitems_per_second = 1\nitem_burst = 5";
    // The table header must come after the [server] keys: append it at the end of [server].
    let text = config_text(1, 2, 5, 1, "").replacen(
        "max_wait_seconds = 30\n",
        &format!("max_wait_seconds = 30\n{server}\n"),
        1,
    );
    let app = TestApp::start(&text).await;
    let one = json!({"tenant": tenant(0), "cmdlet": "Get-Mailbox", "parameters": {"ResultSize": 1}, "wait": false});
    for _ in 0..3 {
        assert_eq!(app.post("/v1/invocations", one.clone()).await.0, 202);
    }
    let r = app.client.post(app.url("/v1/invocations")).json(&one).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert_eq!(r.json::<Json>().await.unwrap()["error"]["code"], "rate_limited");
    assert_eq!(app.get("/v1/pools").await.0, 200, "reads are not intake");

    // Another token has its own buckets; a batch costs its items.
    let (s, made) = app.post("/v1/tokens", json!({"name": "other", "role": "operator"})).await;
    assert_eq!(s, 201, "{made}");
    let other = psbroker::cli_token::bearer_client(made["token"].as_str().unwrap()).unwrap();
    let item = json!({"tenant": tenant(0), "cmdlet": "Get-Mailbox"});
    let batch = |n: usize| json!({"items": vec![item.clone(); n]});
    let r = other.post(app.url("/v1/batches")).json(&batch(4)).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let r = other.post(app.url("/v1/batches")).json(&batch(3)).send().await.unwrap();
    assert_eq!(r.status(), 429, "4 + 3 items is over the burst of 5");
    let r = other.post(app.url("/v1/batches")).json(&batch(6)).send().await.unwrap();
    assert_eq!(r.status(), 413, "more items than the burst can ever hold");
    app.stop().await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_in_time_whatever_clients_hold() {
    let dir = tempfile::tempdir().unwrap();
    // Client timeouts far away: only the stop's own deadlines can end these connections.
    let server = "drain_timeout_seconds = 2\nshutdown_grace_seconds = 1\nheader_read_timeout_seconds = 600\n\
                  idle_timeout_seconds = 600\nbody_timeout_seconds = 600";
    let mut daemon = Daemon::start(&config_file(dir.path(), server), "info");
    let token = bootstrap_token(dir.path());
    let addr = addr_of(&daemon.url);
    let mut one_byte = TcpStream::connect(addr).await.unwrap();
    one_byte.write_all(b"P").await.unwrap();
    let mut half_body = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"tenant\":\"t000.onmicrosoft.com\","
    );
    half_body.write_all(head.as_bytes()).await.unwrap();
    let mut kept_alive = TcpStream::connect(addr).await.unwrap();
    kept_alive.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    assert!(status_line(&read_head(&mut kept_alive, Duration::from_secs(5)).await.0).contains("200"));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let child = &mut daemon.child;
    let started = Instant::now();
    assert!(std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    // drain 2 s + sessions (a few ms here; at most 10 s) + grace 1 s, and room for a busy box.
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "still running 30 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = started.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(8), "the stop took {took:?}");
    assert!(closed_within(&mut one_byte, Duration::from_secs(1)).await);
    assert!(closed_within(&mut half_body, Duration::from_secs(1)).await);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemons_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&config_file(dir.path(), ""), "info");
    let client = psbroker::cli_token::bearer_client(&bootstrap_token(dir.path())).unwrap();
    let set =
        json!({"tenant": tenant(0), "cmdlet": "Set-Mailbox", "parameters": {"Identity": "user001", "Office": "x"}});
    let r = client.post(format!("{}/v1/invocations", daemon.url)).json(&set).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let data = dir.path().join("data");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "the data directory");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    for name in ["psbroker.db", "psbroker.db-wal", "psbroker.db-shm", "api-token", "node-id"] {
        assert!(seen.iter().any(|s| s == name), "{name} not among {seen:?}");
    }
    assert!(daemon.terminate());
}

#[tokio::test]
async fn names_powershell_takes_as_one_are_refused_and_keys_stay_apart() {
    let app = TestApp::start(&config_with("")).await;
    let body = |parameters: Json| json!({"tenant": tenant(0), "cmdlet": "Set-Mailbox", "parameters": parameters, "idempotency_key": "k-case", "wait": false});
    let (s, b) = app.post("/v1/invocations", body(json!({"Identity": "user001", "key": "2", "Key": "1"}))).await;
    assert_eq!((s, b["error"]["code"].as_str()), (422, Some("duplicate_parameter")), "{b}");
    let (s, b) = app.post("/v1/invocations", body(json!({"Identity": "user001", "Ident": "user002"}))).await;
    assert_eq!((s, b["error"]["code"].as_str()), (422, Some("duplicate_parameter")), "an abbreviation: {b}");
    let (s, b) =
        app.post("/v1/invocations", body(json!({"Identity": "user001", "Office": {"room": "2", "Room": "1"}}))).await;
    assert_eq!((s, b["error"]["code"].as_str()), (422, Some("duplicate_key")), "{b}");

    // Accepted requests keep every name and value apart in the idempotency comparison.
    let (s, first) =
        app.post("/v1/invocations", body(json!({"Identity": "user001", "Office": {"room": "2", "wing": "1"}}))).await;
    assert_eq!(s, 202, "{first}");
    let (s, b) =
        app.post("/v1/invocations", body(json!({"Identity": "user001", "Office": {"room": "2", "wing": "999"}}))).await;
    assert_eq!((s, b["error"]["code"].as_str()), (409, Some("idempotency_conflict")), "{b}");
    let (s, again) =
        app.post("/v1/invocations", body(json!({"identity": "user001", "office": {"wing": "1", "room": "2"}}))).await;
    assert!(s == 200 || s == 202, "{again}");
    assert_eq!(again["id"], first["id"], "the same request, names in another case and order");
    app.stop().await;
}

#[tokio::test]
async fn every_answer_is_no_store() {
    let app = TestApp::start(&config_with("")).await;
    let r = app.client.post(app.url("/v1/tokens")).json(&json!({"name": "cached"})).send().await.unwrap();
    let (status, cache) = (r.status(), r.headers().get("cache-control").cloned());
    assert_eq!(status, 201, "{}", r.text().await.unwrap());
    assert_eq!(cache.unwrap(), "no-store", "an answer with a new token");
    for path in ["/v1/pools", "/v1/audit", "/v1/invocations/nope", "/metrics"] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.headers()["cache-control"], "no-store", "{path}");
    }
    app.stop().await;
}

#[tokio::test]
async fn hosts_other_than_the_listeners_names_are_refused() {
    let text = config_with("allowed_hosts = [\"psbroker.corp\"]");
    let app = TestApp::start(&text).await;
    let addr = app.running().addr;
    let port = addr.port();
    let ask = |host: String, path: &'static str, token: Option<String>| async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut answer = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut answer)).await;
        answer
    };
    for path in ["/metrics", "/healthz", "/v1/pools"] {
        let evil = ask(format!("evil.example:{port}"), path, Some(app.token.clone())).await;
        assert!(status_line(&evil).contains("421"), "{path}: {evil}");
        assert!(evil.contains("host_not_allowed"), "{evil}");
    }
    for host in
        [format!("localhost:{port}"), format!("127.0.0.1:{port}"), format!("[::1]:{port}"), "psbroker.corp".into()]
    {
        let ok = ask(host.clone(), "/metrics", None).await;
        assert!(status_line(&ok).contains("200"), "{host}: {ok}");
    }
    let wrong_port = ask(format!("localhost:{}", port.wrapping_add(1)), "/healthz", None).await;
    assert!(status_line(&wrong_port).contains("421"), "{wrong_port}");
    app.stop().await;
}

#[tokio::test]
async fn an_oversized_content_length_is_refused_before_the_body() {
    let app = TestApp::start(&config_with("")).await;
    let addr = app.running().addr;
    for (length, expect) in [("40000000", "Expect: 100-continue\r\n"), ("100000000000", "")] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /v1/invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {length}\r\n{expect}\r\n",
            app.token
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let (answer, _) = read_head(&mut s, Duration::from_secs(5)).await;
        assert!(status_line(&answer).contains("413"), "Content-Length {length}: {answer}");
        assert!(!answer.contains("100 Continue"), "{answer}");
        assert!(started.elapsed() < Duration::from_secs(2), "answered after {:?}", started.elapsed());
    }
    app.stop().await;
}
