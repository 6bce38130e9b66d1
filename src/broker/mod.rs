//! Broker: caps, sessions and scheduling. No XML, no HTTP.
//!
//! [`Broker`] is the handle the API uses: it validates and persists requests, then hands them to
//! the driver task, which owns the [`scheduler::Scheduler`] and the live remote sessions and
//! executes the scheduler's decisions.

mod batch_intake;
pub mod cluster;
pub mod directory;
mod driver;
pub mod failure;
pub mod request;
mod runner;
pub mod scheduler;
mod waiters;

use crate::auth::{secrets, Principal, Refusal};
use crate::config::SchedulerConfig;
use crate::metrics::Metrics;
use crate::remote::PsValue;
use crate::store::{
    now_ms, Accepted, AuditEntry, Inserted, InvocationRecord, NewInvocation, OpenShell, Outcome, Status, Store,
    StoreError,
};
use directory::Directory;
use request::{InvocationRequest, RequestError, ValidRequest};
use scheduler::{Job, JobSpec, Priority};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_util::task::TaskTracker;
use uuid::Uuid;

pub use batch_intake::{BatchError, BATCH_CHUNK};
pub use driver::{Event, CLOSE_TIMEOUT};

/// State shared by the handle, the driver and the command runners.
pub struct Shared {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub directory: Arc<Directory>,
    pub tuning: SchedulerConfig,
    /// This daemon's identity: the sessions it remembers opening are filed under it.
    pub node: String,
    /// Callers waiting for an invocation's end (`wait_for`).
    waiters: Arc<waiters::Waiters>,
    /// Result writes that run after their session moved on; shutdown waits for them.
    pub writes: TaskTracker,
    /// Several nodes share the store (PostgreSQL): this node's membership.
    pub cluster: Option<Arc<cluster::Cluster>>,
}

impl Shared {
    /// Files an opened session under this node so a crash cannot orphan it (written off the
    /// critical path; shutdown waits for it).
    fn remember_shell(
        self: &Arc<Self>,
        shell_id: String,
        admin: &str,
        tenant: &str,
        token: String,
    ) -> tokio::task::JoinHandle<()> {
        let shell = OpenShell {
            shell_id,
            node: self.node.clone(),
            admin: admin.to_string(),
            tenant: tenant.to_string(),
            token,
        };
        let shared = self.clone();
        self.writes.spawn(async move {
            if let Err(e) = shared.store.remember_shell(&shell).await {
                tracing::warn!(error = %e, "cannot remember an open shell");
            }
        })
    }

    /// Takes a closed shell off the list, after the write that put it there (`remembered`).
    fn forget_shell(self: &Arc<Self>, shell_id: String, remembered: Option<tokio::task::JoinHandle<()>>) {
        let shared = self.clone();
        self.writes.spawn(async move {
            if let Some(remembered) = remembered {
                let _ = remembered.await;
            }
            if let Err(e) = shared.store.forget_shell(&shell_id).await {
                tracing::warn!(error = %e, "cannot forget a closed shell");
            }
        });
    }

    /// Records an invocation's end, counts it and wakes whoever waits for it. Every invocation
    /// ends here (single or batch item, success, failure, recovery verdict), and the store
    /// appends its audit record in the same transaction as its final status.
    pub async fn finish(&self, job: &Job, outcome: Outcome) {
        // A caller waiting for this end gets the committed record with the wake-up.
        let ended = if self.waiters.watched(job.id) {
            self.store.finish_returning(job.id, &outcome).await.map(|r| (r.is_some(), r))
        } else {
            self.store.finish(job.id, &outcome).await.map(|ended| (ended, None))
        };
        let mut record = None;
        match ended {
            Ok((true, final_record)) => {
                record = final_record;
                let code = outcome.error_code.as_deref().unwrap_or("");
                self.metrics.invocations.with_label_values(&[outcome.status.as_str(), code]).inc();
                self.metrics
                    .invocation_seconds
                    .with_label_values(&[job.priority.as_str()])
                    .observe(job.enqueued_at.elapsed().as_secs_f64());
            }
            Ok((false, _)) => {}
            Err(e) => tracing::error!(invocation = %job.id, error = %e, "cannot store the invocation's result"),
        }
        self.waiters.ended(job.id, record);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Invalid(#[from] RequestError),
    #[error("item {index}: {error}")]
    InvalidItem { index: usize, error: RequestError },
    /// Authorization refused the request (or, in a batch, the item at `index`).
    #[error("{refusal}")]
    Forbidden { index: Option<usize>, refusal: Refusal },
    #[error("idempotency key '{0}' was already used for a different request")]
    IdempotencyConflict(String),
    #[error("the daemon is shutting down and accepts no new work")]
    ShuttingDown,
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for SubmitError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::IdempotencyConflict(k) => SubmitError::IdempotencyConflict(k),
            other => SubmitError::Store(other),
        }
    }
}

/// A stored invocation; `replayed` when an idempotency key matched an earlier request.
pub struct Submitted {
    pub id: Uuid,
    pub replayed: bool,
    /// Watching the invocation's end since before it was queued (a new one), so
    /// [`Broker::wait_for`] misses no end and need not read the row to learn it is not final.
    waiter: Option<waiters::Waiter>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    pub id: String,
    pub remote_id: Option<String>,
    pub admin: String,
    pub tenant: String,
    pub state: &'static str,
    pub age_seconds: f64,
    pub commands: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolInfo {
    pub name: String,
    #[serde(flatten)]
    pub caps: scheduler::CapView,
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolsInfo {
    pub admins: Vec<PoolInfo>,
    pub tenants: Vec<PoolInfo>,
    pub queued_interactive: usize,
    pub queued_batch: usize,
    pub oldest_queued_seconds: Option<f64>,
}

/// Deletes the remote sessions a previous run of this node left open, before anything new is
/// opened: first those it remembered (with the connector's token, which can reach a shell behind
/// a load balancer), then any still listed under this node's shell name. Returns how many went.
pub async fn reap_orphans(directory: &Directory, store: &Store, node: &str, shell_name: &str) -> u32 {
    let mut reaped = 0;
    match store.open_shells(node).await {
        Ok(shells) => {
            for shell in shells {
                if let (Some(a), Some(t)) = (directory.admin(&shell.admin), directory.tenant(&shell.tenant)) {
                    let connector = &directory.tenants[t].profile.connector;
                    match connector.delete_orphan(&directory.target(a, t), &shell.token).await {
                        Ok(deleted) => reaped += u32::from(deleted),
                        Err(e) => {
                            tracing::warn!(shell = %shell.shell_id, error = %e, "could not delete an orphaned shell")
                        }
                    }
                }
                if let Err(e) = store.forget_shell(&shell.shell_id).await {
                    tracing::warn!(error = %e, "cannot update the list of open shells");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the sessions the previous run left open"),
    }
    let mut seen = std::collections::HashSet::new();
    for (t, tenant) in directory.tenants.iter().enumerate() {
        for &a in directory.admins_for(t) {
            if !seen.insert((a, tenant.profile.name.clone())) {
                continue;
            }
            match tenant.profile.connector.reap_orphans(&directory.target(a, t), shell_name).await {
                Ok(n) => reaped += n,
                Err(e) => {
                    tracing::warn!(admin = %directory.admins[a].name, error = %e, "could not look for orphaned shells")
                }
            }
        }
    }
    reaped
}

pub struct Broker {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Event>,
    accepting: AtomicBool,
    driver: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Several nodes: stops the cluster task (heartbeats) once the driver is done.
    cluster_stop: Option<tokio::sync::watch::Sender<bool>>,
    cluster_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Broker {
    /// Starts the driver and resumes what a previous run left queued or running. On a shared
    /// store (PostgreSQL) the node joins the cluster (see [`cluster`]) with `cluster_config`.
    pub async fn start(
        directory: Arc<Directory>,
        store: Store,
        metrics: Arc<Metrics>,
        tuning: SchedulerConfig,
        node: String,
        cluster_config: crate::config::ClusterConfig,
    ) -> Result<Broker, StoreError> {
        metrics.init_admins(directory.admins.iter().map(|a| a.name.as_str()));
        let waiters = Arc::default();
        let store = store.for_node(&node);
        let cluster = store.is_shared().then(|| Arc::new(cluster::Cluster::new(node.clone(), cluster_config)));
        let shared = Arc::new(Shared {
            store,
            metrics,
            directory,
            tuning,
            node,
            waiters,
            writes: TaskTracker::new(),
            cluster: cluster.clone(),
        });
        if let Some(c) = &cluster {
            cluster::join(&shared, c).await?;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let driver = driver::Driver::new(shared.clone(), tx.clone(), rx);
        let handle = tokio::spawn(driver.run());
        let (cluster_stop, cluster_task) = match &cluster {
            Some(c) => {
                let (stop, stopped) = tokio::sync::watch::channel(false);
                let task = tokio::spawn(cluster::run(shared.clone(), c.clone(), tx.clone(), stopped));
                (Some(stop), Some(task))
            }
            None => (None, None),
        };
        let broker = Broker {
            shared,
            tx,
            accepting: AtomicBool::new(true),
            driver: Mutex::new(Some(handle)),
            cluster_stop,
            cluster_task: Mutex::new(cluster_task),
        };
        broker.recover().await?;
        broker.shared.metrics.ready.set(1);
        Ok(broker)
    }

    pub fn directory(&self) -> &Directory {
        &self.shared.directory
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    pub fn accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    /// Authorizes, validates, stores, then queues one invocation on behalf of `caller`.
    pub async fn submit(&self, req: &InvocationRequest, caller: &Principal) -> Result<Submitted, SubmitError> {
        self.check_accepting()?;
        if let Err(refusal) = caller.authorize(&req.tenant, &req.cmdlet, &req.parameters) {
            self.audit_refusal(caller, req, &refusal).await;
            return Err(SubmitError::Forbidden { index: None, refusal });
        }
        let valid = req.validate(&self.shared.directory, self.shared.tuning.default_timeout_seconds)?;
        let new = self.new_invocation(req, &valid, None, 0, caller);
        match self.shared.store.insert_invocation(&new).await? {
            Inserted::Existing(r) => Ok(Submitted { id: r.accepted.id, replayed: true, waiter: None }),
            Inserted::New => {
                let redacted = new.accepted.redacted;
                let waiter = Some(self.shared.waiters.watch(new.accepted.id));
                self.enqueue(vec![(self.job(&new, valid), redacted)]);
                Ok(Submitted { id: new.accepted.id, replayed: false, waiter })
            }
        }
    }

    /// Waits until the submitted invocation is final or `wait` passes; returns its latest
    /// record. A new invocation's end usually brings its committed record (no read); the store
    /// is read when it did not, and at the deadline.
    pub async fn wait_for(
        &self,
        submitted: &Submitted,
        wait: Duration,
    ) -> Result<Option<InvocationRecord>, StoreError> {
        let id = submitted.id;
        let watching;
        let (waiter, mut read) = match &submitted.waiter {
            // Watched since before it was queued: it is not final unless an end says so.
            Some(w) => (w, false),
            None => {
                watching = self.shared.waiters.watch(id);
                (&watching, true)
            }
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Armed before looking: an end between the look and the wait still counts.
            let ended = waiter.ended();
            if let Some(record) = waiter.record() {
                return Ok(Some(InvocationRecord::clone(&record)));
            }
            if read {
                let record = self.shared.store.get(id).await?;
                if record.as_ref().is_none_or(|r| r.status.is_final()) {
                    return Ok(record);
                }
            }
            // After any wake-up without a record (or a look at another node's work), the store
            // says what happened.
            read = true;
            // Another node may run it: its end wakes nobody here, so look again now and then.
            let until = match self.shared.cluster {
                Some(_) => deadline.min(tokio::time::Instant::now() + cluster::REMOTE_END_POLL),
                None => deadline,
            };
            if tokio::time::timeout_at(until, ended).await.is_err() && until == deadline {
                return self.shared.store.get(id).await;
            }
        }
    }

    /// Cancels a batch's invocations that have not started. `None` if there is no such batch.
    pub async fn cancel_batch(&self, batch: Uuid) -> Result<Option<u64>, StoreError> {
        if self.shared.store.batch_counts(batch).await?.is_none() {
            return Ok(None);
        }
        // The scheduler decides what has not started: it hands back exactly the jobs it removed,
        // so a cancelled invocation has never run and one that started finishes truthfully.
        let (reply, removed) = oneshot::channel();
        let (ids, started) = match self.tx.send(Event::CancelBatch(batch, reply)) {
            Ok(()) => removed.await.unwrap_or_default(),
            Err(_) => (vec![], vec![]),
        };
        // What waits in the store only (beyond the scheduler's window) has not started either.
        let n = self.shared.store.cancel_batch(batch, &ids, &started).await?;
        self.shared.metrics.invocations.with_label_values(&["cancelled", "cancelled"]).inc_by(n);
        Ok(Some(n))
    }

    pub async fn sessions(&self) -> Vec<SessionInfo> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Event::Sessions(reply)).is_err() {
            return vec![];
        }
        rx.await.unwrap_or_default()
    }

    pub async fn pools(&self) -> Option<PoolsInfo> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Event::Snapshot(reply)).ok()?;
        let snap = rx.await.ok()?;
        let dir = &self.shared.directory;
        let name_admins =
            snap.admins.into_iter().enumerate().map(|(i, caps)| PoolInfo { name: dir.admins[i].name.clone(), caps });
        let name_tenants = snap
            .tenants
            .into_iter()
            .enumerate()
            .map(|(i, caps)| PoolInfo { name: dir.tenants[i].domain.clone(), caps });
        Some(PoolsInfo {
            admins: name_admins.collect(),
            tenants: name_tenants.collect(),
            queued_interactive: snap.queued_interactive,
            queued_batch: snap.queued_batch,
            oldest_queued_seconds: snap.oldest_queued.map(|d| d.as_secs_f64()),
        })
    }

    /// Refreshes the gauges from the scheduler's live state (called at scrape time).
    pub async fn refresh_gauges(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Event::Snapshot(reply)).is_err() {
            return;
        }
        let Ok(snap) = rx.await else { return };
        let m = &self.shared.metrics;
        for state in ["opening", "idle", "busy", "closing"] {
            let n = snap.sessions.iter().filter(|s| s.state.as_str() == state).count();
            m.sessions.with_label_values(&[state]).set(n as i64);
        }
        m.queue_depth.with_label_values(&["interactive"]).set(snap.queued_interactive as i64);
        m.queue_depth.with_label_values(&["batch"]).set(snap.queued_batch as i64);
        m.oldest_queued_seconds.set(snap.oldest_queued.map(|d| d.as_secs_f64()).unwrap_or(0.0));
        let dir = &self.shared.directory;
        for (i, a) in snap.admins.iter().enumerate() {
            let name = &dir.admins[i].name;
            m.effective_cap.with_label_values(&[name]).set(a.effective_cap as i64);
            m.admin_cap.with_label_values(&[name]).set(a.cap as i64);
            m.admin_sessions.with_label_values(&[name]).set(a.open as i64);
            m.cap_saturation.with_label_values(&["admin", name]).set(ratio(a.open, a.effective_cap));
        }
        let fullest = snap.tenants.iter().map(|t| ratio(t.open, t.effective_cap)).fold(0.0, f64::max);
        m.cap_saturation.with_label_values(&["tenant", "max"]).set(fullest);
        m.tenants_below_cap.set(snap.tenants.iter().filter(|t| t.effective_cap < t.cap).count() as i64);
        if m.tenant_labels {
            for (i, t) in snap.tenants.iter().enumerate() {
                let domain = &dir.tenants[i].domain;
                m.tenant_sessions.with_label_values(&[domain]).set(t.open as i64);
                m.tenant_cap.with_label_values(&[domain]).set(t.cap as i64);
                m.tenant_effective_cap.with_label_values(&[domain]).set(t.effective_cap as i64);
                m.cap_saturation.with_label_values(&["tenant", domain]).set(ratio(t.open, t.effective_cap));
            }
        }
    }

    /// Stops intake, lets running commands finish within `drain`, closes every remote session.
    pub async fn shutdown(&self, drain: Duration) {
        self.accepting.store(false, Ordering::SeqCst);
        self.shared.metrics.ready.set(0);
        if let Some(c) = &self.shared.cluster {
            // What this node paged in but has not started goes to the other nodes now.
            match self.shared.store.unclaim_queued(&c.node).await {
                Ok(n) => tracing::info!(handed_over = n, "draining: queued work handed to the other nodes"),
                Err(e) => tracing::warn!(error = %e, "cannot hand queued work to the other nodes; a rescue will"),
            }
        }
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Event::Shutdown { drain, reply }).is_ok() {
            let _ = rx.await;
        }
        if let Some(handle) = self.driver.lock().await.take() {
            let _ = handle.await;
        }
        self.shared.writes.close();
        self.shared.writes.wait().await;
        if let (Some(stop), Some(c)) = (&self.cluster_stop, &self.shared.cluster) {
            let _ = stop.send(true);
            if let Some(task) = self.cluster_task.lock().await.take() {
                let _ = task.await;
            }
            if let Err(e) = self.shared.store.leave(&c.node).await {
                tracing::warn!(error = %e, "cannot leave the cluster; the others will see this node as dead");
            }
        }
    }

    fn check_accepting(&self) -> Result<(), SubmitError> {
        if self.accepting() {
            Ok(())
        } else {
            Err(SubmitError::ShuttingDown)
        }
    }

    /// Hands accepted jobs to the driver. A job whose secret values were redacted in the store
    /// lives only in memory; the others may wait in the store beyond the scheduler's window.
    fn enqueue(&self, jobs: Vec<(Job, bool)>) {
        let (secret, stored): (Vec<_>, Vec<_>) = jobs.into_iter().partition(|(_, redacted)| *redacted);
        if !secret.is_empty() {
            let _ = self.tx.send(Event::Submit(secret.into_iter().map(|(j, _)| j).collect()));
        }
        if stored.is_empty() {
            return;
        }
        let (mine, shared): (Vec<_>, Vec<_>) = stored.into_iter().partition(|(j, _)| self.runs_here(j));
        if !mine.is_empty() {
            let _ = self.tx.send(Event::SubmitStored(mine.into_iter().map(|(j, _)| j).collect()));
        }
        if !shared.is_empty() {
            // Any node may take them: every node (this one too) counts the queue when woken, so
            // they all start on their share at once instead of this node taking every lane.
            let store = self.shared.store.clone();
            self.shared.writes.spawn(async move {
                if let Err(e) = store.notify_queued().await {
                    tracing::debug!(error = %e, "cannot wake the nodes; they look on their next beat");
                }
            });
        }
    }

    /// Whether a stored job is this node's from the start: always with one node; with several,
    /// single invocations (the caller waits: no detour through the shared queue) but not batch
    /// items, which any node may take.
    fn runs_here(&self, job: &Job) -> bool {
        self.shared.cluster.is_none() || job.batch.is_none()
    }

    /// Records a refused request in the audit. A failure to write is logged, not answered: the
    /// request is refused either way.
    async fn audit_refusal(&self, caller: &Principal, req: &InvocationRequest, refusal: &Refusal) {
        let clip = |s: &str| s.chars().take(256).collect::<String>();
        let (stored, _) = secrets::redact(&req.parameters);
        let entry = AuditEntry {
            at: now_ms(),
            token: Some(caller.name.clone()),
            tenant: clip(&req.tenant.to_lowercase()),
            cmdlet: clip(&req.cmdlet),
            param_names: req.parameters.keys().take(64).map(|k| clip(k)).collect(),
            params_hash: secrets::values_hash(self.shared.store.salt(), &stored),
            status: "refused".into(),
            code: Some(refusal.rule.code().into()),
            duration_ms: None,
            session_id: None,
            admin: None,
            invocation_id: None,
            batch_id: None,
        };
        tracing::info!(token = %caller.name, code = refusal.rule.code(), "request refused by authorization");
        if let Err(e) = self.shared.store.audit(&entry).await {
            tracing::error!(error = %e, "cannot write the audit record of a refused request");
        }
    }

    fn new_invocation(
        &self,
        req: &InvocationRequest,
        v: &ValidRequest,
        batch: Option<Uuid>,
        seq: i64,
        caller: &Principal,
    ) -> NewInvocation {
        let now = now_ms();
        let salt = self.shared.store.salt();
        let (stored, redacted) = secrets::redact(&req.parameters);
        let (request_hash, params_hash) = req.digests(salt, &stored);
        NewInvocation {
            request_hash,
            param_names: stored.keys().cloned().collect(),
            params_hash,
            owner: caller.name.clone(),
            // Secret values live only in this process; a single invocation runs here at once.
            node: (redacted || batch.is_none()).then(|| self.shared.node.clone()),
            accepted: Accepted {
                id: Uuid::now_v7(),
                batch_id: batch,
                seq,
                idempotency_key: req.idempotency_key.clone(),
                tenant: self.shared.directory.tenants[v.tenant].domain.clone(),
                admin: v.admin.map(|a| self.shared.directory.admins[a].name.clone()),
                cmdlet: v.cmdlet.clone(),
                parameters: serde_json::Value::Object(stored),
                redacted,
                priority: v.priority.as_str().to_string(),
                idempotent: v.idempotent,
                created_at: now,
                deadline_at: now + (v.timeout_seconds as i64) * 1000,
            },
        }
    }

    fn job(&self, new: &NewInvocation, v: ValidRequest) -> Job {
        let now = Instant::now();
        Job {
            id: new.accepted.id,
            tenant: v.tenant,
            admin: v.admin,
            priority: v.priority,
            spec: Arc::new(JobSpec { cmdlet: v.cmdlet, parameters: v.parameters }),
            idempotent: v.idempotent,
            batch: new.accepted.batch_id,
            enqueued_at: now,
            deadline: now + Duration::from_secs(v.timeout_seconds),
            attempts: 0,
            not_before: None,
        }
    }

    /// Resumes what the last stop left. What was *running* is repeated only if it is
    /// idempotent; otherwise it fails with `interrupted`, since it may or may not have run.
    /// What was queued stays in the store: only its count per lane is read here, and the driver
    /// pages it in as lanes drain ([`job_from_record`] judges each as it comes in). Lanes whose
    /// tenant or admin is no longer configured are failed now.
    async fn recover(&self) -> Result<(), StoreError> {
        let dir = &self.shared.directory;
        let store = &self.shared.store;
        let mut repeated = 0;
        let (running, redacted) = (store.running().await?, store.queued_redacted().await?);
        for rec in running.iter().chain(&redacted) {
            let (job, verdict) = job_from_record(dir, rec);
            match verdict {
                Some((code, msg)) => self.shared.finish(&job, Outcome::failed(&code, msg)).await,
                None => {
                    store.mark_queued(job.id).await?;
                    repeated += 1;
                }
            }
        }
        if self.shared.cluster.is_some() {
            // The queue is shared: the cluster task's census tells the scheduler what to take.
            if repeated > 0 {
                tracing::info!(repeated, "resuming invocations this node left running");
            }
            return Ok(());
        }
        let mut queued = 0;
        for lane in store.queued_lanes().await? {
            let priority = if lane.priority == "interactive" { Priority::Interactive } else { Priority::Batch };
            let admin = lane.admin.as_deref().map(|a| dir.admin(a));
            match (dir.tenant(&lane.tenant), admin) {
                (Some(t), None) => self.add_stored(t, None, priority, lane.count as usize),
                (Some(t), Some(Some(a))) => self.add_stored(t, Some(a), priority, lane.count as usize),
                _ => self.fail_lane(&lane.tenant, lane.admin.as_deref(), &lane.priority).await?,
            }
            queued += lane.count;
        }
        if queued > 0 {
            tracing::info!(queued, repeated, "resuming invocations left unfinished by the previous run");
        }
        Ok(())
    }

    fn add_stored(&self, tenant: usize, admin: Option<usize>, priority: Priority, n: usize) {
        let _ = self.tx.send(Event::Stored { tenant, admin, priority, n });
    }

    /// Fails every queued invocation of a lane no configured tenant or admin can serve.
    async fn fail_lane(&self, tenant: &str, admin: Option<&str>, priority: &str) -> Result<(), StoreError> {
        let mut seen = std::collections::HashSet::new();
        loop {
            let page = self.shared.store.page_queued(tenant, admin, priority, &[], 500).await?;
            // Done when nothing is left, or nothing could be ended (the store refused: the next
            // start tries again).
            if !page.iter().any(|r| seen.insert(r.accepted.id)) {
                return Ok(());
            }
            for rec in &page {
                let (job, verdict) = job_from_record(&self.shared.directory, rec);
                let (code, msg) = verdict.unwrap_or_else(|| ("unknown_tenant".into(), "no longer configured".into()));
                self.shared.finish(&job, Outcome::failed(&code, msg)).await;
            }
        }
    }
}

/// The job of a stored invocation, and why it must fail instead of running, if it must: its
/// tenant or pinned admin is no longer configured, it was running and is not idempotent, or its
/// secret values were redacted (secrets are never stored, so they died with the process that
/// accepted it). Ages and deadlines come from the stored times.
pub(crate) fn job_from_record(dir: &Directory, rec: &InvocationRecord) -> (Job, Option<(String, String)>) {
    let r = &rec.accepted;
    let fail = |code: &str, msg: String| (code.to_string(), msg);
    let verdict = match (dir.tenant(&r.tenant), r.admin.as_deref().map(|a| dir.admin(a))) {
        (None, _) => Err(fail("unknown_tenant", format!("tenant '{}' is no longer configured", r.tenant))),
        (_, Some(None)) => Err(fail("unknown_admin", "the pinned admin is no longer configured".into())),
        _ if rec.status == Status::Running && !r.idempotent => Err(fail(
            "interrupted",
            format!(
                "the daemon stopped while attempt {} was running; not repeated because the command is not idempotent",
                rec.attempts
            ),
        )),
        _ if r.redacted => Err(fail(
            "secret_unavailable",
            "the daemon restarted before this invocation ran; its secret parameter values are never stored, so submit it again".into(),
        )),
        (Some(t), a) => Ok((t, a.flatten())),
    };
    let (now, now_ms) = (Instant::now(), now_ms());
    let job = Job {
        id: r.id,
        tenant: verdict.as_ref().map(|v| v.0).unwrap_or(0),
        admin: verdict.as_ref().ok().and_then(|v| v.1),
        priority: if r.priority == "interactive" { Priority::Interactive } else { Priority::Batch },
        spec: Arc::new(JobSpec {
            cmdlet: r.cmdlet.clone(),
            parameters: r
                .parameters
                .as_object()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), PsValue::from_json(v))).collect())
                .unwrap_or_default(),
        }),
        idempotent: r.idempotent,
        batch: r.batch_id,
        enqueued_at: now.checked_sub(Duration::from_millis((now_ms - r.created_at).max(0) as u64)).unwrap_or(now),
        deadline: now + Duration::from_millis((r.deadline_at - now_ms).max(0) as u64),
        attempts: rec.attempts as u32,
        not_before: None,
    };
    (job, verdict.err())
}

fn ratio(open: u32, cap: u32) -> f64 {
    if cap == 0 {
        1.0
    } else {
        open as f64 / cap as f64
    }
}
