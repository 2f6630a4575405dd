//! A tiny SMTP server of the tests' own: enough of RFC 5321 for lettre (greeting, EHLO/HELO,
//! MAIL, RCPT, DATA with dot-unstuffing, RSET, NOOP, QUIT), recording every accepted message.
//! It can be made to drop every connection at once (`set_down`), and tests that need a
//! refused port start it late on a reserved port (`reserve_port` + `start_on`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Default)]
struct Inner {
    messages: Mutex<Vec<String>>,
    down: AtomicBool,
    reject_recipients: AtomicBool,
    connections: AtomicUsize,
}

pub(crate) struct SmtpServer {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    accept: JoinHandle<()>,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// A free local port (bound, then released), for a server started later.
pub(crate) fn reserve_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

impl SmtpServer {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner::default());
        let shared = Arc::clone(&inner);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                shared.connections.fetch_add(1, Ordering::SeqCst);
                if shared.down.load(Ordering::SeqCst) {
                    drop(stream);
                    continue;
                }
                tokio::spawn(session(stream, Arc::clone(&shared)));
            }
        });
        Self { addr, inner, accept }
    }

    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    pub fn messages(&self) -> Vec<String> {
        self.inner.messages.lock().unwrap().clone()
    }

    /// While down, every connection is closed before the greeting.
    pub fn set_down(&self, down: bool) {
        self.inner.down.store(down, Ordering::SeqCst);
    }

    /// While set, every `RCPT TO` is answered `550` (a permanent refusal).
    pub fn set_reject_recipients(&self, reject: bool) {
        self.inner.reject_recipients.store(reject, Ordering::SeqCst);
    }

    pub fn connections(&self) -> usize {
        self.inner.connections.load(Ordering::SeqCst)
    }
}

async fn session(stream: TcpStream, inner: Arc<Inner>) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    if write.write_all(b"220 localhost ESMTP latchkey-test\r\n").await.is_err() {
        return;
    }
    let mut line = Vec::new();
    loop {
        line.clear();
        match read.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let cmd = String::from_utf8_lossy(&line).trim_end().to_ascii_uppercase();
        let reply: &[u8] = if cmd.starts_with("RCPT") && inner.reject_recipients.load(Ordering::SeqCst) {
            b"550 5.1.1 no such mailbox\r\n"
        } else if cmd.starts_with("EHLO") {
            b"250-localhost\r\n250 8BITMIME\r\n"
        } else if ["HELO", "MAIL", "RCPT", "RSET", "NOOP"].iter().any(|c| cmd.starts_with(c)) {
            b"250 OK\r\n"
        } else if cmd.starts_with("DATA") {
            if write.write_all(b"354 go ahead\r\n").await.is_err() {
                return;
            }
            let mut message = Vec::new();
            loop {
                line.clear();
                match read.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if line == b".\r\n" || line == b".\n" {
                    break;
                }
                let data = if line.starts_with(b"..") { &line[1..] } else { &line[..] };
                message.extend_from_slice(data);
            }
            inner.messages.lock().unwrap().push(String::from_utf8_lossy(&message).into_owned());
            b"250 OK queued\r\n"
        } else if cmd.starts_with("QUIT") {
            let _ = write.write_all(b"221 bye\r\n").await;
            return;
        } else {
            b"502 command not implemented\r\n"
        };
        if write.write_all(reply).await.is_err() {
            return;
        }
    }
}
