//! Throwaway PostgreSQL schemas, for the tests and benchmarks that run on PostgreSQL: each gets
//! a schema of its own in one shared database (`PSBROKER_TEST_POSTGRES`, by default the
//! machine's `postgres://postgres@127.0.0.1:5432/test`), dropped when it is no longer needed.
//! Behind PgBouncer a schema cannot be chosen per connection (it refuses the `search_path`
//! startup option), so those tests get a throwaway database instead ([`ScratchDatabase`]).

use sqlx::{Connection, PgConnection};

/// The database the scratch schemas live in.
pub fn server_url() -> String {
    std::env::var("PSBROKER_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A schema created for one test; [`ScratchSchema::url`] is a store URL whose connections
/// use it. Dropping the value drops the schema and all in it.
pub struct ScratchSchema {
    name: String,
    server: String,
}

impl ScratchSchema {
    /// Creates a fresh schema. Panics with a clear message when PostgreSQL does not answer: a
    /// test that needs it must fail, not pass by skipping.
    pub async fn create() -> ScratchSchema {
        let server = server_url();
        ScratchSchema::try_create_on(&server).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL does not answer at {server} ({e}); the PostgreSQL tests need it \
                 (set PSBROKER_TEST_POSTGRES to another server, or start this one)"
            )
        })
    }

    /// A fresh schema in the database at `server`, or why not (for a benchmark, which goes on
    /// without it).
    pub async fn try_create_on(server: &str) -> Result<ScratchSchema, sqlx::Error> {
        let name = format!("psbroker_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(server).await?;
        sqlx::query(&format!("CREATE SCHEMA {name}")).execute(&mut conn).await?;
        Ok(ScratchSchema { name, server: server.to_string() })
    }

    /// Adopts a schema created earlier (a daemon restarted on the same database).
    pub fn adopt(name: &str) -> ScratchSchema {
        ScratchSchema { name: name.to_string(), server: server_url() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A store URL that puts this schema first on the search path.
    pub fn url(&self) -> String {
        let sep = if self.server.contains('?') { '&' } else { '?' };
        format!("{}{sep}options=-csearch_path%3D{}", self.server, self.name)
    }

    /// Drops the schema now (the same as dropping the value, but awaited).
    pub async fn drop_now(&self) {
        drop_schema(&self.server, &self.name).await;
    }
}

impl Drop for ScratchSchema {
    fn drop(&mut self) {
        drop_on(&self.server, format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
    }
}

async fn drop_schema(server: &str, name: &str) {
    run_on(server, &format!("DROP SCHEMA IF EXISTS {name} CASCADE")).await;
}

/// A database created for one test on the scratch server, for a store behind a pooler.
/// Dropping the value drops the database (closing what is still connected to it).
pub struct ScratchDatabase {
    name: String,
    server: String,
}

impl ScratchDatabase {
    /// Creates a fresh database. Panics with a clear message when PostgreSQL does not answer.
    pub async fn create() -> ScratchDatabase {
        let server = server_url();
        let name = format!("psbroker_test_{}", uuid::Uuid::new_v4().simple());
        let created = async {
            let mut conn = PgConnection::connect(&server).await?;
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await
        };
        if let Err(e) = created.await {
            panic!(
                "cannot create a database at {server} ({e}); the PostgreSQL tests need it (set PSBROKER_TEST_POSTGRES)"
            );
        }
        ScratchDatabase { name, server }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its URL on the server itself.
    pub fn url(&self) -> String {
        self.server_url().to_string()
    }

    /// Its URL through `addr` (a pooler in front of the server), with the server's user.
    pub fn url_via(&self, addr: std::net::SocketAddr) -> String {
        let mut url = self.server_url();
        url.set_host(Some(&addr.ip().to_string())).expect("a postgres:// URL has a host");
        url.set_port(Some(addr.port())).expect("a postgres:// URL has a port");
        url.to_string()
    }

    fn server_url(&self) -> reqwest::Url {
        let mut url = reqwest::Url::parse(&self.server).expect("PSBROKER_TEST_POSTGRES is a URL");
        url.set_path(&self.name);
        url
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        drop_on(&self.server, format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

/// Runs `sql` on `server` from a thread of its own: Drop may run inside a runtime (a test's).
fn drop_on(server: &str, sql: String) {
    let server = server.to_string();
    let done = std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
            rt.block_on(run_on(&server, &sql));
        }
    });
    let _ = done.join();
}

/// Runs one statement on `server`, best effort (cleanup).
async fn run_on(server: &str, sql: &str) {
    if let Ok(mut conn) = PgConnection::connect(server).await {
        let _ = sqlx::query(sql).execute(&mut conn).await;
    }
}
