//! Recovery requests (admin): `/api/v1/recovery-requests*`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, get, post, web};
use latchkey_core::RecoveryRequestId;
use latchkey_store::model::RecoveryStatus;

use super::{json, page_limit, paginate};
use crate::dto::{RecoveryPage, RecoveryQuery, RecoveryRequestDto};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::Authed;
use crate::state::AppState;

/// The tenant's recovery requests, newest first.
#[utoipa::path(
    tag = "recovery",
    security(("bearer" = [])),
    params(RecoveryQuery),
    responses(
        (status = 200, description = "A page of requests", body = RecoveryPage),
        (status = 400, description = "`invalid_request`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/api/v1/recovery-requests")]
pub async fn list(st: web::Data<AppState>, authed: Authed, q: web::Query<RecoveryQuery>) -> ApiResult<HttpResponse> {
    let limit = page_limit(q.limit)?;
    let status = q
        .status
        .as_deref()
        .map(|s| {
            s.parse::<RecoveryStatus>()
                .map_err(|_| ApiError::InvalidRequest("status must be pending, approved or dismissed".into()))
        })
        .transpose()?;
    let after = q
        .cursor
        .as_deref()
        .map(|c| c.parse::<RecoveryRequestId>().map_err(|_| ApiError::InvalidRequest("invalid cursor".into())))
        .transpose()?;
    let list = st.service.list_recovery_requests(&authed.auth, status, after, limit + 1).await?;
    let (list, next_cursor) = paginate(list, limit, |v| v.request.id.to_string());
    Ok(json(StatusCode::OK, &RecoveryPage { items: list.iter().map(RecoveryRequestDto::from).collect(), next_cursor }))
}

async fn decide(st: &AppState, authed: &Authed, id: &str, approving: bool) -> ApiResult<HttpResponse> {
    let id: RecoveryRequestId = id.parse().map_err(|_| ApiError::NotFound)?;
    let view = st.service.decide_recovery(&authed.ctx, &authed.auth, id, approving).await?;
    Ok(json(StatusCode::OK, &RecoveryRequestDto::from(&view)))
}

/// "Reset": approves the request: the user's enrollments, counters, blocks, sessions and
/// challenges are removed; the next sign-in enrolls again.
#[utoipa::path(
    tag = "recovery",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Request id")),
    responses(
        (status = 200, description = "Approved", body = RecoveryRequestDto),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`request_not_pending`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/recovery-requests/{id}/approve")]
pub async fn approve(st: web::Data<AppState>, authed: Authed, id: web::Path<String>) -> ApiResult<HttpResponse> {
    decide(&st, &authed, &id, true).await
}

/// Dismisses the request.
#[utoipa::path(
    tag = "recovery",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Request id")),
    responses(
        (status = 200, description = "Dismissed", body = RecoveryRequestDto),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`request_not_pending`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/recovery-requests/{id}/dismiss")]
pub async fn dismiss(st: web::Data<AppState>, authed: Authed, id: web::Path<String>) -> ApiResult<HttpResponse> {
    decide(&st, &authed, &id, false).await
}
