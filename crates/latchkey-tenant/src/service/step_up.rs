//! Step-up (DESIGN.md 5.3): a signed-in user verifies a second factor again, so that his
//! session may make sensitive changes for `LATCHKEY_STEP_UP_SECS` without signing in again.
//! Wrong codes count toward the user's block; recovery codes do not step up.

use chrono::{DateTime, Utc};
use latchkey_core::{AuditKind, Method, MethodSet};
use latchkey_store::model::{ChallengePurpose, NextAction};
use latchkey_store::repo::{challenges, enrollments, sessions, users};
use serde_json::json;
use zeroize::Zeroizing;

use super::challenge::Located;
use super::email_code::EmailSent;
use super::factor::{Checked, Proof};
use super::{Auth, RequestCtx, Service};
use crate::error::{Error, Result};

impl Service {
    /// `MethodNotAllowed` unless `method` is enrolled by the user and allowed for his role.
    async fn require_enrolled_method(&self, auth: &Auth, method: Method) -> Result<()> {
        let user = auth.user.id;
        let enrolled = self.store.run(move |c| enrollments::methods_of(c, user)).await?;
        let usable = enrolled.intersect(auth.tenant.policy.methods_for(auth.user.role));
        if usable.contains(method) { Ok(()) } else { Err(Error::MethodNotAllowed) }
    }

    /// `POST /api/v1/me/step-up/email`: emails the user a code for a step-up of this session,
    /// under the send rules of every code (cooldown, window, block; one budget with sign-in
    /// codes and reset links). The code belongs to a step-up challenge bound to the session.
    ///
    /// Errors: `MethodNotAllowed` (email not enrolled or not allowed), `OtpBlocked`,
    /// `ResendTooSoon`, `SendLimitReached`, `QueueUnavailable`.
    pub async fn step_up_email(&self, ctx: &RequestCtx, auth: &Auth) -> Result<EmailSent> {
        self.require_enrolled_method(auth, Method::Email).await?;
        let svc = self.clone();
        let user = auth.user.clone();
        let session = auth.session.id;
        let now = ctx.now;
        let challenge = self
            .store
            .write(move |c| {
                users::lock(c, user.id)?;
                if let Some(open) = challenges::open_for_session(c, user.id, session, ChallengePurpose::StepUp, now)? {
                    return Ok(open);
                }
                let methods = MethodSet::EMPTY.with(Method::Email);
                let (_, ch) = svc.open_challenge(
                    c,
                    &user,
                    ChallengePurpose::StepUp,
                    NextAction::Verify,
                    methods,
                    Some(session),
                    now,
                )?;
                Ok(ch)
            })
            .await?;
        let loc = Located { challenge, tenant: auth.tenant.clone(), user: auth.user.clone() };
        self.send_email_code(ctx, loc, || Error::InvalidChallenge).await
    }

    /// `POST /api/v1/me/step-up`: a code of an enrolled method (the authenticator's, or the
    /// last one emailed for this session's step-up) marks the session's second factor verified
    /// now; audited `step_up`. A refused code counts as a wrong code, a replayed TOTP step is
    /// refused without counting, a block answers 423.
    ///
    /// Errors: `MethodNotAllowed`, `OtpBlocked`, `InvalidCode`, `CodeExpired`.
    pub async fn step_up(&self, ctx: &RequestCtx, auth: &Auth, method: Method, code: &str) -> Result<DateTime<Utc>> {
        self.require_enrolled_method(auth, method).await?;
        let svc = self.clone();
        let ctx = ctx.clone();
        let (tenant, user_id, session) = (auth.tenant.id, auth.user.id, auth.session.id);
        let code = Zeroizing::new(code.to_owned());
        self.store
            .write(move |c| {
                let now = ctx.now;
                let Some(user) = users::lock_and_get(c, tenant, user_id)? else {
                    return Ok(Err(Error::Unauthenticated));
                };
                if let Some(e) = svc.blocked(&user, method.as_str(), now) {
                    return Ok(Err(e));
                }
                let challenge = match method {
                    Method::Email => challenges::open_for_session(c, user.id, session, ChallengePurpose::StepUp, now)?,
                    Method::Authenticator => None,
                };
                match svc.check_proof(c, challenge.as_ref(), &user, method, &Proof::Code(&code), now)? {
                    Checked::Accepted { .. } => {}
                    Checked::Replayed => return Ok(Err(svc.on_replay(&user, method.as_str(), now))),
                    Checked::Wrong { expired } => {
                        return Ok(Err(svc.on_failure(c, &ctx, &user, method.as_str(), expired)?));
                    }
                    Checked::NotEnrolled => return Ok(Err(Error::MethodNotAllowed)),
                }
                if let Some(ch) = &challenge {
                    challenges::end(c, ch.id, now)?;
                }
                if method != Method::Authenticator {
                    enrollments::mark_used(c, user.id, method, now)?;
                }
                users::set_lockout(c, user.id, Default::default())?;
                sessions::mark_second_factor(c, session, now)?;
                svc.metrics.otp_verifications.with_label_values(&[method.as_str(), "success"]).inc();
                let who = Some(user.id.to_string());
                Service::audit(c, &ctx, tenant, who, Some(user.id), AuditKind::StepUp, json!({"method": method}))?;
                Ok(Ok(now))
            })
            .await?
    }
}
