//! `psbroker bench api`: invocations per second and latency through the HTTP API, on the
//! simulator with zero latency, next to an axum hello-world served and loaded the same way in
//! the same run (so the figures say what the broker adds, on this machine, today). The
//! in-process path runs on SQLite and on PostgreSQL (a scratch schema, dropped afterwards).

use super::{ms, quantile};
use crate::app::Application;
use crate::config::Config;
use crate::store::scratch::{self, ScratchSchema};
use serde_json::{json, Value as Json};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    #[arg(long, default_value_t = 4000)]
    pub requests: u32,
    #[arg(long, default_value_t = 16)]
    pub concurrency: u32,
    /// The PostgreSQL server of the in-process PostgreSQL row (a scratch schema is created in
    /// it and dropped afterwards); `none` leaves the row out.
    #[arg(long, env = "PSBROKER_BENCH_PG", default_value_t = scratch::server_url())]
    pub postgres: String,
    /// Only the in-process rows (no WS-Man paths): what a profile of the broker's own path wants.
    #[arg(long)]
    pub in_process_only: bool,
}

const TENANTS: u32 = 12;

/// Four admins of cap 3 over twelve tenants: twelve sessions, so the sessions are not what limits
/// (nor the per-token intake rate limit, which is off: the bench is one token).
fn config(store_url: &str, data_dir: &std::path::Path, extra_profile: &str, extra_sim: &str) -> Config {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[server.rate_limit]\nrequests_per_second = 0\nitems_per_second = 0\n\
         [store]\nurl = \"{store_url}\"\ndata_dir = \"{}\"\n\
         [profiles.default]\n{extra_profile}\n\
         [simulator]\nopen_latency_ms = 0\ncommand_latency_ms = 0\nclose_latency_ms = 0\nmailboxes_per_tenant = 5\n{extra_sim}\n",
        data_dir.display()
    );
    for a in 0..4 {
        text += &format!("[[admins]]\nname = \"a{a}\"\nupn = \"a{a}@bench\"\ncredential = \"literal:pw{a}\"\n");
    }
    for t in 0..TENANTS {
        text += &format!("[[tenants]]\ndomain = \"t{t}.bench\"\n");
    }
    Config::from_toml(&text).expect("bench config is valid")
}

struct Load {
    elapsed: Duration,
    latencies: Vec<Duration>,
    failures: u32,
    /// The broker's own account of the run (where a request's time went), if it is one.
    breakdown: Option<String>,
}

/// `concurrency` clients POST to `url` until `requests` have been sent.
async fn load(client: reqwest::Client, url: String, args: &ApiArgs) -> Load {
    let next = Arc::new(AtomicU32::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, next, url, requests) = (client.clone(), next.clone(), url.clone(), args.requests);
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut failures) = (Vec::new(), 0u32);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return (lat, failures);
                }
                let body = json!({"tenant": format!("t{}.bench", i % TENANTS), "cmdlet": "Get-AcceptedDomain"});
                let t = Instant::now();
                let ok = match client.post(&url).json(&body).send().await {
                    Ok(r) => r.json::<Json>().await.map(|j| j["status"] == "succeeded").unwrap_or(false),
                    Err(_) => false,
                };
                lat.push(t.elapsed());
                failures += u32::from(!ok);
            }
        }));
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    for t in tasks {
        let (l, f) = t.await.expect("load task");
        latencies.extend(l);
        failures += f;
    }
    latencies.sort();
    Load { elapsed: started.elapsed(), latencies, failures, breakdown: None }
}

fn report(name: &str, l: &Load) {
    println!(
        "  {name:<42} {:>7.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms   failures {}",
        l.latencies.len() as f64 / l.elapsed.as_secs_f64(),
        ms(quantile(&l.latencies, 0.5)),
        ms(quantile(&l.latencies, 0.99)),
        l.failures
    );
    if let Some(b) = &l.breakdown {
        println!("      {b}");
    }
}

/// Where a broker path keeps its data: a SQLite file, or a scratch schema on this server.
enum Backend<'a> {
    Sqlite,
    Postgres(&'a str),
}

async fn broker_path(
    args: &ApiArgs,
    name: &str,
    backend: Backend<'_>,
    profile: &str,
    sim: &str,
) -> anyhow::Result<Load> {
    let dir = tempfile_dir(name)?;
    let schema = match backend {
        Backend::Sqlite => None,
        Backend::Postgres(server) => Some(ScratchSchema::try_create_on(server).await?),
    };
    let store_url = match &schema {
        Some(s) => s.url(),
        None => format!("sqlite://{}", dir.join("bench.db").display()),
    };
    let result = broker_run(args, &dir, &store_url, profile, sim).await;
    if let Some(s) = schema {
        s.drop_now().await;
    }
    std::fs::remove_dir_all(&dir).ok();
    result
}

async fn broker_run(
    args: &ApiArgs,
    dir: &std::path::Path,
    store_url: &str,
    profile: &str,
    sim: &str,
) -> anyhow::Result<Load> {
    let app = Application::build(config(store_url, dir, profile, sim)).await?.spawn();
    // The daemon wrote its bootstrap admin token next to the database: the bench pays for auth.
    let token = std::fs::read_to_string(dir.join(crate::auth::token::TOKEN_FILE))?;
    let client = crate::cli_token::bearer_client(&token)?;
    // Warm up: one call per tenant opens the sessions, so the run measures steady state.
    for t in 0..TENANTS {
        let body = json!({"tenant": format!("t{t}.bench"), "cmdlet": "Get-AcceptedDomain"});
        client.post(app.url("/v1/invocations")).json(&body).send().await?;
    }
    let before = Account::now(&app.broker);
    let mut result = load(client, app.url("/v1/invocations"), args).await;
    result.breakdown = Some(Account::now(&app.broker).since(&before, result.elapsed));
    app.stop().await?;
    Ok(result)
}

/// The broker's histograms and the store's committers, read before and after a run: the means
/// of the run's phases, and how busy the single writer was.
struct Account {
    queue_wait: (f64, u64),
    run: (f64, u64),
    total: (f64, u64),
    writer: crate::store::WriterStats,
}

impl Account {
    fn now(broker: &crate::broker::Broker) -> Account {
        let m = broker.metrics();
        Account {
            queue_wait: sum_count(&m.queue_wait_seconds),
            run: sum_count(&m.run_seconds),
            total: sum_count(&m.invocation_seconds),
            writer: broker.store().writer_stats(),
        }
    }

    fn since(&self, before: &Account, elapsed: Duration) -> String {
        let mean = |now: (f64, u64), then: (f64, u64)| (now.0 - then.0) * 1000.0 / (now.1 - then.1).max(1) as f64;
        let (groups, writes) = (self.writer.groups - before.writer.groups, self.writer.writes - before.writer.writes);
        let busy = self.writer.busy.saturating_sub(before.writer.busy);
        format!(
            "mean ms from the insert's commit: to a session {:.2}, command {:.2}, to the result's commit {:.2}; \
             store: {:.0} commits/s, {:.1} writes each, {:.2} ms each, committers busy {:.0} %",
            mean(self.queue_wait, before.queue_wait),
            mean(self.run, before.run),
            mean(self.total, before.total),
            groups as f64 / elapsed.as_secs_f64(),
            writes as f64 / groups.max(1) as f64,
            ms(busy / groups.max(1) as u32),
            100.0 * busy.as_secs_f64() / elapsed.as_secs_f64(),
        )
    }
}

/// Sum and count of a histogram over all its labels.
fn sum_count(h: &prometheus::HistogramVec) -> (f64, u64) {
    use prometheus::core::Collector;
    h.collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|m| (m.get_histogram().get_sample_sum(), m.get_histogram().get_sample_count()))
        .fold((0.0, 0), |(s, c), (s2, c2)| (s + s2, c + c2))
}

fn tempfile_dir(name: &str) -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("psbroker-bench-api-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn hello_world(args: &ApiArgs) -> anyhow::Result<Load> {
    let router = axum::Router::new().route(
        "/v1/invocations",
        axum::routing::post(|axum::Json(_): axum::Json<Json>| async { axum::Json(json!({"status": "succeeded"})) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1/invocations", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let result = load(reqwest::Client::new(), url, args).await;
    server.abort();
    Ok(result)
}

pub async fn run(args: ApiArgs) -> anyhow::Result<()> {
    println!(
        "psbroker bench api: {} POST /v1/invocations (Get-AcceptedDomain, wait for the result), {} concurrent clients, simulator latency 0",
        args.requests, args.concurrency
    );
    let hello = hello_world(&args).await?;
    report("axum hello-world (same client)", &hello);
    let in_process = broker_path(&args, "inproc", Backend::Sqlite, "kind = \"simulator\"", "").await?;
    report("psbroker, in-process simulator", &in_process);
    if args.postgres != "none" {
        let on_pg =
            broker_path(&args, "inproc-pg", Backend::Postgres(&args.postgres), "kind = \"simulator\"", "").await;
        match on_pg {
            Ok(l) => report("psbroker, in-process simulator, PostgreSQL", &l),
            Err(e) => println!("  psbroker, in-process simulator, PostgreSQL: not run ({e})"),
        }
    }
    if args.in_process_only {
        return Ok(());
    }
    let wire_profile = "kind = \"wsman\"\nallow_plain_http = true\n\
                        connection_uri = \"http://{simulator}/powershell-liveid?DelegatedOrg={tenant}\"";
    let wire = broker_path(&args, "wire", Backend::Sqlite, wire_profile, "").await?;
    report("psbroker, WS-Man/PSRP to the simulator", &wire);
    // The same path with the on-premises default: NTLM logon per connection, every message
    // sealed (MS-WSMV message encryption) over plain HTTP.
    let ntlm_profile = "kind = \"wsman\"\nauth = \"ntlm\"\n\
                        connection_uri = \"http://{simulator}/powershell-liveid?DelegatedOrg={tenant}\"";
    let ntlm = broker_path(&args, "ntlm", Backend::Sqlite, ntlm_profile, "auth = [\"ntlm\"]").await?;
    report("psbroker, WS-Man/PSRP, NTLM + encryption", &ntlm);
    Ok(())
}
