//! Command line: `serve` runs the daemon; the other commands talk to a running daemon over its
//! HTTP API (or, for `bench`, run a self-contained measurement).

use crate::cli_token::AuthArgs;
use crate::config::Config;
use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Map, Value as Json};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "psbroker", version, about = "Brokers pooled remote PowerShell sessions for admins of many tenants")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon (no flags needed: the embedded demo config with the simulator and SQLite).
    Serve {
        /// Configuration file (default: ./config/psbroker.toml if present, else the embedded demo).
        #[arg(long, env = "PSBROKER_CONFIG")]
        config: Option<PathBuf>,
        /// Listen address, overriding the configuration.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Serve the simulated remote service over WS-Management/PSRP (for clients such as pypsrp,
    /// PowerShell's New-PSSession, or a psbroker whose profile points at it).
    Sim {
        #[arg(long, env = "PSBROKER_CONFIG")]
        config: Option<PathBuf>,
        /// Address to serve on, e.g. 127.0.0.1:5985.
        #[arg(long, default_value = "127.0.0.1:5985")]
        listen: String,
        /// Serve HTTPS with this certificate chain (PEM; needs --tls-key), as PowerShell
        /// expects for Basic authentication.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key of --tls-cert (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Ask HTTPS clients for a certificate issued by these CAs (PEM) and log a verified one
        /// on as the account its subject CN names (WinRM certificate authentication).
        #[arg(long, requires = "tls_cert")]
        tls_client_ca: Option<PathBuf>,
    },
    /// Run one cmdlet through a running daemon and print the result as JSON.
    Invoke(InvokeArgs),
    /// Submit and follow batches.
    #[command(subcommand)]
    Batch(BatchCommand),
    /// Show the pools (caps, open and busy sessions, queues) of a running daemon.
    Status {
        #[arg(long, env = "PSBROKER_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        #[command(flatten)]
        auth: AuthArgs,
    },
    /// Sign an admin's delegated OAuth identity in (device code): prints a URL and a code to
    /// enter in any browser, then stores the refresh token, sealed.
    Login {
        /// The admin (`[[admins]] name`) whose `[admins.oauth]` uses grant = "refresh_token".
        #[arg(long)]
        admin: String,
        #[arg(long, env = "PSBROKER_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Ask a running daemon whether it is alive (`/healthz`) or ready (`/readyz`); exit 0 if so,
    /// 1 otherwise. For container health checks and probes where no HTTP client is installed.
    Health {
        /// The daemon's base URL (default: this host's loopback on the configured
        /// `server.listen` port, HTTPS when `[server.tls]` is set). Not read from PSBROKER_URL,
        /// which may point the other commands at a load balancer rather than this process.
        #[arg(long)]
        url: Option<String>,
        #[arg(long, env = "PSBROKER_CONFIG")]
        config: Option<PathBuf>,
        /// Ask `/readyz` (accepting work, database answering) instead of `/healthz`.
        #[arg(long)]
        ready: bool,
        #[arg(long, default_value_t = 5)]
        timeout_seconds: u64,
    },
    /// Create, list and revoke API tokens (on the store directly; the daemon need not run).
    #[command(subcommand)]
    Token(crate::cli_token::TokenCommand),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Args)]
pub struct InvokeArgs {
    #[arg(long, env = "PSBROKER_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    #[arg(long)]
    pub tenant: String,
    /// Pin to one admin (default: the broker picks).
    #[arg(long)]
    pub admin: Option<String>,
    /// `interactive` (default) or `batch`.
    #[arg(long)]
    pub priority: Option<String>,
    /// Return at once with the invocation id instead of waiting for the result.
    #[arg(long)]
    pub no_wait: bool,
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// The cmdlet, e.g. Get-Mailbox.
    pub cmdlet: String,
    /// Parameter `Name=Value`; the value is read as JSON when it parses (5, true, ["a","b"]),
    /// else as a string.
    #[arg(short = 'p', long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// Parameter `Name=Value` whose value is always a string.
    #[arg(short = 's', long = "param-string", value_name = "NAME=VALUE")]
    pub string_params: Vec<String>,
    #[command(flatten)]
    pub auth: AuthArgs,
}

#[derive(Subcommand)]
pub enum BatchCommand {
    /// Submit a JSON-lines file (one invocation per line), show progress, print a summary.
    Submit {
        file: PathBuf,
        #[arg(long, env = "PSBROKER_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Return after submitting instead of following progress.
        #[arg(long)]
        no_follow: bool,
        #[command(flatten)]
        auth: AuthArgs,
    },
    /// Print a batch's counts.
    Status {
        id: String,
        #[arg(long, env = "PSBROKER_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        #[command(flatten)]
        auth: AuthArgs,
    },
    /// Print a batch's results as JSON lines.
    Results {
        id: String,
        #[arg(long, env = "PSBROKER_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        #[command(flatten)]
        auth: AuthArgs,
    },
    /// Cancel what has not started.
    Cancel {
        id: String,
        #[arg(long, env = "PSBROKER_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        #[command(flatten)]
        auth: AuthArgs,
    },
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Bulk makespan on two latency profiles against the lower bound and the careful and naive
    /// scripts; interactive calls mid-batch; shells given back after the batch.
    Bulk(crate::bench::BulkArgs),
    /// Invocations/s and latency through the HTTP API, next to an axum hello-world.
    Api(crate::bench::api::ApiArgs),
    /// CLIXML decode throughput for a 10,000-mailbox Get-Mailbox answer.
    Codec(crate::bench::codec::CodecArgs),
    /// A 10,000-invocation batch with 5 % of remote requests hit by injected faults: outcomes,
    /// retries, writes run twice (must be 0), caps held, throughput.
    Chaos(crate::bench::chaos::ChaosArgs),
    /// A million queued invocations on SQLite and PostgreSQL: intake, RSS while queued, time to
    /// ready and RSS after a restart.
    Scale(crate::bench::scale::ScaleArgs),
}

pub fn parse_params(params: &[String], strings: &[String]) -> anyhow::Result<Map<String, Json>> {
    let mut map = Map::new();
    let split = |p: &String| -> anyhow::Result<(String, String)> {
        let (k, v) = p.split_once('=').with_context(|| format!("parameter '{p}' is not Name=Value"))?;
        Ok((k.trim_start_matches('-').to_string(), v.to_string()))
    };
    for p in params {
        let (k, v) = split(p)?;
        let value = serde_json::from_str(&v).unwrap_or(Json::String(v));
        map.insert(k, value);
    }
    for p in strings {
        let (k, v) = split(p)?;
        map.insert(k, Json::String(v));
    }
    Ok(map)
}

/// Prints an API error envelope readably and turns it into a failing exit.
async fn check(resp: reqwest::Response) -> anyhow::Result<Json> {
    let status = resp.status();
    let body: Json = resp.json().await.unwrap_or(Json::Null);
    if status.is_client_error() || status.is_server_error() {
        let code = body["error"]["code"].as_str().unwrap_or("?");
        let message = body["error"]["message"].as_str().unwrap_or("");
        bail!("{status}: {code}: {message}");
    }
    Ok(body)
}

pub async fn invoke(args: InvokeArgs) -> anyhow::Result<()> {
    let parameters = parse_params(&args.params, &args.string_params)?;
    let mut body =
        json!({"tenant": args.tenant, "cmdlet": args.cmdlet, "parameters": parameters, "wait": !args.no_wait});
    if let Some(a) = args.admin {
        body["admin"] = json!(a);
    }
    if let Some(p) = args.priority {
        body["priority"] = json!(p);
    }
    if let Some(k) = args.idempotency_key {
        body["idempotency_key"] = json!(k);
    }
    let client = args.auth.client()?;
    let resp = client
        .post(format!("{}/v1/invocations", args.url))
        .json(&body)
        .send()
        .await
        .context("cannot reach the daemon")?;
    let result = check(resp).await?;
    println!("{}", serde_json::to_string_pretty(&result)?);
    if result["status"] == "failed" {
        std::process::exit(1);
    }
    Ok(())
}

pub async fn batch(cmd: BatchCommand) -> anyhow::Result<()> {
    let client = match &cmd {
        BatchCommand::Submit { auth, .. }
        | BatchCommand::Status { auth, .. }
        | BatchCommand::Results { auth, .. }
        | BatchCommand::Cancel { auth, .. } => auth.client()?,
    };
    match cmd {
        BatchCommand::Submit { file, url, no_follow, .. } => {
            let body = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let resp = client
                .post(format!("{url}/v1/batches"))
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await
                .context("cannot reach the daemon")?;
            let accepted = check(resp).await?;
            let id = accepted["id"].as_str().unwrap_or_default().to_string();
            let total = accepted["total"].as_u64().unwrap_or(0);
            eprintln!("batch {id}: {total} invocations accepted");
            if no_follow {
                println!("{id}");
                return Ok(());
            }
            follow(&client, &url, &id, total).await
        }
        BatchCommand::Status { id, url, .. } => {
            let counts = check(client.get(format!("{url}/v1/batches/{id}")).send().await?).await?;
            println!("{}", serde_json::to_string_pretty(&counts)?);
            Ok(())
        }
        BatchCommand::Results { id, url, .. } => {
            let resp = client.get(format!("{url}/v1/batches/{id}/results")).send().await?;
            if !resp.status().is_success() {
                check(resp).await?;
                return Ok(());
            }
            let mut stream = resp.bytes_stream();
            use futures::StreamExt;
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            while let Some(chunk) = stream.next().await {
                out.write_all(&chunk?)?;
            }
            Ok(())
        }
        BatchCommand::Cancel { id, url, .. } => {
            let r = check(client.delete(format!("{url}/v1/batches/{id}")).send().await?).await?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(())
        }
    }
}

async fn follow(client: &reqwest::Client, url: &str, id: &str, total: u64) -> anyhow::Result<()> {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let started = Instant::now();
    let counts = loop {
        let c = check(client.get(format!("{url}/v1/batches/{id}")).send().await?).await?;
        let n = |k: &str| c[k].as_u64().unwrap_or(0);
        bar.set_position(n("succeeded") + n("failed") + n("cancelled"));
        bar.set_message(format!("running {} failed {}", n("running"), n("failed")));
        if c["done"] == true {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    bar.finish_and_clear();
    let n = |k: &str| counts[k].as_u64().unwrap_or(0);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "batch {id}: {} succeeded, {} failed, {} cancelled of {total} in {secs:.1} s ({:.1}/s)",
        n("succeeded"),
        n("failed"),
        n("cancelled"),
        total as f64 / secs.max(0.001)
    );
    if n("failed") > 0 {
        eprintln!("details: psbroker batch results {id} --url {url}");
        std::process::exit(1);
    }
    Ok(())
}

pub async fn status(url: &str, auth: &AuthArgs) -> anyhow::Result<()> {
    let client = auth.client()?;
    let pools = check(client.get(format!("{url}/v1/pools")).send().await.context("cannot reach the daemon")?).await?;
    println!("{}", serde_json::to_string_pretty(&pools)?);
    Ok(())
}

/// `psbroker health`: one GET of `/healthz` or `/readyz`, success only on 200.
pub async fn health(
    url: Option<String>,
    config: Option<&std::path::Path>,
    ready: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let url = match url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => local_url(&load_config(config, None)?)?,
    };
    // The probe sends no token and reads only a status; on HTTPS it dials the loopback address,
    // which the daemon's certificate does not name, so the certificate is not checked here.
    let client = reqwest::Client::builder().timeout(timeout).danger_accept_invalid_certs(true).build()?;
    let path = if ready { "/readyz" } else { "/healthz" };
    let resp = client.get(format!("{url}{path}")).send().await.with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if status != reqwest::StatusCode::OK {
        bail!("{url}{path} answered {status}: {body}");
    }
    println!("{}", body.trim());
    Ok(())
}

/// The daemon's own listener as seen from this host: a wildcard address becomes loopback.
fn local_url(config: &Config) -> anyhow::Result<String> {
    let addr: std::net::SocketAddr = config
        .server
        .listen
        .parse()
        .with_context(|| format!("server.listen '{}' is not an address", config.server.listen))?;
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    let scheme = if config.server.tls.is_some() { "https" } else { "http" };
    Ok(format!("{scheme}://{}", std::net::SocketAddr::new(ip, addr.port())))
}

pub fn load_config(path: Option<&std::path::Path>, listen: Option<String>) -> anyhow::Result<Config> {
    let mut config = Config::load(path)?;
    if let Some(l) = listen {
        config.server.listen = l;
        config.validate()?;
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_infer_json_or_keep_strings() {
        let m = parse_params(
            &["ResultSize=5".into(), "Identity=user001".into(), "-Enabled=true".into()],
            &["Alias=007".into()],
        )
        .unwrap();
        assert_eq!(m["ResultSize"], json!(5));
        assert_eq!(m["Identity"], json!("user001"));
        assert_eq!(m["Enabled"], json!(true));
        assert_eq!(m["Alias"], json!("007"));
        assert!(parse_params(&["nonsense".into()], &[]).is_err());
    }

    #[test]
    fn health_dials_the_configured_port_on_loopback() {
        let mut config = Config::from_toml(crate::config::EMBEDDED_DEMO).unwrap();
        assert_eq!(local_url(&config).unwrap(), "http://127.0.0.1:8080");
        config.server.listen = "0.0.0.0:9443".into();
        config.server.tls = Some(crate::config::TlsConfig { cert_file: "c.pem".into(), key_file: "k.pem".into() });
        assert_eq!(local_url(&config).unwrap(), "https://127.0.0.1:9443");
        config.server.listen = "[::]:8080".into();
        assert_eq!(local_url(&config).unwrap(), "https://[::1]:8080");
    }
}
