//! Middleware: the per-client-IP limiter of unauthenticated endpoints, request logging with
//! ids (never the query string: it may hold a reset token), and the rewrite of any error
//! response without a problem body into one.

use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::{ErrorHandlerResponse, Next};
use actix_web::{Error, web};
use governor::clock::{Clock as _, DefaultClock};
use tracing::Instrument;

use crate::error::{ApiError, PROBLEM_JSON, problem_response};
use crate::extract::client_ip;
use crate::state::AppState;

/// Whether a path is served without a session (sign-in and its second step, the reset
/// page, the operator endpoints) and so behind the per-IP limiter. The path is compared
/// percent-decoded, as the router matches it, so `/api/v1/%61uth` is limited too.
pub fn is_unauthenticated(path: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    let path = decoded.as_ref();
    path == "/api/v1/auth"
        || path.starts_with("/api/v1/auth/")
        || path == "/reset-otp"
        || path == "/api/v1/tenants"
        || path.starts_with("/api/v1/tenants/")
}

/// The global per-client-IP limiter (`LATCHKEY_SIGNIN_PER_IP_PER_MINUTE`): runs before any
/// tenant lookup, so unknown tenant slugs cost nothing and start no actor.
pub async fn ip_limit(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    if is_unauthenticated(req.path())
        && let Some(st) = req.app_data::<web::Data<AppState>>()
        && let Some(ip) = client_ip(req.request(), &st.trusted_proxies)
        && let Err(not_until) = st.ip_limiter.check_key(&ip)
    {
        let retry_after = not_until.wait_time_from(DefaultClock::default().now()).as_secs().max(1);
        return Err(ApiError::Domain(latchkey_tenant::Error::RateLimited { retry_after }).into());
    }
    next.call(req).await
}

/// Bounds the time a request may take, body included (a client that sends its headers and
/// then trickles or withholds the body is cut off): 408 `request_timeout` after
/// `LATCHKEY_REQUEST_TIMEOUT_SECS`.
pub async fn request_timeout(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let limit =
        req.app_data::<web::Data<AppState>>().map_or(std::time::Duration::from_secs(30), |st| st.request_timeout);
    match tokio::time::timeout(limit, next.call(req)).await {
        Ok(res) => res,
        Err(_) => Err(ApiError::RequestTimeout.into()),
    }
}

/// Logs one line per request (method, route pattern, status, latency, request id) inside a
/// span carrying the request id and, once known, the tenant and user ids (see
/// [`record_principal`]); returns the id in `X-Request-Id`.
pub async fn log_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let request_id = uuid::Uuid::now_v7().simple().to_string();
    let method = req.method().to_string();
    let span = tracing::info_span!(
        "http",
        request_id = %request_id,
        method = %method,
        tenant = tracing::field::Empty,
        user = tracing::field::Empty
    );
    let started = std::time::Instant::now();
    async move {
        let mut res = next.call(req).await?;
        let route = res.request().match_pattern().unwrap_or_else(|| "unmatched".to_owned());
        let status = res.status().as_u16();
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if status >= 500 {
            tracing::error!(%route, status, ms, "request failed");
        } else {
            tracing::info!(%route, status, ms, "request");
        }
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            res.headers_mut().insert(header::HeaderName::from_static("x-request-id"), v);
        }
        Ok(res)
    }
    .instrument(span)
    .await
}

/// Turns an error response that is not `application/problem+json` (the router's 404 and
/// 405, a payload error of an extractor) into a problem with the same status.
pub fn problem_for_any_error<B: MessageBody + 'static>(
    res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_problem = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with(PROBLEM_JSON) || ct.starts_with("text/html"));
    if is_problem {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let api = match res.status() {
        StatusCode::NOT_FOUND => ApiError::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ApiError::HttpMethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
        StatusCode::SERVICE_UNAVAILABLE => ApiError::Unavailable("service unavailable".into()),
        s if s.is_client_error() => ApiError::InvalidRequest(s.canonical_reason().unwrap_or("bad request").to_owned()),
        _ => ApiError::Domain(latchkey_tenant::Error::Internal("unexpected error response".into())),
    };
    let mut problem = api.problem();
    problem.status = res.status().as_u16();
    let (req, _) = res.into_parts();
    let response: actix_web::HttpResponse<BoxBody> = problem_response(&problem);
    let res = ServiceResponse::new(req, response).map_into_boxed_body();
    Ok(ErrorHandlerResponse::Response(res.map_body(|_, b| EitherBody::right(b))))
}

/// Records the tenant and user of the current request on its span (the `http` span of
/// [`log_requests`]), so every log line of the request names them.
pub fn record_principal(tenant: impl std::fmt::Display, user: impl std::fmt::Display) {
    let span = tracing::Span::current();
    span.record("tenant", tracing::field::display(tenant));
    span.record("user", tracing::field::display(user));
}
