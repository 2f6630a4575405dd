//! Webhook rules (DESIGN.md 5.6), pure: which URLs and addresses an endpoint may have (the
//! SSRF guard), which events it may subscribe to, and the shape of its signing secret.
//!
//! The guard is applied twice: when an endpoint is created or changed, and again at every
//! delivery, where the worker resolves the host, refuses the delivery if any address is
//! forbidden, and connects to the address it checked (so a DNS answer that changes between
//! the check and the connection — DNS rebinding — cannot slip past).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use crate::AuditKind;

/// The longest webhook URL accepted, in bytes.
pub const MAX_URL_BYTES: usize = 2048;

/// The prefix of a webhook secret as shown (Standard Webhooks).
pub const SECRET_PREFIX: &str = "whsec_";

/// What the guard lets through (`LATCHKEY_WEBHOOK_ALLOW_HTTP`, `LATCHKEY_WEBHOOK_ALLOW_PRIVATE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UrlPolicy {
    /// Accept `http://` as well as `https://`.
    pub allow_http: bool,
    /// Accept hosts on loopback, private, link-local, unique-local, multicast and
    /// unspecified addresses.
    pub allow_private: bool,
}

/// Why a URL or an address was refused (the message is safe to show to the admin).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

fn refused(why: impl Into<String>) -> Refused {
    Refused(why.into())
}

/// Where a checked URL points: the host to resolve (or the address it names) and the port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The URL, normalised.
    pub url: url::Url,
    /// The host name to resolve, without brackets.
    pub host: String,
    /// The address, when the host is an IP literal (nothing to resolve).
    pub ip: Option<IpAddr>,
    /// The port (the scheme's default when the URL has none).
    pub port: u16,
    /// `https`.
    pub tls: bool,
}

/// Checks a webhook URL: absolute `https://` (or `http://` when allowed), at most
/// [`MAX_URL_BYTES`], with a host, without credentials; an IP-literal host must pass
/// [`check_address`]. A host name still has to be resolved and its addresses checked.
///
/// Errors: [`Refused`], saying why.
pub fn check_url(raw: &str, policy: UrlPolicy) -> Result<Target, Refused> {
    if raw.len() > MAX_URL_BYTES {
        return Err(refused(format!("url must be at most {MAX_URL_BYTES} bytes")));
    }
    if raw.trim() != raw || raw.is_empty() {
        return Err(refused("url must be an absolute http(s) URL without surrounding spaces"));
    }
    let url = url::Url::parse(raw).map_err(|e| refused(format!("url is not an absolute URL: {e}")))?;
    let tls = match url.scheme() {
        "https" => true,
        "http" if policy.allow_http => false,
        "http" => return Err(refused("url must use https (plain http is not allowed on this server)")),
        other => return Err(refused(format!("url must use https, not {other}"))),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(refused("url must not contain credentials"));
    }
    let (host, ip) = match url.host() {
        Some(url::Host::Domain(d)) if !d.is_empty() => (d.to_owned(), None),
        Some(url::Host::Ipv4(v4)) => (v4.to_string(), Some(IpAddr::V4(v4))),
        Some(url::Host::Ipv6(v6)) => (v6.to_string(), Some(IpAddr::V6(v6))),
        _ => return Err(refused("url must have a host")),
    };
    let port = url.port_or_known_default().ok_or_else(|| refused("url must have a port"))?;
    if let Some(ip) = ip {
        check_address(ip, policy)?;
    }
    Ok(Target { url, host, ip, port, tls })
}

/// Checks the addresses a host resolved to: every one must pass [`check_address`] (a host
/// with one forbidden address among public ones is refused whole).
///
/// Errors: [`Refused`] for no address or a forbidden one.
pub fn check_addresses(addrs: &[IpAddr], policy: UrlPolicy) -> Result<(), Refused> {
    if addrs.is_empty() {
        return Err(refused("the host does not resolve"));
    }
    addrs.iter().try_for_each(|ip| check_address(*ip, policy))
}

/// Checks one address against the SSRF guard, unless the policy allows private addresses.
///
/// Errors: [`Refused`] naming the address and its range.
pub fn check_address(ip: IpAddr, policy: UrlPolicy) -> Result<(), Refused> {
    match (policy.allow_private, forbidden_range(ip)) {
        (false, Some(range)) => Err(refused(format!("the host resolves to {ip}, a {range} address"))),
        _ => Ok(()),
    }
}

/// The range that makes `ip` unfit for a webhook, if any: loopback, private (including
/// shared CGNAT space), link-local, unique-local, multicast, unspecified, broadcast or
/// reserved; IPv4 addresses embedded in IPv6 (`::ffff:127.0.0.1`, `::127.0.0.1`, NAT64
/// `64:ff9b::/96`, 6to4 `2002::/16`) are judged as IPv4.
pub fn forbidden_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast()
        || a >= 240
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
        || (a == 198 && (b & 0xfe) == 18)
    {
        // 192.0.0.0/24 (IETF protocol assignments), 198.18.0.0/15 (benchmarking, RFC 2544).
        Some("reserved")
    } else {
        None
    }
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    // IPv4-compatible (`::a.b.c.d`, deprecated) and NAT64 (`64:ff9b::a.b.c.d`).
    let embedded = Ipv4Addr::new(
        (segments[6] >> 8) as u8,
        (segments[6] & 0xff) as u8,
        (segments[7] >> 8) as u8,
        (segments[7] & 0xff) as u8,
    );
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if segments[..6] == [0; 6] || segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        forbidden_v4(embedded)
    } else if segments[0] == 0x2002 {
        // 6to4 (RFC 3056): the IPv4 address in bits 16-48.
        let v4 = Ipv4Addr::new(
            (segments[1] >> 8) as u8,
            (segments[1] & 0xff) as u8,
            (segments[2] >> 8) as u8,
            (segments[2] & 0xff) as u8,
        );
        forbidden_v4(v4)
    } else if segments[0] & 0xfe00 == 0xfc00 {
        Some("unique-local")
    } else if segments[0] & 0xffc0 == 0xfe80 || segments[0] & 0xffc0 == 0xfec0 {
        Some("link-local")
    } else if segments[0] & 0xff00 == 0xff00 {
        Some("multicast")
    } else {
        None
    }
}

/// What an endpoint subscribes to: every event, or some audit kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Events {
    /// `["*"]`: every audit event of the tenant.
    All,
    /// These kinds (sorted, no duplicates).
    Kinds(Vec<AuditKind>),
}

impl Events {
    /// Parses the `events` of a request: `["*"]` or a non-empty list of audit kinds.
    ///
    /// Errors: [`Refused`] for an empty list, an unknown kind, or `*` among kinds.
    pub fn parse(items: &[String]) -> Result<Self, Refused> {
        if items.is_empty() {
            return Err(refused("events must list audit kinds, or be [\"*\"]"));
        }
        if items.iter().any(|i| i == "*") {
            return if items.len() == 1 { Ok(Events::All) } else { Err(refused("\"*\" must be the only event")) };
        }
        let mut kinds = items
            .iter()
            .map(|i| i.parse::<AuditKind>().map_err(|_| refused(format!("unknown event type `{i}`"))))
            .collect::<Result<Vec<_>, _>>()?;
        kinds.sort_by_key(|k| k.as_str());
        kinds.dedup();
        Ok(Events::Kinds(kinds))
    }

    /// The stored form: `*`, or `,kind,kind,` (so that a kind is found as `,kind,`).
    pub fn to_stored(&self) -> String {
        match self {
            Events::All => "*".to_owned(),
            Events::Kinds(kinds) => {
                let mut s = String::from(",");
                for k in kinds {
                    s.push_str(k.as_str());
                    s.push(',');
                }
                s
            }
        }
    }

    /// The stored form read back; unknown kinds (from a newer version) are skipped.
    pub fn from_stored(stored: &str) -> Self {
        if stored == "*" {
            return Events::All;
        }
        Events::Kinds(stored.split(',').filter_map(|k| k.parse().ok()).collect())
    }

    /// As the API shows it: `["*"]` or the kinds.
    pub fn names(&self) -> Vec<String> {
        match self {
            Events::All => vec!["*".to_owned()],
            Events::Kinds(kinds) => kinds.iter().map(|k| k.as_str().to_owned()).collect(),
        }
    }
}

/// The Standard Webhooks signature of one attempt (DESIGN.md 5.6): `v1,` + standard base64
/// of HMAC-SHA256, keyed with the secret's bytes, over `{id}.{timestamp}.{body}`, where `id`
/// is the `webhook-id` header and `timestamp` the `webhook-timestamp` header (Unix seconds).
pub fn sign(secret: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    use hmac::{KeyInit as _, Mac as _};
    // HMAC takes keys of any length: this never fails.
    let mut mac = match <hmac::Hmac<sha2::Sha256>>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::from("v1,"),
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// A new signing secret: 32 random bytes, shown as `whsec_` + standard base64 (Standard
/// Webhooks). Returns (the shown form, the bytes to seal).
pub fn generate_secret() -> (Zeroizing<String>, Zeroizing<Vec<u8>>) {
    let mut bytes = Zeroizing::new(vec![0u8; 32]);
    rand::fill(&mut bytes[..]);
    let shown = Zeroizing::new(format!("{SECRET_PREFIX}{}", STANDARD.encode(&bytes[..])));
    (shown, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: UrlPolicy = UrlPolicy { allow_http: false, allow_private: false };
    const OPEN: UrlPolicy = UrlPolicy { allow_http: true, allow_private: true };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_listed_range_is_refused() {
        for (addr, range) in [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.254", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "private"),
            ("169.254.169.254", "link-local"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("255.255.255.255", "reserved"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fc00::1", "unique-local"),
            ("fd12:3456::1", "unique-local"),
            ("fe80::1", "link-local"),
            ("fec0::1", "link-local"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::127.0.0.1", "loopback"),
            ("64:ff9b::7f00:1", "loopback"),
            ("64:ff9b::a00:1", "private"),
            ("192.0.0.1", "reserved"),
            ("198.18.0.1", "reserved"),
            ("198.19.255.254", "reserved"),
            ("2002:7f00:1::", "loopback"),
            ("2002:a00:1::1", "private"),
        ] {
            assert_eq!(forbidden_range(ip(addr)), Some(range), "{addr}");
            assert!(check_address(ip(addr), STRICT).is_err(), "{addr}");
            assert!(check_address(ip(addr), OPEN).is_ok(), "{addr} allowed by the policy");
        }
        for addr in [
            "93.184.215.14",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "192.0.2.1",
            "198.20.0.1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
            "2002:808:808::1",
        ] {
            assert_eq!(forbidden_range(ip(addr)), None, "{addr}");
        }
        assert!(check_addresses(&[ip("8.8.8.8"), ip("10.0.0.1")], STRICT).is_err(), "one bad address spoils all");
        assert!(check_addresses(&[], OPEN).is_err());
    }

    #[test]
    fn urls_are_checked() {
        let t = check_url("https://hooks.example.com/x?y=1", STRICT).unwrap();
        assert_eq!((t.host.as_str(), t.port, t.tls, t.ip), ("hooks.example.com", 443, true, None));
        let t = check_url("http://[::ffff:8.8.8.8]:8080/h", OPEN).unwrap();
        assert_eq!(t.port, 8080);
        assert!(t.ip.is_some());
        for bad in [
            "http://hooks.example.com/",
            "file:///etc/passwd",
            "gopher://127.0.0.1:70/x",
            "ftp://example.com/x",
            "https://user:pw@example.com/",
            "https://user@example.com/",
            "https://127.0.0.1/",
            "https://[::1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://10.0.0.1/",
            "/relative",
            "https://",
            " https://example.com/",
            "",
        ] {
            assert!(check_url(bad, STRICT).is_err(), "{bad}");
        }
        for bad in ["http://", "http://:8080/hook", "file:///etc/passwd", "ftp://127.0.0.1/x"] {
            assert!(check_url(bad, OPEN).is_err(), "{bad}");
        }
        assert!(check_url("http://127.0.0.1:9/x", OPEN).is_ok());
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES));
        assert!(check_url(&long, STRICT).is_err());
        let edge = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES - 20));
        assert_eq!(edge.len(), MAX_URL_BYTES);
        assert!(check_url(&edge, STRICT).is_ok());
    }

    #[test]
    fn events_parse_and_round_trip() {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(Events::parse(&s(&["*"])).unwrap(), Events::All);
        let e = Events::parse(&s(&["signed_in", "recovery_requested", "signed_in"])).unwrap();
        assert_eq!(e.names(), vec!["recovery_requested", "signed_in"]);
        assert_eq!(e.to_stored(), ",recovery_requested,signed_in,");
        assert_eq!(Events::from_stored(&e.to_stored()), e);
        assert_eq!(Events::from_stored("*"), Events::All);
        assert!(Events::parse(&s(&[])).is_err());
        assert!(Events::parse(&s(&["nope"])).is_err());
        assert!(Events::parse(&s(&["*", "signed_in"])).is_err());
    }

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The test vector of the Standard Webhooks specification (its reference libraries).
        let secret = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_are_32_bytes_of_base64() {
        let (shown, bytes) = generate_secret();
        assert_eq!(bytes.len(), 32);
        let b64 = shown.strip_prefix(SECRET_PREFIX).unwrap();
        assert_eq!(STANDARD.decode(b64).unwrap(), bytes.to_vec());
        assert_ne!(generate_secret().1, bytes);
    }
}
