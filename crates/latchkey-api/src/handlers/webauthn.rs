//! Passkeys and security keys (DESIGN.md 5.1, 5.3): the ceremonies at sign-in, the signed-in
//! user's own passkeys and their step-up, and passwordless sign-in. `options` answer the JSON
//! form of the WebAuthn options; `credential` is the browser's `PublicKeyCredential` as JSON.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, delete, patch, post, web};
use latchkey_core::Method;
use latchkey_tenant::webauthn_json::{PublicKeyCredential, RegisterPublicKeyCredential};

use super::{json, parse_credential};
use crate::dto::{
    ChallengeRequest, ConfirmResponse, CredentialDto, PasskeyAdded, PasskeyFinishRequest, PasskeySignInRequest,
    PasskeyStartRequest, PasskeyStartResponse, RenameRequest, SessionResponse, WebauthnOptions,
    WebauthnRegisterRequest,
};
use crate::error::{ApiResult, Problem};
use crate::extract::{Authed, Ctx};
use crate::state::AppState;

/// Starts a passkey registration on an `enroll` challenge offering `webauthn`: the creation
/// options (attestation none, user verification preferred, resident key preferred, ES256 and
/// RS256, `excludeCredentials` the user's, a random user handle). Calling again replaces the
/// ceremony.
#[utoipa::path(
    tag = "second factor",
    request_body = ChallengeRequest,
    responses(
        (status = 200, description = "Creation options", body = WebauthnOptions),
        (status = 400, description = "`invalid_request`: the user has the most passkeys", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`invalid_challenge`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`method_not_allowed`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`already_enrolled`: not an enrollment, or webauthn not offered", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/auth/2fa/webauthn/register/start")]
pub async fn register_start(
    st: web::Data<AppState>,
    ctx: Ctx,
    body: web::Json<ChallengeRequest>,
) -> ApiResult<HttpResponse> {
    let options = st.service.webauthn_register_start(&ctx.0, &body.challenge_token).await?;
    Ok(json(StatusCode::OK, &WebauthnOptions { options }))
}

/// Finishes the registration: a credential that verifies enrolls `webauthn` and uses the
/// challenge up; the user signs in again (`next: "login"`).
#[utoipa::path(
    tag = "second factor",
    request_body = WebauthnRegisterRequest,
    responses(
        (status = 200, description = "Enrolled", body = ConfirmResponse),
        (status = 400, description = "`invalid_credential` (does not verify: origin, RP id, challenge, flags; or no ceremony), `invalid_request` (not a PublicKeyCredential, a bad name)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`invalid_challenge`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`method_not_allowed`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`already_enrolled`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/auth/2fa/webauthn/register/finish")]
pub async fn register_finish(
    st: web::Data<AppState>,
    ctx: Ctx,
    body: web::Json<WebauthnRegisterRequest>,
) -> ApiResult<HttpResponse> {
    let credential: RegisterPublicKeyCredential = parse_credential(Some(&body.credential))?;
    st.service.webauthn_register_finish(&ctx.0, &body.challenge_token, credential, body.name.as_deref()).await?;
    Ok(json(
        StatusCode::OK,
        &ConfirmResponse { enrolled: Method::Webauthn, authentication_token: None, next: "login".into() },
    ))
}

/// Starts a passkey verification on a `verify` challenge offering `webauthn`: the request
/// options (`allowCredentials` the user's, user verification preferred). Then
/// `POST /api/v1/auth/2fa/verify {method: "webauthn", credential}`.
#[utoipa::path(
    tag = "second factor",
    request_body = ChallengeRequest,
    responses(
        (status = 200, description = "Request options", body = WebauthnOptions),
        (status = 401, description = "`invalid_challenge`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`method_not_allowed`: the challenge does not offer webauthn", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/auth/2fa/webauthn/authenticate/start")]
pub async fn authenticate_start(
    st: web::Data<AppState>,
    ctx: Ctx,
    body: web::Json<ChallengeRequest>,
) -> ApiResult<HttpResponse> {
    let options = st.service.webauthn_authenticate_start(&ctx.0, &body.challenge_token).await?;
    Ok(json(StatusCode::OK, &WebauthnOptions { options }))
}

/// Request options to step this session up with a passkey; then
/// `POST /api/v1/me/step-up {method: "webauthn", credential}`.
#[utoipa::path(
    tag = "self",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Request options", body = WebauthnOptions),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`method_not_allowed`: webauthn is not enrolled or allowed", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/me/step-up/webauthn")]
pub async fn step_up_start(st: web::Data<AppState>, authed: Authed) -> ApiResult<HttpResponse> {
    let options = st.service.step_up_webauthn_start(&authed.ctx, &authed.auth).await?;
    Ok(json(StatusCode::OK, &WebauthnOptions { options }))
}

/// Starts adding a passkey (step-up while the user has a method): a setup token and the
/// creation options, excluding his credentials.
#[utoipa::path(
    tag = "self",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Setup token and creation options", body = PasskeyAdded),
        (status = 400, description = "`invalid_request`: the user has the most passkeys", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`step_up_required`, `method_not_allowed`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/me/two-factor/webauthn/register/start")]
pub async fn add_start(st: web::Data<AppState>, authed: Authed) -> ApiResult<HttpResponse> {
    let added = st.service.add_passkey_start(&authed.ctx, &authed.auth).await?;
    Ok(json(StatusCode::OK, &PasskeyAdded { setup_token: added.setup_token.expose().to_owned(), options: added.setup }))
}

/// Finishes adding a passkey: a credential that verifies is added (audited `enrolled`, the
/// user's open challenges void, a notice).
#[utoipa::path(
    tag = "self",
    security(("bearer" = [])),
    request_body = PasskeyFinishRequest,
    responses(
        (status = 201, description = "Added", body = CredentialDto),
        (status = 400, description = "`invalid_credential`, `invalid_request`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`, `invalid_setup_token`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/me/two-factor/webauthn/register/finish")]
pub async fn add_finish(
    st: web::Data<AppState>,
    authed: Authed,
    body: web::Json<PasskeyFinishRequest>,
) -> ApiResult<HttpResponse> {
    let credential: RegisterPublicKeyCredential = parse_credential(Some(&body.credential))?;
    let added = st
        .service
        .add_passkey_finish(&authed.ctx, &authed.auth, &body.setup_token, credential, body.name.as_deref())
        .await?;
    Ok(json(StatusCode::CREATED, &CredentialDto::from(&added)))
}

/// Renames one of the user's passkeys (step-up).
#[utoipa::path(
    tag = "self",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The credential id (base64url)")),
    request_body = RenameRequest,
    responses(
        (status = 200, description = "Renamed", body = CredentialDto),
        (status = 400, description = "`invalid_request`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`step_up_required`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`: not one of the user's passkeys", body = Problem, content_type = "application/problem+json"),
    )
)]
#[patch("/api/v1/me/two-factor/webauthn/{id}")]
pub async fn rename(
    st: web::Data<AppState>,
    authed: Authed,
    id: web::Path<String>,
    body: web::Json<RenameRequest>,
) -> ApiResult<HttpResponse> {
    let cred = st.service.rename_passkey(&authed.ctx, &authed.auth, &id, &body.name).await?;
    Ok(json(StatusCode::OK, &CredentialDto::from(&cred)))
}

/// Removes one of the user's passkeys (step-up); the last one ends his `webauthn`
/// enrollment, unless it is his last usable method in a 2FA tenant.
#[utoipa::path(
    tag = "self",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The credential id (base64url)")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`step_up_required`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`: not one of the user's passkeys", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`last_method`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[delete("/api/v1/me/two-factor/webauthn/{id}")]
pub async fn remove(st: web::Data<AppState>, authed: Authed, id: web::Path<String>) -> ApiResult<HttpResponse> {
    st.service.remove_passkey(&authed.ctx, &authed.auth, &id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Starts a passwordless sign-in (when the tenant sets `passkey_sign_in`): request options for
/// a discoverable credential with user verification required. Unknown tenants answer alike.
#[utoipa::path(
    tag = "sign-in",
    request_body = PasskeyStartRequest,
    responses(
        (status = 200, description = "Token and request options", body = PasskeyStartResponse),
        (status = 429, description = "`rate_limited`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/auth/passkey/start")]
pub async fn passkey_start(
    st: web::Data<AppState>,
    ctx: Ctx,
    body: web::Json<PasskeyStartRequest>,
) -> ApiResult<HttpResponse> {
    let start = st.service.passkey_start(&ctx.0, &body.tenant).await?;
    Ok(json(
        StatusCode::OK,
        &PasskeyStartResponse { passkey_token: start.passkey_token.expose().to_owned(), options: start.options },
    ))
}

/// Finishes a passwordless sign-in: an assertion with user verification by a passkey of a
/// user of the tenant whose role allows webauthn is both factors at once.
#[utoipa::path(
    tag = "sign-in",
    request_body = PasskeySignInRequest,
    responses(
        (status = 200, description = "Signed in", body = SessionResponse),
        (status = 400, description = "`invalid_request`: not a PublicKeyCredential", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`invalid_credentials` for every refusal", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/api/v1/auth/passkey/finish")]
pub async fn passkey_finish(
    st: web::Data<AppState>,
    ctx: Ctx,
    body: web::Json<PasskeySignInRequest>,
) -> ApiResult<HttpResponse> {
    let credential: PublicKeyCredential = parse_credential(Some(&body.credential))?;
    let s = st.service.passkey_finish(&ctx.0, &body.passkey_token, credential).await?;
    Ok(json(StatusCode::OK, &SessionResponse::from(&s)))
}
