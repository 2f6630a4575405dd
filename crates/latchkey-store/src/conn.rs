//! Connections: one `MultiConnection` over Postgres and SQLite, an r2d2 pool, embedded
//! migrations, and write transactions that serialise per user on both backends.

use std::time::Duration;

use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::r2d2::{self, ManageConnection};
use diesel::sqlite::SqliteConnection;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::error::{StoreError, StoreResult};

const PG_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/postgres");
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/sqlite");

/// A connection to either backend. Queries written once against it run on both; the few
/// backend-specific statements go through [`per_backend!`](crate::per_backend).
#[derive(diesel::MultiConnection)]
pub enum DbConn {
    /// PostgreSQL.
    Pg(PgConnection),
    /// SQLite (bundled).
    Sqlite(SqliteConnection),
}

/// Runs `$body` with `$c` bound to the concrete connection of whichever backend `$conn` is;
/// the body is compiled once per backend.
#[macro_export]
macro_rules! per_backend {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::DbConn::Pg($c) => $body,
            $crate::DbConn::Sqlite($c) => $body,
        }
    };
}

/// The database backend, chosen from the URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `postgres://` or `postgresql://`.
    Postgres,
    /// `sqlite://path`, `sqlite:path` or a bare path.
    Sqlite,
}

impl Backend {
    /// The backend of `url` and the string to hand to its driver.
    ///
    /// Errors: [`StoreError::BadUrl`] for any other scheme.
    pub fn of(url: &str) -> StoreResult<(Backend, String)> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok((Backend::Postgres, url.to_owned()))
        } else if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            if path.is_empty() {
                return Err(StoreError::BadUrl(url.to_owned()));
            }
            Ok((Backend::Sqlite, path.to_owned()))
        } else if !url.contains("://") && !url.is_empty() {
            Ok((Backend::Sqlite, url.to_owned()))
        } else {
            Err(StoreError::BadUrl(url.to_owned()))
        }
    }
}

/// Opens connections of one backend (never guessing by trial, see STACK.md trap 2) and
/// prepares SQLite ones: WAL, a busy timeout, foreign keys.
#[derive(Debug, Clone)]
pub struct ConnManager {
    backend: Backend,
    target: String,
}

/// SQLite settings of every connection: WAL so readers never wait for the writer, a busy
/// timeout so concurrent writers queue instead of failing with "database is locked".
const SQLITE_PRAGMAS: &str =
    "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 15000; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;";

impl ConnManager {
    /// A manager for `url`.
    pub fn new(url: &str) -> StoreResult<Self> {
        let (backend, target) = Backend::of(url)?;
        Ok(Self { backend, target })
    }

    /// Opens one connection.
    pub fn establish(&self) -> Result<DbConn, diesel::ConnectionError> {
        match self.backend {
            Backend::Postgres => PgConnection::establish(&self.target).map(DbConn::Pg),
            Backend::Sqlite => {
                let mut c = SqliteConnection::establish(&self.target)?;
                c.batch_execute(SQLITE_PRAGMAS).map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                Ok(DbConn::Sqlite(c))
            }
        }
    }
}

/// A pooled connection with a flag set when a query found it dead, so that the pool drops
/// it instead of handing it out again.
pub struct PooledDb {
    /// The connection.
    pub conn: DbConn,
    /// Set when a query failed because the connection is gone.
    pub broken: bool,
}

impl ManageConnection for ConnManager {
    type Connection = PooledDb;
    type Error = r2d2::Error;

    fn connect(&self) -> Result<PooledDb, r2d2::Error> {
        self.establish().map(|conn| PooledDb { conn, broken: false }).map_err(r2d2::Error::ConnectionError)
    }

    fn is_valid(&self, c: &mut PooledDb) -> Result<(), r2d2::Error> {
        c.conn.batch_execute("SELECT 1").map_err(r2d2::Error::QueryError)
    }

    fn has_broken(&self, c: &mut PooledDb) -> bool {
        if c.broken {
            return true;
        }
        match &mut c.conn {
            DbConn::Pg(pg) => AnsiTransactionManager::is_broken_transaction_manager(pg),
            DbConn::Sqlite(_) => false,
        }
    }
}

/// The connection pool.
pub type Pool = r2d2::Pool<ConnManager>;

/// Runs the embedded migrations of `conn`'s backend. On Postgres an advisory lock keeps two
/// processes starting together from migrating at once.
pub fn run_migrations(conn: &mut DbConn) -> StoreResult<usize> {
    let result = match conn {
        DbConn::Pg(c) => {
            c.batch_execute("SELECT pg_advisory_lock(7355608)")?;
            let ran = c.run_pending_migrations(PG_MIGRATIONS).map(|v| v.len());
            c.batch_execute("SELECT pg_advisory_unlock(7355608)")?;
            ran
        }
        DbConn::Sqlite(c) => c.run_pending_migrations(SQLITE_MIGRATIONS).map(|v| v.len()),
    };
    result.map_err(|e| StoreError::Migration(e.to_string()))
}

/// Runs `f` in a write transaction: `BEGIN IMMEDIATE` on SQLite (so writers queue on the
/// busy timeout instead of failing on a lock upgrade), a plain transaction on Postgres
/// (where [`lock_user`](crate::repo::users::lock) takes the row lock that serialises one
/// user's counters). Commits when `f` succeeds, rolls back otherwise.
pub fn write_tx<T>(conn: &mut DbConn, f: impl FnOnce(&mut DbConn) -> StoreResult<T>) -> StoreResult<T> {
    match conn {
        DbConn::Pg(c) => AnsiTransactionManager::begin_transaction(c)?,
        DbConn::Sqlite(c) => AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE")?,
    }
    match f(conn) {
        Ok(value) => {
            per_backend!(conn, c => AnsiTransactionManager::commit_transaction(c))?;
            Ok(value)
        }
        Err(e) => {
            if let Err(rollback) = per_backend!(conn, c => AnsiTransactionManager::rollback_transaction(c)) {
                tracing::error!(error = %rollback, "rollback failed");
            }
            Err(e)
        }
    }
}

/// Builds the pool for `url` and runs the migrations.
pub fn connect(url: &str, size: u32) -> StoreResult<Pool> {
    let manager = ConnManager::new(url)?;
    let mut first = manager.establish().map_err(|e| StoreError::Pool(e.to_string()))?;
    run_migrations(&mut first)?;
    drop(first);
    r2d2::Pool::builder()
        .max_size(size.max(1))
        .min_idle(Some(1))
        .connection_timeout(Duration::from_secs(10))
        .test_on_check_out(false)
        .build(manager)
        .map_err(|e| StoreError::Pool(e.to_string()))
}
