//! `psbroker bench scale`: a queue of a million in bounded memory. The daemon runs as a child
//! process (its RSS is its own, not the load generator's) on SQLite and on PostgreSQL; NDJSON
//! batches queue `items` Set-Mailbox invocations that cannot start (the simulator's shells take
//! ten minutes to open), then the daemon is killed (SIGKILL) and started again on the same
//! database. Printed: intake items/s, RSS while queued, time from spawn to listening after the
//! restart (the queue is recovered by then), RSS after it, and the queue depth and oldest age
//! the restarted daemon reports (ages come from the stored acceptance times).

use crate::store::scratch::ScratchSchema;
use anyhow::Context;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct ScaleArgs {
    /// Invocations queued in all.
    #[arg(long, default_value_t = 1_000_000)]
    pub items: usize,
    /// Invocations per NDJSON batch.
    #[arg(long, default_value_t = 100_000)]
    pub batch: usize,
    #[arg(long, default_value_t = 100)]
    pub tenants: usize,
    /// `sqlite`, `postgres` or `both`. PostgreSQL: a scratch schema on PSBROKER_TEST_POSTGRES
    /// (default postgres://postgres@127.0.0.1:5432/test), dropped afterwards.
    #[arg(long, default_value = "both")]
    pub backend: String,
    #[command(flatten)]
    pub nodes: super::nodes::NodesArgs,
}

/// A directory removed when dropped.
pub(super) struct TempDir(pub(super) std::path::PathBuf);

impl TempDir {
    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) struct Daemon {
    pub(super) child: Child,
    pub(super) url: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `psbroker serve` and waits for the line that says where it listens.
pub(super) fn spawn(config: &Path) -> anyhow::Result<(Daemon, Duration)> {
    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe()?)
        .args(["serve", "--config"])
        .arg(config)
        .env("PSBROKER_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
    let url = loop {
        let line = lines.next().context("the daemon exited before listening")??;
        if let Some(rest) = line.split(" url=").nth(1).filter(|_| line.contains("psbroker listening")) {
            break rest.split_whitespace().next().unwrap_or_default().to_string();
        }
    };
    let ready = started.elapsed();
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
    Ok((Daemon { child, url }, ready))
}

/// Resident and peak resident memory of a process, MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn config_text(store_url: &str, dir: &Path, tenants: usize) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[server.rate_limit]\nitems_per_second = 0\n[store]\nurl = \"{store_url}\"\ndata_dir = \"{}\"\n\
         [scheduler]\ndefault_timeout_seconds = 3600\n\
         [profiles.default]\nkind = \"simulator\"\n\
         [simulator]\nopen_latency_ms = 600000\ncommand_latency_ms = 1\nclose_latency_ms = 1\nmailboxes_per_tenant = 5\n",
        dir.display()
    );
    for a in 0..4 {
        text += &format!(
            "[[admins]]\nname = \"a{a}\"\nupn = \"a{a}@partner.onmicrosoft.com\"\ncredential = \"literal:pw{a}\"\n"
        );
    }
    for t in 0..tenants {
        text += &format!("[[tenants]]\ndomain = \"t{t:03}.onmicrosoft.com\"\n");
    }
    text
}

fn ndjson(from: usize, n: usize, tenants: usize) -> String {
    let mut body = String::with_capacity(n * 130);
    for i in from..from + n {
        body += &format!(
            "{{\"tenant\":\"t{:03}.onmicrosoft.com\",\"cmdlet\":\"Set-Mailbox\",\"parameters\":{{\"Identity\":\"user{:03}\",\"CustomAttribute1\":\"v{i}\"}}}}\n",
            i % tenants,
            i % 5 + 1
        );
    }
    body
}

/// A value of the daemon's `/metrics`: the sum of every series of `name`.
async fn metric(client: &reqwest::Client, url: &str, name: &str) -> anyhow::Result<f64> {
    let text = client.get(format!("{url}/metrics")).send().await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

async fn one(backend: &str, args: &ScaleArgs) -> anyhow::Result<()> {
    let path = std::env::temp_dir().join(format!("psbroker-scale-{}-{backend}", std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path)?;
    let dir = TempDir(path);
    let schema = if backend == "postgres" { Some(ScratchSchema::create().await) } else { None };
    let store_url = match &schema {
        Some(s) => s.url(),
        None => format!("sqlite://{}", dir.path().join("psbroker.db").display()),
    };
    let config = dir.path().join("psbroker.toml");
    std::fs::write(&config, config_text(&store_url, dir.path(), args.tenants))?;

    let (daemon, first_ready) = spawn(&config)?;
    let token = std::fs::read_to_string(dir.path().join("api-token"))?;
    let client = crate::cli_token::bearer_client(token.trim())?;
    let bodies: Vec<String> = (0..args.items)
        .step_by(args.batch)
        .map(|from| ndjson(from, args.batch.min(args.items - from), args.tenants))
        .collect();
    let started = Instant::now();
    for body in bodies {
        let r = client
            .post(format!("{}/v1/batches", daemon.url))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await?;
        anyhow::ensure!(r.status().as_u16() == 202, "batch refused: {} {}", r.status(), r.text().await?);
    }
    let intake = started.elapsed();
    // A cluster node (PostgreSQL) counts the shared queue on its heartbeat: give it a few.
    let mut depth = 0f64;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        depth = metric(&client, &daemon.url, "psbroker_queue_depth").await?;
        if depth >= args.items as f64 {
            break;
        }
    }
    let (queued_rss, queued_peak) = rss_mib(daemon.child.id());
    drop(daemon); // SIGKILL

    tokio::time::sleep(Duration::from_secs(5)).await;
    let (daemon, ready) = spawn(&config)?;
    let mut after = 0f64;
    for _ in 0..6 {
        after = after.max(rss_mib(daemon.child.id()).0);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (_, after_peak) = rss_mib(daemon.child.id());
    let depth_after = metric(&client, &daemon.url, "psbroker_queue_depth").await?;
    let oldest = metric(&client, &daemon.url, "psbroker_oldest_queued_seconds").await?;
    drop(daemon);
    if let Some(s) = schema {
        s.drop_now().await;
    }
    println!("{backend}:");
    println!(
        "  intake                  {} items in {:.1} s = {:.0} items/s ({} NDJSON batches of {})",
        args.items,
        intake.as_secs_f64(),
        args.items as f64 / intake.as_secs_f64(),
        args.items.div_ceil(args.batch),
        args.batch
    );
    println!("  queued                  {depth:.0} (first start ready in {:.2} s)", first_ready.as_secs_f64());
    println!("  RSS while queued        {queued_rss:.0} MiB (peak {queued_peak:.0} MiB, during intake)");
    println!("  restart to listening    {:.2} s (SIGKILL, then the same database)", ready.as_secs_f64());
    println!("  RSS after the restart   {after:.0} MiB over 3 s (peak {after_peak:.0} MiB)");
    println!("  after the restart       {depth_after:.0} queued, oldest {oldest:.0} s old (from the stored times)");
    Ok(())
}

pub async fn run(args: ScaleArgs) -> anyhow::Result<()> {
    let backends: &[&str] = match args.backend.as_str() {
        "both" => &["sqlite", "postgres"],
        "sqlite" => &["sqlite"],
        "postgres" => &["postgres"],
        other => anyhow::bail!("--backend {other}: expected sqlite, postgres or both"),
    };
    println!(
        "bench scale: {} queued Set-Mailbox over {} tenants, 4 admins; sessions never finish opening, so all stays queued",
        args.items, args.tenants
    );
    for backend in backends {
        one(backend, &args).await?;
    }
    if backends.contains(&"postgres") {
        super::nodes::run(&args.nodes).await?;
    }
    Ok(())
}
