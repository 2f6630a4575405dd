//! Extractors: the request context (clock read once, client IP, user agent), the signed-in
//! user, the operator, and the JSON body rules.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::error::{JsonPayloadError, QueryPayloadError};
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use ipnet::IpNet;
use latchkey_core::crypto::ct_eq;
use latchkey_tenant::{Auth, Error as Domain, RequestCtx};

use crate::error::ApiError;
use crate::state::AppState;

/// Longest body accepted (1 MiB); larger bodies are 413.
pub const MAX_BODY_BYTES: usize = 1 << 20;

fn state(req: &HttpRequest) -> Result<&web::Data<AppState>, ApiError> {
    req.app_data::<web::Data<AppState>>().ok_or_else(|| ApiError::Domain(Domain::Internal("app state missing".into())))
}

/// The client IP: the socket peer, unless the peer is a trusted proxy; then the nearest
/// `X-Forwarded-For` entry that is not a trusted proxy (DESIGN.md section 3).
pub fn client_ip(req: &HttpRequest, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = req.peer_addr().map(|a| a.ip())?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let chain: Vec<IpAddr> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .collect();
    chain.iter().rev().find(|ip| !is_trusted(ip)).or(chain.first()).copied().or(Some(peer))
}

fn context(req: &HttpRequest, st: &AppState) -> RequestCtx {
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.chars().take(512).collect::<String>());
    RequestCtx { now: st.clock.now(), ip: client_ip(req, &st.trusted_proxies).map(|ip| ip.to_string()), user_agent }
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
