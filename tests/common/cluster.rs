//! `psbroker` daemons as child processes (several on one PostgreSQL: tests/cluster.rs,
//! tests/pgbouncer.rs; one killed and restarted: tests/crash.rs) against one simulated service
//! in the test process: the simulator outlives them and testifies how many shells each admin
//! and tenant held at most, whether it refused a shell for a cap, and how often each command
//! ran.

use super::daemon::Daemon;
use super::tenant;
use psbroker::config::SimulatorConfig;
use psbroker::sim::{SimAccount, Simulator};
use serde_json::{json, Value as Json};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Admins `a0..` (each on every tenant) and tenants `t000..` of a cluster test.
#[derive(Clone, Copy)]
pub struct Fleet {
    pub admins: u32,
    pub tenants: u32,
}

pub fn upn(a: u32) -> String {
    format!("a{a}@partner.onmicrosoft.com")
}

impl Fleet {
    /// The simulated service on the wire protocol, commands taking `command_ms`.
    pub async fn simulator(
        &self,
        command_ms: u64,
    ) -> (Simulator, SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>) {
        let cfg = SimulatorConfig {
            open_latency_ms: 20,
            command_latency_ms: command_ms,
            close_latency_ms: 1,
            mailboxes_per_tenant: 10,
            ..SimulatorConfig::default()
        };
        let accounts = (0..self.admins)
            .map(|a| SimAccount { upn: upn(a), password: format!("pw{a}"), tenants: vec!["*".into()] })
            .collect();
        let sim = Simulator::new(&cfg, accounts, (0..self.tenants).map(tenant).collect());
        let (addr, server) = psbroker::sim::wire::spawn(sim.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
        (sim, addr, server)
    }

    /// One node's configuration file, in its own data dir. `store` is the keys of `[store]`
    /// but `data_dir` (at least `url = "..."`); `cluster` the `[cluster]` section.
    fn node_config(&self, dir: &Path, store: &str, cluster: &str, sim: SocketAddr) -> PathBuf {
        let mut text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmax_wait_seconds = 30\n\
             [store]\n{store}\ndata_dir = \"{}\"\n{cluster}\
             [profiles.default]\nkind = \"wsman\"\nallow_plain_http = true\n\
             connection_uri = \"http://{sim}/powershell-liveid?DelegatedOrg={{tenant}}\"\n",
            dir.display()
        );
        for a in 0..self.admins {
            text += &format!("[[admins]]\nname = \"a{a}\"\nupn = \"{}\"\ncredential = \"literal:pw{a}\"\n", upn(a));
        }
        for t in 0..self.tenants {
            text += &format!("[[tenants]]\ndomain = \"{}\"\n", tenant(t));
        }
        let path = dir.join("psbroker.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Starts a node on `dir` (see [`Fleet::node_config`] for `store` and `cluster`).
    pub fn start_node(&self, dir: &Path, store: &str, cluster: &str, sim: SocketAddr) -> Node {
        let daemon = Daemon::start(&self.node_config(dir, store, cluster, sim), "info");
        let id = std::fs::read_to_string(dir.join("node-id")).unwrap().trim().to_string();
        Node { daemon, id }
    }

    /// Half reads (safe to repeat), half writes (must never run twice), over every tenant.
    pub fn items(&self, n: u32) -> Vec<Json> {
        (0..n)
            .map(|i| {
                let t = tenant(i % self.tenants);
                if i % 2 == 0 {
                    json!({"tenant": t, "cmdlet": "Get-Mailbox", "parameters": {"Identity": "user001"}})
                } else {
                    json!({"tenant": t, "cmdlet": "Set-Mailbox", "parameters": {"Identity": format!("user{:03}", i % 10 + 1), "CustomAttribute1": format!("v{i}")}})
                }
            })
            .collect()
    }

    /// The shells the simulator holds open, over every admin.
    pub fn live_shells(&self, sim: &Simulator) -> HashSet<String> {
        (0..self.admins).flat_map(|a| sim.list_shells(&upn(a))).map(|s| s.shell_id).collect()
    }
}

pub struct Node {
    pub daemon: Daemon,
    pub id: String,
}

/// A client with the bootstrap token the first node wrote in `dir` (tokens are in the shared
/// store, so it works on every node).
pub fn client(dir: &Path) -> reqwest::Client {
    let token = std::fs::read_to_string(dir.join("api-token")).expect("bootstrap token");
    psbroker::cli_token::bearer_client(token.trim()).unwrap()
}

/// Submits a batch to the daemon at `base`; its id.
pub async fn submit(client: &reqwest::Client, base: &str, items: Vec<Json>) -> String {
    let resp: Json = client
        .post(format!("{base}/v1/batches"))
        .json(&json!({ "items": items }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    resp["id"].as_str().expect("batch accepted").to_string()
}

pub async fn batch_counts(client: &reqwest::Client, base: &str, batch: &str) -> Json {
    client.get(format!("{base}/v1/batches/{batch}")).send().await.unwrap().json().await.unwrap()
}

/// The batch's results, one JSON line per item.
pub async fn results(client: &reqwest::Client, base: &str, batch: &str) -> String {
    client.get(format!("{base}/v1/batches/{batch}/results")).send().await.unwrap().text().await.unwrap()
}

pub fn ended(c: &Json) -> i64 {
    c["succeeded"].as_i64().unwrap_or(0) + c["failed"].as_i64().unwrap_or(0)
}

async fn metrics_text(client: &reqwest::Client, node: &Node) -> String {
    client.get(format!("{}/metrics", node.daemon.url)).send().await.unwrap().text().await.unwrap()
}

/// Invocations this node ended (its `psbroker_invocations_total`).
pub async fn ended_here(client: &reqwest::Client, node: &Node) -> f64 {
    metrics_text(client, node)
        .await
        .lines()
        .filter(|l| l.starts_with("psbroker_invocations_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub async fn metric(client: &reqwest::Client, node: &Node, name: &str) -> f64 {
    metrics_text(client, node)
        .await
        .lines()
        .find(|l| l.split(' ').next() == Some(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
}

pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
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

/// The caps held over all nodes together (`admin_cap` shells per admin, `tenant_cap` per
/// tenant at once), and the service never had to refuse a shell for one.
pub fn caps_held(stats: &psbroker::sim::SimStats, admin_cap: u32, tenant_cap: u32) {
    for (user, max) in &stats.max_by_user {
        assert!(*max <= admin_cap, "{user} held {max} shells at once");
    }
    for (tenant, max) in &stats.max_by_tenant {
        assert!(*max <= tenant_cap, "{tenant} held {max} shells at once");
    }
    assert_eq!(stats.quota_refusals, 0, "the service refused a shell for a cap");
}
