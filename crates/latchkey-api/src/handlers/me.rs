//! The signed-in user: `/api/v1/me`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, get, patch, post, web};

use super::json;
use crate::dto::{PasswordChangeRequest, UpdateMeRequest, UserDto};
use crate::error::{ApiResult, Problem};
use crate::extract::Authed;
use crate::state::AppState;

/// The signed-in user.
#[utoipa::path(
    tag = "self",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The user", body = UserDto),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/api/v1/me")]
pub async fn get_me(st: web::Data<AppState>, authed: Authed) -> ApiResult<HttpResponse> {
    let me = st.service.me(&authed.auth).await?;
    Ok(json(StatusCode::OK, &UserDto::from(&me)))
}

/// Changes the name, or (admins, with `password` and a recent second factor) the email.
#[utoipa::path(
    tag = "self",
    security(("bearer" = [])),
    request_body = UpdateMeRequest,
    responses(
        (status = 200, description = "The user", body = UserDto),
        (status = 400, description = "`invalid_request`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`, `invalid_password`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`email_change_forbidden`, `step_up_required`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`email_taken`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[patch("/api/v1/me")]
pub async fn patch_me(
    st: web::Data<AppState>,
    authed: Authed,
    body: web::Json<UpdateMeRequest>,
) -> ApiResult<HttpResponse> {
    let me = st
        .service
        .update_me(&authed.ctx, &authed.auth, body.name.as_deref(), body.email.as_deref(), body.password.as_deref())
        .await?;
    Ok(json(StatusCode::OK, &UserDto::from(&me)))
}

/// Changes the password; ends the user's other sessions.
#[utoipa::path(
    tag = "self",
    security(("bearer" = [])),
    request_body = PasswordChangeRequest,
    responses(
        (status = 204, description = "Changed"),
        (status = 400, description = "`invalid_request` (password rules)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`, `invalid_password`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/me/password")]
pub async fn change_password(
    st: web::Data<AppState>,
    authed: Authed,
    body: web::Json<PasswordChangeRequest>,
) -> ApiResult<HttpResponse> {
    st.service.change_password(&authed.ctx, &authed.auth, &body.current_password, &body.new_password).await?;
    Ok(HttpResponse::NoContent().finish())
}
