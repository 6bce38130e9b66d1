//! The two SQL backends behind [`super::Store`]: SQLite (embedded, the default) and PostgreSQL.
//!
//! The statements are the same text on both wherever the SQL agrees (it mostly does: the
//! schemas differ in column types, not in names), written with `$1`-style placeholders, which
//! both drivers accept. An enum of the two pools, and [`on!`] to run one block of code against
//! whichever is open, instead of a generic tower over `sqlx::Database`: the block is compiled
//! once per backend, so each half is checked against its own driver's types.

use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{Decode, PgConnection, PgPool, Postgres, Row, Sqlite, SqliteConnection, SqlitePool, Type};

/// One value per backend: a pool, a connection, a transaction.
pub(crate) enum Backend<S, P> {
    Sqlite(S),
    Postgres(P),
}

impl<S: Clone, P: Clone> Clone for Backend<S, P> {
    fn clone(&self) -> Self {
        match self {
            Backend::Sqlite(s) => Backend::Sqlite(s.clone()),
            Backend::Postgres(p) => Backend::Postgres(p.clone()),
        }
    }
}

pub(crate) type Pool = Backend<SqlitePool, PgPool>;
/// A connection (or an open transaction) of either backend, borrowed for a few statements.
pub(crate) type Conn<'c> = Backend<&'c mut SqliteConnection, &'c mut PgConnection>;

/// Runs `$body` with `$p` bound to the inner value of a [`Backend`], whichever it is.
macro_rules! on {
    ($backend:expr, $p:ident => $body:expr) => {
        match $backend {
            $crate::store::db::Backend::Sqlite($p) => $body,
            $crate::store::db::Backend::Postgres($p) => $body,
        }
    };
}
pub(crate) use on;

impl Pool {
    pub fn is_postgres(&self) -> bool {
        matches!(self, Backend::Postgres(_))
    }
}

/// A value every driver can decode (rusqlite too: the SQLite group committer's rows).
pub(crate) trait Column:
    for<'r> Decode<'r, Sqlite> + Type<Sqlite> + for<'r> Decode<'r, Postgres> + Type<Postgres> + rusqlite::types::FromSql
{
}
impl<T> Column for T where
    T: for<'r> Decode<'r, Sqlite>
        + Type<Sqlite>
        + for<'r> Decode<'r, Postgres>
        + Type<Postgres>
        + rusqlite::types::FromSql
{
}

/// Reads a column by name from a row of either backend, so one function decodes both.
pub(crate) trait Cols {
    fn col<T: Column>(&self, name: &str) -> Result<T, sqlx::Error>;
}

impl Cols for SqliteRow {
    fn col<T: Column>(&self, name: &str) -> Result<T, sqlx::Error> {
        self.try_get(name)
    }
}

impl Cols for PgRow {
    fn col<T: Column>(&self, name: &str) -> Result<T, sqlx::Error> {
        self.try_get(name)
    }
}

impl Cols for rusqlite::Row<'_> {
    fn col<T: Column>(&self, name: &str) -> Result<T, sqlx::Error> {
        self.get(name).map_err(|e| sqlx::Error::ColumnDecode { index: name.to_string(), source: Box::new(e) })
    }
}

/// A UUID stored as text.
pub(crate) fn uuid_text(text: &str) -> Result<uuid::Uuid, sqlx::Error> {
    uuid::Uuid::parse_str(text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

impl<'c> From<&'c mut SqliteConnection> for Conn<'c> {
    fn from(c: &'c mut SqliteConnection) -> Self {
        Backend::Sqlite(c)
    }
}

impl<'c> From<&'c mut PgConnection> for Conn<'c> {
    fn from(c: &'c mut PgConnection) -> Self {
        Backend::Postgres(c)
    }
}
