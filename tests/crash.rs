//! SIGKILL in the middle of a 10,000-item batch, then a restart on the same database.
//!
//! The simulated service runs here, in the test process, behind its WS-Management endpoint, so
//! it outlives the daemon (a child process running the real binary) and can testify: which
//! shells were left open, which commands ran, and how often.

mod common;

use common::cluster::{batch_counts, client, results, submit, Fleet};
use common::daemon::Daemon;
use common::tenant;
use psbroker::sim::Simulator;
use std::collections::HashSet;
use std::time::{Duration, Instant};

const UPN: &str = "a0@partner.onmicrosoft.com";
const FLEET: Fleet = Fleet { admins: 1, tenants: 4 };

fn shells(sim: &Simulator) -> HashSet<String> {
    sim.list_shells(UPN).into_iter().map(|s| s.shell_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_batch_loses_nothing_repeats_no_write_and_leaves_no_orphan_shells() {
    let (sim, sim_addr, _server) = FLEET.simulator(1).await;
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
    for t in 0..FLEET.tenants {
        text += &format!("[[tenants]]\ndomain = \"{}\"\n", tenant(t));
    }
    let config = dir.path().join("psbroker.toml");
    std::fs::write(&config, text).unwrap();

    let daemon = Daemon::start(&config, "info");
    // The daemon is secure by default: it wrote an admin token next to its database.
    let client = client(dir.path());
    // Half reads (safe to repeat), half writes (must never run twice).
    let batch = submit(&client, &daemon.url, FLEET.items(10_000)).await;

    // Let it get going, then kill it without warning.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c = batch_counts(&client, &daemon.url, &batch).await;
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
    let stats = sim.stats();
    let interrupted =
        common::writes_ran_at_most_once(&results(&client, &daemon.url, &batch).await, &stats, "interrupted");
    assert!(interrupted <= 3, "at most one write per session was in flight: {interrupted}");

    // Graceful stop closes what it opened; the foreign shell is still there.
    assert!(daemon.terminate(), "SIGTERM exits 0");
    assert_eq!(shells(&sim), HashSet::from([foreign]));
}
