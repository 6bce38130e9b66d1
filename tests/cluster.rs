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

fn live_shells(sim: &Simulator) -> HashSet<String> {
    FLEET.live_shells(sim)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_the_caps_survive_a_sigkill_and_a_drain() {
    let (sim, sim_addr, _server) = FLEET.simulator(25).await;
    let schema = ScratchSchema::create().await;
    let url = schema.url();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes: Vec<Node> = dirs.iter().map(|d| start_node(d.path(), &url, sim_addr)).collect();
    // The first node wrote the bootstrap token; tokens are in the shared store, so it works on all.
    let client = client(dirs[0].path());
    let [n1, n2, n3] = <[Node; 3]>::try_from(nodes).ok().unwrap();

    let batch = submit(&client, &n1.daemon.url, FLEET.items(5_000)).await;
    let started = Instant::now();

    // Every node takes part; then node 3 dies without warning, mid-batch.
    wait_until("every node ends some of the batch", Duration::from_secs(60), || async {
        ended_here(&client, &n1).await > 0.0
            && ended_here(&client, &n2).await > 0.0
            && ended_here(&client, &n3).await > 0.0
    })
    .await;
    wait_until("a fifth of the batch ends", Duration::from_secs(60), || async {
        ended(&batch_counts(&client, &n1.daemon.url, &batch).await) >= 1_000
    })
    .await;
    // Slots move between nodes (the caps are global): kill node 3 while it holds some.
    wait_until("node 3 holds shells", Duration::from_secs(30), || async { !held_by(&url, &n3.id).await.0.is_empty() })
        .await;
    let (n3_shells, _) = held_by(&url, &n3.id).await;
    eprintln!(
        "{:?}: ended per node {} / {} / {}; killing node 3 holding {} shells",
        started.elapsed(),
        ended_here(&client, &n1).await,
        ended_here(&client, &n2).await,
        ended_here(&client, &n3).await,
        n3_shells.len()
    );
    let n3_log = n3.daemon.log.clone();
    let killed_at = Instant::now();
    drop(n3.daemon); // SIGKILL
    assert!(!n3_shells.is_empty(), "node 3 held shells when it died");

    // Its slots come back within the lease's time: a rescuer deleted its shells (while their
    // leases still counted), then freed the leases.
    wait_until("the dead node's shells are deleted and its leases gone", Duration::from_secs(15), || async {
        let live = live_shells(&sim);
        let (_, leases) = held_by(&url, &n3.id).await;
        leases == 0 && n3_shells.iter().all(|s| !live.contains(s))
    })
    .await;
    let back = killed_at.elapsed();
    assert!(back <= Duration::from_secs(5) + Duration::from_secs(2), "slots back after {back:?}");

    // Node 2 drains on SIGTERM while node 1 goes on.
    wait_until("half the batch ends", Duration::from_secs(90), || async {
        ended(&batch_counts(&client, &n1.daemon.url, &batch).await) >= 2_500
    })
    .await;
    let before_drain = ended(&batch_counts(&client, &n1.daemon.url, &batch).await);
    eprintln!("{:?}: slots back {back:?} after the kill; draining node 2 at {before_drain}", started.elapsed());
    let n2_log = n2.daemon.log.clone();
    let drain_started = Instant::now();
    assert!(n2.daemon.terminate(), "SIGTERM drains node 2 and it exits 0");
    eprintln!("node 2 drained in {:?}", drain_started.elapsed());
    let (n2_shells, n2_leases) = held_by(&url, &n2.id).await;
    assert!(n2_shells.is_empty() && n2_leases == 0, "a drained node leaves no shell and no lease behind");
    assert!(ended(&batch_counts(&client, &n1.daemon.url, &batch).await) < 5_000 || before_drain < 5_000);

    let counts = common::wait_batch_at(&client, &n1.daemon.url, &batch, Duration::from_secs(180)).await;
    assert_eq!(ended(&counts), 5_000, "every item reached a terminal state: {counts}");

    // The caps held over all nodes together, and the service never had to refuse a shell.
    let stats = sim.stats();
    caps_held(&stats, 3, 20);

    // Shown when the test fails: what each node said about fences, rescues and faults.
    for (name, log) in [("n1", &n1.daemon.log), ("n2", &n2_log), ("n3", &n3_log)] {
        for line in log.lock().unwrap().iter() {
            if line.contains("fenc") || line.contains("rescu") || line.contains("ERROR") || line.contains("WARN") {
                eprintln!("DIAG {name}: {line}");
            }
        }
    }
    // No write ran twice; the writes node 3 was running end `node_lost`; every read succeeded.
    let lost = common::writes_ran_at_most_once(&results(&client, &n1.daemon.url, &batch).await, &stats, "node_lost");
    eprintln!("{:?}: batch done: {counts}; {lost} writes node_lost; {:?}", started.elapsed(), stats.max_by_user);
    assert!(lost <= 12, "at most one write per session of node 3 was in flight: {lost}");
    assert!(metric(&client, &n1, "psbroker_cluster_nodes").await >= 1.0);

    assert!(n1.daemon.terminate(), "SIGTERM exits 0");
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
