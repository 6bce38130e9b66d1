//! `psbroker bench bulk`: one run that measures the scheduler against its lower bound.
//!
//! The real daemon (HTTP API, SQLite store on disk, scheduler, in-process simulator with fixed
//! latencies) takes a batch of `tenants × per_tenant` cmdlets; its makespan is compared with
//! LB = max(Σ_t(open + n_t·cmd)/C, max_t(open + n_t·cmd/min(tenant_cap, C))), C = Σ admin caps,
//! and with a naive client that opens, runs and closes a session per invocation under the same
//! caps. Mid-batch, interactive calls measure how long urgent work waits.

use super::ms;
use crate::app::{Application, Running};
use crate::config::Config;
use crate::remote::{Command, Connector};
use crate::sim::Simulator;
use serde_json::{json, Value as Json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

#[derive(clap::Args, Debug, Clone)]
pub struct BulkArgs {
    #[arg(long, default_value_t = 200)]
    pub open_ms: u64,
    #[arg(long, default_value_t = 20)]
    pub cmd_ms: u64,
    /// Cost of closing a session (a WS-Man Delete round trip).
    #[arg(long, default_value_t = 10)]
    pub close_ms: u64,
    #[arg(long, default_value_t = 3)]
    pub admins: u32,
    #[arg(long, default_value_t = 3)]
    pub admin_cap: u32,
    #[arg(long, default_value_t = 60)]
    pub tenants: u32,
    #[arg(long, default_value_t = 20)]
    pub per_tenant: u32,
    #[arg(long, default_value_t = 20)]
    pub tenant_cap: u32,
    /// Skip the naive baseline (it takes about 8× longer than the broker).
    #[arg(long)]
    pub skip_naive: bool,
}

pub fn tenant_name(i: u32) -> String {
    format!("t{i:03}.onmicrosoft.com")
}

/// Interactive calls sampled across the batch, each on its own cold tenant.
const PROBES: u32 = 5;

/// A configuration for the benchmark's shape: admins `a0..`, tenants `t000..` plus [`PROBES`]
/// tenants that no batch touches (for the cold interactive calls).
pub fn bench_config(args: &BulkArgs, store_url: &str) -> Config {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = \"{store_url}\"\n\
         [profiles.default]\nkind = \"simulator\"\n\
         [simulator]\nopen_latency_ms = {}\ncommand_latency_ms = {}\nclose_latency_ms = {}\nmailboxes_per_tenant = 5\n",
        args.open_ms, args.cmd_ms, args.close_ms
    );
    for a in 0..args.admins {
        text += &format!(
            "[[admins]]\nname = \"a{a}\"\nupn = \"a{a}@partner.onmicrosoft.com\"\ncredential = \"literal:pw{a}\"\ncap = {}\n",
            args.admin_cap
        );
    }
    for t in 0..args.tenants + PROBES {
        text += &format!("[[tenants]]\ndomain = \"{}\"\ncap = {}\n", tenant_name(t), args.tenant_cap);
    }
    Config::from_toml(&text).expect("benchmark config is valid")
}

pub fn lower_bound(args: &BulkArgs) -> Duration {
    lower_bound_with(args, args.open_ms as f64, args.cmd_ms as f64)
}

/// The same bound for given open and command times in milliseconds.
fn lower_bound_with(args: &BulkArgs, open: f64, cmd: f64) -> Duration {
    let c = (args.admins * args.admin_cap) as f64;
    let n = args.per_tenant as f64;
    let per_tenant = open + n * cmd;
    let spread = args.tenants as f64 * per_tenant / c;
    let longest = open + n * cmd / (args.tenant_cap as f64).min(c);
    Duration::from_secs_f64(spread.max(longest) / 1000.0)
}

async fn post(client: &reqwest::Client, url: String, body: Json) -> anyhow::Result<Json> {
    let resp = client.post(url).json(&body).send().await?;
    let status = resp.status();
    let json: Json = resp.json().await?;
    anyhow::ensure!(status.is_success(), "{status}: {json}");
    Ok(json)
}

struct Interactive {
    wait: Duration,
    total: Duration,
}

async fn interactive_call(client: &reqwest::Client, app: &Running, tenant: &str) -> anyhow::Result<Interactive> {
    let body =
        json!({"tenant": tenant, "cmdlet": "Get-Mailbox", "parameters": {"ResultSize": 1}, "priority": "interactive"});
    let sent = Instant::now();
    let r = post(client, app.url("/v1/invocations"), body).await?;
    let total = sent.elapsed();
    anyhow::ensure!(r["status"] == "succeeded", "interactive call did not succeed: {r}");
    let wait = Duration::from_secs_f64(r["timing"]["queue_seconds"].as_f64().unwrap_or(f64::NAN));
    Ok(Interactive { wait, total })
}

/// Runs the batch on a fresh daemon and store. With `probes`, interactive calls are made at
/// evenly spaced moments: on a tenant being served (warm) and on one with no session (cold),
/// so waits at wave transitions are seen too. Makespan is taken from the run without probes,
/// since each cold call takes a slot from the batch.
async fn run_batch(args: &BulkArgs, probes: bool) -> anyhow::Result<BatchRun> {
    let dir = std::env::temp_dir().join(format!("psbroker-bench-{}-{probes}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let store_url = format!("sqlite://{}", dir.join("bench.db").display());
    let app = Application::build(bench_config(args, &store_url)).await?.spawn();
    let sim = app.simulator.clone().expect("bench runs on the simulator");
    // The daemon wrote its bootstrap admin token next to the database: the bench pays for auth too.
    let token = std::fs::read_to_string(dir.join(crate::auth::token::TOKEN_FILE))?;
    let client = crate::cli_token::bearer_client(&token)?;
    let items: Vec<Json> = (0..args.tenants)
        .flat_map(|t| (0..args.per_tenant).map(move |i| (t, i)))
        .map(|(t, i)| json!({"tenant": tenant_name(t), "cmdlet": "Get-Mailbox", "parameters": {"Identity": format!("user{:03}", i % 5 + 1)}}))
        .collect();
    let lb = lower_bound(args);
    let started = Instant::now();
    let batch = post(&client, app.url("/v1/batches"), json!({"items": items})).await?;
    let id = batch["id"].as_str().unwrap_or_default().to_string();

    let (mut warm, mut cold) = (Vec::new(), Vec::new());
    for k in 0..if probes { PROBES } else { 0 } {
        let at = started + lb.mul_f64((k + 1) as f64 / (PROBES + 1) as f64);
        tokio::time::sleep_until(at.into()).await;
        let busy = app.broker.sessions().await.into_iter().find(|s| s.state == "busy").map(|s| s.tenant);
        let cold_tenant = tenant_name(args.tenants + k);
        let cold_call = interactive_call(&client, &app, &cold_tenant);
        match busy {
            Some(t) => {
                let (w, c) = tokio::join!(interactive_call(&client, &app, &t), cold_call);
                warm.push(w?);
                cold.push(c?);
            }
            None => cold.push(cold_call.await?),
        }
    }

    let counts = loop {
        let c: Json = client.get(app.url(&format!("/v1/batches/{id}"))).send().await?.json().await?;
        if c["done"] == true {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let makespan = started.elapsed();
    let stats = sim.stats();
    app.stop().await?;
    if std::env::var_os("PSBROKER_BENCH_KEEP").is_none() {
        std::fs::remove_dir_all(&dir).ok();
    }
    Ok(BatchRun { makespan, counts, warm, cold, stats, sim })
}

/// What one run of the batch measured.
struct BatchRun {
    makespan: Duration,
    counts: Json,
    warm: Vec<Interactive>,
    cold: Vec<Interactive>,
    stats: crate::sim::SimStats,
    sim: Simulator,
}

pub async fn bulk(args: BulkArgs) -> anyhow::Result<()> {
    let lb = lower_bound(&args);
    let quiet = run_batch(&args, false).await?;
    let probed = run_batch(&args, true).await?;
    let (open_real, cmd_real) = calibrate(&quiet.sim).await?;
    let lb_real = lower_bound_with(&args, ms(open_real), ms(cmd_real));
    let (makespan, counts, stats, sim) = (quiet.makespan, quiet.counts, quiet.stats, quiet.sim);
    let total = args.tenants * args.per_tenant;
    let naive = if args.skip_naive { None } else { Some(naive_baseline(&args, &sim).await?) };

    let ratio = makespan.as_secs_f64() / lb.as_secs_f64();
    println!("psbroker bench bulk: {} admins × cap {}, {} tenants × {} cmdlets (tenant cap {}), latencies open {} ms, cmdlet {} ms, close {} ms",
        args.admins, args.admin_cap, args.tenants, args.per_tenant, args.tenant_cap, args.open_ms, args.cmd_ms, args.close_ms);
    println!("  invocations              {total} ({} succeeded, {} failed)", counts["succeeded"], counts["failed"]);
    println!("  psbroker makespan        {:.0} ms", ms(makespan));
    println!("  lower bound LB           {:.0} ms", ms(lb));
    println!("  makespan / LB            {ratio:.3}   (target ≤ 1.10)");
    println!(
        "  simulator's real latencies without the broker: open {:.1} ms, cmdlet {:.2} ms (timer granularity) → LB {:.0} ms, makespan / that LB {:.3}",
        ms(open_real),
        ms(cmd_real),
        ms(lb_real),
        makespan.as_secs_f64() / lb_real.as_secs_f64()
    );
    if let Some(naive) = naive {
        println!("  naive makespan           {:.0} ms", ms(naive));
        println!(
            "  naive / psbroker         {:.2}×  (target ≥ 8×; ceiling for these latencies at makespan = LB: {:.2}×)",
            naive.as_secs_f64() / makespan.as_secs_f64(),
            naive_ideal(&args).as_secs_f64() / lb.as_secs_f64()
        );
    }
    let target = args.open_ms + 2 * args.cmd_ms;
    println!(
        "  second run, with {PROBES} interactive calls on cold tenants (and on busy tenants) spread over the batch: makespan {:.0} ms",
        ms(probed.makespan)
    );
    println!("  interactive wait, warm tenant: {}", waits(&probed.warm));
    println!("  interactive wait, cold tenant: {}   (target ≤ open + 2 × cmdlet = {target} ms)", waits(&probed.cold));
    println!(
        "  sessions opened          {} (simulator), most shells per admin {}, per tenant {}",
        stats.shells_opened,
        stats.max_by_user.values().max().copied().unwrap_or(0),
        stats.max_by_tenant.values().max().copied().unwrap_or(0)
    );
    Ok(())
}

/// "median M ms, worst W ms (each: …)" for a set of interactive calls.
fn waits(calls: &[Interactive]) -> String {
    if calls.is_empty() {
        return "no sample".into();
    }
    let mut w: Vec<f64> = calls.iter().map(|c| ms(c.wait)).collect();
    w.sort_by(f64::total_cmp);
    let each: Vec<String> = calls.iter().map(|c| format!("{:.0}/{:.0}", ms(c.wait), ms(c.total))).collect();
    format!(
        "median {:.0} ms, worst {:.0} ms (wait/answered per call: {})",
        w[w.len() / 2],
        w[w.len() - 1],
        each.join(", ")
    )
}

/// Measures what the simulator's latencies really take on this machine, with no broker in the
/// way: a sleep of 20 ms on a 1 ms timer wheel lasts a little longer than 20 ms.
async fn calibrate(sim: &Simulator) -> anyhow::Result<(Duration, Duration)> {
    let connector = sim.connector();
    let target = crate::remote::SessionTarget {
        admin_upn: "a0@partner.onmicrosoft.com".into(),
        credential: "pw0".to_string().into(),
        tenant: tenant_name(0),
        connection_uri: String::new(),
        configuration_name: "Microsoft.Exchange".into(),
        tokens: None,
    };
    let t = Instant::now();
    let session = connector.open(&target).await?;
    let open = t.elapsed();
    let command =
        Command { invocation_id: uuid::Uuid::new_v4(), cmdlet: "Get-AcceptedDomain".into(), parameters: vec![] };
    let t = Instant::now();
    const N: u32 = 25;
    for _ in 0..N {
        session.invoke(&command).await?;
    }
    let cmd = t.elapsed() / N;
    session.close().await?;
    sim.reset_high_water_marks();
    Ok((open, cmd))
}

/// The naive baseline's best case: every invocation pays open + cmdlet + close, C at a time.
fn naive_ideal(args: &BulkArgs) -> Duration {
    let c = (args.admins * args.admin_cap) as f64;
    let n = (args.tenants * args.per_tenant) as f64;
    Duration::from_millis(((args.open_ms + args.cmd_ms + args.close_ms) as f64 * n / c) as u64)
}

/// Each admin runs `admin_cap` workers; each worker takes the next invocation, opens a session
/// for its tenant, runs the cmdlet and closes the session (what a script without a pool does).
async fn naive_baseline(args: &BulkArgs, sim: &Simulator) -> anyhow::Result<Duration> {
    sim.reset_high_water_marks();
    let connector = sim.connector();
    let work: Arc<Mutex<Vec<u32>>> = Arc::new(Mutex::new(
        (0..args.tenants).flat_map(|t| std::iter::repeat_n(t, args.per_tenant as usize)).collect(),
    ));
    let started = Instant::now();
    let mut workers = Vec::new();
    for a in 0..args.admins {
        for _ in 0..args.admin_cap {
            let (work, connector) = (work.clone(), connector.clone());
            workers.push(tokio::spawn(async move { naive_worker(a, work, connector).await }));
        }
    }
    for w in workers {
        w.await??;
    }
    Ok(started.elapsed())
}

async fn naive_worker(admin: u32, work: Arc<Mutex<Vec<u32>>>, connector: Arc<dyn Connector>) -> anyhow::Result<()> {
    loop {
        let Some(t) = work.lock().await.pop() else { return Ok(()) };
        let target = crate::remote::SessionTarget {
            admin_upn: format!("a{admin}@partner.onmicrosoft.com"),
            credential: format!("pw{admin}").into(),
            tenant: tenant_name(t),
            connection_uri: String::new(),
            configuration_name: "Microsoft.Exchange".into(),
            tokens: None,
        };
        let session = connector.open(&target).await?;
        let command = Command { invocation_id: uuid::Uuid::new_v4(), cmdlet: "Get-Mailbox".into(), parameters: vec![] };
        session.invoke(&command).await?;
        session.close().await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_bound_matches_the_issue_formula() {
        let args = BulkArgs {
            open_ms: 200,
            cmd_ms: 20,
            close_ms: 10,
            admins: 3,
            admin_cap: 3,
            tenants: 60,
            per_tenant: 20,
            tenant_cap: 20,
            skip_naive: true,
        };
        // Σ(200 + 20·20)/9 = 60·600/9 = 4000 ms; the per-tenant term is 200 + 400/9.
        assert_eq!(lower_bound(&args).as_millis(), 4000);
        let one = BulkArgs { tenants: 1, per_tenant: 1000, ..args };
        // One tenant: max(200 + 20000)/9 = 2244 vs 200 + 20000/9 = 2422 → the second term.
        assert_eq!(lower_bound(&one).as_millis(), 2422);
    }
}
