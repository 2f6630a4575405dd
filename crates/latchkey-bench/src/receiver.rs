//! A fast local webhook receiver: an HTTP/1.1 server on 127.0.0.1 that answers `204` to every
//! request at once (keep-alive, nothing written to disk) and records each one — its path, the
//! Standard Webhooks headers (`webhook-id`, `webhook-timestamp`, `webhook-signature`), the
//! body, and the instant its last byte arrived. Checking the signatures is left to the caller
//! ([`signature_holds`]), after the run, so the receiver answers as fast as it can.
//!
//! The signature is checked here independently of the service's code (only the `hmac`, `sha2`
//! and `base64` crates): `v1,` + base64 of HMAC-SHA256 over `{id}.{timestamp}.{body}`, keyed
//! with the bytes of the secret `whsec_` + base64.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest request head or body the receiver takes, in bytes (a delivery is well under 4 KiB).
const MAX_REQUEST: usize = 1 << 20;

/// One request the receiver answered `204`.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// When its last byte was read.
    pub at: Instant,
    /// The request target (path and query).
    pub path: String,
    /// `webhook-id`.
    pub id: Option<String>,
    /// `webhook-timestamp` (Unix seconds, as text).
    pub timestamp: Option<String>,
    /// `webhook-signature` (space-separated `v1,<base64>` entries).
    pub signature: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

/// The running receiver.
#[derive(Debug, Clone)]
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    malformed: Arc<AtomicUsize>,
}

impl Receiver {
    /// Starts the receiver on a free port of 127.0.0.1 (it runs until the process ends).
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let receiver =
            Self { addr, arrivals: Arc::new(Mutex::new(Vec::new())), malformed: Arc::new(AtomicUsize::new(0)) };
        let (arrivals, malformed) = (Arc::clone(&receiver.arrivals), Arc::clone(&receiver.malformed));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (arrivals, malformed) = (Arc::clone(&arrivals), Arc::clone(&malformed));
                tokio::spawn(async move {
                    let _ = connection(stream, arrivals, malformed).await;
                });
            }
        });
        Ok(receiver)
    }

    /// Requests answered so far.
    pub fn count(&self) -> usize {
        self.arrivals.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Everything answered so far, and forgets it.
    pub fn take(&self) -> Vec<Arrival> {
        std::mem::take(&mut *self.arrivals.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Requests that could not be parsed (answered `400`, connection closed).
    pub fn malformed(&self) -> usize {
        self.malformed.load(Ordering::Relaxed)
    }
}

async fn connection(
    mut stream: TcpStream,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    malformed: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        match parse_request(&buf) {
            Ok(Some(parsed)) => {
                let at = Instant::now();
                buf.drain(..parsed.used);
                let close = parsed.close;
                arrivals.lock().unwrap_or_else(PoisonError::into_inner).push(parsed.into_arrival(at));
                let answer: &[u8] = if close {
                    b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n"
                } else {
                    b"HTTP/1.1 204 No Content\r\n\r\n"
                };
                stream.write_all(answer).await?;
                if close {
                    return Ok(());
                }
            }
            Ok(None) => {
                if buf.len() > MAX_REQUEST || stream.read_buf(&mut buf).await? == 0 {
                    return Ok(());
                }
            }
            Err(_) => {
                malformed.fetch_add(1, Ordering::Relaxed);
                stream.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await?;
                return Ok(());
            }
        }
    }
}

/// A whole request found by [`parse_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The request target.
    pub path: String,
    /// Header names (lower-cased) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body (`Content-Length` bytes).
    pub body: Vec<u8>,
    /// Bytes of the buffer it took.
    pub used: usize,
    /// The client sent `Connection: close`.
    pub close: bool,
}

impl Parsed {
    fn header(&self, name: &str) -> Option<String> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    }

    fn into_arrival(self, at: Instant) -> Arrival {
        Arrival {
            at,
            id: self.header("webhook-id"),
            timestamp: self.header("webhook-timestamp"),
            signature: self.header("webhook-signature"),
            path: self.path,
            body: self.body,
        }
    }
}

/// Parses one request at the start of `buf`: `None` while incomplete.
///
/// Errors: a malformed request line or `Content-Length`, a chunked body (deliveries are sent
/// with a length), or a body over 1 MiB.
pub fn parse_request(buf: &[u8]) -> Result<Option<Parsed>, String> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "the head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(_method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("bad request line `{request_line}`"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad request line `{request_line}`"));
    }
    let mut headers = Vec::new();
    let mut length = 0usize;
    let mut close = version == "HTTP/1.0";
    for line in lines {
        let (name, value) = line.split_once(':').ok_or_else(|| format!("bad header line `{line}`"))?;
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_owned());
        match name.as_str() {
            "content-length" => length = value.parse().map_err(|_| format!("bad content-length `{value}`"))?,
            "transfer-encoding" => return Err("chunked bodies are not expected".into()),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
        headers.push((name, value));
    }
    if length > MAX_REQUEST {
        return Err(format!("a body of {length} bytes"));
    }
    let body_start = head_end + 4;
    if buf.len() < body_start + length {
        return Ok(None);
    }
    Ok(Some(Parsed {
        path: path.to_owned(),
        headers,
        body: buf[body_start..body_start + length].to_vec(),
        used: body_start + length,
        close,
    }))
}

/// The key bytes of a Standard Webhooks secret (`whsec_` + standard base64), `None` when it
/// has another shape.
pub fn secret_bytes(secret: &str) -> Option<Vec<u8>> {
    STANDARD.decode(secret.strip_prefix("whsec_")?).ok()
}

/// Whether one of the `v1,<base64>` entries of `signature` (space-separated) is the
/// HMAC-SHA256, keyed with `key`, of `{id}.{timestamp}.{body}`.
pub fn signature_holds(key: &[u8], id: &str, timestamp: &str, body: &[u8], signature: &str) -> bool {
    use hmac::{KeyInit as _, Mac as _};
    signature.split(' ').filter_map(|entry| entry.strip_prefix("v1,")).any(|b64| {
        let Ok(tag) = STANDARD.decode(b64) else { return false };
        let Ok(mut mac) = <hmac::Hmac<sha2::Sha256>>::new_from_slice(key) else { return false };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(&tag).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_webhooks_test_vector() {
        // From the Standard Webhooks specification's reference libraries.
        let key = secret_bytes("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let good = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert!(signature_holds(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", body, good));
        assert!(signature_holds(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", body, &format!("v1,AAAA {good}")));
        assert!(!signature_holds(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265331", body, good));
        assert!(!signature_holds(&key, "msg_other", "1614265330", body, good));
        assert!(!signature_holds(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", b"{}", good));
        assert!(!signature_holds(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", body, "v2,whatever"));
        assert_eq!(secret_bytes("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), None);
    }

    #[test]
    fn requests_with_a_length_and_leftovers() {
        let raw = b"POST /hook/3 HTTP/1.1\r\nHost: x\r\nWebhook-Id: d1\r\ncontent-length: 2\r\n\r\n{}POST";
        let p = parse_request(raw).unwrap().unwrap();
        assert_eq!(p.path, "/hook/3");
        assert_eq!(p.body, b"{}");
        assert_eq!(p.used, raw.len() - 4);
        assert!(!p.close);
        assert_eq!(p.header("webhook-id").as_deref(), Some("d1"));
        assert_eq!(parse_request(&raw[..raw.len() - 6]).unwrap(), None);
        assert_eq!(parse_request(b"POST / HTTP/1.1\r\ncontent-length: 3\r\n\r\n{}").unwrap(), None);
        let close = parse_request(b"POST / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap().unwrap();
        assert!(close.close && close.body.is_empty());
        assert!(parse_request(b"garbage\r\n\r\n").is_err());
        assert!(parse_request(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
    }

    #[tokio::test]
    async fn a_delivery_is_answered_204_and_recorded() {
        let receiver = Receiver::start().await.unwrap();
        let mut c = crate::http::Conn::connect(receiver.addr).await.unwrap();
        let req = b"POST /hook/0 HTTP/1.1\r\nhost: x\r\nwebhook-id: d1\r\nwebhook-timestamp: 5\r\nwebhook-signature: v1,x\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(c.send(req).await.unwrap().status, 204);
        assert_eq!(c.send(req).await.unwrap().status, 204);
        let got = receiver.take();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].id.as_deref(), Some("d1"));
        assert_eq!(got[0].timestamp.as_deref(), Some("5"));
        assert_eq!(got[0].signature.as_deref(), Some("v1,x"));
        assert_eq!(got[0].body, b"{}");
        assert_eq!(receiver.count(), 0);
        assert_eq!(receiver.malformed(), 0);
    }
}
