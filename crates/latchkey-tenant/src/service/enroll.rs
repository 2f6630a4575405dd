//! Enrollment at sign-in, on an `enroll` challenge: the authenticator's setup and its
//! confirmation with a first code (DESIGN.md section 3, "Sign-in").

use latchkey_core::totp::TotpSecret;
use latchkey_core::{AuditKind, Method, Role, trust};
use latchkey_store::model::{ChallengePurpose, NextAction};
use latchkey_store::repo::locks::{self, TenantLock};
use latchkey_store::repo::{challenges, users};
use serde_json::json;
use zeroize::Zeroizing;

use super::challenge::Located;
use super::factor::{Checked, Proof, TotpSetup, pending_aad, totp_setup};
use super::signin::IssuedSession;
use super::{RequestCtx, Service};
use crate::error::{Error, Result};

impl Service {
    /// `POST /api/v1/auth/2fa/authenticator/setup`: a new secret for an enrollment challenge
    /// (calling again replaces the pending secret).
    ///
    /// Errors: `InvalidChallenge`, `AlreadyEnrolled` (not an enrollment), `MethodNotAllowed`.
    pub async fn authenticator_setup(&self, ctx: &RequestCtx, challenge_token: &str) -> Result<TotpSetup> {
        let loc = self.locate(challenge_token, ChallengePurpose::SignIn, ctx.now, || Error::InvalidChallenge).await?;
        self.require_enrollment_of(&loc, Method::Authenticator)?;
        let secret = TotpSecret::generate();
        let sealed = self.keys.seal(secret.as_bytes(), &pending_aad(&loc.challenge));
        let id = loc.challenge.id;
        self.store.run(move |c| challenges::set_pending_secret(c, id, &sealed)).await?;
        totp_setup(&secret, &loc.tenant, &loc.user)
    }

    pub(super) fn require_enrollment_of(&self, loc: &Located, method: Method) -> Result<()> {
        if loc.challenge.next != NextAction::Enroll {
            return Err(Error::AlreadyEnrolled);
        }
        let allowed = loc.challenge.methods.intersect(loc.tenant.policy.methods_for(loc.user.role));
        if !allowed.contains(method) {
            return Err(if loc.challenge.methods.contains(method) {
                Error::MethodNotAllowed
            } else {
                Error::AlreadyEnrolled
            });
        }
        Ok(())
    }

    /// `POST /api/v1/auth/2fa/authenticator/confirm`: a code from the app enrolls the pending
    /// secret (its time step is used up), ends the challenge and the user's other challenges
    /// and codes; the user signs in again (`next: "login"`).
    ///
    /// Errors: `InvalidChallenge`, `AlreadyEnrolled`, `MethodNotAllowed`, `SetupRequired`,
    /// `InvalidCode`, `OtpBlocked`.
    pub async fn authenticator_confirm(&self, ctx: &RequestCtx, challenge_token: &str, code: &str) -> Result<()> {
        let loc = self.locate(challenge_token, ChallengePurpose::SignIn, ctx.now, || Error::InvalidChallenge).await?;
        self.require_enrollment_of(&loc, Method::Authenticator)?;
        let svc = self.clone();
        let ctx = ctx.clone();
        let code = Zeroizing::new(code.to_owned());
        self.store
            .write(move |c| {
                let now = ctx.now;
                let Some((user, ch)) = Service::reread(c, &loc, now)? else {
                    return Ok(Err(Error::InvalidChallenge));
                };
                if let Some(e) = svc.blocked(&user, Method::Authenticator.as_str(), now) {
                    return Ok(Err(e));
                }
                if ch.pending_secret.is_none() {
                    return Ok(Err(Error::SetupRequired));
                }
                match svc.check_proof(c, Some(&ch), &user, Method::Authenticator, &Proof::Code(&code), now)? {
                    Checked::Accepted { enroll: Some(enrollment), .. } => {
                        // The challenge is used up with the user's others.
                        svc.enroll_accepted(c, &ctx, &user, None, Some(enrollment))?;
                        users::set_lockout(c, user.id, Default::default())?;
                        svc.metrics.otp_verifications.with_label_values(&["authenticator", "success"]).inc();
                        Ok(Ok(()))
                    }
                    Checked::Replayed => Ok(Err(svc.on_replay(&user, Method::Authenticator.as_str(), now))),
                    Checked::Wrong { expired } => {
                        Ok(Err(svc.on_failure(c, &ctx, &user, Method::Authenticator.as_str(), expired)?))
                    }
                    Checked::CounterRegressed { .. } => {
                        Ok(Err(svc.on_failure(c, &ctx, &user, Method::Authenticator.as_str(), false)?))
                    }
                    Checked::Accepted { enroll: None, .. } | Checked::NotEnrolled => Ok(Err(Error::SetupRequired)),
                }
            })
            .await?
    }
}

impl Service {
    /// `POST /api/v1/auth/2fa/skip`: in a grace period (DESIGN.md 5.5), a supervisor or agent
    /// on an `enroll` challenge signs in without a second factor until `enroll_by` (the first
    /// time he was asked to enroll plus `enrollment_grace_days`); the session never satisfies
    /// step-up. Audited `enrollment_skipped`.
    ///
    /// Errors: `InvalidChallenge`, `EnrollmentRequired` (no grace period, past it, an admin,
    /// or not an enrollment).
    pub async fn skip_enrollment(&self, ctx: &RequestCtx, challenge_token: &str) -> Result<IssuedSession> {
        let loc = self.locate(challenge_token, ChallengePurpose::SignIn, ctx.now, || Error::InvalidChallenge).await?;
        if loc.challenge.next != NextAction::Enroll || loc.user.role == Role::Admin {
            return Err(Error::EnrollmentRequired);
        }
        let svc = self.clone();
        let ctx = ctx.clone();
        self.store
            .write(move |c| {
                let now = ctx.now;
                let Some((tenant, user)) = locks::tenant_then_user(c, loc.tenant.id, TenantLock::Share, loc.user.id)?
                else {
                    return Ok(Err(Error::InvalidChallenge));
                };
                let grace = if user.role == Role::Admin { 0 } else { tenant.settings.enrollment_grace_days };
                let enroll_by = user.enroll_asked_at.and_then(|asked| trust::enroll_by(asked, grace));
                if !tenant.policy.enabled || !trust::may_skip(enroll_by, now) {
                    return Ok(Err(Error::EnrollmentRequired));
                }
                // Refusals above change nothing; the challenge is used up only by a skip.
                if !challenges::end(c, loc.challenge.id, now)? {
                    return Ok(Err(Error::InvalidChallenge));
                }
                let (token, session) = svc.issue_session(c, &user, false, now)?;
                let who = Some(user.id.to_string());
                Service::audit_all(
                    c,
                    &ctx,
                    user.tenant_id,
                    who,
                    Some(user.id),
                    [
                        (AuditKind::EnrollmentSkipped, json!({"enroll_by": enroll_by})),
                        (AuditKind::SignedIn, json!({"second_factor": false, "enrollment_skipped": true})),
                    ],
                )?;
                let view = svc.user_view(c, &user)?;
                Ok(Ok(IssuedSession::new(token, session.expires_at, view)))
            })
            .await?
    }
}
