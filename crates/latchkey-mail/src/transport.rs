//! The lettre transports: async SMTP (plain, STARTTLS or TLS, from a URL) or `.eml` files in
//! an outbox directory.
//!
//! Outbox files are written by lettre's file transport into `<outbox>/.tmp/`, made private
//! (mode 0600: they hold codes and reset links) and then renamed into `<outbox>/`, so a reader
//! watching the outbox never sees a half-written message. Both directories are mode 0700.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::TransportConfig;
use crate::error::MailError;
use crate::smtp::NoDelaySmtp;

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
    /// `smtp://`: our connections with `TCP_NODELAY` ([`crate::smtp`]).
    SmtpNoDelay(NoDelaySmtp),
    /// `smtps://`: lettre's transport.
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Outbox {
        staging: AsyncFileTransport<Tokio1Executor>,
        staging_dir: PathBuf,
        dir: PathBuf,
    },
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The transport's Debug would show the server's credentials.
            Mailer::Smtp(_) | Mailer::SmtpNoDelay(_) => f.write_str("Mailer::Smtp"),
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
                if let Some(smtp) = NoDelaySmtp::from_url(url.0.trim(), timeout).map_err(MailError::Transport)? {
                    return Ok(Mailer::SmtpNoDelay(smtp));
                }
                let builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.0.trim())
                    .map_err(|e| MailError::Transport(e.to_string()))?;
                Ok(Mailer::Smtp(builder.timeout(Some(timeout)).build()))
            }
            TransportConfig::Outbox(dir) => {
                let staging_dir = outbox_dirs(dir).map_err(|e| MailError::Outbox(dir.clone(), e.to_string()))?;
                Ok(Mailer::Outbox { staging: AsyncFileTransport::new(&staging_dir), staging_dir, dir: dir.clone() })
            }
        }
    }

    /// Sends (or writes) `message`. The error text never contains the message.
    pub(crate) async fn send(&self, message: Message) -> Result<Accepted, SendError> {
        match self {
            Mailer::SmtpNoDelay(smtp) => smtp.send(&message).await.map(|()| Accepted::Smtp),
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
    pub(crate) fn transient(reason: String) -> Self {
        Self { reason, permanent: false }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Makes the staged file `from` private (0600) and moves it to `to`.
async fn publish(from: &Path, to: &Path) -> std::io::Result<()> {
    tokio::task::spawn_blocking({
        let (from, to) = (from.to_owned(), to.to_owned());
        move || {
            private_file(&from)?;
            std::fs::rename(from, to)
        }
    })
    .await
    .map_err(std::io::Error::other)?
}

#[cfg(unix)]
fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn private_file(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Creates the outbox `dir` and its staging directory if missing, both mode 0700 (an
/// existing staging directory is made 0700 too: messages sit there before they are
/// private); returns the staging directory.
fn outbox_dirs(dir: &Path) -> std::io::Result<PathBuf> {
    let staging = dir.join(".tmp");
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder.create(&staging)?;
        if std::fs::metadata(&staging)?.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    #[cfg(not(unix))]
    builder.create(&staging)?;
    Ok(staging)
}

/// Whether messages can be written to the outbox `dir` (for readiness checks): creates the
/// directories if missing, then writes a probe file into the staging directory, moves it
/// into `dir` and removes it, as a delivery does. The probe is a hidden file, never `.eml`.
///
/// Errors: [`MailError::Outbox`] with the reason (not a directory, read-only, no space…).
pub fn check_outbox(dir: &Path) -> Result<(), MailError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static PROBES: AtomicU64 = AtomicU64::new(0);
    let fail = |e: std::io::Error| MailError::Outbox(dir.to_owned(), e.to_string());
    let staging = outbox_dirs(dir).map_err(fail)?;
    let name = format!(".probe-{}-{}", std::process::id(), PROBES.fetch_add(1, Ordering::Relaxed));
    let (staged, target) = (staging.join(&name), dir.join(&name));
    std::fs::write(&staged, b"probe").map_err(fail)?;
    let moved = std::fs::rename(&staged, &target);
    let _ = std::fs::remove_file(if moved.is_ok() { &target } else { &staged });
    moved.map_err(fail)
}
