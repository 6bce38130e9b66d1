//! Several nodes on one PostgreSQL behind a real PgBouncer in transaction mode
//! (docs/cluster.md, "Behind PgBouncer"): its pools are kept small, so the nodes' connections
//! really share a few server connections, one transaction at a time.
//!
//! PgBouncer must be 1.21 or later (it carries sqlx's prepared statements in transaction mode
//! only from there): `PSBROKER_TEST_PGBOUNCER`, else `pgbouncer` on PATH if recent enough;
//! `.ci/pgbouncer.sh` builds one. Each test gets a scratch database of its own (PgBouncer
//! cannot carry the search path a scratch schema needs).

mod common;

use common::cluster::{batch_counts, caps_held, client, ended, ended_here, metric, results, submit, Fleet};
use common::tools::{free_port, KillOnDrop};
use futures::future::join_all;
use psbroker::store::cluster::Admission;
use psbroker::store::scratch::{server_url, ScratchDatabase};
use psbroker::store::{Accepted, NewInvocation, Outcome, Status, Store, StoreError};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgRow};
use sqlx::{ConnectOptions, Connection, PgConnection, Row};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Server connections PgBouncer opens per database: fewer than any one node's pool.
const POOL_SIZE: usize = 3;

/// The PgBouncer binary: `PSBROKER_TEST_PGBOUNCER`, else `pgbouncer` on PATH if it is 1.21 or
/// later. Panics saying how to get one.
fn pgbouncer_binary() -> PathBuf {
    let how = "build one with `bash .ci/pgbouncer.sh` and set PSBROKER_TEST_PGBOUNCER to the path it prints";
    if let Some(path) = std::env::var_os("PSBROKER_TEST_PGBOUNCER") {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "PSBROKER_TEST_PGBOUNCER={} is not a file: {how}", path.display());
        return path;
    }
    let version = Command::new("pgbouncer")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    // "PgBouncer 1.24.1" on the first line.
    let number = version.as_deref().and_then(|v| v.split_whitespace().nth(1)).unwrap_or("");
    let parts: Vec<u32> = number.split('.').filter_map(|p| p.parse().ok()).collect();
    match parts.as_slice() {
        [major, minor, ..] if (*major, *minor) >= (1, 21) => PathBuf::from("pgbouncer"),
        _ => panic!(
            "the PgBouncer tests need PgBouncer >= 1.21 (found: {}): {how}",
            version.as_deref().map_or("none on PATH", str::trim)
        ),
    }
}

/// PgBouncer refuses to run as root (a CI container): then it drops to `nobody`, which must be
/// able to read its files and write its log.
fn run_as_nobody_if_root(dir: &std::path::Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    if !rustix::process::getuid().is_root() {
        return String::new();
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let log = dir.join("pgbouncer.log");
    std::fs::write(&log, "").unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
    "user = nobody\n".into()
}

/// A PgBouncer in transaction mode in front of the scratch server, on a free loopback port.
/// Killed when dropped.
struct PgBouncer {
    addr: SocketAddr,
    /// The server's user, PgBouncer's admin too.
    user: String,
    _process: KillOnDrop,
    dir: tempfile::TempDir,
}

impl PgBouncer {
    /// Started with the settings docs/cluster.md requires.
    fn start() -> PgBouncer {
        PgBouncer::start_with(200)
    }

    fn start_with(max_prepared_statements: u32) -> PgBouncer {
        let server = reqwest::Url::parse(&server_url()).expect("PSBROKER_TEST_POSTGRES is a URL");
        let (host, port) = (server.host_str().unwrap_or("127.0.0.1"), server.port().unwrap_or(5432));
        let user = if server.username().is_empty() { "postgres" } else { server.username() };
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("users.txt"), format!("\"{user}\" \"\"\n")).unwrap();
        let log = || std::fs::read_to_string(dir.path().join("pgbouncer.log")).unwrap_or_default();
        // A free port may be taken by the time PgBouncer binds it: then it exits, and another is tried.
        for attempt in 1.. {
            let listen = free_port();
            let ini = format!(
                "[databases]\n* = host={host} port={port}\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {listen}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {dir}/users.txt\nadmin_users = {user}\n\
                 pool_mode = transaction\nmax_prepared_statements = {max_prepared_statements}\n\
                 default_pool_size = {POOL_SIZE}\nmax_client_conn = 200\nlogfile = {dir}/pgbouncer.log\n{nobody}",
                dir = dir.path().display(),
                nobody = run_as_nobody_if_root(dir.path()),
            );
            let config = dir.path().join("pgbouncer.ini");
            std::fs::write(&config, ini).unwrap();
            let child = Command::new(pgbouncer_binary())
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("pgbouncer starts");
            let mut process = KillOnDrop(child);
            let addr = SocketAddr::from(([127, 0, 0, 1], listen));
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if std::net::TcpStream::connect(addr).is_ok() {
                    return PgBouncer { addr, user: user.to_string(), _process: process, dir };
                }
                if let Ok(Some(status)) = process.0.try_wait() {
                    assert!(attempt < 3, "pgbouncer exited ({status}):\n{}", log());
                    break;
                }
                assert!(Instant::now() < deadline, "pgbouncer does not listen on {addr}:\n{}", log());
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        unreachable!()
    }

    /// The rows of `SHOW what` on the admin console (simple queries only).
    async fn show(&self, what: &str) -> Vec<PgRow> {
        let options = PgConnectOptions::from_str(&format!("postgres://{}@{}/pgbouncer", self.user, self.addr))
            .unwrap()
            .extra_float_digits(None);
        let mut console = options.connect().await.expect("PgBouncer's admin console");
        let rows = sqlx::raw_sql(&format!("SHOW {what}")).fetch_all(&mut console).await.unwrap();
        let _ = console.close().await;
        rows
    }

    /// How many client and server connections PgBouncer has for `database`.
    async fn connections(&self, database: &str) -> (usize, usize) {
        let of = |rows: Vec<PgRow>| rows.iter().filter(|r| r.get::<String, _>("database") == database).count();
        (of(self.show("CLIENTS").await), of(self.show("SERVERS").await))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }
}

fn invocation(tenant: &str) -> NewInvocation {
    let now = psbroker::store::now_ms();
    NewInvocation {
        accepted: Accepted {
            id: Uuid::new_v4(),
            batch_id: None,
            seq: 0,
            idempotency_key: None,
            tenant: tenant.into(),
            admin: None,
            cmdlet: "Get-Mailbox".into(),
            parameters: json!({"Identity": "user001"}),
            priority: "batch".into(),
            idempotent: true,
            created_at: now,
            deadline_at: now + 60_000,
            redacted: false,
        },
        request_hash: "h".into(),
        owner: "tester".into(),
        param_names: vec!["Identity".into()],
        params_hash: "h".into(),
        node: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_share_caps_and_work_through_a_few_server_connections() {
    let db = ScratchDatabase::create().await;
    let bouncer = PgBouncer::start();
    let (pooled, direct) = (db.url_via(bouncer.addr), db.url());
    let mut stores = Vec::new();
    for _ in 0..3 {
        stores.push(Store::open(&pooled, Some(&direct)).await.unwrap_or_else(|e| panic!("{e}\n{}", bouncer.log())));
    }
    let ttl = Duration::from_secs(60);

    // Five slots for alice; two are taken, 90 requests from three nodes race for the rest.
    for node in ["n0", "n1"] {
        let granted = stores[0].acquire_lease(Uuid::new_v4(), node, "alice", "t.example", 5, 50, ttl).await.unwrap();
        assert_eq!(granted, Admission::Granted);
    }
    let requests = (0..90).map(|i| {
        let (store, node) = (stores[i % 3].clone(), format!("n{}", i % 3));
        tokio::spawn(async move {
            store.acquire_lease(Uuid::new_v4(), &node, "alice", "t.example", 5, 50, ttl).await.unwrap()
        })
    });
    let answers: Vec<Admission> = join_all(requests).await.into_iter().map(Result::unwrap).collect();
    let granted = answers.iter().filter(|a| **a == Admission::Granted).count();
    assert_eq!(granted, 3, "exactly the last three slots were granted: {answers:?}");
    let mut check = PgConnection::connect(&direct).await.unwrap();
    let leases: i64 = sqlx::query_scalar("SELECT count(*) FROM session_leases WHERE admin = 'alice'")
        .fetch_one(&mut check)
        .await
        .unwrap();
    assert_eq!(leases, 5, "the database holds the cap, no more");

    // Work goes round: stored on one node, claimed, run and finished on another.
    let new = invocation("t.example");
    stores[0].insert_invocation(&new).await.unwrap();
    let claimed = stores[1].claim_page("n1", "t.example", None, "batch", &[], 10).await.unwrap();
    assert_eq!(claimed.iter().map(|r| r.accepted.id).collect::<Vec<_>>(), vec![new.accepted.id]);
    assert!(stores[1].mark_running(new.accepted.id, 1, "s1", "alice").await.unwrap());
    let outcome = Outcome::succeeded(json!([{"Name": "user001"}]));
    assert!(stores[1].finish(new.accepted.id, &outcome).await.unwrap());
    let done = stores[2].get(new.accepted.id).await.unwrap().expect("stored");
    assert_eq!((done.status, done.attempts), (Status::Succeeded, 1));

    // A node listening on the direct connection hears a release made through the pooler.
    let mut wakeups = stores[2].wakeups().await.unwrap();
    let lease: String =
        sqlx::query_scalar("SELECT lease_id FROM session_leases LIMIT 1").fetch_one(&mut check).await.unwrap();
    stores[0].release_leases(&[lease]).await.unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(5), wakeups.next()).await.expect("woken").unwrap();
    assert_eq!(woken.as_deref(), Some("lease"));

    // The pooler really multiplexed: more clients than server connections.
    let (clients, servers) = bouncer.connections(db.name()).await;
    assert!(servers <= POOL_SIZE, "{servers} server connections, the pool has {POOL_SIZE}");
    assert!(
        clients > POOL_SIZE,
        "the nodes held {clients} connections to PgBouncer: more than its pool of {POOL_SIZE}"
    );
    eprintln!("{clients} client connections shared {servers} server connections");
}

#[tokio::test]
async fn a_pooler_that_loses_prepared_statements_is_refused_at_start() {
    let db = ScratchDatabase::create().await;
    let bouncer = PgBouncer::start_with(0);
    match Store::open(&db.url_via(bouncer.addr), Some(&db.url())).await {
        Err(e @ StoreError::PoolerPreparedStatements(_)) => {
            let said = e.to_string();
            assert!(said.contains("max_prepared_statements") && said.contains("1.21"), "{said}");
        }
        Err(e) => panic!("not the pooler's error: {e}"),
        Ok(_) => panic!("a store opened behind a pooler that does not track prepared statements"),
    }
}

const FLEET: Fleet = Fleet { admins: 2, tenants: 10 };
const CLUSTER: &str = "[cluster]\nheartbeat_ms = 500\nlease_ttl_seconds = 5\ndead_after_seconds = 3\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_behind_pgbouncer_run_a_batch_within_the_caps() {
    let (sim, sim_addr, _server) = FLEET.simulator(10).await;
    let db = ScratchDatabase::create().await;
    let bouncer = PgBouncer::start();
    let store = format!("url = \"{}\"\npgbouncer = true\ndirect_url = \"{}\"", db.url_via(bouncer.addr), db.url());
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes: Vec<_> = dirs.iter().map(|d| FLEET.start_node(d.path(), &store, CLUSTER, sim_addr)).collect();
    let client = client(dirs[0].path());
    let started = Instant::now();

    let batch = submit(&client, &nodes[0].daemon.url, FLEET.items(1_000)).await;
    let counts = common::wait_batch_at(&client, &nodes[1].daemon.url, &batch, Duration::from_secs(60)).await;
    assert_eq!(ended(&counts), 1_000, "every item reached a terminal state: {counts}");
    assert_eq!(counts, batch_counts(&client, &nodes[0].daemon.url, &batch).await, "both nodes read the same batch");
    let per_node = [ended_here(&client, &nodes[0]).await, ended_here(&client, &nodes[1]).await];
    eprintln!("{:?}: batch done: {counts}; ended per node {per_node:?}", started.elapsed());
    // Both beat through PgBouncer and see each other. (Which node runs which lane is a race
    // of their claims; through a pool this small one node often claims every lane first.)
    for node in &nodes {
        assert_eq!(metric(&client, node, "psbroker_cluster_nodes").await, 2.0, "each node counts both");
    }

    let stats = sim.stats();
    caps_held(&stats, 3, 20);
    let lost =
        common::writes_ran_at_most_once(&results(&client, &nodes[0].daemon.url, &batch).await, &stats, "node_lost");
    assert_eq!(lost, 0, "no node died, so no write was lost");

    for node in nodes {
        assert!(node.daemon.terminate(), "SIGTERM exits 0");
    }
    assert!(FLEET.live_shells(&sim).is_empty(), "every shell was closed");
}
