//! Several daemons on one PostgreSQL, against one simulated service (docs/cluster.md).
//!
//! The nodes are real `psbroker` processes sharing a scratch schema; the simulator runs in the
//! test process behind its WS-Management endpoint (`common::cluster`).

mod common;

use common::cluster::{
    batch_counts, caps_held, client, ended, ended_here, metric, results, submit, wait_until, Fleet, Node,
};
use psbroker::sim::Simulator;
use psbroker::store::scratch::ScratchSchema;
use serde_json::Value as Json;
use sqlx::{Connection, PgConnection};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const FLEET: Fleet = Fleet { admins: 4, tenants: 40 };
/// Heartbeat 0.5 s, a lease lives 5 s past its renewal, a node silent for 3 s is dead.
const CLUSTER: &str = "[cluster]\nheartbeat_ms = 500\nlease_ttl_seconds = 5\ndead_after_seconds = 3\n";

fn start_node(dir: &Path, url: &str, sim: SocketAddr) -> Node {
    FLEET.start_node(dir, &format!("url = \"{url}\""), CLUSTER, sim)
}

/// The shells the store says a node holds, and its live leases.
async fn held_by(url: &str, node: &str) -> (Vec<String>, i64) {
    let mut db = PgConnection::connect(url).await.unwrap();
    let shells = sqlx::query_scalar("SELECT shell_id FROM open_shells WHERE node = $1")
        .bind(node)
        .fetch_all(&mut db)
        .await
        .unwrap();
    let leases = sqlx::query_scalar("SELECT count(*) FROM session_leases WHERE node_id = $1 AND expires_at > now()")
        .bind(node)
        .fetch_one(&mut db)
        .await
        .unwrap();
    (shells, leases)
}

/// Leases a rescuer holds while it deletes a dead node's shells.
async fn reaping_leases(url: &str) -> i64 {
    let mut db = PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT count(*) FROM session_leases WHERE reaping AND expires_at > now()")
        .fetch_one(&mut db)
        .await
        .unwrap()
}

/// When the test fails: what each node said about fences, rescues and faults, and what the
/// service saw.
struct Diag {
    logs: Vec<(&'static str, Arc<std::sync::Mutex<Vec<String>>>)>,
    sim: Simulator,
}

impl Drop for Diag {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for (name, log) in &self.logs {
            let log = log.lock().unwrap();
            for line in log.iter() {
                if line.contains("fenc") || line.contains("rescu") || line.contains("ERROR") || line.contains("WARN") {
                    eprintln!("DIAG {name}: {line}");
                }
            }
            // The whole log, for what the lines above do not show.
            let path = std::env::temp_dir().join(format!("psbroker-cluster-{}-{name}.log", std::process::id()));
            if std::fs::write(&path, log.join("\n")).is_ok() {
                eprintln!("DIAG {name}: whole log in {}", path.display());
            }
        }
        eprintln!("DIAG service: {:?}", self.sim.stats());
    }
}

/// What each node ended so far (its own invocations counter).
async fn ended_per_node(client: &reqwest::Client, nodes: &[Node]) -> Vec<f64> {
    let mut ended = Vec::new();
    for n in nodes {
        ended.push(ended_here(client, n).await);
    }
    ended
}

fn live_shells(sim: &Simulator) -> HashSet<String> {
    FLEET.live_shells(sim)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_the_caps_survive_a_sigkill_and_a_drain() {
    let (sim, sim_addr, _server) = FLEET.simulator(25).await;
    let schema = ScratchSchema::create().await;
    let url = schema.url();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes: Vec<Node> = dirs.iter().map(|d| start_node(d.path(), &url, sim_addr)).collect();
    // The first node wrote the bootstrap token; tokens are in the shared store, so it works on all.
    let client = client(dirs[0].path());
    let _diag = Diag {
        logs: vec![
            ("n1", nodes[0].daemon.log.clone()),
            ("n2", nodes[1].daemon.log.clone()),
            ("n3", nodes[2].daemon.log.clone()),
        ],
        sim: sim.clone(),
    };

    let batch = submit(&client, &nodes[0].daemon.url, FLEET.items(5_000)).await;
    let started = Instant::now();
    // Every node takes part; then one dies without warning, mid-batch.
    wait_until("every node ends some of the batch", Duration::from_secs(60), || async {
        ended_per_node(&client, &nodes).await.iter().all(|n| *n > 0.0)
    })
    .await;
    wait_until("a fifth of the batch ends", Duration::from_secs(60), || async {
        ended(&batch_counts(&client, &nodes[0].daemon.url, &batch).await) >= 1_000
    })
    .await;
    // Slots move between nodes (the caps are global): kill the node that holds the most shells
    // now (which node holds them is up to the nodes' demand and fairness, not fixed).
    let held_now = || async {
        let mut held = Vec::new();
        for n in &nodes {
            held.push(held_by(&url, &n.id).await.0);
        }
        held
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let held = loop {
        let held = held_now().await;
        if held.iter().any(|h| !h.is_empty()) {
            break held;
        }
        assert!(Instant::now() < deadline, "no node held shells for 30 s mid-batch");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let victim = (0..3).max_by_key(|&i| held[i].len()).unwrap();
    let victim_shells = held[victim].clone();
    eprintln!(
        "{:?}: ended per node {:?}; killing n{} holding {} shells",
        started.elapsed(),
        ended_per_node(&client, &nodes).await,
        victim + 1,
        victim_shells.len()
    );
    let dead = nodes.remove(victim);
    let killed_at = Instant::now();
    drop(dead.daemon); // SIGKILL

    // Its slots come back within the lease's time: a rescuer deleted its shells (while their
    // leases still counted, taken over as the rescuer's `reaping` leases), then freed the leases.
    wait_until("the dead node's shells are deleted and its leases gone", Duration::from_secs(15), || async {
        let live = live_shells(&sim);
        let (_, leases) = held_by(&url, &dead.id).await;
        leases == 0 && reaping_leases(&url).await == 0 && victim_shells.iter().all(|s| !live.contains(s))
    })
    .await;
    let back = killed_at.elapsed();
    assert!(back <= Duration::from_secs(5) + Duration::from_secs(2), "slots back after {back:?}");

    // Another node drains on SIGTERM while the last one goes on.
    let [drained, survivor] = <[Node; 2]>::try_from(nodes).ok().unwrap();
    wait_until("half the batch ends", Duration::from_secs(90), || async {
        ended(&batch_counts(&client, &survivor.daemon.url, &batch).await) >= 2_500
    })
    .await;
    let before_drain = ended(&batch_counts(&client, &survivor.daemon.url, &batch).await);
    eprintln!("{:?}: slots back {back:?} after the kill; draining {} at {before_drain}", started.elapsed(), drained.id);
    let drain_started = Instant::now();
    let drained_id = drained.id.clone();
    assert!(drained.daemon.terminate(), "SIGTERM drains the node and it exits 0");
    eprintln!("drained in {:?}", drain_started.elapsed());
    let (drained_shells, drained_leases) = held_by(&url, &drained_id).await;
    assert!(
        drained_shells.is_empty() && drained_leases == 0,
        "a drained node leaves no shell and no lease behind: {drained_shells:?}, {drained_leases} leases"
    );
    assert!(ended(&batch_counts(&client, &survivor.daemon.url, &batch).await) < 5_000 || before_drain < 5_000);

    let counts = common::wait_batch_at(&client, &survivor.daemon.url, &batch, Duration::from_secs(180)).await;
    assert_eq!(ended(&counts), 5_000, "every item reached a terminal state: {counts}");

    // The caps held over all nodes together, and the service never had to refuse a shell.
    let stats = sim.stats();
    caps_held(&stats, 3, 20);

    // No write ran twice; the writes the dead node was running end `node_lost`; every read
    // succeeded.
    let lost =
        common::writes_ran_at_most_once(&results(&client, &survivor.daemon.url, &batch).await, &stats, "node_lost");
    eprintln!("{:?}: batch done: {counts}; {lost} writes node_lost; {:?}", started.elapsed(), stats.max_by_user);
    assert!(lost <= 12, "at most one write per session of the dead node was in flight: {lost}");
    assert!(metric(&client, &survivor, "psbroker_cluster_nodes").await >= 1.0);

    assert!(survivor.daemon.terminate(), "SIGTERM exits 0");
    assert!(live_shells(&sim).is_empty(), "every shell was closed");
}

/// A TCP relay to PostgreSQL that the test can cut (every connection dropped, new ones
/// refused) and restore: a node that loses its database.
struct CuttableProxy {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    cut: Arc<tokio::sync::Notify>,
}

impl CuttableProxy {
    async fn start(upstream: SocketAddr) -> CuttableProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(tokio::sync::Notify::new());
        let (open2, cut2) = (open.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { return };
                if !open2.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let cut = cut2.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.notified() => {}
                    }
                });
            }
        });
        CuttableProxy { addr, open, cut }
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_renew_its_leases_closes_its_sessions_before_they_expire() {
    let (sim, sim_addr, _server) = FLEET.simulator(25).await;
    let schema = ScratchSchema::create().await;
    let proxy = CuttableProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let url = schema.url().replace("127.0.0.1:5432", &proxy.addr.to_string());
    assert!(url.contains(&proxy.addr.to_string()), "the store URL goes through the proxy: {url}");
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path(), &url, sim_addr);
    let client = client(dir.path());
    let batch = submit(&client, &node.daemon.url, FLEET.items(3_000)).await;
    wait_until("the node holds sessions", Duration::from_secs(30), || async { !live_shells(&sim).is_empty() }).await;

    // The database goes away: fence_after (dead_after 3 s − a beat = 2.5 s) after its last
    // renewal the node stops using its leases, before another node could count it dead (and
    // long before they expire), and closes every shell. (Shells may also close earlier, idle
    // without the store; the fence is what counts.)
    proxy.cut();
    let cut_at = Instant::now();
    wait_until("the node fences itself", Duration::from_secs(6), || async {
        metric(&client, &node, "psbroker_cluster_fenced").await == 1.0
    })
    .await;
    let fenced_after = cut_at.elapsed();
    assert!(
        fenced_after < Duration::from_secs(3),
        "fenced {fenced_after:?} after the cut: another node may count it dead 3 s after its last beat"
    );
    wait_until("the fenced node closed its shells", Duration::from_secs(3), || async { live_shells(&sim).is_empty() })
        .await;
    // It stays fenced, opening nothing, while the database is away.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(live_shells(&sim).is_empty(), "a fenced node opened a shell");

    // Back: the fence lifts and the batch finishes.
    proxy.restore();
    wait_until("the fence lifts", Duration::from_secs(15), || async {
        metric(&client, &node, "psbroker_cluster_fenced").await == 0.0
    })
    .await;
    let counts = common::wait_batch_at(&client, &node.daemon.url, &batch, Duration::from_secs(120)).await;
    assert_eq!(ended(&counts), 3_000, "{counts}");
    let stats = sim.stats();
    for line in results(&client, &node.daemon.url, &batch).await.lines() {
        let r: Json = serde_json::from_str(line).unwrap();
        let id: uuid::Uuid = r["id"].as_str().unwrap().parse().unwrap();
        assert!(stats.executions.get(&id).copied().unwrap_or(0) <= 1 || r["cmdlet"] == "Get-Mailbox", "{r}");
    }
    assert!(node.daemon.terminate(), "SIGTERM exits 0");
}
