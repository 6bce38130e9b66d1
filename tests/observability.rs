//! The ops pack against the real tools: the Grafana dashboard (`deploy/grafana/psbroker.json`)
//! and the alert rules (`deploy/prometheus/alerts.yml`).
//!
//! * `alert_rules_pass_promtool`: `promtool check rules` and `promtool test rules` (the unit
//!   tests in `alerts_test.yml`, one or more per rule). promtool comes from Debian's
//!   `prometheus` package; without it the test fails, naming the package.
//! * `dashboard_is_importable_and_explains_itself`: the JSON's shape: the `datasource` and `node`
//!   variables, every panel with a title, a description, a unit and the node filter on every
//!   psbroker series, a layout without overlaps.
//! * `dashboard_and_alerts_work_against_a_real_prometheus`: the real daemon (simulated service
//!   on the real wire protocol) and a real Prometheus scraping it every second, plus a target that
//!   is down; traffic with failures (a wrong password, an unknown cmdlet, a tenant with remote
//!   PowerShell off, shell quotas lower than the configured caps, injected 503s); then every
//!   panel's query (variables substituted, for all nodes and for the one node) and every alert's
//!   expression through Prometheus' HTTP API: each parses, each that should have data has data
//!   (the few that may or must be empty are listed with the reason), every rule loads with its
//!   runbook, and the psbroker metric names they use are exactly ones the daemon exports — and
//!   every metric it exports has a panel.

mod common;

use common::daemon::Daemon;
use common::tools::{self, KillOnDrop};
use serde_json::{json, Value as Json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(path)
}

fn promtool() -> PathBuf {
    tools::require("promtool", "PSBROKER_PROMTOOL", "prometheus")
}

// ---- promtool ----------------------------------------------------------------------------

#[test]
fn alert_rules_pass_promtool() {
    let promtool = promtool();
    let check = tools::run_ok(
        Command::new(&promtool).args(["check", "rules"]).arg(deploy("prometheus/alerts.yml")),
        "promtool check rules",
    );
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(said.contains(&format!("SUCCESS: {} rules found", alert_names().len())), "{said}");
    let test = tools::run_ok(
        Command::new(&promtool).args(["test", "rules"]).arg(deploy("prometheus/alerts_test.yml")),
        "promtool test rules",
    );
    assert!(String::from_utf8_lossy(&test.stdout).contains("SUCCESS"));
}

/// The alerts of alerts.yml, by name, read off its `- alert:` lines.
fn alert_names() -> BTreeSet<String> {
    let text = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    text.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).map(|n| n.trim().to_string()).collect()
}

#[test]
fn every_alert_has_unit_tests_that_fire_it_and_keep_it_quiet() {
    let tests = std::fs::read_to_string(deploy("prometheus/alerts_test.yml")).unwrap();
    for name in alert_names() {
        let cases: Vec<&str> =
            tests.split("- eval_time:").filter(|c| c.contains(&format!("alertname: {name}\n"))).collect();
        assert!(cases.iter().any(|c| c.contains("exp_labels")), "no test where {name} fires");
        assert!(cases.iter().any(|c| c.contains("exp_alerts: []")), "no test where {name} stays quiet");
    }
}

// ---- the dashboard's shape ---------------------------------------------------------------

fn dashboard() -> Json {
    serde_json::from_str(&std::fs::read_to_string(deploy("grafana/psbroker.json")).unwrap())
        .expect("deploy/grafana/psbroker.json is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(d: &Json) -> Vec<&Json> {
    let mut all = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        all.push(p);
        if let Some(nested) = p["panels"].as_array() {
            all.extend(nested);
        }
    }
    all
}

struct Query {
    panel: String,
    ref_id: String,
    expr: String,
}

fn dashboard_queries(d: &Json) -> Vec<Query> {
    let mut queries = Vec::new();
    for p in panels(d).into_iter().filter(|p| p["type"] != "row") {
        for t in p["targets"].as_array().expect("targets") {
            queries.push(Query {
                panel: p["title"].as_str().unwrap().to_string(),
                ref_id: t["refId"].as_str().unwrap().to_string(),
                expr: t["expr"].as_str().unwrap().to_string(),
            });
        }
    }
    queries
}

/// `(name, what follows it)` for every `psbroker_*` identifier in a PromQL expression.
fn metric_refs(expr: &str) -> Vec<(String, &str)> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut refs = Vec::new();
    for (at, _) in expr.match_indices("psbroker_") {
        if expr[..at].chars().next_back().is_some_and(ident) {
            continue;
        }
        let name: String = expr[at..].chars().take_while(|&c| ident(c)).collect();
        let rest = &expr[at + name.len()..];
        refs.push((name, rest));
    }
    refs
}

#[test]
fn dashboard_is_importable_and_explains_itself() {
    let d = dashboard();
    assert_eq!(d["uid"], "psbroker");
    assert!(d["title"].is_string() && d["schemaVersion"].as_u64().unwrap() >= 36);
    assert!(d.get("__inputs").is_none(), "importable as is: the data source is a variable, not an import input");
    let vars = d["templating"]["list"].as_array().unwrap();
    let var = |name: &str| vars.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no ${name} variable"));
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    let node = var("node");
    assert_eq!((&node["type"], &node["multi"], &node["includeAll"]), (&json!("query"), &json!(true), &json!(true)));
    assert_eq!(node["allValue"], ".*");
    assert!(node["definition"].as_str().unwrap().contains("instance)"), "node is the scrape instance label");

    let mut ids = BTreeSet::new();
    let mut cells: BTreeMap<(u64, u64), String> = BTreeMap::new();
    for p in panels(&d) {
        let title = p["title"].as_str().filter(|t| !t.is_empty()).expect("every panel has a title").to_string();
        assert!(ids.insert(p["id"].as_u64().expect("panel id")), "{title}: duplicate id");
        let g = &p["gridPos"];
        let (x, y, w, h) =
            (g["x"].as_u64().unwrap(), g["y"].as_u64().unwrap(), g["w"].as_u64().unwrap(), g["h"].as_u64().unwrap());
        assert!(x + w <= 24, "{title}: wider than the grid");
        for cx in x..x + w {
            for cy in y..y + h {
                if let Some(other) = cells.insert((cx, cy), title.clone()) {
                    panic!("{title} overlaps {other}");
                }
            }
        }
        if p["type"] == "row" {
            continue;
        }
        let description = p["description"].as_str().unwrap_or_default();
        assert!(description.len() >= 40, "{title}: a description that says what the panel shows");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        assert!(p["fieldConfig"]["defaults"]["unit"].as_str().is_some_and(|u| !u.is_empty()), "{title}: a unit");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        let refs: BTreeSet<&str> = targets.iter().map(|t| t["refId"].as_str().unwrap()).collect();
        assert_eq!(refs.len(), targets.len(), "{title}: refIds are unique");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            let expr = t["expr"].as_str().unwrap();
            let mut uses = metric_refs(expr);
            // Prometheus' own `up` of the psbroker targets is the one other series a panel reads.
            uses.extend(expr.match_indices("up{").map(|(at, _)| ("up".to_string(), &expr[at + 2..])));
            assert!(!uses.is_empty(), "{title}: {expr} reads no psbroker metric");
            for (name, rest) in uses {
                let selector = rest.strip_prefix('{').and_then(|r| r.split('}').next());
                assert!(
                    selector.is_some_and(|s| s.contains(r#"instance=~"$node""#)),
                    "{title}: {name} is not filtered by the node variable in {expr}"
                );
            }
        }
    }
}

// ---- against a real Prometheus -----------------------------------------------------------

/// What a dashboard query must return after the test's traffic.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// At least one series with a finite value.
    Data,
    /// At least one series with a value above zero.
    Positive,
    /// Allowed to be empty, for this reason.
    MayBeEmpty(&'static str),
    /// Must be empty, for this reason.
    Empty(&'static str),
}

/// Dashboard queries that need not have data here. Everything else must.
const PANELS_MAY_BE_EMPTY: &[(&str, &str, &str)] = &[
    (
        "Tenant sessions vs cap (top 10)",
        "B",
        "lists only tenants below their cap at that instant; here their cool-downs last 3 s and may have ended",
    ),
    (
        "Identity failures",
        "A",
        "token requests go to an identity provider only for OAuth admins (REST connector); these admins use Basic over WS-Man",
    ),
];

/// Dashboard queries whose value the traffic makes positive (checked for all nodes).
const PANELS_POSITIVE: &[(&str, &str)] = &[
    ("Ready nodes", "A"),
    ("Targets down", "A"),
    ("Invocations / s", "A"),
    ("Failed share", "A"),
    ("Session closes by reason", "A"),
];

fn panel_expectation(panel: &str, ref_id: &str) -> Expect {
    if let Some(&(_, _, why)) = PANELS_MAY_BE_EMPTY.iter().find(|(p, r, _)| *p == panel && *r == ref_id) {
        Expect::MayBeEmpty(why)
    } else if PANELS_POSITIVE.contains(&(panel, ref_id)) {
        Expect::Positive
    } else {
        Expect::Data
    }
}

/// Every alert, and what its expression returns after the traffic. The list is exactly the
/// rules Prometheus loaded: a new rule must say here what this test expects of it.
const ALERT_EXPECTATIONS: &[(&str, Expect)] = &[
    ("PsbrokerQueueStalled", Expect::Empty("invocations finish here")),
    ("PsbrokerOldestQueuedHigh", Expect::Empty("nothing waits 15 minutes in a test")),
    ("PsbrokerLogonFailures", Expect::Data),
    ("PsbrokerAdminCapLowered", Expect::Data),
    ("PsbrokerTenantCapLowered", Expect::Data),
    (
        "PsbrokerQuotaOrThrottling",
        Expect::MayBeEmpty("needs more than 5 quota faults in 10 minutes; a short run's count depends on timing"),
    ),
    ("PsbrokerFailureRateHigh", Expect::Data),
    ("PsbrokerNotReady", Expect::Empty("the daemon is ready")),
    ("PsbrokerTargetDown", Expect::Data),
    ("PsbrokerNodeFenced", Expect::Empty("one node on SQLite: never fenced")),
    ("PsbrokerMetricsAbsent", Expect::Empty("the daemon exports its metrics")),
];

/// Admins alice and bob (their shells capped at 2 by the simulated service while the
/// configuration says 3: the service's quota lowers their effective caps), mallory (a wrong
/// password); tenants with 2 shells each at the service (20 configured) and tailspin with remote
/// PowerShell off; 5 % of commands answered 503 (retried); sessions retired after 6 commands.
const DAEMON_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
max_wait_seconds = 20

[scheduler]
quota_cooldown_seconds = 3
auth_failure_cooldown_seconds = 1
retry_backoff_initial_ms = 100
retry_backoff_max_ms = 1000

[metrics]
tenant_labels = true

[profiles.default]
kind = "wsman"
connection_uri = "http://{simulator}/powershell-liveid?DelegatedOrg={tenant}"
allow_plain_http = true
max_commands_per_session = 6

[[admins]]
name = "alice"
upn = "alice@partner.onmicrosoft.com"
credential = "literal:pw-alice"

[[admins]]
name = "bob"
upn = "bob@partner.onmicrosoft.com"
credential = "literal:pw-bob"

[[admins]]
name = "mallory"
upn = "mallory@partner.onmicrosoft.com"
credential = "literal:not-the-password"

[[tenants]]
domain = "contoso.onmicrosoft.com"

[[tenants]]
domain = "fabrikam.onmicrosoft.com"

[[tenants]]
domain = "tailspin.onmicrosoft.com"

[simulator]
listen = "127.0.0.1:0"
open_latency_ms = 20
command_latency_ms = 40
close_latency_ms = 2
user_shell_cap = 2
tenant_shell_cap = 2
mailboxes_per_tenant = 5
remote_powershell_disabled = ["tailspin.onmicrosoft.com"]

[[simulator.accounts]]
upn = "alice@partner.onmicrosoft.com"
password = "pw-alice"

[[simulator.accounts]]
upn = "bob@partner.onmicrosoft.com"
password = "pw-bob"

[[simulator.accounts]]
upn = "mallory@partner.onmicrosoft.com"
password = "the-real-password"

[simulator.faults]
seed = 11
http_503 = 0.05
retry_after_seconds = 1
actions = ["Command", "Receive"]
"#;

struct Prometheus {
    _child: KillOnDrop,
    url: String,
    http: reqwest::Client,
    log: PathBuf,
}

impl Prometheus {
    /// Starts Debian's prometheus on a free loopback port (picked by binding and releasing;
    /// another attempt on the rare collision), with its data in `dir`.
    async fn start(dir: &Path, config: &Path) -> Prometheus {
        let bin = tools::require("prometheus", "PSBROKER_PROMETHEUS", "prometheus");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        for attempt in 0..5 {
            let port = tools::free_port();
            let log = dir.join(format!("prometheus-{attempt}.log"));
            let child = Command::new(&bin)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", dir.join(format!("tsdb-{attempt}")).display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("start prometheus");
            let mut child = KillOnDrop(child);
            let url = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = child.0.try_wait().unwrap() {
                    let said = std::fs::read_to_string(&log).unwrap_or_default();
                    if said.contains("address already in use") {
                        break;
                    }
                    panic!("prometheus exited ({status}):\n{said}");
                }
                if http.get(format!("{url}/-/ready")).send().await.is_ok_and(|r| r.status().is_success()) {
                    return Prometheus { _child: child, url, http, log };
                }
                assert!(
                    Instant::now() < deadline,
                    "prometheus not ready in 30 s:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        panic!("no free port for prometheus in 5 attempts");
    }

    /// An instant query: the result's samples, or Prometheus' error.
    async fn query(&self, expr: &str) -> Result<Vec<Json>, String> {
        let r = self.http.get(format!("{}/api/v1/query", self.url)).query(&[("query", expr)]).send().await.unwrap();
        let body: Json = r.json().await.unwrap();
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        match body["data"]["resultType"].as_str() {
            Some("vector" | "matrix") => Ok(body["data"]["result"].as_array().unwrap().clone()),
            Some("scalar") => Ok(vec![json!({"metric": {}, "value": body["data"]["result"]})]),
            other => Err(format!("unexpected result type {other:?}")),
        }
    }

    async fn rules(&self) -> Vec<Json> {
        let body: Json =
            self.http.get(format!("{}/api/v1/rules", self.url)).send().await.unwrap().json().await.unwrap();
        body["data"]["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap().clone()).collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn value(sample: &Json) -> f64 {
    let text = sample["value"][1].as_str().unwrap_or("NaN");
    text.parse().unwrap_or(f64::NAN)
}

/// Checks one query's samples against what is expected; `Err` says what is wrong.
fn check(expect: Expect, samples: &[Json]) -> Result<(), String> {
    let finite = samples.iter().map(value).filter(|v| v.is_finite()).count();
    match expect {
        Expect::Data if finite == 0 => Err(format!("no data (samples: {samples:?})")),
        Expect::Positive if !samples.iter().any(|s| value(s) > 0.0) => Err(format!("no positive value: {samples:?}")),
        Expect::Empty(why) if !samples.is_empty() => Err(format!("should be empty ({why}): {samples:?}")),
        _ => Ok(()),
    }
}

fn epoch_seconds() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn item(tenant: &str, cmdlet: &str) -> Json {
    json!({"tenant": tenant, "cmdlet": cmdlet, "parameters": {}})
}

const CONTOSO: &str = "contoso.onmicrosoft.com";
const FABRIKAM: &str = "fabrikam.onmicrosoft.com";
const TAILSPIN: &str = "tailspin.onmicrosoft.com";

/// Runs the traffic: every kind of failure the panels and alerts are about, and enough work on
/// two tenants that the broker reaches for more shells than the service allows.
async fn traffic(daemon: &str, api: &reqwest::Client, prometheus: &Prometheus, instance: &str) {
    let invoke = |body: Json| {
        let (api, url) = (api.clone(), format!("{daemon}/v1/invocations"));
        async move {
            let r = api.post(url).json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Json>().await.unwrap_or(Json::Null))
        }
    };
    // First one of each outcome, scraped before the rest, so that each series exists before it
    // grows and `increase()` sees the growth (a counter's first sample has no increase).
    for (tenant, cmdlet) in [(CONTOSO, "Get-Mailbox"), (CONTOSO, "Get-Nonexistent"), (TAILSPIN, "Get-Mailbox")] {
        let (status, body) = invoke(item(tenant, cmdlet)).await;
        assert_eq!(status, 200, "{body}");
    }
    let seen = format!(r#"psbroker_invocations_total{{instance="{instance}",code="unknown_cmdlet"}}"#);
    let deadline = Instant::now() + Duration::from_secs(20);
    while prometheus.query(&seen).await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "prometheus never scraped the daemon:\n{}", prometheus.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A batch: 120 reads on two tenants (more shells than the service allows), 15 unknown
    // cmdlets, 3 items for the tenant with remote PowerShell off.
    let mut items: Vec<Json> =
        (0..120).map(|i| item(if i % 2 == 0 { CONTOSO } else { FABRIKAM }, "Get-Mailbox")).collect();
    items.extend((0..15).map(|_| item(FABRIKAM, "Get-Nonexistent")));
    items.extend((0..3).map(|_| item(TAILSPIN, "Get-Mailbox")));
    let r = api.post(format!("{daemon}/v1/batches")).json(&json!({"items": items})).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let batch = r.json::<Json>().await.unwrap()["id"].as_str().unwrap().to_string();

    // Meanwhile: mallory's wrong password, three attempts past its 1 s auth cool-down each; a
    // caller without a token; a route that does not exist.
    for _ in 0..3 {
        let (status, body) =
            invoke(json!({"tenant": CONTOSO, "admin": "mallory", "cmdlet": "Get-Mailbox", "parameters": {}})).await;
        assert_eq!((status, body["error"]["code"].as_str()), (200, Some("logon_failed")), "{body}");
        tokio::time::sleep(Duration::from_millis(1300)).await;
    }
    let anonymous = reqwest::Client::new();
    for path in ["/v1/pools", "/v1/sessions"] {
        assert_eq!(anonymous.get(format!("{daemon}{path}")).send().await.unwrap().status(), 401);
    }
    assert_eq!(api.get(format!("{daemon}/v1/nothing-here")).send().await.unwrap().status(), 404);

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let counts: Json = api.get(format!("{daemon}/v1/batches/{batch}")).send().await.unwrap().json().await.unwrap();
        if counts["done"] == true {
            assert_eq!((counts["succeeded"].as_i64(), counts["failed"].as_i64()), (Some(120), Some(18)), "{counts}");
            break;
        }
        assert!(Instant::now() < deadline, "batch not done in 60 s: {counts}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The metric families the daemon exports (`# TYPE` lines), with their types.
fn exported_families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.to_string()))
        .collect()
}

/// The family a name in an expression belongs to (`_bucket`, `_sum` and `_count` of histograms).
fn family<'a>(name: &'a str, exported: &BTreeMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if exported.get(base).is_some_and(|k| k == "histogram") {
                return base;
            }
        }
    }
    name
}

fn regex_escape(text: &str) -> String {
    // As Grafana formats a single variable value in a regex matcher (inside a PromQL string).
    text.chars()
        .flat_map(|c| if c.is_ascii_alphanumeric() || c == ':' || c == '-' { vec![c] } else { vec!['\\', '\\', c] })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_work_against_a_real_prometheus() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("psbroker.toml");
    std::fs::write(&config, DAEMON_CONFIG).unwrap();
    let store = format!("sqlite://{}", dir.path().join("data/psbroker.db").display());
    let daemon = Daemon::start_with_env(&config, "info", &[("PSBROKER_STORE__URL", &store)]);
    let token = std::fs::read_to_string(dir.path().join("data/api-token")).expect("bootstrap token");
    let api = psbroker::cli_token::bearer_client(token.trim()).unwrap();
    let instance = daemon.url.trim_start_matches("http://").to_string();
    // A second target of the same job that nobody listens on: a node that is down.
    let down = format!("127.0.0.1:{}", tools::free_port());

    let prom_config = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: psbroker\n    static_configs:\n      - targets: ['{instance}', '{down}']\n",
            rules = deploy("prometheus/alerts.yml").display()
        ),
    )
    .unwrap();
    let prometheus = Prometheus::start(dir.path(), &prom_config).await;

    traffic(&daemon.url, &api, &prometheus, &instance).await;
    // Everything the traffic did is in a scrape taken after it.
    let done = epoch_seconds();
    let freshness = format!(r#"timestamp(psbroker_ready{{instance="{instance}"}})"#);
    let deadline = Instant::now() + Duration::from_secs(20);
    while prometheus.query(&freshness).await.unwrap().first().is_none_or(|s| value(s) < done + 0.5) {
        assert!(Instant::now() < deadline, "no scrape after the traffic:\n{}", prometheus.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut problems = Vec::new();
    let d = dashboard();
    let queries = dashboard_queries(&d);
    for (node, all) in [(".*".to_string(), true), (regex_escape(&instance), false)] {
        for q in &queries {
            let expr = q.expr.replace("$node", &node).replace("$__rate_interval", "1m").replace("$__range", "5m");
            assert!(!expr.contains('$'), "{}/{}: a variable this test does not substitute: {expr}", q.panel, q.ref_id);
            let mut expect = panel_expectation(&q.panel, &q.ref_id);
            if expect == Expect::Positive && !all {
                expect = Expect::Data;
            }
            match prometheus.query(&expr).await {
                Err(e) => problems.push(format!("panel '{}' {} (node {node}): {e}\n    {expr}", q.panel, q.ref_id)),
                Ok(samples) => {
                    if let Err(e) = check(expect, &samples) {
                        problems.push(format!("panel '{}' {} (node {node}): {e}\n    {expr}", q.panel, q.ref_id));
                    }
                }
            }
        }
    }

    // Every rule loaded and evaluated, with its runbook; every expression as expected.
    let deadline = Instant::now() + Duration::from_secs(10);
    let rules = loop {
        let rules = prometheus.rules().await;
        if rules.iter().all(|r| r["health"] == "ok") || Instant::now() > deadline {
            break rules;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let loaded: BTreeSet<&str> = rules.iter().map(|r| r["name"].as_str().unwrap()).collect();
    let expected: BTreeSet<&str> = ALERT_EXPECTATIONS.iter().map(|(n, _)| *n).collect();
    assert_eq!(loaded, expected, "the rules Prometheus loaded vs. the ones this test knows");
    for rule in &rules {
        let name = rule["name"].as_str().unwrap();
        if rule["health"] != "ok" {
            problems.push(format!("alert {name}: health {} ({})", rule["health"], rule["lastError"]));
        }
        let annotations = &rule["annotations"];
        for key in ["summary", "description", "runbook"] {
            if annotations[key].as_str().is_none_or(|t| t.len() < 20) {
                problems.push(format!("alert {name}: no {key} annotation"));
            }
        }
        let runbook = annotations["runbook"].as_str().unwrap_or_default();
        if !(runbook.contains("Check:") && runbook.contains("Do:")) {
            problems.push(format!("alert {name}: the runbook says what to check (Check:) and what to do (Do:)"));
        }
        let expect = ALERT_EXPECTATIONS.iter().find(|(n, _)| *n == name).unwrap().1;
        let expr = rule["query"].as_str().unwrap();
        match prometheus.query(expr).await {
            Err(e) => problems.push(format!("alert {name}: {e}\n    {expr}")),
            Ok(samples) => {
                if let Err(e) = check(expect, &samples) {
                    problems.push(format!("alert {name}: {e}\n    {expr}"));
                }
            }
        }
    }

    // The names: used ⊆ exported (no panel or alert silently empty after a rename), and every
    // exported family has a panel.
    let text = reqwest::get(format!("{}/metrics", daemon.url)).await.unwrap().text().await.unwrap();
    let exported = exported_families(&text);
    let mut on_dashboard = BTreeSet::new();
    let exprs = queries
        .iter()
        .map(|q| (format!("panel '{}'", q.panel), q.expr.clone(), true))
        .chain(rules.iter().map(|r| (format!("alert {}", r["name"]), r["query"].as_str().unwrap().to_string(), false)));
    for (whose, expr, panel) in exprs {
        for (name, _) in metric_refs(&expr) {
            let fam = family(&name, &exported);
            if !exported.contains_key(fam) {
                problems.push(format!("{whose} uses {name}, which the daemon does not export"));
            }
            if panel {
                on_dashboard.insert(fam.to_string());
            }
        }
    }
    for fam in exported.keys().filter(|f| f.starts_with("psbroker_")) {
        if !on_dashboard.contains(fam) {
            problems.push(format!("the daemon exports {fam}, which no dashboard panel shows"));
        }
    }

    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
    println!("{} dashboard queries × 2 and {} alerts checked in {:.1?}", queries.len(), rules.len(), started.elapsed());
    assert!(daemon.terminate(), "SIGTERM exits 0");
}
