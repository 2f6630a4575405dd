//! Errors of opening the queue and starting the worker (delivery errors never leave the
//! worker: they are retried, counted and logged).

use std::path::PathBuf;

/// The queue or the transport could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The embedded SQLite queue could not be opened or migrated.
    #[error("cannot open the embedded mail queue {0}: {1}")]
    Sqlite(PathBuf, String),
    /// Redis could not be reached or refused the connection.
    #[error("cannot connect to the Redis mail queue: {0}")]
    Redis(String),
    /// The queue URL has a scheme this crate does not know.
    #[error("unsupported queue URL: use redis://… or leave it unset for the embedded queue")]
    QueueUrl,
    /// The SMTP URL was refused (unknown scheme or `tls` value, missing host).
    #[error("invalid SMTP URL: {0}")]
    Transport(String),
    /// The outbox directory could not be created or written.
    #[error("cannot write the mail outbox {0}: {1}")]
    Outbox(PathBuf, String),
    /// The `From` address does not parse.
    #[error("invalid mail From address `{0}`")]
    From(String),
}
