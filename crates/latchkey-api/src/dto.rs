//! Request and response bodies of the HTTP contract (DESIGN.md section 3).

use chrono::{DateTime, Utc};
use latchkey_core::settings::{Notices, PerRole, RelyingParty};
use latchkey_core::{Method, Role};
use latchkey_store::model::AuditEvent;
use latchkey_tenant::SettingsView;
use latchkey_tenant::{ChallengeView, IssuedSession, RecoveryView, UserView};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// A user's second-factor state.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TwoFactorState {
    /// Enrolled methods.
    pub enrolled: Vec<Method>,
    /// The method last verified with, if still enrolled.
    pub preferred: Option<Method>,
}

/// `User`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserDto {
    /// Id (UUID).
    pub id: String,
    /// Email address (lower-cased).
    pub email: String,
    /// Display name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Second factor.
    pub two_factor: TwoFactorState,
}

impl From<&UserView> for UserDto {
    fn from(u: &UserView) -> Self {
        Self {
            id: u.id.to_string(),
            email: u.email.clone(),
            name: u.name.clone(),
            role: u.role,
            two_factor: TwoFactorState { enrolled: u.enrolled.clone(), preferred: u.preferred },
        }
    }
}

/// What the user must do next on a challenge.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NextDto {
    /// Set up one of `methods`.
    Enroll,
    /// Enter a code of one of `methods`.
    Verify,
}

/// `Challenge`: the second step of a sign-in.
#[derive(Clone, Serialize, ToSchema)]
pub struct ChallengeDto {
    /// Opaque token for the `/api/v1/auth/2fa/*` endpoints (never a bearer token).
    pub challenge_token: String,
    /// Expiry (RFC 3339).
    pub expires_at: DateTime<Utc>,
    /// `enroll` or `verify`.
    pub next: NextDto,
    /// Methods on offer.
    pub methods: Vec<Method>,
    /// The user's address, masked.
    pub email_masked: String,
    /// Whether `method: "recovery_code"` may be used (DESIGN.md 5.2).
    pub recovery_code: bool,
    /// Whether the enrollment may be skipped now (`POST /api/v1/auth/2fa/skip`, DESIGN.md 5.5).
    pub skippable: bool,
    /// The end of the grace period, on `enroll` challenges of a tenant with one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enroll_by: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for ChallengeDto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChallengeDto")
            .field("expires_at", &self.expires_at)
            .field("next", &self.next)
            .field("methods", &self.methods)
            .field("email_masked", &self.email_masked)
            .finish_non_exhaustive()
    }
}

impl From<&ChallengeView> for ChallengeDto {
    fn from(c: &ChallengeView) -> Self {
        Self {
            challenge_token: c.token.expose().to_owned(),
            expires_at: c.expires_at,
            next: match c.next {
                latchkey_store::model::NextAction::Enroll => NextDto::Enroll,
                latchkey_store::model::NextAction::Verify => NextDto::Verify,
            },
            methods: c.methods.clone(),
            email_masked: c.email_masked.clone(),
            recovery_code: c.recovery_code,
            skippable: c.skippable,
            enroll_by: c.enroll_by,
        }
    }
}

/// `POST /api/v1/tenants` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateTenantRequest {
    /// Slug users type at sign-in: 1–63 of `a-z`, `0-9`, inner `-`.
    #[schema(pattern = "^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$", example = "acme")]
    pub slug: String,
    /// Display name (the authenticator issuer).
    pub name: String,
    /// The first admin.
    pub admin: NewAdmin,
}

/// The first admin of a tenant.
#[derive(Deserialize, ToSchema)]
pub struct NewAdmin {
    /// Email address.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Password (8+ characters).
    #[schema(min_length = 8, max_length = 1024)]
    pub password: String,
}

impl std::fmt::Debug for NewAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewAdmin").field("email", &self.email).finish_non_exhaustive()
    }
}

/// `POST /api/v1/tenants` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantCreated {
    /// Tenant id.
    pub id: String,
    /// Slug.
    pub slug: String,
    /// Name.
    pub name: String,
    /// The first admin.
    pub admin: UserDto,
}

/// `POST /api/v1/auth` body.
#[derive(Deserialize, ToSchema)]
pub struct SignInRequest {
    /// Tenant slug.
    pub tenant: String,
    /// Email address (compared case-insensitively).
    pub email: String,
    /// Password.
    pub password: String,
    /// A trusted device's token (DESIGN.md 5.4); an unknown or dead one is ignored.
    #[serde(default)]
    pub device_token: Option<String>,
}

impl std::fmt::Debug for SignInRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignInRequest").field("tenant", &self.tenant).finish_non_exhaustive()
    }
}

/// `POST /api/v1/auth` answer: a session (2FA off or after verification) or a challenge.
#[derive(Serialize, ToSchema)]
pub struct SignInResponse {
    /// Bearer token; `null` until the second factor is verified.
    pub authentication_token: Option<String>,
    /// Expiry of the token; `null` with it.
    pub expires_at: Option<DateTime<Utc>>,
    /// The user.
    pub user: UserDto,
    /// The challenge while 2FA is on, else `null`.
    pub two_factor: Option<ChallengeDto>,
    /// Whether a trusted device stood in for the second factor (DESIGN.md 5.4).
    pub trusted_device: bool,
}

impl std::fmt::Debug for SignInResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignInResponse")
            .field("expires_at", &self.expires_at)
            .field("user", &self.user)
            .field("two_factor", &self.two_factor)
            .finish_non_exhaustive()
    }
}

/// A body carrying only a challenge token.
#[derive(Deserialize, ToSchema)]
pub struct ChallengeRequest {
    /// The challenge token from sign-in.
    pub challenge_token: String,
}

impl std::fmt::Debug for ChallengeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChallengeRequest").finish_non_exhaustive()
    }
}

/// `POST /api/v1/auth/2fa/authenticator/setup` answer.
#[derive(Serialize, ToSchema)]
pub struct AuthenticatorSetup {
    /// The setup key: base32, no padding (160 bits).
    pub secret: String,
    /// `otpauth://totp/ISSUER:ACCOUNT?secret=..&issuer=..&algorithm=SHA1&digits=6&period=30`.
    pub otpauth_uri: String,
    /// PNG QR code of `otpauth_uri`, base64.
    pub qr_png: String,
}

/// `POST /api/v1/auth/2fa/authenticator/confirm` body.
#[derive(Deserialize, ToSchema)]
pub struct ConfirmRequest {
    /// The challenge token.
    pub challenge_token: String,
    /// A code from the app: exactly 6 ASCII digits, as a string.
    #[schema(pattern = "^[0-9]{6}$", example = "012345")]
    pub code: String,
}

impl std::fmt::Debug for ConfirmRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfirmRequest").finish_non_exhaustive()
    }
}

/// `POST /api/v1/auth/2fa/authenticator/confirm` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConfirmResponse {
    /// The enrolled method.
    pub enrolled: Method,
    /// Always `null`: sign in again.
    pub authentication_token: Option<String>,
    /// Always `login`.
    pub next: String,
}

/// `POST /api/v1/auth/2fa/email/send` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmailSentResponse {
    /// Where the code went, masked.
    pub email_masked: String,
    /// When the code expires.
    pub expires_at: DateTime<Utc>,
    /// When another code may be asked for.
    pub resend_available_at: DateTime<Utc>,
    /// Sends left in the sliding window.
    pub sends_remaining: u32,
}

/// What `POST /api/v1/auth/2fa/verify` is asked to check: a method's proof, or a recovery code
/// (which is not a method, DESIGN.md 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VerifyMethod {
    /// A code from the authenticator app.
    Authenticator,
    /// The emailed code.
    Email,
    /// One of the user's recovery codes.
    RecoveryCode,
    /// A WebAuthn assertion (`credential`), after `webauthn/authenticate/start`.
    Webauthn,
}

impl From<&latchkey_tenant::EmailSent> for EmailSentResponse {
    fn from(s: &latchkey_tenant::EmailSent) -> Self {
        Self {
            email_masked: s.email_masked.clone(),
            expires_at: s.expires_at,
            resend_available_at: s.resend_available_at,
            sends_remaining: s.sends_remaining,
        }
    }
}

/// `POST /api/v1/auth/2fa/verify` body.
#[derive(Deserialize, ToSchema)]
pub struct VerifyRequest {
    /// The challenge token.
    pub challenge_token: String,
    /// `authenticator`, `email` or `recovery_code`.
    pub method: VerifyMethod,
    /// For a method: exactly 6 ASCII digits, as a string. For `recovery_code`: the code, any
    /// letter case, with or without its hyphen (`xxxxx-xxxxx`).
    #[schema(example = "012345")]
    pub code: Option<String>,
    /// For `webauthn`: the browser's `PublicKeyCredential` as JSON (`{id, rawId, type,
    /// response: {clientDataJSON, authenticatorData, signature, userHandle?}}`, base64url).
    #[schema(value_type = Option<Object>)]
    pub credential: Option<serde_json::Value>,
    /// Remember this device where the role allows it (DESIGN.md 5.4).
    #[serde(default)]
    pub remember_device: bool,
}

impl std::fmt::Debug for VerifyRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyRequest").field("method", &self.method).finish_non_exhaustive()
    }
}

/// A session: `POST /api/v1/auth/2fa/verify` answer (also `skip`).
#[derive(Serialize, ToSchema)]
pub struct SessionResponse {
    /// Bearer token.
    pub authentication_token: String,
    /// Its expiry.
    pub expires_at: DateTime<Utc>,
    /// The user.
    pub user: UserDto,
    /// A trusted device's token, when `remember_device` was asked for and the role allows it;
    /// shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_token: Option<String>,
    /// When that device stops being honoured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_expires_at: Option<DateTime<Utc>>,
}

impl From<&IssuedSession> for SessionResponse {
    fn from(s: &IssuedSession) -> Self {
        Self {
            authentication_token: s.token.expose().to_owned(),
            expires_at: s.expires_at,
            user: (&s.user).into(),
            device_token: s.device.as_ref().map(|d| d.token.expose().to_owned()),
            device_expires_at: s.device.as_ref().map(|d| d.expires_at),
        }
    }
}

impl std::fmt::Debug for SessionResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionResponse")
            .field("expires_at", &self.expires_at)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// `RecoveryRequest`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecoveryRequestDto {
    /// Id.
    pub id: String,
    /// The requesting user.
    pub user: UserDto,
    /// `pending`, `approved` or `dismissed`.
    pub status: String,
    /// Client IP of the request.
    pub ip: Option<String>,
    /// User agent of the request.
    pub user_agent: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Decision time.
    pub decided_at: Option<DateTime<Utc>>,
    /// Id of the deciding admin.
    pub decided_by: Option<String>,
}

impl From<&RecoveryView> for RecoveryRequestDto {
    fn from(v: &RecoveryView) -> Self {
        let r = &v.request;
        Self {
            id: r.id.to_string(),
            user: (&v.user).into(),
            status: r.status.as_str().to_owned(),
            ip: r.ip.clone(),
            user_agent: r.user_agent.clone(),
            created_at: r.created_at,
            decided_at: r.decided_at,
            decided_by: r.decided_by.map(|u| u.to_string()),
        }
    }
}

/// `POST /api/v1/auth/2fa/recovery` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecoveryResponse {
    /// `admin_approval` (agents, supervisors) or `email_link` (admins).
    pub kind: String,
    /// The pending request (`admin_approval`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<RecoveryRequestDto>,
    /// Where the link went, masked (`email_link`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_masked: Option<String>,
}

/// `POST /api/v1/auth/exchange` body (DESIGN.md 5.7): the hand-off code `K` a hosted sign-in
/// sent to the dashboard, and the PKCE verifier of the `code_challenge` (S256).
#[derive(Deserialize, ToSchema)]
pub struct ExchangeRequest {
    /// The `code` of the return URL.
    pub code: String,
    /// The PKCE code verifier (RFC 7636: 43 to 128 characters).
    pub code_verifier: String,
}

impl std::fmt::Debug for ExchangeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExchangeRequest(<redacted>)")
    }
}

/// `POST /api/v1/auth/2fa/reset` body.
#[derive(Deserialize, ToSchema)]
pub struct ResetRequest {
    /// The token of the emailed link.
    pub token: String,
}

impl std::fmt::Debug for ResetRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResetRequest(<redacted>)")
    }
}

/// `POST /api/v1/auth/2fa/reset` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResetResponse {
    /// Always `true`.
    pub reset: bool,
}

/// `PATCH /api/v1/me` body.
#[derive(Deserialize, ToSchema)]
pub struct UpdateMeRequest {
    /// New display name.
    pub name: Option<String>,
    /// New email (admins only).
    pub email: Option<String>,
    /// The current password, required to change the email.
    pub password: Option<String>,
}

impl std::fmt::Debug for UpdateMeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateMeRequest").field("name", &self.name).finish_non_exhaustive()
    }
}

/// `POST /api/v1/me/password` body.
#[derive(Deserialize, ToSchema)]
pub struct PasswordChangeRequest {
    /// The current password.
    pub current_password: String,
    /// The new password (8+ characters).
    #[schema(min_length = 8, max_length = 1024)]
    pub new_password: String,
}

impl std::fmt::Debug for PasswordChangeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordChangeRequest(<redacted>)")
    }
}

/// Methods allowed per role.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoleMethods {
    /// Admins.
    pub admin: Vec<Method>,
    /// Supervisors.
    pub supervisor: Vec<Method>,
    /// Agents.
    pub agent: Vec<Method>,
}

/// `GET /api/v1/settings/two-factor` answer (DESIGN.md sections 3 and 5.8).
#[derive(Debug, Serialize, ToSchema)]
pub struct TwoFactorSettings {
    /// Whether 2FA is required at sign-in.
    pub enabled: bool,
    /// Methods allowed per role.
    pub methods: RoleMethods,
    /// The relying party in force (the tenant's own, or the server's default).
    pub webauthn: RelyingParty,
    /// Whether passwordless passkey sign-in is on.
    pub passkey_sign_in: bool,
    /// Whether each role may use recovery codes.
    pub recovery_codes: PerRole<bool>,
    /// Days a trusted device lasts per role (0 = off).
    pub remember_device_days: PerRole<u32>,
    /// Days supervisors and agents may skip enrollment (0 = none).
    pub enrollment_grace_days: u32,
    /// Which notices are sent.
    pub notices: Notices,
    /// URL prefixes a hosted sign-in may hand off to.
    pub return_urls: Vec<String>,
}

impl From<&SettingsView> for TwoFactorSettings {
    fn from(v: &SettingsView) -> Self {
        let p = &v.policy;
        let s = &v.settings;
        Self {
            enabled: p.enabled,
            methods: RoleMethods {
                admin: p.admin.to_vec(),
                supervisor: p.supervisor.to_vec(),
                agent: p.agent.to_vec(),
            },
            webauthn: v.relying_party.clone(),
            passkey_sign_in: s.passkey_sign_in,
            recovery_codes: s.recovery_codes,
            remember_device_days: s.remember_device_days,
            enrollment_grace_days: s.enrollment_grace_days,
            notices: s.notices,
            return_urls: s.return_urls.clone(),
        }
    }
}

/// `POST /api/v1/settings/two-factor/enable` body.
#[derive(Deserialize, ToSchema)]
pub struct EnableRequest {
    /// The admin's password.
    pub password: String,
    /// The admin's method.
    pub method: Method,
}

impl std::fmt::Debug for EnableRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnableRequest").field("method", &self.method).finish_non_exhaustive()
    }
}

/// `POST /api/v1/settings/two-factor/enable` answer.
#[derive(Serialize, ToSchema)]
pub struct EnableResponse {
    /// Token for `enable/confirm`: bound to this session, single-use.
    pub setup_token: String,
    /// The chosen method.
    pub method: Method,
    /// Authenticator setup key (when a new authenticator is set up).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Authenticator `otpauth://` URI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otpauth_uri: Option<String>,
    /// Authenticator QR code, base64 PNG.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qr_png: Option<String>,
    /// Where the code went, masked (email).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_masked: Option<String>,
}

/// `POST /api/v1/settings/two-factor/enable/confirm` body.
#[derive(Deserialize, ToSchema)]
pub struct EnableConfirmRequest {
    /// The setup token.
    pub setup_token: String,
    /// Exactly 6 ASCII digits, as a string.
    #[schema(pattern = "^[0-9]{6}$", example = "012345")]
    pub code: String,
}

impl std::fmt::Debug for EnableConfirmRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnableConfirmRequest").finish_non_exhaustive()
    }
}

/// The 2FA toggle.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnabledResponse {
    /// Whether 2FA is on.
    pub enabled: bool,
}

/// `POST /api/v1/settings/two-factor/disable` body.
#[derive(Deserialize, ToSchema)]
pub struct PasswordRequest {
    /// The admin's password.
    pub password: String,
}

impl std::fmt::Debug for PasswordRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordRequest(<redacted>)")
    }
}

/// `PUT /api/v1/settings/two-factor/methods` body: each list non-empty.
#[derive(Debug, Deserialize, ToSchema)]
pub struct MethodsRequest {
    /// Methods for admins.
    pub admin: Option<Vec<Method>>,
    /// Methods for supervisors.
    pub supervisor: Option<Vec<Method>>,
    /// Methods for agents.
    pub agent: Option<Vec<Method>>,
}

/// `POST /api/v1/agents` body.
#[derive(Deserialize, ToSchema)]
pub struct CreateAgentRequest {
    /// Email address.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Initial password (8+ characters).
    #[schema(min_length = 8, max_length = 1024)]
    pub password: String,
}

impl std::fmt::Debug for CreateAgentRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateAgentRequest")
            .field("email", &self.email)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// `PATCH /api/v1/agents/{id}` body.
#[derive(Deserialize, ToSchema)]
pub struct UpdateAgentRequest {
    /// New email.
    pub email: Option<String>,
    /// New name.
    pub name: Option<String>,
    /// New role.
    pub role: Option<Role>,
    /// The acting admin's password: required when an admin changes their own email here.
    pub password: Option<String>,
}

impl std::fmt::Debug for UpdateAgentRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateAgentRequest")
            .field("email", &self.email)
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// A page of users.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserPage {
    /// The users.
    pub items: Vec<UserDto>,
    /// Cursor of the next page, `null` at the end.
    pub next_cursor: Option<String>,
}

/// A page of recovery requests.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecoveryPage {
    /// The requests, newest first.
    pub items: Vec<RecoveryRequestDto>,
    /// Cursor of the next page, `null` at the end.
    pub next_cursor: Option<String>,
}

/// An audit event.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEventDto {
    /// Id.
    pub id: String,
    /// When.
    pub at: DateTime<Utc>,
    /// Acting user id, `operator`, or `null`.
    pub actor_id: Option<String>,
    /// The user acted upon.
    pub subject_id: Option<String>,
    /// One of the audit kinds of DESIGN.md.
    pub kind: String,
    /// Client IP.
    pub ip: Option<String>,
    /// Client user agent.
    pub user_agent: Option<String>,
    /// Kind-specific details.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

impl From<&AuditEvent> for AuditEventDto {
    fn from(e: &AuditEvent) -> Self {
        Self {
            id: e.id.to_string(),
            at: e.at,
            actor_id: e.actor_id.clone(),
            subject_id: e.subject_id.clone(),
            kind: e.kind.as_str().to_owned(),
            ip: e.ip.clone(),
            user_agent: e.user_agent.clone(),
            detail: e.detail.clone(),
        }
    }
}

/// A page of audit events.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    /// The events, newest first.
    pub items: Vec<AuditEventDto>,
    /// Cursor of the next page, `null` at the end.
    pub next_cursor: Option<String>,
}

/// List paging: `?limit=` (default 50, at most 200) and `?cursor=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page, 1 to 200 (default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `GET /api/v1/recovery-requests` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RecoveryQuery {
    /// `pending`, `approved` or `dismissed`.
    pub status: Option<String>,
    /// Items per page, 1 to 200 (default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `GET /api/v1/audit-events` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only events at or after this instant (RFC 3339).
    pub since: Option<String>,
    /// Only events of this kind.
    pub kind: Option<String>,
    /// Only events about this user id.
    pub subject_id: Option<String>,
    /// Items per page, 1 to 200 (default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `GET /readyz` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ok` or `down` per dependency.
    pub database: String,
    /// `ok` or `down`.
    pub queue: String,
    /// `ok` when mail goes to the outbox directory (embedded mail) and it can be written;
    /// absent with SMTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbox: Option<String>,
}

/// An enrolled method's dates (`GET /api/v1/me/two-factor`).
#[derive(Debug, Serialize, ToSchema)]
pub struct MethodDates {
    /// When it was enrolled.
    pub created_at: DateTime<Utc>,
    /// When it last verified a sign-in or step-up.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// The email method's enrollment.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmailMethodDto {
    /// When it was enrolled.
    pub created_at: DateTime<Utc>,
}

/// The user's recovery codes, as far as they can be shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecoveryCodesState {
    /// Codes not used yet.
    pub remaining: u32,
    /// When the set was generated.
    pub created_at: DateTime<Utc>,
}

/// A trusted device (DESIGN.md 5.4).
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceDto {
    /// Id.
    pub id: String,
    /// When it was remembered.
    pub created_at: DateTime<Utc>,
    /// When it last signed the user in.
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it stops being honoured.
    pub expires_at: DateTime<Utc>,
    /// The user agent that asked to remember it.
    pub user_agent: Option<String>,
    /// The client IP that asked to remember it.
    pub ip: Option<String>,
}

impl From<&latchkey_store::model::TrustedDevice> for DeviceDto {
    fn from(d: &latchkey_store::model::TrustedDevice) -> Self {
        Self {
            id: d.id.to_string(),
            created_at: d.created_at,
            last_used_at: d.last_used_at,
            expires_at: d.expires_at,
            user_agent: d.user_agent.clone(),
            ip: d.ip.clone(),
        }
    }
}

/// `GET /api/v1/me/trusted-devices` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceList {
    /// Live devices, oldest first.
    pub items: Vec<DeviceDto>,
}

/// `GET /api/v1/me/two-factor` answer (DESIGN.md 5.3).
#[derive(Debug, Serialize, ToSchema)]
pub struct TwoFactorOverviewDto {
    /// Enrolled methods.
    pub enrolled: Vec<Method>,
    /// The preferred method (listed first by challenges).
    pub preferred: Option<Method>,
    /// The authenticator, if enrolled.
    pub authenticator: Option<MethodDates>,
    /// The email method, if enrolled.
    pub email: Option<EmailMethodDto>,
    /// The recovery codes, if the user has a set.
    pub recovery_codes: Option<RecoveryCodesState>,
    /// Live trusted devices.
    pub trusted_devices: Vec<DeviceDto>,
    /// The user's passkeys and security keys, oldest first.
    pub webauthn: Vec<CredentialDto>,
}

impl From<&latchkey_tenant::TwoFactorOverview> for TwoFactorOverviewDto {
    fn from(o: &latchkey_tenant::TwoFactorOverview) -> Self {
        Self {
            enrolled: o.enrolled.clone(),
            preferred: o.preferred,
            authenticator: o
                .authenticator
                .as_ref()
                .map(|e| MethodDates { created_at: e.created_at, last_used_at: e.last_used_at }),
            email: o.email.as_ref().map(|e| EmailMethodDto { created_at: e.created_at }),
            recovery_codes: o
                .recovery_codes
                .map(|s| RecoveryCodesState { remaining: s.remaining, created_at: s.created_at }),
            trusted_devices: o.trusted_devices.iter().map(DeviceDto::from).collect(),
            webauthn: o.webauthn.iter().map(CredentialDto::from).collect(),
        }
    }
}

/// `POST /api/v1/me/step-up` body.
#[derive(Deserialize, ToSchema)]
pub struct StepUpRequest {
    /// `authenticator`, `email` or `webauthn` (recovery codes do not step up).
    pub method: Method,
    /// Exactly 6 ASCII digits, as a string (`authenticator`, `email`).
    #[schema(example = "012345")]
    pub code: Option<String>,
    /// The browser's `PublicKeyCredential` as JSON (`webauthn`, after `step-up/webauthn`).
    #[schema(value_type = Option<Object>)]
    pub credential: Option<serde_json::Value>,
}

impl std::fmt::Debug for StepUpRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepUpRequest").field("method", &self.method).finish_non_exhaustive()
    }
}

/// `POST /api/v1/me/step-up` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct StepUpResponse {
    /// When the session's second factor was verified.
    pub verified_at: DateTime<Utc>,
}

/// `POST /api/v1/me/two-factor/authenticator` answer.
#[derive(Serialize, ToSchema)]
pub struct AuthenticatorAdded {
    /// Token for the confirmation: bound to this session, single-use.
    pub setup_token: String,
    /// The setup key: base32, no padding.
    pub secret: String,
    /// The Key Uri Format URI.
    pub otpauth_uri: String,
    /// PNG QR code of `otpauth_uri`, base64.
    pub qr_png: String,
}

/// `POST /api/v1/me/two-factor/email` answer.
#[derive(Serialize, ToSchema)]
pub struct EmailAdded {
    /// Token for the confirmation: bound to this session, single-use.
    pub setup_token: String,
    /// Where the code went, masked.
    pub email_masked: String,
    /// When the code expires.
    pub expires_at: DateTime<Utc>,
    /// When another code may be asked for.
    pub resend_available_at: DateTime<Utc>,
    /// Sends left in the sliding window.
    pub sends_remaining: u32,
}

/// A setup's confirmation: `POST /api/v1/me/two-factor/*/confirm` body.
#[derive(Deserialize, ToSchema)]
pub struct SetupConfirmRequest {
    /// The setup token.
    pub setup_token: String,
    /// Exactly 6 ASCII digits, as a string.
    #[schema(pattern = "^[0-9]{6}$", example = "012345")]
    pub code: String,
}

impl std::fmt::Debug for SetupConfirmRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetupConfirmRequest").finish_non_exhaustive()
    }
}

/// A method enrolled from the account: the confirmations' answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnrolledResponse {
    /// The method.
    pub enrolled: Method,
}

/// `PUT /api/v1/me/two-factor/preferred` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PreferredRequest {
    /// An enrolled method.
    pub method: Method,
}

/// `POST /api/v1/me/recovery-codes` answer: the codes, shown once.
#[derive(Serialize, ToSchema)]
pub struct RecoveryCodesResponse {
    /// Ten codes, `xxxxx-xxxxx` (lower-case Crockford base32).
    pub codes: Vec<String>,
    /// When they were generated.
    pub created_at: DateTime<Utc>,
}

/// WebAuthn options: `{"publicKey": {…}}`, binary fields base64url without padding, ready for
/// `navigator.credentials.create()` / `get()` after decoding (DESIGN.md 5.1).
#[derive(Debug, Serialize, ToSchema)]
pub struct WebauthnOptions {
    /// `PublicKeyCredentialCreationOptions` or `…RequestOptions` under `publicKey`.
    #[schema(value_type = Object)]
    pub options: serde_json::Value,
}

/// `POST /api/v1/auth/2fa/webauthn/register/finish` body.
#[derive(Deserialize, ToSchema)]
pub struct WebauthnRegisterRequest {
    /// The `enroll` challenge's token.
    pub challenge_token: String,
    /// The browser's `PublicKeyCredential` as JSON (`{id, rawId, type, response:
    /// {clientDataJSON, attestationObject, transports?}}`, base64url).
    #[schema(value_type = Object)]
    pub credential: serde_json::Value,
    /// A name for it (default `Passkey N`).
    pub name: Option<String>,
}

impl std::fmt::Debug for WebauthnRegisterRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebauthnRegisterRequest").field("name", &self.name).finish_non_exhaustive()
    }
}

/// `POST /api/v1/me/two-factor/webauthn/register/start` answer.
#[derive(Serialize, ToSchema)]
pub struct PasskeyAdded {
    /// Token for `register/finish`: bound to this session, single-use.
    pub setup_token: String,
    /// The creation options, `{"publicKey": {…}}`.
    #[schema(value_type = Object)]
    pub options: serde_json::Value,
}

/// `POST /api/v1/me/two-factor/webauthn/register/finish` body.
#[derive(Deserialize, ToSchema)]
pub struct PasskeyFinishRequest {
    /// The setup token of `register/start`.
    pub setup_token: String,
    /// The browser's `PublicKeyCredential` as JSON.
    #[schema(value_type = Object)]
    pub credential: serde_json::Value,
    /// A name for it (default `Passkey N`).
    pub name: Option<String>,
}

impl std::fmt::Debug for PasskeyFinishRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasskeyFinishRequest").field("name", &self.name).finish_non_exhaustive()
    }
}

/// `Credential`: one of a user's passkeys or security keys (DESIGN.md 5.1).
#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialDto {
    /// The credential id, base64url without padding.
    pub id: String,
    /// The user's name for it.
    pub name: String,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// When it last verified a sign-in or step-up.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Transports the authenticator reported (`usb`, `nfc`, `ble`, `internal`, `hybrid`).
    pub transports: Vec<String>,
    /// Whether it may be synced or backed up (a multi-device passkey: the BE flag).
    pub backup_eligible: bool,
}

impl From<&latchkey_store::model::WebauthnCredential> for CredentialDto {
    fn from(c: &latchkey_store::model::WebauthnCredential) -> Self {
        Self {
            id: c.credential_id.clone(),
            name: c.name.clone(),
            created_at: c.created_at,
            last_used_at: c.last_used_at,
            transports: c.transports.clone(),
            backup_eligible: c.backup_eligible,
        }
    }
}

/// `PATCH /api/v1/me/two-factor/webauthn/{id}` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RenameRequest {
    /// The new name (1 to 200 characters, no control or invisible characters).
    pub name: String,
}

/// `POST /api/v1/auth/passkey/start` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PasskeyStartRequest {
    /// The tenant's slug.
    pub tenant: String,
}

/// `POST /api/v1/auth/passkey/start` answer.
#[derive(Serialize, ToSchema)]
pub struct PasskeyStartResponse {
    /// Token for `passkey/finish` (single-use, the challenge lifetime).
    pub passkey_token: String,
    /// The request options: a discoverable credential, user verification required.
    #[schema(value_type = Object)]
    pub options: serde_json::Value,
}

/// `POST /api/v1/auth/passkey/finish` body.
#[derive(Deserialize, ToSchema)]
pub struct PasskeySignInRequest {
    /// The token of `passkey/start`.
    pub passkey_token: String,
    /// The browser's `PublicKeyCredential` as JSON (with `userHandle`).
    #[schema(value_type = Object)]
    pub credential: serde_json::Value,
}

impl std::fmt::Debug for PasskeySignInRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasskeySignInRequest").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_tokens_and_codes() {
        let verify = VerifyRequest {
            challenge_token: "challenge-secret".into(),
            method: VerifyMethod::Email,
            code: Some("123456".into()),
            credential: None,
            remember_device: true,
        };
        let shown = format!("{verify:?}");
        assert!(!shown.contains("challenge-secret") && !shown.contains("123456"), "{shown}");
        let session = SessionResponse {
            authentication_token: "session-secret".into(),
            expires_at: chrono::DateTime::from_timestamp(0, 0).unwrap_or_default(),
            user: UserDto {
                id: "u".into(),
                email: "e".into(),
                name: "n".into(),
                role: Role::Agent,
                two_factor: TwoFactorState { enrolled: vec![], preferred: None },
            },
            device_token: Some("device-secret".into()),
            device_expires_at: None,
        };
        let shown = format!("{session:?}");
        assert!(!shown.contains("session-secret") && !shown.contains("device-secret"), "{shown}");
        let step_up = StepUpRequest { method: Method::Email, code: Some("112233".into()), credential: None };
        assert!(!format!("{step_up:?}").contains("112233"));
        let setup = SetupConfirmRequest { setup_token: "setup-secret".into(), code: "445566".into() };
        let shown = format!("{setup:?}");
        assert!(!shown.contains("setup-secret") && !shown.contains("445566"));
        let confirm = EnableConfirmRequest { setup_token: "setup-secret".into(), code: "654321".into() };
        let shown = format!("{confirm:?}");
        assert!(!shown.contains("setup-secret") && !shown.contains("654321"));
    }
}

/// Reads a field that may be absent (`None`), `null` (`Some(None)`) or a value.
fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// `POST /api/v1/webhooks` body (DESIGN.md 5.6).
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateWebhookRequest {
    /// An absolute `https://` URL (plain `http://` only when the server allows it), at most
    /// 2,048 bytes, without credentials, whose host resolves to public addresses only.
    pub url: String,
    /// Audit kinds to deliver, or `["*"]` for every event.
    pub events: Vec<String>,
    /// A note for admins (at most 500 characters).
    pub description: Option<String>,
}

/// `PATCH /api/v1/webhooks/{id}` body: any of the fields; `description: null` clears it.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateWebhookRequest {
    /// A new URL (the rules of creation).
    pub url: Option<String>,
    /// New audit kinds, or `["*"]`.
    pub events: Option<Vec<String>>,
    /// Switch deliveries of new events on or off.
    pub enabled: Option<bool>,
    /// A new note, or `null` to clear it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
}

/// A webhook endpoint. `secret` appears only in the answers of creation and rotation.
#[derive(Serialize, ToSchema)]
pub struct WebhookDto {
    /// Id (UUID).
    pub id: String,
    /// Where deliveries are POSTed.
    pub url: String,
    /// Audit kinds delivered, or `["*"]`.
    pub events: Vec<String>,
    /// The admin's note.
    pub description: Option<String>,
    /// Whether new events are delivered.
    pub enabled: bool,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// The signing secret (`whsec_` + base64 of 32 bytes), shown only once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl std::fmt::Debug for WebhookDto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookDto").field("id", &self.id).field("url", &self.url).finish_non_exhaustive()
    }
}

impl From<&latchkey_store::repo::webhooks::Webhook> for WebhookDto {
    fn from(h: &latchkey_store::repo::webhooks::Webhook) -> Self {
        Self {
            id: h.id.to_string(),
            url: h.url.clone(),
            events: h.events.names(),
            description: h.description.clone(),
            enabled: h.enabled,
            created_at: h.created_at,
            secret: None,
        }
    }
}

impl From<&latchkey_tenant::CreatedWebhook> for WebhookDto {
    fn from(c: &latchkey_tenant::CreatedWebhook) -> Self {
        Self { secret: Some(c.secret.as_str().to_owned()), ..Self::from(&c.webhook) }
    }
}

/// A page of webhook endpoints.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookPage {
    /// The endpoints, oldest first (without secrets).
    pub items: Vec<WebhookDto>,
    /// Always `null`: a tenant's endpoints fit on one page.
    pub next_cursor: Option<String>,
}

/// One delivery of an event to an endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDeliveryDto {
    /// Id: also the `webhook-id` header of every attempt.
    pub id: String,
    /// The audit event's id (the body's `id`).
    pub event_id: Option<String>,
    /// The audit event's kind (the body's `type`).
    pub event_type: Option<String>,
    /// `pending`, `delivered` or `failed`.
    pub status: &'static str,
    /// Attempts so far.
    pub attempts: i32,
    /// The HTTP status of the last answer, if any.
    pub last_status: Option<i32>,
    /// Why the last attempt failed (a status line, a transport error, a refusal).
    pub last_error: Option<String>,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When the endpoint answered 2xx.
    pub delivered_at: Option<DateTime<Utc>>,
}

impl WebhookDeliveryDto {
    /// The API form of a delivery row and its event's kind.
    pub fn new(d: &latchkey_store::repo::deliveries::Delivery, event_type: Option<String>) -> Self {
        use latchkey_store::repo::deliveries::DeliveryState as S;
        let status = match d.state {
            S::Pending | S::Sending => "pending",
            S::Sent => "delivered",
            S::Dropped | S::Failed => "failed",
        };
        Self {
            id: d.id.to_string(),
            event_id: d.event_id.clone(),
            event_type,
            status,
            attempts: d.attempts,
            last_status: d.last_status,
            last_error: d.last_error.clone(),
            next_attempt_at: (status == "pending").then_some(d.next_attempt_at),
            delivered_at: d.delivered_at,
        }
    }
}

/// A page of deliveries.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDeliveryPage {
    /// The deliveries, newest event first.
    pub items: Vec<WebhookDeliveryDto>,
    /// Cursor of the next page, `null` at the end.
    pub next_cursor: Option<String>,
}

/// `202` answer of a retry.
#[derive(Debug, Serialize, ToSchema)]
pub struct RetryAccepted {
    /// Always `true`: the delivery is due again.
    pub queued: bool,
}
