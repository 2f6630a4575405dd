//! The audit log (admin): `/api/v1/audit-events`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, get, web};
use chrono::{DateTime, Utc};
use latchkey_core::AuditKind;
use latchkey_store::repo::audit::AuditFilter;

use super::{json, page_limit, paginate};
use crate::dto::{AuditEventDto, AuditPage, AuditQuery};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::Authed;
use crate::state::AppState;

/// The tenant's audit events, newest first, filtered by time, kind and subject.
#[utoipa::path(
    tag = "audit",
    security(("bearer" = [])),
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of events", body = AuditPage),
        (status = 400, description = "`invalid_request`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/api/v1/audit-events")]
pub async fn list(st: web::Data<AppState>, authed: Authed, q: web::Query<AuditQuery>) -> ApiResult<HttpResponse> {
    let limit = page_limit(q.limit)?;
    let since = q
        .since
        .as_deref()
        .map(|s| DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc)))
        .transpose()
        .map_err(|_| ApiError::InvalidRequest("since must be an RFC 3339 instant".into()))?;
    let kind = q
        .kind
        .as_deref()
        .map(|k| k.parse::<AuditKind>().map_err(|_| ApiError::InvalidRequest(format!("unknown kind `{k}`"))))
        .transpose()?;
    let filter = AuditFilter { since, kind, subject_id: q.subject_id.clone() };
    let cursor = q
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<latchkey_core::AuditEventId>().map_err(|_| ApiError::InvalidRequest("invalid cursor".into()))
        })
        .transpose()?;
    let events = st.service.audit_events(&authed.auth, filter, cursor.map(|c| c.to_string()), limit + 1).await?;
    let (events, next_cursor) = paginate(events, limit, |e| e.id.to_string());
    Ok(json(StatusCode::OK, &AuditPage { items: events.iter().map(AuditEventDto::from).collect(), next_cursor }))
}
