//! The storage layer's error.

use diesel::result::{DatabaseErrorKind, Error as DieselError};

/// Errors of the store. Repositories never swallow a database error into `None`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL is neither `postgres://…` nor `sqlite://…` (or a path).
    #[error("unsupported database URL `{0}`: use postgres://… or sqlite://path")]
    BadUrl(String),
    /// No connection could be taken from the pool (database down or pool exhausted).
    #[error("database unavailable: {0}")]
    Pool(String),
    /// A unique constraint refused a write (the caller maps it to its own conflict).
    #[error("unique constraint violated: {0}")]
    Conflict(String),
    /// Any other database error.
    #[error("database error: {0}")]
    Db(#[source] DieselError),
    /// Migrations failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// A stored value cannot be read back (corrupt row).
    #[error("corrupt stored value in {0}")]
    Corrupt(&'static str),
    /// The blocking task running the query panicked or was cancelled.
    #[error("database task failed: {0}")]
    Task(String),
}

impl From<DieselError> for StoreError {
    fn from(e: DieselError) -> Self {
        match e {
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
                StoreError::Conflict(info.constraint_name().unwrap_or(info.message()).to_owned())
            }
            DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, info) => {
                StoreError::Pool(format!("connection lost: {}", info.message()))
            }
            DieselError::BrokenTransactionManager => StoreError::Pool("connection lost mid-transaction".into()),
            other => StoreError::Db(other),
        }
    }
}

impl StoreError {
    /// Whether the database (or the connection to it) is unavailable, rather than the query
    /// wrong: the caller answers 503 and the connection is not reused.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Pool(_))
    }

    /// Whether this is a unique-constraint conflict.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict(_))
    }
}

/// The result of store operations.
pub type StoreResult<T> = Result<T, StoreError>;
