//! `psbroker bench chaos`: a batch through the real daemon (HTTP API, SQLite store, scheduler,
//! WinRM connector) against the simulator on the wire, with a share of the remote requests hit
//! by injected faults of every kind and shells that die young. The same scenario is the chaos
//! test (`tests/chaos.rs`), which asserts on what [`run`] returns; this command prints it.

use super::{ms, quantile};
use crate::app::Application;
use crate::config::{Config, FaultConfig};
use crate::remote::FaultClass;
use crate::sim::{FaultKind, SimStats};
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct ChaosArgs {
    #[arg(long, default_value_t = 10_000)]
    pub invocations: u32,
    #[arg(long, default_value_t = 4)]
    pub admins: u32,
    #[arg(long, default_value_t = 40)]
    pub tenants: u32,
    /// Share of remote requests hit by an injected fault (also the rate of each Create refusal).
    #[arg(long, default_value_t = 0.05)]
    pub fault_rate: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The service kills shells this long after their creation; the broker believes they live
    /// `broker_max_age_seconds`, so some die under it.
    #[arg(long, default_value_t = 3.0)]
    pub shell_lifetime_seconds: f64,
    #[arg(long, default_value_t = 5.0)]
    pub broker_max_age_seconds: f64,
}

impl Default for ChaosArgs {
    fn default() -> Self {
        Self {
            invocations: 10_000,
            admins: 4,
            tenants: 40,
            fault_rate: 0.05,
            seed: 1,
            shell_lifetime_seconds: 3.0,
            broker_max_age_seconds: 5.0,
        }
    }
}

pub fn tenant(i: u32) -> String {
    format!("t{i:03}.onmicrosoft.com")
}

/// The faults: `rate` of requests split over the request-level kinds and early expiry; each
/// Create refused for quota (user, tenant) or budget with `rate` each. Spikes reach 3 s, past
/// the 1 s request timeout (a Receive's is 2 s), so some are timeouts and some only late.
pub fn faults(rate: f64, seed: u64) -> FaultConfig {
    FaultConfig {
        seed,
        drop_before: rate * 0.18,
        drop_after: rate * 0.18,
        http_500: rate * 0.18,
        http_503: rate * 0.18,
        http_429: 0.0,
        retry_after_seconds: 1,
        latency_spike: rate * 0.14,
        latency_spike_min_ms: 0,
        latency_spike_ms: 3000,
        shell_expiry: rate * 0.14,
        user_quota: rate,
        tenant_quota: rate,
        throttle: rate,
        throttle_wait_seconds: 1,
        actions: vec![],
    }
}

/// The daemon's configuration: admins `a0..` (cap 3) over tenants `t000..` (cap 20), reached
/// through WS-Management on the embedded simulator with zero latency; short timeouts so a late
/// answer is a timeout, short cool-downs, room for retries.
pub fn config(args: &ChaosArgs, store_url: &str) -> Config {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = \"{store_url}\"\n\
         [scheduler]\nmax_attempts = 10\nquota_cooldown_seconds = 1\nretry_backoff_initial_ms = 50\nretry_backoff_max_ms = 1000\n\
         [profiles.default]\nkind = \"wsman\"\nallow_plain_http = true\n\
         connection_uri = \"http://{{simulator}}/powershell-liveid?DelegatedOrg={{tenant}}\"\n\
         operation_timeout_seconds = 1\nrequest_timeout_seconds = 1.0\nopen_timeout_seconds = 10\ncommand_timeout_seconds = 10\n\
         session_max_age_seconds = {}\nmax_age_jitter_percent = 20\n\
         [simulator]\nopen_latency_ms = 0\ncommand_latency_ms = 0\nclose_latency_ms = 0\nmailboxes_per_tenant = 10\n\
         shell_lifetime_seconds = {}\n",
        args.broker_max_age_seconds, args.shell_lifetime_seconds
    );
    for a in 0..args.admins {
        text += &format!(
            "[[admins]]\nname = \"a{a}\"\nupn = \"a{a}@partner.onmicrosoft.com\"\ncredential = \"literal:pw{a}\"\n"
        );
    }
    for t in 0..args.tenants {
        text += &format!("[[tenants]]\ndomain = \"{}\"\n", tenant(t));
    }
    let mut config = Config::from_toml(&text).expect("chaos config is valid");
    config.simulator.faults = faults(args.fault_rate, args.seed);
    config
}

/// Half reads (safe to repeat), half writes (must never run twice), round-robin over tenants.
pub fn items(args: &ChaosArgs) -> Vec<Json> {
    (0..args.invocations)
        .map(|i| {
            let t = tenant(i % args.tenants);
            let user = format!("user{:03}", i % 10 + 1);
            if i % 2 == 0 {
                json!({"tenant": t, "cmdlet": "Get-Mailbox", "parameters": {"Identity": user}})
            } else {
                json!({"tenant": t, "cmdlet": "Set-Mailbox", "parameters": {"Identity": user, "CustomAttribute1": format!("v{i}")}})
            }
        })
        .collect()
}

/// What one run produced: every result, the simulator's testimony, the broker's counters.
pub struct ChaosRun {
    /// One per invocation, in submission order (the API's batch results).
    pub results: Vec<Json>,
    /// Taken after the daemon stopped: `open_by_user` lists shells it left open.
    pub stats: SimStats,
    /// Invocation retries by fault class (the daemon's metrics).
    pub retries: BTreeMap<&'static str, u64>,
    /// Remote failures by class, opens included.
    pub remote_faults: BTreeMap<&'static str, u64>,
    /// Submission to the last result.
    pub makespan: Duration,
}

/// Runs the scenario on a fresh daemon and store (in a temporary directory).
pub async fn run(args: &ChaosArgs) -> anyhow::Result<ChaosRun> {
    let dir = tempfile_dir()?;
    let store_url = format!("sqlite://{}", dir.join("chaos.db").display());
    let app = Application::build(config(args, &store_url)).await?.spawn();
    let sim = app.simulator.clone().expect("the scenario runs on the simulator");
    let token = std::fs::read_to_string(dir.join(crate::auth::token::TOKEN_FILE))?;
    let client = crate::cli_token::bearer_client(token.trim())?;

    let started = Instant::now();
    let resp = client.post(app.url("/v1/batches")).json(&json!({"items": items(args)})).send().await?;
    anyhow::ensure!(resp.status().as_u16() == 202, "batch refused: {}", resp.text().await?);
    let batch: Json = resp.json().await?;
    let id = batch["id"].as_str().unwrap_or_default().to_string();
    loop {
        let c: Json = client.get(app.url(&format!("/v1/batches/{id}"))).send().await?.json().await?;
        if c["done"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let makespan = started.elapsed();
    let text = client.get(app.url(&format!("/v1/batches/{id}/results"))).send().await?.text().await?;
    let results = text.lines().map(serde_json::from_str).collect::<Result<Vec<Json>, _>>()?;
    let metrics = app.broker.metrics();
    let count = |vec: &prometheus::IntCounterVec| {
        FaultClass::ALL
            .iter()
            .map(|c| (c.code(), vec.with_label_values(&[c.code()]).get()))
            .filter(|(_, n)| *n > 0)
            .collect()
    };
    let (retries, remote_faults) = (count(&metrics.retries), count(&metrics.remote_faults));
    app.stop().await?;
    let stats = sim.stats();
    if std::env::var_os("PSBROKER_BENCH_KEEP").is_none() {
        std::fs::remove_dir_all(&dir).ok();
    }
    Ok(ChaosRun { results, stats, retries, remote_faults, makespan })
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("psbroker-chaos-{}-{}", std::process::id(), uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The faults that can hide whether a command ran, and the codes they surface as. A failed
/// write must show one of these codes, and its pipeline must have met a matching fault.
pub fn hiding_kinds(code: &str) -> &'static [FaultKind] {
    match code {
        "connection_lost" => &[FaultKind::DropBefore, FaultKind::DropAfter],
        "server_error" => &[FaultKind::Http500],
        "remote_timeout" => &[FaultKind::LatencySpike],
        "session_lost" => &[FaultKind::ShellExpiry],
        _ => &[],
    }
}

/// Outcome counts by code ("" for success).
pub fn outcomes(results: &[Json]) -> BTreeMap<String, u64> {
    let mut by_code = BTreeMap::new();
    for r in results {
        let code = r["error"]["code"].as_str().unwrap_or(if r["status"] == "succeeded" { "succeeded" } else { "?" });
        *by_code.entry(code.to_string()).or_insert(0) += 1;
    }
    by_code
}

/// Failed writes, and how many of them met an injected fault that can hide their outcome on
/// one of their own requests (the chaos test requires all of them).
pub fn failed_writes_explained(run: &ChaosRun) -> (usize, usize) {
    let failed: Vec<&Json> =
        run.results.iter().filter(|r| r["cmdlet"] == "Set-Mailbox" && r["status"] == "failed").collect();
    let explained = failed
        .iter()
        .filter(|r| {
            let hiding = hiding_kinds(r["error"]["code"].as_str().unwrap_or_default());
            let id = r["id"].as_str().and_then(|id| id.parse::<uuid::Uuid>().ok());
            id.and_then(|id| run.stats.pipeline_faults.get(&id))
                .is_some_and(|met| met.iter().any(|k| hiding.contains(k)))
        })
        .count();
    (failed.len(), explained)
}

/// Writes whose command ran more than once, per the simulator.
pub fn writes_run_twice(run: &ChaosRun) -> usize {
    run.results
        .iter()
        .filter(|r| r["cmdlet"] == "Set-Mailbox")
        .filter_map(|r| r["id"].as_str().and_then(|id| id.parse::<uuid::Uuid>().ok()))
        .filter(|id| run.stats.executions.get(id).copied().unwrap_or(0) > 1)
        .count()
}

pub async fn chaos(args: ChaosArgs) -> anyhow::Result<()> {
    let run = run(&args).await?;
    let requests_faulted: u64 = run.stats.injected.values().sum();
    println!(
        "psbroker bench chaos: {} invocations (half Get-Mailbox, half Set-Mailbox) over {} tenants, {} admins × cap 3, \
         WS-Man/PSRP to the simulator (latency 0), fault rate {:.1} %, shells live {} s (broker believes {} s), seed {}",
        args.invocations,
        args.tenants,
        args.admins,
        args.fault_rate * 100.0,
        args.shell_lifetime_seconds,
        args.broker_max_age_seconds,
        args.seed
    );
    println!(
        "  injected faults          {requests_faulted} in all, over {} WS-Management requests and {} shell creations",
        run.stats.requests, run.stats.creates
    );
    for kind in FaultKind::ALL {
        println!("    {:<22} {}", kind.as_str(), run.stats.injected.get(&kind).copied().unwrap_or(0));
    }
    println!("  remote failures seen by the broker, by class (opens included)");
    for (class, n) in &run.remote_faults {
        println!("    {class:<22} {n}");
    }
    println!("  retries by class");
    for (class, n) in &run.retries {
        println!("    {class:<22} {n}");
    }
    println!("  final outcomes");
    for (code, n) in outcomes(&run.results) {
        println!("    {code:<22} {n}");
    }
    let reads_failed =
        run.results.iter().filter(|r| r["cmdlet"] == "Get-Mailbox" && r["status"] != "succeeded").count();
    println!("  reads failed             {reads_failed}");
    let (failed, explained) = failed_writes_explained(&run);
    println!("  writes failed            {failed} (outcome unknown; {explained} of them hit by an injected fault that hides it)");
    println!("  writes executed twice    {}", writes_run_twice(&run));
    println!(
        "  high-water marks         {} shells per admin (cap 3), {} per tenant (cap 20); left open after stop: {}",
        run.stats.max_by_user.values().max().copied().unwrap_or(0),
        run.stats.max_by_tenant.values().max().copied().unwrap_or(0),
        run.stats.open_by_user.values().sum::<u32>()
    );
    println!(
        "  shells                   {} opened, {} closed, {} expired (early or at their lifetime)",
        run.stats.shells_opened, run.stats.shells_closed, run.stats.shells_expired
    );
    let secs = run.makespan.as_secs_f64();
    println!("  makespan                 {:.1} s → {:.0} invocations/s", secs, args.invocations as f64 / secs);
    let mut total: Vec<Duration> = run
        .results
        .iter()
        .filter_map(|r| {
            let t = &r["timing"];
            Some(Duration::from_secs_f64(t["queue_seconds"].as_f64()? + t["run_seconds"].as_f64()?))
        })
        .collect();
    total.sort();
    let mut last: Vec<Duration> =
        run.results.iter().filter_map(|r| r["timing"]["run_seconds"].as_f64().map(Duration::from_secs_f64)).collect();
    last.sort();
    println!(
        "  latency, accepted → result: p50 {:.0} ms, p99 {:.0} ms; last attempt's run: p50 {:.1} ms, p99 {:.1} ms",
        ms(quantile(&total, 0.5)),
        ms(quantile(&total, 0.99)),
        ms(quantile(&last, 0.5)),
        ms(quantile(&last, 0.99))
    );
    Ok(())
}
