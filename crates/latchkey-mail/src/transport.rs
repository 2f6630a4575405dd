//! The lettre transports: async SMTP (plain, STARTTLS or TLS, from a URL) or `.eml` files in
//! an outbox directory.
//!
//! Outbox files are written by lettre's file transport into `<outbox>/.tmp/` and then renamed
//! into `<outbox>/`, so a reader watching the outbox never sees a half-written message.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::TransportConfig;
use crate::error::MailError;

/// Where a message went once accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Accepted {
    /// The SMTP server accepted it.
    Smtp,
    /// Written to this file.
    File(PathBuf),
}

/// A configured transport. Cheap to clone (the SMTP pool is shared).
#[derive(Clone)]
pub(crate) enum Mailer {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Outbox { staging: AsyncFileTransport<Tokio1Executor>, staging_dir: PathBuf, dir: PathBuf },
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The transport's Debug would show the server's credentials.
            Mailer::Smtp(_) => f.write_str("Mailer::Smtp"),
            Mailer::Outbox { dir, .. } => f.debug_struct("Mailer::Outbox").field("dir", dir).finish(),
        }
    }
}

impl Mailer {
    /// Builds the transport of `config`; for the outbox, creates the directory.
    ///
    /// Errors: [`MailError::Transport`] for an SMTP URL lettre does not accept (unknown scheme
    /// or `tls` value, no host) and [`MailError::Outbox`] when the directory cannot be created.
    pub(crate) fn new(config: &TransportConfig, timeout: Duration) -> Result<Self, MailError> {
        match config {
            TransportConfig::Smtp(url) => {
                let builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.0.trim())
                    .map_err(|e| MailError::Transport(e.to_string()))?;
                Ok(Mailer::Smtp(builder.timeout(Some(timeout)).build()))
            }
            TransportConfig::Outbox(dir) => {
                let staging_dir = dir.join(".tmp");
                std::fs::create_dir_all(&staging_dir).map_err(|e| MailError::Outbox(dir.clone(), e.to_string()))?;
                Ok(Mailer::Outbox { staging: AsyncFileTransport::new(&staging_dir), staging_dir, dir: dir.clone() })
            }
        }
    }

    /// Sends (or writes) `message`. The error text never contains the message.
    pub(crate) async fn send(&self, message: Message) -> Result<Accepted, SendError> {
        match self {
            Mailer::Smtp(smtp) => smtp.send(message).await.map(|_| Accepted::Smtp).map_err(|e| SendError {
                // A 5xx answer, or a message the client cannot send at all (e.g. a non-ASCII
                // address to a server without SMTPUTF8): retrying cannot help.
                permanent: e.is_permanent() || e.is_client(),
                reason: e.to_string(),
            }),
            Mailer::Outbox { staging, staging_dir, dir } => {
                let id = staging.send(message).await.map_err(|e| SendError::transient(e.to_string()))?;
                let name = format!("{id}.eml");
                let target = dir.join(&name);
                publish(&staging_dir.join(&name), &target)
                    .await
                    .map_err(|e| SendError::transient(format!("outbox: {e}")))?;
                Ok(Accepted::File(target))
            }
        }
    }
}

/// A failed send: the reason (never the message) and whether a retry could help.
#[derive(Debug)]
pub(crate) struct SendError {
    pub(crate) reason: String,
    pub(crate) permanent: bool,
}

impl SendError {
    fn transient(reason: String) -> Self {
        Self { reason, permanent: false }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

async fn publish(from: &Path, to: &Path) -> std::io::Result<()> {
    tokio::task::spawn_blocking({
        let (from, to) = (from.to_owned(), to.to_owned());
        move || std::fs::rename(from, to)
    })
    .await
    .map_err(std::io::Error::other)?
}
