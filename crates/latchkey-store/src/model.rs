//! The records the store reads and writes, in domain types. Timestamps are stored as Unix
//! milliseconds and ids as UUID text; conversion failures are [`StoreError::Corrupt`].

use std::str::FromStr;

use chrono::{DateTime, Utc};
use latchkey_core::otp::OtpLockout;
use latchkey_core::settings::TenantSettings;
use latchkey_core::{
    AuditEventId, AuditKind, ChallengeId, EmailCodeId, Method, MethodSet, RecoveryRequestId, ResetTokenId, Role,
    SessionId, TenantId, UserId,
};

use crate::error::{StoreError, StoreResult};

/// Unix milliseconds of `t` (the stored form of every timestamp).
pub fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// The instant of stored Unix milliseconds.
pub fn at(ms: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms).ok_or(StoreError::Corrupt("timestamp"))
}

pub(crate) fn at_opt(ms: Option<i64>) -> StoreResult<Option<DateTime<Utc>>> {
    ms.map(at).transpose()
}

pub(crate) fn parse<T: FromStr>(what: &'static str, s: &str) -> StoreResult<T> {
    s.parse().map_err(|_| StoreError::Corrupt(what))
}

pub(crate) fn parse_opt<T: FromStr>(what: &'static str, s: Option<&str>) -> StoreResult<Option<T>> {
    s.map(|s| parse(what, s)).transpose()
}

/// A tenant's two-factor policy: the toggle and the methods allowed per role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TwoFactorPolicy {
    /// Whether every sign-in needs a second factor.
    pub enabled: bool,
    /// Methods allowed to admins.
    pub admin: MethodSet,
    /// Methods allowed to supervisors.
    pub supervisor: MethodSet,
    /// Methods allowed to agents.
    pub agent: MethodSet,
}

impl Default for TwoFactorPolicy {
    /// Disabled, both methods allowed to every role (DESIGN.md section 1).
    fn default() -> Self {
        Self { enabled: false, admin: MethodSet::BOTH, supervisor: MethodSet::BOTH, agent: MethodSet::BOTH }
    }
}

impl TwoFactorPolicy {
    /// The methods allowed to `role`.
    pub fn methods_for(&self, role: Role) -> MethodSet {
        match role {
            Role::Admin => self.admin,
            Role::Supervisor => self.supervisor,
            Role::Agent => self.agent,
        }
    }
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Id.
    pub id: TenantId,
    /// The slug users type at sign-in (unique).
    pub slug: String,
    /// Display name (the TOTP issuer).
    pub name: String,
    /// The 2FA policy.
    pub policy: TwoFactorPolicy,
    /// The version-2 settings (DESIGN.md 5.8).
    pub settings: TenantSettings,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// A user of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Id.
    pub id: UserId,
    /// The tenant.
    pub tenant_id: TenantId,
    /// Email address, trimmed and lower-cased (unique per tenant).
    pub email: String,
    /// Display name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// argon2id PHC string.
    pub password_hash: String,
    /// The method the user last verified with.
    pub preferred: Option<Method>,
    /// Wrong-code counter and block.
    pub lockout: OtpLockout,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// The first time the user was asked to enroll (the start of his grace period, DESIGN.md 5.5).
    pub enroll_asked_at: Option<DateTime<Utc>>,
    /// Whether `preferred` is the user's own choice (then verifications do not change it).
    pub preferred_chosen: bool,
}

/// An enrolled second-factor method of a user.
#[derive(Clone, PartialEq, Eq)]
pub struct Enrollment {
    /// The user.
    pub user_id: UserId,
    /// The method.
    pub method: Method,
    /// The sealed TOTP secret (authenticator only).
    pub secret_sealed: Option<Vec<u8>>,
    /// The last accepted TOTP time step (replay protection; authenticator only).
    pub last_step: Option<i64>,
    /// Enrollment time.
    pub created_at: DateTime<Utc>,
    /// When the method last verified a sign-in or step-up.
    pub last_used_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrollment")
            .field("user_id", &self.user_id)
            .field("method", &self.method)
            .field("last_step", &self.last_step)
            .finish_non_exhaustive()
    }
}

/// A session (its token is stored only as a keyed hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Id.
    pub id: SessionId,
    /// The tenant.
    pub tenant_id: TenantId,
    /// The user.
    pub user_id: UserId,
    /// Issue time.
    pub created_at: DateTime<Utc>,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
    /// When the second factor was last verified on this session (step-up), if ever.
    pub second_factor_at: Option<DateTime<Utc>>,
}

/// What a challenge is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengePurpose {
    /// The second step of a sign-in (`challenge_token`).
    SignIn,
    /// An admin turning 2FA on (`setup_token`), bound to the admin's session.
    Enable,
    /// A signed-in user adding or replacing a method (`setup_token`), bound to the session
    /// (DESIGN.md 5.3).
    Setup,
    /// A signed-in user's step-up by email or passkey, bound to the session (DESIGN.md 5.3).
    StepUp,
}

impl ChallengePurpose {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengePurpose::SignIn => "sign_in",
            ChallengePurpose::Enable => "enable",
            ChallengePurpose::Setup => "setup",
            ChallengePurpose::StepUp => "step_up",
        }
    }
}

impl FromStr for ChallengePurpose {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "sign_in" => Ok(Self::SignIn),
            "enable" => Ok(Self::Enable),
            "setup" => Ok(Self::Setup),
            "step_up" => Ok(Self::StepUp),
            _ => Err(()),
        }
    }
}

/// What the user must do next on a sign-in challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextAction {
    /// Set up a method (no usable method enrolled).
    Enroll,
    /// Enter a code of an enrolled method.
    Verify,
}

impl NextAction {
    /// The wire name (`enroll`, `verify`).
    pub fn as_str(self) -> &'static str {
        match self {
            NextAction::Enroll => "enroll",
            NextAction::Verify => "verify",
        }
    }
}

impl FromStr for NextAction {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "enroll" => Ok(Self::Enroll),
            "verify" => Ok(Self::Verify),
            _ => Err(()),
        }
    }
}

/// A challenge (its token is stored only as a keyed hash).
#[derive(Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Id.
    pub id: ChallengeId,
    /// The tenant.
    pub tenant_id: TenantId,
    /// The user.
    pub user_id: UserId,
    /// Sign-in or enablement.
    pub purpose: ChallengePurpose,
    /// Enroll or verify.
    pub next: NextAction,
    /// The methods the challenge offers.
    pub methods: MethodSet,
    /// The admin session an enablement is bound to.
    pub session_id: Option<SessionId>,
    /// A sealed TOTP secret being set up (not yet confirmed).
    pub pending_secret: Option<Vec<u8>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
    /// When it was used up or voided.
    pub ended_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for Challenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenge")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("purpose", &self.purpose)
            .field("next", &self.next)
            .field("methods", &self.methods)
            .field("expires_at", &self.expires_at)
            .field("ended_at", &self.ended_at)
            .finish_non_exhaustive()
    }
}

impl Challenge {
    /// Whether the challenge can still be used at `now`.
    pub fn is_open(&self, now: DateTime<Utc>) -> bool {
        self.ended_at.is_none() && self.expires_at > now
    }
}

/// An emailed code (stored only as a keyed hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailCode {
    /// Id (part of the keyed hash).
    pub id: EmailCodeId,
    /// The user.
    pub user_id: UserId,
    /// The challenge it was sent for.
    pub challenge_id: ChallengeId,
    /// HMAC-SHA256 of `(id, code)`.
    pub code_hash: Vec<u8>,
    /// Send time.
    pub created_at: DateTime<Utc>,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
    /// When it was accepted.
    pub used_at: Option<DateTime<Utc>>,
    /// When a newer code (or a reset) voided it.
    pub voided_at: Option<DateTime<Utc>>,
}

/// An admin reset link (its token stored only as a keyed hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetToken {
    /// Id.
    pub id: ResetTokenId,
    /// The tenant.
    pub tenant_id: TenantId,
    /// The admin it is bound to.
    pub user_id: UserId,
    /// Send time.
    pub created_at: DateTime<Utc>,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
    /// When it was used.
    pub used_at: Option<DateTime<Utc>>,
    /// When a newer link (or an email change) voided it.
    pub voided_at: Option<DateTime<Utc>>,
}

/// State of a recovery request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecoveryStatus {
    /// Waiting for an admin.
    Pending,
    /// Approved: the user's 2FA was reset.
    Approved,
    /// Dismissed by an admin.
    Dismissed,
}

impl RecoveryStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryStatus::Pending => "pending",
            RecoveryStatus::Approved => "approved",
            RecoveryStatus::Dismissed => "dismissed",
        }
    }
}

impl FromStr for RecoveryStatus {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "pending" => Ok(Self::Pending),
            "approved" => Ok(Self::Approved),
            "dismissed" => Ok(Self::Dismissed),
            _ => Err(()),
        }
    }
}

/// A recovery request of an agent or supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryRequest {
    /// Id.
    pub id: RecoveryRequestId,
    /// The tenant.
    pub tenant_id: TenantId,
    /// The requesting user.
    pub user_id: UserId,
    /// State.
    pub status: RecoveryStatus,
    /// Client IP of the request.
    pub ip: Option<String>,
    /// User agent of the request.
    pub user_agent: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Decision time.
    pub decided_at: Option<DateTime<Utc>>,
    /// The deciding admin.
    pub decided_by: Option<UserId>,
}

/// An audit event.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// Id (time-ordered).
    pub id: AuditEventId,
    /// The tenant.
    pub tenant_id: TenantId,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// Who acted: a user id, `operator`, or none (the system).
    pub actor_id: Option<String>,
    /// The user acted upon.
    pub subject_id: Option<String>,
    /// What happened.
    pub kind: AuditKind,
    /// Client IP.
    pub ip: Option<String>,
    /// Client user agent.
    pub user_agent: Option<String>,
    /// Kind-specific details (never a code, token or password).
    pub detail: serde_json::Value,
}

impl AuditEvent {
    /// The event as the audit API shows it (`{id, at, actor_id, subject_id, kind, ip,
    /// user_agent, detail}`, DESIGN.md section 3): also the `data` of a webhook delivery
    /// (DESIGN.md 5.6).
    pub fn api_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id.to_string(),
            "at": self.at,
            "actor_id": self.actor_id,
            "subject_id": self.subject_id,
            "kind": self.kind.as_str(),
            "ip": self.ip,
            "user_agent": self.user_agent,
            "detail": self.detail,
        })
    }
}

/// A user's set of recovery codes, as far as it can be shown (the codes are stored only as
/// keyed hashes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryCodeSet {
    /// Codes not used yet.
    pub remaining: u32,
    /// When the set was generated.
    pub created_at: DateTime<Utc>,
}

/// A trusted device (its token is stored only as a keyed hash, DESIGN.md 5.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedDevice {
    /// Id.
    pub id: latchkey_core::TrustedDeviceId,
    /// The tenant.
    pub tenant_id: TenantId,
    /// The user.
    pub user_id: UserId,
    /// When it was remembered.
    pub created_at: DateTime<Utc>,
    /// When it last signed the user in.
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it stops being honoured.
    pub expires_at: DateTime<Utc>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// The user agent that asked to remember it.
    pub user_agent: Option<String>,
    /// The client IP that asked to remember it.
    pub ip: Option<String>,
}

impl TrustedDevice {
    /// Whether the device is honoured at `now`: not revoked, not expired.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at > now
    }
}

/// A WebAuthn credential of a user (DESIGN.md 5.1): a passkey or security key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebauthnCredential {
    /// The tenant (whose relying party it was registered with).
    pub tenant_id: TenantId,
    /// The credential id, base64url without padding (unique within the tenant).
    pub credential_id: String,
    /// The user.
    pub user_id: UserId,
    /// The user's name for it (default `Passkey N`).
    pub name: String,
    /// webauthn-rs's record of the credential as JSON (public key, flags, policy; no secret).
    pub credential: String,
    /// The last signature counter accepted.
    pub sign_count: i64,
    /// The transports the authenticator reported (`usb`, `internal`, `hybrid`, …).
    pub transports: Vec<String>,
    /// The backup-eligible (BE) flag at registration: a synced passkey.
    pub backup_eligible: bool,
    /// Registration time.
    pub created_at: DateTime<Utc>,
    /// When it last verified a sign-in or step-up.
    pub last_used_at: Option<DateTime<Utc>>,
}
