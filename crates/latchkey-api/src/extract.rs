//! Extractors: the request context (clock read once, client IP, user agent), the signed-in
//! user, the operator, and the JSON body rules.

use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::error::{JsonPayloadError, QueryPayloadError};
use actix_web::http::header;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use ipnet::IpNet;
use latchkey_core::crypto::ct_eq;
use latchkey_tenant::{Auth, Error as Domain, PendingNotices, RequestCtx};

use crate::error::ApiError;
use crate::state::AppState;

/// Longest body accepted (1 MiB); larger bodies are 413.
pub const MAX_BODY_BYTES: usize = 1 << 20;

fn state(req: &HttpRequest) -> Result<&web::Data<AppState>, ApiError> {
    req.app_data::<web::Data<AppState>>().ok_or_else(|| ApiError::Domain(Domain::Internal("app state missing".into())))
}

/// One `X-Forwarded-For` entry as an address: `ip` (IPv4 or IPv6), `ip:port` (IPv4),
/// `[v6]` or `[v6]:port`, surrounding spaces ignored; IPv4-mapped IPv6 addresses become IPv4.
/// `None` for anything else (`unknown`, an obfuscated RFC 7239 identifier such as `_hidden`,
/// garbage, an empty entry).
pub fn forwarded_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let ip = entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|a| a.ip()))
        .ok()
        .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse::<Ipv6Addr>().ok().map(IpAddr::V6))?;
    Some(ip.to_canonical())
}

/// The client IP of a request from `peer` carrying the `X-Forwarded-For` values `forwarded`
/// (in header order), believing only `trusted` proxies (DESIGN.md section 3):
/// - a peer that is not a trusted proxy is the client, whatever the header says;
/// - otherwise walk the entries from the nearest (rightmost) one: a trusted proxy is skipped,
///   the first other address is the client;
/// - an entry that does not parse ([`forwarded_entry`]) ends the walk: the client is then the
///   last trusted hop, the proxy that forwarded that entry, never an entry further left
///   (which the client may have written itself); so is a chain of trusted proxies only.
pub fn client_ip_of<'a>(peer: IpAddr, forwarded: impl IntoIterator<Item = &'a str>, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut hop = peer.to_canonical();
    if !is_trusted(&hop) {
        return hop;
    }
    let entries: Vec<&str> = forwarded.into_iter().flat_map(|v| v.split(',')).collect();
    for entry in entries.into_iter().rev() {
        match forwarded_entry(entry) {
            Some(ip) if is_trusted(&ip) => hop = ip,
            Some(ip) => return ip,
            None => return hop,
        }
    }
    hop
}

/// The client IP of `req`: see [`client_ip_of`]; `None` without a socket peer.
pub fn client_ip(req: &HttpRequest, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    // A header value that is not visible ASCII cannot be read: like an entry that does not
    // parse, it ends the walk at the proxy that sent it.
    let values: Vec<&str> =
        req.headers().get_all("x-forwarded-for").map(|v| v.to_str().unwrap_or("unreadable")).collect();
    Some(client_ip_of(peer, values, trusted))
}

fn context(req: &HttpRequest, st: &AppState) -> RequestCtx {
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.chars().take(512).collect::<String>());
    // One set of pending notices per request, shared by every extractor's context and read
    // by the `deliver_notices` middleware once the handler is done.
    let existing = req.extensions().get::<PendingNotices>().cloned();
    let notices = match existing {
        Some(shared) => shared,
        None => {
            let fresh = PendingNotices::default();
            req.extensions_mut().insert(fresh.clone());
            fresh
        }
    };
    RequestCtx {
        now: st.clock.now(),
        ip: client_ip(req, &st.trusted_proxies).map(|ip| ip.to_string()),
        user_agent,
        notices,
    }
}

/// The request context: the instant (the request's only clock read), client IP and UA.
#[derive(Debug, Clone)]
pub struct Ctx(pub RequestCtx);

impl FromRequest for Ctx {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(state(req).map(|st| Ctx(context(req, st))))
    }
}

fn bearer(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned()).filter(|t| !t.is_empty())
}

/// A signed-in request (`Authorization: Bearer <authentication_token>`).
///
/// Rejects with 401 `unauthenticated` when the token is missing, unknown, expired or ended.
#[derive(Debug, Clone)]
pub struct Authed {
    /// The request context.
    pub ctx: RequestCtx,
    /// The session, user and tenant.
    pub auth: Auth,
}

impl FromRequest for Authed {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let found = state(req).map(|st| (st.clone(), context(req, st)));
        let token = bearer(req);
        Box::pin(async move {
            let (st, ctx) = found?;
            let token = token.ok_or(ApiError::Domain(Domain::Unauthenticated))?;
            let auth = st.service.authenticate(&ctx, &token).await?;
            crate::middleware::record_principal(auth.tenant.id, auth.user.id);
            Ok(Authed { ctx, auth })
        })
    }
}

/// An operator request (`Authorization: Bearer <LATCHKEY_OPERATOR_TOKEN>`, compared in
/// constant time).
///
/// Rejects with 401 `unauthenticated` for a missing or wrong token, 403 `forbidden` when
/// no operator token is configured.
#[derive(Debug, Clone)]
pub struct Operator(pub RequestCtx);

impl FromRequest for Operator {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let result = state(req).and_then(|st| {
            let Some(expected) = st.operator_token.as_deref() else {
                return Err(ApiError::Domain(Domain::Forbidden));
            };
            let given = bearer(req).unwrap_or_default();
            if given.is_empty() || !ct_eq(given.as_bytes(), expected.as_bytes()) {
                return Err(ApiError::Domain(Domain::Unauthenticated));
            }
            Ok(Operator(context(req, st)))
        });
        std::future::ready(result)
    }
}

/// Maps JSON body errors to problems: 413 over 1 MiB, 415 without a JSON content type,
/// 400 `invalid_request` for malformed JSON and missing or mistyped fields.
pub fn json_error(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    let api = match &err {
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => ApiError::PayloadTooLarge,
        JsonPayloadError::ContentType => ApiError::UnsupportedMediaType,
        JsonPayloadError::Deserialize(e) => ApiError::InvalidRequest(format!("invalid JSON body: {e}")),
        other => ApiError::InvalidRequest(format!("invalid JSON body: {other}")),
    };
    api.into()
}

/// Maps query string errors to 400 `invalid_request`.
pub fn query_error(err: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::InvalidRequest(format!("invalid query: {err}")).into()
}

/// Maps path errors to 404 (an id that cannot exist is simply not found).
pub fn path_error(_err: actix_web::error::PathError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::NotFound.into()
}

/// The JSON body settings: 1 MiB limit, problem errors.
pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default().limit(MAX_BODY_BYTES).error_handler(json_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn every_form_of_an_entry_parses() {
        for (entry, expect) in [
            ("203.0.113.7", "203.0.113.7"),
            (" 203.0.113.7 ", "203.0.113.7"),
            ("203.0.113.7:51234", "203.0.113.7"),
            ("2001:db8::7", "2001:db8::7"),
            ("[2001:db8::7]", "2001:db8::7"),
            ("[2001:db8::7]:443", "2001:db8::7"),
            ("::ffff:203.0.113.7", "203.0.113.7"),
            ("[::ffff:203.0.113.7]:80", "203.0.113.7"),
        ] {
            assert_eq!(forwarded_entry(entry), Some(ip(expect)), "{entry}");
        }
        for entry in [
            "unknown",
            "_hidden",
            "",
            " ",
            "203.0.113",
            "203.0.113.7:",
            "[2001:db8::7",
            "2001:db8::7]:1",
            "x:1",
            "203.0.113.7:99999",
            "for=203.0.113.7",
        ] {
            assert_eq!(forwarded_entry(entry), None, "{entry:?}");
        }
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_the_header_says() {
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(client_ip_of(ip("198.51.100.1"), ["203.0.113.7"], &trusted), ip("198.51.100.1"));
        assert_eq!(client_ip_of(ip("198.51.100.1"), ["203.0.113.7"], &[]), ip("198.51.100.1"));
    }

    #[test]
    fn the_walk_skips_trusted_proxies_from_the_nearest_entry() {
        let trusted = nets(&["10.0.0.0/8", "2001:db8:ffff::/48"]);
        let peer = ip("10.0.0.1");
        for (header, client) in [
            ("198.51.100.1, 203.0.113.7, 10.1.2.3", "203.0.113.7"),
            ("198.51.100.1, 203.0.113.7:4711, 10.1.2.3:80", "203.0.113.7"),
            ("198.51.100.1, [2001:db8::7]:4711, [2001:db8:ffff::1]:80", "2001:db8::7"),
            ("2001:db8::7", "2001:db8::7"),
            ("[2001:db8::7]", "2001:db8::7"),
        ] {
            assert_eq!(client_ip_of(peer, [header], &trusted), ip(client), "{header}");
        }
        // Several headers are one list, in order.
        assert_eq!(client_ip_of(peer, ["198.51.100.1", "203.0.113.7, 10.1.2.3"], &trusted), ip("203.0.113.7"));
        // No header, or only trusted hops: the farthest trusted hop.
        assert_eq!(client_ip_of(peer, [], &trusted), peer);
        assert_eq!(client_ip_of(peer, ["10.9.9.9, 10.1.2.3"], &trusted), ip("10.9.9.9"));
        // A v4-mapped peer is trusted as its IPv4 address.
        assert_eq!(client_ip_of(ip("::ffff:10.0.0.1"), ["203.0.113.7"], &trusted), ip("203.0.113.7"));
    }

    #[test]
    fn an_entry_that_does_not_parse_ends_the_walk_at_the_proxy_that_forwarded_it() {
        let trusted = nets(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.1");
        for (header, client) in [
            // The client wrote 198.51.100.1; the proxy 10.1.2.3 did not know its peer.
            ("198.51.100.1, unknown, 10.1.2.3", "10.1.2.3"),
            ("198.51.100.1, unknown", "10.0.0.1"),
            ("198.51.100.1, garbage:port, 10.1.2.3", "10.1.2.3"),
            ("198.51.100.1, _hidden", "10.0.0.1"),
            ("198.51.100.1,, 10.1.2.3", "10.1.2.3"),
            ("198.51.100.1, 203.0.113.7 10.1.2.3", "10.0.0.1"),
        ] {
            assert_eq!(client_ip_of(peer, [header], &trusted), ip(client), "{header}");
        }
    }
}
