//! Caller authentication, authorization and audit, end to end: the real daemon on port 0, the
//! CLI binary, and (where the remote side must be watched) the broker with a recording connector.

mod common;

use async_trait::async_trait;
use common::{config_text, tenant, TestApp};
use psbroker::auth::{Patterns, Principal, Role};
use psbroker::broker::directory::Directory;
use psbroker::broker::request::InvocationRequest;
use psbroker::broker::Broker;
use psbroker::config::Config;
use psbroker::metrics::Metrics;
use psbroker::remote::{Command, CommandOutput, Connector, PsValue, RemoteError, RemoteSession, SessionTarget};
use psbroker::sim::Simulator;
use psbroker::store::{Status, Store};
use serde_json::{json, Value as Json};
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// A value that must never be stored, logged or answered.
const PASSWORD: &str = "Zq9-Sup3r-S3cret-Pa55w0rd";

/// Every log line of this test binary (all tests, debug level), to grep for secrets.
fn captured_logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .with_writer(move || LogWriter(sink.clone()))
            .try_init();
        buf
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn start(text: &str) -> TestApp {
    captured_logs();
    TestApp::start(text).await
}

fn client(token: &str) -> reqwest::Client {
    psbroker::cli_token::bearer_client(token).unwrap()
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Json) {
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Json::Null))
}

/// Creates a token with the app's bootstrap admin token, over the API.
async fn token(app: &TestApp, name: &str, role: &str, tenants: &str, cmdlets: &str, constraints: &[&str]) -> String {
    let body = json!({"name": name, "role": role, "tenants": tenants, "cmdlets": cmdlets, "constraints": constraints});
    let (s, b) = app.post("/v1/tokens", body).await;
    assert_eq!(s, 201, "{b}");
    b["token"].as_str().unwrap().to_string()
}

async fn invoke_as(app: &TestApp, token: &str, tenant: &str, cmdlet: &str, parameters: Json) -> (u16, Json) {
    let body = json!({"tenant": tenant, "cmdlet": cmdlet, "parameters": parameters});
    send(client(token).post(app.url("/v1/invocations")).json(&body)).await
}

fn code(b: &Json) -> Option<&str> {
    b["error"]["code"].as_str()
}

#[tokio::test]
async fn v1_needs_a_valid_unrevoked_token_and_health_stays_open() {
    let app = start(&config_text(1, 1, 5, 1, "")).await;
    let anon = reqwest::Client::new();
    let r = anon.get(app.url("/v1/pools")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    let b: Json = r.json().await.unwrap();
    assert_eq!(code(&b), Some("unauthenticated"), "{b}");
    let (s, b) =
        send(anon.post(app.url("/v1/invocations")).json(&json!({"tenant": tenant(0), "cmdlet": "Get-User"}))).await;
    assert_eq!((s, code(&b)), (401, Some("unauthenticated")));
    let (s, _) = send(client("psb_not-a-real-token").get(app.url("/v1/pools"))).await;
    assert_eq!(s, 401);
    let (s, _) = send(anon.get(app.url("/v1/pools")).header("authorization", format!("Basic {}", app.token))).await;
    assert_eq!(s, 401, "only the Bearer scheme");
    assert_eq!(anon.get(app.url("/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(anon.get(app.url("/readyz")).send().await.unwrap().status(), 200);
    assert_eq!(anon.get(app.url("/metrics")).send().await.unwrap().status(), 200, "open on loopback");
    assert!(app.sim().stats().executions.is_empty(), "nothing ran");

    let t = token(&app, "ops", "operator", "*", "*", &[]).await;
    assert_eq!(invoke_as(&app, &t, &tenant(0), "Get-User", json!({"ResultSize": 1})).await.1["status"], "succeeded");
    let r = app.client.delete(app.url("/v1/tokens/ops")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (s, b) = invoke_as(&app, &t, &tenant(0), "Get-User", json!({})).await;
    assert_eq!((s, code(&b)), (401, Some("unauthenticated")), "revoked: {b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("revoked"));
    let (s, b) = app.post("/v1/tokens", json!({"name": "ops"})).await;
    assert_eq!((s, code(&b)), (409, Some("conflict")), "names are never reused: {b}");
    app.stop().await;
}

/// Found by the schemathesis run (tests/openapi.rs), which learned the bootstrap token's name
/// from `GET /v1/tokens` and revoked it mid-run: a token cannot revoke itself; another admin
/// token can.
#[tokio::test]
async fn a_token_cannot_revoke_itself() {
    let app = start(&config_text(1, 1, 5, 1, "")).await;
    let (s, b) = send(app.client.delete(app.url("/v1/tokens/bootstrap"))).await;
    assert_eq!((s, code(&b)), (409, Some("revoking_own_token")), "{b}");
    assert_eq!(app.get("/v1/tokens").await.0, 200, "the bootstrap token still works");

    let other = token(&app, "second-admin", "admin", "*", "*", &[]).await;
    let (s, b) = send(client(&other).delete(app.url("/v1/tokens/second-admin"))).await;
    assert_eq!((s, code(&b)), (409, Some("revoking_own_token")), "{b}");
    let (s, b) = send(client(&other).delete(app.url("/v1/tokens/bootstrap"))).await;
    assert_eq!((s, b["revoked"].as_bool()), (200, Some(true)), "{b}");
    let (s, b) = app.get("/v1/tokens").await;
    assert_eq!((s, code(&b)), (401, Some("unauthenticated")), "{b}");
    app.stop().await;
}

#[tokio::test]
async fn each_rule_refuses_with_its_own_code_and_nothing_runs() {
    let text = config_text(1, 3, 5, 1, "");
    let app = start(&text).await;
    let reader = token(&app, "reader", "read-only", &tenant(0), "*", &[]).await;
    let (s, b) =
        invoke_as(&app, &reader, &tenant(0), "Set-Mailbox", json!({"Identity": "user001", "Office": "x"})).await;
    assert_eq!((s, code(&b)), (403, Some("role_forbids_verb")), "{b}");
    let (s, b) = invoke_as(&app, &reader, &tenant(1), "Get-Mailbox", json!({})).await;
    assert_eq!((s, code(&b)), (403, Some("tenant_not_in_scope")), "{b}");
    let (s, b) = invoke_as(&app, &reader, "not-even-configured.example", "Get-Mailbox", json!({})).await;
    assert_eq!((s, code(&b)), (403, Some("tenant_not_in_scope")), "scope before existence: {b}");
    let (s, b) = invoke_as(&app, &reader, &tenant(0), "Get-Mailbox", json!({"ResultSize": 1})).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("succeeded")), "{b}");

    for denied in ["Invoke-Expression", "Start-Job", "Receive-Job", "Add-Type", "New-PSSession", "Import-Module"] {
        let (s, b) = app.invoke(&tenant(0), denied, json!({"Command": "whoami"})).await;
        assert_eq!((s, code(&b)), (403, Some("cmdlet_denied")), "{denied} even for the admin: {b}");
    }

    let narrow = token(
        &app,
        "narrow",
        "operator",
        "t00*.onmicrosoft.com",
        "Get-*,Set-Mailbox",
        &["Identity=user00*", "Office=HQ|Branch *"],
    )
    .await;
    let (s, b) = invoke_as(&app, &narrow, &tenant(0), "Set-MailUser", json!({"Identity": "user001"})).await;
    assert_eq!((s, code(&b)), (403, Some("cmdlet_not_allowed")), "{b}");
    let (s, b) =
        invoke_as(&app, &narrow, &tenant(0), "Set-Mailbox", json!({"Identity": "user011", "Office": "HQ"})).await;
    assert_eq!((s, code(&b)), (403, Some("parameter_constraint")), "{b}");
    let (s, b) =
        invoke_as(&app, &narrow, &tenant(0), "Set-Mailbox", json!({"Identity": "user001", "Office": "Moon"})).await;
    assert_eq!((s, code(&b)), (403, Some("parameter_constraint")), "{b}");
    let (s, b) = invoke_as(&app, &narrow, &tenant(0), "Set-Mailbox", json!({"Ident": "user011"})).await;
    assert_eq!((s, code(&b)), (403, Some("parameter_constraint")), "an abbreviation does not dodge it: {b}");
    let (s, b) =
        invoke_as(&app, &narrow, &tenant(0), "Set-Mailbox", json!({"Identity": "user002", "Office": "Branch 7"})).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("succeeded")), "{b}");

    // A scoped token sees only its tenants' pools and sessions.
    let (_, pools) = send(client(&reader).get(app.url("/v1/pools"))).await;
    let names: Vec<&str> = pools["tenants"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec![tenant(0).as_str()], "{pools}");
    assert_eq!(app.get("/v1/pools").await.1["tenants"].as_array().unwrap().len(), 3, "the admin sees all");
    let (_, sessions) = send(client(&reader).get(app.url("/v1/sessions"))).await;
    assert!(sessions["sessions"].as_array().unwrap().iter().all(|s| s["tenant"] == tenant(0).as_str()), "{sessions}");
    let (_, tokens) = app.get("/v1/tokens").await;
    let reader_row = tokens["tokens"].as_array().unwrap().iter().find(|t| t["name"] == "reader").unwrap().clone();
    assert!(reader_row["last_used_at"].is_i64(), "last use is recorded: {reader_row}");

    // Managing tokens is for admins.
    let (s, b) =
        send(client(&narrow).post(app.url("/v1/tokens")).json(&json!({"name": "mine", "role": "admin"}))).await;
    assert_eq!((s, code(&b)), (403, Some("admin_only")), "{b}");
    let (s, b) = send(client(&narrow).get(app.url("/v1/tokens"))).await;
    assert_eq!((s, code(&b)), (403, Some("admin_only")), "{b}");

    // Only the two permitted calls reached the tenant.
    assert_eq!(app.sim().stats().executions.len(), 2);
    // Refusals are audited, with the rule that refused.
    let (_, audit) = app.get("/v1/audit?outcome=refused&limit=100").await;
    let codes: Vec<&str> = audit["entries"].as_array().unwrap().iter().map(|e| e["code"].as_str().unwrap()).collect();
    assert_eq!(codes.len(), 13, "{audit}");
    assert!(codes.contains(&"cmdlet_denied") && codes.contains(&"parameter_constraint"), "{codes:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_batch_with_one_forbidden_item_stores_nothing() {
    let app = start(&config_text(1, 2, 5, 1, "")).await;
    let op = token(&app, "op", "operator", &tenant(0), "*", &[]).await;
    let items = vec![
        json!({"tenant": tenant(0), "cmdlet": "Get-Mailbox"}),
        json!({"tenant": tenant(0), "cmdlet": "Set-Mailbox", "parameters": {"Identity": "user001", "Office": "x"}}),
        json!({"tenant": tenant(1), "cmdlet": "Get-Mailbox"}),
    ];
    let (s, b) = send(client(&op).post(app.url("/v1/batches")).json(&json!({"items": items}))).await;
    assert_eq!((s, code(&b)), (403, Some("tenant_not_in_scope")), "{b}");
    assert_eq!(b["error"]["details"]["index"], 2);
    assert!(b["error"]["message"].as_str().unwrap().starts_with("item 2:"), "{b}");
    let ndjson = format!(
        "{}\n{}\n",
        json!({"tenant": tenant(0), "cmdlet": "Get-User"}),
        json!({"tenant": tenant(0), "cmdlet": "Invoke-Command"})
    );
    let r = client(&op).post(app.url("/v1/batches")).header("content-type", "application/x-ndjson").body(ndjson);
    let (s, b) = send(r).await;
    assert_eq!((s, code(&b), b["error"]["details"]["index"].as_u64()), (403, Some("cmdlet_denied"), Some(1)), "{b}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(app.sim().stats().executions.is_empty(), "nothing ran");
    let store = Store::connect(&format!("sqlite://{}", app.dir.path().join("psbroker.db").display())).await.unwrap();
    assert!(store.unfinished().await.unwrap().is_empty(), "nothing was stored");
    let (_, audit) = app.get("/v1/audit?token=op").await;
    assert_eq!(audit["entries"].as_array().unwrap().len(), 2, "each refusal audited once: {audit}");
    app.stop().await;
}

#[tokio::test]
async fn a_token_sees_only_its_own_work_and_admins_see_all() {
    let app = start(&config_text(1, 1, 5, 1, "")).await;
    let a = token(&app, "alice-bot", "operator", "*", "*", &[]).await;
    let b = token(&app, "bob-bot", "operator", "*", "*", &[]).await;
    let (_, done) = invoke_as(&app, &a, &tenant(0), "Get-User", json!({"ResultSize": 1})).await;
    let id = done["id"].as_str().unwrap().to_string();
    assert_eq!(done["owner"], "alice-bot");
    let path = format!("/v1/invocations/{id}");
    assert_eq!(send(client(&a).get(app.url(&path))).await.0, 200);
    let (s, body) = send(client(&b).get(app.url(&path))).await;
    assert_eq!((s, code(&body)), (404, Some("not_found")), "not 403: existence is not leaked");
    assert_eq!(app.get(&path).await.0, 200, "the admin sees it");

    let items = vec![json!({"tenant": tenant(0), "cmdlet": "Get-Mailbox"})];
    let (s, batch) = send(client(&a).post(app.url("/v1/batches")).json(&json!({"items": items}))).await;
    assert_eq!(s, 202);
    let bid = batch["id"].as_str().unwrap();
    app.wait_batch(bid, Duration::from_secs(10)).await;
    for p in [format!("/v1/batches/{bid}"), format!("/v1/batches/{bid}/results")] {
        assert_eq!(send(client(&b).get(app.url(&p))).await.0, 404, "{p}");
        assert_eq!(send(client(&a).get(app.url(&p))).await.0, 200, "{p}");
    }
    assert_eq!(send(client(&b).delete(app.url(&format!("/v1/batches/{bid}")))).await.0, 404);

    // Idempotency keys are per owner: the same key from two tokens makes two invocations.
    let body = json!({"tenant": tenant(0), "cmdlet": "Get-User", "idempotency_key": "k1"});
    let (_, x) = send(client(&a).post(app.url("/v1/invocations")).json(&body)).await;
    let (_, y) = send(client(&b).post(app.url("/v1/invocations")).json(&body)).await;
    let (_, x2) = send(client(&a).post(app.url("/v1/invocations")).json(&body)).await;
    assert_ne!(x["id"], y["id"]);
    assert_eq!(x["id"], x2["id"]);

    // The audit: others' records are not listed, whatever the filter says.
    let (_, mine) = send(client(&b).get(app.url("/v1/audit?token=alice-bot"))).await;
    let entries = mine["entries"].as_array().unwrap();
    assert!(entries.iter().all(|e| e["token"] == "bob-bot"), "{mine}");
    assert_eq!(entries.len(), 1);
    let (_, all) = app.get("/v1/audit").await;
    assert_eq!(all["entries"].as_array().unwrap().len(), 4, "{all}");
    app.stop().await;
}

#[tokio::test]
async fn the_audit_keeps_names_and_a_hash_never_values_and_survives_a_restart() {
    let text = config_text(1, 1, 5, 1, "");
    let app = start(&text).await;
    let (_, r) =
        app.invoke(&tenant(0), "Set-Mailbox", json!({"Identity": "user001", "Office": "Room-4711-Unique"})).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    let (_, r2) =
        app.invoke(&tenant(0), "Set-Mailbox", json!({"Office": "Room-4711-Unique", "identity": "user001"})).await;
    let (_, other) = app.invoke(&tenant(0), "Set-Mailbox", json!({"Identity": "user001", "Office": "Elsewhere"})).await;
    let (_, audit) = app.get(&format!("/v1/audit?tenant={}&cmdlet=set-mailbox", tenant(0))).await;
    let entries = audit["entries"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 3, "{audit}");
    let e = entries.iter().find(|e| e["invocation_id"] == r["id"]).unwrap();
    assert_eq!(e["parameter_names"], json!(["Identity", "Office"]));
    assert_eq!(e["token"], "bootstrap");
    assert_eq!(e["status"], "succeeded");
    assert!(e["session_id"].is_string() && e["duration_ms"].is_i64() && e["admin"] == "a0", "{e}");
    let hash = |id: &Json| entries.iter().find(|e| &e["invocation_id"] == id).unwrap()["parameters_sha256"].clone();
    assert_eq!(hash(&r["id"]), hash(&r2["id"]), "canonical: order and case of names do not matter");
    assert_ne!(hash(&r["id"]), hash(&other["id"]));
    assert!(!audit.to_string().contains("Room-4711-Unique"), "no values in the audit");
    assert_eq!(entries[0]["invocation_id"], other["id"], "newest first");
    // Keyset pages.
    let (_, p1) = app.get("/v1/audit?limit=2").await;
    let next = p1["next"].as_i64().unwrap();
    let (_, p2) = app.get(&format!("/v1/audit?limit=2&after={next}")).await;
    assert_eq!(p2["entries"].as_array().unwrap().len(), 1);
    assert!(p2["next"].is_null());
    let (s, b) = app.get("/v1/audit?limit=0").await;
    assert_eq!((s, code(&b)), (400, Some("invalid_request")));
    let (s, _) = app.get("/v1/audit?since=yesterday").await;
    assert_eq!(s, 400);
    let (_, none) = app.get("/v1/audit?since=2999-01-01T00:00:00Z").await;
    assert!(none["entries"].as_array().unwrap().is_empty());

    let dir = app.stop().await;
    let app = TestApp::start_in(&text, dir).await;
    let (_, again) = app.get("/v1/audit").await;
    assert_eq!(again["entries"].as_array().unwrap().len(), 3, "the audit survives a restart");
    assert_eq!(again["entries"][2]["parameters_sha256"], entries[2]["parameters_sha256"], "same salt after restart");
    app.stop().await;
}

#[tokio::test]
async fn a_password_is_never_stored_logged_or_answered() {
    let app = start(&config_text(1, 1, 5, 1, "")).await;
    let params =
        json!({"Name": "jdoe", "ExternalEmailAddress": "jdoe@example.com", "Password": PASSWORD, "Pwd": PASSWORD});
    let (s, r) = app.invoke(&tenant(0), "New-MailUser", params.clone()).await;
    assert_eq!(s, 200, "{r}");
    let id = r["id"].as_str().unwrap();
    let mut answers = r.to_string();
    answers += &app.get(&format!("/v1/invocations/{id}")).await.1.to_string();
    let items = vec![json!({"tenant": tenant(0), "cmdlet": "New-MailUser", "parameters": params})];
    let bid = app.submit_batch(items).await;
    app.wait_batch(&bid, Duration::from_secs(10)).await;
    answers += &app.get_text(&format!("/v1/batches/{bid}/results")).await;
    let (_, audit) = app.get("/v1/audit").await;
    answers += &audit.to_string();
    assert!(audit["entries"][0]["parameter_names"].as_array().unwrap().contains(&json!("Password")), "{audit}");
    assert!(!answers.contains(PASSWORD), "{answers}");

    let store = Store::connect(&format!("sqlite://{}", app.dir.path().join("psbroker.db").display())).await.unwrap();
    let stored = store.get(id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(stored.accepted.parameters["Password"], "***");
    assert_eq!(stored.accepted.parameters["Pwd"], "***", "other spellings are secret too");
    assert_eq!(stored.accepted.parameters["Name"], "jdoe");
    assert!(stored.accepted.redacted);
    let dir = app.stop().await;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!bytes.windows(PASSWORD.len()).any(|w| w == PASSWORD.as_bytes()), "the password is in a data file");
    }
    let logs = String::from_utf8_lossy(&captured_logs().lock().unwrap()).to_string();
    assert!(!logs.is_empty(), "logs are captured");
    assert!(!logs.contains(PASSWORD), "the password is in the logs");
}

// Multi-threaded: the CLI child blocks this test's thread while the daemon answers it.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bootstrap_token_is_private_and_the_cli_uses_it() {
    use std::os::unix::fs::PermissionsExt;
    let app = start(&config_text(1, 1, 5, 1, "")).await;
    let file = app.dir.path().join("api-token");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(app.token.starts_with("psb_"));
    let (s, b) = app.get("/v1/tokens").await;
    assert_eq!(s, 200);
    assert_eq!(b["tokens"][0]["name"], "bootstrap");
    assert_eq!(b["tokens"][0]["role"], "admin");
    assert!(!b.to_string().contains(&app.token), "tokens are never listed");

    // A config whose store is this daemon's: the CLI finds <data dir>/api-token by itself.
    let db = app.dir.path().join("psbroker.db");
    let config = app.dir.path().join("cli.toml");
    std::fs::write(&config, format!("{}\n[store]\nurl = \"sqlite://{}\"\n", config_text(1, 1, 5, 1, ""), db.display()))
        .unwrap();
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_psbroker"))
            .args(args)
            .env("PSBROKER_CONFIG", &config)
            .env_remove("PSBROKER_TOKEN")
            .env_remove("PSBROKER_TOKEN_FILE")
            .output()
            .unwrap()
    };
    let url = app.url("");
    let out = cli(&["status", "--url", &url]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"admins\""));
    let out = cli(&["invoke", "--url", &url, "--tenant", &tenant(0), "Get-User", "-p", "ResultSize=1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Token management on the store while the daemon runs: it sees the new token at once.
    let out = cli(&["token", "create", "--name", "cli-reader", "--role", "read-only", "--cmdlets", "Get-*"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let new = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(new.starts_with("psb_"));
    let (s, b) = invoke_as(&app, &new, &tenant(0), "Get-User", json!({"ResultSize": 1})).await;
    assert_eq!((s, b["owner"].as_str()), (200, Some("cli-reader")), "{b}");
    let list = cli(&["token", "list"]);
    let listed = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(listed.contains("cli-reader") && listed.contains("read-only") && !listed.contains(&new), "{listed}");
    assert!(cli(&["token", "revoke", "cli-reader"]).status.success());
    // Revoked behind the daemon's back: it trusts a token it verified for at most TOKEN_TRUST.
    let revoked_at = std::time::Instant::now();
    let refused = loop {
        let s = invoke_as(&app, &new, &tenant(0), "Get-User", json!({})).await.0;
        if s == 401 || revoked_at.elapsed() > psbroker::auth::TOKEN_TRUST * 3 {
            break s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(refused, 401, "refused within {:?} of a CLI revocation", psbroker::auth::TOKEN_TRUST * 3);
    assert!(!cli(&["token", "revoke", "cli-reader"]).status.success(), "already revoked");

    // With a wrong token the CLI says so in one line.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_psbroker"))
        .args(["status", "--url", &url])
        .env("PSBROKER_TOKEN", "psb_wrong")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthenticated"));
    app.stop().await;
}

#[tokio::test]
async fn a_restart_does_not_reissue_the_bootstrap_token() {
    let text = config_text(1, 1, 5, 1, "");
    let app = start(&text).await;
    let first = app.token.clone();
    let dir = app.stop().await;
    let app = TestApp::start_in(&text, dir).await;
    assert_eq!(app.token, first);
    assert_eq!(app.get("/v1/pools").await.0, 200);
    app.stop().await;
}

// ---- The broker with a connector that records what reaches the remote side ----

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Command>>>);

struct RecordingConnector {
    inner: Arc<dyn Connector>,
    seen: Recorder,
}

struct RecordingSession {
    inner: Box<dyn RemoteSession>,
    seen: Recorder,
}

#[async_trait]
impl Connector for RecordingConnector {
    async fn open(&self, target: &SessionTarget) -> Result<Box<dyn RemoteSession>, RemoteError> {
        let inner = self.inner.open(target).await?;
        Ok(Box::new(RecordingSession { inner, seen: self.seen.clone() }))
    }
}

#[async_trait]
impl RemoteSession for RecordingSession {
    fn remote_id(&self) -> String {
        self.inner.remote_id()
    }
    async fn invoke(&self, command: &Command) -> Result<CommandOutput, RemoteError> {
        self.seen.0.lock().unwrap().push(command.clone());
        // The simulated New-MailUser has no Password parameter: pass the rest on.
        let mut forwarded = command.clone();
        forwarded.parameters.retain(|(n, _)| n != "Password");
        self.inner.invoke(&forwarded).await
    }
    async fn close(&self) -> Result<(), RemoteError> {
        self.inner.close().await
    }
}

async fn broker(config: &Config, sim: &Simulator, store_url: &str, seen: &Recorder) -> Broker {
    let directory = Directory::build(config, |_, _| {
        Ok(Arc::new(RecordingConnector { inner: sim.connector(), seen: seen.clone() }) as Arc<dyn Connector>)
    })
    .unwrap();
    let store = Store::connect(store_url).await.unwrap();
    Broker::start(
        Arc::new(directory),
        store,
        Arc::new(Metrics::new(false)),
        config.scheduler.clone(),
        "test-node".into(),
        config.cluster.clone(),
    )
    .await
    .unwrap()
}

fn operator() -> Principal {
    Principal {
        name: "op".into(),
        role: Role::Operator,
        tenants: Patterns::any(),
        cmdlets: Patterns::any(),
        constraints: vec![],
    }
}

fn new_mail_user(i: usize) -> InvocationRequest {
    serde_json::from_value(json!({"tenant": tenant(0), "cmdlet": "New-MailUser",
        "parameters": {"Name": format!("u{i}"), "ExternalEmailAddress": format!("u{i}@example.com"), "Password": PASSWORD}}))
    .unwrap()
}

#[tokio::test]
async fn the_secret_reaches_the_remote_side_but_is_not_resumed_after_a_restart() {
    captured_logs();
    let config = Config::from_toml(&config_text(1, 1, 5, 30, "")).unwrap();
    let sim = Simulator::from_config(&config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("psbroker.db").display());
    let seen = Recorder::default();
    let b = broker(&config, &sim, &url, &seen).await;

    let one = b.submit(&new_mail_user(0), &operator()).await.unwrap();
    let r = b.wait_for(&one, Duration::from_secs(10)).await.unwrap().unwrap();
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    assert_eq!(r.accepted.parameters["Password"], "***");
    let sent = seen.0.lock().unwrap().iter().find(|c| c.invocation_id == one.id).unwrap().clone();
    assert!(sent.parameters.iter().any(|(n, v)| n == "Password" && *v == PsValue::String(PASSWORD.into())));

    // A batch is cut short by a stop: what had not run cannot run after the restart.
    let items: Vec<InvocationRequest> = (1..=30).map(new_mail_user).collect();
    let (batch, _) = b.submit_batch(&items, &operator()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    b.shutdown(Duration::from_secs(5)).await;
    let ran_before = seen.0.lock().unwrap().len();

    let seen_after = Recorder::default();
    let b = broker(&config, &sim, &url, &seen_after).await;
    let counts = b.store().batch_counts(batch).await.unwrap().unwrap();
    assert!(counts.done(), "{counts:?}");
    assert_eq!(counts.succeeded as usize, ran_before - 1, "{counts:?}");
    assert!(counts.failed > 0, "the stop left work queued: {counts:?}");
    let page = b.store().batch_page(batch, -1, 100).await.unwrap();
    for r in page.iter().filter(|r| r.status == Status::Failed) {
        assert_eq!(r.error_code.as_deref(), Some("secret_unavailable"), "{r:?}");
    }
    assert!(seen_after.0.lock().unwrap().is_empty(), "nothing ran with a redacted ('***') secret");
    let stats = sim.stats();
    assert!(stats.executions.values().all(|&n| n == 1));
    b.shutdown(Duration::from_secs(5)).await;
}

// ---- Hostile names never reach the remote side; hostile values reach it as literal data ----

const HOSTILE_VALUES: [&str; 9] = [
    "x; Remove-Mailbox -Identity user002 -Confirm:$false",
    "$(Remove-Mailbox user002)",
    "`$env:PATH`n`0",
    "'single' \"double\" ‘curly’ “quotes”",
    "<S>injected</S><Obj RefId=\"0\"><MS/></Obj>",
    "]]><!-- --><![CDATA[x]]>&amp;&lt;&#x41;",
    "_x0041_ _x000A_ line\nbreak\ttab",
    "| Out-File C:\\x.txt & whoami @args",
    "\u{0}\u{1b}[31m nul and escape",
];

#[tokio::test]
async fn hostile_names_are_refused_and_hostile_values_travel_as_data() {
    let app = start(&config_text(1, 1, 5, 1, "")).await;
    for cmdlet in [
        "Get-Mailbox; Remove-Mailbox",
        "Get-Mailbox | Remove-Mailbox",
        "Get-Mailbox -Identity x",
        "$(Remove-Mailbox)",
        "& Get-Mailbox",
        "Get-Mail`box",
        "Get-Mailbox'",
        "Get-Mailbox\n",
        "Invoke\u{2010}Expression",
        "Microsoft.PowerShell.Utility\\Invoke-Expression",
        "<Get-Mailbox/>",
    ] {
        let (s, b) = app.invoke(&tenant(0), cmdlet, json!({})).await;
        assert_eq!((s, code(&b)), (422, Some("invalid_cmdlet_name")), "{cmdlet:?}: {b}");
    }
    for name in ["-Identity", "Identity;x", "$x", "Identity Office", "a`b", "<x>", "Identity\u{0}", "Ïdentity"] {
        let (s, b) = app.invoke(&tenant(0), "Get-Mailbox", json!({ name: "user001" })).await;
        assert_eq!((s, code(&b)), (422, Some("invalid_parameter_name")), "{name:?}: {b}");
    }
    assert!(app.sim().stats().executions.is_empty(), "no hostile name reached the remote side");

    for value in HOSTILE_VALUES {
        let (_, set) = app.invoke(&tenant(0), "Set-Mailbox", json!({"Identity": "user001", "Office": value})).await;
        assert_eq!(set["status"], "succeeded", "{value:?}: {set}");
        let (_, get) = app.invoke(&tenant(0), "Get-Mailbox", json!({"Identity": "user001"})).await;
        assert_eq!(get["output"][0]["Office"], value, "the value came back byte for byte");
        // On the wire the value is one CLIXML string, whatever it contains.
        let wire = psbroker::remote::clixml::to_clixml(&PsValue::String(value.into()));
        assert!(wire.starts_with("<S>") && wire.ends_with("</S>") && wire.matches("<S>").count() == 1, "{wire}");
        assert_eq!(psbroker::remote::clixml::from_clixml(wire.as_bytes()).unwrap(), PsValue::String(value.into()));
    }
    let (_, get) = app.invoke(&tenant(0), "Get-Mailbox", json!({"Identity": "user002"})).await;
    assert_eq!(get["output"].as_array().unwrap().len(), 1, "user002 was never removed: {get}");
    app.stop().await;
}

/// Issue 8, finding 4: what a cmdlet does decides, not only its verb.
#[tokio::test]
async fn roles_reach_only_what_their_cmdlets_do_and_host_level_cmdlets_reach_no_one() {
    let app = start(&config_text(1, 1, 5, 1, "")).await;
    let reader = token(&app, "reader", "read-only", &tenant(0), "*", &[]).await;
    let purge = json!({"Identity": "user001", "SearchQuery": "x", "DeleteContent": true, "Force": true});
    let (s, b) = invoke_as(&app, &reader, &tenant(0), "Search-Mailbox", purge.clone()).await;
    assert_eq!((s, code(&b)), (403, Some("role_forbids_cmdlet")), "{b}");
    for host in ["Get-Content", "Get-ChildItem", "Test-NetConnection"] {
        let (s, b) = invoke_as(&app, &reader, &tenant(0), host, json!({"Path": "C:\\"})).await;
        assert_eq!((s, code(&b)), (403, Some("cmdlet_denied")), "{host}: {b}");
    }
    let operator = token(&app, "operator", "operator", "*", "*", &[]).await;
    for host in ["Set-Variable", "Set-Alias", "Stop-Process", "Stop-Computer", "Set-ItemProperty"] {
        let (s, b) = invoke_as(&app, &operator, &tenant(0), host, json!({"Name": "PSDefaultParameterValues"})).await;
        assert_eq!((s, code(&b)), (403, Some("cmdlet_denied")), "{host}: {b}");
    }
    for host in [
        "Register-ScheduledJob",
        "Start-ThreadJob",
        "Export-Clixml",
        "Tee-Object",
        "Start-Transcript",
        "New-CimSession",
    ] {
        let (s, b) = app.invoke(&tenant(0), host, json!({"Name": "x"})).await;
        assert_eq!((s, code(&b)), (403, Some("cmdlet_denied")), "{host} even for the admin: {b}");
    }
    assert!(app.sim().stats().executions.is_empty(), "nothing reached the tenant");

    // The admin may purge, but the purge is never taken for a read that may run twice.
    let body = json!({"tenant": tenant(0), "cmdlet": "Search-Mailbox", "parameters": purge, "wait": false});
    let (s, purged) = app.post("/v1/invocations", body).await;
    assert!(s == 200 || s == 202, "{purged}");
    let body =
        json!({"tenant": tenant(0), "cmdlet": "Search-Mailbox", "parameters": {"SearchQuery": "x"}, "wait": false});
    let (_, searched) = app.post("/v1/invocations", body).await;
    let store = Store::connect(&format!("sqlite://{}", app.dir.path().join("psbroker.db").display())).await.unwrap();
    let idempotent = |v: &Json| {
        let id = v["id"].as_str().unwrap().parse().unwrap();
        let store = store.clone();
        async move { store.get(id).await.unwrap().unwrap().accepted.idempotent }
    };
    assert!(!idempotent(&purged).await, "Search-Mailbox -DeleteContent is destructive, not a read");
    assert!(idempotent(&searched).await, "a plain search is a read");
    app.stop().await;
}

/// Issue 8, finding 8: the spellings PowerShell binds to a secret parameter, and values that
/// say they are secret, are never stored.
#[tokio::test]
async fn every_spelling_of_a_secret_is_redacted() {
    let app = start(&config_text(1, 1, 5, 1, "")).await;
    let store = Store::connect(&format!("sqlite://{}", app.dir.path().join("psbroker.db").display())).await.unwrap();
    for params in [
        json!({"Name": "a", "Pa": PASSWORD}),
        json!({"Name": "b", "Pwd": PASSWORD}),
        json!({"Name": "c", "Passw0rd": PASSWORD}),
        json!({"Name": "d", "SecureString": PASSWORD}),
        json!({"Name": "e", "PSCredential": {"UserName": "u", "Password": PASSWORD}}),
        json!({"Name": "f", "RemoteAccount": {"@type": "System.Management.Automation.PSCredential", "u": PASSWORD}}),
        json!({"Name": "g", "Settings": {"UserName": "u", "Pass": PASSWORD}}),
    ] {
        let body = json!({"tenant": tenant(0), "cmdlet": "New-MailUser", "parameters": params, "wait": false});
        let (s, r) = app.post("/v1/invocations", body).await;
        assert!(s == 200 || s == 202, "{r}");
        let stored = store.get(r["id"].as_str().unwrap().parse().unwrap()).await.unwrap().unwrap();
        let text = stored.accepted.parameters.to_string();
        assert!(!text.contains(PASSWORD) && text.contains("***"), "{params}: stored {text}");
        assert!(stored.accepted.redacted);
    }
    app.stop().await;
}
