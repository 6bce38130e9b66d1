//! SIGKILL in the middle of a 10,000-item batch, then a restart on the same database.
//!
//! The simulated service runs here, in the test process, behind its WS-Management endpoint, so
//! it outlives the daemon (a child process running the real binary) and can testify: which
//! shells were left open, which commands ran, and how often.

mod common;

use common::daemon::Daemon;
use psbroker::config::SimulatorConfig;
use psbroker::sim::{SimAccount, Simulator};
use serde_json::{json, Value as Json};
use std::collections::HashSet;
use std::time::{Duration, Instant};

const UPN: &str = "a0@partner.onmicrosoft.com";
const TENANTS: u32 = 4;

fn tenant(i: u32) -> String {
    format!("t{i:03}.onmicrosoft.com")
}

async fn get(client: &reqwest::Client, url: String) -> Json {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

fn shells(sim: &Simulator) -> HashSet<String> {
    sim.list_shells(UPN).into_iter().map(|s| s.shell_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_batch_loses_nothing_repeats_no_write_and_leaves_no_orphan_shells() {
    let cfg = SimulatorConfig {
        open_latency_ms: 20,
        command_latency_ms: 1,
        close_latency_ms: 1,
        mailboxes_per_tenant: 10,
        ..SimulatorConfig::default()
    };
    let account = SimAccount { upn: UPN.into(), password: "pw0".into(), tenants: vec!["*".into()] };
    let sim = Simulator::new(&cfg, vec![account], (0..TENANTS).map(tenant).collect());
    let (sim_addr, _server) = psbroker::sim::wire::spawn(sim.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    // A shell this admin holds through another tool: the broker must leave it alone.
    let foreign = sim.open_shell(UPN, "pw0", &tenant(0), "Microsoft.Exchange").unwrap();

    let dir = common::DataDir::new().await;
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{}\
         [profiles.default]\nkind = \"wsman\"\nallow_plain_http = true\n\
         connection_uri = \"http://{sim_addr}/powershell-liveid?DelegatedOrg={{tenant}}\"\n\
         [[admins]]\nname = \"a0\"\nupn = \"{UPN}\"\ncredential = \"literal:pw0\"\n",
        dir.store_toml()
    );
    for t in 0..TENANTS {
        text += &format!("[[tenants]]\ndomain = \"{}\"\n", tenant(t));
    }
    let config = dir.path().join("psbroker.toml");
    std::fs::write(&config, text).unwrap();

    let daemon = Daemon::start(&config, "info");
    // The daemon is secure by default: it wrote an admin token next to its database.
    let token = std::fs::read_to_string(dir.path().join("api-token")).expect("bootstrap token");
    let client = psbroker::cli_token::bearer_client(token.trim()).unwrap();
    // Half reads (safe to repeat), half writes (must never run twice).
    let items: Vec<Json> = (0..10_000u32)
        .map(|i| {
            let t = tenant(i % TENANTS);
            if i % 2 == 0 {
                json!({"tenant": t, "cmdlet": "Get-Mailbox", "parameters": {"Identity": "user001"}})
            } else {
                json!({"tenant": t, "cmdlet": "Set-Mailbox", "parameters": {"Identity": format!("user{:03}", i % 10 + 1), "CustomAttribute1": format!("v{i}")}})
            }
        })
        .collect();
    let resp: Json = client
        .post(format!("{}/v1/batches", daemon.url))
        .json(&json!({"items": items}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let batch = resp["id"].as_str().unwrap().to_string();

    // Let it get going, then kill it without warning.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c = get(&client, format!("{}/v1/batches/{batch}", daemon.url)).await;
        if c["succeeded"].as_i64().unwrap_or(0) >= 1500 {
            break;
        }
        assert!(Instant::now() < deadline, "batch made no progress: {c}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(daemon); // SIGKILL
    let orphans: HashSet<String> = shells(&sim).into_iter().filter(|s| *s != foreign).collect();
    assert!(!orphans.is_empty(), "the killed daemon left shells open at the service");

    let daemon = Daemon::start(&config, "info");
    // Orphans were deleted before anything new was opened; the foreign shell survived.
    let now = shells(&sim);
    assert!(
        now.is_disjoint(&orphans),
        "orphaned shells still open: {:?}",
        now.intersection(&orphans).collect::<Vec<_>>()
    );
    assert!(now.contains(&foreign), "a shell the broker does not own was deleted");

    let counts = common::wait_batch_at(&client, &daemon.url, &batch, Duration::from_secs(180)).await;
    assert_eq!(counts["total"], 10_000);
    let (ok, failed) = (counts["succeeded"].as_i64().unwrap(), counts["failed"].as_i64().unwrap());
    assert_eq!(ok + failed, 10_000, "every item reached a terminal state: {counts}");

    // Writes ran at most once; a write that may have run at the crash failed `interrupted`.
    let results =
        client.get(format!("{}/v1/batches/{batch}/results", daemon.url)).send().await.unwrap().text().await.unwrap();
    let stats = sim.stats();
    let interrupted = common::writes_ran_at_most_once(&results, &stats, "interrupted");
    assert!(interrupted <= 3, "at most one write per session was in flight: {interrupted}");

    // Graceful stop closes what it opened; the foreign shell is still there.
    assert!(daemon.terminate(), "SIGTERM exits 0");
    assert_eq!(shells(&sim), HashSet::from([foreign]));
}
