//! Just enough MIME for the tests: headers (unfolded), one level of multipart, and the
//! 7bit/8bit, quoted-printable and base64 transfer encodings.

use base64::Engine as _;

pub(crate) struct Parsed {
    pub headers: Vec<(String, String)>,
    /// `(content type, decoded text)` of every part (or of the single body).
    pub parts: Vec<(String, String)>,
}

impl Parsed {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn part(&self, content_type: &str) -> &str {
        self.parts
            .iter()
            .find(|(t, _)| t.to_ascii_lowercase().starts_with(content_type))
            .map(|(_, body)| body.as_str())
            .unwrap_or_else(|| panic!("no {content_type} part"))
    }

    /// Every part's decoded text, concatenated.
    pub fn all_text(&self) -> String {
        self.parts.iter().map(|(_, b)| b.as_str()).collect::<Vec<_>>().join("\n")
    }
}

fn split_head(raw: &str) -> (Vec<(String, String)>, &str) {
    let (head, body) = raw.split_once("\r\n\r\n").or_else(|| raw.split_once("\n\n")).unwrap_or((raw, ""));
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some((_, v)) = headers.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((n, v)) = line.split_once(':') {
            headers.push((n.trim().to_owned(), v.trim().to_owned()));
        }
    }
    (headers, body)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

fn decode_qp(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            if bytes[i + 1..].starts_with(b"\r\n") {
                i += 3;
                continue;
            }
            if bytes[i + 1..].starts_with(b"\n") {
                i += 2;
                continue;
            }
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn decode(headers: &[(String, String)], body: &str) -> String {
    let text = match header(headers, "Content-Transfer-Encoding").map(str::to_ascii_lowercase).as_deref() {
        Some("quoted-printable") => decode_qp(body),
        Some("base64") => {
            let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(compact).unwrap()).unwrap()
        }
        _ => body.to_owned(),
    };
    text.replace("\r\n", "\n")
}

pub(crate) fn parse(raw: &str) -> Parsed {
    let (headers, body) = split_head(raw);
    let content_type = header(&headers, "Content-Type").unwrap_or("text/plain").to_owned();
    let mut parts = Vec::new();
    if content_type.to_ascii_lowercase().starts_with("multipart/") {
        let boundary = content_type
            .split(';')
            .find_map(|p| p.trim().strip_prefix("boundary="))
            .map(|b| b.trim_matches('"').to_owned())
            .expect("multipart without boundary");
        let delimiter = format!("--{boundary}");
        for chunk in body.split(&delimiter).skip(1) {
            if chunk.starts_with("--") {
                break;
            }
            let chunk = chunk.strip_prefix("\r\n").unwrap_or(chunk);
            let (part_headers, part_body) = split_head(chunk);
            let part_body = part_body.strip_suffix("\r\n").unwrap_or(part_body);
            let t = header(&part_headers, "Content-Type").unwrap_or("text/plain").to_owned();
            parts.push((t, decode(&part_headers, part_body)));
        }
    } else {
        parts.push((content_type, decode(&headers, body)));
    }
    Parsed { headers, parts }
}

/// Runs of exactly six ASCII digits (not inside a longer digit run).
pub(crate) fn six_digit_runs(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut run = String::new();
    for c in s.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit() {
            run.push(c);
        } else {
            if run.len() == 6 {
                out.push(run.clone());
            }
            run.clear();
        }
    }
    out
}

/// The token of the first `reset-otp?token=…` link, as the acceptance test's regex
/// `reset-otp\?token=([^\s"'<>&]+)` captures it.
pub(crate) fn reset_token(text: &str) -> Option<String> {
    let start = text.find("reset-otp?token=")? + "reset-otp?token=".len();
    let token: String = text[start..]
        .chars()
        .take_while(|c| !c.is_whitespace() && !matches!(c, '"' | '\'' | '<' | '>' | '&'))
        .collect();
    (!token.is_empty()).then_some(token)
}
