//! `psbroker bench bulk`, second part: the same workload (one batch of `tenants × per_tenant`
//! Get-Mailbox) on the wire, once over WinRM/PSRP and once over Exchange Online's REST API,
//! without and with `$batch`, each on a fresh daemon and simulator with the shape's latencies.
//!
//! The simulator charges the cmdlet latency per cmdlet on both transports (a `$batch` runs its
//! sub-requests one after another, as the service does), and the open latency only on WinRM
//! (a REST session is a token and a host, no shell). Its REST limits of calls in flight are
//! the shape's caps, so the broker's caps are what bounds the REST runs too.

use super::bulk::{batch_done, identity, post, tenant_name, Shape};
use super::ms;
use crate::app::Application;
use crate::config::Config;
use serde_json::{json, Value as Json};
use std::time::{Duration, Instant};

/// How the daemon reaches the simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Winrm,
    Rest { batch: bool },
}

impl Transport {
    pub const ALL: [Transport; 3] =
        [Transport::Winrm, Transport::Rest { batch: false }, Transport::Rest { batch: true }];

    pub fn label(self) -> &'static str {
        match self {
            Transport::Winrm => "WinRM/PSRP",
            Transport::Rest { batch: false } => "REST, one call per cmdlet",
            Transport::Rest { batch: true } => "REST, $batch of up to 10",
        }
    }
}

/// One transport's run.
#[derive(Debug, Clone)]
pub struct TransportRun {
    pub transport: Transport,
    pub makespan: Duration,
    pub succeeded: i64,
    /// Calls the REST service answered (a `$batch` is one), or shells opened on WinRM.
    pub remote_calls: u64,
}

/// The daemon's configuration for `transport`: admins `a0..` (an OAuth app each over REST, a
/// password each over WinRM), tenants `t000..`, the simulator on a loopback port.
pub fn transport_config(shape: &Shape, store_url: &str, transport: Transport) -> Config {
    let profile = match transport {
        Transport::Winrm => {
            "kind = \"wsman\"\nconnection_uri = \"http://{simulator}/powershell-liveid?DelegatedOrg={tenant}\"\n"
                .to_string()
        }
        Transport::Rest { batch } => format!(
            "kind = \"exo_rest\"\nbase_url = \"http://{{simulator}}\"\nbatch = {batch}\n\
             calls_per_admin = {}\ncalls_per_tenant = {}\n",
            shape.admin_cap, shape.tenant_cap
        ),
    };
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = \"{store_url}\"\n\
         [profiles.default]\n{profile}allow_plain_http = true\n\
         [simulator]\nlisten = \"127.0.0.1:0\"\nopen_latency_ms = {}\ncommand_latency_ms = {}\nclose_latency_ms = {}\nmailboxes_per_tenant = 5\n\
         [simulator.rest]\ncalls_per_identity = {cap}\ncalls_per_tenant = {tcap}\n",
        shape.open_ms,
        shape.cmd_ms,
        shape.close_ms,
        cap = shape.admin_cap,
        tcap = shape.tenant_cap,
    );
    for a in 0..shape.admins {
        text += &format!(
            "[[admins]]\nname = \"a{a}\"\nupn = \"a{a}@partner.onmicrosoft.com\"\ncap = {}\n",
            shape.admin_cap
        );
        match transport {
            Transport::Winrm => text += &format!("credential = \"literal:pw{a}\"\n"),
            // One application per admin: the service's limits are per identity.
            Transport::Rest { .. } => {
                text += &format!(
                    "[admins.oauth]\ngrant = \"client_credentials\"\nclient_id = \"00000000-0000-4000-8000-{a:012}\"\n\
                     client_secret = \"literal:bench-secret-{a}\"\nlogin_url = \"http://{{simulator}}\"\n"
                )
            }
        }
    }
    for t in 0..shape.tenants {
        text += &format!("[[tenants]]\ndomain = \"{}\"\ncap = {}\n", tenant_name(t), shape.tenant_cap);
    }
    Config::from_toml(&text).expect("benchmark config is valid")
}

/// Runs the shape's batch over `transport` on a fresh daemon and store.
pub async fn run(shape: &Shape, transport: Transport) -> anyhow::Result<TransportRun> {
    let tag = match transport {
        Transport::Winrm => "winrm",
        Transport::Rest { batch: false } => "rest",
        Transport::Rest { batch: true } => "rest-batch",
    };
    let dir = std::env::temp_dir().join(format!("psbroker-bench-{}-{}-{tag}", std::process::id(), shape.name));
    std::fs::create_dir_all(&dir)?;
    let store_url = format!("sqlite://{}", dir.join("bench.db").display());
    let app = Application::build(transport_config(shape, &store_url, transport)).await?.spawn();
    let sim = app.simulator.clone().expect("bench runs on the simulator");
    let token = std::fs::read_to_string(dir.join(crate::auth::token::TOKEN_FILE))?;
    let client = crate::cli_token::bearer_client(&token)?;
    let items: Vec<Json> = (0..shape.tenants)
        .flat_map(|t| (0..shape.per_tenant).map(move |i| (t, i)))
        .map(|(t, i)| json!({"tenant": tenant_name(t), "cmdlet": "Get-Mailbox", "parameters": {"Identity": identity(i)}}))
        .collect();
    let started = Instant::now();
    let batch = post(&client, app.url("/v1/batches"), json!({"items": items})).await?;
    let id = batch["id"].as_str().unwrap_or_default().to_string();
    let counts = batch_done(&client, &app, &id).await?;
    let makespan = started.elapsed();
    let remote_calls = match transport {
        Transport::Winrm => sim.stats().shells_opened,
        Transport::Rest { .. } => sim.rest_stats().requests,
    };
    app.stop().await?;
    if std::env::var_os("PSBROKER_BENCH_KEEP").is_none() {
        std::fs::remove_dir_all(&dir).ok();
    }
    Ok(TransportRun { transport, makespan, succeeded: counts["succeeded"].as_i64().unwrap_or(0), remote_calls })
}

/// Runs every transport and prints one line each.
pub async fn compare(shape: &Shape) -> anyhow::Result<Vec<TransportRun>> {
    let total = shape.tenants * shape.per_tenant;
    println!(
        "  same batch on the wire, by transport ({total} Get-Mailbox; REST: no open, {} calls in flight per admin):",
        shape.admin_cap
    );
    let mut runs = Vec::new();
    for transport in Transport::ALL {
        let r = run(shape, transport).await?;
        let what = match transport {
            Transport::Winrm => "shells opened",
            Transport::Rest { .. } => "REST requests (a $batch is one; host probes included)",
        };
        println!(
            "    {:<28} makespan {:>7.0} ms, {} of {total} succeeded, {} {what}",
            transport.label(),
            ms(r.makespan),
            r.succeeded,
            r.remote_calls
        );
        runs.push(r);
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small shape on every transport: everything succeeds, and `$batch` carries the same
    /// work in fewer REST requests.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_same_batch_runs_on_every_transport() {
        let shape = Shape {
            open_ms: 5,
            cmd_ms: 2,
            close_ms: 1,
            admins: 1,
            tenants: 2,
            per_tenant: 30,
            name: "test",
            ..Shape::preset(super::super::bulk::ProfileName::Fast)
        };
        let mut requests = Vec::new();
        for transport in Transport::ALL {
            let r = run(&shape, transport).await.unwrap();
            assert_eq!(r.succeeded, 60, "{transport:?}");
            requests.push(r.remote_calls);
        }
        assert!(requests[2] * 2 < requests[1], "$batch: fewer requests for the same work: {requests:?}");
    }
}
