//! Builds the whole daemon from a [`Config`]: simulator (when a profile uses it), connectors,
//! store, broker, HTTP router, and a listener that is already bound — so tests can run the real
//! server on port 0 with no race.

use crate::api::{self, ApiState};
use crate::broker::directory::Directory;
use crate::broker::Broker;
use crate::config::{Config, ProfileKind};
use crate::metrics::Metrics;
use crate::sim::Simulator;
use crate::store::Store;
use anyhow::Context;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// How long a graceful stop waits for running commands before closing their sessions anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Application {
    listener: TcpListener,
    broker: Arc<Broker>,
    simulator: Option<Simulator>,
    state: ApiState,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let uses_simulator = config.profiles.values().any(|p| p.kind == ProfileKind::Simulator);
        let simulator = if uses_simulator {
            Some(Simulator::from_config(&config).map_err(|e| anyhow::anyhow!("simulator: {e}"))?)
        } else {
            None
        };
        let directory = Directory::build(&config, |name, profile| {
            match profile.kind {
            ProfileKind::Simulator => Ok(simulator.as_ref().expect("simulator built for simulator profiles").connector()),
            ProfileKind::Wsman => anyhow::bail!(
                "profile '{name}': kind \"wsman\" (WS-Management/PSRP) is not available in this build yet; use kind = \"simulator\""
            ),
        }
        })?;
        let store =
            Store::connect(&config.store.url).await.with_context(|| format!("opening store {}", config.store.url))?;
        let auth = crate::auth::setup(&config, &store).await?;
        let metrics = Arc::new(Metrics::new(config.metrics.tenant_labels));
        let broker = Arc::new(Broker::start(Arc::new(directory), store, metrics, config.scheduler.clone()).await?);
        let listener = TcpListener::bind(&config.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        let state = ApiState {
            broker: broker.clone(),
            max_wait: Duration::from_secs(config.server.max_wait_seconds),
            max_body_bytes: config.server.max_body_bytes,
            max_batch_items: config.server.max_batch_items,
            auth,
            metrics_open: listener.local_addr()?.ip().is_loopback(),
        };
        Ok(Application { listener, broker, simulator, state })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    pub fn broker(&self) -> Arc<Broker> {
        self.broker.clone()
    }

    pub fn simulator(&self) -> Option<Simulator> {
        self.simulator.clone()
    }

    /// Serves until `shutdown` resolves, then drains: intake stops (503), running commands get
    /// [`DRAIN_TIMEOUT`] to finish, every remote session is closed, and the server stops.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let broker = self.broker.clone();
        let router = api::router(self.state);
        let (stop_http, http_stopped) = oneshot::channel::<()>();
        let drain = tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down: draining running invocations and closing sessions");
            broker.shutdown(DRAIN_TIMEOUT).await;
            let _ = stop_http.send(());
        });
        axum::serve(self.listener, router)
            .with_graceful_shutdown(async move {
                let _ = http_stopped.await;
            })
            .await?;
        drain.await?;
        tracing::info!("stopped");
        Ok(())
    }

    /// Runs in the background (for tests and the benchmark); stop it with [`Running::stop`].
    pub fn spawn(self) -> Running {
        let (addr, broker, simulator) = (self.local_addr(), self.broker(), self.simulator());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(self.run_until(async move {
            let _ = rx.await;
        }));
        Running { addr, broker, simulator, stop: Some(tx), task }
    }
}

pub struct Running {
    pub addr: SocketAddr,
    pub broker: Arc<Broker>,
    pub simulator: Option<Simulator>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await?
    }
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
