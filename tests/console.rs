//! The web console (`/console`) and the read endpoints it uses.
//!
//! * `console_is_served_with_a_strict_policy`: the page and its assets without a token, each
//!   with the Content-Security-Policy and `nosniff`; nothing else under `/console`.
//! * `console_reads_respect_ownership_and_scopes`: `GET /v1/batches`, `/v1/batches/{id}/items`,
//!   `/v1/failures` and `/v1/whoami` for an admin and for a token scoped to one tenant: a token
//!   that is not an admin sees only its own batches and failures, filters work, bad filters are
//!   400.
//! * `console_in_a_real_browser`: headless Chromium (Debian's `chromium`) driven by Playwright
//!   (`playwright-core` from npm, pinned, installed by this test under target/node; a missing
//!   chromium, node or npm fails the test, never skips): sign in with a token, watch a batch
//!   progress to done, filter its items and the failures, read the audit, then see a scoped
//!   token's view limited to its tenant and its batch (tests/console/console_test.mjs).
//!   Screenshots go to target/console-screenshots; with `PSBROKER_UPDATE_SCREENSHOTS=1` they
//!   also replace the README's, docs/console-*.png.

mod common;

use common::tools;
use common::{config_text, tenant, TestApp};
use serde_json::{json, Value as Json};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The admin's and a scoped operator's clients (the scoped one may act on `tenant(1)` only).
async fn scoped_token(app: &TestApp) -> String {
    let spec = json!({"name": "helpdesk", "role": "operator", "tenants": tenant(1)});
    let (status, body) = app.post("/v1/tokens", spec).await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_string()
}

/// The scoped token's own batch on its tenant: one read that succeeds, one that fails in the
/// cmdlet (no such mailbox). Returns its id once it is done.
async fn scoped_batch(app: &TestApp, scoped: &reqwest::Client) -> String {
    let r = scoped
        .post(app.url("/v1/batches"))
        .json(&json!({"items": [
            {"tenant": tenant(1), "cmdlet": "Get-Mailbox", "parameters": {}},
            {"tenant": tenant(1), "cmdlet": "Get-Mailbox", "parameters": {"Identity": "nobody-here"}},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Json>().await.unwrap()["id"].as_str().unwrap().to_string();
    app.wait_batch(&id, Duration::from_secs(30)).await;
    id
}

async fn get(client: &reqwest::Client, url: String) -> (u16, Json) {
    let r = client.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Json::Null))
}

#[tokio::test]
async fn console_is_served_with_a_strict_policy() {
    let app = TestApp::start(&config_text(1, 1, 1, 1, "")).await;
    let anonymous = reqwest::Client::new();
    for (path, content_type) in [
        ("/console", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
        ("/console/favicon.svg", "image/svg+xml"),
    ] {
        let r = anonymous.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path} needs no token");
        let h = r.headers();
        assert!(h["content-type"].to_str().unwrap().starts_with(content_type), "{path}: {:?}", h["content-type"]);
        let csp = h["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "form-action 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "no-referrer");
    }
    for path in ["/console/app.js", "/console/index.html", "/console/"] {
        let r = anonymous.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    // The page is just a page: the data stays behind the token.
    let r = anonymous.get(app.url("/v1/batches")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn console_reads_respect_ownership_and_scopes() {
    let app = TestApp::start(&config_text(1, 3, 1, 1, "")).await;
    let scoped = psbroker::cli_token::bearer_client(&scoped_token(&app).await).unwrap();
    let (t1, t2) = (tenant(1), tenant(2));

    // The admin's batch on two tenants with unknown cmdlets, and the scoped token's.
    let mut items: Vec<Json> = (0..6)
        .map(|i| json!({"tenant": if i % 2 == 0 { &t1 } else { &t2 }, "cmdlet": "Get-Mailbox", "parameters": {}}))
        .collect();
    items.extend((0..3).map(|_| json!({"tenant": t2, "cmdlet": "Get-Nonexistent", "parameters": {}})));
    let admin_batch = app.submit_batch(items).await;
    let scoped_batch = scoped_batch(&app, &scoped).await;
    app.wait_batch(&admin_batch, Duration::from_secs(30)).await;

    // Batches: the admin sees both, newest first, with counts; the scoped token its own.
    let (status, all) = app.get("/v1/batches").await;
    assert_eq!(status, 200, "{all}");
    let ids: Vec<&str> = all["batches"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![scoped_batch.as_str(), admin_batch.as_str()]);
    let mine = &all["batches"][1];
    assert_eq!(
        (mine["total"].as_i64(), mine["succeeded"].as_i64(), mine["failed"].as_i64()),
        (Some(9), Some(6), Some(3))
    );
    assert_eq!((mine["done"].as_bool(), mine["owner"].as_str()), (Some(true), Some("bootstrap")));
    assert!(mine["created_at"].as_str().unwrap().ends_with('Z'));
    let (_, page) = app.get("/v1/batches?limit=1").await;
    assert_eq!(page["next"].as_str(), Some(scoped_batch.as_str()));
    let (_, older) = app.get(&format!("/v1/batches?limit=1&after={scoped_batch}")).await;
    assert_eq!(older["batches"][0]["id"].as_str(), Some(admin_batch.as_str()));
    let (_, theirs) = get(&scoped, app.url("/v1/batches")).await;
    let ids: Vec<&str> = theirs["batches"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![scoped_batch.as_str()], "a scoped token sees its own batches only");

    // Items, filtered by status and by code, with their position in the batch.
    let (status, failed) = app.get(&format!("/v1/batches/{admin_batch}/items?status=failed")).await;
    assert_eq!(status, 200, "{failed}");
    let failed = failed["items"].as_array().unwrap();
    assert_eq!(failed.iter().map(|i| i["seq"].as_i64().unwrap()).collect::<Vec<_>>(), vec![6, 7, 8]);
    assert!(failed.iter().all(|i| i["error"]["code"] == "unknown_cmdlet"));
    let (_, page) = app.get(&format!("/v1/batches/{admin_batch}/items?limit=4")).await;
    assert_eq!((page["items"].as_array().unwrap().len(), page["next"].as_i64()), (4, Some(3)));
    let (_, rest) = app.get(&format!("/v1/batches/{admin_batch}/items?after=3&code=unknown_cmdlet")).await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 3);
    let (_, none) = app.get(&format!("/v1/batches/{admin_batch}/items?status=succeeded&code=unknown_cmdlet")).await;
    assert_eq!(none["items"], json!([]));
    for bad in ["status=done", "limit=0", "limit=501", "colour=red"] {
        let (status, body) = app.get(&format!("/v1/batches/{admin_batch}/items?{bad}")).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_request")), "{bad}: {body}");
    }
    let (status, _) = get(&scoped, app.url(&format!("/v1/batches/{admin_batch}/items"))).await;
    assert_eq!(status, 404, "someone else's batch does not exist for a scoped token");

    // Failures by code, with the service's message and the tenants.
    let (status, report) = app.get("/v1/failures").await;
    assert_eq!(status, 200, "{report}");
    let codes: Vec<&str> = report["codes"].as_array().unwrap().iter().map(|g| g["code"].as_str().unwrap()).collect();
    assert_eq!(codes, vec!["unknown_cmdlet", "cmdlet_error"], "most frequent first");
    let unknown = &report["codes"][0];
    assert_eq!((unknown["count"].as_i64(), unknown["tenant_count"].as_i64()), (Some(3), Some(1)));
    assert_eq!(unknown["tenants"], json!([{"tenant": t2, "count": 3}]));
    let message = unknown["messages"][0]["message"].as_str().unwrap();
    assert!(message.contains("'Get-Nonexistent' is not recognized"), "the service's own words: {message}");
    let example = unknown["messages"][0]["example"].as_str().unwrap();
    let (status, invocation) = app.get(&format!("/v1/invocations/{example}")).await;
    assert_eq!((status, invocation["error"]["code"].as_str()), (200, Some("unknown_cmdlet")));
    assert!(report["since"].is_string() && report["until"].is_null(), "the default window: {report}");
    let (_, theirs) = get(&scoped, app.url("/v1/failures")).await;
    let codes: Vec<&str> = theirs["codes"].as_array().unwrap().iter().map(|g| g["code"].as_str().unwrap()).collect();
    assert_eq!(codes, vec!["cmdlet_error"], "a scoped token sees its own failures only: {theirs}");
    let (_, in_batch) = app.get(&format!("/v1/failures?batch={scoped_batch}")).await;
    assert_eq!(in_batch["codes"][0]["code"], "cmdlet_error");
    assert!(in_batch["since"].is_null(), "a batch's failures cover the whole batch");
    let (_, by_tenant) = app.get(&format!("/v1/failures?tenant={t1}")).await;
    assert_eq!(by_tenant["codes"].as_array().unwrap().len(), 1);
    let (_, later) = app.get("/v1/failures?since=2999-01-01T00:00:00Z").await;
    assert_eq!(later["codes"], json!([]));
    let (status, _) = get(&scoped, app.url(&format!("/v1/failures?batch={admin_batch}"))).await;
    assert_eq!(status, 404);
    let (status, body) = app.get("/v1/failures?since=yesterday").await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_request")));

    // Who am I.
    let (_, me) = get(&scoped, app.url("/v1/whoami")).await;
    assert_eq!(me, json!({"name": "helpdesk", "role": "operator", "tenants": t1, "cmdlets": "*", "constraints": []}));
    let (_, admin) = app.get("/v1/whoami").await;
    assert_eq!((admin["name"].as_str(), admin["role"].as_str()), (Some("bootstrap"), Some("admin")));
    app.stop().await;
}

// ---- in a real browser -------------------------------------------------------------------

const PLAYWRIGHT_CORE: (&str, &str) = ("playwright-core", "1.65.1");

fn target_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp.
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).to_path_buf()
}

/// `node_modules` with playwright-core at the pinned version, installed from npm the first time.
fn node_modules(npm: &Path) -> PathBuf {
    let prefix = target_dir().join("node");
    let modules = prefix.join("node_modules");
    let (name, version) = PLAYWRIGHT_CORE;
    let installed = || {
        std::fs::read_to_string(modules.join(name).join("package.json"))
            .ok()
            .and_then(|text| serde_json::from_str::<Json>(&text).ok())
            .is_some_and(|p| p["version"] == version)
    };
    if !installed() {
        std::fs::create_dir_all(&prefix).unwrap();
        tools::run_ok(
            std::process::Command::new(npm)
                .arg("install")
                .arg("--prefix")
                .arg(&prefix)
                .args(["--no-save", "--no-audit", "--no-fund", "--loglevel=error"])
                .arg(format!("{name}@{version}")),
            &format!("npm install {name}@{version}"),
        );
        assert!(installed(), "{name}@{version} is still not in {}", modules.display());
    }
    modules
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_real_browser() {
    let chromium = tools::require("chromium", "PSBROKER_CHROMIUM", "chromium");
    let node = tools::require("node", "PSBROKER_NODE", "nodejs");
    let npm = tools::require("npm", "PSBROKER_NPM", "npm");
    let modules = tokio::task::spawn_blocking(move || node_modules(&npm)).await.unwrap();

    // Commands take 1 s so a batch runs long enough to be watched.
    let app = TestApp::start(&config_text(2, 4, 50, 1000, "")).await;
    let scoped = scoped_token(&app).await;
    let scoped_batch = scoped_batch(&app, &psbroker::cli_token::bearer_client(&scoped).unwrap()).await;

    let shots = target_dir().join("console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/console_test.mjs");
    let run = tokio::process::Command::new(node)
        .arg(&script)
        .env("PSBROKER_URL", app.url(""))
        .env("ADMIN_TOKEN", &app.token)
        .env("SCOPED_TOKEN", &scoped)
        .env("SCOPED_TENANT", tenant(1))
        .env("SCOPED_BATCH", &scoped_batch)
        .env("OTHER_TENANT", tenant(2))
        .env("CHROMIUM", &chromium)
        .env("NODE_MODULES", &modules)
        .env("SHOTS", &shots)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the browser test ended in 3 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Json = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("the browser test printed no report ({}):\n{stdout}\n{stderr}", out.status));
    assert!(
        out.status.success() && report["problems"] == json!([]),
        "the console in Chromium:\n{}\nobserved: {}\n{stderr}",
        report["problems"]
            .as_array()
            .map(|p| p.iter().map(|x| x.as_str().unwrap_or("").to_string()).collect::<Vec<_>>().join("\n"))
            .unwrap_or_default(),
        report["observed"]
    );
    println!("observed: {}", report["observed"]);

    if std::env::var_os("PSBROKER_UPDATE_SCREENSHOTS").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        for name in ["pools", "batch-running", "batch", "failures", "audit", "scoped"] {
            let file = format!("console-{name}.png");
            std::fs::copy(shots.join(&file), docs.join(&file)).unwrap();
        }
    }
    app.stop().await;
}
