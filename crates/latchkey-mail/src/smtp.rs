//! SMTP over connections we open ourselves, with `TCP_NODELAY` set (issue 17).
//!
//! lettre 0.11.23 (the latest release) writes a message's body and its final `\r\n.\r\n`
//! in two writes on a socket without `TCP_NODELAY`; the server's delayed ACK then holds the
//! second write for ~40 ms (Nagle's algorithm meeting delayed ACKs), which was most of the
//! email path's latency. The fix is upstream (lettre pull request #1159) but not released.
//! This transport keeps lettre's SMTP client ([`AsyncSmtpConnection`]: EHLO, STARTTLS,
//! AUTH, the envelope, dot-stuffing) and only opens the TCP connection itself, so that it
//! can set `TCP_NODELAY` before handing it over; it keeps a small pool of idle connections
//! as lettre's transport does. `smtp://` URLs (plain, `?tls=required`, `?tls=opportunistic`)
//! use it; `smtps://` (implicit TLS) stays on lettre's own transport.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lettre::Message;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use tokio::net::TcpStream;

use crate::transport::SendError;

/// Idle connections kept for reuse.
const MAX_IDLE: usize = 8;
/// An idle connection older than this is checked with `NOOP` before reuse (servers close
/// idle connections; lettre's pool does the same).
const CHECK_AFTER: Duration = Duration::from_secs(5);
/// Idle connections older than this are closed rather than reused.
const MAX_IDLE_AGE: Duration = Duration::from_secs(60);

/// How the connection is encrypted.
#[derive(Clone)]
enum Starttls {
    /// Plain SMTP.
    No,
    /// STARTTLS, refusing a server that does not offer it.
    Required(TlsParameters),
    /// STARTTLS when the server offers it.
    Opportunistic(TlsParameters),
}

/// An SMTP transport for `smtp://` URLs whose connections have `TCP_NODELAY` set. Cheap to
/// clone (the pool is shared).
#[derive(Clone)]
pub(crate) struct NoDelaySmtp {
    inner: Arc<Inner>,
}

struct Inner {
    host: String,
    port: u16,
    starttls: Starttls,
    credentials: Option<Credentials>,
    hello: ClientId,
    timeout: Duration,
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
}

impl NoDelaySmtp {
    /// The transport of `url` when it is an `smtp://` URL (lettre's syntax: `tls` query
    /// parameter, user and password percent-encoded, the path as the EHLO name); `None` for
    /// other schemes.
    ///
    /// Errors: the reason when the URL cannot be parsed, names no host, has an unknown `tls`
    /// value or a credential that is not UTF-8.
    pub(crate) fn from_url(url: &str, timeout: Duration) -> Result<Option<Self>, String> {
        let url = url::Url::parse(url).map_err(|e| format!("SMTP URL: {e}"))?;
        if url.scheme() != "smtp" {
            return Ok(None);
        }
        let host = url.host_str().ok_or("SMTP URL: no host")?.to_owned();
        let tls = url.query_pairs().find(|(k, _)| k == "tls").map(|(_, v)| v.into_owned());
        let params = || TlsParameters::new(host.clone()).map_err(|e| format!("SMTP TLS: {e}"));
        let (starttls, default_port) = match tls.as_deref() {
            None => (Starttls::No, 25),
            Some("required") => (Starttls::Required(params()?), 587),
            Some("opportunistic") => (Starttls::Opportunistic(params()?), 587),
            Some(other) => return Err(format!("SMTP URL: unknown tls value {other:?}")),
        };
        let hello = match url.path().trim_matches('/') {
            "" => ClientId::default(),
            name => ClientId::Domain(name.to_owned()),
        };
        let decode = |s: &str| -> Result<String, String> {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(Cow::into_owned)
                .map_err(|_| "SMTP URL: a credential is not UTF-8".to_owned())
        };
        let credentials = match url.password() {
            Some(password) => Some(Credentials::new(decode(url.username())?, decode(password)?)),
            None => None,
        };
        let port = url.port().unwrap_or(default_port);
        Ok(Some(Self {
            inner: Arc::new(Inner { host, port, starttls, credentials, hello, timeout, idle: Mutex::new(Vec::new()) }),
        }))
    }

    /// Sends `message` over an idle connection or a new one; the connection goes back to
    /// the pool after a successful send.
    ///
    /// Errors: [`SendError`], permanent for a 5xx answer or a message the client cannot
    /// send, transient otherwise (connection refused, timeout, 4xx). The reason never holds
    /// the message.
    pub(crate) async fn send(&self, message: &Message) -> Result<(), SendError> {
        let envelope = message.envelope();
        let body = message.formatted();
        let mut conn = match self.reuse().await {
            Some(conn) => conn,
            None => self.connect().await?,
        };
        match tokio::time::timeout(self.inner.timeout, conn.send(envelope, &body)).await {
            Ok(Ok(_)) => {
                self.put_back(conn);
                Ok(())
            }
            Ok(Err(e)) => {
                if !conn.has_broken() {
                    // The server refused this message; the connection may carry the next.
                    self.put_back(conn);
                }
                Err(SendError { permanent: e.is_permanent() || e.is_client(), reason: e.to_string() })
            }
            Err(_) => Err(SendError::transient(format!("SMTP: no answer within {:?}", self.inner.timeout))),
        }
    }

    /// An idle connection that still works, if any.
    async fn reuse(&self) -> Option<AsyncSmtpConnection> {
        loop {
            let (mut conn, since) = self.inner.idle.lock().unwrap_or_else(PoisonError::into_inner).pop()?;
            let age = since.elapsed();
            if age > MAX_IDLE_AGE || conn.has_broken() {
                continue;
            }
            if age > CHECK_AFTER {
                let alive = tokio::time::timeout(self.inner.timeout, conn.test_connected()).await.unwrap_or(false);
                if !alive {
                    continue;
                }
            }
            return Some(conn);
        }
    }

    fn put_back(&self, conn: AsyncSmtpConnection) {
        let mut idle = self.inner.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push((conn, Instant::now()));
        }
    }

    /// Opens a connection: TCP with `TCP_NODELAY`, EHLO, STARTTLS as configured, AUTH when
    /// the URL has credentials.
    async fn connect(&self) -> Result<AsyncSmtpConnection, SendError> {
        let i = &self.inner;
        let fail = |what: &str, e: &dyn std::fmt::Display| SendError::transient(format!("SMTP {what}: {e}"));
        let within = |what: &'static str| move |_| SendError::transient(format!("SMTP {what}: timed out"));
        let stream = tokio::time::timeout(i.timeout, TcpStream::connect((i.host.as_str(), i.port)))
            .await
            .map_err(within("connect"))?
            .map_err(|e| fail("connect", &e))?;
        stream.set_nodelay(true).map_err(|e| fail("TCP_NODELAY", &e))?;
        let mut conn =
            tokio::time::timeout(i.timeout, AsyncSmtpConnection::connect_with_transport(Box::new(stream), &i.hello))
                .await
                .map_err(within("greeting"))?
                .map_err(|e| fail("greeting", &e))?;
        let upgrade = match &i.starttls {
            Starttls::No => None,
            Starttls::Required(p) => Some(p.clone()),
            Starttls::Opportunistic(p) => conn.can_starttls().then(|| p.clone()),
        };
        if let Some(params) = upgrade {
            tokio::time::timeout(i.timeout, conn.starttls(params, &i.hello))
                .await
                .map_err(within("STARTTLS"))?
                .map_err(|e| fail("STARTTLS", &e))?;
        }
        if let Some(credentials) = &i.credentials {
            tokio::time::timeout(i.timeout, conn.auth(DEFAULT_MECHANISMS, credentials))
                .await
                .map_err(within("AUTH"))?
                .map_err(|e| SendError { permanent: e.is_permanent(), reason: format!("SMTP AUTH: {e}") })?;
        }
        Ok(conn)
    }
}
