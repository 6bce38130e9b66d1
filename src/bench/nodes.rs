//! `psbroker bench scale`, several nodes: daemons (child processes) on one PostgreSQL schema
//! against one simulated service over its wire protocol, run here.
//!
//! - **Makespan, 1 node vs N.** The same latency-bound batch (every command takes the
//!   simulator's `command_ms`) on one node, then on N. The caps are the service's, so N nodes
//!   cannot finish sooner than `items × command / (admins × 3)`; a makespan below that bound
//!   would mean the nodes together held more shells than the caps allow. The simulator's
//!   high-water marks and cap refusals are printed beside it.
//! - **Intake per node.** N nodes take NDJSON batches at once (sessions never finish opening,
//!   so everything stays queued): items/s per node and in all.

use super::scale::{spawn, Daemon, TempDir};
use crate::config::SimulatorConfig;
use crate::sim::{SimAccount, Simulator};
use crate::store::scratch::ScratchSchema;
use std::net::SocketAddr;
use std::time::Instant;

#[derive(clap::Args, Debug, Clone)]
pub struct NodesArgs {
    /// Nodes beside the single-node run (0: skip the several-nodes figures).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Items of the latency-bound batch.
    #[arg(long, default_value_t = 2_400)]
    pub latency_items: usize,
    /// The simulator's time per command, ms.
    #[arg(long, default_value_t = 50)]
    pub command_ms: u64,
    /// Items each node takes in the intake run.
    #[arg(long, default_value_t = 100_000)]
    pub intake_items: usize,
}

const ADMINS: usize = 4;
const TENANTS: usize = 40;
const ADMIN_CAP: usize = 3;

async fn simulator(open_ms: u64, command_ms: u64) -> anyhow::Result<(Simulator, SocketAddr)> {
    let cfg = SimulatorConfig {
        open_latency_ms: open_ms,
        command_latency_ms: command_ms,
        close_latency_ms: 1,
        mailboxes_per_tenant: 10,
        ..SimulatorConfig::default()
    };
    let accounts = (0..ADMINS)
        .map(|a| SimAccount {
            upn: format!("a{a}@partner.onmicrosoft.com"),
            password: format!("pw{a}"),
            tenants: vec!["*".into()],
        })
        .collect();
    let tenants = (0..TENANTS).map(|t| format!("t{t:03}.onmicrosoft.com")).collect();
    let sim = Simulator::new(&cfg, accounts, tenants);
    let (addr, _server) = crate::sim::wire::spawn(sim.clone(), "127.0.0.1:0".parse()?).await?;
    Ok((sim, addr))
}

fn node_config(store_url: &str, dir: &std::path::Path, sim: SocketAddr) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[server.rate_limit]\nitems_per_second = 0\n\
         [store]\nurl = \"{store_url}\"\ndata_dir = \"{}\"\n\
         [scheduler]\ndefault_timeout_seconds = 3600\n\
         [profiles.default]\nkind = \"wsman\"\nallow_plain_http = true\n\
         connection_uri = \"http://{sim}/powershell-liveid?DelegatedOrg={{tenant}}\"\n",
        dir.display()
    );
    for a in 0..ADMINS {
        text += &format!(
            "[[admins]]\nname = \"a{a}\"\nupn = \"a{a}@partner.onmicrosoft.com\"\ncredential = \"literal:pw{a}\"\n"
        );
    }
    for t in 0..TENANTS {
        text += &format!("[[tenants]]\ndomain = \"t{t:03}.onmicrosoft.com\"\n");
    }
    text
}

/// N nodes on one fresh schema; the client carries the first node's bootstrap token.
struct Cluster {
    nodes: Vec<Daemon>,
    client: reqwest::Client,
    _dirs: Vec<TempDir>,
    schema: ScratchSchema,
}

async fn start(n: usize, sim: SocketAddr) -> anyhow::Result<Cluster> {
    let schema = ScratchSchema::create().await;
    let (mut nodes, mut dirs) = (Vec::new(), Vec::new());
    for i in 0..n {
        let path = std::env::temp_dir().join(format!("psbroker-nodes-{}-{i}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        let dir = TempDir(path);
        let config = dir.path().join("psbroker.toml");
        std::fs::write(&config, node_config(&schema.url(), dir.path(), sim))?;
        nodes.push(spawn(&config)?.0);
        dirs.push(dir);
    }
    let token = std::fs::read_to_string(dirs[0].path().join("api-token"))?;
    let client = crate::cli_token::bearer_client(token.trim())?;
    Ok(Cluster { nodes, client, _dirs: dirs, schema })
}

impl Cluster {
    async fn stop(self) {
        drop(self.nodes);
        self.schema.drop_now().await;
    }
}

fn ndjson(cmdlet_of: impl Fn(usize) -> String, from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("{{\"tenant\":\"t{:03}.onmicrosoft.com\",{}}}\n", i % TENANTS, cmdlet_of(i)))
        .collect()
}

async fn submit(client: &reqwest::Client, node: &str, body: String) -> anyhow::Result<String> {
    let r = client
        .post(format!("{node}/v1/batches"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await?;
    anyhow::ensure!(r.status().as_u16() == 202, "batch refused: {} {}", r.status(), r.text().await?);
    let v: serde_json::Value = r.json().await?;
    Ok(v["id"].as_str().unwrap_or_default().to_string())
}

/// The latency-bound batch on `n` nodes: its makespan and what the service saw.
async fn makespan(n: usize, args: &NodesArgs) -> anyhow::Result<()> {
    let (sim, addr) = simulator(200, args.command_ms).await?;
    let cluster = start(n, addr).await?;
    let body = ndjson(
        |_| "\"cmdlet\":\"Get-Mailbox\",\"parameters\":{\"Identity\":\"user001\"}".into(),
        0,
        args.latency_items,
    );
    let started = Instant::now();
    let batch = submit(&cluster.client, &cluster.nodes[0].url, body).await?;
    super::bulk::batch_done_at(&cluster.client, &cluster.nodes[0].url, &batch).await?;
    let took = started.elapsed();
    let stats = sim.stats();
    let max_user = stats.max_by_user.values().max().copied().unwrap_or(0);
    let max_tenant = stats.max_by_tenant.values().max().copied().unwrap_or(0);
    let bound = args.latency_items as f64 * args.command_ms as f64 / 1000.0 / (ADMINS * ADMIN_CAP) as f64;
    println!(
        "  {n} node{}  makespan {:>6.1} s  (lower bound {bound:.1} s)  most shells per admin {max_user}, per tenant {max_tenant}, refused for a cap {}",
        if n == 1 { " " } else { "s" },
        took.as_secs_f64(),
        stats.quota_refusals
    );
    cluster.stop().await;
    Ok(())
}

/// `n` nodes take NDJSON batches at once; nothing runs (opens never finish).
async fn intake(n: usize, args: &NodesArgs) -> anyhow::Result<()> {
    let (_sim, addr) = simulator(600_000, 1).await?;
    let cluster = start(n, addr).await?;
    let per_batch = 20_000.min(args.intake_items);
    let started = Instant::now();
    let runs = cluster.nodes.iter().enumerate().map(|(k, node)| {
        let (client, url) = (cluster.client.clone(), node.url.clone());
        let items = args.intake_items;
        async move {
            let t = Instant::now();
            for from in (0..items).step_by(per_batch) {
                let cmd = move |i: usize| {
                    format!(
                        "\"cmdlet\":\"Set-Mailbox\",\"parameters\":{{\"Identity\":\"user{:03}\",\"CustomAttribute1\":\"n{k}v{i}\"}}",
                        i % 10 + 1
                    )
                };
                submit(&client, &url, ndjson(cmd, from, per_batch.min(items - from))).await?;
            }
            anyhow::Ok(t.elapsed())
        }
    });
    let times = futures::future::try_join_all(runs).await?;
    let all = started.elapsed();
    for (i, t) in times.iter().enumerate() {
        println!(
            "  node {}   {} items in {:.1} s = {:.0} items/s",
            i + 1,
            args.intake_items,
            t.as_secs_f64(),
            args.intake_items as f64 / t.as_secs_f64()
        );
    }
    let total = args.intake_items * n;
    println!(
        "  in all   {total} items in {:.1} s = {:.0} items/s",
        all.as_secs_f64(),
        total as f64 / all.as_secs_f64()
    );
    cluster.stop().await;
    Ok(())
}

pub async fn run(args: &NodesArgs) -> anyhow::Result<()> {
    if args.nodes == 0 {
        return Ok(());
    }
    println!(
        "several nodes on one PostgreSQL, one simulated service over WS-Management ({ADMINS} admins x cap {ADMIN_CAP}, {TENANTS} tenants):"
    );
    println!("{} Get-Mailbox, {} ms per command, opens 200 ms:", args.latency_items, args.command_ms);
    makespan(1, args).await?;
    makespan(args.nodes, args).await?;
    println!("intake, {} nodes at once, NDJSON batches of 20,000 Set-Mailbox (nothing runs):", args.nodes);
    intake(args.nodes, args).await
}
