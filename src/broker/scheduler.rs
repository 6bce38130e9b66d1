//! The scheduler: a pure state machine that decides which session runs which invocation.
//!
//! It does no I/O and reads no clock: the driver feeds it events with the time they happened and
//! executes the [`Action`]s that [`Scheduler::plan`] returns. That keeps the cap invariant
//! ("an admin's sessions across tenants ≤ its cap; a tenant's sessions across admins ≤ its cap,
//! even briefly") checkable by unit tests with virtual time. docs/scheduler.md explains the policy.

use super::directory::{AdminIdx, TenantIdx};
use super::failure::{after_command_failure, after_open_failure, PoolEffect};
use crate::remote::{FaultClass, PsValue};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

pub type SessionId = u64;

/// The longest the scheduler believes a service's "come back in N seconds".
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Interactive,
    #[default]
    Batch,
}

impl Priority {
    fn slot(self) -> usize {
        match self {
            Priority::Interactive => 0,
            Priority::Batch => 1,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Batch => "batch",
        }
    }
}

/// What to run: one cmdlet and its typed parameters.
#[derive(Debug)]
pub struct JobSpec {
    pub cmdlet: String,
    pub parameters: Vec<(String, PsValue)>,
}

/// One queued invocation as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: Uuid,
    pub tenant: TenantIdx,
    /// Set when the caller pinned the invocation to one admin.
    pub admin: Option<AdminIdx>,
    pub priority: Priority,
    pub spec: Arc<JobSpec>,
    /// Safe to run twice (a read): may be retried when the outcome of an attempt is unknown.
    pub idempotent: bool,
    pub batch: Option<Uuid>,
    pub enqueued_at: Instant,
    pub deadline: Instant,
    pub attempts: u32,
    pub not_before: Option<Instant>,
}

/// Per-tenant session rules, taken from the tenant's endpoint profile.
#[derive(Debug, Clone)]
pub struct SessionRules {
    pub max_age: Duration,
    pub max_age_jitter_percent: u8,
    pub max_commands: u32,
    pub idle_timeout: Duration,
    /// Batch-priority invocations a session may take at once (Exchange Online's `$batch`);
    /// 1: one at a time.
    pub batch: usize,
}

/// The static shape the scheduler works within.
#[derive(Debug, Clone)]
pub struct Topology {
    pub admin_caps: Vec<u32>,
    pub tenant_caps: Vec<u32>,
    pub admins_for_tenant: Vec<Vec<AdminIdx>>,
    pub rules: Vec<SessionRules>,
}

#[derive(Debug, Clone)]
pub struct Tuning {
    pub quota_cooldown: Duration,
    pub auth_failure_cooldown: Duration,
    pub fairness_quantum: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// How long an idle session beyond the warm reserve stays open once its admin has no
    /// queued work.
    pub idle_linger: Duration,
    /// Idle sessions an admin keeps (most recently used first) when none of its work is queued.
    pub warm_sessions_per_admin: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    MaxAge,
    MaxCommands,
    IdleTimeout,
    /// Idle, its tenant had no work, and another tenant needed the admin's slot.
    Evicted,
    /// Taken from a tenant that had its turn so that a waiting tenant gets one.
    Preempted,
    /// Idle past the linger while its admin had no queued work: the account's quota goes back
    /// to people and other tools.
    GivenBack,
    /// Idle while its admin's calls in flight were eased off after the service pushed back
    /// (429/503): the admin holds more sessions than its lowered cap.
    EasedOff,
    /// The session failed under a command and may be in any state.
    Broken,
    Shutdown,
    /// This node could not renew its leases: it stops using slots the other nodes may soon
    /// count as free.
    Fenced,
    /// Another node waits for this admin's slot and this node has had its turn with it.
    Yielded,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::MaxAge => "max_age",
            CloseReason::MaxCommands => "max_commands",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Evicted => "evicted",
            CloseReason::Preempted => "preempted",
            CloseReason::GivenBack => "given_back",
            CloseReason::EasedOff => "eased_off",
            CloseReason::Broken => "broken",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Fenced => "fenced",
            CloseReason::Yielded => "yielded",
        }
    }
}

/// Why an invocation failed without running (the scheduler's own verdicts).
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub code: &'static str,
    pub message: String,
    pub class: Option<FaultClass>,
}

#[derive(Debug)]
pub enum Action {
    Open {
        session: SessionId,
        admin: AdminIdx,
        tenant: TenantIdx,
    },
    /// Runs `job` on the session, and with it `more` of the same lane (sent together, e.g. as
    /// one `$batch`; empty unless the tenant's rules allow it).
    Run {
        session: SessionId,
        job: Job,
        more: Vec<Job>,
    },
    Close {
        session: SessionId,
        reason: CloseReason,
    },
    Fail {
        job: Job,
        failure: Failure,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Opening,
    Idle,
    Busy,
    Closing,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Opening => "opening",
            SessionState::Idle => "idle",
            SessionState::Busy => "busy",
            SessionState::Closing => "closing",
        }
    }
}

/// What became of a session after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterCommand {
    /// Healthy: back to idle.
    Keep,
    /// The server says it no longer exists: its quota is already free.
    Gone,
    /// Broken in an unknown state: close it (best effort) before its slot counts as free.
    Close,
}

#[derive(Debug, Clone)]
struct Session {
    admin: AdminIdx,
    tenant: TenantIdx,
    state: SessionState,
    opened_at: Instant,
    max_age: Duration,
    commands: u32,
    last_used: Instant,
    close_reason: Option<CloseReason>,
    /// When its close was asked for (to learn what a close costs).
    closing_since: Option<Instant>,
    /// The invocations it runs now, if busy (several when they travel together).
    running: Vec<Uuid>,
}

pub type LaneKey = (TenantIdx, Option<AdminIdx>);

/// Invocations with identical routing: same tenant, same admin pin.
#[derive(Debug, Default)]
struct Lane {
    /// The jobs in memory, per priority: with a window, the oldest of the lane's queued work.
    queues: [VecDeque<Job>; 2],
    /// Per priority, how many more jobs wait in the store only (paged in as the lane drains).
    /// A count, kept exact but for the moments a page corrects it (see [`Scheduler::refilled`]).
    stored: [usize; 2],
    /// A page of this priority is being read.
    paging: [bool; 2],
    /// Per priority, jobs ever left in the store (a counter), and its value when the page
    /// being read was asked for: jobs counted later may not have been visible to that page.
    spilled: [u64; 2],
    spilled_at_page: [u64; 2],
    /// Since when the lane has had ready work, no session and no way to open one.
    blocked_since: Option<Instant>,
    /// Sessions being closed (evicted or preempted) to make room for this lane: the lane has
    /// first claim on the freed slots.
    room_from: Vec<SessionId>,
    /// Set for one plan after a slot made for this lane was freed.
    claim: bool,
    last_error: Option<(FaultClass, String)>,
}

impl Lane {
    fn len(&self) -> usize {
        self.queues[0].len() + self.queues[1].len() + self.stored[0] + self.stored[1]
    }

    fn slot_len(&self, slot: usize) -> usize {
        self.queues[slot].len() + self.stored[slot]
    }

    fn head(&self, now: Instant) -> Option<&Job> {
        self.queues.iter().filter_map(|q| q.front()).find(|j| j.not_before.is_none_or(|t| t <= now))
    }

    fn has_ready(&self, now: Instant) -> bool {
        self.head(now).is_some()
    }

    fn has_interactive(&self, now: Instant) -> bool {
        self.queues[0].front().is_some_and(|j| j.not_before.is_none_or(|t| t <= now))
    }

    fn oldest(&self) -> Option<Instant> {
        self.queues.iter().filter_map(|q| q.front()).map(|j| j.enqueued_at).min()
    }

    fn pop_ready(&mut self, now: Instant) -> Option<Job> {
        for q in &mut self.queues {
            if q.front().is_some_and(|j| j.not_before.is_none_or(|t| t <= now)) {
                return q.pop_front();
            }
        }
        None
    }
}

/// A temporary restriction with its cause, e.g. "admin X failed logon: leave it alone for 5 min".
#[derive(Debug, Clone)]
struct Block {
    until: Instant,
    class: FaultClass,
    message: String,
}

/// A cap lowered after a quota fault, until the cool-down ends.
#[derive(Debug, Clone, Copy)]
struct Lowered {
    cap: u32,
    until: Instant,
}

/// Exponentially weighted estimates of how long opens, commands and closes take (seconds).
#[derive(Debug, Clone, Copy)]
struct Estimates {
    open: f64,
    command: f64,
    close: f64,
}

impl Estimates {
    const WEIGHT: f64 = 0.2;

    fn observe(value: &mut f64, sample: Duration) {
        *value = *value * (1.0 - Self::WEIGHT) + sample.as_secs_f64() * Self::WEIGHT;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    pub id: SessionId,
    pub admin: AdminIdx,
    pub tenant: TenantIdx,
    pub state: SessionState,
    pub age: Duration,
    pub commands: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct CapView {
    pub cap: u32,
    pub effective_cap: u32,
    pub open: u32,
    pub busy: u32,
    pub queued: usize,
    /// Why the scheduler is leaving this admin or tenant alone right now, if it is.
    pub blocked: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub sessions: Vec<SessionView>,
    pub admins: Vec<CapView>,
    pub tenants: Vec<CapView>,
    pub queued_interactive: usize,
    pub queued_batch: usize,
    pub oldest_queued: Option<Duration>,
}

pub struct Scheduler {
    topo: Topology,
    tuning: Tuning,
    lanes: BTreeMap<LaneKey, Lane>,
    sessions: BTreeMap<SessionId, Session>,
    next_session: SessionId,
    admin_open: Vec<u32>,
    tenant_open: Vec<u32>,
    admin_lowered: Vec<Option<Lowered>>,
    tenant_lowered: Vec<Option<Lowered>>,
    /// Logon failures and MFA demands: the admin is useless everywhere for a while.
    admin_blocked: Vec<Option<Block>>,
    /// No permission for this tenant.
    pair_blocked: HashMap<(AdminIdx, TenantIdx), Block>,
    /// Remote PowerShell disabled for the tenant.
    tenant_blocked: Vec<Option<Block>>,
    /// Backoff after an admin's opens failed for transient reasons.
    admin_retry_at: Vec<Option<Instant>>,
    admin_failures: Vec<u32>,
    estimates: Estimates,
    queued: [usize; 2],
    next_sweep: Option<Instant>,
    shutting_down: bool,
    /// Several nodes: the sessions the other nodes hold per admin and per tenant (their share
    /// of the caps), the admins another node waits for, and whether this node is fenced.
    admin_peers: Vec<u32>,
    tenant_peers: Vec<u32>,
    admin_demand: Vec<bool>,
    fenced: bool,
    /// Jobs kept in memory per lane and priority when the queue lives in a store; `None`
    /// (the default) keeps every job in memory.
    window: Option<usize>,
}

/// A page of one lane's queued work to read from the store (see [`Scheduler::refills`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refill {
    pub tenant: TenantIdx,
    pub admin: Option<AdminIdx>,
    pub priority: Priority,
    pub want: usize,
    /// The lane's jobs in memory (queued or running), which the page must not bring again.
    pub exclude: Vec<Uuid>,
}

impl Scheduler {
    pub fn new(topo: Topology, tuning: Tuning) -> Self {
        let (na, nt) = (topo.admin_caps.len(), topo.tenant_caps.len());
        Self {
            topo,
            tuning,
            lanes: BTreeMap::new(),
            sessions: BTreeMap::new(),
            next_session: 1,
            admin_open: vec![0; na],
            tenant_open: vec![0; nt],
            admin_lowered: vec![None; na],
            tenant_lowered: vec![None; nt],
            admin_blocked: vec![None; na],
            pair_blocked: HashMap::new(),
            tenant_blocked: vec![None; nt],
            admin_retry_at: vec![None; na],
            admin_failures: vec![0; na],
            // Conservative starting guesses; replaced by observations within a few samples.
            estimates: Estimates { open: 2.0, command: 0.5, close: 0.2 },
            queued: [0, 0],
            next_sweep: None,
            shutting_down: false,
            admin_peers: vec![0; na],
            tenant_peers: vec![0; nt],
            admin_demand: vec![false; na],
            fenced: false,
            window: None,
        }
    }

    /// Keeps at most `window` jobs per lane and priority in memory; jobs submitted with
    /// [`Scheduler::submit_stored`] beyond it stay in the store, as a count, until
    /// [`Scheduler::refills`] asks for them.
    pub fn with_window(mut self, window: usize) -> Self {
        self.window = Some(window.max(2));
        self
    }

    // ----- events -------------------------------------------------------------------------

    pub fn submit(&mut self, job: Job) {
        self.queued[job.priority.slot()] += 1;
        let lane = self.lanes.entry((job.tenant, job.admin)).or_default();
        lane.queues[job.priority.slot()].push_back(job);
    }

    /// Submits a job that the store holds whole (nothing of it lives only in memory): beyond
    /// the window it is dropped from memory and counted, to be paged in later.
    pub fn submit_stored(&mut self, job: Job) {
        let slot = job.priority.slot();
        if let Some(window) = self.window {
            let lane = self.lanes.entry((job.tenant, job.admin)).or_default();
            if lane.stored[slot] > 0 || lane.queues[slot].len() >= window {
                lane.stored[slot] += 1;
                lane.spilled[slot] += 1;
                self.queued[slot] += 1;
                return;
            }
            // A page may have brought it in already (it committed before the page was read).
            if lane.queues[slot].iter().any(|j| j.id == job.id) {
                return;
            }
        }
        self.submit(job)
    }

    /// Counts `n` jobs of a lane that wait in the store (what a start finds queued).
    pub fn add_stored(&mut self, tenant: TenantIdx, admin: Option<AdminIdx>, priority: Priority, n: usize) {
        let slot = priority.slot();
        let lane = self.lanes.entry((tenant, admin)).or_default();
        lane.stored[slot] += n;
        lane.spilled[slot] += n as u64;
        self.queued[slot] += n;
    }

    /// The pages to read now: lanes whose window ran below half while more of their work
    /// waits in the store (each is asked once until [`Scheduler::refilled`] answers it).
    pub fn refills(&mut self) -> Vec<Refill> {
        let Some(window) = self.window else { return Vec::new() };
        let mut pages = Vec::new();
        for (&(tenant, admin), lane) in self.lanes.iter_mut() {
            for priority in [Priority::Interactive, Priority::Batch] {
                let slot = priority.slot();
                if lane.stored[slot] > 0 && !lane.paging[slot] && lane.queues[slot].len() < window / 2 {
                    lane.paging[slot] = true;
                    lane.spilled_at_page[slot] = lane.spilled[slot];
                    let want = window - lane.queues[slot].len();
                    let exclude = lane.queues[slot].iter().map(|j| j.id).collect();
                    pages.push(Refill { tenant, admin, priority, want, exclude });
                }
            }
        }
        for page in &mut pages {
            let running = self.sessions.values().filter(|s| serves(s, (page.tenant, page.admin)));
            page.exclude.extend(running.flat_map(|s| s.running.iter().copied()));
        }
        pages
    }

    /// The answer to a [`Refill`]: `jobs` to run and `ended` more that the driver ended as they
    /// came in, out of the `taken` rows the page read. Jobs already in memory (accepted by this
    /// process, or running) are skipped. A short page means the store has no more than this:
    /// the count becomes what was counted since the page was asked for.
    pub fn refilled(&mut self, page: &Refill, jobs: Vec<Job>, ended: usize, taken: usize) {
        let slot = page.priority.slot();
        let running: HashSet<Uuid> = self
            .sessions
            .values()
            .filter(|s| serves(s, (page.tenant, page.admin)))
            .flat_map(|s| s.running.iter().copied())
            .collect();
        let Some(lane) = self.lanes.get_mut(&(page.tenant, page.admin)) else { return };
        let before = lane.slot_len(slot);
        lane.paging[slot] = false;
        let mut fresh = 0;
        for job in jobs {
            let known = running.contains(&job.id) || lane.queues[slot].iter().any(|j| j.id == job.id);
            if !known {
                lane.queues[slot].push_back(job);
                fresh += 1;
            }
        }
        lane.stored[slot] = lane.stored[slot].saturating_sub(fresh + ended);
        if taken < page.want {
            let since = (lane.spilled[slot] - lane.spilled_at_page[slot]) as usize;
            lane.stored[slot] = lane.stored[slot].min(since);
        }
        let after = lane.slot_len(slot);
        self.queued[slot] = self.queued[slot] + after - before;
    }

    /// A page could not be read: it is asked for again at a later plan.
    pub fn refill_failed(&mut self, page: &Refill) {
        if let Some(lane) = self.lanes.get_mut(&(page.tenant, page.admin)) {
            lane.paging[page.priority.slot()] = false;
        }
    }

    /// Puts a job whose attempt did not start (or may be retried) back at the front of its lane.
    pub fn requeue(&mut self, mut job: Job, not_before: Option<Instant>) {
        job.not_before = not_before;
        self.queued[job.priority.slot()] += 1;
        let lane = self.lanes.entry((job.tenant, job.admin)).or_default();
        lane.queues[job.priority.slot()].push_front(job);
    }

    pub fn open_succeeded(&mut self, id: SessionId, now: Instant) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        Estimates::observe(&mut self.estimates.open, now.saturating_duration_since(s.opened_at));
        s.state = SessionState::Idle;
        // The session's life starts when the server created it.
        s.opened_at = now;
        s.last_used = now;
        self.admin_failures[s.admin] = 0;
        self.admin_retry_at[s.admin] = None;
        let tenant = s.tenant;
        for (_, lane) in self.lanes.range_mut((tenant, None)..=(tenant, Some(usize::MAX))) {
            lane.last_error = None;
        }
    }

    /// An open failed: release the slot and apply the failure class's policy. `retry_after` is
    /// the service's own "come back in N seconds" (503 Retry-After, budget throttling): the
    /// admin is not used again before it.
    pub fn open_failed(
        &mut self,
        id: SessionId,
        class: FaultClass,
        message: &str,
        retry_after: Option<Duration>,
        now: Instant,
    ) {
        let Some(s) = self.remove_session(id) else { return };
        let (a, t) = (s.admin, s.tenant);
        let block = |cooldown: Duration| Block { until: now + cooldown, class, message: message.to_string() };
        let auth_block = block(self.tuning.auth_failure_cooldown);
        match after_open_failure(class) {
            // Believe the service and lower the cap to what we hold now, for a cool-down.
            PoolEffect::LowerAdminCap => {
                self.admin_lowered[a] = Some(Lowered {
                    cap: self.admin_open[a] + self.admin_peers[a],
                    until: now + self.tuning.quota_cooldown,
                });
            }
            PoolEffect::LowerTenantCap => {
                self.tenant_lowered[t] = Some(Lowered {
                    cap: self.tenant_open[t] + self.tenant_peers[t],
                    until: now + self.tuning.quota_cooldown,
                });
            }
            PoolEffect::BlockTenant => self.tenant_blocked[t] = Some(auth_block),
            PoolEffect::BlockAdmin => self.admin_blocked[a] = Some(auth_block),
            PoolEffect::BlockPair => {
                self.pair_blocked.insert((a, t), auth_block);
            }
            PoolEffect::BackOff => {
                self.admin_failures[a] += 1;
                let asked = retry_after.unwrap_or_default().min(MAX_RETRY_AFTER);
                let wait = self.backoff(self.admin_failures[a]).max(asked);
                self.admin_retry_at[a] = Some(now + wait);
            }
            PoolEffect::EaseOffAdmin => self.ease_off(a, retry_after, now),
        }
        for (_, lane) in self.lanes.range_mut((t, None)..=(t, Some(usize::MAX))) {
            lane.last_error = Some((class, message.to_string()));
        }
    }

    /// A command on `id` failed with `class` (call before [`Scheduler::command_finished`]):
    /// applies what the class means for the pool, if anything (see `failure::after_command_failure`).
    pub fn command_failed(&mut self, id: SessionId, class: FaultClass, retry_after: Option<Duration>, now: Instant) {
        let Some(a) = self.sessions.get(&id).map(|s| s.admin) else { return };
        match after_command_failure(class) {
            Some(PoolEffect::EaseOffAdmin) => self.ease_off(a, retry_after, now),
            Some(other) => tracing::debug!(?other, %class, "no command-level handling for this pool effect"),
            None => {}
        }
    }

    /// Lowers the admin's calls in flight to one less than its live sessions (never below one)
    /// for the quota cool-down, or as long as the service asked if that is longer. Idle sessions
    /// over the lowered cap close at the next plan ([`CloseReason::EasedOff`]).
    fn ease_off(&mut self, a: AdminIdx, retry_after: Option<Duration>, now: Instant) {
        let live = self.live_sessions(a);
        let cap = live.saturating_sub(1).max(1).min(self.eff_admin_cap(a, now)) + self.admin_peers[a];
        let asked = retry_after.unwrap_or_default().min(MAX_RETRY_AFTER);
        let until = now + self.tuning.quota_cooldown.max(asked);
        let until = self.admin_lowered[a].filter(|l| l.until > now).map_or(until, |l| l.until.max(until));
        self.admin_lowered[a] = Some(Lowered { cap, until });
    }

    /// The admin's sessions that are not closing.
    fn live_sessions(&self, a: AdminIdx) -> u32 {
        self.sessions.values().filter(|s| s.admin == a && s.state != SessionState::Closing).count() as u32
    }

    /// A command finished (whatever its outcome) on `id`.
    pub fn command_finished(&mut self, id: SessionId, after: AfterCommand, ran_for: Option<Duration>, now: Instant) {
        if let Some(d) = ran_for {
            Estimates::observe(&mut self.estimates.command, d);
        }
        match after {
            AfterCommand::Keep => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.running.clear();
                    s.state = SessionState::Idle;
                    s.commands += 1;
                    s.last_used = now;
                }
            }
            AfterCommand::Gone => {
                self.remove_session(id);
            }
            AfterCommand::Close => {
                // The driver closes it itself; only the bookkeeping is done here.
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.running.clear();
                    self.begin_close(id, CloseReason::Broken, now);
                }
            }
        }
    }

    /// The session's close finished (or was abandoned): its slot is free again.
    pub fn closed(&mut self, id: SessionId, now: Instant) {
        if let Some(since) = self.remove_session(id).and_then(|s| s.closing_since) {
            Estimates::observe(&mut self.estimates.close, now.saturating_duration_since(since));
        }
    }

    /// Removes queued jobs of a batch; returns their ids (running ones finish on their own).
    pub fn cancel_batch(&mut self, batch: Uuid) -> Vec<Uuid> {
        self.remove_jobs(|j| j.batch == Some(batch))
    }

    /// The jobs handed to sessions and not finished yet.
    pub fn started_jobs(&self) -> Vec<Uuid> {
        self.sessions.values().flat_map(|s| s.running.iter().copied()).collect()
    }

    pub fn cancel_job(&mut self, id: Uuid) -> bool {
        !self.remove_jobs(|j| j.id == id).is_empty()
    }

    /// Stops starting commands and opening sessions; idle sessions close at the next plan.
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
    }

    // ----- several nodes ------------------------------------------------------------------

    /// What the other nodes hold now, per admin and per tenant.
    pub fn set_peers(&mut self, admins: Vec<u32>, tenants: Vec<u32>) {
        if admins.len() == self.admin_peers.len() && tenants.len() == self.tenant_peers.len() {
            (self.admin_peers, self.tenant_peers) = (admins, tenants);
        }
    }

    /// The admins another node waits for a slot of.
    pub fn set_demand(&mut self, demand: Vec<bool>) {
        if demand.len() == self.admin_demand.len() {
            self.admin_demand = demand;
        }
    }

    /// A quota cool-down another node learned: `cap` sessions over all nodes until `until`
    /// (a lower or longer one in force at `now` stays; one that ended, not yet cleared by a
    /// plan, lowers nothing).
    pub fn shared_cooldown(
        &mut self,
        admin: Option<AdminIdx>,
        tenant: Option<TenantIdx>,
        cap: u32,
        until: Instant,
        now: Instant,
    ) {
        let slot = match (admin, tenant) {
            (Some(a), _) => &mut self.admin_lowered[a],
            (None, Some(t)) => &mut self.tenant_lowered[t],
            (None, None) => return,
        };
        *slot = Some(match slot.filter(|l| l.until > now) {
            Some(l) if l.until > until && l.cap <= cap => l,
            Some(l) => Lowered { cap: cap.min(l.cap), until: until.max(l.until) },
            None => Lowered { cap, until },
        });
    }

    /// The store refused the slot an open needed: the other nodes hold the rest of the cap.
    /// The session is dropped without a failure, and the effective caps leave the others
    /// their share until the next look at the cluster.
    pub fn open_refused(&mut self, id: SessionId, others_admin: u32, others_tenant: u32) {
        let Some(s) = self.remove_session(id) else { return };
        self.admin_peers[s.admin] = self.admin_peers[s.admin].max(others_admin);
        self.tenant_peers[s.tenant] = self.tenant_peers[s.tenant].max(others_tenant);
    }

    /// The admins this node waits for because other nodes hold their slots: a lane with ready
    /// work and no session has no usable admin with room here, and these are the ones the other
    /// nodes hold (this node holding less than their cap). The
    /// node says so (demand) so the others give idle sessions back and yield busy ones; a node
    /// that sees an admin full never asks the store for a slot, so a refusal alone would not.
    pub fn starved_admins(&self, now: Instant) -> Vec<AdminIdx> {
        let mut starved = vec![false; self.admin_peers.len()];
        for (&(t, pin), lane) in &self.lanes {
            if !lane.has_ready(now) || self.serving((t, pin)) > 0 {
                continue;
            }
            let usable: Vec<AdminIdx> =
                self.candidates(t, pin).into_iter().filter(|&a| self.admin_refusal(a, t).is_none()).collect();
            if usable.iter().any(|&a| self.admin_open[a] < self.eff_admin_cap(a, now)) {
                continue; // the lane can have a session here (or waits for its tenant, not an admin)
            }
            for a in usable {
                if self.admin_peers[a] > 0 && self.admin_open[a] < self.topo.admin_caps[a] {
                    starved[a] = true;
                }
            }
        }
        (0..starved.len()).filter(|&a| starved[a]).collect()
    }

    /// Fenced, this node starts nothing and closes its idle sessions (the driver closes the
    /// busy ones); unfenced, it goes on.
    pub fn set_fenced(&mut self, fenced: bool) {
        self.fenced = fenced;
    }

    /// What the store holds for this node to take, per lane: each lane's count of work waiting
    /// only in the store becomes the census less what is in memory (lanes being paged keep
    /// theirs; the page's answer corrects them).
    pub fn census(&mut self, counts: &HashMap<(LaneKey, Priority), usize>) {
        if self.window.is_none() {
            return;
        }
        for &(key, _) in counts.keys() {
            self.lanes.entry(key).or_default();
        }
        for (key, lane) in self.lanes.iter_mut() {
            for priority in [Priority::Interactive, Priority::Batch] {
                let slot = priority.slot();
                if lane.paging[slot] {
                    continue;
                }
                let n = counts.get(&(*key, priority)).copied().unwrap_or(0);
                let stored = n.saturating_sub(lane.queues[slot].len());
                self.queued[slot] = self.queued[slot] + stored - lane.stored[slot];
                lane.stored[slot] = stored;
            }
        }
    }

    // ----- planning -----------------------------------------------------------------------

    /// Decides what to do now. Call after every batch of events and on a periodic tick.
    pub fn plan(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        self.expire_cooldowns(now);
        if self.next_sweep.is_none_or(|t| t <= now) {
            self.fail_expired(now, &mut actions);
            self.next_sweep = Some(now + Duration::from_millis(250));
        }
        self.fail_unservable(&mut actions);
        self.retire_idle(now, &mut actions);
        if self.shutting_down || self.fenced {
            return actions;
        }
        self.give_back_idle(now, &mut actions);
        self.assign_idle(now, &mut actions);
        self.open_for_lanes(now, &mut actions);
        actions
    }

    /// Lanes no admin can serve for a known reason (tenant disabled, every admin refused).
    fn fail_unservable(&mut self, actions: &mut Vec<Action>) {
        let keys: Vec<LaneKey> = self.lanes.iter().filter(|(_, l)| l.len() > 0).map(|(k, _)| *k).collect();
        for (t, pin) in keys {
            let candidates = self.candidates(t, pin);
            let failure = if let Some(b) = &self.tenant_blocked[t] {
                Failure { code: b.class.code(), message: b.message.clone(), class: Some(b.class) }
            } else if candidates.is_empty() {
                Failure {
                    code: "admin_not_allowed",
                    message: "no configured admin may manage this tenant".into(),
                    class: None,
                }
            } else if candidates.iter().all(|&a| self.admin_refusal(a, t).is_some()) {
                let b = candidates
                    .iter()
                    .filter_map(|&a| self.admin_refusal(a, t))
                    .min_by_key(|b| b.until)
                    .expect("refused");
                Failure { code: b.class.code(), message: b.message.clone(), class: Some(b.class) }
            } else {
                continue;
            };
            self.drain_lane((t, pin), &failure, actions);
        }
    }

    fn fail_expired(&mut self, now: Instant, actions: &mut Vec<Action>) {
        for lane in self.lanes.values_mut() {
            let (code, message, class) = match &lane.last_error {
                Some((class, msg)) => (class.code(), format!("gave up waiting for a session: {msg}"), Some(*class)),
                None => ("timeout", "the invocation's timeout passed before a session was free".to_string(), None),
            };
            for (slot, q) in lane.queues.iter_mut().enumerate() {
                let before = q.len();
                let mut kept = VecDeque::with_capacity(before);
                for job in q.drain(..) {
                    if job.deadline <= now {
                        actions.push(Action::Fail { job, failure: Failure { code, message: message.clone(), class } });
                    } else {
                        kept.push_back(job);
                    }
                }
                self.queued[slot] -= before - kept.len();
                *q = kept;
            }
        }
    }

    fn retire_idle(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let mut retiring = Vec::new();
        for (&id, s) in &self.sessions {
            if s.state != SessionState::Idle {
                continue;
            }
            let rules = &self.topo.rules[s.tenant];
            let reason = if self.shutting_down {
                Some(CloseReason::Shutdown)
            } else if self.fenced {
                Some(CloseReason::Fenced)
            } else if now.saturating_duration_since(s.opened_at) >= s.max_age {
                Some(CloseReason::MaxAge)
            } else if s.commands >= rules.max_commands {
                Some(CloseReason::MaxCommands)
            } else if now.saturating_duration_since(s.last_used) >= rules.idle_timeout {
                Some(CloseReason::IdleTimeout)
            } else {
                None
            };
            retiring.extend(reason.map(|r| (id, r)));
        }
        for (id, reason) in retiring {
            actions.push(self.begin_close(id, reason, now));
        }
        self.close_over_lowered_caps(now, actions);
    }

    /// An admin eased off after a push-back holds more live sessions than its lowered cap:
    /// idle ones close (least recently used first) until it does not, so fewer calls are in
    /// flight. (After a quota fault the cap is what the admin holds: nothing closes.)
    fn close_over_lowered_caps(&mut self, now: Instant, actions: &mut Vec<Action>) {
        for a in 0..self.admin_lowered.len() {
            if self.admin_lowered[a].is_none_or(|l| l.until <= now) {
                continue;
            }
            let mut excess = self.live_sessions(a).saturating_sub(self.eff_admin_cap(a, now));
            if excess == 0 {
                continue;
            }
            let mut idle: Vec<(Instant, SessionId)> = self
                .sessions
                .iter()
                .filter(|(_, s)| s.admin == a && s.state == SessionState::Idle)
                .map(|(&id, s)| (s.last_used, id))
                .collect();
            idle.sort();
            for (_, id) in idle {
                if excess == 0 {
                    break;
                }
                actions.push(self.begin_close(id, CloseReason::EasedOff, now));
                excess -= 1;
            }
        }
    }

    /// Gives shells back: an admin with no queued work keeps its `warm_sessions_per_admin` most
    /// recently used idle sessions; the others close once idle for `idle_linger`.
    fn give_back_idle(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let linger = self.tuning.idle_linger;
        let is_idle = |s: &Session| s.state == SessionState::Idle;
        // An admin another node waits for keeps nothing warm and lingers not at all here.
        let linger_of = |s: &Session| if self.admin_demand[s.admin] { Duration::ZERO } else { linger };
        if !self.sessions.values().any(|s| is_idle(s) && now.saturating_duration_since(s.last_used) >= linger_of(s)) {
            return;
        }
        let has_work = self.admins_with_queued_work();
        let mut idle: Vec<(AdminIdx, Instant, SessionId)> = self
            .sessions
            .iter()
            .filter(|(_, s)| is_idle(s) && !has_work[s.admin])
            .map(|(&id, s)| (s.admin, s.last_used, id))
            .collect();
        // Per admin, most recently used first: the first ones are the warm reserve.
        idle.sort_by_key(|&(a, used, id)| (a, std::cmp::Reverse(used), id));
        let mut kept = vec![0u32; has_work.len()];
        for (a, used, id) in idle {
            let (warm, linger) =
                if self.admin_demand[a] { (0, Duration::ZERO) } else { (self.tuning.warm_sessions_per_admin, linger) };
            if kept[a] < warm {
                kept[a] += 1;
            } else if now.saturating_duration_since(used) >= linger {
                actions.push(self.begin_close(id, CloseReason::GivenBack, now));
            }
        }
    }

    /// For each admin: whether some queued invocation (ready or not) may run on its sessions.
    fn admins_with_queued_work(&self) -> Vec<bool> {
        let mut has_work = vec![false; self.topo.admin_caps.len()];
        for (&(t, pin), lane) in &self.lanes {
            if lane.len() > 0 {
                for a in self.candidates(t, pin) {
                    has_work[a] = true;
                }
            }
        }
        has_work
    }

    /// Gives each idle session the next job of its tenant (affinity), unless a waiting tenant
    /// is owed the session's slot.
    fn assign_idle(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let idle: Vec<SessionId> =
            self.sessions.iter().filter(|(_, s)| s.state == SessionState::Idle).map(|(&id, _)| id).collect();
        for id in idle {
            let s = &self.sessions[&id];
            let (a, t) = (s.admin, s.tenant);
            if let Some(lane_key) = self.owed_lane(id, now) {
                actions.push(self.make_room(id, lane_key, CloseReason::Preempted, now));
                continue;
            }
            if self.owed_to_peer(id, now) {
                actions.push(self.begin_close(id, CloseReason::Yielded, now));
                // The slot is the waiting node's: counted as its until the next look at the
                // cluster says who holds it, so that this node does not open it again at once.
                self.admin_peers[a] += 1;
                self.tenant_peers[t] += 1;
                continue;
            }
            // Prefer interactive work, then the older head, across the unpinned and pinned lane.
            let pick = [(t, None), (t, Some(a))]
                .into_iter()
                .filter_map(|k| self.lanes.get(&k).and_then(|l| l.head(now)).map(|j| (k, j.priority, j.enqueued_at)))
                .min_by_key(|&(_, p, at)| (p.slot(), at))
                .map(|(k, _, _)| k);
            let Some(key) = pick else { continue };
            let job = self.lanes.get_mut(&key).and_then(|l| l.pop_ready(now)).expect("head exists");
            self.queued[job.priority.slot()] -= 1;
            let more = self.more_bulk_work(key, &job, now);
            let s = self.sessions.get_mut(&id).expect("idle session exists");
            s.state = SessionState::Busy;
            s.last_used = now;
            s.running = std::iter::once(job.id).chain(more.iter().map(|j| j.id)).collect();
            actions.push(Action::Run { session: id, job, more });
        }
    }

    /// Bulk work travels together where the tenant's transport allows it: after a batch-priority
    /// `job`, up to `rules.batch - 1` further ready batch-priority jobs of the same lane (never
    /// interactive work, which must not wait for a bulk call).
    fn more_bulk_work(&mut self, key: LaneKey, job: &Job, now: Instant) -> Vec<Job> {
        let room = self.topo.rules[key.0].batch.saturating_sub(1);
        let mut more = Vec::new();
        if job.priority != Priority::Batch || room == 0 {
            return more;
        }
        let Some(lane) = self.lanes.get_mut(&key) else { return more };
        while more.len() < room && !lane.has_interactive(now) {
            match lane.queues[Priority::Batch.slot()].front() {
                Some(j) if j.not_before.is_none_or(|t| t <= now) => {
                    more.extend(lane.queues[Priority::Batch.slot()].pop_front());
                }
                _ => break,
            }
        }
        self.queued[Priority::Batch.slot()] -= more.len();
        more
    }

    /// Whether this idle session's slot should go to another node that waits for its admin:
    /// it has had its fairness quantum, and this node keeps another session of the admin (so
    /// every node that has work goes on, and the slots are shared out across the nodes).
    fn owed_to_peer(&self, id: SessionId, now: Instant) -> bool {
        let s = &self.sessions[&id];
        self.admin_demand[s.admin]
            && now.saturating_duration_since(s.opened_at) >= self.tuning.fairness_quantum
            && self.live_sessions(s.admin) > 1
    }

    /// A blocked lane of another tenant that this idle session should make room for.
    fn owed_lane(&self, id: SessionId, now: Instant) -> Option<LaneKey> {
        let s = &self.sessions[&id];
        let own_interactive = self.tenant_lanes(s.tenant).any(|(_, l)| l.has_interactive(now));
        let had_turn = now.saturating_duration_since(s.opened_at) >= self.tuning.fairness_quantum;
        self.lanes
            .iter()
            .filter(|(&(t, pin), l)| {
                t != s.tenant
                    && l.room_from.is_empty()
                    && l.blocked_since.is_some()
                    && pin.is_none_or(|p| p == s.admin)
                    && self.candidates(t, pin).contains(&s.admin)
                    && self.admin_refusal(s.admin, t).is_none()
                    && self.tenant_open[t] < self.eff_tenant_cap(t, now)
            })
            .find(|(_, l)| {
                (l.has_interactive(now) && !own_interactive)
                    || (had_turn
                        && l.blocked_since
                            .is_some_and(|b| now.saturating_duration_since(b) >= self.tuning.fairness_quantum))
            })
            .map(|(k, _)| *k)
    }

    /// Opens sessions where lanes need them. First pass: a first session for every lane that
    /// has none (on a free slot, or by evicting an idle session of a tenant without work).
    /// Second pass, only when no lane is left waiting for its first session: more sessions for
    /// lanes whose backlog would drain sooner that way, on free slots and then on the slots of
    /// idle sessions of finished tenants (the tail of a bulk job).
    fn open_for_lanes(&mut self, now: Instant, actions: &mut Vec<Action>) {
        // A claim on a slot lapses once the session closed for it is gone.
        let sessions = &self.sessions;
        for lane in self.lanes.values_mut() {
            let before = lane.room_from.len();
            lane.room_from.retain(|id| sessions.contains_key(id));
            lane.claim |= lane.room_from.len() < before;
        }
        let mut order: Vec<(bool, bool, bool, Instant, LaneKey)> = self
            .lanes
            .iter()
            .filter(|(_, l)| l.has_ready(now))
            .map(|(&k, l)| (!l.has_interactive(now), self.serving(k) > 0, !l.claim, l.oldest().unwrap_or(now), k))
            .collect();
        order.sort();
        let order: Vec<LaneKey> = order.into_iter().map(|o| o.4).collect();

        let mut waiting = 0;
        for &key in &order {
            if self.serving(key) > 0 {
                continue;
            }
            if let Some(a) = self.pick_admin(key, now) {
                actions.push(self.start_open(a, key.0, now));
                self.lanes.get_mut(&key).expect("lane exists").blocked_since = None;
                continue;
            }
            if self.lanes[&key].room_from.is_empty() {
                if let Some(victim) = self.evictable_for(key, now) {
                    actions.push(self.make_room(victim, key, CloseReason::Evicted, now));
                    continue;
                }
                waiting += 1;
            }
            self.lanes.get_mut(&key).expect("lane exists").blocked_since.get_or_insert(now);
        }

        for &key in &order {
            let has_session = self.serving(key) > 0;
            let lane = self.lanes.get_mut(&key).expect("lane exists");
            lane.claim = false;
            if has_session {
                lane.blocked_since = None;
            } else if lane.room_from.is_empty() {
                continue;
            }
            if waiting > 0 {
                continue;
            }
            while self.another_session_pays(key, false, now) {
                let Some(a) = self.pick_admin(key, now) else { break };
                actions.push(self.start_open(a, key.0, now));
            }
            while self.another_session_pays(key, true, now) {
                let Some(victim) = self.evictable_for(key, now) else { break };
                actions.push(self.make_room(victim, key, CloseReason::Evicted, now));
            }
        }
    }

    /// Whether one more session for the lane would finish its backlog sooner by a clear margin:
    /// the backlog's drain time on the sessions it has — counting what opening sessions, and
    /// sessions being closed to make room for it, still need before they can run anything —
    /// must exceed 1.5 × what the new session needs first: an open, and when it takes an idle
    /// session's slot (`switching`), that session's close too. With every session ready this is
    /// `backlog × cmd / sessions > 1.5 × open`.
    fn another_session_pays(&self, key: LaneKey, switching: bool, now: Instant) -> bool {
        let Some(lane) = self.lanes.get(&key) else { return false };
        let e = self.estimates;
        let elapsed = |since: Instant| now.saturating_duration_since(since).as_secs_f64();
        let mut ready: Vec<f64> = self
            .sessions
            .values()
            .filter(|s| serves(s, key) && s.state != SessionState::Closing)
            .map(|s| if s.state == SessionState::Opening { (e.open - elapsed(s.opened_at)).max(0.0) } else { 0.0 })
            .collect();
        ready.extend(lane.room_from.iter().filter_map(|id| self.sessions.get(id)).map(|s| {
            let closing = s.closing_since.map_or(e.close, |since| (e.close - elapsed(since)).max(0.0));
            closing + e.open
        }));
        let backlog = lane.len();
        if ready.len() >= backlog {
            return false;
        }
        let cost = e.open + if switching { e.close } else { 0.0 };
        drain_time(&mut ready, backlog as f64 * e.command) > 1.5 * cost
    }

    /// The least-loaded usable admin with room for one more session of this tenant.
    fn pick_admin(&self, (t, pin): LaneKey, now: Instant) -> Option<AdminIdx> {
        if self.tenant_open[t] >= self.eff_tenant_cap(t, now) {
            return None;
        }
        self.candidates(t, pin)
            .into_iter()
            .filter(|&a| self.admin_refusal(a, t).is_none())
            .filter(|&a| self.admin_retry_at[a].is_none_or(|r| r <= now))
            .filter(|&a| self.admin_open[a] < self.eff_admin_cap(a, now))
            .min_by_key(|&a| (self.admin_open[a] * 1000 / self.topo.admin_caps[a].max(1), a))
    }

    /// An idle session (least recently used) whose tenant has no ready work and whose slot,
    /// once closed, `key`'s tenant could use: its admin may serve the lane, is not backing off
    /// and is not over its (possibly lowered) cap, and the tenant stays within its cap counting
    /// the slots already being freed for it.
    fn evictable_for(&self, (t, pin): LaneKey, now: Instant) -> Option<SessionId> {
        let incoming: usize = self.tenant_lanes(t).map(|(_, l)| l.room_from.len()).sum();
        if self.tenant_open[t] as usize + incoming >= self.eff_tenant_cap(t, now) as usize {
            return None;
        }
        let candidates = self.candidates(t, pin);
        self.sessions
            .iter()
            .filter(|(_, s)| s.state == SessionState::Idle && s.tenant != t)
            .filter(|(_, s)| candidates.contains(&s.admin) && self.admin_refusal(s.admin, t).is_none())
            .filter(|(_, s)| self.admin_open[s.admin] <= self.eff_admin_cap(s.admin, now))
            .filter(|(_, s)| self.admin_retry_at[s.admin].is_none_or(|r| r <= now))
            .filter(|(_, s)| !self.tenant_lanes(s.tenant).any(|(_, l)| l.has_ready(now)))
            .min_by_key(|(_, s)| s.last_used)
            .map(|(&id, _)| id)
    }

    /// Closes an idle session so that `key`'s lane gets its slot.
    fn make_room(&mut self, victim: SessionId, key: LaneKey, reason: CloseReason, now: Instant) -> Action {
        self.lanes.get_mut(&key).expect("lane exists").room_from.push(victim);
        self.begin_close(victim, reason, now)
    }

    /// Marks a session as closing; its slot stays taken until [`Scheduler::closed`].
    fn begin_close(&mut self, id: SessionId, reason: CloseReason, now: Instant) -> Action {
        let s = self.sessions.get_mut(&id).expect("session exists");
        s.state = SessionState::Closing;
        s.close_reason = Some(reason);
        s.closing_since = Some(now);
        Action::Close { session: id, reason }
    }

    fn start_open(&mut self, admin: AdminIdx, tenant: TenantIdx, now: Instant) -> Action {
        let id = self.next_session;
        self.next_session += 1;
        let rules = &self.topo.rules[tenant];
        let jitter = rand::random::<f64>() * rules.max_age_jitter_percent as f64 / 100.0;
        let max_age = rules.max_age.mul_f64(1.0 - jitter);
        self.sessions.insert(
            id,
            Session {
                admin,
                tenant,
                state: SessionState::Opening,
                opened_at: now,
                max_age,
                commands: 0,
                last_used: now,
                close_reason: None,
                closing_since: None,
                running: Vec::new(),
            },
        );
        self.admin_open[admin] += 1;
        self.tenant_open[tenant] += 1;
        debug_assert!(self.admin_open[admin] <= self.topo.admin_caps[admin]);
        debug_assert!(self.tenant_open[tenant] <= self.topo.tenant_caps[tenant]);
        Action::Open { session: id, admin, tenant }
    }

    // ----- helpers ------------------------------------------------------------------------

    fn remove_session(&mut self, id: SessionId) -> Option<Session> {
        let s = self.sessions.remove(&id)?;
        self.admin_open[s.admin] -= 1;
        self.tenant_open[s.tenant] -= 1;
        Some(s)
    }

    fn remove_jobs(&mut self, matches: impl Fn(&Job) -> bool) -> Vec<Uuid> {
        let mut removed = Vec::new();
        for lane in self.lanes.values_mut() {
            for (slot, q) in lane.queues.iter_mut().enumerate() {
                let before = q.len();
                q.retain(|j| {
                    let hit = matches(j);
                    if hit {
                        removed.push(j.id);
                    }
                    !hit
                });
                self.queued[slot] -= before - q.len();
            }
        }
        removed
    }

    fn drain_lane(&mut self, key: LaneKey, failure: &Failure, actions: &mut Vec<Action>) {
        if let Some(lane) = self.lanes.get_mut(&key) {
            for (slot, q) in lane.queues.iter_mut().enumerate() {
                self.queued[slot] -= q.len();
                actions.extend(q.drain(..).map(|job| Action::Fail { job, failure: failure.clone() }));
            }
        }
    }

    fn candidates(&self, t: TenantIdx, pin: Option<AdminIdx>) -> Vec<AdminIdx> {
        let allowed = &self.topo.admins_for_tenant[t];
        match pin {
            Some(a) => allowed.iter().copied().filter(|&x| x == a).collect(),
            None => allowed.clone(),
        }
    }

    /// Why this admin must not be used for this tenant right now (logon/MFA/permission).
    fn admin_refusal(&self, a: AdminIdx, t: TenantIdx) -> Option<&Block> {
        self.admin_blocked[a].as_ref().or_else(|| self.pair_blocked.get(&(a, t)))
    }

    fn serving(&self, key: LaneKey) -> usize {
        self.sessions.values().filter(|s| serves(s, key) && s.state != SessionState::Closing).count()
    }

    fn tenant_lanes(&self, t: TenantIdx) -> impl Iterator<Item = (&LaneKey, &Lane)> {
        self.lanes.range((t, None)..=(t, Some(usize::MAX)))
    }

    /// The admin's cap (lowered during a cool-down; a lowered cap counts every node's
    /// sessions), less what the other nodes hold.
    fn eff_admin_cap(&self, a: AdminIdx, now: Instant) -> u32 {
        let cap = match self.admin_lowered[a] {
            Some(l) if l.until > now => l.cap.min(self.topo.admin_caps[a]),
            _ => self.topo.admin_caps[a],
        };
        cap.saturating_sub(self.admin_peers[a])
    }

    fn eff_tenant_cap(&self, t: TenantIdx, now: Instant) -> u32 {
        let cap = match self.tenant_lowered[t] {
            Some(l) if l.until > now => l.cap.min(self.topo.tenant_caps[t]),
            _ => self.topo.tenant_caps[t],
        };
        cap.saturating_sub(self.tenant_peers[t])
    }

    fn expire_cooldowns(&mut self, now: Instant) {
        for l in self.admin_lowered.iter_mut().chain(self.tenant_lowered.iter_mut()) {
            if l.is_some_and(|l| l.until <= now) {
                *l = None;
            }
        }
        for b in self.admin_blocked.iter_mut().chain(self.tenant_blocked.iter_mut()) {
            if b.as_ref().is_some_and(|b| b.until <= now) {
                *b = None;
            }
        }
        self.pair_blocked.retain(|_, b| b.until > now);
    }

    fn backoff(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
        self.tuning.backoff_initial.saturating_mul(factor).min(self.tuning.backoff_max)
    }

    // ----- views --------------------------------------------------------------------------

    pub fn queued(&self) -> usize {
        self.queued[0] + self.queued[1]
    }

    pub fn has_live_sessions(&self) -> bool {
        !self.sessions.is_empty()
    }

    pub fn busy_sessions(&self) -> usize {
        self.sessions.values().filter(|s| s.state == SessionState::Busy).count()
    }

    /// The admin and tenant a session belongs to.
    pub fn session_owner(&self, id: SessionId) -> Option<(AdminIdx, TenantIdx)> {
        self.sessions.get(&id).map(|s| (s.admin, s.tenant))
    }

    pub fn session_ids(&self) -> Vec<SessionId> {
        self.sessions.keys().copied().collect()
    }

    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let count = |pred: &dyn Fn(&Session) -> bool| self.sessions.values().filter(|s| pred(s)).count() as u32;
        let admins = (0..self.topo.admin_caps.len())
            .map(|a| CapView {
                cap: self.topo.admin_caps[a],
                effective_cap: self.eff_admin_cap(a, now),
                open: self.admin_open[a],
                busy: count(&|s| s.admin == a && s.state == SessionState::Busy),
                queued: self.lanes.iter().filter(|((_, p), _)| *p == Some(a)).map(|(_, l)| l.len()).sum(),
                blocked: self.admin_blocked[a]
                    .as_ref()
                    .map(|b| b.class.code().to_string())
                    .or_else(|| self.admin_retry_at[a].filter(|r| *r > now).map(|_| "backing_off".to_string())),
            })
            .collect();
        let tenants = (0..self.topo.tenant_caps.len())
            .map(|t| CapView {
                cap: self.topo.tenant_caps[t],
                effective_cap: self.eff_tenant_cap(t, now),
                open: self.tenant_open[t],
                busy: count(&|s| s.tenant == t && s.state == SessionState::Busy),
                queued: self.tenant_lanes(t).map(|(_, l)| l.len()).sum(),
                blocked: self.tenant_blocked[t].as_ref().map(|b| b.class.code().to_string()),
            })
            .collect();
        Snapshot {
            sessions: self
                .sessions
                .iter()
                .map(|(&id, s)| SessionView {
                    id,
                    admin: s.admin,
                    tenant: s.tenant,
                    state: s.state,
                    age: now.saturating_duration_since(s.opened_at),
                    commands: s.commands,
                })
                .collect(),
            admins,
            tenants,
            queued_interactive: self.queued[0],
            queued_batch: self.queued[1],
            oldest_queued: self.lanes.values().filter_map(Lane::oldest).min().map(|t| now.saturating_duration_since(t)),
        }
    }

    /// Checks the invariants; tests call it after every step.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut by_admin = vec![0u32; self.admin_open.len()];
        let mut by_tenant = vec![0u32; self.tenant_open.len()];
        for s in self.sessions.values() {
            by_admin[s.admin] += 1;
            by_tenant[s.tenant] += 1;
        }
        if by_admin != self.admin_open || by_tenant != self.tenant_open {
            return Err("session counts drifted".into());
        }
        for (a, &n) in by_admin.iter().enumerate() {
            if n > self.topo.admin_caps[a] {
                return Err(format!("admin {a} holds {n} sessions over cap {}", self.topo.admin_caps[a]));
            }
        }
        for (t, &n) in by_tenant.iter().enumerate() {
            if n > self.topo.tenant_caps[t] {
                return Err(format!("tenant {t} holds {n} sessions over cap {}", self.topo.tenant_caps[t]));
            }
        }
        let queued: usize = self.lanes.values().map(Lane::len).sum();
        if queued != self.queued() {
            return Err(format!("queued count {} != {}", self.queued(), queued));
        }
        Ok(())
    }
}

/// Whether a session (in any state) belongs to the sessions that serve a lane.
fn serves(s: &Session, (t, pin): LaneKey) -> bool {
    s.tenant == t && pin.is_none_or(|p| p == s.admin)
}

/// When `work` seconds of commands are done, shared out over sessions that can start at
/// `ready` (seconds from now), each taking the next command as it becomes free. Infinite
/// without sessions.
fn drain_time(ready: &mut [f64], work: f64) -> f64 {
    ready.sort_by(f64::total_cmp);
    let mut started = 0.0;
    for k in 0..ready.len() {
        started += ready[k];
        let done = (work + started) / (k + 1) as f64;
        if ready.get(k + 1).is_none_or(|&next| done <= next) {
            return done;
        }
    }
    f64::INFINITY
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
