//! Enrollment at sign-in, on an `enroll` challenge: the authenticator's setup and its
//! confirmation with a first code (DESIGN.md section 3, "Sign-in").

use latchkey_core::Method;
use latchkey_core::totp::TotpSecret;
use latchkey_store::model::{ChallengePurpose, NextAction};
use latchkey_store::repo::{challenges, users};
use zeroize::Zeroizing;

use super::challenge::Located;
use super::factor::{Checked, Proof, TotpSetup, pending_aad, totp_setup};
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

    fn require_enrollment_of(&self, loc: &Located, method: Method) -> Result<()> {
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
                if let Some(e) = svc.blocked(&user, Method::Authenticator, now) {
                    return Ok(Err(e));
                }
                if ch.pending_secret.is_none() {
                    return Ok(Err(Error::SetupRequired));
                }
                match svc.check_proof(c, &ch, &user, Method::Authenticator, &Proof::Code(&code), now)? {
                    Checked::Accepted { enroll: Some(enrollment), .. } => {
                        // The challenge is used up with the user's others.
                        Service::enroll_accepted(c, &ctx, &user, None, Some(enrollment))?;
                        users::set_lockout(c, user.id, Default::default())?;
                        svc.metrics.otp_verifications.with_label_values(&["authenticator", "success"]).inc();
                        Ok(Ok(()))
                    }
                    Checked::Replayed => Ok(Err(svc.on_replay(&user, Method::Authenticator, now))),
                    Checked::Wrong { expired } => {
                        Ok(Err(svc.on_failure(c, &ctx, &user, Method::Authenticator, expired)?))
                    }
                    Checked::Accepted { enroll: None, .. } | Checked::NotEnrolled => Ok(Err(Error::SetupRequired)),
                }
            })
            .await?
    }
}
