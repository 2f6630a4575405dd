//! Middleware: the per-client-IP limiter of every request but signed-in API calls, `HEAD` as
//! `GET`, request logging with ids (never the query string: it may hold a reset token), and
//! the rewrite of any error response without a problem body into one.

use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::{ErrorHandlerResponse, Next};
use actix_web::{Error, ResponseError as _, web};
use governor::clock::{Clock as _, DefaultClock};
use tracing::Instrument;

use crate::error::{ApiError, PROBLEM_JSON, problem_response};
use crate::extract::client_ip;
use crate::routes::RouteTable;
use crate::state::AppState;

/// The global per-client-IP limiter (`LATCHKEY_SIGNIN_PER_IP_PER_MINUTE`, DESIGN.md section
/// 3): every request except the signed-in API endpoints ([`RouteTable::needs_session`]) —
/// sign-in and its second step, the reset page, the operator endpoints, `/healthz`,
/// `/readyz`, `/metrics`, the OpenAPI document and `/docs/`, unmatched paths and unknown
/// methods. It runs before any tenant lookup, so unknown tenant slugs cost nothing and start
/// no actor. The route is the one the raw path matches: a path the router would decode
/// into a signed-in route (`/api/v1/%6De`) is limited too, which errs on the safe side.
pub async fn ip_limit(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let signed_in = req
        .app_data::<web::Data<RouteTable>>()
        .zip(req.match_pattern())
        .is_some_and(|(routes, pattern)| routes.needs_session(&pattern, req.method()));
    if !signed_in
        && let Some(st) = req.app_data::<web::Data<AppState>>()
        && let Some(ip) = client_ip(req.request(), &st.trusted_proxies)
        && let Err(not_until) = st.ip_limiter.check_key(&ip)
    {
        let retry_after = not_until.wait_time_from(DefaultClock::default().now()).as_secs().max(1);
        let refusal = ApiError::Domain(latchkey_tenant::Error::RateLimited { retry_after });
        return Ok(req.into_response(refusal.error_response()).map_into_right_body());
    }
    next.call(req).await.map(ServiceResponse::map_into_left_body)
}

/// Serves `HEAD` wherever `GET` is served (RFC 9110 section 9.3.2): the request is routed
/// as its `GET`; the HTTP layer, which knows the request was a `HEAD`, sends the same status
/// and headers (`Content-Length` included) and no body. Must run before anything holds a
/// second reference to the request (it rewrites the request head), i.e. outside every
/// middleware but logging and metrics, which read the method first.
pub async fn head_as_get(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    if req.method() == Method::HEAD {
        req.head_mut().method = Method::GET;
    }
    next.call(req).await
}

/// Graceful shutdown without cut requests: once [`AppState::draining`] is set (SIGTERM),
/// every answer carries `Connection: close` and the connection closes after it, so a
/// keep-alive connection ends between two requests (the client opens a new one, to another
/// process), never under one; the server waits for those connections to end (within
/// `LATCHKEY_SHUTDOWN_TIMEOUT_SECS`) instead of dropping the busy ones at the timeout.
pub async fn drain(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let draining = req.app_data::<web::Data<AppState>>().map(|st| st.draining.clone());
    let mut res = next.call(req).await?;
    if draining.is_some_and(|d| d.load(std::sync::atomic::Ordering::Relaxed)) {
        res.response_mut().head_mut().set_connection_type(actix_web::http::ConnectionType::Close);
    }
    Ok(res)
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
    let method = crate::metrics::method_label(req.method());
    let span = tracing::info_span!(
        "http",
        request_id = %request_id,
        method = %method,
        tenant = tracing::field::Empty,
        user = tracing::field::Empty
    );
    let started = std::time::Instant::now();
    let by_path = req.match_pattern();
    async move {
        let result = next.call(req).await;
        let (route, status) = match &result {
            Ok(res) => (res.request().match_pattern().or(by_path), res.status().as_u16()),
            Err(e) => (by_path, e.as_response_error().status_code().as_u16()),
        };
        let route = route.as_deref().unwrap_or(crate::metrics::UNMATCHED).to_owned();
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if status >= 500 {
            tracing::error!(%route, status, ms, "request failed");
        } else {
            tracing::info!(%route, status, ms, "request");
        }
        let mut res = result?;
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
        StatusCode::METHOD_NOT_ALLOWED => ApiError::HttpMethodNotAllowed {
            allow: res
                .request()
                .match_pattern()
                .and_then(|p| res.request().app_data::<web::Data<RouteTable>>().and_then(|routes| routes.allow(&p)))
                .or_else(|| res.headers().get(header::ALLOW).and_then(|v| v.to_str().ok()).map(str::to_owned)),
        },
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
        StatusCode::SERVICE_UNAVAILABLE => ApiError::Unavailable("service unavailable".into()),
        s if s.is_client_error() => ApiError::InvalidRequest(s.canonical_reason().unwrap_or("bad request").to_owned()),
        _ => ApiError::Domain(latchkey_tenant::Error::Internal("unexpected error response".into())),
    };
    let mut problem = api.problem();
    problem.status = res.status().as_u16();
    let (req, _) = res.into_parts();
    let response: actix_web::HttpResponse<BoxBody> = api.with_headers(problem_response(&problem));
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

/// Delivers the notices the request's use-cases recorded before the answer leaves
/// ([`latchkey_tenant::Service::deliver_notices`]): an answer never comes before the notices
/// of what it did.
pub async fn deliver_notices(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let st = req.app_data::<web::Data<AppState>>().cloned();
    let res = next.call(req).await?;
    let pending = actix_web::HttpMessage::extensions(res.request()).get::<latchkey_tenant::PendingNotices>().cloned();
    if let (Some(st), Some(pending)) = (st, pending) {
        st.service.deliver_notices(&pending).await;
    }
    Ok(res)
}
