//! Tenant 2FA settings (admin): `/api/v1/settings/two-factor*`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, get, patch, post, put, web};
use latchkey_core::settings::{RelyingParty, SettingsChange};
use latchkey_core::{Method, MethodSet};
use latchkey_tenant::MethodChanges;

use super::{code_shape, json};
use crate::dto::{
    EnableConfirmRequest, EnableRequest, EnableResponse, EnabledResponse, MethodsRequest, PasswordRequest,
    TwoFactorSettings,
};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::Authed;
use crate::state::AppState;

/// The tenant's 2FA toggle and the methods allowed per role.
#[utoipa::path(
    tag = "settings",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Settings", body = TwoFactorSettings),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: admins only", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/api/v1/settings/two-factor")]
pub async fn get_settings(st: web::Data<AppState>, authed: Authed) -> ApiResult<HttpResponse> {
    let view = st.service.two_factor_settings(&authed.auth)?;
    Ok(json(StatusCode::OK, &TwoFactorSettings::from(&view)))
}

/// Changes any of the tenant's version-2 settings (DESIGN.md 5.8): the relying party,
/// passwordless sign-in, recovery codes, trusted-device days, the grace period, notices and
/// return URLs. A recent second factor is needed while 2FA is on.
#[utoipa::path(
    tag = "settings",
    security(("bearer" = [])),
    request_body = SettingsChange,
    responses(
        (status = 200, description = "The settings", body = TwoFactorSettings),
        (status = 400, description = "`invalid_request`: a value out of bounds, an unknown field, a bad relying party or return URL", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`, `step_up_required`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[patch("/api/v1/settings/two-factor")]
pub async fn patch_settings(
    st: web::Data<AppState>,
    authed: Authed,
    body: web::Json<SettingsChange>,
) -> ApiResult<HttpResponse> {
    let view = st.service.update_settings(&authed.ctx, &authed.auth, body.into_inner()).await?;
    Ok(json(StatusCode::OK, &TwoFactorSettings::from(&view)))
}

/// Sets the tenant's own WebAuthn relying party (DESIGN.md 5.1); the same as `PATCH` with
/// `webauthn`.
#[utoipa::path(
    tag = "settings",
    security(("bearer" = [])),
    request_body = RelyingParty,
    responses(
        (status = 200, description = "The settings", body = TwoFactorSettings),
        (status = 400, description = "`invalid_request`: an IP address or bad name as RP id, an origin not on it", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`, `step_up_required`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[put("/api/v1/settings/two-factor/webauthn")]
pub async fn put_webauthn(
    st: web::Data<AppState>,
    authed: Authed,
    body: web::Json<RelyingParty>,
) -> ApiResult<HttpResponse> {
    let change = SettingsChange { webauthn: Some(body.into_inner()), ..Default::default() };
    let view = st.service.update_settings(&authed.ctx, &authed.auth, change).await?;
    Ok(json(StatusCode::OK, &TwoFactorSettings::from(&view)))
}

/// Starts turning 2FA on: re-enter the password and choose the admin's method. Authenticator:
/// the setup material (omitted when the admin already has an authenticator); email: a code
/// is sent.
#[utoipa::path(
    tag = "settings",
    security(("bearer" = [])),
    request_body = EnableRequest,
    responses(
        (status = 200, description = "Setup started", body = EnableResponse),
        (status = 401, description = "`unauthenticated`, `invalid_password`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`, `method_not_allowed`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`already_enabled`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`, `resend_too_soon`, `send_limit_reached`", body = Problem, content_type = "application/problem+json"),
        (status = 423, description = "`otp_blocked`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/settings/two-factor/enable")]
pub async fn enable(
    st: web::Data<AppState>,
    authed: Authed,
    body: web::Json<EnableRequest>,
) -> ApiResult<HttpResponse> {
    let setup = st.service.enable(&authed.ctx, &authed.auth, &body.password, body.method).await?;
    let totp = setup.totp.as_ref();
    Ok(json(
        StatusCode::OK,
        &EnableResponse {
            setup_token: setup.setup_token.expose().to_owned(),
            method: setup.method,
            secret: totp.map(|t| t.secret.clone()),
            otpauth_uri: totp.map(|t| t.otpauth_uri.clone()),
            qr_png: totp.map(|t| t.qr_png.clone()),
            email_masked: setup.email_masked,
        },
    ))
}

/// Confirms with a code: 2FA is on, the admin is enrolled, every other session of the
/// tenant ends, and this session counts as verified (step-up).
#[utoipa::path(
    tag = "settings",
    security(("bearer" = [])),
    request_body = EnableConfirmRequest,
    responses(
        (status = 200, description = "Enabled", body = EnabledResponse),
        (status = 400, description = "`invalid_request`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`, `invalid_setup_token`, `invalid_code`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "`code_expired`", body = Problem, content_type = "application/problem+json"),
        (status = 423, description = "`otp_blocked`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/settings/two-factor/enable/confirm")]
pub async fn enable_confirm(
    st: web::Data<AppState>,
    authed: Authed,
    body: web::Json<EnableConfirmRequest>,
) -> ApiResult<HttpResponse> {
    let code = code_shape(&body.code)?;
    st.service.enable_confirm(&authed.ctx, &authed.auth, &body.setup_token, code).await?;
    Ok(json(StatusCode::OK, &EnabledResponse { enabled: true }))
}

/// Turns 2FA off (password and a recent second factor); enrollments are kept, open
/// challenges are voided.
#[utoipa::path(
    tag = "settings",
    security(("bearer" = [])),
    request_body = PasswordRequest,
    responses(
        (status = 200, description = "Disabled", body = EnabledResponse),
        (status = 401, description = "`unauthenticated`, `invalid_password`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`, `step_up_required`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/settings/two-factor/disable")]
pub async fn disable(
    st: web::Data<AppState>,
    authed: Authed,
    body: web::Json<PasswordRequest>,
) -> ApiResult<HttpResponse> {
    st.service.disable(&authed.ctx, &authed.auth, &body.password).await?;
    Ok(json(StatusCode::OK, &EnabledResponse { enabled: false }))
}

fn method_set(list: Option<&Vec<Method>>) -> Result<Option<MethodSet>, ApiError> {
    match list {
        None => Ok(None),
        Some(list) if list.is_empty() => Err(ApiError::InvalidRequest("each method list must be non-empty".into())),
        Some(list) => Ok(Some(list.iter().copied().collect())),
    }
}

/// Sets the methods allowed per role (each list non-empty; a recent second factor is
/// needed while 2FA is on).
#[utoipa::path(
    tag = "settings",
    security(("bearer" = [])),
    request_body = MethodsRequest,
    responses(
        (status = 200, description = "The settings", body = TwoFactorSettings),
        (status = 400, description = "`invalid_request`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`, `step_up_required`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[put("/api/v1/settings/two-factor/methods")]
pub async fn put_methods(
    st: web::Data<AppState>,
    authed: Authed,
    body: web::Json<MethodsRequest>,
) -> ApiResult<HttpResponse> {
    let changes = MethodChanges {
        admin: method_set(body.admin.as_ref())?,
        supervisor: method_set(body.supervisor.as_ref())?,
        agent: method_set(body.agent.as_ref())?,
    };
    let view = st.service.set_methods(&authed.ctx, &authed.auth, changes).await?;
    Ok(json(StatusCode::OK, &TwoFactorSettings::from(&view)))
}
