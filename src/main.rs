use clap::Parser;
use psbroker::app::{shutdown_signal, Application};
use psbroker::cli::{self, BenchCommand, Cli, Command};
use tracing_subscriber::EnvFilter;

/// mimalloc gives freed memory back to the system soon after it is freed: with glibc's malloc,
/// the daemon's RSS stayed at the peak of the largest batch it had ever taken (a 100,000-item
/// NDJSON batch left ~500 MiB behind with nothing queued in memory).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One readable line (with causes), never a backtrace: this is what users see.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    // Every file this process creates (the database, SQLite's -wal and -shm, the token file,
    // the node id) is its owner's only, whoever creates it and whenever.
    psbroker::data_dir::restrict_umask();
    let cli = Cli::parse();
    // A benchmark prints figures; the daemon inside it logs only errors unless PSBROKER_LOG says
    // otherwise (bench chaos makes it warn about a thousand faults injected on purpose).
    let default_filter = if matches!(cli.command, Command::Bench(_)) { "error" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("PSBROKER_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter)))
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve { config, listen } => {
            let config = cli::load_config(config.as_deref(), listen)?;
            let app = Application::build(config).await?;
            tracing::info!(address = %app.local_addr(), url = %app.base_url(), "psbroker listening; try: psbroker invoke --tenant contoso.onmicrosoft.com Get-Mailbox -p ResultSize=5");
            app.run_until(shutdown_signal()).await
        }
        Command::Sim { config, listen, tls_cert, tls_key, tls_client_ca } => {
            let config = cli::load_config(config.as_deref(), None)?;
            let tls = match tls_cert.zip(tls_key) {
                Some((cert_file, key_file)) if tls_client_ca.is_some() => {
                    let read = |p: &std::path::Path| {
                        std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))
                    };
                    let ca = tls_client_ca.as_deref().expect("checked above");
                    let config =
                        psbroker::sim::wire::client_auth_config(&read(&cert_file)?, &read(&key_file)?, &read(ca)?)
                            .map_err(|e| anyhow::anyhow!("TLS: {e}"))?;
                    Some(config)
                }
                Some((cert_file, key_file)) => {
                    let files = psbroker::config::TlsConfig { cert_file, key_file };
                    Some(psbroker::tls::load(&files).await?.get_inner())
                }
                None => None,
            };
            let options = psbroker::sim::wire::WireOptions {
                tls,
                ..psbroker::sim::wire::WireOptions::from_config(&config.simulator).map_err(|e| anyhow::anyhow!(e))?
            };
            psbroker::sim::wire::run_standalone(&config, &listen, options).await
        }
        Command::Invoke(args) => cli::invoke(args).await,
        Command::Batch(cmd) => cli::batch(cmd).await,
        Command::Status { url, auth } => cli::status(&url, &auth).await,
        Command::Health { url, config, ready, timeout_seconds } => {
            cli::health(url, config.as_deref(), ready, std::time::Duration::from_secs(timeout_seconds)).await
        }
        Command::Token(cmd) => psbroker::cli_token::run(cmd).await,
        Command::Login { admin, config } => psbroker::cli_login::login(&admin, config.as_deref()).await,
        Command::Bench(BenchCommand::Bulk(args)) => psbroker::bench::bulk(args).await,
        Command::Bench(BenchCommand::Api(args)) => psbroker::bench::api::run(args).await,
        Command::Bench(BenchCommand::Codec(args)) => psbroker::bench::codec::run(args),
        Command::Bench(BenchCommand::Chaos(args)) => psbroker::bench::chaos::chaos(args).await,
        Command::Bench(BenchCommand::Scale(args)) => psbroker::bench::scale::run(args).await,
    }
}
