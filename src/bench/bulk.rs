//! `psbroker bench bulk`: one run that measures the scheduler against its lower bound and
//! against the scripts an admin would otherwise write.
//!
//! For each latency profile, the real daemon (HTTP API, SQLite store on disk, scheduler,
//! in-process simulator with fixed latencies) takes a batch of `tenants × per_tenant` cmdlets.
//! Its makespan is compared with
//! LB = max(Σ_t(open + n_t·cmd)/C, max_t(open + n_t·cmd/min(tenant_cap, C))), C = Σ admin caps,
//! with the whole-session bound (no session carries more than one tenant's work, see
//! [`whole_session_bound`]), and, on the same simulator, with two scripts under the same caps:
//! the *careful* one (C workers, `admin_cap` per admin, each takes a tenant, opens one session,
//! runs all its cmdlets, closes it) and the *naive* one (a session per invocation). Mid-batch,
//! interactive calls measure how long urgent work waits; after the batch, how soon the shells
//! beyond the warm reserve are given back. Everything runs at the simulator's real latencies
//! (its sleeps are tokio sleeps on a 1 ms timer) unless `--naive-speedup` says otherwise.

use super::ms;
use crate::app::{Application, Running};
use crate::config::Config;
use crate::remote::{Command, PsValue, SessionTarget};
use crate::sim::Simulator;
use serde_json::{json, Value as Json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// The latency profiles the bench knows.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileName {
    /// open 200 ms, cmdlet 20 ms, close 10 ms; 60 tenants × 20 cmdlets.
    Fast,
    /// Exchange Online-like: open 3000 ms, cmdlet 300 ms, close 100 ms; 20 tenants × 20 cmdlets.
    Exo,
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct BulkArgs {
    /// Run only this profile (default: both, the table at the end compares them).
    #[arg(long, value_enum)]
    pub profile: Option<ProfileName>,
    /// Overrides the profile's open latency.
    #[arg(long)]
    pub open_ms: Option<u64>,
    #[arg(long)]
    pub cmd_ms: Option<u64>,
    /// Cost of closing a session (a WS-Man Delete round trip).
    #[arg(long)]
    pub close_ms: Option<u64>,
    #[arg(long)]
    pub admins: Option<u32>,
    #[arg(long)]
    pub admin_cap: Option<u32>,
    #[arg(long)]
    pub tenants: Option<u32>,
    #[arg(long)]
    pub per_tenant: Option<u32>,
    #[arg(long)]
    pub tenant_cap: Option<u32>,
    /// Skip the naive baseline (it takes about 8× longer than the broker).
    #[arg(long)]
    pub skip_naive: bool,
    /// Run the naive baseline with the simulator's latencies divided by this factor and scale
    /// its makespan back (default 1). On exo it takes 2.5 minutes; 10 makes that 15 s but
    /// reads about 2 % slow, since each of its sleeps overshoots by a timer tick.
    #[arg(long)]
    pub naive_speedup: Option<f64>,
    /// Skip the same batch over WinRM and over REST (with and without `$batch`) on the wire.
    #[arg(long)]
    pub skip_transports: bool,
}

/// One workload under one latency profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub name: &'static str,
    pub open_ms: u64,
    pub cmd_ms: u64,
    pub close_ms: u64,
    pub admins: u32,
    pub admin_cap: u32,
    pub tenants: u32,
    pub per_tenant: u32,
    pub tenant_cap: u32,
    /// See [`BulkArgs::naive_speedup`].
    pub naive_speedup: f64,
}

impl Shape {
    pub fn preset(profile: ProfileName) -> Shape {
        let fast = Shape {
            name: "fast",
            open_ms: 200,
            cmd_ms: 20,
            close_ms: 10,
            admins: 3,
            admin_cap: 3,
            tenants: 60,
            per_tenant: 20,
            tenant_cap: 20,
            naive_speedup: 1.0,
        };
        match profile {
            ProfileName::Fast => fast,
            ProfileName::Exo => Shape { name: "exo", open_ms: 3000, cmd_ms: 300, close_ms: 100, tenants: 20, ..fast },
        }
    }

    /// The shapes to run: the chosen profile (or both), with the command line's overrides.
    pub fn from_args(args: &BulkArgs) -> Vec<Shape> {
        let profiles = match args.profile {
            Some(p) => vec![p],
            None => vec![ProfileName::Fast, ProfileName::Exo],
        };
        profiles
            .into_iter()
            .map(|p| {
                let d = Shape::preset(p);
                Shape {
                    open_ms: args.open_ms.unwrap_or(d.open_ms),
                    cmd_ms: args.cmd_ms.unwrap_or(d.cmd_ms),
                    close_ms: args.close_ms.unwrap_or(d.close_ms),
                    admins: args.admins.unwrap_or(d.admins),
                    admin_cap: args.admin_cap.unwrap_or(d.admin_cap),
                    tenants: args.tenants.unwrap_or(d.tenants),
                    per_tenant: args.per_tenant.unwrap_or(d.per_tenant),
                    tenant_cap: args.tenant_cap.unwrap_or(d.tenant_cap),
                    naive_speedup: args.naive_speedup.unwrap_or(d.naive_speedup).max(1.0),
                    ..d
                }
            })
            .collect()
    }

    fn slots(&self) -> u32 {
        self.admins * self.admin_cap
    }

    fn latencies(&self) -> Latencies {
        Latencies { open: self.open_ms as f64, cmd: self.cmd_ms as f64, close: self.close_ms as f64 }
    }
}

/// Open, command and close times in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Latencies {
    open: f64,
    cmd: f64,
    close: f64,
}

pub fn tenant_name(i: u32) -> String {
    format!("t{i:03}.onmicrosoft.com")
}

fn admin_upn(a: u32) -> String {
    format!("a{a}@partner.onmicrosoft.com")
}

fn session_target(admin: u32, tenant: u32) -> SessionTarget {
    SessionTarget {
        admin_upn: admin_upn(admin),
        credential: format!("pw{admin}").into(),
        tenant: tenant_name(tenant),
        connection_uri: String::new(),
        configuration_name: "Microsoft.Exchange".into(),
        tokens: None,
    }
}

/// The batch's `i`-th cmdlet for a tenant, the same for the broker and the scripts.
pub(super) fn identity(i: u32) -> String {
    format!("user{:03}", i % 5 + 1)
}

/// Interactive calls sampled across the batch, each on its own cold tenant.
const PROBES: u32 = 5;

/// A configuration for the benchmark's shape: admins `a0..`, tenants `t000..` plus [`PROBES`]
/// tenants that no batch touches (for the cold interactive calls). Everything else, the
/// scheduler's settings included, is the default.
pub fn bench_config(shape: &Shape, store_url: &str) -> Config {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = \"{store_url}\"\n\
         [profiles.default]\nkind = \"simulator\"\n\
         [simulator]\nopen_latency_ms = {}\ncommand_latency_ms = {}\nclose_latency_ms = {}\nmailboxes_per_tenant = 5\n",
        shape.open_ms, shape.cmd_ms, shape.close_ms
    );
    for a in 0..shape.admins {
        text += &format!(
            "[[admins]]\nname = \"a{a}\"\nupn = \"{}\"\ncredential = \"literal:pw{a}\"\ncap = {}\n",
            admin_upn(a),
            shape.admin_cap
        );
    }
    for t in 0..shape.tenants + PROBES {
        text += &format!("[[tenants]]\ndomain = \"{}\"\ncap = {}\n", tenant_name(t), shape.tenant_cap);
    }
    Config::from_toml(&text).expect("benchmark config is valid")
}

pub fn lower_bound(shape: &Shape) -> Duration {
    lower_bound_with(shape, shape.latencies())
}

/// The issue's bound for given latencies: every tenant's open and commands spread perfectly
/// over the C slots, or its own commands over min(tenant cap, C) sessions.
fn lower_bound_with(shape: &Shape, l: Latencies) -> Duration {
    let c = shape.slots() as f64;
    let n = shape.per_tenant as f64;
    let spread = shape.tenants as f64 * (l.open + n * l.cmd) / c;
    let longest = l.open + n * l.cmd / (shape.tenant_cap as f64).min(c);
    Duration::from_secs_f64(spread.max(longest) / 1000.0)
}

/// A tighter bound for equal tenants: a session serves one tenant, so it carries at most
/// n·cmd of work, and a slot that runs s sessions spends s opens and s − 1 closes. The slots
/// must share W = tenants·n·cmd of work, so some slot needs s* = ⌈W / (C·n·cmd)⌉ sessions and
/// T ≥ s*·open + (s* − 1)·close + W/C. The issue's LB assumes every slot pays only
/// tenants/C opens, fractions included, which no schedule can do when tenants do not divide
/// into slots.
pub fn whole_session_bound(shape: &Shape) -> Duration {
    whole_session_bound_with(shape, shape.latencies())
}

fn whole_session_bound_with(shape: &Shape, l: Latencies) -> Duration {
    let c = shape.slots() as f64;
    let per_session = shape.per_tenant as f64 * l.cmd;
    let work = shape.tenants as f64 * per_session;
    let sessions = (work / (c * per_session)).ceil().max(1.0);
    let t = sessions * l.open + (sessions - 1.0) * l.close + work / c;
    Duration::from_secs_f64(t / 1000.0).max(lower_bound_with(shape, l))
}

pub(super) async fn post(client: &reqwest::Client, url: String, body: Json) -> anyhow::Result<Json> {
    let resp = client.post(url).json(&body).send().await?;
    let status = resp.status();
    let json: Json = resp.json().await?;
    anyhow::ensure!(status.is_success(), "{status}: {json}");
    Ok(json)
}

/// Polls the batch `id` until it is done; answers its final counts.
pub(super) async fn batch_done(client: &reqwest::Client, app: &Running, id: &str) -> anyhow::Result<Json> {
    batch_done_at(client, &app.url(""), id).await
}

/// [`batch_done`] on the daemon at `base` (`http://host:port`).
pub(super) async fn batch_done_at(client: &reqwest::Client, base: &str, id: &str) -> anyhow::Result<Json> {
    loop {
        let counts: Json = client.get(format!("{base}/v1/batches/{id}")).send().await?.json().await?;
        if counts["done"] == true {
            return Ok(counts);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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

/// Shells the broker held when the batch was done, and how long until only the warm reserve
/// was left.
struct GiveBack {
    at_done: u32,
    reserve: u32,
    linger: Duration,
    /// None: still above the reserve when the bench stopped watching.
    after: Option<Duration>,
}

fn open_shells(sim: &Simulator) -> u32 {
    sim.stats().open_by_user.values().sum()
}

/// Watches the simulator until the broker holds no more than its warm reserve.
async fn watch_give_back(sim: &Simulator, config: &Config, admins: u32) -> GiveBack {
    let (at_done, since) = (open_shells(sim), Instant::now());
    let reserve = admins * config.scheduler.warm_sessions_per_admin;
    let linger = Duration::from_secs(config.scheduler.idle_linger_seconds);
    let mut after = None;
    while since.elapsed() < linger + Duration::from_secs(5) {
        if open_shells(sim) <= reserve {
            after = Some(since.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    GiveBack { at_done, reserve, linger, after }
}

/// Runs the batch on a fresh daemon and store. With `probes`, interactive calls are made at
/// evenly spaced moments: on a tenant being served (warm) and on one with no session (cold),
/// so waits at wave transitions are seen too. Makespan is taken from the run without probes,
/// since each cold call takes a slot from the batch; that run also watches the shells being
/// given back after the batch.
async fn run_batch(shape: &Shape, probes: bool) -> anyhow::Result<BatchRun> {
    let dir = std::env::temp_dir().join(format!("psbroker-bench-{}-{}-{probes}", std::process::id(), shape.name));
    std::fs::create_dir_all(&dir)?;
    let store_url = format!("sqlite://{}", dir.join("bench.db").display());
    let config = bench_config(shape, &store_url);
    let app = Application::build(config.clone()).await?.spawn();
    let sim = app.simulator.clone().expect("bench runs on the simulator");
    // The daemon wrote its bootstrap admin token next to the database: the bench pays for auth too.
    let token = std::fs::read_to_string(dir.join(crate::auth::token::TOKEN_FILE))?;
    let client = crate::cli_token::bearer_client(&token)?;
    let items: Vec<Json> = (0..shape.tenants)
        .flat_map(|t| (0..shape.per_tenant).map(move |i| (t, i)))
        .map(|(t, i)| json!({"tenant": tenant_name(t), "cmdlet": "Get-Mailbox", "parameters": {"Identity": identity(i)}}))
        .collect();
    let lb = lower_bound(shape);
    let started = Instant::now();
    let batch = post(&client, app.url("/v1/batches"), json!({"items": items})).await?;
    let id = batch["id"].as_str().unwrap_or_default().to_string();

    let (mut warm, mut cold) = (Vec::new(), Vec::new());
    for k in 0..if probes { PROBES } else { 0 } {
        let at = started + lb.mul_f64((k + 1) as f64 / (PROBES + 1) as f64);
        tokio::time::sleep_until(at.into()).await;
        let busy = app.broker.sessions().await.into_iter().find(|s| s.state == "busy").map(|s| s.tenant);
        let cold_tenant = tenant_name(shape.tenants + k);
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

    let counts = batch_done(&client, &app, &id).await?;
    let makespan = started.elapsed();
    let stats = sim.stats();
    let given_back = if probes { None } else { Some(watch_give_back(&sim, &config, shape.admins).await) };
    app.stop().await?;
    if std::env::var_os("PSBROKER_BENCH_KEEP").is_none() {
        std::fs::remove_dir_all(&dir).ok();
    }
    Ok(BatchRun { makespan, counts, warm, cold, stats, sim, given_back })
}

/// What one run of the batch measured.
struct BatchRun {
    makespan: Duration,
    counts: Json,
    warm: Vec<Interactive>,
    cold: Vec<Interactive>,
    stats: crate::sim::SimStats,
    sim: Simulator,
    given_back: Option<GiveBack>,
}

/// One profile's figures for the closing table.
struct Row {
    shape: Shape,
    psbroker: Duration,
    careful: Duration,
    naive: Option<Duration>,
    transports: Vec<super::transports::TransportRun>,
}

pub async fn bulk(args: BulkArgs) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for shape in Shape::from_args(&args) {
        rows.push(bulk_profile(&shape, args.skip_naive, args.skip_transports).await?);
        println!();
    }
    print_table(&rows);
    print_transport_table(&rows);
    Ok(())
}

async fn bulk_profile(shape: &Shape, skip_naive: bool, skip_transports: bool) -> anyhow::Result<Row> {
    let lb = lower_bound(shape);
    let ws = whole_session_bound(shape);
    let quiet = run_batch(shape, false).await?;
    let probed = run_batch(shape, true).await?;
    let real = calibrate(&quiet.sim).await?;
    let (makespan, sim) = (quiet.makespan, &quiet.sim);
    let careful = careful_baseline(shape, sim).await?;
    let naive = if skip_naive { None } else { Some(naive_baseline(shape, sim).await?) };
    let total = shape.tenants * shape.per_tenant;
    let ratio = |d: Duration, to: Duration| d.as_secs_f64() / to.as_secs_f64();

    println!(
        "psbroker bench bulk [{}]: {} admins × cap {}, {} tenants × {} cmdlets (tenant cap {}), latencies open {} ms, cmdlet {} ms, close {} ms",
        shape.name, shape.admins, shape.admin_cap, shape.tenants, shape.per_tenant, shape.tenant_cap, shape.open_ms, shape.cmd_ms, shape.close_ms
    );
    let counts = &quiet.counts;
    println!("  invocations              {total} ({} succeeded, {} failed)", counts["succeeded"], counts["failed"]);
    println!("  psbroker makespan        {:.0} ms", ms(makespan));
    println!("  lower bound LB           {:.0} ms", ms(lb));
    println!("  makespan / LB            {:.3}   (target ≤ 1.10)", ratio(makespan, lb));
    println!(
        "  whole-session bound      {:.0} ms = {:.3} × LB; makespan / that bound {:.3}",
        ms(ws),
        ratio(ws, lb),
        ratio(makespan, ws)
    );
    let (lb_real, ws_real) = (lower_bound_with(shape, real), whole_session_bound_with(shape, real));
    println!(
        "  simulator's real latencies without the broker: open {:.1} ms, cmdlet {:.2} ms, close {:.1} ms (timer granularity) → LB {:.0} ms, makespan / that LB {:.3}, / that whole-session bound {:.3}",
        real.open,
        real.cmd,
        real.close,
        ms(lb_real),
        ratio(makespan, lb_real),
        ratio(makespan, ws_real)
    );
    println!(
        "  careful script           {:.0} ms = {:.3} × LB; careful / psbroker {:.2}×   (target ≥ 1.15× on exo)",
        ms(careful),
        ratio(careful, lb),
        ratio(careful, makespan)
    );
    if let Some(naive) = naive {
        let scaled = if shape.naive_speedup > 1.0 {
            format!(" (run {}× faster, scaled back)", shape.naive_speedup)
        } else {
            String::new()
        };
        println!("  naive script             {:.0} ms = {:.3} × LB{scaled}", ms(naive), ratio(naive, lb));
        println!(
            "  naive / psbroker         {:.2}×  (ceiling for these latencies at makespan = LB: {:.2}×)",
            ratio(naive, makespan),
            ratio(naive_ideal(shape), lb)
        );
    }
    if let Some(g) = &quiet.given_back {
        let after = match g.after {
            Some(d) => format!("{:.1} s after the batch", d.as_secs_f64()),
            None => format!("not within {:.0} s", (g.linger + Duration::from_secs(5)).as_secs_f64()),
        };
        println!(
            "  shells held              {} when the batch was done; down to the warm reserve of {} {after} (linger {} s)",
            g.at_done,
            g.reserve,
            g.linger.as_secs()
        );
    }
    let target = shape.open_ms + 2 * shape.cmd_ms;
    println!(
        "  second run, with {PROBES} interactive calls on cold tenants (and on busy tenants) spread over the batch: makespan {:.0} ms",
        ms(probed.makespan)
    );
    println!("  interactive wait, warm tenant: {}", waits(&probed.warm));
    println!("  interactive wait, cold tenant: {}   (target ≤ open + 2 × cmdlet = {target} ms)", waits(&probed.cold));
    let stats = &quiet.stats;
    println!(
        "  sessions opened          {} (simulator), most shells per admin {}, per tenant {}",
        stats.shells_opened,
        stats.max_by_user.values().max().copied().unwrap_or(0),
        stats.max_by_tenant.values().max().copied().unwrap_or(0)
    );
    let transports = if skip_transports { vec![] } else { super::transports::compare(shape).await? };
    Ok(Row { shape: shape.clone(), psbroker: makespan, careful, naive, transports })
}

/// The issue's table: makespan and makespan / LB for each contender on each profile.
fn print_table(rows: &[Row]) {
    println!("| latencies (open / cmdlet / close) | workload | careful script | psbroker | naive script | lower bound | careful / psbroker |");
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        let s = &r.shape;
        let lb = lower_bound(s);
        let cell = |d: Duration| format!("{:.2} s ({:.3} × LB)", d.as_secs_f64(), d.as_secs_f64() / lb.as_secs_f64());
        println!(
            "| {} / {} / {} ms | {} tenants × {} | {} | {} | {} | {:.2} s (whole-session {:.2} s) | {:.2}× |",
            s.open_ms,
            s.cmd_ms,
            s.close_ms,
            s.tenants,
            s.per_tenant,
            cell(r.careful),
            cell(r.psbroker),
            r.naive.map_or("skipped".to_string(), cell),
            lb.as_secs_f64(),
            whole_session_bound(s).as_secs_f64(),
            r.careful.as_secs_f64() / r.psbroker.as_secs_f64()
        );
    }
}

/// The same batch by transport, for the README.
fn print_transport_table(rows: &[Row]) {
    if rows.iter().all(|r| r.transports.is_empty()) {
        return;
    }
    println!();
    println!("| latencies (open / cmdlet / close) | workload | WinRM/PSRP | REST | REST with $batch |");
    println!("|---|---|---|---|---|");
    for r in rows.iter().filter(|r| r.transports.len() == 3) {
        let s = &r.shape;
        let cell = |i: usize| format!("{:.2} s", r.transports[i].makespan.as_secs_f64());
        println!(
            "| {} / {} / {} ms | {} tenants × {} | {} | {} | {} |",
            s.open_ms,
            s.cmd_ms,
            s.close_ms,
            s.tenants,
            s.per_tenant,
            cell(0),
            cell(1),
            cell(2)
        );
    }
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

fn get_mailbox(i: u32) -> Command {
    Command {
        invocation_id: uuid::Uuid::new_v4(),
        cmdlet: "Get-Mailbox".into(),
        parameters: vec![("Identity".into(), PsValue::String(identity(i)))],
    }
}

/// Measures what the simulator's latencies really take on this machine, with no broker in the
/// way: a sleep of 20 ms on a 1 ms timer wheel lasts a little longer than 20 ms.
async fn calibrate(sim: &Simulator) -> anyhow::Result<Latencies> {
    let connector = sim.connector();
    let t = Instant::now();
    let session = connector.open(&session_target(0, 0)).await?;
    let open = t.elapsed();
    let t = Instant::now();
    const N: u32 = 10;
    for i in 0..N {
        session.invoke(&get_mailbox(i)).await?;
    }
    let cmd = t.elapsed() / N;
    let t = Instant::now();
    session.close().await?;
    let close = t.elapsed();
    sim.reset_high_water_marks();
    Ok(Latencies { open: ms(open), cmd: ms(cmd), close: ms(close) })
}

/// The naive baseline's best case: every invocation pays open + cmdlet + close, C at a time.
fn naive_ideal(shape: &Shape) -> Duration {
    let n = (shape.tenants * shape.per_tenant) as f64;
    Duration::from_millis(((shape.open_ms + shape.cmd_ms + shape.close_ms) as f64 * n / shape.slots() as f64) as u64)
}

/// Runs `admin_cap` workers per admin on the simulator (without the broker), each taking the
/// next unit of work from a shared list as soon as it is free; returns the makespan.
async fn run_workers<F, Fut>(shape: &Shape, mut units: Vec<u32>, work: F) -> anyhow::Result<Duration>
where
    F: Fn(u32, u32) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    units.reverse(); // taken from the end: first unit first
    let units = Arc::new(Mutex::new(units));
    let started = Instant::now();
    let mut workers = Vec::new();
    for a in 0..shape.admins {
        for _ in 0..shape.admin_cap {
            let (units, work) = (units.clone(), work.clone());
            workers.push(tokio::spawn(async move {
                while let Some(unit) = take(&units).await {
                    work(a, unit).await?;
                }
                anyhow::Ok(())
            }));
        }
    }
    for w in workers {
        w.await??;
    }
    Ok(started.elapsed())
}

async fn take(units: &Mutex<Vec<u32>>) -> Option<u32> {
    units.lock().await.pop()
}

/// The careful script: each worker takes a tenant, opens one session for it, runs all its
/// cmdlets and closes the session.
async fn careful_baseline(shape: &Shape, sim: &Simulator) -> anyhow::Result<Duration> {
    sim.reset_high_water_marks();
    let connector = sim.connector();
    let per_tenant = shape.per_tenant;
    run_workers(shape, (0..shape.tenants).collect(), move |admin, tenant| {
        let connector = connector.clone();
        async move {
            let session = connector.open(&session_target(admin, tenant)).await?;
            for i in 0..per_tenant {
                session.invoke(&get_mailbox(i)).await?;
            }
            session.close().await?;
            Ok(())
        }
    })
    .await
}

/// The naive script: each worker takes the next invocation, opens a session for its tenant,
/// runs the cmdlet and closes the session (what a script without a pool does).
async fn naive_baseline(shape: &Shape, sim: &Simulator) -> anyhow::Result<Duration> {
    sim.reset_high_water_marks();
    let (open, cmd, close) = sim.latency();
    let k = shape.naive_speedup;
    sim.set_latency(open.div_f64(k), cmd.div_f64(k), close.div_f64(k));
    let connector = sim.connector();
    let invocations: Vec<u32> =
        (0..shape.tenants).flat_map(|t| std::iter::repeat_n(t, shape.per_tenant as usize)).collect();
    let elapsed = run_workers(shape, invocations, move |admin, tenant| {
        let connector = connector.clone();
        async move {
            let session = connector.open(&session_target(admin, tenant)).await?;
            session.invoke(&get_mailbox(0)).await?;
            session.close().await?;
            Ok(())
        }
    })
    .await;
    sim.set_latency(open, cmd, close);
    Ok(elapsed?.mul_f64(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_bounds_match_the_issue_formula_and_whole_sessions() {
        let fast = Shape::preset(ProfileName::Fast);
        // Σ(200 + 20·20)/9 = 60·600/9 = 4000 ms; the per-tenant term is 200 + 400/9.
        assert_eq!(lower_bound(&fast).as_millis(), 4000);
        let one = Shape { tenants: 1, per_tenant: 1000, ..fast.clone() };
        // One tenant: max(200 + 20000)/9 = 2244 vs 200 + 20000/9 = 2422 → the second term.
        assert_eq!(lower_bound(&one).as_millis(), 2422);
        assert_eq!(whole_session_bound(&one), lower_bound(&one));
        // 60 tenants on 9 slots: some slot runs 7 sessions: 7·200 + 6·10 + 24000/9 ms.
        assert_eq!(whole_session_bound(&fast).as_millis(), 4126);
        // Exchange Online-like: 20 tenants on 9 slots, LB 20 s; some slot runs 3 sessions.
        let exo = Shape::preset(ProfileName::Exo);
        assert_eq!(lower_bound(&exo).as_millis(), 20_000);
        assert_eq!(whole_session_bound(&exo).as_millis(), 3 * 3000 + 2 * 100 + 120_000 / 9);
    }

    #[test]
    fn overrides_apply_to_the_chosen_profile() {
        let args = BulkArgs { profile: Some(ProfileName::Exo), tenants: Some(4), ..BulkArgs::default() };
        let shapes = Shape::from_args(&args);
        assert_eq!(shapes, vec![Shape { tenants: 4, ..Shape::preset(ProfileName::Exo) }]);
        assert_eq!(Shape::from_args(&BulkArgs::default()).len(), 2);
    }
}
