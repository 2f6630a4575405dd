//! Sign-in and the second step: `/api/v1/auth*` (unauthenticated, behind the per-IP limiter).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, post, web};
use latchkey_core::Method;
use latchkey_tenant::{RecoveryStarted, SignIn};

use super::{code_shape, json};
use crate::dto::{
    AuthenticatorSetup, ChallengeRequest, ConfirmRequest, ConfirmResponse, EmailSentResponse, ExchangeRequest,
    RecoveryResponse, ResetRequest, ResetResponse, SessionResponse, SignInRequest, SignInResponse, VerifyMethod,
    VerifyRequest,
};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Authed, Ctx};
use crate::state::AppState;

/// Signs in with a password. With 2FA off the answer holds a session; with 2FA on it holds
/// `authentication_token: null` and a challenge (`enroll` or `verify`).
#[utoipa::path(
    tag = "sign-in",
    request_body = SignInRequest,
    responses(
        (status = 200, description = "Signed in, or a challenge", body = SignInResponse),
        (status = 400, description = "`invalid_request`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`invalid_credentials` (unknown tenant, unknown email or wrong password alike)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited` (too many wrong passwords, or requests from this IP)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/auth")]
pub async fn sign_in(st: web::Data<AppState>, ctx: Ctx, body: web::Json<SignInRequest>) -> ApiResult<HttpResponse> {
    let outcome =
        st.service.sign_in(&ctx.0, &body.tenant, &body.email, &body.password, body.device_token.as_deref()).await?;
    let res = match outcome {
        SignIn::Session(s) => SignInResponse {
            authentication_token: Some(s.token.expose().to_owned()),
            expires_at: Some(s.expires_at),
            user: (&s.user).into(),
            two_factor: None,
            trusted_device: s.trusted_device,
        },
        SignIn::Challenge { user, challenge } => SignInResponse {
            authentication_token: None,
            expires_at: None,
            user: (&user).into(),
            two_factor: Some((&challenge).into()),
            trusted_device: false,
        },
    };
    Ok(json(StatusCode::OK, &res))
}

/// Ends the session.
#[utoipa::path(
    tag = "sign-in",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Signed out"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/auth/logout")]
pub async fn logout(st: web::Data<AppState>, authed: Authed) -> ApiResult<HttpResponse> {
    st.service.logout(&authed.auth).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Starts (or restarts) an authenticator enrollment on an `enroll` challenge: a new 160-bit
/// secret as setup key, `otpauth://` URI and QR code. Calling again replaces the secret.
#[utoipa::path(
    tag = "second factor",
    request_body = ChallengeRequest,
    responses(
        (status = 200, description = "Setup material", body = AuthenticatorSetup),
        (status = 401, description = "`invalid_challenge`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`method_not_allowed`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`already_enrolled`: not an enrollment challenge", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/auth/2fa/authenticator/setup")]
pub async fn authenticator_setup(
    st: web::Data<AppState>,
    ctx: Ctx,
    body: web::Json<ChallengeRequest>,
) -> ApiResult<HttpResponse> {
    let setup = st.service.authenticator_setup(&ctx.0, &body.challenge_token).await?;
    Ok(json(
        StatusCode::OK,
        &AuthenticatorSetup {
            secret: setup.secret.clone(),
            otpauth_uri: setup.otpauth_uri.clone(),
            qr_png: setup.qr_png.clone(),
        },
    ))
}

/// Confirms the authenticator with a code from the app; the user then signs in again
/// (`next: "login"`). The code's time step is used up.
#[utoipa::path(
    tag = "second factor",
    request_body = ConfirmRequest,
    responses(
        (status = 200, description = "Enrolled", body = ConfirmResponse),
        (status = 400, description = "`invalid_request` (code not 6 digits)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`invalid_challenge`, `invalid_code` (with `attempts_remaining`)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`method_not_allowed`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`already_enrolled`, `setup_required`", body = Problem, content_type = "application/problem+json"),
        (status = 423, description = "`otp_blocked`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/auth/2fa/authenticator/confirm")]
pub async fn authenticator_confirm(
    st: web::Data<AppState>,
    ctx: Ctx,
    body: web::Json<ConfirmRequest>,
) -> ApiResult<HttpResponse> {
    let code = code_shape(&body.code)?;
    st.service.authenticator_confirm(&ctx.0, &body.challenge_token, code).await?;
    Ok(json(
        StatusCode::OK,
        &ConfirmResponse { enrolled: Method::Authenticator, authentication_token: None, next: "login".into() },
    ))
}

/// Emails a new 6-digit code for the challenge (voiding the user's previous code).
#[utoipa::path(
    tag = "second factor",
    request_body = ChallengeRequest,
    responses(
        (status = 202, description = "Queued for delivery", body = EmailSentResponse),
        (status = 401, description = "`invalid_challenge`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`method_not_allowed`", body = Problem, content_type = "application/problem+json"),
        (status = 423, description = "`otp_blocked` (with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`resend_too_soon` or `send_limit_reached` (with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`: the mail queue is down", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/auth/2fa/email/send")]
pub async fn email_send(
    st: web::Data<AppState>,
    ctx: Ctx,
    body: web::Json<ChallengeRequest>,
) -> ApiResult<HttpResponse> {
    let sent = st.service.email_send(&ctx.0, &body.challenge_token).await?;
    Ok(json(StatusCode::ACCEPTED, &EmailSentResponse::from(&sent)))
}

/// Verifies a code (or, with `method: "webauthn"`, a passkey assertion after
/// `webauthn/authenticate/start`) and signs in. A refused assertion counts as a wrong code.
#[utoipa::path(
    tag = "second factor",
    request_body = VerifyRequest,
    responses(
        (status = 200, description = "Signed in", body = SessionResponse),
        (status = 400, description = "`invalid_request` (not counted as an attempt)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`invalid_challenge`, `invalid_code` (with `attempts_remaining`; `retry_after_seconds` when it starts a block)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`method_not_allowed` (also `recovery_code` on a challenge whose `recovery_code` is false)", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "`code_expired`: past its lifetime or replaced by a newer code", body = Problem, content_type = "application/problem+json"),
        (status = 423, description = "`otp_blocked`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/auth/2fa/verify")]
pub async fn verify(st: web::Data<AppState>, ctx: Ctx, body: web::Json<VerifyRequest>) -> ApiResult<HttpResponse> {
    let remember = body.remember_device;
    if body.method == VerifyMethod::Webauthn {
        let credential = super::parse_credential(body.credential.as_ref())?;
        let s = st.service.verify_webauthn(&ctx.0, &body.challenge_token, credential, remember).await?;
        return Ok(json(StatusCode::OK, &SessionResponse::from(&s)));
    }
    let code = body.code.as_deref().ok_or_else(|| ApiError::InvalidRequest("code is required".into()))?;
    let s = match body.method {
        VerifyMethod::RecoveryCode => {
            let code = latchkey_core::recovery_code::normalize(code).ok_or_else(|| {
                ApiError::InvalidRequest("a recovery code is 10 letters and digits, as xxxxx-xxxxx".into())
            })?;
            st.service.verify_recovery_code(&ctx.0, &body.challenge_token, &code, remember).await?
        }
        VerifyMethod::Authenticator | VerifyMethod::Email | VerifyMethod::Webauthn => {
            let method = if body.method == VerifyMethod::Email { Method::Email } else { Method::Authenticator };
            st.service.verify(&ctx.0, &body.challenge_token, method, code_shape(code)?, remember).await?
        }
    };
    Ok(json(StatusCode::OK, &SessionResponse::from(&s)))
}

/// Skips enrollment in a grace period (DESIGN.md 5.5): a session without a second factor
/// until `enroll_by`, never satisfying step-up.
#[utoipa::path(
    tag = "second factor",
    request_body = ChallengeRequest,
    responses(
        (status = 200, description = "Signed in without a second factor", body = SessionResponse),
        (status = 401, description = "`invalid_challenge`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`enrollment_required`: no grace period, past it, or an admin", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/auth/2fa/skip")]
pub async fn skip(st: web::Data<AppState>, ctx: Ctx, body: web::Json<ChallengeRequest>) -> ApiResult<HttpResponse> {
    let s = st.service.skip_enrollment(&ctx.0, &body.challenge_token).await?;
    Ok(json(StatusCode::OK, &SessionResponse::from(&s)))
}

/// "Need recovery": a pending admin request (agents, supervisors) or an emailed reset link
/// (admins).
#[utoipa::path(
    tag = "second factor",
    request_body = ChallengeRequest,
    responses(
        (status = 202, description = "Request pending or link sent", body = RecoveryResponse),
        (status = 401, description = "`invalid_challenge`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`resend_too_soon`, `send_limit_reached` (reset links)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/auth/2fa/recovery")]
pub async fn recovery(st: web::Data<AppState>, ctx: Ctx, body: web::Json<ChallengeRequest>) -> ApiResult<HttpResponse> {
    let res = match st.service.recovery(&ctx.0, &body.challenge_token).await? {
        RecoveryStarted::AdminApproval(view) => {
            RecoveryResponse { kind: "admin_approval".into(), request: Some(view.as_ref().into()), email_masked: None }
        }
        RecoveryStarted::EmailLink { email_masked } => {
            RecoveryResponse { kind: "email_link".into(), request: None, email_masked: Some(email_masked) }
        }
    };
    Ok(json(StatusCode::ACCEPTED, &res))
}

/// Uses an admin's emailed reset link: removes the admin's enrollments, counters and blocks
/// and ends the admin's sessions. Signs nobody in.
#[utoipa::path(
    tag = "second factor",
    request_body = ResetRequest,
    responses(
        (status = 200, description = "Reset", body = ResetResponse),
        (status = 401, description = "`invalid_token` (unknown, used or expired)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/auth/2fa/reset")]
pub async fn reset(st: web::Data<AppState>, ctx: Ctx, body: web::Json<ResetRequest>) -> ApiResult<HttpResponse> {
    st.service.reset_with_link(&ctx.0, &body.token).await?;
    Ok(json(StatusCode::OK, &ResetResponse { reset: true }))
}

/// Exchanges the hand-off code of a hosted sign-in (`return_to?code=K&state=S`) and its PKCE
/// verifier for a session (DESIGN.md 5.7). `K` is single-use and lives 60 s.
#[utoipa::path(
    tag = "sign-in",
    request_body = ExchangeRequest,
    responses(
        (status = 200, description = "Signed in", body = SessionResponse),
        (status = 400, description = "`invalid_request`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`invalid_code`: unknown, used or expired code, or a verifier that does not match", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/auth/exchange")]
pub async fn exchange(st: web::Data<AppState>, ctx: Ctx, body: web::Json<ExchangeRequest>) -> ApiResult<HttpResponse> {
    let s = st.service.exchange_handoff(&ctx.0, &body.code, &body.code_verifier).await?;
    Ok(json(StatusCode::OK, &SessionResponse::from(&s)))
}
