//! Several daemons on one PostgreSQL, against one simulated service (docs/cluster.md).
//!
//! The nodes are real `psbroker` processes sharing a scratch schema; the simulator runs in the
//! test process behind its WS-Management endpoint, so it outlives the nodes and testifies:
//! how many shells each admin and tenant held at most, whether it ever refused a shell for a
//! cap, and how often each command ran.

mod common;

use common::daemon::Daemon;
use psbroker::config::SimulatorConfig;
use psbroker::sim::{SimAccount, Simulator};
use psbroker::store::scratch::ScratchSchema;
use serde_json::{json, Value as Json};
use sqlx::{Connection, PgConnection};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ADMINS: u32 = 4;
const TENANTS: u32 = 40;
/// Heartbeat 0.5 s, a lease lives 5 s past its renewal, a node silent for 3 s is dead.
const CLUSTER: &str = "[cluster]\nheartbeat_ms = 500\nlease_ttl_seconds = 5\ndead_after_seconds = 3\n";

fn tenant(i: u32) -> String {
    format!("t{i:03}.onmicrosoft.com")
}

fn upn(a: u32) -> String {
    format!("a{a}@partner.onmicrosoft.com")
}

async fn simulator(command_ms: u64) -> (Simulator, SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>) {
    let cfg = SimulatorConfig {
        open_latency_ms: 20,
        command_latency_ms: command_ms,
        close_latency_ms: 1,
        mailboxes_per_tenant: 10,
        ..SimulatorConfig::default()
    };
    let accounts = (0..ADMINS)
        .map(|a| SimAccount { upn: upn(a), password: format!("pw{a}"), tenants: vec!["*".into()] })
        .collect();
    let sim = Simulator::new(&cfg, accounts, (0..TENANTS).map(tenant).collect());
    let (addr, server) = psbroker::sim::wire::spawn(sim.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    (sim, addr, server)
}

/// One node's configuration file, in its own data dir, on the shared store `url`.
fn node_config(dir: &Path, url: &str, sim: SocketAddr) -> PathBuf {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_wait_seconds = 30\n\
         [store]\nurl = \"{url}\"\ndata_dir = \"{}\"\n{CLUSTER}\
         [profiles.default]\nkind = \"wsman\"\nallow_plain_http = true\n\
         connection_uri = \"http://{sim}/powershell-liveid?DelegatedOrg={{tenant}}\"\n",
        dir.display()
    );
    for a in 0..ADMINS {
        text += &format!("[[admins]]\nname = \"a{a}\"\nupn = \"{}\"\ncredential = \"literal:pw{a}\"\n", upn(a));
    }
    for t in 0..TENANTS {
        text += &format!("[[tenants]]\ndomain = \"{}\"\n", tenant(t));
    }
    let path = dir.join("psbroker.toml");
    std::fs::write(&path, text).unwrap();
    path
}

struct Node {
    daemon: Daemon,
    id: String,
}

fn start_node(dir: &Path, url: &str, sim: SocketAddr) -> Node {
    let daemon = Daemon::start(&node_config(dir, url, sim), "info");
    let id = std::fs::read_to_string(dir.join("node-id")).unwrap().trim().to_string();
    Node { daemon, id }
}

/// Half reads (safe to repeat), half writes (must never run twice), over every tenant.
fn items(n: u32) -> Vec<Json> {
    (0..n)
        .map(|i| {
            let t = tenant(i % TENANTS);
            if i % 2 == 0 {
                json!({"tenant": t, "cmdlet": "Get-Mailbox", "parameters": {"Identity": "user001"}})
            } else {
                json!({"tenant": t, "cmdlet": "Set-Mailbox", "parameters": {"Identity": format!("user{:03}", i % 10 + 1), "CustomAttribute1": format!("v{i}")}})
            }
        })
        .collect()
}

/// Submits a batch to `node`; its id.
async fn submit(client: &reqwest::Client, node: &Node, items: Vec<Json>) -> String {
    let resp: Json = client
        .post(format!("{}/v1/batches", node.daemon.url))
        .json(&json!({ "items": items }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    resp["id"].as_str().expect("batch accepted").to_string()
}

async fn get(client: &reqwest::Client, url: String) -> Json {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

async fn batch_counts(client: &reqwest::Client, node: &Node, batch: &str) -> Json {
    get(client, format!("{}/v1/batches/{batch}", node.daemon.url)).await
}

fn ended(c: &Json) -> i64 {
    c["succeeded"].as_i64().unwrap_or(0) + c["failed"].as_i64().unwrap_or(0)
}

/// Invocations this node ended (its `psbroker_invocations_total`).
async fn ended_here(client: &reqwest::Client, node: &Node) -> f64 {
    let text = client.get(format!("{}/metrics", node.daemon.url)).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("psbroker_invocations_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metric(client: &reqwest::Client, node: &Node, name: &str) -> f64 {
    let text = client.get(format!("{}/metrics", node.daemon.url)).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find(|l| l.split(' ').next() == Some(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
}

async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    (0..ADMINS).flat_map(|a| sim.list_shells(&upn(a))).map(|s| s.shell_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_the_caps_survive_a_sigkill_and_a_drain() {
    let (sim, sim_addr, _server) = simulator(25).await;
    let schema = ScratchSchema::create().await;
    let url = schema.url();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes: Vec<Node> = dirs.iter().map(|d| start_node(d.path(), &url, sim_addr)).collect();
    // The first node wrote the bootstrap token; tokens are in the shared store, so it works on all.
    let token = std::fs::read_to_string(dirs[0].path().join("api-token")).expect("bootstrap token");
    let client = psbroker::cli_token::bearer_client(token.trim()).unwrap();
    let [n1, n2, n3] = <[Node; 3]>::try_from(nodes).ok().unwrap();

    let batch = submit(&client, &n1, items(5_000)).await;
    let started = Instant::now();

    // Every node takes part; then node 3 dies without warning, mid-batch.
    wait_until("every node ends some of the batch", Duration::from_secs(60), || async {
        ended_here(&client, &n1).await > 0.0
            && ended_here(&client, &n2).await > 0.0
            && ended_here(&client, &n3).await > 0.0
    })
    .await;
    wait_until("a fifth of the batch ends", Duration::from_secs(60), || async {
        ended(&batch_counts(&client, &n1, &batch).await) >= 1_000
    })
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
        ended(&batch_counts(&client, &n1, &batch).await) >= 2_500
    })
    .await;
    let before_drain = ended(&batch_counts(&client, &n1, &batch).await);
    eprintln!("{:?}: slots back {back:?} after the kill; draining node 2 at {before_drain}", started.elapsed());
    let drain_started = Instant::now();
    assert!(n2.daemon.terminate(), "SIGTERM drains node 2 and it exits 0");
    eprintln!("node 2 drained in {:?}", drain_started.elapsed());
    let (n2_shells, n2_leases) = held_by(&url, &n2.id).await;
    assert!(n2_shells.is_empty() && n2_leases == 0, "a drained node leaves no shell and no lease behind");
    assert!(ended(&batch_counts(&client, &n1, &batch).await) < 5_000 || before_drain < 5_000);

    let counts = common::wait_batch_at(&client, &n1.daemon.url, &batch, Duration::from_secs(180)).await;
    assert_eq!(ended(&counts), 5_000, "every item reached a terminal state: {counts}");

    // The caps held over all nodes together, and the service never had to refuse a shell.
    let stats = sim.stats();
    for (user, max) in &stats.max_by_user {
        assert!(*max <= 3, "{user} held {max} shells at once");
    }
    for (tenant, max) in &stats.max_by_tenant {
        assert!(*max <= 20, "{tenant} held {max} shells at once");
    }
    assert_eq!(stats.quota_refusals, 0, "the service refused a shell for a cap");

    // No write ran twice; the writes node 3 was running end `node_lost`; every read succeeded.
    let results =
        client.get(format!("{}/v1/batches/{batch}/results", n1.daemon.url)).send().await.unwrap().text().await.unwrap();
    let lost = common::writes_ran_at_most_once(&results, &stats, "node_lost");
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
    let (sim, sim_addr, _server) = simulator(25).await;
    let schema = ScratchSchema::create().await;
    let proxy = CuttableProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let url = schema.url().replace("127.0.0.1:5432", &proxy.addr.to_string());
    assert!(url.contains(&proxy.addr.to_string()), "the store URL goes through the proxy: {url}");
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path(), &url, sim_addr);
    let token = std::fs::read_to_string(dir.path().join("api-token")).expect("bootstrap token");
    let client = psbroker::cli_token::bearer_client(token.trim()).unwrap();
    let batch = submit(&client, &node, items(3_000)).await;
    wait_until("the node holds sessions", Duration::from_secs(30), || async { !live_shells(&sim).is_empty() }).await;

    // The database goes away: fence_after (lease 5 s − 2 beats = 4 s) after its last renewal the
    // node stops using its leases, before they could expire for the others, and closes every
    // shell. (Shells may also close earlier, idle without the store; the fence is what counts.)
    proxy.cut();
    let cut_at = Instant::now();
    wait_until("the node fences itself", Duration::from_secs(6), || async {
        metric(&client, &node, "psbroker_cluster_fenced").await == 1.0
    })
    .await;
    let fenced_after = cut_at.elapsed();
    assert!(fenced_after < Duration::from_secs(5), "fenced {fenced_after:?} after the cut: the lease is 5 s");
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
    let results = client
        .get(format!("{}/v1/batches/{batch}/results", node.daemon.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in results.lines() {
        let r: Json = serde_json::from_str(line).unwrap();
        let id: uuid::Uuid = r["id"].as_str().unwrap().parse().unwrap();
        assert!(stats.executions.get(&id).copied().unwrap_or(0) <= 1 || r["cmdlet"] == "Get-Mailbox", "{r}");
    }
    assert!(node.daemon.terminate(), "SIGTERM exits 0");
}
