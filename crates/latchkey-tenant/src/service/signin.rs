//! Sign-in with a password, and sign-out.

use chrono::{DateTime, Utc};
use latchkey_core::{AuditKind, Method, SecretToken};
use latchkey_store::model::{ChallengePurpose, NextAction};
use latchkey_store::repo::locks::{self, TenantLock};
use latchkey_store::repo::{enrollments, sessions, signin as signin_repo, users};
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
    /// Errors: `InvalidCredentials` (the same for unknown tenant, unknown email and wrong
    /// password), `RateLimited` past the attempt limit even with the right password.
    pub async fn sign_in(&self, ctx: &RequestCtx, tenant_slug: &str, email: &str, password: &str) -> Result<SignIn> {
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
                    return Ok(Ok(SignIn::Session(IssuedSession {
                        token,
                        expires_at: session.expires_at,
                        user: view,
                    })));
                }
                let allowed = policy.methods_for(user.role);
                let usable = enrolled.intersect(allowed);
                let (next, methods) =
                    if usable.is_empty() { (NextAction::Enroll, allowed) } else { (NextAction::Verify, usable) };
                let (token, challenge) =
                    svc.open_challenge(c, &user, ChallengePurpose::SignIn, next, methods, None, ctx.now)?;
                Ok(Ok(SignIn::Challenge {
                    user: view,
                    challenge: ChallengeView {
                        token,
                        expires_at: challenge.expires_at,
                        next,
                        methods: methods.to_vec(),
                        email_masked: latchkey_core::email::mask(&user.email),
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
