//! Webhook endpoints (admin, DESIGN.md 5.6): `/api/v1/webhooks*`. Endpoints of another
//! tenant are 404. Creating, changing and rotating need a recent second factor while 2FA is on.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, delete, get, patch, post, web};
use latchkey_core::{AuditEventId, DeliveryId, WebhookId};
use latchkey_tenant::{NewWebhook, WebhookChanges};

use super::{json, page_limit, paginate};
use crate::dto::{
    CreateWebhookRequest, PageQuery, RetryAccepted, UpdateWebhookRequest, WebhookDeliveryDto, WebhookDeliveryPage,
    WebhookDto, WebhookPage,
};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::Authed;
use crate::state::AppState;

fn webhook_id(raw: &str) -> Result<WebhookId, ApiError> {
    raw.parse().map_err(|_| ApiError::NotFound)
}

/// Creates an endpoint: the URL passes the SSRF guard (its host resolved), `events` are audit
/// kinds or `["*"]`; the answer carries the signing secret, shown only here.
#[utoipa::path(
    tag = "webhooks",
    security(("bearer" = [])),
    request_body = CreateWebhookRequest,
    responses(
        (status = 201, description = "Created, with its `secret`", body = WebhookDto),
        (status = 400, description = "`invalid_request` (URL, events, description, too many endpoints)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`, `step_up_required`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/webhooks")]
pub async fn create(
    st: web::Data<AppState>,
    authed: Authed,
    body: web::Json<CreateWebhookRequest>,
) -> ApiResult<HttpResponse> {
    let body = body.into_inner();
    let new = NewWebhook { url: body.url, events: body.events, description: body.description };
    let created = st.service.create_webhook(&authed.ctx, &authed.auth, new).await?;
    Ok(json(StatusCode::CREATED, &WebhookDto::from(&created)))
}

/// The tenant's endpoints, oldest first, without their secrets.
#[utoipa::path(
    tag = "webhooks",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The endpoints", body = WebhookPage),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/api/v1/webhooks")]
pub async fn list(st: web::Data<AppState>, authed: Authed) -> ApiResult<HttpResponse> {
    let hooks = st.service.list_webhooks(&authed.auth).await?;
    Ok(json(StatusCode::OK, &WebhookPage { items: hooks.iter().map(WebhookDto::from).collect(), next_cursor: None }))
}

/// One endpoint, without its secret.
#[utoipa::path(
    tag = "webhooks",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Webhook id")),
    responses(
        (status = 200, description = "The endpoint", body = WebhookDto),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/api/v1/webhooks/{id}")]
pub async fn get_one(st: web::Data<AppState>, authed: Authed, id: web::Path<String>) -> ApiResult<HttpResponse> {
    let hook = st.service.get_webhook(&authed.auth, webhook_id(&id)?).await?;
    Ok(json(StatusCode::OK, &WebhookDto::from(&hook)))
}

/// Changes an endpoint's URL, events, description or switch (`enabled: false` stops
/// deliveries of new events and of those still owed).
#[utoipa::path(
    tag = "webhooks",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Webhook id")),
    request_body = UpdateWebhookRequest,
    responses(
        (status = 200, description = "The endpoint", body = WebhookDto),
        (status = 400, description = "`invalid_request`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`, `step_up_required`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[patch("/api/v1/webhooks/{id}")]
pub async fn update(
    st: web::Data<AppState>,
    authed: Authed,
    id: web::Path<String>,
    body: web::Json<UpdateWebhookRequest>,
) -> ApiResult<HttpResponse> {
    let body = body.into_inner();
    let changes =
        WebhookChanges { url: body.url, events: body.events, enabled: body.enabled, description: body.description };
    let hook = st.service.update_webhook(&authed.ctx, &authed.auth, webhook_id(&id)?, changes).await?;
    Ok(json(StatusCode::OK, &WebhookDto::from(&hook)))
}

/// Deletes an endpoint and its delivery history.
#[utoipa::path(
    tag = "webhooks",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Webhook id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[delete("/api/v1/webhooks/{id}")]
pub async fn remove(st: web::Data<AppState>, authed: Authed, id: web::Path<String>) -> ApiResult<HttpResponse> {
    st.service.delete_webhook(&authed.ctx, &authed.auth, webhook_id(&id)?).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Replaces the signing secret; the old one stops at once. The answer carries the new secret,
/// shown only here.
#[utoipa::path(
    tag = "webhooks",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Webhook id")),
    responses(
        (status = 200, description = "The endpoint with its new `secret`", body = WebhookDto),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`, `step_up_required`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/webhooks/{id}/rotate-secret")]
pub async fn rotate_secret(st: web::Data<AppState>, authed: Authed, id: web::Path<String>) -> ApiResult<HttpResponse> {
    let rotated = st.service.rotate_webhook_secret(&authed.ctx, &authed.auth, webhook_id(&id)?).await?;
    Ok(json(StatusCode::OK, &WebhookDto::from(&rotated)))
}

/// The endpoint's deliveries, newest event first.
#[utoipa::path(
    tag = "webhooks",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Webhook id"), PageQuery),
    responses(
        (status = 200, description = "A page of deliveries", body = WebhookDeliveryPage),
        (status = 400, description = "`invalid_request`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/api/v1/webhooks/{id}/deliveries")]
pub async fn deliveries(
    st: web::Data<AppState>,
    authed: Authed,
    id: web::Path<String>,
    q: web::Query<PageQuery>,
) -> ApiResult<HttpResponse> {
    let limit = page_limit(q.limit)?;
    let after = q
        .cursor
        .as_deref()
        .map(|c| c.parse::<AuditEventId>().map_err(|_| ApiError::InvalidRequest("invalid cursor".into())))
        .transpose()?;
    let rows = st.service.webhook_deliveries(&authed.auth, webhook_id(&id)?, after, limit + 1).await?;
    let (rows, next_cursor) = paginate(rows, limit, |(d, _)| d.event_id.clone().unwrap_or_default());
    let items = rows.iter().map(|(d, kind)| WebhookDeliveryDto::new(d, kind.clone())).collect();
    Ok(json(StatusCode::OK, &WebhookDeliveryPage { items, next_cursor }))
}

/// Makes a delivery due again at once, with a fresh run of attempts.
#[utoipa::path(
    tag = "webhooks",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Webhook id"), ("delivery_id" = String, Path, description = "Delivery id")),
    responses(
        (status = 202, description = "Queued", body = RetryAccepted),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/webhooks/{id}/deliveries/{delivery_id}/retry")]
pub async fn retry(
    st: web::Data<AppState>,
    authed: Authed,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (id, delivery) = path.into_inner();
    let delivery: DeliveryId = delivery.parse().map_err(|_| ApiError::NotFound)?;
    st.service.retry_webhook_delivery(&authed.ctx, &authed.auth, webhook_id(&id)?, delivery).await?;
    Ok(json(StatusCode::ACCEPTED, &RetryAccepted { queued: true }))
}
