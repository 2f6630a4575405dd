//! Latchkey's storage: the diesel schema, the records, and one repository module per table,
//! on Postgres or SQLite through one `MultiConnection` ([`DbConn`]).
//!
//! Database work is blocking: [`Store::run`] and [`Store::write`] move it to the blocking
//! thread pool, so it never runs on an event loop or inside an actor's handler.
//! Limits are kept by [`write_tx`]: a transaction that serialises writers per user (a row
//! lock on Postgres, `BEGIN IMMEDIATE` on SQLite), in which a caller reads the state, applies
//! a pure rule and writes the result, so two processes on one database never exceed a limit.

mod conn;
use diesel::r2d2;
pub mod error;
pub mod model;
pub mod repo;
pub mod schema;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

pub use conn::{Backend, ConnManager, DbConn, Pool, PooledDb, connect, run_migrations, write_tx};
pub use error::{StoreError, StoreResult};

/// A pooled connection to the database.
///
/// A connection whose query fails because it is gone (a database restart, a failover, a
/// killed backend) is dropped instead of returned to the pool, and the next checkouts test
/// the connections they take until the pool has been swept, so one outage costs one failed
/// request per process rather than one per pooled connection, and the store recovers as
/// soon as the database is back.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    backend: Backend,
    suspect: Arc<AtomicU32>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("backend", &self.backend).finish_non_exhaustive()
    }
}

impl Store {
    /// Connects to `url` (`postgres://…` or `sqlite://path`), runs the migrations and keeps
    /// a pool of at most `pool_size` connections. Blocking: call at start-up.
    pub fn open(url: &str, pool_size: u32) -> StoreResult<Self> {
        let (backend, _) = Backend::of(url)?;
        let pool = connect(url, pool_size)?;
        Ok(Self { pool, backend, suspect: Arc::new(AtomicU32::new(0)) })
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Takes a connection; while the pool is suspect (after a lost connection), tests it
    /// first and drops it if it is dead.
    fn checkout(&self) -> StoreResult<r2d2::PooledConnection<ConnManager>> {
        let max = self.pool.max_size();
        for _ in 0..=max {
            let mut c = self.pool.get().map_err(|e| StoreError::Pool(e.to_string()))?;
            let suspect = self.suspect.load(Ordering::Relaxed);
            if suspect == 0 {
                return Ok(c);
            }
            self.suspect.store(suspect - 1, Ordering::Relaxed);
            use diesel::connection::SimpleConnection;
            if c.conn.batch_execute("SELECT 1").is_ok() {
                return Ok(c);
            }
            c.broken = true;
        }
        Err(StoreError::Pool("no live database connection".into()))
    }

    /// Runs `f` on a checked-out connection, retiring the connection if `f` found it dead.
    fn with_conn<T>(&self, f: impl FnOnce(&mut DbConn) -> StoreResult<T>) -> StoreResult<T> {
        let mut c = self.checkout()?;
        let result = f(&mut c.conn);
        if result.as_ref().err().is_some_and(StoreError::is_unavailable) {
            c.broken = true;
            self.suspect.store(self.pool.max_size(), Ordering::Relaxed);
            tracing::warn!("a database connection was lost; the pool is being checked");
        }
        result
    }

    /// Runs `f` with a pooled connection, on the current thread (CLI and tests only).
    pub fn run_blocking<T>(&self, f: impl FnOnce(&mut DbConn) -> StoreResult<T>) -> StoreResult<T> {
        self.with_conn(f)
    }

    /// Runs `f` with a pooled connection on the blocking thread pool.
    pub async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        F: FnOnce(&mut DbConn) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.with_conn(f)).await.map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Runs `f` in a [`write_tx`] on the blocking thread pool.
    pub async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        F: FnOnce(&mut DbConn) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        self.run(move |conn| write_tx(conn, f)).await
    }

    /// Checks that the database answers (for `/readyz`).
    pub async fn ping(&self) -> StoreResult<()> {
        self.run(|conn| {
            use diesel::connection::SimpleConnection;
            conn.batch_execute("SELECT 1").map_err(StoreError::from)
        })
        .await
    }
}

/// Helpers for tests of this and other crates: a throw-away Postgres database per test.
pub mod testing {
    use diesel::connection::SimpleConnection;
    use diesel::{Connection, PgConnection};

    use crate::{StoreError, StoreResult};

    /// A database created for one test and dropped (with its connections) when this value
    /// is dropped.
    #[derive(Debug)]
    pub struct ScratchDb {
        admin_url: String,
        name: String,
        /// The URL of the new database.
        pub url: String,
    }

    /// Creates a uniquely named database on the server of `admin_url` (a `postgres://` URL of
    /// any existing database, e.g. `LATCHKEY_TEST_DATABASE_URL`).
    ///
    /// Errors: the server is unreachable or refuses (a test with the variable set must fail,
    /// not skip).
    pub fn scratch_postgres(admin_url: &str) -> StoreResult<ScratchDb> {
        let name = format!("latchkey_test_{}", uuid::Uuid::now_v7().simple());
        let mut admin = PgConnection::establish(admin_url).map_err(|e| StoreError::Pool(e.to_string()))?;
        admin.batch_execute(&format!("CREATE DATABASE {name}"))?;
        let base = match admin_url.rfind('/') {
            Some(i) if i > "postgres://".len() => &admin_url[..i],
            _ => admin_url,
        };
        let (base, query) = match admin_url.split_once('?') {
            Some((_, q)) => (base.split('?').next().unwrap_or(base), format!("?{q}")),
            None => (base, String::new()),
        };
        Ok(ScratchDb { admin_url: admin_url.to_owned(), url: format!("{base}/{name}{query}"), name })
    }

    impl Drop for ScratchDb {
        fn drop(&mut self) {
            if let Ok(mut admin) = PgConnection::establish(&self.admin_url) {
                let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
            }
        }
    }
}
