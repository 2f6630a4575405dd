//! The use-case error: every way a request can be refused, each with a stable machine code
//! (DESIGN.md section 3). The API maps each variant to its HTTP status explicitly.

use latchkey_store::StoreError;

/// A refused or failed use-case.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input that passed JSON parsing but breaks a rule (400 `invalid_request`).
    #[error("{0}")]
    InvalidRequest(String),
    /// No valid session (401 `unauthenticated`).
    #[error("a valid session is required")]
    Unauthenticated,
    /// The user's role may not do this (403 `forbidden`).
    #[error("your role may not do this")]
    Forbidden,
    /// No such object in the caller's tenant (404 `not_found`).
    #[error("not found")]
    NotFound,
    /// Unknown tenant, unknown email or wrong password, indistinguishably (401).
    #[error("the tenant, email or password is wrong")]
    InvalidCredentials,
    /// A WebAuthn registration that does not verify (400 `invalid_credential`, DESIGN.md 5.1):
    /// origin, RP id hash, challenge, flags, attestation, or a credential id already
    /// registered. The detail names the reason; nothing is stored.
    #[error("the credential does not verify: {0}")]
    InvalidCredential(String),
    /// Too many requests or wrong passwords (429 `rate_limited`).
    #[error("too many attempts; retry later")]
    RateLimited {
        /// Seconds until a retry can succeed.
        retry_after: u64,
    },
    /// The tenant slug is taken (409 `tenant_exists`).
    #[error("a tenant with this slug exists")]
    TenantExists,
    /// The email is taken in the tenant (409 `email_taken`).
    #[error("a user with this email exists in the tenant")]
    EmailTaken,
    /// Unknown, expired or used challenge (401 `invalid_challenge`).
    #[error("the challenge is unknown, expired or used")]
    InvalidChallenge,
    /// A wrong (or already used) code (401 `invalid_code`).
    #[error("the code is not valid")]
    InvalidCode {
        /// Wrong codes left before the block.
        attempts_remaining: u32,
        /// Seconds of the block this code started, if it reached the limit.
        retry_after: Option<u64>,
    },
    /// An email code past its lifetime or replaced by a newer one (410 `code_expired`).
    #[error("the code has expired or was replaced by a newer one")]
    CodeExpired {
        /// Wrong codes left before the block.
        attempts_remaining: u32,
    },
    /// Too many wrong codes: sending and verifying are refused (423 `otp_blocked`).
    #[error("too many wrong codes; wait before trying again")]
    OtpBlocked {
        /// Seconds until the block ends.
        retry_after: u64,
    },
    /// The method is not offered by the challenge or allowed for the role (403).
    #[error("this method is not allowed here")]
    MethodNotAllowed,
    /// An enrollment endpoint on a challenge that is not an enrollment, or for a method
    /// it does not offer (409 `already_enrolled`).
    #[error("the user is already enrolled; verify instead")]
    AlreadyEnrolled,
    /// Confirming an authenticator before setting it up (409 `setup_required`).
    #[error("set up the authenticator first")]
    SetupRequired,
    /// A new code was asked for within the cooldown (429 `resend_too_soon`).
    #[error("a new code can be sent shortly")]
    ResendTooSoon {
        /// Seconds until a send is allowed.
        retry_after: u64,
    },
    /// The sliding send window is full (429 `send_limit_reached`).
    #[error("too many codes were sent; wait before asking again")]
    SendLimitReached {
        /// Seconds until a send is allowed.
        retry_after: u64,
    },
    /// Unknown, used or expired reset token (401 `invalid_token`).
    #[error("the reset link is unknown, used or expired")]
    InvalidToken,
    /// The re-entered password is wrong (401 `invalid_password`); the session stays valid.
    #[error("the password is wrong")]
    InvalidPassword,
    /// 2FA is already on (409 `already_enabled`).
    #[error("two-factor authentication is already enabled")]
    AlreadyEnabled,
    /// A sensitive action needs a recent second factor (403 `step_up_required`).
    #[error("verify your second factor again to do this")]
    StepUpRequired,
    /// The tenant would lose its last admin (409 `last_admin`).
    #[error("a tenant keeps at least one admin")]
    LastAdmin,
    /// The recovery request was already decided (409 `request_not_pending`).
    #[error("the request is no longer pending")]
    RequestNotPending,
    /// Unknown, expired, used or foreign setup token (401 `invalid_setup_token`).
    #[error("the setup token is unknown, expired or not yours")]
    InvalidSetupToken,
    /// Removing it would leave the user of a 2FA tenant without a method his role allows
    /// (409 `last_method`, DESIGN.md 5.3).
    #[error("this is your last method; add another one first")]
    LastMethod,
    /// A method must be enrolled first: skipping outside a grace period or as an admin, or
    /// recovery codes without an enrolled method (403 `enrollment_required`, DESIGN.md 5.5).
    #[error("set up a second factor first")]
    EnrollmentRequired,
    /// Agents and supervisors cannot change their own email (403).
    #[error("only an admin can change this email address")]
    EmailChangeForbidden,
    /// The job queue refused the email (503 `unavailable`).
    #[error("the mail queue is unavailable; try again")]
    QueueUnavailable,
    /// The database is unreachable or a connection to it was lost (503 `unavailable`).
    #[error("the database is unavailable; try again")]
    StoreUnavailable,
    /// Anything unexpected (500 `internal`); the detail is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "database unavailable");
            Error::StoreUnavailable
        } else {
            Error::Internal(e.to_string())
        }
    }
}

impl Error {
    /// The stable machine code (DESIGN.md section 3).
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidRequest(_) => "invalid_request",
            Error::Unauthenticated => "unauthenticated",
            Error::Forbidden => "forbidden",
            Error::NotFound => "not_found",
            Error::InvalidCredentials => "invalid_credentials",
            Error::InvalidCredential(_) => "invalid_credential",
            Error::RateLimited { .. } => "rate_limited",
            Error::TenantExists => "tenant_exists",
            Error::EmailTaken => "email_taken",
            Error::InvalidChallenge => "invalid_challenge",
            Error::InvalidCode { .. } => "invalid_code",
            Error::CodeExpired { .. } => "code_expired",
            Error::OtpBlocked { .. } => "otp_blocked",
            Error::MethodNotAllowed => "method_not_allowed",
            Error::AlreadyEnrolled => "already_enrolled",
            Error::SetupRequired => "setup_required",
            Error::ResendTooSoon { .. } => "resend_too_soon",
            Error::SendLimitReached { .. } => "send_limit_reached",
            Error::InvalidToken => "invalid_token",
            Error::InvalidPassword => "invalid_password",
            Error::AlreadyEnabled => "already_enabled",
            Error::StepUpRequired => "step_up_required",
            Error::LastAdmin => "last_admin",
            Error::RequestNotPending => "request_not_pending",
            Error::InvalidSetupToken => "invalid_setup_token",
            Error::EmailChangeForbidden => "email_change_forbidden",
            Error::LastMethod => "last_method",
            Error::EnrollmentRequired => "enrollment_required",
            Error::QueueUnavailable | Error::StoreUnavailable => "unavailable",
            Error::Internal(_) => "internal",
        }
    }
}

/// The result of use-cases.
pub type Result<T, E = Error> = std::result::Result<T, E>;
