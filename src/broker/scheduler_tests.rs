//! Scheduler tests on virtual time: a discrete-event loop plays the remote service (opens,
//! commands and closes take fixed times; faults are injected by closures) and checks the cap
//! invariants after every step.

use super::*;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

const MS: Duration = Duration::from_millis(1);

#[derive(Debug)]
enum Ev {
    Opened(SessionId),
    OpenFailed(SessionId, FaultClass),
    CmdDone(SessionId, Job),
    Closed(SessionId),
}

type OpenFault = Box<dyn FnMut(AdminIdx, TenantIdx, &Harness0) -> Option<FaultClass>>;

/// The parts of the harness a fault closure may look at.
struct Harness0 {
    now: Instant,
    start: Instant,
    remote_by_admin: Vec<u32>,
}

struct Harness {
    sched: Scheduler,
    h: Harness0,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    pending: HashMap<u64, Ev>,
    seq: u64,
    open_cost: Duration,
    cmd_cost: Duration,
    close_cost: Duration,
    open_fault: OpenFault,
    /// The "come back in" hint every injected open failure carries.
    open_retry_after: Option<Duration>,
    /// When each open started, and for which admin.
    open_log: Vec<(Instant, AdminIdx)>,
    sessions: HashMap<SessionId, (AdminIdx, TenantIdx)>,
    executed: HashMap<Uuid, u32>,
    started_at: HashMap<Uuid, Instant>,
    finished_at: HashMap<Uuid, Instant>,
    failed: HashMap<Uuid, Failure>,
    opens: u32,
    closes: Vec<CloseReason>,
    /// With a window: the queued jobs the (fake) store holds, in its order, that answer pages.
    store: Option<Vec<Job>>,
    pages: u32,
    /// Commands started, and the most sessions each admin and tenant held at once.
    runs: u32,
    most_admin: Vec<u32>,
    most_tenant: Vec<u32>,
    /// Checks that every session yielded to another node had its fairness quantum.
    check_yields: bool,
}

fn rules(max_age: Duration, max_commands: u32) -> SessionRules {
    SessionRules { max_age, max_age_jitter_percent: 0, max_commands, idle_timeout: Duration::from_secs(300), batch: 1 }
}

fn topology(
    admin_caps: &[u32],
    tenants: usize,
    tenant_cap: u32,
    allowed: impl Fn(AdminIdx, TenantIdx) -> bool,
) -> Topology {
    Topology {
        admin_caps: admin_caps.to_vec(),
        tenant_caps: vec![tenant_cap; tenants],
        admins_for_tenant: (0..tenants).map(|t| (0..admin_caps.len()).filter(|&a| allowed(a, t)).collect()).collect(),
        rules: vec![rules(Duration::from_secs(3300), 900); tenants],
    }
}

fn tuning() -> Tuning {
    Tuning {
        quota_cooldown: Duration::from_secs(5),
        auth_failure_cooldown: Duration::from_secs(300),
        fairness_quantum: Duration::from_secs(2),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(2),
        idle_linger: Duration::from_secs(10),
        warm_sessions_per_admin: 1,
    }
}

impl Harness {
    fn new(topo: Topology) -> Self {
        let start = Instant::now();
        let (admins, tenants) = (topo.admin_caps.len(), topo.tenant_caps.len());
        Harness {
            sched: Scheduler::new(topo, tuning()),
            h: Harness0 { now: start, start, remote_by_admin: vec![0; admins] },
            queue: BinaryHeap::new(),
            pending: HashMap::new(),
            seq: 0,
            open_cost: 200 * MS,
            cmd_cost: 20 * MS,
            close_cost: 10 * MS,
            open_fault: Box::new(|_, _, _| None),
            open_retry_after: None,
            open_log: Vec::new(),
            sessions: HashMap::new(),
            executed: HashMap::new(),
            started_at: HashMap::new(),
            finished_at: HashMap::new(),
            failed: HashMap::new(),
            opens: 0,
            closes: Vec::new(),
            store: None,
            pages: 0,
            runs: 0,
            most_admin: vec![0; admins],
            most_tenant: vec![0; tenants],
            check_yields: false,
        }
    }

    /// A scheduler that keeps `window` jobs per lane in memory, the rest in a fake store that
    /// answers its pages the way `claim_page` does (oldest first, but the excluded ids).
    fn paged(topo: Topology, window: usize) -> Self {
        let mut h = Harness::new(topo);
        h.sched = Scheduler::new(h.sched.topo.clone(), tuning()).with_window(window);
        h.store = Some(Vec::new());
        h
    }

    /// Answers the pages the scheduler asks for; returns how many.
    fn answer_pages(&mut self) -> usize {
        let Some(store) = &self.store else { return 0 };
        let pages = self.sched.refills();
        for page in &pages {
            let rows: Vec<Job> = store
                .iter()
                .filter(|j| (j.tenant, j.admin, j.priority) == (page.tenant, page.admin, page.priority))
                .filter(|j| !page.exclude.contains(&j.id))
                .take(page.want)
                .cloned()
                .collect();
            let taken = rows.len();
            self.sched.refilled(page, rows, 0, taken);
            self.pages += 1;
        }
        self.sched.check_invariants().unwrap();
        pages.len()
    }

    fn job(&self, tenant: TenantIdx, priority: Priority) -> Job {
        Job {
            id: Uuid::new_v4(),
            tenant,
            admin: None,
            priority,
            spec: Arc::new(JobSpec { cmdlet: "Get-Mailbox".into(), parameters: vec![] }),
            idempotent: true,
            batch: None,
            enqueued_at: self.h.now,
            deadline: self.h.now + Duration::from_secs(3600),
            attempts: 0,
            not_before: None,
        }
    }

    fn submit(&mut self, tenant: TenantIdx, priority: Priority) -> Uuid {
        let job = self.job(tenant, priority);
        let id = job.id;
        match &mut self.store {
            Some(store) => {
                store.push(job.clone());
                self.sched.submit_stored(job);
            }
            None => self.sched.submit(job),
        }
        id
    }

    fn after(&mut self, d: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((self.h.now + d, self.seq)));
        self.pending.insert(self.seq, ev);
    }

    fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Open { session, admin, tenant } => {
                    self.opens += 1;
                    self.open_log.push((self.h.now, admin));
                    self.sessions.insert(session, (admin, tenant));
                    match (self.open_fault)(admin, tenant, &self.h) {
                        Some(class) => self.after(self.open_cost, Ev::OpenFailed(session, class)),
                        None => {
                            self.h.remote_by_admin[admin] += 1;
                            self.after(self.open_cost, Ev::Opened(session))
                        }
                    }
                }
                Action::Run { session, job, more } => {
                    assert!(more.is_empty(), "no tenant here sends work together");
                    if let Some(store) = &mut self.store {
                        // Running, it is no longer queued in the store.
                        store.retain(|j| j.id != job.id);
                    }
                    self.runs += 1;
                    self.started_at.entry(job.id).or_insert(self.h.now);
                    self.after(self.cmd_cost, Ev::CmdDone(session, job));
                }
                Action::Close { session, reason } => {
                    if reason == CloseReason::Yielded && self.check_yields {
                        let s = &self.sched.sessions[&session];
                        let quantum = self.sched.tuning.fairness_quantum;
                        assert!(self.h.now - s.opened_at >= quantum, "yielded before its quantum");
                    }
                    self.closes.push(reason);
                    self.after(self.close_cost, Ev::Closed(session));
                }
                Action::Fail { job, failure } => {
                    assert!(self.failed.insert(job.id, failure).is_none(), "job failed twice");
                }
            }
        }
        self.sched.check_invariants().unwrap();
        let most = |most: &mut Vec<u32>, now: &Vec<u32>| most.iter_mut().zip(now).for_each(|(m, &n)| *m = (*m).max(n));
        most(&mut self.most_admin, &self.sched.admin_open);
        most(&mut self.most_tenant, &self.sched.tenant_open);
    }

    fn deliver(&mut self, ev: Ev) {
        let now = self.h.now;
        match ev {
            Ev::Opened(s) => self.sched.open_succeeded(s, now),
            Ev::OpenFailed(s, class) => self.sched.open_failed(s, class, "injected", self.open_retry_after, now),
            Ev::CmdDone(s, job) => {
                *self.executed.entry(job.id).or_default() += 1;
                self.finished_at.insert(job.id, now);
                self.sched.command_finished(s, AfterCommand::Keep, Some(self.cmd_cost), now);
            }
            Ev::Closed(s) => {
                let (a, _) = self.sessions[&s];
                self.h.remote_by_admin[a] -= 1;
                self.sched.closed(s, now);
            }
        }
    }

    /// Runs until nothing is queued or in flight, or `limit` of virtual time passed.
    fn run_for(&mut self, limit: Duration) {
        self.run(limit, false);
    }

    /// Lets `d` of virtual time pass, planning on the driver's 100 ms tick when nothing happens.
    fn wait(&mut self, d: Duration) {
        self.run(d, true);
    }

    fn run(&mut self, limit: Duration, to_the_end: bool) {
        let end = self.h.now + limit;
        loop {
            let actions = self.sched.plan(self.h.now);
            self.apply(actions);
            if self.answer_pages() > 0 {
                // The driver plans again as soon as a page is in.
                continue;
            }
            let next = self.queue.peek().map(|Reverse((t, _))| *t);
            match next {
                Some(t) if t <= end => {
                    let Reverse((t, seq)) = self.queue.pop().unwrap();
                    self.h.now = t;
                    let ev = self.pending.remove(&seq).unwrap();
                    self.deliver(ev);
                }
                _ if self.sched.queued() > 0 && self.h.now < end => self.h.now += 50 * MS, // poll tick
                _ if to_the_end && self.h.now < end => self.h.now = end.min(self.h.now + 100 * MS),
                _ => break,
            }
        }
    }

    fn elapsed(&self) -> Duration {
        self.h.now - self.h.start
    }
}

/// Submits `per_tenant` batch items for each of `tenants` tenants, runs them to the end and
/// returns the makespan, after checking that every item ran exactly once.
fn run_bulk(h: &mut Harness, tenants: usize, per_tenant: usize) -> Duration {
    let ids: Vec<Uuid> =
        (0..tenants).flat_map(|t| std::iter::repeat_n(t, per_tenant)).map(|t| h.submit(t, Priority::Batch)).collect();
    h.run_for(Duration::from_secs(600));
    assert!(ids.iter().all(|id| h.executed.get(id) == Some(&1)), "every job ran exactly once");
    *h.finished_at.values().max().unwrap() - h.h.start
}

/// LB = max(Σ_t(open + n·cmd)/C, open + n·cmd/min(tenant cap, C)) for equal tenants.
fn lower_bound(h: &Harness, tenants: usize, per_tenant: usize, slots: u32, tenant_cap: u32) -> Duration {
    let work = h.open_cost + h.cmd_cost * per_tenant as u32;
    (work * tenants as u32 / slots).max(h.open_cost + h.cmd_cost * per_tenant as u32 / tenant_cap.min(slots))
}

fn bulk_batch_meets_the_lower_bound_and_never_exceeds_caps_on(mk: fn(Topology) -> Harness) -> Harness {
    let mut h = mk(topology(&[3, 3, 3], 60, 20, |_, _| true));
    let makespan = run_bulk(&mut h, 60, 20);
    // 60 · 600 ms / 9 = 4000 ms.
    let lb = lower_bound(&h, 60, 20, 9, 20);
    let ratio = makespan.as_secs_f64() / lb.as_secs_f64();
    eprintln!("makespan {makespan:?} is {ratio:.3} × LB {lb:?}, opens {}", h.opens);
    assert!(ratio <= 1.10, "makespan {makespan:?} is {ratio:.3} × LB {lb:?}");
    assert!(h.opens <= 66, "opened {} sessions for 60 tenants", h.opens);
    h
}

/// Exchange Online-like latencies: 20 tenants × 20 cmdlets on 9 slots leave two tenants for the
/// last wave. Their work must spread over the slots that finished tenants leave idle.
fn the_tail_of_a_bulk_job_spreads_over_every_free_slot_on(mk: fn(Topology) -> Harness) -> Harness {
    let mut h = mk(topology(&[3, 3, 3], 20, 20, |_, _| true));
    (h.open_cost, h.cmd_cost, h.close_cost) = (3000 * MS, 300 * MS, 100 * MS);
    // The default quantum: a whole tenant (9 s) is well within it.
    h.sched.tuning.fairness_quantum = Duration::from_secs(30);
    let makespan = run_bulk(&mut h, 20, 20);
    let lb = lower_bound(&h, 20, 20, 9, 20);
    // The careful script: 9 workers, each opens, runs a tenant's 20 cmdlets and closes; 20
    // tenants make three rounds.
    let careful = (h.open_cost + h.cmd_cost * 20 + h.close_cost) * 3;
    let ratio = makespan.as_secs_f64() / lb.as_secs_f64();
    eprintln!("makespan {makespan:?} is {ratio:.3} × LB {lb:?}, careful {careful:?}, opens {}", h.opens);
    assert!(careful.as_secs_f64() / makespan.as_secs_f64() >= 1.15, "makespan {makespan:?} vs careful {careful:?}");
    assert!(ratio <= 1.15, "makespan {makespan:?} is {ratio:.3} × LB {lb:?}");
    assert_eq!(h.closes.iter().filter(|&&r| r == CloseReason::Evicted).count() as u32, h.opens - 9);
    h
}

/// Nine tenants leave one idle session each on every slot; then one tenant brings a backlog.
fn nine_idle_sessions_then_one_backlog(tenant_cap: u32, backlog: usize) -> Harness {
    nine_idle_sessions_then_one_backlog_on(Harness::new, tenant_cap, backlog)
}

fn nine_idle_sessions_then_one_backlog_on(mk: fn(Topology) -> Harness, tenant_cap: u32, backlog: usize) -> Harness {
    let mut topo = topology(&[3, 3, 3], 10, 20, |_, _| true);
    topo.tenant_caps[9] = tenant_cap;
    let mut h = mk(topo);
    run_bulk(&mut h, 9, 1);
    assert_eq!(h.sched.snapshot(h.h.now).sessions.len(), 9);
    // What a few minutes of traffic would have taught it.
    h.sched.estimates = Estimates { open: 0.2, command: 0.02, close: 0.01 };
    for _ in 0..backlog {
        h.submit(9, Priority::Batch);
    }
    h
}

#[test]
fn idle_sessions_of_finished_tenants_become_more_sessions_up_to_the_tenant_cap() {
    idle_sessions_of_finished_tenants_become_more_sessions_on(Harness::new);
}

#[test]
fn idle_sessions_of_finished_tenants_become_more_sessions_with_a_window() {
    let h = idle_sessions_of_finished_tenants_become_more_sessions_on(windowed);
    assert!(h.pages > 0, "the work was paged in");
}

fn idle_sessions_of_finished_tenants_become_more_sessions_on(mk: fn(Topology) -> Harness) -> Harness {
    let mut h = nine_idle_sessions_then_one_backlog_on(mk, 4, 400);
    let mut most = 0;
    while h.sched.queued() > 0 {
        h.run_for(50 * MS);
        most = most.max(h.sched.snapshot(h.h.now).tenants[9].open);
    }
    h.run_for(Duration::from_secs(10));
    assert_eq!(most, 4, "the backlog (8 s on one session) takes every slot its cap allows");
    assert_eq!(h.closes.iter().filter(|&&r| r == CloseReason::Evicted).count(), 4);
    // 400 × 20 ms over 4 sessions, after one close and one open.
    assert!(h.elapsed() < Duration::from_millis(2_000 + 210 + 300), "took {:?}", h.elapsed());
    h
}

#[test]
fn a_short_backlog_keeps_one_session_and_leaves_the_others_warm() {
    // The first session runs after a close and an open (210 ms), then 4 × 20 ms: 290 ms from
    // now, less than 1.5 × (close + open) = 315 ms for a second one.
    let mut h = nine_idle_sessions_then_one_backlog(20, 4);
    h.run_for(Duration::from_secs(10));
    assert_eq!(h.opens, 10, "one open for the new tenant");
    assert_eq!(h.closes, vec![CloseReason::Evicted]);
}

fn idle_sessions_beyond_the_warm_reserve_are_given_back_after_the_linger_on(mk: fn(Topology) -> Harness) -> Harness {
    let mut h = mk(topology(&[3, 3, 3], 9, 20, |_, _| true));
    run_bulk(&mut h, 9, 20);
    let open = |h: &Harness| h.sched.snapshot(h.h.now).admins.iter().map(|a| a.open).collect::<Vec<_>>();
    assert_eq!(open(&h), [3, 3, 3]);
    // Tenant 4's session is used again just before the linger ends: it is the warmest.
    h.wait(Duration::from_secs(9));
    let warm = h.submit(4, Priority::Batch);
    h.run_for(Duration::from_secs(1));
    assert_eq!(h.executed.get(&warm), Some(&1));
    assert_eq!(open(&h), [3, 3, 3], "nothing closes within the linger");
    h.wait(Duration::from_secs(2));
    assert_eq!(open(&h), [1, 1, 1], "one warm session per admin stays");
    assert_eq!(h.closes, vec![CloseReason::GivenBack; 6]);
    let kept: Vec<TenantIdx> = h.sched.snapshot(h.h.now).sessions.iter().map(|s| s.tenant).collect();
    assert!(kept.contains(&4), "the most recently used session is kept: {kept:?}");
    // A call for that tenant now costs no open.
    let opens = h.opens;
    let id = h.submit(4, Priority::Interactive);
    h.run_for(Duration::from_secs(1));
    assert_eq!((h.executed.get(&id), h.opens), (Some(&1), opens));
    // The profile's idle timeout still ends the reserve.
    h.wait(Duration::from_secs(301));
    assert_eq!(open(&h), [0, 0, 0]);
    assert_eq!(h.closes.iter().filter(|&&r| r == CloseReason::IdleTimeout).count(), 3);
    h
}

#[test]
fn an_admin_with_queued_work_keeps_its_idle_sessions_for_it() {
    // Admin 0 serves tenants 0-2, admin 1 tenant 3 only. Tenant 3 has a long backlog: admin 1's
    // sessions stay (busy); admin 0 gives back what its finished tenants left.
    let mut h = Harness::new(topology(&[3, 3], 4, 20, |a, t| (a == 0) == (t < 3)));
    for t in 0..3 {
        h.submit(t, Priority::Batch);
    }
    for _ in 0..3000 {
        h.submit(3, Priority::Batch);
    }
    h.run_for(Duration::from_secs(1));
    h.wait(Duration::from_secs(11));
    let snap = h.sched.snapshot(h.h.now);
    assert_eq!((snap.admins[0].open, snap.admins[1].open), (1, 3));
    assert!(h.sched.queued() > 0, "admin 1 still has work");
}

fn interactive_call_mid_batch_waits_at_most_one_command_a_close_and_an_open_on(mk: fn(Topology) -> Harness) -> Harness {
    let mut h = mk(topology(&[3, 3, 3], 20, 20, |_, _| true));
    for t in 0..19 {
        for _ in 0..2000 {
            h.submit(t, Priority::Batch);
        }
    }
    h.run_for(Duration::from_secs(3));
    let submitted = h.h.now;
    let id = h.submit(19, Priority::Interactive);
    h.run_for(Duration::from_secs(2));
    let wait = h.started_at[&id] - submitted;
    assert!(wait <= h.cmd_cost + h.close_cost + h.open_cost + 5 * MS, "interactive waited {wait:?}");
    assert!(h.closes.contains(&CloseReason::Preempted));
    h
}

fn a_small_tenant_is_not_starved_by_a_huge_batch_on(mk: fn(Topology) -> Harness) -> Harness {
    let mut h = mk(topology(&[3, 3, 3], 10, 20, |_, _| true));
    for t in 0..9 {
        for _ in 0..5000 {
            h.submit(t, Priority::Batch);
        }
    }
    h.run_for(Duration::from_secs(1));
    let submitted = h.h.now;
    let id = h.submit(9, Priority::Batch);
    h.run_for(Duration::from_secs(10));
    let wait = h.started_at[&id] - submitted;
    // At most one fairness quantum plus a command, a close and an open.
    assert!(wait <= tuning().fairness_quantum + 300 * MS, "small tenant waited {wait:?}");
    h
}

fn a_huge_batch_for_one_tenant_uses_every_admin_slot_on(mk: fn(Topology) -> Harness) -> Harness {
    let mut h = mk(topology(&[3, 3, 3], 1, 20, |_, _| true));
    for _ in 0..2000 {
        h.submit(0, Priority::Batch);
    }
    h.run_for(Duration::from_secs(2));
    let snap = h.sched.snapshot(h.h.now);
    assert_eq!(snap.tenants[0].open, 9, "{:?}", snap.tenants[0]);
    h
}

#[test]
fn quota_fault_lowers_the_admins_cap_and_the_work_still_completes() {
    // Someone outside the broker holds 2 of admin 0's 3 shells: its 2nd open is refused.
    let mut h = Harness::new(topology(&[3, 3], 4, 20, |_, _| true));
    h.open_fault =
        Box::new(|a, _, h0| (a == 0 && h0.remote_by_admin[0] >= 1).then_some(FaultClass::UserShellQuotaExceeded));
    let ids: Vec<_> = (0..4).flat_map(|t| (0..50).map(move |_| t)).collect::<Vec<_>>();
    let ids: Vec<Uuid> = ids.into_iter().map(|t| h.submit(t, Priority::Batch)).collect();
    h.run_for(Duration::from_secs(60));
    assert!(h.failed.is_empty(), "{:?}", h.failed.values().next());
    assert!(ids.iter().all(|id| h.executed.get(id) == Some(&1)));
    let snap = h.sched.snapshot(h.h.now);
    assert!(snap.admins[0].open <= 1);
}

#[test]
fn logon_failure_moves_work_to_another_admin_or_fails_with_its_code() {
    // Admin 0 has a bad password; tenant 0 is managed by both, tenant 1 only by admin 0.
    let mut h = Harness::new(topology(&[3, 3], 2, 20, |a, t| t == 0 || a == 0));
    h.open_fault = Box::new(|a, _, _| (a == 0).then_some(FaultClass::LogonFailed));
    let ok: Vec<Uuid> = (0..10).map(|_| h.submit(0, Priority::Batch)).collect();
    let doomed: Vec<Uuid> = (0..3).map(|_| h.submit(1, Priority::Batch)).collect();
    h.run_for(Duration::from_secs(30));
    assert!(ok.iter().all(|id| h.executed.get(id) == Some(&1)));
    for id in &doomed {
        assert_eq!(h.failed[id].code, "logon_failed");
        assert!(!h.executed.contains_key(id));
    }
}

#[test]
fn disabled_tenant_fails_fast_with_its_code() {
    let mut h = Harness::new(topology(&[3, 3], 2, 20, |_, _| true));
    h.open_fault = Box::new(|_, t, _| (t == 1).then_some(FaultClass::TenantRemotePowerShellDisabled));
    let id = h.submit(1, Priority::Interactive);
    let ok = h.submit(0, Priority::Interactive);
    h.run_for(Duration::from_secs(5));
    assert_eq!(h.failed[&id].code, "tenant_remote_powershell_disabled");
    assert!(h.elapsed() < Duration::from_secs(1));
    assert_eq!(h.executed.get(&ok), Some(&1));
}

#[test]
fn identity_outage_backs_off_then_succeeds() {
    let mut h = Harness::new(topology(&[3], 1, 20, |_, _| true));
    h.open_fault = Box::new(|_, _, h0| {
        (h0.now - h0.start < Duration::from_secs(3)).then_some(FaultClass::IdentityServiceUnreachable)
    });
    let id = h.submit(0, Priority::Batch);
    h.run_for(Duration::from_secs(20));
    assert_eq!(h.executed.get(&id), Some(&1));
    assert!(h.opens < 15, "backoff should limit open attempts, made {}", h.opens);
}

#[test]
fn a_throttled_admin_is_not_tried_again_before_the_service_said() {
    // Budget throttling on admin 0's first open: "Please wait for 10 seconds". Backoff alone
    // would try again after 100 ms.
    let mut h = Harness::new(topology(&[3], 1, 20, |_, _| true));
    h.open_retry_after = Some(Duration::from_secs(10));
    h.open_fault = Box::new(|_, _, h0| (h0.now == h0.start).then_some(FaultClass::Throttled));
    let id = h.submit(0, Priority::Batch);
    h.run_for(Duration::from_secs(30));
    assert_eq!(h.executed.get(&id), Some(&1));
    let (first, second) = (h.open_log[0].0, h.open_log[1].0);
    assert!(second - first >= Duration::from_secs(10), "retried after {:?}", second - first);
    assert!(h.failed.is_empty());
}

#[test]
fn sessions_retire_at_max_age_and_max_commands() {
    let mut topo = topology(&[2], 1, 20, |_, _| true);
    topo.rules[0] = rules(Duration::from_secs(1), 25);
    let mut h = Harness::new(topo);
    let ids: Vec<Uuid> = (0..200).map(|_| h.submit(0, Priority::Batch)).collect();
    h.run_for(Duration::from_secs(60));
    assert!(ids.iter().all(|id| h.executed.get(id) == Some(&1)));
    assert!(h.closes.contains(&CloseReason::MaxCommands));
    h.sched.begin_shutdown();
    h.run_for(Duration::from_secs(1));
    assert!(!h.sched.has_live_sessions(), "shutdown closes every session");
}

#[test]
fn cancelled_batch_jobs_are_removed() {
    let mut h = Harness::new(topology(&[1], 1, 20, |_, _| true));
    let batch = Uuid::new_v4();
    for _ in 0..10 {
        let mut j = h.job(0, Priority::Batch);
        j.batch = Some(batch);
        h.sched.submit(j);
    }
    assert_eq!(h.sched.cancel_batch(batch).len(), 10);
    assert_eq!(h.sched.queued(), 0);
    h.sched.check_invariants().unwrap();
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
    /// Random shapes and random faults: caps hold after every step (checked in `apply`) and
    /// every job ends exactly once, run or failed.
    #[test]
    fn caps_hold_and_every_job_ends_once(
        admin_caps in proptest::collection::vec(1u32..4, 1..4),
        tenants in 1usize..8,
        tenant_cap in 1u32..5,
        jobs in proptest::collection::vec((0usize..8, proptest::bool::ANY), 1..120),
        fault_every in 2u32..9,
    ) {
        let mut h = Harness::new(topology(&admin_caps, tenants, tenant_cap, |a, t| (a + t) % 3 != 2 || a == 0));
        let mut n = 0u32;
        h.open_fault = Box::new(move |_, _, _| {
            n += 1;
            let classes = [FaultClass::UserShellQuotaExceeded, FaultClass::TenantShellQuotaExceeded, FaultClass::IdentityServiceUnreachable];
            (n % fault_every == 0).then(|| classes[(n as usize / fault_every as usize) % 3])
        });
        let ids: Vec<Uuid> = jobs.iter().map(|&(t, i)| h.submit(t % tenants, if i { Priority::Interactive } else { Priority::Batch })).collect();
        h.run_for(Duration::from_secs(600));
        // Once nothing is queued, every admin is down to its warm reserve after the linger.
        h.wait(Duration::from_secs(11));
        proptest::prop_assert!(h.sched.snapshot(h.h.now).admins.iter().all(|a| a.open <= 1));
        let mut seen = HashSet::new();
        for id in &ids {
            let ran = h.executed.get(id).copied().unwrap_or(0);
            let failed = h.failed.contains_key(id);
            proptest::prop_assert!(ran + failed as u32 == 1, "job ran {} times, failed {}", ran, failed);
            seen.insert(*id);
        }
    }
}

/// A push-back from the service (429) on a command eases the admin off: its calls in flight
/// drop to one less than it held for the cool-down (idle sessions over it close as `eased_off`),
/// and the cap comes back afterwards. The work itself waits; it does not fail.
#[test]
fn a_throttled_command_eases_the_admin_off_for_the_cooldown() {
    let h = Harness::new(topology(&[3], 1, 20, |_, _| true));
    let jobs: Vec<Job> = (0..30).map(|_| h.job(0, Priority::Batch)).collect();
    let (mut sched, mut now) = (h.sched, h.h.now);
    for job in jobs {
        sched.submit(job);
    }
    let mut opened = Vec::new();
    // Opens are paid for only while the backlog makes them worth it: let them come.
    for _ in 0..5 {
        for action in sched.plan(now) {
            if let Action::Open { session, .. } = action {
                opened.push(session);
            }
        }
        for &s in &opened {
            sched.open_succeeded(s, now);
        }
        now += 10 * MS;
    }
    let running: Vec<SessionId> = sched
        .plan(now)
        .into_iter()
        .filter_map(|a| match a {
            Action::Run { session, .. } => Some(session),
            _ => None,
        })
        .collect();
    assert_eq!(sched.snapshot(now).admins[0].open, 3, "three sessions open: {opened:?}, running {running:?}");
    let throttled = running[0];
    sched.command_failed(throttled, FaultClass::Throttled, Some(Duration::from_secs(1)), now);
    assert_eq!(sched.snapshot(now).admins[0].effective_cap, 2, "one call fewer in flight");
    for &s in &running {
        sched.command_finished(s, AfterCommand::Keep, Some(20 * MS), now);
    }
    let closes: Vec<CloseReason> = sched
        .plan(now)
        .into_iter()
        .filter_map(|a| match a {
            Action::Close { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(closes, vec![CloseReason::EasedOff], "one idle session over the lowered cap closes");
    // The quota cool-down (5 s here) outlasts the service's 1 s: the cap is back after it.
    assert_eq!(sched.snapshot(now + Duration::from_secs(4)).admins[0].effective_cap, 2);
    assert_eq!(sched.snapshot(now + Duration::from_secs(6)).admins[0].effective_cap, 3);
    // Nothing failed: the queued work is still there.
    assert!(sched.snapshot(now).queued_batch + sched.snapshot(now).queued_interactive > 0);
}

/// Where the tenant's transport sends work together (`$batch`), an idle session takes up to
/// `rules.batch` ready batch-priority jobs of one lane at once; interactive work goes alone.
#[test]
fn bulk_work_goes_together_up_to_the_rules_batch_and_interactive_work_alone() {
    let mut topo = topology(&[1], 1, 20, |_, _| true);
    topo.rules[0].batch = 10;
    let h = Harness::new(topo);
    let jobs: Vec<Job> = (0..25).map(|_| h.job(0, Priority::Batch)).collect();
    let urgent = h.job(0, Priority::Interactive);
    let (mut sched, now) = (h.sched, h.h.now);
    for job in jobs {
        sched.submit(job);
    }
    let opened: Vec<SessionId> = sched
        .plan(now)
        .into_iter()
        .filter_map(|a| match a {
            Action::Open { session, .. } => Some(session),
            _ => None,
        })
        .collect();
    assert_eq!(opened.len(), 1);
    sched.open_succeeded(opened[0], now);
    let run = |actions: Vec<Action>| -> Vec<(Priority, usize)> {
        actions
            .into_iter()
            .filter_map(|a| match a {
                Action::Run { job, more, .. } => {
                    assert!(more.iter().all(|j| j.priority == Priority::Batch));
                    Some((job.priority, 1 + more.len()))
                }
                _ => None,
            })
            .collect()
    };
    assert_eq!(run(sched.plan(now)), vec![(Priority::Batch, 10)]);
    sched.submit(urgent);
    sched.command_finished(opened[0], AfterCommand::Keep, Some(20 * MS), now);
    assert_eq!(run(sched.plan(now)), vec![(Priority::Interactive, 1)], "interactive work goes first, alone");
    sched.command_finished(opened[0], AfterCommand::Keep, Some(20 * MS), now);
    assert_eq!(run(sched.plan(now)), vec![(Priority::Batch, 10)]);
    sched.command_finished(opened[0], AfterCommand::Keep, Some(20 * MS), now);
    assert_eq!(run(sched.plan(now)), vec![(Priority::Batch, 5)], "what is left");
    let snap = sched.snapshot(now);
    assert_eq!(snap.queued_batch + snap.queued_interactive, 0, "the queue counts follow");
}

/// A lane's work beyond the window stays in the store as a count; pages bring it in as the
/// lane drains; the count stays exact through duplicates and a short page corrects it.
#[test]
fn a_window_keeps_a_bounded_part_of_a_lane_in_memory_and_pages_the_rest() {
    let now = Instant::now();
    let mut s = Scheduler::new(topology(&[2], 1, 2, |_, _| true), tuning()).with_window(8);
    let job = |i: u128| Job {
        id: Uuid::from_u128(i),
        tenant: 0,
        admin: None,
        priority: Priority::Batch,
        spec: Arc::new(JobSpec { cmdlet: "Set-Mailbox".into(), parameters: vec![] }),
        idempotent: false,
        batch: None,
        enqueued_at: now,
        deadline: now + Duration::from_secs(3600),
        attempts: 0,
        not_before: None,
    };
    // The store holds jobs 1..=100, in this order.
    let store: Vec<Job> = (1..=100).map(job).collect();
    for j in &store {
        s.submit_stored(j.clone());
    }
    assert_eq!(s.queued(), 100);
    assert_eq!(s.lanes[&(0, None)].queues[1].len(), 8, "only the window is in memory");
    s.check_invariants().unwrap();
    assert!(s.refills().is_empty(), "a full window needs no page");

    let mut ran = Vec::new();
    let mut paged_upto = 8;
    let mut sessions_opened = false;
    for _round in 0..200 {
        let actions = s.plan(now);
        let mut done = Vec::new();
        for a in actions {
            match a {
                Action::Open { session, .. } => {
                    sessions_opened = true;
                    s.open_succeeded(session, now);
                }
                Action::Run { session, job, .. } => {
                    ran.push(job.id.as_u128());
                    done.push(session);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        for session in done {
            s.command_finished(session, AfterCommand::Keep, Some(Duration::from_millis(5)), now);
        }
        for page in s.refills() {
            assert!(page.want <= 8);
            // What the store's page returns: rows not taken before, plus a job still queued
            // in memory (accepted by this process, never paged), which must not count twice.
            let mut rows: Vec<Job> = store[paged_upto..].iter().take(page.want).cloned().collect();
            paged_upto += rows.len();
            if let Some(in_memory) = s.lanes[&(0, None)].queues[1].front() {
                rows.insert(0, job(in_memory.id.as_u128()));
            }
            let taken = rows.len();
            s.refilled(&page, rows, 0, taken);
            s.check_invariants().unwrap();
        }
        if s.queued() == 0 {
            break;
        }
    }
    assert!(sessions_opened);
    assert_eq!(s.queued(), 0, "every job ran");
    assert_eq!(ran.len(), 100, "each job ran once");
    assert_eq!(ran, (1..=100).collect::<Vec<_>>(), "in the store's order");

    // A count larger than what the store holds (a cancelled batch) is corrected by a short page.
    s.add_stored(0, None, Priority::Batch, 5);
    let page = s.refills().pop().expect("a page is asked for");
    s.refilled(&page, vec![], 0, 0);
    assert_eq!(s.queued(), 0, "the short page says there is nothing left");
    s.check_invariants().unwrap();
}

// ----- the key scenarios again, with the queue paged in from a store ---------------------------

/// A window of 4 jobs per lane and priority: far smaller than the backlogs and than the
/// sessions a lane may have, so pages are asked for all the time.
fn windowed(topo: Topology) -> Harness {
    Harness::paged(topo, 4)
}

#[test]
fn bulk_batch_meets_the_lower_bound_and_never_exceeds_caps() {
    bulk_batch_meets_the_lower_bound_and_never_exceeds_caps_on(Harness::new);
}

#[test]
fn bulk_batch_meets_the_lower_bound_and_never_exceeds_caps_with_a_window() {
    let h = bulk_batch_meets_the_lower_bound_and_never_exceeds_caps_on(windowed);
    assert!(h.pages > 0, "the work was paged in");
}

#[test]
fn the_tail_of_a_bulk_job_spreads_over_every_free_slot() {
    the_tail_of_a_bulk_job_spreads_over_every_free_slot_on(Harness::new);
}

#[test]
fn the_tail_of_a_bulk_job_spreads_over_every_free_slot_with_a_window() {
    let h = the_tail_of_a_bulk_job_spreads_over_every_free_slot_on(windowed);
    assert!(h.pages > 0, "the work was paged in");
}

#[test]
fn interactive_call_mid_batch_waits_at_most_one_command_a_close_and_an_open() {
    interactive_call_mid_batch_waits_at_most_one_command_a_close_and_an_open_on(Harness::new);
}

#[test]
fn interactive_call_mid_batch_waits_at_most_one_command_a_close_and_an_open_with_a_window() {
    let h = interactive_call_mid_batch_waits_at_most_one_command_a_close_and_an_open_on(windowed);
    assert!(h.pages > 0, "the work was paged in");
}

#[test]
fn a_small_tenant_is_not_starved_by_a_huge_batch() {
    a_small_tenant_is_not_starved_by_a_huge_batch_on(Harness::new);
}

#[test]
fn a_small_tenant_is_not_starved_by_a_huge_batch_with_a_window() {
    let h = a_small_tenant_is_not_starved_by_a_huge_batch_on(windowed);
    assert!(h.pages > 0, "the work was paged in");
}

#[test]
fn a_huge_batch_for_one_tenant_uses_every_admin_slot() {
    a_huge_batch_for_one_tenant_uses_every_admin_slot_on(Harness::new);
}

#[test]
fn a_huge_batch_for_one_tenant_uses_every_admin_slot_with_a_window() {
    let h = a_huge_batch_for_one_tenant_uses_every_admin_slot_on(windowed);
    assert!(h.pages > 0, "the work was paged in");
}

#[test]
fn idle_sessions_beyond_the_warm_reserve_are_given_back_after_the_linger() {
    idle_sessions_beyond_the_warm_reserve_are_given_back_after_the_linger_on(Harness::new);
}

#[test]
fn idle_sessions_beyond_the_warm_reserve_are_given_back_after_the_linger_with_a_window() {
    let h = idle_sessions_beyond_the_warm_reserve_are_given_back_after_the_linger_on(windowed);
    assert!(h.pages > 0, "the work was paged in");
}

// ----- several nodes ------------------------------------------------------------------------

fn count(closes: &[CloseReason], reason: CloseReason) -> usize {
    closes.iter().filter(|&&r| r == reason).count()
}

/// What the other nodes hold comes off this node's caps: it opens no session beyond
/// cap − peers, and takes the rest once they give them back.
#[test]
fn the_other_nodes_sessions_lower_the_effective_caps() {
    let mut topo = topology(&[3, 3], 2, 20, |_, _| true);
    topo.tenant_caps[1] = 4;
    let mut h = Harness::new(topo);
    // Other nodes hold 2 of admin 0's 3 slots and 3 of tenant 1's 4.
    h.sched.set_peers(vec![2, 0], vec![0, 3]);
    h.sched.set_peers(vec![9], vec![9, 9]); // the wrong shape is ignored
    for _ in 0..500 {
        h.submit(0, Priority::Batch);
        h.submit(1, Priority::Batch);
    }
    h.run_for(Duration::from_secs(3));
    let snap = h.sched.snapshot(h.h.now);
    assert_eq!((snap.admins[0].effective_cap, snap.tenants[1].effective_cap), (1, 1));
    assert_eq!(h.most_admin, [1, 3], "admin 0 never beyond 3 − 2");
    assert_eq!(h.most_tenant[1], 1, "tenant 1 never beyond 4 − 3");
    assert!(h.sched.queued() > 0);
    // The others gave their sessions back: this node takes the slots.
    h.sched.set_peers(vec![0, 0], vec![0, 0]);
    h.run_for(Duration::from_secs(2));
    assert_eq!(h.sched.snapshot(h.h.now).admins[0].open, 3);
    assert!(h.failed.is_empty());
}

/// The store refusing a slot is not a failure: the session goes without a backoff, the
/// others' counts lower the caps, and the work waits for a slot.
#[test]
fn an_open_the_store_refused_is_dropped_without_a_failure_and_leaves_the_others_their_share() {
    let mut h = Harness::new(topology(&[3], 1, 20, |_, _| true));
    for _ in 0..200 {
        h.submit(0, Priority::Batch);
    }
    let now = h.h.now;
    let opens = |actions: &[Action]| -> Vec<SessionId> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Open { session, .. } => Some(*session),
                Action::Fail { .. } => panic!("nothing fails: {a:?}"),
                _ => None,
            })
            .collect()
    };
    let first = opens(&h.sched.plan(now));
    assert_eq!(first.len(), 3, "a backlog this long pays for every slot");
    h.sched.open_refused(first[0], 2, 1);
    // A later, smaller count (another refusal that raced) does not undo the first.
    h.sched.open_refused(first[1], 1, 0);
    h.sched.open_refused(99, 3, 3); // unknown session: nothing
    let snap = h.sched.snapshot(now);
    assert_eq!((snap.admins[0].open, snap.admins[0].effective_cap, snap.tenants[0].effective_cap), (1, 1, 19));
    assert_eq!(h.sched.queued(), 200, "the work waits");
    h.sched.check_invariants().unwrap();
    // The last one is refused too: at once (no backoff, no failure) one open for the slot left.
    h.sched.open_refused(first[2], 2, 1);
    let again = opens(&h.sched.plan(now));
    assert_eq!(again.len(), 1);
    h.sched.open_succeeded(again[0], now);
    let actions = h.sched.plan(now);
    assert!(opens(&actions).is_empty(), "no open beyond cap − peers");
    assert!(matches!(actions[..], [Action::Run { session, .. }] if session == again[0]));
    // The next look at the cluster says the others let go.
    h.sched.set_peers(vec![0], vec![0]);
    assert_eq!(opens(&h.sched.plan(now)).len(), 2);
}

/// The census of the shared queue sets each lane's count of work waiting in the store (less
/// what is in memory); lanes it no longer lists drop to nothing; lanes being paged keep theirs
/// until the page answers.
#[test]
fn a_census_sets_the_stored_counts_that_pages_are_asked_for() {
    let now = Instant::now();
    let topo = topology(&[3], 3, 20, |_, _| true);
    let mut unpaged = Scheduler::new(topo.clone(), tuning());
    let lane0 = ((0, None), Priority::Batch);
    let lane1 = ((1, Some(0)), Priority::Interactive);
    unpaged.census(&HashMap::from([(lane0, 10)]));
    assert_eq!(unpaged.queued(), 0, "without a window every job is in memory: a census means nothing");

    let mut s = Scheduler::new(topo, tuning()).with_window(4);
    s.census(&HashMap::from([(lane0, 10), (lane1, 3)]));
    assert_eq!(s.queued(), 13);
    s.check_invariants().unwrap();
    let mut pages = s.refills();
    pages.sort_by_key(|p| p.tenant);
    let asked: Vec<_> = pages.iter().map(|p| (p.tenant, p.admin, p.priority, p.want)).collect();
    assert_eq!(asked, [(0, None, Priority::Batch, 4), (1, Some(0), Priority::Interactive, 4)]);
    assert!(s.refills().is_empty(), "each lane is asked once");
    let job = |tenant: TenantIdx, admin: Option<AdminIdx>, priority: Priority| Job {
        id: Uuid::now_v7(),
        tenant,
        admin,
        priority,
        spec: Arc::new(JobSpec { cmdlet: "Get-User".into(), parameters: vec![] }),
        idempotent: true,
        batch: None,
        enqueued_at: now,
        deadline: now + Duration::from_secs(3600),
        attempts: 0,
        not_before: None,
    };
    // Lane 2 learned of one more stored job; a census taken meanwhile does not list it (another
    // node took it) nor change the lanes being paged.
    s.add_stored(2, None, Priority::Batch, 1);
    s.census(&HashMap::from([(lane0, 2)]));
    assert_eq!(s.lanes[&(2, None)].stored[1], 0, "absent from the census: nothing left for this node");
    assert_eq!((s.lanes[&(0, None)].stored[1], s.lanes[&(1, Some(0))].stored[0]), (10, 3), "being paged");
    assert_eq!(s.queued(), 13);
    s.check_invariants().unwrap();
    // The pages answer; the next census counts what is in memory as not waiting in the store.
    let rows: Vec<Job> = (0..4).map(|_| job(0, None, Priority::Batch)).collect();
    s.refilled(&pages[0], rows, 0, 4);
    let rows: Vec<Job> = (0..3).map(|_| job(1, Some(0), Priority::Interactive)).collect();
    s.refilled(&pages[1], rows, 0, 3);
    s.census(&HashMap::from([(lane0, 12), (lane1, 3)]));
    assert_eq!((s.lanes[&(0, None)].stored[1], s.lanes[&(1, Some(0))].stored[0]), (8, 0));
    assert_eq!(s.queued(), 15);
    s.check_invariants().unwrap();
    // A census below what memory holds (run elsewhere, cancelled) leaves nothing stored.
    s.census(&HashMap::from([(lane0, 1)]));
    assert_eq!(s.queued(), 7, "the 7 jobs in memory");
    s.check_invariants().unwrap();
    assert!(s.refills().is_empty(), "nothing is left in the store");
    s.census(&HashMap::from([(lane0, 20)]));
    assert_eq!(s.refills().len(), 0, "the window is full: no page yet");
    assert!(s.plan(now).iter().any(|a| matches!(a, Action::Open { .. })), "the work gets sessions");
}

/// Fenced, a node starts nothing and closes every idle session (busy ones finish their
/// command first here; the driver closes them at once); unfenced, the work goes on.
#[test]
fn a_fenced_node_starts_nothing_and_closes_its_sessions_until_unfenced() {
    let mut h = Harness::new(topology(&[3, 3], 2, 20, |_, _| true));
    let ids: Vec<Uuid> = (0..600).map(|i| h.submit(i % 2, Priority::Batch)).collect();
    h.run_for(Duration::from_secs(1));
    let open = h.sched.snapshot(h.h.now).sessions.len();
    assert!(open >= 4, "{open} sessions");
    h.sched.set_fenced(true);
    let (runs, opens, queued) = (h.runs, h.opens, h.sched.queued());
    h.run_for(Duration::from_secs(3));
    assert_eq!((h.runs, h.opens), (runs, opens), "no command starts, no session opens");
    assert!(!h.sched.has_live_sessions());
    assert_eq!(count(&h.closes, CloseReason::Fenced), open);
    assert_eq!(h.sched.queued(), queued, "the work waits, nothing fails");
    assert!(h.failed.is_empty());
    h.sched.set_fenced(false);
    h.run_for(Duration::from_secs(60));
    assert!(ids.iter().all(|id| h.executed.get(id) == Some(&1)), "every job ran once");
}

/// An admin another node waits for keeps nothing warm: its idle sessions close at once,
/// while the other admins keep theirs through the linger.
#[test]
fn idle_sessions_of_an_admin_another_node_waits_for_are_given_back_at_once() {
    let mut h = Harness::new(topology(&[3, 3], 9, 20, |_, _| true));
    run_bulk(&mut h, 9, 20);
    let open = |h: &Harness| h.sched.snapshot(h.h.now).admins.iter().map(|a| a.open).collect::<Vec<_>>();
    assert_eq!(open(&h), [3, 3]);
    let before = h.closes.len();
    h.sched.set_demand(vec![true, false]);
    h.sched.set_demand(vec![true]); // the wrong shape is ignored
    h.wait(100 * MS);
    assert_eq!(open(&h), [0, 3], "no warm reserve, no linger for admin 0");
    assert_eq!(h.closes[before..], [CloseReason::GivenBack; 3]);
    // The demand ends: admin 1 goes back to the normal reserve after the linger.
    h.sched.set_demand(vec![false, false]);
    h.wait(Duration::from_secs(11));
    assert_eq!(open(&h), [0, 1]);
}

/// A busy node yields a slot of an admin another node waits for only after its fairness
/// quantum, and never its last session of that admin.
#[test]
fn a_busy_node_yields_to_a_waiting_node_after_its_quantum_and_keeps_one_session() {
    let mut h = Harness::new(topology(&[3], 1, 20, |_, _| true));
    h.check_yields = true;
    for _ in 0..5000 {
        h.submit(0, Priority::Batch);
    }
    h.run_for(Duration::from_secs(1));
    assert_eq!(h.sched.snapshot(h.h.now).admins[0].open, 3);
    h.sched.set_demand(vec![true]);
    // The sessions opened at about 0.2 s: their quantum (2 s) is not over before 2.2 s.
    h.run_for(Duration::from_millis(1100));
    assert_eq!(count(&h.closes, CloseReason::Yielded), 0, "no yield within the quantum");
    h.run_for(Duration::from_secs(10));
    // (`apply` checks each yield came after the session's quantum.)
    assert_eq!(count(&h.closes, CloseReason::Yielded), 2, "{:?}", h.closes);
    let snap = h.sched.snapshot(h.h.now);
    assert_eq!((snap.admins[0].open, snap.admins[0].effective_cap), (1, 1));
    let runs = h.runs;
    h.run_for(Duration::from_secs(2));
    assert!(h.runs > runs, "the node goes on with its one session");
    assert!(h.failed.is_empty());
}

/// Having yielded, a node leaves the slots to the node that waits: it does not open them
/// again until a look at the cluster says the other node did not take them.
#[test]
fn a_node_that_yielded_does_not_take_the_slots_back_while_another_node_waits() {
    let mut h = Harness::new(topology(&[3], 1, 20, |_, _| true));
    for _ in 0..5000 {
        h.submit(0, Priority::Batch);
    }
    h.run_for(Duration::from_secs(1));
    let opens = h.opens;
    assert_eq!((opens, h.sched.snapshot(h.h.now).admins[0].open), (3, 3));
    h.sched.set_demand(vec![true]);
    h.run_for(Duration::from_secs(6));
    assert_eq!(count(&h.closes, CloseReason::Yielded), 2, "{:?}", h.closes);
    assert_eq!(h.opens, opens, "the yielded slots are not opened again here");
    assert_eq!(h.sched.snapshot(h.h.now).admins[0].open, 1);
    // The next look: nobody took them, nobody waits any more. Free slots are used again.
    h.sched.set_peers(vec![0], vec![0]);
    h.sched.set_demand(vec![false]);
    h.run_for(Duration::from_secs(1));
    assert_eq!(h.sched.snapshot(h.h.now).admins[0].open, 3);
}

/// Demand alone keeps no node from slots that are free: it opens what its backlog pays for.
#[test]
fn demand_keeps_no_node_from_free_slots() {
    let mut h = Harness::new(topology(&[3], 1, 20, |_, _| true));
    h.sched.set_demand(vec![true]);
    for _ in 0..5000 {
        h.submit(0, Priority::Batch);
    }
    h.run_for(Duration::from_secs(1));
    assert_eq!((h.opens, h.sched.snapshot(h.h.now).admins[0].open), (3, 3));
    assert!(h.runs > 0);
}

/// A node with one session of the admin does not yield it, however long it works.
#[test]
fn a_node_with_one_session_of_the_admin_does_not_yield_it() {
    let mut h = Harness::new(topology(&[3], 1, 1, |_, _| true));
    for _ in 0..1000 {
        h.submit(0, Priority::Batch);
    }
    h.sched.set_demand(vec![true]);
    h.run_for(Duration::from_secs(10));
    assert_eq!(count(&h.closes, CloseReason::Yielded), 0);
    assert_eq!(h.opens, 1);
}

/// A cool-down another node learned lowers this node's caps; a higher or shorter one does
/// not undo it; it ends on time.
#[test]
fn a_shared_cooldown_lowers_the_caps_and_the_lower_longer_one_wins() {
    let mut h = Harness::new(topology(&[3, 3], 2, 20, |_, _| true));
    let now = h.h.now;
    let secs = Duration::from_secs;
    let caps = |h: &Harness, at: Instant| {
        let snap = h.sched.snapshot(at);
        (snap.admins[0].effective_cap, snap.tenants[1].effective_cap)
    };
    h.sched.shared_cooldown(Some(0), None, 1, now + secs(5), now);
    h.sched.shared_cooldown(None, Some(1), 2, now + secs(5), now);
    h.sched.shared_cooldown(None, None, 0, now + secs(5), now); // no scope: nothing
    assert_eq!(caps(&h, now), (1, 2));
    h.sched.shared_cooldown(Some(0), None, 3, now + secs(1), now);
    assert_eq!(caps(&h, now + secs(2)), (1, 2), "a higher, shorter one does not undo it");
    h.sched.shared_cooldown(Some(0), None, 2, now + secs(8), now);
    assert_eq!(caps(&h, now + secs(6)), (1, 20), "the lower cap stays, the later end wins");
    assert_eq!(caps(&h, now + secs(9)), (3, 20));
    // With the peers: the lowered cap counts every node's sessions.
    let mut h = Harness::new(topology(&[3, 3], 2, 20, |_, _| true));
    let now = h.h.now;
    h.sched.set_peers(vec![1, 0], vec![0, 0]);
    h.sched.shared_cooldown(Some(0), None, 2, now + secs(5), now);
    assert_eq!(caps(&h, now), (1, 20));
    // Work sees it: admin 0 opens one session, admin 1 the rest.
    for _ in 0..500 {
        h.submit(0, Priority::Batch);
    }
    h.run_for(Duration::from_secs(3));
    assert_eq!(h.most_admin, [1, 3]);
}

/// A shared cool-down arriving after the local one ended (before a plan cleared it) is taken
/// as it is, not lowered further by the one that ended.
#[test]
fn a_shared_cooldown_after_an_ended_one_is_taken_as_it_is() {
    let mut h = Harness::new(topology(&[3], 1, 20, |_, _| true));
    let now = h.h.now;
    h.sched.shared_cooldown(Some(0), None, 0, now + Duration::from_secs(1), now);
    let later = now + Duration::from_secs(2);
    h.sched.shared_cooldown(Some(0), None, 2, later + Duration::from_secs(5), later);
    assert_eq!(h.sched.snapshot(later).admins[0].effective_cap, 2);
}

/// Several nodes: a node learns of the shared queue's work only from the census taken on each
/// beat (nothing is submitted to it); pages bring the work in and every job runs once.
#[test]
fn work_known_only_from_the_census_is_paged_in_and_runs_once() {
    let mut h = Harness::paged(topology(&[3, 3], 4, 20, |_, _| true), 4);
    let jobs: Vec<Job> = (0..200).map(|i| h.job(i % 4, Priority::Batch)).collect();
    h.store = Some(jobs.clone());
    let census = |h: &Harness| {
        let mut counts: HashMap<(LaneKey, Priority), usize> = HashMap::new();
        for j in h.store.as_ref().unwrap() {
            *counts.entry(((j.tenant, j.admin), j.priority)).or_default() += 1;
        }
        counts
    };
    for _ in 0..100 {
        let counts = census(&h);
        h.sched.census(&counts);
        h.sched.check_invariants().unwrap();
        h.run_for(200 * MS);
        if h.executed.len() == jobs.len() && h.sched.queued() == 0 {
            break;
        }
    }
    assert!(jobs.iter().all(|j| h.executed.get(&j.id) == Some(&1)), "every job ran once");
    assert_eq!(h.sched.queued(), 0);
    assert!(h.pages > 0 && h.failed.is_empty());
    // 200 × 20 ms over 6 sessions is under a second; a census every 200 ms keeps them fed.
    assert!(h.elapsed() < Duration::from_secs(3), "took {:?}", h.elapsed());
}

/// A node that sees an admin full because of the other nodes never asks the store for a slot,
/// so no refusal would say it waits: the scheduler names the admins its waiting lanes need, and
/// only those the others hold (not those it holds itself, nor free ones).
#[test]
fn the_admins_a_node_waits_for_are_those_the_others_hold() {
    let mut h = Harness::new(topology(&[3, 3], 2, 20, |_, _| true));
    h.sched.set_peers(vec![3, 0], vec![0, 0]);
    assert!(h.sched.starved_admins(h.h.now).is_empty(), "no work, no wait");
    for _ in 0..50 {
        h.submit(0, Priority::Batch);
    }
    assert!(h.sched.starved_admins(h.h.now).is_empty(), "admin 1 is free: the lane is not starved");
    h.sched.set_peers(vec![3, 3], vec![0, 0]);
    assert_eq!(h.sched.starved_admins(h.h.now), vec![0, 1], "both admins are held elsewhere");
    // Once the others let go of admin 1, this node opens a session and waits for nobody.
    h.sched.set_peers(vec![3, 0], vec![0, 0]);
    h.run_for(Duration::from_secs(1));
    assert!(h.sched.starved_admins(h.h.now).is_empty());
    assert!(h.failed.is_empty());
}
