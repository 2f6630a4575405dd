//! User management (admin): `/api/v1/agents*`. Users of another tenant are 404.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, delete, get, patch, post, web};
use latchkey_core::UserId;
use latchkey_tenant::{NewUser, UserChanges};

use super::{json, page_limit, paginate};
use crate::dto::{CreateAgentRequest, PageQuery, UpdateAgentRequest, UserDto, UserPage};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::Authed;
use crate::state::AppState;

fn user_id(raw: &str) -> Result<UserId, ApiError> {
    raw.parse().map_err(|_| ApiError::NotFound)
}

/// The tenant's users, in creation order.
#[utoipa::path(
    tag = "agents",
    security(("bearer" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "A page of users", body = UserPage),
        (status = 400, description = "`invalid_request`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/api/v1/agents")]
pub async fn list(st: web::Data<AppState>, authed: Authed, q: web::Query<PageQuery>) -> ApiResult<HttpResponse> {
    let limit = page_limit(q.limit)?;
    let after = q
        .cursor
        .as_deref()
        .map(|c| c.parse::<UserId>().map_err(|_| ApiError::InvalidRequest("invalid cursor".into())))
        .transpose()?;
    let users = st.service.list_users(&authed.auth, after, limit + 1).await?;
    let (users, next_cursor) = paginate(users, limit, |u| u.id.to_string());
    Ok(json(StatusCode::OK, &UserPage { items: users.iter().map(UserDto::from).collect(), next_cursor }))
}

/// Creates a user (creating an admin needs a recent second factor while 2FA is on).
#[utoipa::path(
    tag = "agents",
    security(("bearer" = [])),
    request_body = CreateAgentRequest,
    responses(
        (status = 201, description = "Created", body = UserDto),
        (status = 400, description = "`invalid_request`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`, `step_up_required`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`email_taken`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/agents")]
pub async fn create(
    st: web::Data<AppState>,
    authed: Authed,
    body: web::Json<CreateAgentRequest>,
) -> ApiResult<HttpResponse> {
    let body = body.into_inner();
    let new = NewUser { email: body.email, name: body.name, role: body.role, password: body.password };
    let user = st.service.create_user(&authed.ctx, &authed.auth, new).await?;
    Ok(json(StatusCode::CREATED, &UserDto::from(&user)))
}

/// Changes a user's email, name or role. Email changes and promotions to admin need a
/// recent second factor; an admin changing their own email also gives `password`; a
/// tenant keeps at least one admin.
#[utoipa::path(
    tag = "agents",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "User id")),
    request_body = UpdateAgentRequest,
    responses(
        (status = 200, description = "The user", body = UserDto),
        (status = 400, description = "`invalid_request`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`, `invalid_password`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`, `step_up_required`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`email_taken`, `last_admin`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[patch("/api/v1/agents/{id}")]
pub async fn update(
    st: web::Data<AppState>,
    authed: Authed,
    id: web::Path<String>,
    body: web::Json<UpdateAgentRequest>,
) -> ApiResult<HttpResponse> {
    let body = body.into_inner();
    let changes = UserChanges { email: body.email, name: body.name, role: body.role, password: body.password };
    let user = st.service.update_user(&authed.ctx, &authed.auth, user_id(&id)?, changes).await?;
    Ok(json(StatusCode::OK, &UserDto::from(&user)))
}

/// Deletes a user: their sessions, challenges and requests end; later sign-ins fail.
#[utoipa::path(
    tag = "agents",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "User id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`last_admin`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[delete("/api/v1/agents/{id}")]
pub async fn remove(st: web::Data<AppState>, authed: Authed, id: web::Path<String>) -> ApiResult<HttpResponse> {
    st.service.delete_user(&authed.ctx, &authed.auth, user_id(&id)?).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Resets a user's second factor directly (DESIGN.md 5.8): enrollments, recovery codes,
/// counters and blocks, sessions, challenges and trusted devices go, as with an approved
/// recovery request. Needs a recent second factor; never on oneself.
#[utoipa::path(
    tag = "agents",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "User id")),
    responses(
        (status = 200, description = "The user, with nothing enrolled", body = UserDto),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden` (also oneself), `step_up_required`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/agents/{id}/reset-2fa")]
pub async fn reset_2fa(st: web::Data<AppState>, authed: Authed, id: web::Path<String>) -> ApiResult<HttpResponse> {
    let user = st.service.admin_reset(&authed.ctx, &authed.auth, user_id(&id)?).await?;
    Ok(json(StatusCode::OK, &UserDto::from(&user)))
}

/// Revokes every trusted device of a user.
#[utoipa::path(
    tag = "agents",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "User id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[delete("/api/v1/agents/{id}/trusted-devices")]
pub async fn revoke_devices(st: web::Data<AppState>, authed: Authed, id: web::Path<String>) -> ApiResult<HttpResponse> {
    st.service.revoke_user_devices(&authed.ctx, &authed.auth, user_id(&id)?).await?;
    Ok(HttpResponse::NoContent().finish())
}
