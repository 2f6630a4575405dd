//! Operator endpoints (`Authorization: Bearer <LATCHKEY_OPERATOR_TOKEN>`).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, post, web};
use latchkey_core::UserId;
use latchkey_tenant::NewUser;

use super::json;
use crate::dto::{CreateTenantRequest, TenantCreated, UserDto};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::Operator;
use crate::state::AppState;

/// Creates a tenant (2FA off, both methods allowed to every role) and its first admin.
#[utoipa::path(
    tag = "operator",
    request_body = CreateTenantRequest,
    security(("operator_token" = [])),
    responses(
        (status = 201, description = "Created", body = TenantCreated),
        (status = 400, description = "`invalid_request`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`: missing or wrong operator token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: operator endpoints disabled", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`tenant_exists`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/tenants")]
pub async fn create_tenant(
    st: web::Data<AppState>,
    op: Operator,
    body: web::Json<CreateTenantRequest>,
) -> ApiResult<HttpResponse> {
    let body = body.into_inner();
    let admin = NewUser {
        email: body.admin.email,
        name: body.admin.name,
        role: latchkey_core::Role::Admin,
        password: body.admin.password,
    };
    let (tenant, user) = st.service.create_tenant(&op.0, &body.slug, &body.name, admin).await?;
    Ok(json(
        StatusCode::CREATED,
        &TenantCreated { id: tenant.id.to_string(), slug: tenant.slug, name: tenant.name, admin: (&user).into() },
    ))
}

/// Resets a user's second factor (e.g. a sole admin who lost both the mailbox and the
/// authenticator): enrollments, counters, sessions; audited as `operator_reset`.
#[utoipa::path(
    tag = "operator",
    security(("operator_token" = [])),
    params(("slug" = String, Path, description = "Tenant slug"), ("id" = String, Path, description = "User id")),
    responses(
        (status = 200, description = "The user, without enrollments", body = UserDto),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: operator endpoints disabled", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/tenants/{slug}/users/{id}/reset-2fa")]
pub async fn reset_2fa(
    st: web::Data<AppState>,
    op: Operator,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (slug, id) = path.into_inner();
    let id: UserId = id.parse().map_err(|_| ApiError::NotFound)?;
    let user = st.service.operator_reset(&op.0, &slug, id).await?;
    Ok(json(StatusCode::OK, &UserDto::from(&user)))
}
