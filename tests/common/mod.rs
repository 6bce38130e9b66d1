//! Test harness: the real daemon on 127.0.0.1:0 with its store in a temp dir, driven over HTTP.
#![allow(dead_code)]

pub mod cluster;
pub mod daemon;
pub mod kdc;
pub mod pyenv;
pub mod tools;

use psbroker::app::{Application, Running};
use psbroker::config::Config;
use psbroker::sim::Simulator;
use psbroker::store::scratch::ScratchSchema;
use serde_json::{json, Value as Json};
use std::time::{Duration, Instant};

pub struct TestApp {
    pub app: Option<Running>,
    /// Sends the daemon's bootstrap admin token (read from the data dir) on every request.
    pub client: reqwest::Client,
    pub dir: DataDir,
    pub token: String,
}

/// Which store the daemons of the end-to-end tests use: SQLite in their temp dir (the
/// default), or with `PSBROKER_TEST_STORE=postgres` a scratch schema of their own on the
/// machine's PostgreSQL (see `psbroker::store::scratch`).
pub fn postgres_wanted() -> bool {
    match std::env::var("PSBROKER_TEST_STORE").as_deref() {
        Ok("postgres") => true,
        Ok("sqlite") | Err(_) => false,
        Ok(other) => panic!("PSBROKER_TEST_STORE={other}: expected sqlite or postgres"),
    }
}

/// A daemon's files and its database: a temp dir, and the PostgreSQL schema when the tests
/// run on PostgreSQL. Both outlive a stop, so a restart finds the same database; the schema is
/// dropped with this value.
pub struct DataDir {
    pub tmp: tempfile::TempDir,
    pub schema: Option<ScratchSchema>,
}

impl std::ops::Deref for DataDir {
    type Target = tempfile::TempDir;
    fn deref(&self) -> &tempfile::TempDir {
        &self.tmp
    }
}

impl DataDir {
    /// A fresh temp dir, and a fresh schema when the tests run on PostgreSQL.
    pub async fn new() -> DataDir {
        let schema = if postgres_wanted() { Some(ScratchSchema::create().await) } else { None };
        DataDir { tmp: tempfile::tempdir().unwrap(), schema }
    }

    /// The store URL: the schema's, or `psbroker.db` in the temp dir.
    pub fn store_url(&self) -> String {
        match &self.schema {
            Some(schema) => schema.url(),
            None => format!("sqlite://{}", self.tmp.path().join("psbroker.db").display()),
        }
    }

    /// The `[store]` section of a configuration file for a daemon on this data dir.
    pub fn store_toml(&self) -> String {
        format!("[store]\nurl = \"{}\"\ndata_dir = \"{}\"\n", self.store_url(), self.tmp.path().display())
    }
}

/// Admins `a0..a{admins}` (cap 3, all tenants), tenants `t000..` with the given simulator
/// latencies; `extra` is appended to the profile. The broker reaches the simulator through the
/// real wire protocol (WS-Management/PSRP over loopback HTTP), as the demo does.
pub fn config_text(admins: u32, tenants: u32, open_ms: u64, cmd_ms: u64, extra: &str) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_wait_seconds = 30\n\
         [profiles.default]\nkind = \"wsman\"\nconnection_uri = \"http://{{simulator}}/powershell-liveid?DelegatedOrg={{tenant}}\"\n\
         allow_plain_http = true\n{extra}\n\
         [simulator]\nopen_latency_ms = {open_ms}\ncommand_latency_ms = {cmd_ms}\nclose_latency_ms = 1\nmailboxes_per_tenant = 10\n"
    );
    for a in 0..admins {
        text += &format!(
            "[[admins]]\nname = \"a{a}\"\nupn = \"a{a}@partner.onmicrosoft.com\"\ncredential = \"literal:pw{a}\"\n"
        );
    }
    for t in 0..tenants {
        text += &format!("[[tenants]]\ndomain = \"{}\"\n", tenant(t));
    }
    text
}

/// Everything in the files of the database `psbroker.db` in `dir` (with its WAL and shared
/// memory), for tests that look for what must not be stored.
pub fn database_text(dir: &std::path::Path) -> String {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with("psbroker.db") {
            bytes.extend(std::fs::read(path).unwrap());
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

pub fn tenant(i: u32) -> String {
    format!("t{i:03}.onmicrosoft.com")
}

impl TestApp {
    pub async fn start(text: &str) -> TestApp {
        Self::start_in(text, DataDir::new().await).await
    }

    /// Starts on an existing directory (same database: a restart).
    pub async fn start_in(text: &str, dir: DataDir) -> TestApp {
        let mut config = Config::from_toml(text).unwrap();
        config.store.url = dir.store_url();
        config.store.data_dir = Some(dir.path().to_path_buf());
        let app = Application::build(config).await.unwrap().spawn();
        let token = std::fs::read_to_string(dir.path().join("api-token")).unwrap_or_default().trim().to_string();
        let client = psbroker::cli_token::bearer_client(&token).unwrap();
        TestApp { app: Some(app), client, dir, token }
    }

    pub fn running(&self) -> &Running {
        self.app.as_ref().unwrap()
    }

    pub fn sim(&self) -> Simulator {
        self.running().simulator.clone().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        self.running().url(path)
    }

    pub async fn post(&self, path: &str, body: Json) -> (u16, Json) {
        let r = self.client.post(self.url(path)).json(&body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Json::Null))
    }

    pub async fn post_raw(&self, path: &str, content_type: &str, body: impl Into<reqwest::Body>) -> (u16, Json) {
        let r = self.client.post(self.url(path)).header("content-type", content_type).body(body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Json::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Json) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Json::Null))
    }

    pub async fn get_text(&self, path: &str) -> String {
        self.client.get(self.url(path)).send().await.unwrap().text().await.unwrap()
    }

    /// Runs one cmdlet and waits for its result.
    pub async fn invoke(&self, tenant: &str, cmdlet: &str, parameters: Json) -> (u16, Json) {
        self.post("/v1/invocations", json!({"tenant": tenant, "cmdlet": cmdlet, "parameters": parameters})).await
    }

    pub async fn submit_batch(&self, items: Vec<Json>) -> String {
        let (status, body) = self.post("/v1/batches", json!({"items": items})).await;
        assert_eq!(status, 202, "{body}");
        body["id"].as_str().unwrap().to_string()
    }

    pub async fn wait_batch(&self, id: &str, limit: Duration) -> Json {
        wait_batch_at(&self.client, &self.url(""), id, limit).await
    }

    pub async fn stop(mut self) -> DataDir {
        self.app.take().unwrap().stop().await.unwrap();
        self.dir
    }
}

/// Polls the batch `id` on the daemon at `base` until it is done; its final counts.
pub async fn wait_batch_at(client: &reqwest::Client, base: &str, id: &str, limit: Duration) -> Json {
    let end = Instant::now() + limit;
    loop {
        let c: Json = client.get(format!("{base}/v1/batches/{id}")).send().await.unwrap().json().await.unwrap();
        if c["done"] == true {
            return c;
        }
        assert!(Instant::now() < end, "batch not done in {limit:?}: {c}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks a finished batch of reads (`Get-Mailbox`) and writes (`Set-Mailbox`) against what the
/// simulator executed: every read succeeded (reads are repeated, never lost), no write ran
/// twice, a write that succeeded ran once, and a write that failed did so with `lost_code` (it
/// may have run). Returns how many writes ended `lost_code`.
pub fn writes_ran_at_most_once(results: &str, stats: &psbroker::sim::SimStats, lost_code: &str) -> usize {
    let mut lost = 0;
    for line in results.lines() {
        let r: Json = serde_json::from_str(line).unwrap();
        let id: uuid::Uuid = r["id"].as_str().unwrap().parse().unwrap();
        let runs = stats.executions.get(&id).copied().unwrap_or(0);
        if r["cmdlet"] == "Set-Mailbox" {
            assert!(runs <= 1, "write {id} ran {runs} times");
            if r["status"] == "failed" {
                assert_eq!(r["error"]["code"], lost_code, "{r}");
                lost += 1;
            } else {
                assert_eq!(runs, 1, "{r}");
            }
        } else {
            assert_eq!(r["status"], "succeeded", "reads are repeated, never lost: {r}");
        }
    }
    lost
}
