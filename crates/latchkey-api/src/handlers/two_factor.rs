//! The signed-in user's own second factors (DESIGN.md 5.2-5.4): the overview, step-up, adding
//! and removing methods, the preferred method, recovery codes and trusted devices.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, delete, get, post, put, web};
use latchkey_core::{Method, TrustedDeviceId};

use super::{code_shape, json};
use crate::dto::{
    AuthenticatorAdded, DeviceDto, DeviceList, EmailAdded, EmailSentResponse, EnrolledResponse, PreferredRequest,
    RecoveryCodesResponse, SetupConfirmRequest, StepUpRequest, StepUpResponse, TwoFactorOverviewDto,
};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::Authed;
use crate::state::AppState;

/// The user's second factors: methods, recovery codes, trusted devices.
#[utoipa::path(
    tag = "self",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The user's factors", body = TwoFactorOverviewDto),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/api/v1/me/two-factor")]
pub async fn overview(st: web::Data<AppState>, authed: Authed) -> ApiResult<HttpResponse> {
    let o = st.service.two_factor_overview(&authed.auth, authed.ctx.now).await?;
    Ok(json(StatusCode::OK, &TwoFactorOverviewDto::from(&o)))
}

/// Emails a code to step this session up (the send limits of every code apply).
#[utoipa::path(
    tag = "self",
    security(("bearer" = [])),
    responses(
        (status = 202, description = "A code was sent", body = EmailSentResponse),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`method_not_allowed`: email is not enrolled or allowed", body = Problem, content_type = "application/problem+json"),
        (status = 423, description = "`otp_blocked`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`resend_too_soon`, `send_limit_reached`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/me/step-up/email")]
pub async fn step_up_email(st: web::Data<AppState>, authed: Authed) -> ApiResult<HttpResponse> {
    let sent = st.service.step_up_email(&authed.ctx, &authed.auth).await?;
    Ok(json(StatusCode::ACCEPTED, &EmailSentResponse::from(&sent)))
}

/// Verifies a code of an enrolled method again, so this session may make sensitive changes
/// for `LATCHKEY_STEP_UP_SECS`. Wrong codes count toward the user's block.
#[utoipa::path(
    tag = "self",
    security(("bearer" = [])),
    request_body = StepUpRequest,
    responses(
        (status = 200, description = "Stepped up", body = StepUpResponse),
        (status = 400, description = "`invalid_request` (not counted)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`, `invalid_code` (with `attempts_remaining`)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`method_not_allowed`", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "`code_expired`", body = Problem, content_type = "application/problem+json"),
        (status = 423, description = "`otp_blocked`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/me/step-up")]
pub async fn step_up(
    st: web::Data<AppState>,
    authed: Authed,
    body: web::Json<StepUpRequest>,
) -> ApiResult<HttpResponse> {
    if body.method == Method::Webauthn {
        let credential = super::parse_credential(body.credential.as_ref())?;
        let at = st.service.step_up_webauthn(&authed.ctx, &authed.auth, credential).await?;
        return Ok(json(StatusCode::OK, &StepUpResponse { verified_at: at }));
    }
    let code = body.code.as_deref().ok_or_else(|| ApiError::InvalidRequest("code is required".into()))?;
    let at = st.service.step_up(&authed.ctx, &authed.auth, body.method, code_shape(code)?).await?;
    Ok(json(StatusCode::OK, &StepUpResponse { verified_at: at }))
}

/// Starts adding an authenticator, or replacing the enrolled one (new phone): the setup
/// material and a setup token. The old secret works until the new one is confirmed.
#[utoipa::path(
    tag = "self",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Setup started", body = AuthenticatorAdded),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`method_not_allowed`, `step_up_required`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/me/two-factor/authenticator")]
pub async fn add_authenticator(st: web::Data<AppState>, authed: Authed) -> ApiResult<HttpResponse> {
    let s = st.service.add_authenticator(&authed.ctx, &authed.auth).await?;
    Ok(json(
        StatusCode::OK,
        &AuthenticatorAdded {
            setup_token: s.setup_token.expose().to_owned(),
            secret: s.setup.secret.clone(),
            otpauth_uri: s.setup.otpauth_uri.clone(),
            qr_png: s.setup.qr_png.clone(),
        },
    ))
}

/// Starts adding the email method: a code is sent to the user's address.
#[utoipa::path(
    tag = "self",
    security(("bearer" = [])),
    responses(
        (status = 202, description = "A code was sent", body = EmailAdded),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`method_not_allowed`, `step_up_required`", body = Problem, content_type = "application/problem+json"),
        (status = 423, description = "`otp_blocked`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`resend_too_soon`, `send_limit_reached`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/me/two-factor/email")]
pub async fn add_email(st: web::Data<AppState>, authed: Authed) -> ApiResult<HttpResponse> {
    let s = st.service.add_email(&authed.ctx, &authed.auth).await?;
    Ok(json(
        StatusCode::ACCEPTED,
        &EmailAdded {
            setup_token: s.setup_token.expose().to_owned(),
            email_masked: s.setup.email_masked.clone(),
            expires_at: s.setup.expires_at,
            resend_available_at: s.setup.resend_available_at,
            sends_remaining: s.setup.sends_remaining,
        },
    ))
}

async fn confirm(
    st: &AppState,
    authed: &Authed,
    method: Method,
    body: &SetupConfirmRequest,
) -> ApiResult<HttpResponse> {
    let code = code_shape(&body.code)?;
    st.service.confirm_method(&authed.ctx, &authed.auth, method, &body.setup_token, code).await?;
    Ok(json(StatusCode::OK, &EnrolledResponse { enrolled: method }))
}

/// Confirms a new authenticator with a code from it.
#[utoipa::path(
    tag = "self",
    security(("bearer" = [])),
    request_body = SetupConfirmRequest,
    responses(
        (status = 200, description = "Enrolled", body = EnrolledResponse),
        (status = 400, description = "`invalid_request`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`, `invalid_setup_token`, `invalid_code`", body = Problem, content_type = "application/problem+json"),
        (status = 423, description = "`otp_blocked`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/me/two-factor/authenticator/confirm")]
pub async fn confirm_authenticator(
    st: web::Data<AppState>,
    authed: Authed,
    body: web::Json<SetupConfirmRequest>,
) -> ApiResult<HttpResponse> {
    confirm(&st, &authed, Method::Authenticator, &body).await
}

/// Confirms the email method with the emailed code.
#[utoipa::path(
    tag = "self",
    security(("bearer" = [])),
    request_body = SetupConfirmRequest,
    responses(
        (status = 200, description = "Enrolled", body = EnrolledResponse),
        (status = 400, description = "`invalid_request`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`, `invalid_setup_token`, `invalid_code`", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "`code_expired`", body = Problem, content_type = "application/problem+json"),
        (status = 423, description = "`otp_blocked`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/me/two-factor/email/confirm")]
pub async fn confirm_email(
    st: web::Data<AppState>,
    authed: Authed,
    body: web::Json<SetupConfirmRequest>,
) -> ApiResult<HttpResponse> {
    confirm(&st, &authed, Method::Email, &body).await
}

async fn remove(st: &AppState, authed: &Authed, method: Method) -> ApiResult<HttpResponse> {
    st.service.remove_method(&authed.ctx, &authed.auth, method).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Removes the authenticator (and revokes the user's trusted devices).
#[utoipa::path(
    tag = "self",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`step_up_required`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`: not enrolled", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`last_method`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[delete("/api/v1/me/two-factor/authenticator")]
pub async fn remove_authenticator(st: web::Data<AppState>, authed: Authed) -> ApiResult<HttpResponse> {
    remove(&st, &authed, Method::Authenticator).await
}

/// Removes the email method (and revokes the user's trusted devices).
#[utoipa::path(
    tag = "self",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`step_up_required`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`: not enrolled", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`last_method`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[delete("/api/v1/me/two-factor/email")]
pub async fn remove_email(st: web::Data<AppState>, authed: Authed) -> ApiResult<HttpResponse> {
    remove(&st, &authed, Method::Email).await
}

/// Chooses the preferred method (challenges list it first).
#[utoipa::path(
    tag = "self",
    security(("bearer" = [])),
    request_body = PreferredRequest,
    responses(
        (status = 200, description = "The user's factors", body = TwoFactorOverviewDto),
        (status = 400, description = "`invalid_request`: not enrolled", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`step_up_required`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[put("/api/v1/me/two-factor/preferred")]
pub async fn preferred(
    st: web::Data<AppState>,
    authed: Authed,
    body: web::Json<PreferredRequest>,
) -> ApiResult<HttpResponse> {
    let o = st.service.choose_preferred(&authed.ctx, &authed.auth, body.method).await?;
    Ok(json(StatusCode::OK, &TwoFactorOverviewDto::from(&o)))
}

/// Generates a new set of ten recovery codes, shown once (the previous set is void).
#[utoipa::path(
    tag = "self",
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The codes, shown once", body = RecoveryCodesResponse),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`method_not_allowed` (not for this role), `enrollment_required` (no enrolled method), `step_up_required`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/me/recovery-codes")]
pub async fn generate_recovery_codes(st: web::Data<AppState>, authed: Authed) -> ApiResult<HttpResponse> {
    let set = st.service.generate_recovery_codes(&authed.ctx, &authed.auth).await?;
    Ok(json(
        StatusCode::CREATED,
        &RecoveryCodesResponse { codes: set.codes.iter().map(|c| c.to_string()).collect(), created_at: set.created_at },
    ))
}

/// Voids the user's recovery codes.
#[utoipa::path(
    tag = "self",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Voided"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`step_up_required`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[delete("/api/v1/me/recovery-codes")]
pub async fn delete_recovery_codes(st: web::Data<AppState>, authed: Authed) -> ApiResult<HttpResponse> {
    st.service.delete_recovery_codes(&authed.ctx, &authed.auth).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The user's trusted devices.
#[utoipa::path(
    tag = "self",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Live devices", body = DeviceList),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/api/v1/me/trusted-devices")]
pub async fn devices(st: web::Data<AppState>, authed: Authed) -> ApiResult<HttpResponse> {
    let list = st.service.trusted_devices(&authed.ctx, &authed.auth).await?;
    Ok(json(StatusCode::OK, &DeviceList { items: list.iter().map(DeviceDto::from).collect() }))
}

/// Revokes one of the user's trusted devices.
#[utoipa::path(
    tag = "self",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[delete("/api/v1/me/trusted-devices/{id}")]
pub async fn revoke_device(
    st: web::Data<AppState>,
    authed: Authed,
    id: web::Path<TrustedDeviceId>,
) -> ApiResult<HttpResponse> {
    st.service.revoke_trusted_device(&authed.ctx, &authed.auth, id.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Revokes all of the user's trusted devices.
#[utoipa::path(
    tag = "self",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[delete("/api/v1/me/trusted-devices")]
pub async fn revoke_devices(st: web::Data<AppState>, authed: Authed) -> ApiResult<HttpResponse> {
    st.service.revoke_own_devices(&authed.ctx, &authed.auth).await?;
    Ok(HttpResponse::NoContent().finish())
}
