//! Several nodes on one PostgreSQL (docs/cluster.md): the policy around what the store shares
//! (`store::cluster`). Each node's scheduler stays in memory and decides alone; the database
//! makes the caps global and hands work around:
//!
//! - **Slots.** Before opening a remote session a node takes a lease in the store (under the
//!   admin's and the tenant's locks, counted over all nodes); the heartbeat renews this node's
//!   leases and reads what the others hold, which the scheduler subtracts from its caps.
//! - **Work.** Batch items are stored for any node; every node counts what it may take (a
//!   census on each beat and on every `queued` notification) and claims pages of it.
//! - **Death.** A node silent for `dead_after` is rescued by another: its shells are deleted
//!   while their leases still count, then the slots are freed; its running reads go back to
//!   the queue and its running writes end `node_lost` (they may have run).
//! - **Fencing.** A node that cannot renew its leases for `fence_after` (a beat before the
//!   others may count it dead, so before any rescue), or finds one taken over, stops using
//!   them: it closes every session.

use super::directory::{AdminIdx, Directory, TenantIdx};
use super::driver::Event;
use super::scheduler::{LaneKey, Priority};
use super::{job_from_record, Shared};
use crate::config::ClusterConfig;
use crate::store::cluster::{Admission, ClusterView, Rescue, Wakeups};
use crate::store::{LaneCount, Outcome, StoreError};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

/// The name a node gives its remote shells, so that it (after a restart) or a rescuer (after
/// its death) can find them.
pub fn shell_name(node: &str) -> String {
    format!("psbroker:{node}")
}

/// This node's membership: its leases and whether it is fenced.
pub struct Cluster {
    pub node: String,
    pub config: ClusterConfig,
    /// Lease id → when the store granted it.
    held: Mutex<HashMap<String, Instant>>,
    fenced: AtomicBool,
}

/// What an open gets from the store before it may reach the service.
pub enum Slot {
    Granted(Uuid),
    Refused { others_admin: u32, others_tenant: u32 },
}

/// How long a node that was refused a slot keeps asking the others for it.
const DEMAND_TTL: Duration = Duration::from_secs(10);

impl Cluster {
    pub fn new(node: String, config: ClusterConfig) -> Cluster {
        Cluster { node, config, held: Mutex::default(), fenced: AtomicBool::new(false) }
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long a rescuer keeps a dead node's slots counted while it deletes its shells.
    fn reap_ttl(&self) -> Duration {
        self.config.lease_ttl() * 4
    }
}

/// Takes a slot in the store for one session of `admin` on `tenant`, counted over all nodes.
pub async fn acquire(shared: &Shared, cluster: &Cluster, a: AdminIdx, t: TenantIdx) -> Result<Slot, StoreError> {
    let dir = &shared.directory;
    let (admin, tenant) = (&dir.admins[a], &dir.tenants[t]);
    let lease = Uuid::now_v7();
    let ttl = cluster.config.lease_ttl();
    let store = &shared.store;
    match store.acquire_lease(lease, &cluster.node, &admin.name, &tenant.domain, admin.cap, tenant.cap, ttl).await? {
        Admission::Granted => {
            cluster.held().insert(lease.to_string(), Instant::now());
            shared.metrics.cluster_leases.set(cluster.held().len() as i64);
            Ok(Slot::Granted(lease))
        }
        Admission::Refused { others_admin, others_tenant } => {
            shared.metrics.admissions_refused.inc();
            if let Err(e) = store.record_demand(&admin.name, &cluster.node, DEMAND_TTL).await {
                tracing::debug!(error = %e, "cannot record the wait for a slot");
            }
            Ok(Slot::Refused { others_admin, others_tenant })
        }
    }
}

/// Says that this node waits for slots of `admins` that the other nodes hold (see
/// `Scheduler::starved_admins`), so they give idle sessions back and yield busy ones.
pub fn ask_for_slots(shared: &Arc<Shared>, cluster: &Arc<Cluster>, admins: Vec<String>) {
    let (shared, cluster) = (shared.clone(), cluster.clone());
    shared.clone().writes.spawn(async move {
        for admin in admins {
            if let Err(e) = shared.store.record_demand(&admin, &cluster.node, DEMAND_TTL).await {
                tracing::debug!(error = %e, "cannot record the wait for a slot");
            }
        }
    });
}

/// Gives a slot back (off the caller's path; shutdown waits for it). If the store cannot be
/// told, the lease expires by itself. It stops counting as held first: a heartbeat that finds
/// a held lease gone from the store fences the node, and the store's delete may commit before
/// such a beat reads the leases.
pub fn release(shared: &Arc<Shared>, cluster: &Arc<Cluster>, lease: Uuid) {
    cluster.held().remove(&lease.to_string());
    shared.metrics.cluster_leases.set(cluster.held().len() as i64);
    let shared2 = shared.clone();
    shared.writes.spawn(async move {
        if let Err(e) = shared2.store.release_leases(&[lease.to_string()]).await {
            tracing::warn!(error = %e, "cannot release a session lease; it expires by itself");
        }
    });
}

/// A quota fault says someone outside holds shells: every node lowers the scope's cap to what
/// all of them hold now (less the refused open's lease), for the cool-down.
pub fn share_quota_cooldown(shared: &Arc<Shared>, scope: String, refused: Uuid) {
    let shared2 = shared.clone();
    let cooldown = Duration::from_secs(shared.tuning.quota_cooldown_seconds);
    shared.writes.spawn(async move {
        if let Err(e) = shared2.store.share_cooldown(&scope, refused, cooldown).await {
            tracing::warn!(error = %e, scope, "cannot share a quota cool-down with the other nodes");
        }
    });
}

/// Joins the cluster at start, after this node's shells from an earlier run were deleted:
/// its old leases go (their shells are gone) and its heartbeat starts.
pub async fn join(shared: &Shared, cluster: &Cluster) -> Result<(), StoreError> {
    shared.store.leave(&cluster.node).await?;
    shared.store.beat(&cluster.node, cluster.config.lease_ttl()).await?;
    Ok(())
}

/// The node's cluster task: beats, looks at the others and the queue, rescues dead nodes,
/// fences itself. Ends when `stop` turns true.
pub async fn run(
    shared: Arc<Shared>,
    cluster: Arc<Cluster>,
    tx: mpsc::UnboundedSender<Event>,
    stop: watch::Receiver<bool>,
) {
    // One task, three futures: renewals keep their beat however long the looks take, and the
    // watchdog's timer fires even while a beat waits on a store that does not answer.
    let (renewed, renewals) = watch::channel(Instant::now());
    tokio::join!(
        renew(&shared, &cluster, &tx, renewed, stop.clone()),
        looks(&shared, &cluster, &tx, stop.clone()),
        watchdog(&shared, &cluster, &tx, renewals, stop)
    );
}

/// Renews this node's leases every heartbeat.
async fn renew(
    shared: &Shared,
    cluster: &Cluster,
    tx: &mpsc::UnboundedSender<Event>,
    renewed: watch::Sender<Instant>,
    mut stop: watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(cluster.config.heartbeat());
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => beat(shared, cluster, tx, &renewed).await,
            _ = stop.changed() => return,
        }
    }
}

/// Every heartbeat, and whenever a notification says something changed: reads the queue's
/// census and the other nodes' state; every heartbeat also rescues nodes that stopped beating.
async fn looks(
    shared: &Arc<Shared>,
    cluster: &Cluster,
    tx: &mpsc::UnboundedSender<Event>,
    mut stop: watch::Receiver<bool>,
) {
    let beat_every = cluster.config.heartbeat();
    let mut wakeups: Option<Wakeups> = None;
    let mut next_look = tokio::time::Instant::now();
    loop {
        if wakeups.is_none() {
            let listen = shared.store.wakeups();
            wakeups = tokio::time::timeout(beat_every, listen).await.ok().and_then(Result::ok);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next_look) => {
                next_look = tokio::time::Instant::now() + beat_every;
                look(shared, cluster, tx, true, true).await;
                rescue(shared, cluster).await;
            }
            woken = next_wakeup(&mut wakeups) => match woken {
                Ok(first) => {
                    let (queue, peers) = coalesce(&mut wakeups, first).await;
                    look(shared, cluster, tx, queue, peers).await;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "lost the notification listener; polling until it is back");
                    wakeups = None;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

/// Fences the node `fence_after` past its last full renewal (as sent), whatever its beats are
/// doing then: a beat stuck on a slow store must not keep a node using leases that another
/// node may be about to count as dead.
async fn watchdog(
    shared: &Shared,
    cluster: &Cluster,
    tx: &mpsc::UnboundedSender<Event>,
    mut renewals: watch::Receiver<Instant>,
    mut stop: watch::Receiver<bool>,
) {
    let fence_after = cluster.config.fence_after();
    loop {
        let deadline = *renewals.borrow_and_update() + fence_after;
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {
                fence(shared, cluster, tx, format!("cannot renew this node's leases for {fence_after:?}"));
                // Fenced until a beat renews everything again.
                tokio::select! {
                    changed = renewals.changed() => if changed.is_err() { return },
                    _ = stop.changed() => return,
                }
            }
            changed = renewals.changed() => if changed.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}

fn fence(shared: &Shared, cluster: &Cluster, tx: &mpsc::UnboundedSender<Event>, why: String) {
    if cluster.fenced.swap(true, Ordering::SeqCst) {
        return;
    }
    tracing::error!(node = %cluster.node, "{why}; fencing: closing every session until the store answers");
    cluster.held().clear();
    shared.metrics.cluster_fenced.set(1);
    let _ = tx.send(Event::Fence(true));
}

/// Notifications come in bursts (a session closing per command on a busy node): what arrives
/// within [`COALESCE`] of the first is answered by one look. Returns whether to count the
/// queue and whether to read the peers. `None` (the listener reconnected, notifications may
/// have been missed) asks for both.
async fn coalesce(wakeups: &mut Option<Wakeups>, first: Option<String>) -> (bool, bool) {
    let mut want = (false, false);
    let mut note = |what: Option<String>| match what.as_deref() {
        Some("queued") => want.0 = true,
        Some("lease") => want.1 = true,
        _ => want = (true, true),
    };
    note(first);
    let until = tokio::time::Instant::now() + COALESCE;
    while let Ok(Ok(more)) = tokio::time::timeout_at(until, next_wakeup(wakeups)).await {
        note(more);
    }
    want
}

const COALESCE: Duration = Duration::from_millis(50);

async fn next_wakeup(wakeups: &mut Option<Wakeups>) -> Result<Option<String>, StoreError> {
    match wakeups {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

/// Renews this node's leases and tells the watchdog when everything was renewed. Fences the
/// node at once when the store no longer holds a lease it was granted before this beat (a
/// rescuer took it over: the others count the node as dead); lifts the fence once a beat renews
/// everything again.
async fn beat(shared: &Shared, cluster: &Cluster, tx: &mpsc::UnboundedSender<Event>, renewed: &watch::Sender<Instant>) {
    let sent = Instant::now();
    let answer =
        tokio::time::timeout(cluster.config.heartbeat(), shared.store.beat(&cluster.node, cluster.config.lease_ttl()));
    // A failed or late beat changes nothing here: the watchdog fences when they add up.
    let Ok(Ok(renewed_ids)) = answer.await else { return };
    let renewed_ids: HashSet<String> = renewed_ids.into_iter().collect();
    let lost = cluster.held().iter().filter(|(id, at)| **at < sent && !renewed_ids.contains(*id)).count();
    if lost > 0 {
        let why = format!("the store no longer holds {lost} of this node's leases (another node took them over)");
        fence(shared, cluster, tx, why);
        return;
    }
    renewed.send_replace(sent);
    if cluster.fenced.swap(false, Ordering::SeqCst) {
        tracing::warn!(node = %cluster.node, "leases renewed again; lifting the fence");
        shared.metrics.cluster_fenced.set(0);
        let _ = tx.send(Event::Fence(false));
    }
}

/// Reads what the driver needs from the store: the queue's census (`queue`) and what the
/// other nodes hold, want and learned (`peers`).
async fn look(shared: &Shared, cluster: &Cluster, tx: &mpsc::UnboundedSender<Event>, queue: bool, peers: bool) {
    let dir = &shared.directory;
    if queue {
        match shared.store.census(&cluster.node).await {
            Ok(lanes) => {
                let _ = tx.send(Event::Census(census(dir, &lanes)));
            }
            Err(e) => tracing::warn!(error = %e, "cannot count the shared queue"),
        }
    }
    if peers {
        match shared.store.cluster_view(&cluster.node, cluster.config.dead_after()).await {
            Ok(view) => {
                shared.metrics.cluster_nodes.set(view.live_nodes as i64);
                let _ = tx.send(Event::Peers(PeerState::from_view(dir, &view)));
            }
            Err(e) => tracing::warn!(error = %e, "cannot read what the other nodes hold"),
        }
    }
}

fn census(dir: &Directory, lanes: &[LaneCount]) -> HashMap<(LaneKey, Priority), usize> {
    let mut counts = HashMap::new();
    for lane in lanes {
        let Some(t) = dir.tenant(&lane.tenant) else { continue };
        let admin = match lane.admin.as_deref().map(|a| dir.admin(a)) {
            None => None,
            Some(Some(a)) => Some(a),
            // Pinned to an admin this node does not know: a node configured differently.
            Some(None) => continue,
        };
        let priority = if lane.priority == "interactive" { Priority::Interactive } else { Priority::Batch };
        *counts.entry(((t, admin), priority)).or_insert(0) += lane.count.max(0) as usize;
    }
    counts
}

/// The other nodes' share, in the scheduler's indices.
pub struct PeerState {
    pub admins: Vec<u32>,
    pub tenants: Vec<u32>,
    pub demand: Vec<bool>,
    /// Shared cool-downs: admin or tenant, cap over all nodes, time left.
    pub cooldowns: Vec<(Option<AdminIdx>, Option<TenantIdx>, u32, Duration)>,
}

impl PeerState {
    fn from_view(dir: &Directory, view: &ClusterView) -> PeerState {
        let mut state = PeerState {
            admins: vec![0; dir.admins.len()],
            tenants: vec![0; dir.tenants.len()],
            demand: vec![false; dir.admins.len()],
            cooldowns: Vec::new(),
        };
        for p in &view.peers {
            if let Some(a) = dir.admin(&p.admin) {
                state.admins[a] += p.n;
            }
            if let Some(t) = dir.tenant(&p.tenant) {
                state.tenants[t] += p.n;
            }
        }
        for admin in &view.demand {
            if let Some(a) = dir.admin(admin) {
                state.demand[a] = true;
            }
        }
        for c in &view.cooldowns {
            let scope = match c.scope.split_once(':') {
                Some(("admin", name)) => dir.admin(name).map(|a| (Some(a), None)),
                Some(("tenant", name)) => dir.tenant(name).map(|t| (None, Some(t))),
                _ => None,
            };
            if let Some((a, t)) = scope {
                state.cooldowns.push((a, t, c.cap, c.remaining));
            }
        }
        state
    }
}

/// Takes over the nodes that stopped beating, then settles what they left.
async fn rescue(shared: &Arc<Shared>, cluster: &Cluster) {
    let taken = shared.store.rescue_dead(&cluster.node, cluster.config.dead_after(), cluster.reap_ttl()).await;
    match taken {
        Ok(r) if r.dead.is_empty() => {}
        Ok(r) => {
            tracing::warn!(
                dead = ?r.dead,
                shells = r.shells.len(),
                leases = r.leases.len(),
                running = r.running.len(),
                "rescuing nodes that stopped beating"
            );
            let shared = shared.clone();
            shared.clone().writes.spawn(async move { settle(&shared, r).await });
        }
        Err(e) => tracing::warn!(error = %e, "cannot look for dead nodes"),
    }
}

/// Deletes a dead node's shells while their slots still count, frees the slots, then ends or
/// requeues its running invocations by the crash rule: a read runs again, a write may have
/// run and ends `node_lost`.
async fn settle(shared: &Arc<Shared>, rescue: Rescue) {
    let dir = &shared.directory;
    for shell in &rescue.shells {
        if let (Some(a), Some(t)) = (dir.admin(&shell.admin), dir.tenant(&shell.tenant)) {
            let connector = &dir.tenants[t].profile.connector;
            match connector.delete_orphan(&dir.target(a, t), &shell.token).await {
                Ok(deleted) => {
                    if deleted {
                        shared.metrics.rescued.with_label_values(&["shell_deleted"]).inc();
                    }
                }
                Err(e) => tracing::warn!(shell = %shell.shell_id, error = %e, "cannot delete a dead node's shell"),
            }
        }
        if let Err(e) = shared.store.forget_shell(&shell.shell_id).await {
            tracing::warn!(error = %e, "cannot update the list of open shells");
        }
    }
    // A lease may hold a shell that is not remembered: the node died while opening it, or before
    // its row was written. Counting rows against leases cannot tell (a closed shell's row may
    // outlive it by a moment), so every scope it held a lease in is searched for shells under
    // its name.
    let leased: HashSet<(&String, &String)> = rescue.leases.iter().map(|(_, admin, tenant)| (admin, tenant)).collect();
    for (admin, tenant) in leased {
        let (Some(a), Some(t)) = (dir.admin(admin), dir.tenant(tenant)) else { continue };
        for dead in &rescue.dead {
            let connector = &dir.tenants[t].profile.connector;
            match connector.reap_orphans(&dir.target(a, t), &shell_name(dead)).await {
                Ok(n) => shared.metrics.rescued.with_label_values(&["shell_deleted"]).inc_by(n as u64),
                Err(e) => tracing::warn!(admin, error = %e, "cannot look for a dead node's shells"),
            }
        }
    }
    let leases: Vec<String> = rescue.leases.iter().map(|(id, _, _)| id.clone()).collect();
    if !leases.is_empty() {
        if let Err(e) = shared.store.release_leases(&leases).await {
            tracing::warn!(error = %e, "cannot free a dead node's slots; they expire by themselves");
        }
    }
    let why = format!("the node running it ({}) stopped beating", rescue.dead.join(", "));
    settle_running(shared, &rescue.running, &why).await;
    if let Err(e) = shared.store.notify_queued().await {
        tracing::debug!(error = %e, "cannot wake the nodes after a rescue");
    }
}

/// Ends or requeues invocations recorded as running that nothing runs any more, by the crash
/// rule: a read runs again (any node may take it), a write may have run and ends `node_lost`.
pub async fn settle_running(shared: &Shared, records: &[crate::store::InvocationRecord], why: &str) {
    let dir = &shared.directory;
    for rec in records {
        let (job, verdict) = job_from_record(dir, rec);
        let ended = match verdict {
            None => {
                match shared.store.requeue_rescued(job.id).await {
                    Ok(()) => shared.metrics.rescued.with_label_values(&["requeued"]).inc(),
                    Err(e) => tracing::error!(invocation = %job.id, error = %e, "cannot requeue a rescued invocation"),
                }
                continue;
            }
            Some((code, _)) if code == "interrupted" => {
                shared.metrics.rescued.with_label_values(&["node_lost"]).inc();
                Outcome::failed(
                    "node_lost",
                    format!(
                        "{why} while attempt {} was running; not repeated because the command is not idempotent \
                         and may have run",
                        rec.attempts
                    ),
                )
            }
            Some((code, message)) => Outcome::failed(&code, message),
        };
        shared.finish(&job, ended).await;
    }
}

/// After a fence lifts: what this node recorded as running but no longer runs (its results,
/// or its requeues, could not be written while the store was away) is settled like a dead
/// node's. `started`: what its sessions run now.
pub async fn settle_after_fence(shared: &Shared, started: &[Uuid]) {
    let started: HashSet<&Uuid> = started.iter().collect();
    match shared.store.running().await {
        Ok(records) => {
            let stale: Vec<_> = records.into_iter().filter(|r| !started.contains(&r.accepted.id)).collect();
            if !stale.is_empty() {
                tracing::warn!(invocations = stale.len(), "settling what ran while the store was away");
                settle_running(shared, &stale, "this node lost its store").await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot look for what ran while the store was away"),
    }
}

/// Looks for the end of an invocation another node may run: the store is asked again at
/// this interval (an end on this node wakes its waiter at once).
pub const REMOTE_END_POLL: Duration = Duration::from_millis(200);
