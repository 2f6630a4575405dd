//! A fast local SMTP sink: accepts every message at once (no TLS, no authentication, nothing
//! written to disk) and records, per recipient, the instant it answered `250` to the end of
//! `DATA` — the moment the server has accepted the message.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One accepted message for one recipient.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The `RCPT TO` address, lower-cased.
    pub recipient: String,
    /// When the sink answered `250` to the end of `DATA`.
    pub at: Instant,
}

/// The running sink.
#[derive(Debug, Clone)]
pub struct Sink {
    /// Where it listens.
    pub addr: SocketAddr,
    accepted: Arc<Mutex<Vec<Accepted>>>,
}

impl Sink {
    /// Starts the sink on a free port of 127.0.0.1.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let sink = Self { addr, accepted: Arc::clone(&accepted) };
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let accepted = Arc::clone(&accepted);
                tokio::spawn(async move {
                    let _ = session(stream, accepted).await;
                });
            }
        });
        Ok(sink)
    }

    /// Messages accepted so far (one entry per recipient).
    pub fn count(&self) -> usize {
        self.accepted.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Everything accepted so far, and forgets it.
    pub fn take(&self) -> Vec<Accepted> {
        std::mem::take(&mut *self.accepted.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The recipient of a `RCPT TO:<addr>` line.
pub fn rcpt_address(line: &str) -> Option<String> {
    let rest = line.get(..8).filter(|p| p.eq_ignore_ascii_case("RCPT TO:")).map(|_| &line[8..])?;
    let rest = rest.trim_start();
    let addr = match rest.strip_prefix('<') {
        Some(inner) => inner.split('>').next()?,
        None => rest.split_whitespace().next()?,
    };
    Some(addr.trim().to_ascii_lowercase())
}

async fn session(stream: TcpStream, accepted: Arc<Mutex<Vec<Accepted>>>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 latchkey-bench SMTP sink\r\n").await?;
    let mut recipients: Vec<String> = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end();
        let verb = cmd.split([' ', ':']).next().unwrap_or_default().to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => write.write_all(b"250-latchkey-bench\r\n250 8BITMIME\r\n").await?,
            "HELO" => write.write_all(b"250 latchkey-bench\r\n").await?,
            "MAIL" => {
                recipients.clear();
                write.write_all(b"250 OK\r\n").await?;
            }
            "RCPT" => match rcpt_address(cmd) {
                Some(addr) => {
                    recipients.push(addr);
                    write.write_all(b"250 OK\r\n").await?;
                }
                None => write.write_all(b"501 bad recipient\r\n").await?,
            },
            "DATA" => {
                write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                }
                let at = Instant::now();
                {
                    let mut all = accepted.lock().unwrap_or_else(PoisonError::into_inner);
                    all.extend(recipients.drain(..).map(|recipient| Accepted { recipient, at }));
                }
                write.write_all(b"250 OK queued\r\n").await?;
            }
            "RSET" => {
                recipients.clear();
                write.write_all(b"250 OK\r\n").await?;
            }
            "NOOP" => write.write_all(b"250 OK\r\n").await?,
            "QUIT" => {
                write.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => write.write_all(b"502 not implemented\r\n").await?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients() {
        assert_eq!(rcpt_address("RCPT TO:<A@b.test>").as_deref(), Some("a@b.test"));
        assert_eq!(rcpt_address("rcpt to: <a@b.test> NOTIFY=NEVER").as_deref(), Some("a@b.test"));
        assert_eq!(rcpt_address("RCPT TO:a@b.test").as_deref(), Some("a@b.test"));
        assert_eq!(rcpt_address("MAIL FROM:<a@b.test>"), None);
    }

    #[tokio::test]
    async fn a_message_is_accepted_and_recorded() {
        let sink = Sink::start().await.unwrap();
        let stream = TcpStream::connect(sink.addr).await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        assert!(lines.next_line().await.unwrap().unwrap().starts_with("220"));
        write
            .write_all(b"EHLO me\r\nMAIL FROM:<x@y>\r\nRCPT TO:<u1@bench.test>\r\nDATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n")
            .await
            .unwrap();
        let mut replies = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            replies.push(line);
        }
        assert_eq!(replies.last().map(String::as_str), Some("221 bye"));
        let got = sink.take();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].recipient, "u1@bench.test");
        assert_eq!(sink.count(), 0);
    }
}
