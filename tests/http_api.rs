//! End to end through HTTP: the real server on an ephemeral port, the simulator as the peer.

mod common;

use common::{config_text, tenant, TestApp};
use serde_json::{json, Value as Json};
use std::time::{Duration, Instant};

/// The value of one series in Prometheus text (every fault class is a series from the start).
fn counter(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no series {series}"))
}

#[tokio::test]
async fn get_mailbox_returns_the_simulators_mailboxes() {
    let app = TestApp::start(&config_text(1, 2, 5, 1, "")).await;
    let (status, body) = app.invoke(&tenant(1), "Get-Mailbox", json!({"ResultSize": 5})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "succeeded", "{body}");
    let out = body["output"].as_array().unwrap();
    assert_eq!(out.len(), 5);
    for mbx in out {
        assert!(mbx["PrimarySmtpAddress"].as_str().unwrap().ends_with("@t001.onmicrosoft.com"), "{mbx}");
        assert!(mbx["@types"][0].as_str().unwrap().contains("Mailbox"));
    }
    assert_eq!(body["attempts"], 1);
    assert_eq!(body["admin"], "a0");
    app.stop().await;
}

#[tokio::test]
async fn set_mailbox_is_visible_to_a_later_get_mailbox() {
    let app = TestApp::start(&config_text(1, 1, 5, 1, "")).await;
    let t = tenant(0);
    let (_, set) = app
        .invoke(&t, "Set-Mailbox", json!({"Identity": "user001", "Office": "Building 7; $(rm -rf /) `whoami`"}))
        .await;
    assert_eq!(set["status"], "succeeded", "{set}");
    let (_, get) = app.invoke(&t, "Get-Mailbox", json!({"Identity": "user001"})).await;
    assert_eq!(get["output"][0]["Office"], "Building 7; $(rm -rf /) `whoami`", "parameter values travel as data");
    app.stop().await;
}

#[tokio::test]
async fn thousand_item_batch_over_40_tenants_keeps_every_cap() {
    let app = TestApp::start(&config_text(2, 40, 20, 2, "")).await;
    let items: Vec<Json> = (0..1000)
        .map(|i| json!({"tenant": tenant(i % 40), "cmdlet": "Get-Mailbox", "parameters": {"Identity": format!("user{:03}", i % 10 + 1)}}))
        .collect();
    let id = app.submit_batch(items).await;
    let counts = app.wait_batch(&id, Duration::from_secs(120)).await;
    assert_eq!(counts["succeeded"], 1000, "{counts}");
    let stats = app.sim().stats();
    assert!(stats.max_by_user.values().all(|&n| n <= 3), "per-admin high-water marks {:?}", stats.max_by_user);
    assert!(stats.max_by_tenant.values().all(|&n| n <= 20), "per-tenant high-water marks {:?}", stats.max_by_tenant);
    assert_eq!(stats.max_by_user.values().max(), Some(&3), "both admins' caps were used");
    assert!(stats.executions.values().all(|&n| n == 1), "nothing ran twice");
    let lines = app.get_text(&format!("/v1/batches/{id}/results")).await;
    let results: Vec<Json> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(results.len(), 1000);
    assert!(results.iter().all(|r| r["status"] == "succeeded" && r["output"].as_array().unwrap().len() == 1));
    app.stop().await;
}

#[tokio::test]
async fn sessions_recycle_across_a_short_lifetime_without_failures() {
    // The service kills shells after 2 s; the broker retires them at 1.5 s (minus jitter).
    let extra = "session_max_age_seconds = 1.5";
    let text = config_text(1, 2, 20, 10, extra).replace("[simulator]\n", "[simulator]\nshell_lifetime_seconds = 2.0\n");
    let app = TestApp::start(&text).await;
    let items: Vec<Json> = (0..500)
        .map(|i| json!({"tenant": tenant(i % 2), "cmdlet": "Get-Mailbox", "parameters": {"ResultSize": 1}}))
        .collect();
    let id = app.submit_batch(items).await;
    let counts = app.wait_batch(&id, Duration::from_secs(60)).await;
    assert_eq!(counts["succeeded"], 500, "{counts}");
    assert_eq!(counts["failed"], 0);
    let stats = app.sim().stats();
    assert!(stats.shells_opened >= 4, "sessions were recycled: {} opened", stats.shells_opened);
    app.stop().await;
}

#[tokio::test]
async fn shells_that_expire_under_the_broker_are_reopened_transparently() {
    // The broker believes sessions live 10 minutes; the service kills them after 1 s.
    let text = config_text(1, 1, 10, 10, "").replace("[simulator]\n", "[simulator]\nshell_lifetime_seconds = 1.0\n");
    let app = TestApp::start(&text).await;
    let items: Vec<Json> = (0..300).map(|_| json!({"tenant": tenant(0), "cmdlet": "Set-Mailbox", "parameters": {"Identity": "user002", "Office": "x"}})).collect();
    let id = app.submit_batch(items).await;
    let counts = app.wait_batch(&id, Duration::from_secs(60)).await;
    assert_eq!(counts["succeeded"], 300, "{counts}");
    let stats = app.sim().stats();
    assert!(stats.shells_expired >= 1, "shells expired under the broker");
    assert!(stats.executions.values().all(|&n| n == 1), "a retried command never ran twice");
    let metrics = app.get_text("/metrics").await;
    assert!(counter(&metrics, "psbroker_invocation_retries_total{class=\"session_expired\"}") >= 1.0, "{metrics}");
    app.stop().await;
}

#[tokio::test]
async fn each_mistake_gets_its_own_code() {
    let text = config_text(2, 2, 5, 1, "").replace(
        "[[tenants]]\ndomain = \"t001.onmicrosoft.com\"\n",
        "[[tenants]]\ndomain = \"t001.onmicrosoft.com\"\n[[tenants]]\ndomain = \"locked.onmicrosoft.com\"\n",
    );
    let app = TestApp::start(&text).await;
    let (s, b) = app.invoke("nowhere.onmicrosoft.com", "Get-Mailbox", json!({})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (422, Some("unknown_tenant")), "{b}");

    let (s, b) = app.invoke(&tenant(0), "Get-Mailboxx", json!({})).await;
    assert_eq!(s, 200);
    assert_eq!((b["status"].as_str(), b["error"]["code"].as_str()), (Some("failed"), Some("unknown_cmdlet")), "{b}");
    assert_eq!(b["errors"][0]["fully_qualified_error_id"], "CommandNotFoundException");

    let (s, b) = app.invoke(&tenant(0), "Get-Mailbox", json!({"NoSuchParameter": 1})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (200, Some("invalid_parameter")), "{b}");

    let (s, b) = app.post_raw("/v1/invocations", "application/json", "{\"tenant\": ").await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_json")), "{b}");

    let (s, b) =
        app.post("/v1/invocations", json!({"tenant": tenant(0), "cmdlet": "Get-Mailbox", "colour": "red"})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_request")), "{b}");

    let (s, b) = app.invoke(&tenant(0), "Get-Mailbox; Remove-Mailbox", json!({})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (422, Some("invalid_cmdlet_name")), "{b}");

    let (s, b) = app.get("/v1/invocations/not-a-uuid").await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("not_found")), "{b}");

    // a1's password changed at the service: its opens fail logon, and the work moves to a0.
    app.sim().set_password("a1@partner.onmicrosoft.com", "rotated");
    let (s, b) = app.post("/v1/invocations", json!({"tenant": tenant(1), "cmdlet": "Get-User", "admin": "a1"})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (200, Some("logon_failed")), "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("Logon failed for the user 'a1@partner.onmicrosoft.com'"));
    let (_, b) = app.invoke(&tenant(1), "Get-User", json!({"ResultSize": 1})).await;
    assert_eq!(b["status"], "succeeded", "unpinned work uses the admin that can log on: {b}");

    app.sim().set_remote_powershell_enabled("locked.onmicrosoft.com", false);
    let (_, b) = app.invoke("locked.onmicrosoft.com", "Get-Mailbox", json!({})).await;
    assert_eq!(b["error"]["code"], "tenant_remote_powershell_disabled", "{b}");
    app.stop().await;
}

/// Found by the schemathesis run (tests/openapi.rs): what the OpenAPI document promises, the
/// server now does.
#[tokio::test]
async fn bodies_need_a_json_type_timeouts_may_be_whole_floats_and_keys_count_characters() {
    let app = TestApp::start(&config_text(1, 1, 5, 1, "")).await;
    let item = json!({"tenant": tenant(0), "cmdlet": "Get-Mailbox", "parameters": {"ResultSize": 1}});
    // No JSON content type (a browser's cross-origin "simple request", curl -d): 415, nothing runs.
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
        for path in ["/v1/invocations", "/v1/batches", "/v1/tokens"] {
            let body = if path == "/v1/batches" { json!({"items": [item]}) } else { item.clone() };
            let (s, b) = app.post_raw(path, content_type, body.to_string()).await;
            assert_eq!((s, b["error"]["code"].as_str()), (415, Some("unsupported_media_type")), "{path} {b}");
        }
    }
    let r = app.client.post(app.url("/v1/invocations")).body(item.to_string()).send().await.unwrap();
    assert_eq!(r.status(), 415, "no content type at all");
    assert!(app.sim().stats().executions.is_empty(), "nothing ran");
    let (s, b) = app.post_raw("/v1/invocations", "application/json; charset=utf-8", item.to_string()).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("succeeded")), "{b}");
    let (s, b) = app.post_raw("/v1/invocations", "application/vnd.psbroker+json", item.to_string()).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("succeeded")), "{b}");

    // JSON Schema's integer 30.0 is the whole number 30.
    let (s, b) =
        app.post("/v1/invocations", json!({"tenant": tenant(0), "cmdlet": "Get-User", "timeout_seconds": 30.0})).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("succeeded")), "{b}");
    let (s, b) =
        app.post("/v1/invocations", json!({"tenant": tenant(0), "cmdlet": "Get-User", "timeout_seconds": 30.5})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_request")), "{b}");
    let items = json!({"items": [{"tenant": tenant(0), "cmdlet": "Get-User", "timeout_seconds": 60.0}]});
    assert_eq!(app.post("/v1/batches", items).await.0, 202);

    // An idempotency key is at most 200 characters, not bytes.
    let key = "ü".repeat(200);
    let (s, b) =
        app.post("/v1/invocations", json!({"tenant": tenant(0), "cmdlet": "Get-User", "idempotency_key": key})).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("succeeded")), "{b}");
    let key = "ü".repeat(201);
    let (s, b) =
        app.post("/v1/invocations", json!({"tenant": tenant(0), "cmdlet": "Get-User", "idempotency_key": key})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (422, Some("invalid_idempotency_key")), "{b}");

    // Another method on a known path: 405 with the envelope and Allow.
    let r = app.client.put(app.url("/v1/pools")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET,HEAD");
    let b: Json = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "method_not_allowed", "{b}");
    app.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_prevents_a_second_execution() {
    let app = TestApp::start(&config_text(1, 1, 5, 1, "")).await;
    let body = json!({"tenant": tenant(0), "cmdlet": "New-MailUser", "idempotency_key": "create-jdoe",
        "parameters": {"Name": "jdoe", "ExternalEmailAddress": "jdoe@example.com"}});
    let (s1, first) = app.post("/v1/invocations", body.clone()).await;
    let (s2, second) = app.post("/v1/invocations", body.clone()).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(first["status"], "succeeded", "{first}");
    assert_eq!(first["id"], second["id"]);
    let id: uuid::Uuid = first["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(app.sim().stats().executions.get(&id), Some(&1));
    let mut other = body.clone();
    other["parameters"]["Name"] = json!("someone-else");
    let (s3, conflict) = app.post("/v1/invocations", other).await;
    assert_eq!((s3, conflict["error"]["code"].as_str()), (409, Some("idempotency_conflict")));
    app.stop().await;
}

#[tokio::test]
async fn metrics_show_sessions_and_invocations() {
    let app = TestApp::start(&config_text(1, 1, 5, 1, "")).await;
    app.invoke(&tenant(0), "Get-AcceptedDomain", json!({})).await;
    let text = app.get_text("/metrics").await;
    assert!(text.contains("psbroker_invocations_total{code=\"\",outcome=\"succeeded\"} 1"), "{text}");
    assert!(text.contains("psbroker_sessions{state=\"idle\"} 1"), "{text}");
    assert!(text.contains("psbroker_session_open_seconds_count{admin=\"a0\"} 1"), "{text}");
    assert!(!text.contains("t000.onmicrosoft.com"), "no tenant labels unless enabled");
    let (_, sessions) = app.get("/v1/sessions").await;
    assert_eq!(sessions["sessions"][0]["tenant"], tenant(0));
    let (_, pools) = app.get("/v1/pools").await;
    assert_eq!(pools["admins"][0]["open"], 1);
    assert_eq!(pools["tenants"][0]["cap"], 20);
    assert_eq!(app.get("/readyz").await.0, 200);
    app.stop().await;
}

#[tokio::test]
async fn cancelling_a_batch_stops_what_has_not_started() {
    let app = TestApp::start(&config_text(1, 1, 5, 20, "")).await;
    let items: Vec<Json> = (0..200).map(|_| json!({"tenant": tenant(0), "cmdlet": "Get-Mailbox"})).collect();
    let id = app.submit_batch(items).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = app.client.delete(app.url(&format!("/v1/batches/{id}"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let counts = app.wait_batch(&id, Duration::from_secs(30)).await;
    let (ok, cancelled) = (counts["succeeded"].as_i64().unwrap(), counts["cancelled"].as_i64().unwrap());
    assert!(cancelled > 100, "{counts}");
    assert_eq!(ok + cancelled, 200, "{counts}");
    assert_eq!(app.sim().stats().executions.len() as i64, ok, "no cancelled item ran");
    app.stop().await;
}

#[tokio::test]
async fn shells_held_outside_the_broker_lower_its_cap_and_nothing_fails() {
    let text = config_text(1, 3, 10, 5, "");
    let app = TestApp::start(&format!("{text}\n[scheduler]\nquota_cooldown_seconds = 1\n")).await;
    let sim = app.sim();
    // Someone else holds two of a0's three shells.
    let held: Vec<String> = (0..2)
        .map(|_| sim.open_shell("a0@partner.onmicrosoft.com", "pw0", &tenant(0), "Microsoft.Exchange").unwrap())
        .collect();
    let items: Vec<Json> = (0..60).map(|i| json!({"tenant": tenant(i % 3), "cmdlet": "Get-Mailbox"})).collect();
    let id = app.submit_batch(items).await;
    // The quota fault lowers the cap for the (1 s) cool-down: watch for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, pools) = app.get("/v1/pools").await;
        if pools["admins"][0]["effective_cap"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the cap never went down to the one free slot: {pools}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for shell in held {
        sim.close_shell(&shell).unwrap();
    }
    let counts = app.wait_batch(&id, Duration::from_secs(60)).await;
    assert_eq!((counts["succeeded"].as_i64(), counts["failed"].as_i64()), (Some(60), Some(0)), "{counts}");
    let metrics = app.get_text("/metrics").await;
    assert!(counter(&metrics, "psbroker_remote_faults_total{class=\"user_shell_quota_exceeded\"}") >= 1.0, "{metrics}");
    app.stop().await;
}

#[tokio::test]
async fn queued_work_survives_a_restart_and_shutdown_closes_every_shell() {
    let text = config_text(1, 2, 5, 30, "");
    let app = TestApp::start(&text).await;
    let items: Vec<Json> = (0..100).map(|i| json!({"tenant": tenant(i % 2), "cmdlet": "Get-Mailbox"})).collect();
    let id = app.submit_batch(items).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sim = app.sim();
    let dir = app.stop().await;
    assert!(
        sim.stats().open_by_user.values().all(|&n| n == 0),
        "shutdown closed every shell: {:?}",
        sim.stats().open_by_user
    );

    let app = TestApp::start_in(&text, dir).await;
    let counts = app.wait_batch(&id, Duration::from_secs(60)).await;
    assert_eq!(counts["succeeded"], 100, "{counts}");
    app.stop().await;
}

#[tokio::test]
async fn ndjson_batches_and_bad_items_lose_nothing() {
    let app = TestApp::start(&config_text(1, 2, 5, 1, "")).await;
    let ndjson = format!(
        "{}\n\n{}\n",
        json!({"tenant": tenant(0), "cmdlet": "Get-User", "parameters": {"ResultSize": 2}}),
        json!({"tenant": tenant(1), "cmdlet": "Get-AcceptedDomain"})
    );
    let (s, b) = app.post_raw("/v1/batches", "application/x-ndjson", ndjson).await;
    assert_eq!(s, 202, "{b}");
    assert_eq!(b["total"], 2);
    let counts = app.wait_batch(b["id"].as_str().unwrap(), Duration::from_secs(20)).await;
    assert_eq!(counts["succeeded"], 2);

    let bad = format!(
        "{}\n{}\n",
        json!({"tenant": tenant(0), "cmdlet": "Get-User"}),
        json!({"tenant": "x.example", "cmdlet": "Get-User"})
    );
    let (s, b) = app.post_raw("/v1/batches", "application/x-ndjson", bad).await;
    assert_eq!((s, b["error"]["code"].as_str()), (422, Some("unknown_tenant")), "{b}");
    assert_eq!(b["error"]["details"]["index"], 1);
    let (s, b) = app.post_raw("/v1/batches", "application/x-ndjson", "{\"tenant\": \"a\"\n").await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_json")), "{b}");
    assert!(b["error"]["message"].as_str().unwrap().starts_with("line 1"));

    // Items are stored a chunk at a time inside one transaction: a bad item far past the first
    // chunks still leaves nothing of its batch behind.
    let item = |i: usize| json!({"tenant": tenant(i as u32 % 2), "cmdlet": "Get-User", "parameters": {"Identity": format!("u{i}")}});
    let lines = |bad_at: usize, bad: &str| {
        (0..1600)
            .map(|i| if i == bad_at { bad.to_string() } else { item(i).to_string() })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let unknown = json!({"tenant": "x.example", "cmdlet": "Get-User"}).to_string();
    for (body, status, code, index) in [
        (lines(1234, &unknown), 422, "unknown_tenant", Some(1234)),
        (
            lines(1599, &json!({"tenant": tenant(0), "cmdlet": "Invoke-Expression"}).to_string()),
            403,
            "cmdlet_denied",
            Some(1599),
        ),
        (lines(1300, "{\"tenant\": "), 400, "invalid_json", None),
    ] {
        let (s, b) = app.post_raw("/v1/batches", "application/x-ndjson", body).await;
        assert_eq!((s, b["error"]["code"].as_str()), (status, Some(code)), "{b}");
        if let Some(index) = index {
            assert_eq!(b["error"]["details"]["index"], index, "{b}");
        } else {
            assert!(b["error"]["message"].as_str().unwrap().starts_with("line 1301"), "{b}");
        }
    }
    let (_, list) = app.get("/v1/batches").await;
    assert_eq!(list["batches"].as_array().unwrap().len(), 1, "only the first good batch was stored: {list}");
    app.stop().await;
}

/// A lane with more work than the scheduler keeps in memory (its window): the rest waits in the
/// store and is paged in as the lane drains, across a restart too; the restarted daemon reads
/// the queue's age from the stored acceptance times, and nothing runs twice.
#[tokio::test]
async fn a_queue_beyond_the_window_is_paged_in_and_keeps_its_age_across_a_restart() {
    const ITEMS: usize = 1000; // four times the window of one lane
                               // First run: shells take long to open, so everything stays queued.
    let app = TestApp::start(&config_text(1, 1, 3000, 1, "")).await;
    let items: Vec<Json> = (0..ITEMS)
        .map(|i| {
            json!({"tenant": tenant(0), "cmdlet": "Set-Mailbox",
                   "parameters": {"Identity": format!("user{:03}", i % 10 + 1), "CustomAttribute1": format!("v{i}")}})
        })
        .collect();
    let id = app.submit_batch(items).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, c) = app.get(&format!("/v1/batches/{id}")).await;
    assert_eq!(c["queued"], ITEMS, "nothing started: {c}");
    let dir = app.stop().await;

    let app = TestApp::start_in(&config_text(1, 1, 5, 1, ""), dir).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let oldest = loop {
        let metrics = app.get_text("/metrics").await;
        let oldest = counter(&metrics, "psbroker_oldest_queued_seconds");
        if oldest > 0.0 || std::time::Instant::now() > deadline {
            break oldest;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(oldest >= 1.5, "the age counts from acceptance, not from the restart: {oldest}");
    let counts = app.wait_batch(&id, Duration::from_secs(120)).await;
    assert_eq!(counts["succeeded"], ITEMS, "{counts}");
    let stats = app.sim().stats();
    assert_eq!(stats.executions.len(), ITEMS, "every item ran");
    assert!(stats.executions.values().all(|&n| n == 1), "none ran twice");
    app.stop().await;
}
