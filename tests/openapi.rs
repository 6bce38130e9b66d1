//! The OpenAPI document (`GET /openapi.json`, `src/api/openapi.json`) against the server.
//!
//! * `the_document_and_the_router_agree`: the document's operations are exactly the router's
//!   routes (`api::ROUTES`, from which the router is built); each answers on the running daemon
//!   (no "route not found", no 405), every other method on a documented path is 405 with the
//!   right `Allow`, and the document's security matches who gets 401.
//! * `schemathesis_finds_nothing`: schemathesis (pinned, from PyPI, in its own virtualenv — see
//!   `common::pyenv`; a missing Python fails, never skips) fuzzes the real daemon on the demo
//!   configuration (simulated service, auth on) with every check it has: no 5xx, every status,
//!   content type, header and body as documented, schema-invalid input refused, schema-valid
//!   input accepted. Its hooks and configuration are in `tests/schemathesis/`.

mod common;

use common::daemon::Daemon;
use common::{config_text, TestApp};
use psbroker::api::{OPENAPI_DOCUMENT, ROUTES};
use serde_json::Value as Json;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

const SCHEMATHESIS: &str = "schemathesis==4.32.5";
/// Examples per operation and phase: enough to find shape bugs, small enough that the run stays
/// under a minute against a debug build on two cores (plus the venv's first install).
const EXAMPLES: &str = "100";
const SEED: &str = "20261123";

fn document() -> Json {
    serde_json::from_str(OPENAPI_DOCUMENT).expect("src/api/openapi.json is JSON")
}

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// `(METHOD, path)` of every operation in the document.
fn operations(doc: &Json) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if METHODS.contains(&method.to_uppercase().as_str()) {
                ops.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

/// Follows a local `$ref` (`#/components/...`).
fn resolve<'a>(doc: &'a Json, reference: &str) -> Option<&'a Json> {
    doc.pointer(reference.strip_prefix('#')?)
}

fn refs(value: &Json, out: &mut Vec<String>) {
    match value {
        Json::Object(map) => {
            if let Some(Json::String(r)) = map.get("$ref") {
                out.push(r.clone());
            }
            map.values().for_each(|v| refs(v, out));
        }
        Json::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

fn concrete(path: &str) -> String {
    path.replace("{id}", "0195b4ba-8d3a-7f13-8c2a-5f0c1d2e3f40").replace("{name}", "no-such-token")
}

#[tokio::test]
async fn the_document_and_the_router_agree() {
    let doc = document();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "an OpenAPI 3 document");
    let documented = operations(&doc);
    let routed: BTreeSet<(String, String)> = ROUTES.iter().map(|&(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(routed.len(), ROUTES.len(), "ROUTES lists a route twice");
    let missing: Vec<_> = routed.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&routed).collect();
    assert!(missing.is_empty(), "routes the document does not describe: {missing:?}");
    assert!(extra.is_empty(), "documented operations the router does not serve: {extra:?}");

    let mut all = Vec::new();
    refs(&doc, &mut all);
    for r in &all {
        assert!(resolve(&doc, r).is_some(), "dangling $ref {r}");
    }
    let error_envelope = resolve(&doc, "#/components/schemas/Error").unwrap();
    assert_eq!(error_envelope["required"], serde_json::json!(["error"]));
    // Every error code the document names is in the list of stable codes.
    let errors_md = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/errors.md")).unwrap();
    for (name, response) in doc["components"]["responses"].as_object().unwrap() {
        let description = response["description"].as_str().unwrap();
        for code in
            description.split('`').skip(1).step_by(2).filter(|c| c.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        {
            assert!(
                errors_md.contains(&format!("`{code}`")),
                "{name} names `{code}`, which docs/errors.md does not list"
            );
        }
    }

    let app = TestApp::start(&config_text(1, 1, 1, 1, "")).await;
    let anonymous = reqwest::Client::new();
    for (method, path) in &documented {
        let url = app.url(&concrete(path));
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        // With the admin token: the route exists and takes this method. (An empty JSON body where
        // one is expected: refused with 400, which is fine here.)
        let r = app.client.request(m.clone(), &url).header("content-type", "application/json").send().await.unwrap();
        let status = r.status().as_u16();
        let body: Json = r.json().await.unwrap_or(Json::Null);
        assert_ne!(status, 405, "{method} {path}: {body}");
        assert!(
            !(status == 404 && body["error"]["message"] == "route not found"),
            "{method} {path} is documented but not routed"
        );
        let operation = &doc["paths"][path][method.to_lowercase()];
        assert!(operation["responses"].get(status.to_string()).is_some(), "{method} {path}: {status} undocumented");

        // Without a token: 401 exactly where the document asks for one.
        let security = operation.get("security").unwrap_or(&doc["security"]);
        let security = security.as_array().unwrap();
        let optional = security.is_empty() || security.iter().any(|s| s.as_object().is_some_and(|o| o.is_empty()));
        let status = anonymous.request(m, &url).send().await.unwrap().status().as_u16();
        assert_eq!(status == 401, !optional, "{method} {path} without a token answered {status}");
    }

    // Every other method on a documented path: 405, the envelope, and `Allow` naming exactly
    // the documented methods.
    let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    for path in paths {
        let mine: BTreeSet<&str> = documented.iter().filter(|(_, p)| p == path).map(|(m, _)| m.as_str()).collect();
        for method in METHODS.iter().filter(|m| !mine.contains(*m)) {
            let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let r = app.client.request(m, app.url(&concrete(path))).send().await.unwrap();
            assert_eq!(r.status(), 405, "{method} {path}");
            let allow: BTreeSet<String> = r.headers()["allow"]
                .to_str()
                .unwrap()
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|m| m != "HEAD")
                .collect();
            assert_eq!(allow, mine.iter().map(|m| m.to_string()).collect(), "Allow of {path}");
            let body: Json = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "method_not_allowed", "{method} {path}: {body}");
        }
    }

    // Served as it is, without a token.
    let r = anonymous.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.text().await.unwrap(), OPENAPI_DOCUMENT);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing() {
    let venv = tokio::task::spawn_blocking(|| common::pyenv::venv("schemathesis", &[SCHEMATHESIS]))
        .await
        .expect("venv setup task");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("psbroker.db").display());
    // The demo configuration as shipped (six tenants, two admins, the simulated service over
    // the real wire protocol, auth on), on a free port and a fresh database. A waiting
    // invocation holds its request at most 5 s, so a fuzzed one cannot stall the run.
    let mut daemon = Daemon::start_with_env(
        &manifest.join("config/psbroker.toml"),
        "info",
        &[
            ("PSBROKER_SERVER__LISTEN", "127.0.0.1:0"),
            ("PSBROKER_STORE__URL", &store),
            ("PSBROKER_SERVER__MAX_WAIT_SECONDS", "5"),
            // Schemathesis sends as fast as the daemon answers, one token: the intake rate
            // limit (tests/hardening.rs) would answer 429 to valid input it then counts as refused.
            ("PSBROKER_SERVER__RATE_LIMIT__REQUESTS_PER_SECOND", "0"),
            ("PSBROKER_SERVER__RATE_LIMIT__ITEMS_PER_SECOND", "0"),
        ],
    );
    let token = std::fs::read_to_string(dir.path().join("api-token")).expect("bootstrap token");
    let hooks = manifest.join("tests/schemathesis");
    let work = dir.path().join("schemathesis");
    std::fs::create_dir_all(&work).unwrap();

    let started = Instant::now();
    // `python -m` rather than the console script, whose shebang breaks if the venv is moved.
    let run = tokio::process::Command::new(&venv.python)
        .args(["-m", "schemathesis.cli"])
        .arg("--config-file")
        .arg(hooks.join("schemathesis.toml"))
        .args(["run", &format!("{}/openapi.json", daemon.url)])
        .args(["--header", &format!("Authorization: Bearer {}", token.trim())])
        // Every check schemathesis has (the config file widens positive_data_acceptance by 422
        // for unknown tenants and admins, and hooks.py narrows that back), except one:
        // use_after_free wants a resource to be gone after a successful DELETE, but
        // `DELETE /v1/batches/{id}` *cancels* what has not started, and the batch, its counts
        // and results stay readable on purpose; the API's only other DELETE (a token) has no
        // read to check. Excluding it per operation in the config file does not reach the
        // stateful phase.
        .args(["--checks", "all", "--exclude-checks", "use_after_free"])
        .args(["--max-examples", EXAMPLES, "--seed", SEED])
        // The seed makes the cases the same every run; no example database is kept anywhere.
        .args(["--generation-database", "none"])
        .args(["--workers", "1", "--request-timeout", "30"])
        // Hypothesis' "generating data is slow" health check measures this machine's load, not
        // the server: on a busy two-core CI box it would fail the run for nothing.
        .args(["--suppress-health-check", "too_slow"])
        .arg("--no-color")
        .current_dir(&work)
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", &hooks)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("schemathesis did not finish in 10 minutes")
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let log_lines = daemon.log.clone();
    let log = || log_lines.lock().unwrap().join("\n");
    assert!(
        out.status.success(),
        "schemathesis exited with {}:\n{stdout}\n{stderr}\n--- daemon log (tail)\n{}",
        out.status,
        tail(&log(), 60)
    );
    println!("schemathesis took {:.0?}:\n{stdout}", started.elapsed());
    // It really ran: every operation but the document itself, through every phase.
    let operations = operations(&document()).len() - 1;
    assert!(stdout.contains(&format!("Tested: {operations}")), "not every operation was tested:\n{stdout}");
    for phase in ["Examples", "Coverage", "Fuzzing", "Stateful"] {
        assert!(stdout.contains(&format!("✅ {phase}")), "phase {phase} did not pass:\n{stdout}");
    }

    // The daemon survived it, still answers, and never panicked or hid an internal error.
    assert!(daemon.child.try_wait().unwrap().is_none(), "the daemon died:\n{}", tail(&log(), 60));
    let health = reqwest::get(format!("{}/healthz", daemon.url)).await.expect("healthz answers");
    assert_eq!(health.status(), 200);
    let log_text = log();
    for bad in ["panicked", "internal error"] {
        assert!(!log_text.contains(bad), "the daemon log says '{bad}':\n{}", tail(&log_text, 60));
    }
    assert!(daemon.terminate(), "SIGTERM after the run exits 0");
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
