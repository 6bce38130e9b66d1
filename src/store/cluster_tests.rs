//! Tests of what several nodes share in PostgreSQL (`store::cluster`), each in a scratch
//! schema of its own: admission under concurrent requests from several nodes, heartbeats,
//! cool-downs, demand, the shared queue's claims and census, and the rescue of a dead node.

use super::*;
use crate::store::scratch::ScratchSchema;
use crate::store::tests::item;
use crate::store::{NewInvocation, Status};
use futures::future::join_all;
use std::collections::{HashMap, HashSet};

const TTL: Duration = Duration::from_secs(60);

/// A PostgreSQL store in a schema of its own (the schema goes with the returned guard).
async fn pg() -> (Store, ScratchSchema) {
    let schema = ScratchSchema::create().await;
    let store = Store::connect(&schema.url()).await.unwrap();
    (store, schema)
}

async fn exec(store: &Store, sql: &str) {
    sqlx::query(sql).execute(store.postgres().unwrap()).await.unwrap();
}

async fn scalar(store: &Store, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(store.postgres().unwrap()).await.unwrap()
}

async fn take(store: &Store, node: &str, admin: &str, tenant: &str, caps: (u32, u32)) -> (Uuid, Admission) {
    let lease = Uuid::new_v4();
    (lease, store.acquire_lease(lease, node, admin, tenant, caps.0, caps.1, TTL).await.unwrap())
}

/// Runs `n` lease requests at once, request `i` from node `n{i % 3}` for `who(i)`
/// (admin, tenant).
async fn race(
    store: &Store,
    n: usize,
    caps: (u32, u32),
    who: impl Fn(usize) -> (String, String),
) -> Vec<(String, String, String, Admission)> {
    let tasks = (0..n).map(|i| {
        let (store, (admin, tenant)) = (store.clone(), who(i));
        let node = format!("n{}", i % 3);
        tokio::spawn(async move {
            let lease = Uuid::new_v4();
            let a = store.acquire_lease(lease, &node, &admin, &tenant, caps.0, caps.1, TTL).await.unwrap();
            (node, admin, tenant, a)
        })
    });
    join_all(tasks).await.into_iter().map(Result::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admins_cap_holds_exactly_under_concurrent_requests_from_three_nodes() {
    let (store, _schema) = pg().await;
    let results = race(&store, 30, (3, 20), |i| ("alice".into(), format!("t{}.example", i % 7))).await;
    let won: Vec<_> = results.iter().filter(|r| r.3 == Admission::Granted).collect();
    assert_eq!(won.len(), 3, "{results:?}");
    assert_eq!(scalar(&store, "SELECT count(*) FROM session_leases").await, 3);
    // A refusal is decided under the admin's lock after the three grants committed: it
    // carries exactly what the other nodes hold.
    for (node, _, tenant, a) in &results {
        if let Admission::Refused { others_admin, others_tenant } = a {
            let others = won.iter().filter(|w| &w.0 != node);
            assert_eq!(*others_admin as usize, others.clone().count());
            assert_eq!(*others_tenant as usize, others.filter(|w| &w.2 == tenant).count());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenants_cap_holds_exactly_under_concurrent_requests_for_many_admins() {
    let (store, _schema) = pg().await;
    let results = race(&store, 60, (3, 20), |i| (format!("admin{}", i % 30), "contoso.example".into())).await;
    let granted: Vec<_> = results.iter().filter(|r| r.3 == Admission::Granted).collect();
    assert_eq!(granted.len(), 20, "{results:?}");
    let mut per_admin: HashMap<&str, u32> = HashMap::new();
    for g in &granted {
        *per_admin.entry(&g.1).or_default() += 1;
    }
    assert!(per_admin.values().all(|&n| n <= 3), "{per_admin:?}");
    for (node, _, _, a) in &results {
        if let Admission::Refused { others_tenant, .. } = a {
            assert_eq!(*others_tenant as usize, granted.iter().filter(|g| &g.0 != node).count());
        }
    }
}

#[tokio::test]
async fn expired_leases_stop_counting_and_reaping_ones_count_as_another_nodes() {
    let (store, _schema) = pg().await;
    let caps = (3, 20);
    let (l1, _) = take(&store, "n1", "alice", "t1", caps).await;
    let (l2, _) = take(&store, "n1", "alice", "t1", caps).await;
    assert_eq!(take(&store, "n2", "alice", "t2", caps).await.1, Admission::Granted);
    // Full: n1 is told what n2 holds, n2 what n1 holds.
    assert_eq!(
        take(&store, "n1", "alice", "t1", caps).await.1,
        Admission::Refused { others_admin: 1, others_tenant: 0 }
    );
    assert_eq!(
        take(&store, "n2", "alice", "t1", caps).await.1,
        Admission::Refused { others_admin: 2, others_tenant: 2 }
    );
    // An expired lease frees its slot.
    exec(
        &store,
        &format!("UPDATE session_leases SET expires_at = now() - interval '1 second' WHERE lease_id = '{l1}'"),
    )
    .await;
    let (l3, a) = take(&store, "n1", "alice", "t1", caps).await;
    assert_eq!(a, Admission::Granted);
    // A lease n1 reaps (taken over from a dead node) counts, and as someone else's.
    exec(&store, &format!("UPDATE session_leases SET reaping = TRUE WHERE lease_id = '{l2}'")).await;
    assert_eq!(
        take(&store, "n1", "alice", "t1", caps).await.1,
        Admission::Refused { others_admin: 2, others_tenant: 1 }
    );
    let view = store.cluster_view("n1", TTL).await.unwrap();
    let mut peers: Vec<_> = view.peers.iter().map(|p| (p.tenant.as_str(), p.n)).collect();
    peers.sort();
    assert_eq!(peers, [("t1", 1), ("t2", 1)], "n1's reaping lease and n2's lease");
    // Released, it counts no more.
    store.release_leases(&[l2.to_string(), l3.to_string()]).await.unwrap();
    assert_eq!(scalar(&store, "SELECT count(*) FROM session_leases WHERE expires_at > now()").await, 1);
    assert_eq!(take(&store, "n3", "alice", "t3", caps).await.1, Admission::Granted);
}

#[tokio::test]
async fn a_tiny_ttl_lease_expires_by_itself() {
    let (store, _schema) = pg().await;
    let lease = Uuid::new_v4();
    let a = store.acquire_lease(lease, "n1", "alice", "t1", 1, 5, Duration::from_millis(50)).await.unwrap();
    assert_eq!(a, Admission::Granted);
    assert!(matches!(take(&store, "n2", "alice", "t1", (1, 5)).await.1, Admission::Refused { .. }));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(take(&store, "n2", "alice", "t1", (1, 5)).await.1, Admission::Granted);
}

#[tokio::test]
async fn a_shared_cooldown_lowers_the_cap_for_every_node() {
    let (store, _schema) = pg().await;
    let caps = (5, 5);
    take(&store, "n1", "alice", "t1", caps).await;
    take(&store, "n2", "alice", "t2", caps).await;
    // n1's third open was refused by the service (its lease is not counted).
    let (refused, _) = take(&store, "n1", "alice", "t1", caps).await;
    store.share_cooldown("admin:alice", refused, TTL).await.unwrap();
    store.release_leases(&[refused.to_string()]).await.unwrap();
    for node in ["n1", "n2", "n3"] {
        assert!(matches!(take(&store, node, "alice", "t3", caps).await.1, Admission::Refused { .. }), "{node}");
    }
    // Another admin is not lowered; a tenant cool-down lowers the tenant for all admins.
    assert_eq!(take(&store, "n3", "bob", "t1", caps).await.1, Admission::Granted);
    store.share_cooldown("tenant:t1", Uuid::new_v4(), TTL).await.unwrap();
    assert!(matches!(take(&store, "n2", "carol", "t1", caps).await.1, Admission::Refused { .. }));
    assert_eq!(take(&store, "n2", "carol", "t2", caps).await.1, Admission::Granted);
    // Once the cool-down is over the full caps are back.
    exec(&store, "UPDATE cooldowns SET until_at = now() - interval '1 second'").await;
    assert_eq!(take(&store, "n3", "alice", "t3", caps).await.1, Admission::Granted);
    assert_eq!(take(&store, "n3", "dave", "t1", caps).await.1, Admission::Granted);
}

#[tokio::test]
async fn share_cooldown_keeps_the_lower_cap_and_the_later_end() {
    let (store, _schema) = pg().await;
    let cooldown = |view: &ClusterView| {
        let c = view.cooldowns.iter().find(|c| c.scope == "admin:alice").expect("in force");
        (c.cap, c.remaining.as_secs())
    };
    let leases: Vec<Uuid> =
        join_all((0..3).map(|_| take(&store, "n1", "alice", "t1", (9, 9)))).await.into_iter().map(|(l, _)| l).collect();
    store.share_cooldown("admin:alice", Uuid::new_v4(), Duration::from_secs(100)).await.unwrap();
    let view = store.cluster_view("n2", TTL).await.unwrap();
    assert!(matches!(cooldown(&view), (3, 98..=100)), "{:?}", view.cooldowns);
    // Fewer held now, shorter: the lower cap wins, the later end stays.
    store.release_leases(&[leases[0].to_string()]).await.unwrap();
    store.share_cooldown("admin:alice", Uuid::new_v4(), Duration::from_secs(10)).await.unwrap();
    assert!(matches!(cooldown(&store.cluster_view("n2", TTL).await.unwrap()), (2, 98..=100)));
    // More held now (the cool-down refuses them through `acquire_lease`), longer: the cap
    // stays low, the end moves out.
    assert!(matches!(take(&store, "n1", "alice", "t1", (9, 9)).await.1, Admission::Refused { .. }));
    exec(
        &store,
        "INSERT INTO session_leases (lease_id, node_id, admin, tenant, expires_at) VALUES \
         ('x1', 'n3', 'alice', 't1', now() + interval '1 minute'), ('x2', 'n3', 'alice', 't1', now() + interval '1 minute')",
    )
    .await;
    store.share_cooldown("admin:alice", Uuid::new_v4(), Duration::from_secs(300)).await.unwrap();
    assert!(matches!(cooldown(&store.cluster_view("n2", TTL).await.unwrap()), (2, 298..=300)));
    // One that ended is replaced whole.
    exec(&store, "UPDATE cooldowns SET until_at = now() - interval '1 second'").await;
    assert!(store.cluster_view("n2", TTL).await.unwrap().cooldowns.is_empty(), "an ended one is not reported");
    store.share_cooldown("admin:alice", Uuid::new_v4(), Duration::from_secs(10)).await.unwrap();
    let view = store.cluster_view("n2", TTL).await.unwrap();
    assert!(matches!(cooldown(&view), (4, 8..=10)), "{:?}", view.cooldowns);
}

#[tokio::test]
async fn a_beat_renews_only_the_nodes_own_live_leases() {
    let (store, _schema) = pg().await;
    let short = Duration::from_secs(5);
    let mut mine = Vec::new();
    for _ in 0..4 {
        let lease = Uuid::new_v4();
        store.acquire_lease(lease, "n1", "alice", "t1", 9, 9, short).await.unwrap();
        mine.push(lease.to_string());
    }
    let (theirs, _) = take(&store, "n2", "alice", "t1", (9, 9)).await;
    exec(
        &store,
        &format!("UPDATE session_leases SET expires_at = now() - interval '1 second' WHERE lease_id = '{}'", mine[2]),
    )
    .await;
    exec(&store, &format!("UPDATE session_leases SET reaping = TRUE WHERE lease_id = '{}'", mine[3])).await;
    let mut renewed = store.beat("n1", Duration::from_secs(600)).await.unwrap();
    renewed.sort();
    let mut live = mine[..2].to_vec();
    live.sort();
    assert_eq!(renewed, live);
    let long = |id: &str| {
        format!("SELECT count(*) FROM session_leases WHERE lease_id = '{id}' AND expires_at > now() + interval '500 seconds'")
    };
    for id in &mine[..2] {
        assert_eq!(scalar(&store, &long(id)).await, 1, "renewed on the database clock");
    }
    for id in [&mine[2], &mine[3], &theirs.to_string()] {
        assert_eq!(scalar(&store, &long(id)).await, 0, "{id} is not renewed");
    }
    assert_eq!(scalar(&store, "SELECT count(*) FROM nodes WHERE node_id = 'n1'").await, 1, "the beat is recorded");
}

fn lane_item(tenant: &str, admin: Option<&str>, priority: &str) -> NewInvocation {
    let mut new = item(None, "Get-Mailbox");
    // Time-ordered, as the API makes them: the queue's order is the ids' order.
    new.accepted.id = Uuid::now_v7();
    new.accepted.tenant = tenant.into();
    new.accepted.admin = admin.map(str::to_string);
    new.accepted.priority = priority.into();
    new
}

async fn insert(store: &Store, items: &[NewInvocation]) -> Vec<Uuid> {
    for chunk in items.chunks(50) {
        join_all(chunk.iter().map(|i| store.insert_invocation(i))).await.into_iter().for_each(|r| {
            r.unwrap();
        });
    }
    items.iter().map(|i| i.accepted.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_paging_one_lane_at_once_never_take_the_same_invocation() {
    let (store, _schema) = pg().await;
    let ids = insert(&store, &(0..300).map(|_| lane_item("t1", None, "batch")).collect::<Vec<_>>()).await;
    // Another lane that must not be touched.
    insert(&store, &(0..5).map(|_| lane_item("t1", Some("alice"), "batch")).collect::<Vec<_>>()).await;
    let claimer = |node: &'static str| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut mine: Vec<Uuid> = Vec::new();
            loop {
                let page = store.claim_page(node, "t1", None, "batch", &mine, 7).await.unwrap();
                assert!(page.len() <= 7, "a page of {}", page.len());
                if page.is_empty() {
                    return mine;
                }
                for r in &page {
                    assert_eq!((r.accepted.tenant.as_str(), r.accepted.admin.as_deref()), ("t1", None));
                    assert!(!mine.contains(&r.accepted.id), "excluded ids are not brought again");
                }
                mine.extend(page.iter().map(|r| r.accepted.id));
            }
        })
    };
    let (a, b) = (claimer("n1"), claimer("n2"));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let (sa, sb): (HashSet<Uuid>, HashSet<Uuid>) = (a.iter().copied().collect(), b.iter().copied().collect());
    assert!(sa.is_disjoint(&sb), "{} invocations taken by both", sa.intersection(&sb).count());
    assert_eq!(a.len() + b.len(), 300);
    assert_eq!(sa.union(&sb).copied().collect::<HashSet<_>>(), ids.into_iter().collect());
    assert!(!a.is_empty() && !b.is_empty(), "both got work: {} and {}", a.len(), b.len());
    let claimed_by = |node: &str| format!("SELECT count(*) FROM invocations WHERE node = '{node}'");
    assert_eq!(scalar(&store, &claimed_by("n1")).await as usize, a.len());
    assert_eq!(scalar(&store, &claimed_by("n2")).await as usize, b.len());
}

fn census_of(counts: Vec<crate::store::LaneCount>) -> HashMap<(String, Option<String>, String), i64> {
    counts.into_iter().map(|c| ((c.tenant, c.admin, c.priority), c.count)).collect()
}

#[tokio::test]
async fn a_page_skips_other_nodes_claims_and_the_census_counts_unclaimed_and_own() {
    let (store, _schema) = pg().await;
    let ids = insert(&store, &(0..10).map(|_| lane_item("t1", None, "batch")).collect::<Vec<_>>()).await;
    let mut pinned = lane_item("t1", None, "batch");
    pinned.node = Some("n3".into());
    insert(&store, &[pinned, lane_item("t2", Some("alice"), "interactive")]).await;
    let first = store.claim_page("n1", "t1", None, "batch", &[], 4).await.unwrap();
    assert_eq!(first.iter().map(|r| r.accepted.id).collect::<Vec<_>>(), ids[..4], "oldest first");
    let lane = |n: i64| (("t1".to_string(), None, "batch".to_string()), n);
    let t2 = (("t2".to_string(), Some("alice".to_string()), "interactive".to_string()), 1);
    assert_eq!(census_of(store.census("n1").await.unwrap()), HashMap::from([lane(10), t2.clone()]), "own + unclaimed");
    assert_eq!(census_of(store.census("n2").await.unwrap()), HashMap::from([lane(6), t2.clone()]));
    assert_eq!(census_of(store.census("n3").await.unwrap()), HashMap::from([lane(7), t2.clone()]), "its pinned one");
    let second = store.claim_page("n2", "t1", None, "batch", &[], 100).await.unwrap();
    assert_eq!(second.iter().map(|r| r.accepted.id).collect::<Vec<_>>(), ids[4..], "not n1's nor n3's");
    // A page asked again brings the node's own claims back (but what it excludes).
    let again = store.claim_page("n1", "t1", None, "batch", &ids[..1], 100).await.unwrap();
    assert_eq!(again.iter().map(|r| r.accepted.id).collect::<Vec<_>>(), ids[1..4]);
    // Running work is no longer in the census.
    assert!(store.clone().for_node("n1").mark_running(ids[0], 1, "s1", "alice").await.unwrap());
    assert_eq!(census_of(store.census("n1").await.unwrap()), HashMap::from([lane(3), t2]));
}

#[tokio::test]
async fn unclaim_hands_queued_work_back_but_keeps_redacted_and_running_work() {
    let (store, _schema) = pg().await;
    let mut items: Vec<_> = (0..5).map(|_| lane_item("t1", None, "batch")).collect();
    items.iter_mut().for_each(|i| i.node = Some("n1".into()));
    items[3].accepted.redacted = true;
    let ids = insert(&store, &items).await;
    insert(
        &store,
        &[{
            let mut other = lane_item("t1", None, "batch");
            other.node = Some("n2".into());
            other
        }],
    )
    .await;
    assert!(store.clone().for_node("n1").mark_running(ids[4], 1, "s1", "alice").await.unwrap());
    assert_eq!(store.unclaim_queued("n1").await.unwrap(), 3);
    assert_eq!(scalar(&store, "SELECT count(*) FROM invocations WHERE node IS NULL").await, 3);
    let kept = scalar(
        &store,
        &format!("SELECT count(*) FROM invocations WHERE node = 'n1' AND id IN ('{}', '{}')", ids[3], ids[4]),
    )
    .await;
    assert_eq!(kept, 2, "the redacted one (its secrets are only here) and the running one stay");
    assert_eq!(scalar(&store, "SELECT count(*) FROM invocations WHERE node = 'n2'").await, 1, "another node's stay");
}

#[tokio::test]
async fn leave_drops_the_nodes_leases_demand_and_heartbeat_only() {
    let (store, _schema) = pg().await;
    for node in ["n1", "n2"] {
        store.beat(node, TTL).await.unwrap();
        take(&store, node, "alice", "t1", (9, 9)).await;
        store.record_demand("bob", node, TTL).await.unwrap();
    }
    store.leave("n1").await.unwrap();
    for table in ["session_leases", "lease_demand", "nodes"] {
        let left = |n: &str| format!("SELECT count(*) FROM {table} WHERE node_id = '{n}'");
        assert_eq!(scalar(&store, &left("n1")).await, 0, "{table}");
        assert_eq!(scalar(&store, &left("n2")).await, 1, "{table}");
    }
    assert_eq!(store.cluster_view("n2", TTL).await.unwrap().live_nodes, 1);
}

/// What a draining node claimed after its hand-over (a page read, a retry put back) must not
/// stay its own once it has left: with its heartbeat row gone, no rescue would find it.
#[tokio::test]
async fn leave_hands_back_queued_claims_made_after_the_drain() {
    let (store, _schema) = pg().await;
    store.beat("n1", TTL).await.unwrap();
    let mut items: Vec<_> = (0..3).map(|_| lane_item("t1", None, "batch")).collect();
    items.iter_mut().for_each(|i| i.node = Some("n1".into()));
    items[2].accepted.redacted = true;
    insert(&store, &items).await;
    store.leave("n1").await.unwrap();
    assert_eq!(scalar(&store, "SELECT count(*) FROM invocations WHERE node IS NULL").await, 2);
    assert_eq!(
        scalar(&store, "SELECT count(*) FROM invocations WHERE node = 'n1' AND redacted").await,
        1,
        "redacted work stays: its secret values were only on that node"
    );
}

#[tokio::test]
async fn the_view_shows_the_others_leases_demand_and_live_nodes_but_not_its_own() {
    let (store, _schema) = pg().await;
    for node in ["n1", "n2", "n3"] {
        store.beat(node, TTL).await.unwrap();
    }
    take(&store, "n1", "alice", "t1", (9, 9)).await;
    take(&store, "n2", "alice", "t1", (9, 9)).await;
    take(&store, "n2", "alice", "t1", (9, 9)).await;
    take(&store, "n2", "bob", "t2", (9, 9)).await;
    store.record_demand("alice", "n1", TTL).await.unwrap();
    store.record_demand("bob", "n2", TTL).await.unwrap();
    store.record_demand("carol", "n3", Duration::from_millis(1)).await.unwrap();
    store.record_demand("alice", "n1", TTL).await.unwrap(); // again: still one row
    exec(&store, "UPDATE nodes SET heartbeat_at = now() - interval '1 hour' WHERE node_id = 'n3'").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let view = store.cluster_view("n1", TTL).await.unwrap();
    let mut peers: Vec<_> = view.peers.iter().map(|p| (p.admin.as_str(), p.tenant.as_str(), p.n)).collect();
    peers.sort();
    assert_eq!(peers, [("alice", "t1", 2), ("bob", "t2", 1)]);
    assert_eq!(view.demand, ["bob"], "its own demand and an expired one are not reported");
    assert_eq!(view.live_nodes, 2);
    let view = store.cluster_view("n2", TTL).await.unwrap();
    assert_eq!(view.demand, ["alice"]);
    assert_eq!(view.peers.iter().map(|p| p.n).sum::<u32>(), 1);
    assert_eq!(scalar(&store, "SELECT count(*) FROM lease_demand").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_node_is_rescued_once_and_whole() {
    let (store, _schema) = pg().await;
    for node in ["dead", "r1", "r2"] {
        store.beat(node, TTL).await.unwrap();
    }
    let (l1, _) = take(&store, "dead", "alice", "t1", (9, 9)).await;
    let (l2, _) = take(&store, "dead", "bob", "t2", (9, 9)).await;
    let (gone, _) = take(&store, "dead", "alice", "t1", (9, 9)).await;
    exec(
        &store,
        &format!("UPDATE session_leases SET expires_at = now() - interval '1 second' WHERE lease_id = '{gone}'"),
    )
    .await;
    let (survivor, _) = take(&store, "r1", "alice", "t1", (9, 9)).await;
    let shell = OpenShell {
        shell_id: "shell-1".into(),
        node: "dead".into(),
        admin: "alice".into(),
        tenant: "t1".into(),
        token: "tok".into(),
    };
    store.remember_shell(&shell).await.unwrap();
    let mut items: Vec<_> = (0..6).map(|_| lane_item("t1", None, "batch")).collect();
    items.iter_mut().for_each(|i| i.node = Some("dead".into()));
    items[2].accepted.redacted = true;
    let ids = insert(&store, &items).await;
    let dead = store.clone().for_node("dead");
    assert!(dead.mark_running(ids[4], 1, "s1", "alice").await.unwrap());
    assert!(dead.mark_running(ids[5], 1, "s2", "alice").await.unwrap());
    // Alive (beat within dead_after): nobody takes it.
    assert!(store.rescue_dead("r1", TTL, TTL).await.unwrap().dead.is_empty());
    exec(&store, "UPDATE nodes SET heartbeat_at = now() - interval '1 hour' WHERE node_id = 'dead'").await;

    let rescue = |node: &'static str| {
        let store = store.clone();
        tokio::spawn(async move { (node, store.rescue_dead(node, TTL, Duration::from_secs(600)).await.unwrap()) })
    };
    let results = join_all([rescue("r1"), rescue("r2")]).await;
    let results: Vec<_> = results.into_iter().map(Result::unwrap).collect();
    let winners: Vec<_> = results.iter().filter(|(_, r)| !r.dead.is_empty()).collect();
    assert_eq!(winners.len(), 1, "exactly one rescuer takes the dead node over");
    let (rescuer, r) = winners[0];
    let loser = results.iter().find(|(n, _)| n != rescuer).unwrap();
    assert!(loser.1.leases.is_empty() && loser.1.running.is_empty() && loser.1.shells.is_empty());
    assert_eq!(r.dead, ["dead"]);

    let mut leases: Vec<_> = r.leases.iter().map(|(id, a, t)| (id.clone(), a.as_str(), t.as_str())).collect();
    leases.sort();
    let mut want = vec![(l1.to_string(), "alice", "t1"), (l2.to_string(), "bob", "t2")];
    want.sort();
    assert_eq!(leases, want, "only its live leases");
    let reaping = format!(
        "SELECT count(*) FROM session_leases WHERE node_id = '{rescuer}' AND reaping \
         AND expires_at > now() + interval '500 seconds' AND lease_id IN ('{l1}', '{l2}')"
    );
    assert_eq!(scalar(&store, &reaping).await, 2, "they are the rescuer's reaping leases, for the reap ttl");
    assert_eq!(scalar(&store, "SELECT count(*) FROM session_leases WHERE node_id = 'dead'").await, 0);
    assert_eq!(
        scalar(&store, &format!("SELECT count(*) FROM session_leases WHERE lease_id = '{survivor}' AND NOT reaping"))
            .await,
        1
    );
    // They still count against the caps, as someone else's for the rescuer.
    assert_eq!(
        take(&store, rescuer, "bob", "t2", (1, 9)).await.1,
        Admission::Refused { others_admin: 1, others_tenant: 1 }
    );

    assert_eq!(r.shells.len(), 1);
    assert_eq!((r.shells[0].shell_id.as_str(), r.shells[0].node.as_str()), ("shell-1", *rescuer));
    assert_eq!(store.open_shells(rescuer).await.unwrap().len(), 1);
    assert!(store.open_shells("dead").await.unwrap().is_empty());

    let mut running: Vec<_> = r.running.iter().map(|i| (i.accepted.id, i.status.as_str())).collect();
    running.sort();
    let mut want = vec![(ids[2], "queued"), (ids[4], "running"), (ids[5], "running")];
    want.sort();
    assert_eq!(running, want, "its running work and the redacted queued item (secrets gone with it)");
    let owned = |node: &str| format!("SELECT count(*) FROM invocations WHERE node = '{node}'");
    assert_eq!(scalar(&store, &owned(rescuer)).await, 3);
    assert_eq!(scalar(&store, "SELECT count(*) FROM invocations WHERE node IS NULL AND status = 'queued'").await, 3);
    assert_eq!(scalar(&store, &owned("dead")).await, 0);
    assert_eq!(scalar(&store, "SELECT count(*) FROM nodes WHERE node_id = 'dead'").await, 0);

    // Requeued, a running read is anyone's again.
    store.requeue_rescued(ids[4]).await.unwrap();
    let back = store.get(ids[4]).await.unwrap().unwrap();
    assert_eq!((back.status, back.session_id), (Status::Queued, None));
    assert_eq!(
        scalar(&store, &format!("SELECT count(*) FROM invocations WHERE node IS NULL AND id = '{}'", ids[4])).await,
        1
    );
    // Nothing is left to rescue.
    assert!(store.rescue_dead("r2", TTL, TTL).await.unwrap().dead.is_empty());
}

#[tokio::test]
async fn sqlite_is_one_node_and_says_so() {
    let store = Store::connect("sqlite::memory:").await.unwrap();
    let needs = |r: Result<(), StoreError>| assert!(matches!(r, Err(StoreError::NeedsPostgres)), "{r:?}");
    let id = Uuid::new_v4();
    needs(store.beat("n", TTL).await.map(drop));
    needs(store.acquire_lease(id, "n", "a", "t", 1, 1, TTL).await.map(drop));
    needs(store.release_leases(&[]).await);
    needs(store.record_demand("a", "n", TTL).await);
    needs(store.share_cooldown("admin:a", id, TTL).await);
    needs(store.cluster_view("n", TTL).await.map(drop));
    needs(store.census("n").await.map(drop));
    needs(store.claim_page("n", "t", None, "batch", &[], 1).await.map(drop));
    needs(store.unclaim_queued("n").await.map(drop));
    needs(store.notify_queued().await);
    needs(store.notify_channel().await.map(drop));
    needs(store.leave("n").await);
    needs(store.rescue_dead("n", TTL, TTL).await.map(drop));
    needs(store.requeue_rescued(id).await);
    needs(store.wakeups().await.map(drop));
    assert!(!store.is_shared());
}

#[tokio::test]
async fn releases_and_stored_work_wake_the_listeners_of_this_schema() {
    let (store, _schema) = pg().await;
    let mut wakeups = store.wakeups().await.unwrap();
    let (lease, _) = take(&store, "n1", "alice", "t1", (9, 9)).await;
    store.release_leases(&[lease.to_string()]).await.unwrap();
    store.notify_queued().await.unwrap();
    for want in ["lease", "queued"] {
        let got = tokio::time::timeout(Duration::from_secs(5), wakeups.next()).await.expect("woken").unwrap();
        assert_eq!(got.as_deref(), Some(want));
    }
    // Another schema's nodes do not hear them.
    let (other, _other_schema) = pg().await;
    assert_ne!(other.notify_channel().await.unwrap(), store.notify_channel().await.unwrap());
}

#[tokio::test]
async fn the_clusters_transactions_set_their_idle_timeout_for_themselves_only() {
    let (_store, schema) = pg().await;
    // One connection, so the statement after the commit runs where the transaction ran.
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&schema.url()).await.unwrap();
    let show = "SHOW idle_in_transaction_session_timeout";
    let before: String = sqlx::query_scalar(show).fetch_one(&pool).await.unwrap();
    let mut tx = begin(&pool).await.unwrap();
    let inside: String = sqlx::query_scalar(show).fetch_one(&mut *tx).await.unwrap();
    assert_eq!(inside, "10s", "a node hung inside it cannot keep its locks");
    tx.commit().await.unwrap();
    let after: String = sqlx::query_scalar(show).fetch_one(&pool).await.unwrap();
    assert_eq!(after, before, "nothing stays on the connection (behind a pooler, another client's next)");
}
