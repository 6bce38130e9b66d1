//! The driver task: the only owner of the scheduler and of the live remote sessions.
//!
//! It wakes on events (and on a short tick as a safety net), asks the scheduler for a plan, and
//! executes it by spawning opens, commands and closes whose results come back as events.

use super::cluster::{self, PeerState, Slot};
use super::directory::{AdminIdx, TenantIdx};
use super::runner::{self, RunReport};
use super::scheduler::{
    Action, Job, LaneKey, Priority, Refill, Scheduler, SessionId, SessionRules, Snapshot, Topology, Tuning,
};
use super::{job_from_record, SessionInfo, Shared};
use crate::remote::{RemoteError, RemoteSession};
use crate::store::{InvocationRecord, Outcome, Status, StoreError};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// The longest a session's close (the remote Delete, repeated when it may not have arrived) is
/// waited for; past it the shell stays remembered and the next start deletes it.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Queued jobs kept in memory per lane and priority; the rest of a lane waits in the store and
/// is paged in (a page at a time, when the window is half empty). Memory stays bounded
/// whatever the queue's length; a window this deep keeps every session of a lane fed between
/// pages.
pub const WINDOW: usize = 256;

pub enum Event {
    /// Jobs that live only in memory (their secret values were not stored).
    Submit(Vec<Job>),
    /// Jobs the store holds whole: beyond the window they are counted, not kept.
    SubmitStored(Vec<Job>),
    /// Jobs of a lane found queued in the store at start.
    Stored {
        tenant: TenantIdx,
        admin: Option<AdminIdx>,
        priority: Priority,
        n: usize,
    },
    /// A page of queued invocations read for a [`Refill`].
    Paged {
        page: Refill,
        result: Result<Vec<InvocationRecord>, StoreError>,
    },
    /// Removes a batch's queued jobs; replies with their ids, and those of the jobs handed to
    /// sessions (of any batch), which must not be cancelled under them.
    CancelBatch(Uuid, oneshot::Sender<(Vec<Uuid>, Vec<Uuid>)>),
    Opened {
        session: SessionId,
        result: Result<Box<dyn RemoteSession>, RemoteError>,
    },
    /// Several nodes: the store granted the lease an open runs under.
    Leased {
        session: SessionId,
        lease: Uuid,
    },
    /// Several nodes: the store refused the slot an open needed (the others hold the rest).
    Refused {
        session: SessionId,
        others_admin: u32,
        others_tenant: u32,
    },
    /// Several nodes: what this node may take from the shared queue, per lane.
    Census(HashMap<(LaneKey, Priority), usize>),
    /// Several nodes: what the others hold, wait for and learned.
    Peers(PeerState),
    /// Several nodes: this node lost (true) or got back (false) its hold on its leases.
    Fence(bool),
    CommandDone {
        session: SessionId,
        report: RunReport,
    },
    /// A close finished; `deleted`: the server confirmed the shell is gone.
    Closed {
        session: SessionId,
        deleted: bool,
    },
    Snapshot(oneshot::Sender<Snapshot>),
    Sessions(oneshot::Sender<Vec<SessionInfo>>),
    Shutdown {
        drain: Duration,
        reply: oneshot::Sender<()>,
    },
}

struct Live {
    remote: Arc<dyn RemoteSession>,
    remote_id: String,
    /// The write that puts the shell on the list of open shells: its removal waits for it (two
    /// spawned writes may otherwise land in either order, and leave a closed shell listed).
    remembered: Option<tokio::task::JoinHandle<()>>,
}

pub struct Driver {
    sched: Scheduler,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
    live: HashMap<SessionId, Live>,
    /// Several nodes: the store's lease behind each session (taken before its open).
    leases: HashMap<SessionId, Uuid>,
    /// Batches cancelled since start: their jobs never go back into the queue.
    cancelled: HashSet<Uuid>,
    /// Set once shutdown began: when to stop waiting for running commands.
    drain_until: Option<Instant>,
    shutdown_reply: Option<oneshot::Sender<()>>,
    forced: bool,
}

const TICK: Duration = Duration::from_millis(100);

impl Driver {
    pub fn new(shared: Arc<Shared>, tx: mpsc::UnboundedSender<Event>, rx: mpsc::UnboundedReceiver<Event>) -> Driver {
        let dir = &shared.directory;
        let topo = Topology {
            admin_caps: dir.admins.iter().map(|a| a.cap).collect(),
            tenant_caps: dir.tenants.iter().map(|t| t.cap).collect(),
            admins_for_tenant: (0..dir.tenants.len()).map(|t| dir.admins_for(t).to_vec()).collect(),
            rules: dir
                .tenants
                .iter()
                .map(|t| {
                    let p = &t.profile.config;
                    SessionRules {
                        max_age: p.max_age(),
                        max_age_jitter_percent: p.max_age_jitter_percent,
                        max_commands: p.max_commands_per_session,
                        idle_timeout: Duration::from_secs(p.idle_timeout_seconds),
                        batch: p.cmdlets_per_call(),
                    }
                })
                .collect(),
        };
        let c = &shared.tuning;
        let tuning = Tuning {
            quota_cooldown: Duration::from_secs(c.quota_cooldown_seconds),
            auth_failure_cooldown: Duration::from_secs(c.auth_failure_cooldown_seconds),
            fairness_quantum: Duration::from_millis(c.fairness_quantum_ms),
            backoff_initial: Duration::from_millis(c.retry_backoff_initial_ms),
            backoff_max: Duration::from_millis(c.retry_backoff_max_ms),
            idle_linger: Duration::from_secs(c.idle_linger_seconds),
            warm_sessions_per_admin: c.warm_sessions_per_admin,
        };
        Driver {
            sched: Scheduler::new(topo, tuning).with_window(WINDOW),
            shared,
            tx,
            rx,
            live: HashMap::new(),
            leases: HashMap::new(),
            cancelled: HashSet::new(),
            drain_until: None,
            shutdown_reply: None,
            forced: false,
        }
    }

    pub async fn run(mut self) {
        loop {
            match tokio::time::timeout(TICK, self.rx.recv()).await {
                Ok(Some(ev)) => {
                    self.handle(ev);
                    // Take everything already waiting before planning once.
                    while let Ok(ev) = self.rx.try_recv() {
                        self.handle(ev);
                    }
                }
                Ok(None) => return,
                Err(_) => {}
            }
            let actions = self.sched.plan(Instant::now());
            for action in actions {
                self.execute(action);
            }
            for page in self.sched.refills() {
                self.read_page(page);
            }
            if self.finish_shutdown() {
                return;
            }
        }
    }

    fn handle(&mut self, ev: Event) {
        let now = Instant::now();
        match ev {
            Event::Submit(jobs) => jobs.into_iter().for_each(|j| self.sched.submit(j)),
            Event::SubmitStored(jobs) => jobs.into_iter().for_each(|j| self.sched.submit_stored(j)),
            Event::Stored { tenant, admin, priority, n } => self.sched.add_stored(tenant, admin, priority, n),
            Event::Paged { page, result: Ok(records) } => self.paged(page, records),
            Event::Paged { page, result: Err(e) } => {
                tracing::error!(error = %e, "cannot read queued invocations from the store; trying again");
                self.sched.refill_failed(&page);
            }
            Event::CancelBatch(batch, reply) => {
                self.cancelled.insert(batch);
                let _ = reply.send((self.sched.cancel_batch(batch), self.sched.started_jobs()));
            }
            Event::Opened { session, result: Ok(remote) } => {
                let remote: Arc<dyn RemoteSession> = Arc::from(remote);
                let remote_id = remote.remote_id();
                let mut remembered = None;
                if let (Some(token), Some((admin, tenant))) = (remote.resume_token(), self.sched.session_owner(session))
                {
                    let dir = &self.shared.directory;
                    remembered = Some(self.shared.remember_shell(
                        remote_id.clone(),
                        &dir.admins[admin].name,
                        &dir.tenants[tenant].domain,
                        token,
                    ));
                }
                self.live.insert(session, Live { remote, remote_id, remembered });
                self.sched.open_succeeded(session, now);
            }
            Event::Opened { session, result: Err(e) } => {
                tracing::warn!(session, class = %e.class, message = %e.message, "session open failed");
                self.shared.metrics.remote_faults.with_label_values(&[e.class.code()]).inc();
                self.share_cooldown(session, e.class);
                self.sched.open_failed(session, e.class, &e.message, e.retry_after, now);
                self.release_lease(session);
            }
            Event::Leased { session, lease } => {
                self.leases.insert(session, lease);
            }
            Event::Refused { session, others_admin, others_tenant } => {
                self.sched.open_refused(session, others_admin, others_tenant);
            }
            Event::Census(counts) => self.sched.census(&counts),
            Event::Peers(peers) => {
                self.sched.set_peers(peers.admins, peers.tenants);
                self.sched.set_demand(peers.demand);
                for (a, t, cap, left) in peers.cooldowns {
                    self.sched.shared_cooldown(a, t, cap, now + left, now);
                }
                let starved = self.sched.starved_admins(now);
                if let (Some(c), false) = (&self.shared.cluster, starved.is_empty()) {
                    let names = starved.iter().map(|&a| self.shared.directory.admins[a].name.clone()).collect();
                    cluster::ask_for_slots(&self.shared, c, names);
                }
            }
            Event::Fence(fenced) => {
                self.sched.set_fenced(fenced);
                if fenced {
                    self.force_close_all("fenced");
                } else {
                    let (shared, started) = (self.shared.clone(), self.sched.started_jobs());
                    self.shared.writes.spawn(async move { cluster::settle_after_fence(&shared, &started).await });
                }
            }
            Event::CommandDone { session, report } => {
                for job in report.requeue {
                    if job.batch.is_some_and(|b| self.cancelled.contains(&b)) {
                        // Its batch was cancelled while this attempt ran: it does not go back.
                        let shared = self.shared.clone();
                        tokio::spawn(async move {
                            let outcome = Outcome {
                                status: Status::Cancelled,
                                ..Outcome::failed(
                                    "cancelled",
                                    "the batch was cancelled before this invocation could be retried",
                                )
                            };
                            shared.finish(&job, outcome).await;
                        });
                    } else {
                        let not_before = job.not_before;
                        self.sched.requeue(job, not_before);
                    }
                }
                if let Some((class, retry_after)) = report.fault {
                    self.sched.command_failed(session, class, retry_after, now);
                }
                if report.after == super::scheduler::AfterCommand::Gone {
                    self.drop_live(session);
                }
                self.sched.command_finished(session, report.after, report.ran_for, now);
                if report.after == super::scheduler::AfterCommand::Close {
                    self.close(session, "broken");
                }
            }
            Event::Closed { session, deleted } => {
                if deleted {
                    self.drop_live(session);
                } else if let Some(live) = self.live.remove(&session) {
                    // The shell may still be alive: it stays on the list of open shells, so the
                    // next start deletes it (its lifetime ends it otherwise).
                    tracing::warn!(session, shell = %live.remote_id, "could not delete a shell; it stays remembered");
                }
                self.sched.closed(session, now);
                self.release_lease(session);
            }
            Event::Snapshot(reply) => {
                let _ = reply.send(self.sched.snapshot(now));
            }
            Event::Sessions(reply) => {
                let _ = reply.send(self.sessions(now));
            }
            Event::Shutdown { drain, reply } => {
                self.sched.begin_shutdown();
                self.drain_until = Some(now + drain);
                self.shutdown_reply = Some(reply);
            }
        }
    }

    /// Reads a page of a lane's queued work off the driver's task.
    fn read_page(&self, page: Refill) {
        let dir = &self.shared.directory;
        let tenant = dir.tenants[page.tenant].domain.clone();
        let admin = page.admin.map(|a| dir.admins[a].name.clone());
        let (shared, tx) = (self.shared.clone(), self.tx.clone());
        tokio::spawn(async move {
            let (priority, want) = (page.priority.as_str(), page.want as i64);
            let store = &shared.store;
            let result = match &shared.cluster {
                Some(c) => store.claim_page(&c.node, &tenant, admin.as_deref(), priority, &page.exclude, want).await,
                None => store.page_queued(&tenant, admin.as_deref(), priority, &page.exclude, want).await,
            };
            let _ = tx.send(Event::Paged { page, result });
        });
    }

    /// Hands a page to the scheduler; invocations that can no longer run end here.
    fn paged(&mut self, page: Refill, records: Vec<InvocationRecord>) {
        let taken = records.len();
        let (mut jobs, mut ended) = (Vec::with_capacity(taken), 0);
        for rec in &records {
            if rec.status != Status::Queued || rec.accepted.batch_id.is_some_and(|b| self.cancelled.contains(&b)) {
                // Claimed meanwhile (it is in memory already), or read as its batch was being
                // cancelled (the cancellation ends it in the store).
                continue;
            }
            match job_from_record(&self.shared.directory, rec) {
                (job, None) => jobs.push(job),
                (job, Some((code, message))) => {
                    ended += 1;
                    let shared = self.shared.clone();
                    self.shared.writes.spawn(async move { shared.finish(&job, Outcome::failed(&code, message)).await });
                }
            }
        }
        self.sched.refilled(&page, jobs, ended, taken);
    }

    fn execute(&mut self, action: Action) {
        let dir = self.shared.directory.clone();
        match action {
            Action::Open { session, admin, tenant } => {
                let profile = dir.tenants[tenant].profile.clone();
                let target = dir.target(admin, tenant);
                let admin_name = dir.admins[admin].name.clone();
                let (tx, metrics) = (self.tx.clone(), self.shared.metrics.clone());
                let timeout = Duration::from_secs(profile.config.open_timeout_seconds);
                let (shared, cluster) = (self.shared.clone(), self.shared.cluster.clone());
                tokio::spawn(async move {
                    if let Some(cluster) = cluster {
                        match cluster::acquire(&shared, &cluster, admin, tenant).await {
                            // Sent before the open's own event: the driver knows the lease first.
                            Ok(Slot::Granted(lease)) => {
                                let _ = tx.send(Event::Leased { session, lease });
                            }
                            Ok(Slot::Refused { others_admin, others_tenant }) => {
                                let _ = tx.send(Event::Refused { session, others_admin, others_tenant });
                                return;
                            }
                            Err(e) => {
                                let result = Err(RemoteError::new(
                                    crate::remote::FaultClass::ServiceUnavailable,
                                    format!("cannot take a session slot in the shared store: {e}"),
                                ));
                                let _ = tx.send(Event::Opened { session, result });
                                return;
                            }
                        }
                    }
                    let started = Instant::now();
                    let result = match tokio::time::timeout(timeout, profile.connector.open(&target)).await {
                        Ok(r) => r,
                        Err(_) => Err(RemoteError::new(
                            crate::remote::FaultClass::Timeout,
                            format!("opening a session took longer than {timeout:?}"),
                        )),
                    };
                    let label = if result.is_ok() { "ok" } else { "failed" };
                    metrics.session_opens.with_label_values(&[&admin_name, label]).inc();
                    if let Err(e) = &result {
                        metrics.session_open_failures.with_label_values(&[&admin_name, e.class.code()]).inc();
                    }
                    if result.is_ok() {
                        metrics
                            .session_open_seconds
                            .with_label_values(&[&admin_name])
                            .observe(started.elapsed().as_secs_f64());
                    }
                    let _ = tx.send(Event::Opened { session, result });
                });
            }
            Action::Run { session, job, more } => {
                let Some(live) = self.live.get(&session) else {
                    // Cannot happen: the scheduler only runs on sessions that opened.
                    tracing::error!(session, "scheduler chose a session the driver does not hold");
                    for job in std::iter::once(job).chain(more) {
                        self.sched.requeue(job, None);
                    }
                    return;
                };
                let tenant = &dir.tenants[job.tenant];
                let command_timeout = Duration::from_secs(tenant.profile.config.command_timeout_seconds);
                let admin = self.admin_of(session).unwrap_or_default();
                let (shared, tx, remote) = (self.shared.clone(), self.tx.clone(), live.remote.clone());
                let label = format!("s{session}");
                tokio::spawn(async move {
                    let report = if more.is_empty() {
                        runner::run(shared, remote, label, admin, job, command_timeout).await
                    } else {
                        let jobs = std::iter::once(job).chain(more).collect();
                        runner::run_many(shared, remote, label, admin, jobs, command_timeout).await
                    };
                    let _ = tx.send(Event::CommandDone { session, report });
                });
            }
            Action::Close { session, reason } => self.close(session, reason.as_str()),
            Action::Fail { job, failure } => {
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    shared.finish(&job, Outcome::failed(failure.code, failure.message)).await;
                });
            }
        }
    }

    fn close(&mut self, session: SessionId, reason: &str) {
        self.shared.metrics.reconnects.with_label_values(&[reason]).inc();
        let Some(live) = self.live.get(&session) else {
            let _ = self.tx.send(Event::Closed { session, deleted: true });
            return;
        };
        let (remote, tx) = (live.remote.clone(), self.tx.clone());
        tokio::spawn(async move {
            // The connector repeats a Delete that may not have arrived; if the server still
            // cannot be told, the shell is remembered for the next start, and its own lifetime
            // ends it meanwhile.
            let deleted = match tokio::time::timeout(CLOSE_TIMEOUT, remote.close()).await {
                Ok(Ok(())) => true,
                Ok(Err(e)) => {
                    tracing::debug!(session, error = %e, "closing session failed");
                    false
                }
                Err(_) => {
                    tracing::warn!(session, "closing session timed out");
                    false
                }
            };
            let _ = tx.send(Event::Closed { session, deleted });
        });
    }

    /// True when shutdown is complete: nothing runs and every session is closed.
    fn finish_shutdown(&mut self) -> bool {
        let Some(until) = self.drain_until else { return false };
        if !self.forced && Instant::now() >= until {
            // The drain deadline passed: close even busy sessions; their commands end with
            // connection errors and stay recorded as running for the next start to settle.
            self.forced = true;
            tracing::warn!(
                sessions = self.sched.session_ids().len(),
                "drain timeout: closing sessions that are still busy"
            );
            self.force_close_all("shutdown");
        }
        if self.sched.has_live_sessions() {
            return false;
        }
        if let Some(reply) = self.shutdown_reply.take() {
            let _ = reply.send(());
        }
        true
    }

    /// Closes every session, busy or not (their commands end with connection errors).
    fn force_close_all(&mut self, reason: &str) {
        for id in self.sched.session_ids() {
            if self.live.contains_key(&id) {
                self.sched.command_finished(id, super::scheduler::AfterCommand::Close, None, Instant::now());
                self.close(id, reason);
            }
        }
    }

    /// The session is gone at the server: stop holding it and stop remembering it.
    fn drop_live(&mut self, session: SessionId) {
        if let Some(live) = self.live.remove(&session) {
            self.shared.forget_shell(live.remote_id, live.remembered);
        }
        self.release_lease(session);
    }

    /// Several nodes: the session's slot goes back to the store.
    fn release_lease(&mut self, session: SessionId) {
        if let (Some(lease), Some(cluster)) = (self.leases.remove(&session), &self.shared.cluster) {
            cluster::release(&self.shared, cluster, lease);
        }
    }

    /// Several nodes: a quota fault at open lowers the cap on every node, not only here.
    fn share_cooldown(&self, session: SessionId, class: crate::remote::FaultClass) {
        use super::failure::{after_open_failure, PoolEffect};
        let (Some(&lease), Some((a, t))) = (self.leases.get(&session), self.sched.session_owner(session)) else {
            return;
        };
        let dir = &self.shared.directory;
        let scope = match after_open_failure(class) {
            PoolEffect::LowerAdminCap => format!("admin:{}", dir.admins[a].name),
            PoolEffect::LowerTenantCap => format!("tenant:{}", dir.tenants[t].domain),
            _ => return,
        };
        cluster::share_quota_cooldown(&self.shared, scope, lease);
    }

    fn admin_of(&self, session: SessionId) -> Option<String> {
        self.sched.session_owner(session).map(|(a, _)| self.shared.directory.admins[a].name.clone())
    }

    fn sessions(&self, now: Instant) -> Vec<SessionInfo> {
        let dir = &self.shared.directory;
        self.sched
            .snapshot(now)
            .sessions
            .into_iter()
            .map(|s| SessionInfo {
                id: format!("s{}", s.id),
                remote_id: self.live.get(&s.id).map(|l| l.remote_id.clone()),
                admin: dir.admins[s.admin].name.clone(),
                tenant: dir.tenants[s.tenant].domain.clone(),
                state: s.state.as_str(),
                age_seconds: s.age.as_secs_f64(),
                commands: s.commands,
            })
            .collect()
    }
}
