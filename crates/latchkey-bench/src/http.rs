//! A minimal HTTP/1.1 client over one keep-alive TCP connection: write a request, read one
//! response (`Content-Length` or chunked). No pipelining, no TLS, no redirects — a load
//! generator's client, as cheap per request as a client can be, so that the CPU it takes from
//! the service it measures (on the same machine) stays small and the same for every target.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response: status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// One keep-alive connection.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    closed: bool,
}

impl Conn {
    /// Connects to `addr` (with `TCP_NODELAY`).
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self { stream, buf: Vec::with_capacity(8192), closed: false })
    }

    /// Whether the server asked to close the connection (`Connection: close`).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Sends `request` (a complete HTTP/1.1 request) and reads its response.
    pub async fn send(&mut self, request: &[u8]) -> std::io::Result<Response> {
        self.stream.write_all(request).await?;
        loop {
            match parse_response(&self.buf)? {
                Parsed::Done { response, used, close } => {
                    self.buf.drain(..used);
                    self.closed = close;
                    return Ok(response);
                }
                Parsed::Incomplete => {
                    let n = self.stream.read_buf(&mut self.buf).await?;
                    if n == 0 {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the server closed the connection",
                        ));
                    }
                }
            }
        }
    }
}

/// A `GET` request, with a bearer token if given.
pub fn get(host: &str, path: &str, bearer: Option<&str>) -> Vec<u8> {
    let auth = bearer.map(|t| format!("authorization: Bearer {t}\r\n")).unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: latchkey-bench\r\n{auth}\r\n").into_bytes()
}

/// A `POST` of a JSON body.
pub fn post_json(host: &str, path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: latchkey-bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// What [`parse_response`] found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// A whole response, `used` bytes long; `close` when the server will close.
    Done {
        /// The response.
        response: Response,
        /// Bytes it took.
        used: usize,
        /// `Connection: close` was sent.
        close: bool,
    },
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad HTTP response: {what}"))
}

/// Parses one response at the start of `buf`.
///
/// Errors: a malformed status line, length or chunk size.
pub fn parse_response(buf: &[u8]) -> std::io::Result<Parsed> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return Ok(Parsed::Incomplete);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| bad("head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad("status line"))?;
    let mut length = None;
    let mut chunked = false;
    let mut close = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| bad("content-length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    let body_start = head_end + 4;
    if chunked {
        let mut at = body_start;
        let mut body = Vec::new();
        loop {
            let Some(line_end) = find(&buf[at..], b"\r\n") else {
                return Ok(Parsed::Incomplete);
            };
            let size_text = std::str::from_utf8(&buf[at..at + line_end]).map_err(|_| bad("chunk size"))?;
            let size_text = size_text.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("chunk size"))?;
            let data = at + line_end + 2;
            if buf.len() < data + size + 2 {
                return Ok(Parsed::Incomplete);
            }
            if size == 0 {
                // No trailers from the servers we talk to: the last chunk ends with CRLF.
                return Ok(Parsed::Done { response: Response { status, body }, used: data + 2, close });
            }
            body.extend_from_slice(&buf[data..data + size]);
            at = data + size + 2;
        }
    }
    let length = match length {
        Some(n) => n,
        None if status == 204 || status == 304 || (100..200).contains(&status) => 0,
        None => return Err(bad("neither content-length nor chunked")),
    };
    if buf.len() < body_start + length {
        return Ok(Parsed::Incomplete);
    }
    Ok(Parsed::Done {
        response: Response { status, body: buf[body_start..body_start + length].to_vec() },
        used: body_start + length,
        close,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_and_leftovers() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nContent-Type: text/plain\r\n\r\nhelloHTTP/1.1";
        match parse_response(raw).unwrap() {
            Parsed::Done { response, used, close } => {
                assert_eq!(response, Response { status: 200, body: b"hello".to_vec() });
                assert_eq!(used, raw.len() - "HTTP/1.1".len());
                assert!(!close);
            }
            Parsed::Incomplete => panic!("complete"),
        }
        assert_eq!(parse_response(&raw[..30]).unwrap(), Parsed::Incomplete);
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhel").unwrap(), Parsed::Incomplete);
    }

    #[test]
    fn chunked_and_empty() {
        let raw = b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        match parse_response(raw).unwrap() {
            Parsed::Done { response, used, close } => {
                assert_eq!(response.status, 202);
                assert_eq!(response.body, b"abcde");
                assert_eq!(used, raw.len());
                assert!(close);
            }
            Parsed::Incomplete => panic!("complete"),
        }
        assert_eq!(parse_response(&raw[..raw.len() - 2]).unwrap(), Parsed::Incomplete);
        let empty = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert!(matches!(parse_response(empty).unwrap(), Parsed::Done { used: 27, .. }));
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn requests() {
        let r = String::from_utf8(post_json("h", "/p", "{}")).unwrap();
        assert!(r.starts_with("POST /p HTTP/1.1\r\n"));
        assert!(r.ends_with("content-length: 2\r\n\r\n{}"));
        let g = String::from_utf8(get("h", "/me", Some("tok"))).unwrap();
        assert!(g.contains("authorization: Bearer tok\r\n"));
        assert!(g.ends_with("\r\n\r\n"));
    }
}
