//! Sign-in with a password, and sign-out.

use chrono::{DateTime, Utc};
use latchkey_core::crypto::TokenPurpose;
use latchkey_core::{AuditKind, Method, MethodSet, Role, SecretToken, trust};
use latchkey_store::model::{ChallengePurpose, NextAction};
use latchkey_store::repo::locks::{self, TenantLock};
use latchkey_store::repo::{enrollments, recovery_codes, sessions, signin as signin_repo, trusted_devices, users};
use serde_json::json;

use super::{Auth, RequestCtx, Service, UserView};
use crate::error::{Error, Result};

/// A session handed to the client.
#[derive(Debug, Clone)]
pub struct IssuedSession {
    /// The bearer token (`authentication_token`), shown once.
    pub token: SecretToken,
    /// Its expiry.
    pub expires_at: DateTime<Utc>,
    /// The signed-in user.
    pub user: UserView,
    /// A trusted device remembered with this sign-in (`remember_device`, DESIGN.md 5.4).
    pub device: Option<IssuedDevice>,
    /// Whether a trusted device stood in for the second factor.
    pub trusted_device: bool,
}

impl IssuedSession {
    /// A session of `user` (no device involved).
    pub fn new(token: SecretToken, expires_at: DateTime<Utc>, user: UserView) -> Self {
        Self { token, expires_at, user, device: None, trusted_device: false }
    }
}

/// A trusted device handed to the client.
#[derive(Debug, Clone)]
pub struct IssuedDevice {
    /// The `device_token`, shown once.
    pub token: SecretToken,
    /// When it stops being honoured.
    pub expires_at: DateTime<Utc>,
}

/// A challenge handed to the client.
#[derive(Debug, Clone)]
pub struct ChallengeView {
    /// The `challenge_token`, shown once.
    pub token: SecretToken,
    /// Its expiry.
    pub expires_at: DateTime<Utc>,
    /// Enroll a method, or verify with one.
    pub next: NextAction,
    /// The methods on offer.
    pub methods: Vec<Method>,
    /// The user's address, masked.
    pub email_masked: String,
    /// Whether a recovery code may be used (the role allows them and the user has unused
    /// ones; DESIGN.md 5.2).
    pub recovery_code: bool,
    /// Whether the enrollment may be skipped now (grace period, DESIGN.md 5.5).
    pub skippable: bool,
    /// The end of the grace period, on `enroll` challenges of a tenant with one.
    pub enroll_by: Option<DateTime<Utc>>,
}

/// The methods of `set`, the user's preferred one first (DESIGN.md 5.3).
pub(super) fn preferred_first(set: MethodSet, preferred: Option<Method>) -> Vec<Method> {
    let mut list = set.to_vec();
    if let Some(p) = preferred.filter(|p| set.contains(*p)) {
        list.retain(|m| *m != p);
        list.insert(0, p);
    }
    list
}

/// The outcome of a correct password.
#[derive(Debug, Clone)]
pub enum SignIn {
    /// 2FA is off: signed in.
    Session(IssuedSession),
    /// 2FA is on: a second factor is needed.
    Challenge {
        /// The user.
        user: UserView,
        /// What to do next.
        challenge: ChallengeView,
    },
}

impl Service {
    /// `POST /api/v1/auth`: checks the password (argon2id on the blocking pool; the dummy
    /// hash for an unknown tenant or address), then either issues a session (2FA off) or opens
    /// a challenge: `verify` with the enrolled methods the role allows, else `enroll` with the
    /// allowed ones. Password attempts count per user, per unknown address of a tenant, or
    /// per unknown tenant and address, all in the store.
    ///
    /// The decision is atomic (DESIGN.md "Atomic sign-in"): after the password check, one
    /// transaction locks the tenant (`FOR SHARE`) and then the user (`FOR UPDATE`), re-reads
    /// both, and decides on what it read there — 2FA on or off, the role, and that the
    /// password hash and the address are still the ones checked — never on the actor's
    /// cached policy. So a session without a second factor is never created after 2FA was
    /// turned on, or after a password or email change, that committed first; and a user
    /// deleted meanwhile answers `invalid_credentials`.
    ///
    /// While 2FA is on, a `device_token` of this user that is unexpired, unrevoked and of a
    /// role that still remembers devices, while the user is not blocked, stands in for the
    /// second factor (DESIGN.md 5.4): a session at once, audited `signed_in` with the device.
    /// Any other device token is ignored.
    ///
    /// Errors: `InvalidCredentials` (the same for unknown tenant, unknown email and wrong
    /// password), `RateLimited` past the attempt limit even with the right password.
    pub async fn sign_in(
        &self,
        ctx: &RequestCtx,
        tenant_slug: &str,
        email: &str,
        password: &str,
        device_token: Option<&str>,
    ) -> Result<SignIn> {
        let email = latchkey_core::email::normalize(email);
        let Some(tenant) = self.registry.enter_slug(tenant_slug).await? else {
            let key = self.unknown_tenant_attempts_key(tenant_slug, &email);
            self.reserve_password_attempt(None, key, ctx.now).await?;
            self.check_password(password, None).await?;
            return Err(Error::InvalidCredentials);
        };
        let tenant_id = tenant.id;
        tracing::Span::current().record("tenant", tracing::field::display(tenant_id));
        let lookup = email.clone();
        let user = self.store.run(move |c| users::by_email(c, tenant_id, &lookup)).await?;
        let key = match &user {
            Some(u) => self.user_attempts_key(tenant_id, u.id),
            None => self.address_attempts_key(tenant_id, &email),
        };
        self.reserve_password_attempt(Some(tenant_id), key.clone(), ctx.now).await?;
        let ok = self.check_password(password, user.as_ref().map(|u| u.password_hash.clone())).await?;
        let Some(checked) = user.filter(|_| ok) else {
            return Err(Error::InvalidCredentials);
        };
        tracing::Span::current().record("user", tracing::field::display(checked.id));

        let svc = self.clone();
        let ctx = ctx.clone();
        let device_hashes = device_token.map(|t| self.keys.token_hashes(TokenPurpose::Device, t)).unwrap_or_default();
        self.store
            .write(move |c| {
                let Some((tenant, user)) = locks::tenant_then_user(c, tenant_id, TenantLock::Share, checked.id)? else {
                    return Ok(Err(Error::InvalidCredentials));
                };
                if user.password_hash != checked.password_hash || user.email != checked.email {
                    // A password or email change committed after the check: the password
                    // checked is not the user's any more.
                    return Ok(Err(Error::InvalidCredentials));
                }
                signin_repo::clear(c, &key)?;
                let enrolled = enrollments::methods_of(c, user.id)?;
                let view = UserView::new(&user, enrolled);
                let policy = tenant.policy;
                if !policy.enabled {
                    let (token, session) = svc.issue_session(c, &user, false, ctx.now)?;
                    Service::audit(
                        c,
                        &ctx,
                        tenant_id,
                        Some(user.id.to_string()),
                        Some(user.id),
                        AuditKind::SignedIn,
                        json!({"second_factor": false}),
                    )?;
                    return Ok(Ok(SignIn::Session(IssuedSession::new(token, session.expires_at, view))));
                }
                let days = tenant.settings.remember_device_days.get(user.role);
                let mut device = None;
                if days > 0 {
                    for hash in &device_hashes {
                        device = trusted_devices::by_token_hash(c, user.id, hash)?;
                        if device.is_some() {
                            break;
                        }
                    }
                }
                if let Some(device) = device
                    && trust::device_honoured(
                        device.expires_at,
                        device.revoked_at.is_some(),
                        user.lockout.blocked_until,
                        ctx.now,
                    )
                {
                    trusted_devices::mark_used(c, device.id, ctx.now)?;
                    let (token, session) = svc.issue_session(c, &user, false, ctx.now)?;
                    let who = Some(user.id.to_string());
                    let detail = json!({"trusted_device": device.id});
                    Service::audit(c, &ctx, tenant_id, who, Some(user.id), AuditKind::SignedIn, detail)?;
                    let mut issued = IssuedSession::new(token, session.expires_at, view);
                    issued.trusted_device = true;
                    return Ok(Ok(SignIn::Session(issued)));
                }
                let allowed = policy.methods_for(user.role);
                let usable = enrolled.intersect(allowed);
                let (next, methods) =
                    if usable.is_empty() { (NextAction::Enroll, allowed) } else { (NextAction::Verify, usable) };
                let (token, challenge) =
                    svc.open_challenge(c, &user, ChallengePurpose::SignIn, next, methods, None, ctx.now)?;
                let recovery_code = next == NextAction::Verify
                    && tenant.settings.recovery_codes.get(user.role)
                    && recovery_codes::has_unused(c, user.id)?;
                let enroll_by = match next {
                    NextAction::Enroll => {
                        let asked = users::mark_enroll_asked(c, user.id, ctx.now)?.unwrap_or(ctx.now);
                        let grace = if user.role == Role::Admin { 0 } else { tenant.settings.enrollment_grace_days };
                        trust::enroll_by(asked, grace)
                    }
                    NextAction::Verify => None,
                };
                Ok(Ok(SignIn::Challenge {
                    user: view,
                    challenge: ChallengeView {
                        token,
                        expires_at: challenge.expires_at,
                        next,
                        methods: preferred_first(methods, user.preferred),
                        email_masked: latchkey_core::email::mask(&user.email),
                        recovery_code,
                        skippable: trust::may_skip(enroll_by, ctx.now),
                        enroll_by,
                    },
                }))
            })
            .await?
    }

    /// `POST /api/v1/auth/logout`: ends the session.
    pub async fn logout(&self, auth: &Auth) -> Result<()> {
        let id = auth.session.id;
        self.store.run(move |c| sessions::delete(c, id)).await?;
        Ok(())
    }
}
