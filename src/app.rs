//! Builds the whole daemon from a [`Config`]: simulator (when a profile uses it), connectors,
//! store, broker, HTTP router, and a listener that is already bound — so tests can run the real
//! server on port 0 with no race.

use crate::api::server::ConnectionLimits;
use crate::api::{self, ApiState};
use crate::broker::directory::Directory;
use crate::broker::Broker;
use crate::config::{Config, ProfileConfig, ProfileKind, RestService, TlsConfig};
use crate::metrics::Metrics;
use crate::remote::exo::{self, ExoConnector, ExoOptions};
use crate::remote::winrm::{WinrmAuth, WinrmConnector, WinrmOptions};
use crate::remote::Connector;
use crate::sim::wire::WireOptions;
use crate::sim::Simulator;
use crate::store::Store;
use anyhow::Context;
use axum_server::tls_rustls::RustlsConfig;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// The default of `server.drain_timeout_seconds`: how long a graceful stop waits for running
/// commands before closing their sessions anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// After the drain, the longest the remote sessions get to close, all together (each close is
/// bounded by [`crate::broker::CLOSE_TIMEOUT`] too): a stop goes on without them after this (the
/// next start deletes shells a cut-short stop left open).
pub const SESSION_CLOSE_BUDGET: Duration = Duration::from_secs(10);

/// The default of `server.shutdown_grace_seconds`: after the drain, how long connections still
/// open get to finish their answers before they are closed.
pub const CONNECTION_GRACE: Duration = Duration::from_secs(5);

/// The longest a graceful stop (SIGTERM) can take with the default `[server]` settings: the
/// drain, closing the sessions, the connections' grace — whatever clients and remote services
/// do (`tests/hardening.rs` times it). A supervisor's kill timeout (Kubernetes'
/// terminationGracePeriodSeconds, systemd's TimeoutStopSec) must be longer; tests/deploy.rs
/// checks the manifests against it. With other settings: [`crate::config::ServerConfig::longest_stop`].
pub const fn longest_stop() -> Duration {
    Duration::from_secs(DRAIN_TIMEOUT.as_secs() + SESSION_CLOSE_BUDGET.as_secs() + CONNECTION_GRACE.as_secs())
}

pub struct Application {
    listener: TcpListener,
    broker: Arc<Broker>,
    simulator: Option<Simulator>,
    /// Where the simulator speaks WS-Management, when it does; stopped after the broker.
    simulator_wire: Option<(SocketAddr, CancellationToken)>,
    state: ApiState,
    /// HTTPS when `[server.tls]` is configured: the live rustls configuration and its files.
    tls: Option<(RustlsConfig, TlsConfig)>,
    connections: ConnectionLimits,
    drain_timeout: Duration,
    metrics: Arc<Metrics>,
}

/// Placeholder in a connection URI for the embedded simulator's wire address.
const SIMULATOR_PLACEHOLDER: &str = "{simulator}";

impl Application {
    pub async fn build(mut config: Config) -> anyhow::Result<Application> {
        let wire_wanted = config.profiles.values().any(|p| {
            p.connection_uri.contains(SIMULATOR_PLACEHOLDER)
                || p.base_url.as_deref().is_some_and(|b| b.contains(SIMULATOR_PLACEHOLDER))
        });
        let uses_simulator = wire_wanted || config.profiles.values().any(|p| p.kind == ProfileKind::Simulator);
        let simulator = if uses_simulator {
            Some(Simulator::from_config(&config).map_err(|e| anyhow::anyhow!("simulator: {e}"))?)
        } else {
            None
        };
        let simulator_wire = match (&simulator, wire_wanted || config.simulator.listen.is_some()) {
            (Some(sim), true) => Some(start_simulator_wire(sim, &config).await?),
            _ => None,
        };
        if let Some((addr, _)) = &simulator_wire {
            for p in config.profiles.values_mut() {
                p.connection_uri = p.connection_uri.replace(SIMULATOR_PLACEHOLDER, &addr.to_string());
                p.base_url = p.base_url.as_ref().map(|b| b.replace(SIMULATOR_PLACEHOLDER, &addr.to_string()));
            }
            for oauth in config.admins.iter_mut().filter_map(|a| a.oauth.as_mut()) {
                oauth.login_url = oauth.login_url.as_ref().map(|u| u.replace(SIMULATOR_PLACEHOLDER, &addr.to_string()));
            }
        }
        if let Some(dir) = crate::auth::token::data_dir(&config.store) {
            let db = sqlite_file_name(&config.store.url);
            let files = [db.as_str(), crate::auth::token::TOKEN_FILE, NODE_ID_FILE];
            crate::data_dir::prepare(&dir, &files).with_context(|| format!("data directory {}", dir.display()))?;
        }
        let node = node_id(&config.store)?;
        let shell_name = crate::broker::cluster::shell_name(&node);
        let store = open_store(&config.store).await?;
        let metrics = Arc::new(Metrics::new(config.metrics.tenant_labels));
        let (_token_service, token_sources) =
            crate::identity::TokenService::from_config(&config, Some(store.clone()), Some(metrics.clone()))?;
        let directory = Directory::build_with_tokens(
            &config,
            |name, profile| match profile.kind {
                ProfileKind::Simulator => {
                    Ok(simulator.as_ref().expect("simulator built for simulator profiles").connector())
                }
                ProfileKind::Wsman => {
                    winrm_connector(profile, &shell_name).with_context(|| format!("profile '{name}'"))
                }
                ProfileKind::ExoRest => exo_connector(profile).with_context(|| format!("profile '{name}'")),
            },
            &token_sources,
        )?;
        // Before anything opens: shells a previous run of this node left behind eat quota for
        // up to an hour, so they are deleted now (other tools' shells are left alone).
        let reaped = crate::broker::reap_orphans(&directory, &store, &node, &shell_name).await;
        if reaped > 0 {
            tracing::info!(shells = reaped, "deleted shells left open by a previous run");
        }
        let auth = crate::auth::setup(&config, &store).await?;
        let broker = Arc::new(
            Broker::start(
                Arc::new(directory),
                store,
                metrics.clone(),
                config.scheduler.clone(),
                node,
                config.cluster.clone(),
            )
            .await?,
        );
        let tls = match &config.server.tls {
            Some(files) => Some((crate::tls::load(files).await?, files.clone())),
            None => None,
        };
        let listener = TcpListener::bind(&config.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        let bound = listener.local_addr()?;
        let state = ApiState {
            broker: broker.clone(),
            max_wait: Duration::from_secs(config.server.max_wait_seconds),
            limits: api::RequestLimits::from_config(&config.server),
            auth,
            metrics_open: bound.ip().is_loopback(),
            hosts: api::host::HostPolicy::for_listener(bound, &config.server.allowed_hosts).map(Arc::new),
            intake: Arc::new(api::rate_limit::IntakeLimits::new(&config.server.rate_limit)),
        };
        Ok(Application {
            listener,
            broker,
            simulator,
            simulator_wire,
            state,
            tls,
            connections: ConnectionLimits::from(&config.server),
            drain_timeout: config.server.drain_timeout(),
            metrics,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// The API's base URL (`https://` when TLS is configured).
    pub fn base_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.local_addr())
    }

    pub fn broker(&self) -> Arc<Broker> {
        self.broker.clone()
    }

    pub fn simulator(&self) -> Option<Simulator> {
        self.simulator.clone()
    }

    /// The embedded simulator's WS-Management address, when it serves one.
    pub fn simulator_addr(&self) -> Option<SocketAddr> {
        self.simulator_wire.as_ref().map(|(a, _)| *a)
    }

    /// Serves until `shutdown` resolves, then drains: intake stops (503), running commands get
    /// `server.drain_timeout_seconds` to finish, every remote session is closed (within
    /// [`SESSION_CLOSE_BUDGET`]), and the server stops: open connections get
    /// `server.shutdown_grace_seconds` to finish their answers, then are closed. The whole stop
    /// is bounded by those three, whatever clients or remote services do.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let broker = self.broker.clone();
        let sim_stop = self.simulator_wire.as_ref().map(|(_, t)| t.clone());
        let router = api::router(self.state);
        let stop_http = CancellationToken::new();
        let drain_timeout = self.drain_timeout;
        let stopper = stop_http.clone();
        let drain = tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down: draining running invocations and closing sessions");
            let drained = tokio::time::timeout(drain_timeout + SESSION_CLOSE_BUDGET, broker.shutdown(drain_timeout));
            if drained.await.is_err() {
                tracing::warn!("sessions still closing after the drain and its budget; stopping anyway (the next start deletes shells left open)");
            }
            if let Some(token) = sim_stop {
                token.cancel();
            }
            stopper.cancel();
        });
        let tls = self.tls.map(|(live, files)| {
            crate::tls::reload_on_sighup(live.clone(), files);
            live
        });
        api::server::serve(self.listener, router, tls, self.connections, self.metrics, stop_http).await;
        drain.await?;
        tracing::info!("stopped");
        Ok(())
    }

    /// Runs in the background (for tests and the benchmark); stop it with [`Running::stop`].
    pub fn spawn(self) -> Running {
        let (addr, base_url, broker, simulator) = (self.local_addr(), self.base_url(), self.broker(), self.simulator());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(self.run_until(async move {
            let _ = rx.await;
        }));
        Running { addr, base_url, broker, simulator, stop: Some(tx), task }
    }
}

pub struct Running {
    pub addr: SocketAddr,
    /// `http://addr` or `https://addr`.
    pub base_url: String,
    pub broker: Arc<Broker>,
    pub simulator: Option<Simulator>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await?
    }
}

async fn start_simulator_wire(sim: &Simulator, config: &Config) -> anyhow::Result<(SocketAddr, CancellationToken)> {
    let listen = config.simulator.listen.clone().unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = TcpListener::bind(&listen).await.with_context(|| format!("simulator: cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let token = CancellationToken::new();
    let wire = WireOptions::from_config(&config.simulator).map_err(|e| anyhow::anyhow!(e))?;
    let options = WireOptions { shutdown: Some(token.clone()), ..wire };
    tokio::spawn(crate::sim::wire::serve(sim.clone(), listener, options));
    tracing::info!(address = %addr, "simulator serving WS-Management/PSRP");
    Ok((addr, token))
}

fn winrm_connector(profile: &ProfileConfig, shell_name: &str) -> anyhow::Result<Arc<dyn Connector>> {
    let options = WinrmOptions {
        allow_redirection: profile.allow_redirection,
        allow_plain_http: profile.allow_plain_http,
        request_timeout: profile.request_timeout(),
        operation_timeout: Duration::from_secs(profile.operation_timeout_seconds),
        max_envelope_size: profile.max_envelope_size,
        shell_name: shell_name.to_string(),
        accept_invalid_certs: profile.accept_invalid_certs,
        extra_roots: match &profile.ca_file {
            Some(path) => crate::tls::read_roots(path)?,
            None => Vec::new(),
        },
        extra_roots_pem: match &profile.ca_file {
            Some(path) => vec![std::fs::read(path)?],
            None => Vec::new(),
        },
        auth: match profile.auth {
            crate::config::WsmanAuth::Basic => WinrmAuth::Basic,
            crate::config::WsmanAuth::Ntlm => WinrmAuth::Ntlm,
            crate::config::WsmanAuth::Certificate => WinrmAuth::Certificate,
            crate::config::WsmanAuth::Kerberos => WinrmAuth::Kerberos { kdc: profile.kdc.clone().unwrap_or_default() },
            crate::config::WsmanAuth::Negotiate => WinrmAuth::Negotiate { kdc: profile.kdc.clone() },
        },
        message_encryption: profile.message_encryption,
        spn: profile.spn.clone(),
        ..WinrmOptions::default()
    };
    Ok(Arc::new(WinrmConnector::new(options).map_err(|e| anyhow::anyhow!(e.message))?))
}

const NODE_ID_FILE: &str = "node-id";

/// The SQLite database's file name (`sqlite://./data/psbroker.db?mode=rwc` → `psbroker.db`).
fn sqlite_file_name(store_url: &str) -> String {
    let path = store_url.strip_prefix("sqlite://").or_else(|| store_url.strip_prefix("sqlite:")).unwrap_or("");
    let path = std::path::Path::new(path.split('?').next().unwrap_or(path));
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn exo_connector(profile: &ProfileConfig) -> anyhow::Result<Arc<dyn Connector>> {
    let options = ExoOptions {
        service: match profile.service {
            RestService::Exchange => exo::Service::Exchange,
            RestService::Compliance => exo::Service::Compliance,
        },
        base_url: profile.rest_base_url(),
        max_page_size: profile.max_page_size,
        request_timeout: profile.request_timeout(),
        batch: profile.batch,
        allow_plain_http: profile.allow_plain_http,
        accept_invalid_certs: profile.accept_invalid_certs,
        extra_roots: match &profile.ca_file {
            Some(path) => crate::tls::read_roots(path)?,
            None => Vec::new(),
        },
    };
    Ok(Arc::new(ExoConnector::new(options).map_err(|e| anyhow::anyhow!(e.message))?))
}

/// Opens the configured store (through PgBouncer when `store.pgbouncer` says so).
pub async fn open_store(store: &crate::config::StoreConfig) -> anyhow::Result<Store> {
    Store::open(&store.url, store.direct())
        .await
        .with_context(|| format!("opening store {}", crate::store::redacted_url(&store.url)))
}

/// A stable identity for this daemon, kept next to its database (`node-id`), so the shells it
/// names after itself can be found again after a crash and told apart from other nodes' shells.
fn node_id(store: &crate::config::StoreConfig) -> anyhow::Result<String> {
    let Some(dir) = crate::auth::token::data_dir(store) else {
        return Ok(uuid::Uuid::new_v4().simple().to_string());
    };
    let file = dir.join(NODE_ID_FILE);
    if let Ok(id) = std::fs::read_to_string(&file) {
        if !id.trim().is_empty() {
            return Ok(id.trim().to_string());
        }
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    crate::auth::token::write_private(&file, &id).with_context(|| format!("cannot write {}", file.display()))?;
    Ok(id)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
