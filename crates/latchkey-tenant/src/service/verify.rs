//! Verification at sign-in: a code (or, later, another proof) of one of the challenge's
//! methods completes the sign-in with a session whose second factor is verified now.

use latchkey_core::Method;
use latchkey_core::otp::OtpLockout;
use latchkey_store::Backend;
use latchkey_store::model::{ChallengePurpose, NextAction};
use latchkey_store::repo::{audit, challenges, users};
use zeroize::Zeroizing;

use super::challenge::verified_sign_in_events;
use super::factor::{Checked, Proof};
use super::signin::IssuedSession;
use super::{RequestCtx, Service, UserView};
use crate::error::{Error, Result};

impl Service {
    /// `POST /api/v1/auth/2fa/verify`: checks a code of `method` on a sign-in challenge.
    /// Success resets the wrong-code counter, ends the challenge and issues a session whose
    /// second factor is verified now; the first email success also enrolls email.
    ///
    /// Errors: `InvalidChallenge`, `MethodNotAllowed`, `OtpBlocked`, `InvalidCode`
    /// (including replays, not counted), `CodeExpired`.
    pub async fn verify(
        &self,
        ctx: &RequestCtx,
        challenge_token: &str,
        method: Method,
        code: &str,
    ) -> Result<IssuedSession> {
        let loc = self.locate(challenge_token, ChallengePurpose::SignIn, ctx.now, || Error::InvalidChallenge).await?;
        let allowed = loc.challenge.methods.intersect(loc.tenant.policy.methods_for(loc.user.role));
        if !allowed.contains(method) || (method == Method::Authenticator && loc.challenge.next == NextAction::Enroll) {
            return Err(Error::MethodNotAllowed);
        }
        if method == Method::Authenticator
            && self.store.backend() == Backend::Postgres
            && loc.challenge.pending_secret.is_none()
            && loc.user.lockout.blocked(ctx.now).is_none()
            && let Some(issued) = self.verify_totp_at_once(ctx, &loc, code).await?
        {
            return Ok(issued);
        }
        let svc = self.clone();
        let ctx = ctx.clone();
        let code = Zeroizing::new(code.to_owned());
        self.store
            .write(move |c| {
                let now = ctx.now;
                let Some((user, ch)) = Service::reread(c, &loc, now)? else {
                    return Ok(Err(Error::InvalidChallenge));
                };
                if let Some(e) = svc.blocked(&user, method, now) {
                    return Ok(Err(e));
                }
                let known_enrolled = match svc.check_proof(c, &ch, &user, method, &Proof::Code(&code), now)? {
                    Checked::Accepted { enroll, enrolled } => {
                        Service::enroll_accepted(c, &ctx, &user, Some(ch.id), enroll)?;
                        enrolled
                    }
                    Checked::Replayed => return Ok(Err(svc.on_replay(&user, method, now))),
                    Checked::Wrong { expired } => {
                        return Ok(Err(svc.on_failure(c, &ctx, &user, method, expired)?));
                    }
                    Checked::NotEnrolled => return Ok(Err(Error::MethodNotAllowed)),
                };
                if user.lockout != OtpLockout::default() || user.preferred != Some(method) {
                    users::set_verified(c, user.id, method)?;
                }
                challenges::end(c, ch.id, now)?;
                let (token, session) = svc.issue_session(c, &user, true, now)?;
                svc.metrics.otp_verifications.with_label_values(&[method.as_str(), "success"]).inc();
                audit::insert_all(c, &verified_sign_in_events(&ctx, &user, method))?;
                let mut user = user;
                user.preferred = Some(method);
                let view = match known_enrolled {
                    Some(enrolled) => UserView::new(&user, enrolled),
                    None => svc.user_view(c, &user)?,
                };
                Ok(Ok(IssuedSession { token, expires_at: session.expires_at, user: view }))
            })
            .await?
    }
}
