//! Verification at sign-in: a proof of one of the challenge's methods completes the sign-in
//! with a session whose second factor is verified now, and may remember the device.

use latchkey_core::crypto::TokenPurpose;
use latchkey_core::otp::OtpLockout;
use latchkey_core::{AuditKind, Method, MethodSet, SecretToken, TrustedDeviceId, trust};
use latchkey_store::model::{
    AuditEvent, Challenge, ChallengePurpose, Enrollment, NextAction, Tenant, TrustedDevice, User,
};
use latchkey_store::repo::{audit, challenges, enrollments, trusted_devices, users};
use latchkey_store::{Backend, DbConn, StoreResult};
use serde_json::json;
use zeroize::Zeroizing;

use super::challenge::verified_sign_in_events;
use super::factor::{Checked, Presented};
use super::signin::{IssuedDevice, IssuedSession};
use super::{Notice, RequestCtx, Service, UserView};
use crate::error::{Error, Result};

impl Service {
    /// `POST /api/v1/auth/2fa/verify`: checks a code of `method` on a sign-in challenge.
    /// Success resets the wrong-code counter, ends the challenge and issues a session whose
    /// second factor is verified now; the first email success also enrolls email. With
    /// `remember_device`, where the role allows it, a trusted device comes with it.
    ///
    /// Errors: `InvalidChallenge`, `MethodNotAllowed`, `OtpBlocked`, `InvalidCode`
    /// (including replays, not counted), `CodeExpired`.
    pub async fn verify(
        &self,
        ctx: &RequestCtx,
        challenge_token: &str,
        method: Method,
        code: &str,
        remember_device: bool,
    ) -> Result<IssuedSession> {
        let code = Presented::Code(Zeroizing::new(code.to_owned()));
        self.verify_presented(ctx, challenge_token, method, code, remember_device).await
    }

    /// `POST /api/v1/auth/2fa/verify` with `method: "webauthn"`: checks an assertion on the
    /// ceremony `authenticate/start` opened on the challenge (DESIGN.md 5.1). An assertion that
    /// does not verify is a counted wrong code; so is one whose counter did not grow, which is
    /// also audited `webauthn_counter_regressed`. The ceremony is used up by any attempt.
    ///
    /// Errors: `InvalidChallenge`, `MethodNotAllowed`, `OtpBlocked`, `InvalidCode`.
    pub async fn verify_webauthn(
        &self,
        ctx: &RequestCtx,
        challenge_token: &str,
        credential: webauthn_rs_core::proto::PublicKeyCredential,
        remember_device: bool,
    ) -> Result<IssuedSession> {
        let loc = self.locate(challenge_token, ChallengePurpose::SignIn, ctx.now, || Error::InvalidChallenge).await?;
        let verifier = self.registry.enter_with_verifier(loc.tenant.id).await?.verifier;
        let proof = Presented::Assertion(Box::new(credential), verifier);
        self.verify_located(ctx, loc, Method::Webauthn, proof, remember_device, None).await
    }

    async fn verify_presented(
        &self,
        ctx: &RequestCtx,
        challenge_token: &str,
        method: Method,
        proof: Presented,
        remember_device: bool,
    ) -> Result<IssuedSession> {
        // On Postgres a TOTP code may be committed in one statement (`verify_totp_at_once`),
        // which needs the enrollments: read with the challenge, in the same query.
        if method == Method::Authenticator && self.store.backend() == Backend::Postgres {
            let (loc, enrollments) = self
                .locate_with_enrollments(challenge_token, ChallengePurpose::SignIn, ctx.now, || Error::InvalidChallenge)
                .await?;
            return self.verify_located(ctx, loc, method, proof, remember_device, Some(enrollments)).await;
        }
        let loc = self.locate(challenge_token, ChallengePurpose::SignIn, ctx.now, || Error::InvalidChallenge).await?;
        self.verify_located(ctx, loc, method, proof, remember_device, None).await
    }

    async fn verify_located(
        &self,
        ctx: &RequestCtx,
        loc: super::challenge::Located,
        method: Method,
        proof: Presented,
        remember_device: bool,
        enrollments: Option<Vec<Enrollment>>,
    ) -> Result<IssuedSession> {
        let allowed = loc.challenge.methods.intersect(loc.tenant.policy.methods_for(loc.user.role));
        let needs_enrolled = matches!(method, Method::Authenticator | Method::Webauthn);
        if !allowed.contains(method) || (needs_enrolled && loc.challenge.next == NextAction::Enroll) {
            return Err(Error::MethodNotAllowed);
        }
        let code = match &proof {
            Presented::Code(code) => Some(code.as_str()),
            Presented::Assertion(..) => None,
        };
        if method == Method::Authenticator
            && !remember_device
            && self.store.backend() == Backend::Postgres
            && loc.challenge.pending_secret.is_none()
            && loc.user.lockout.blocked(ctx.now).is_none()
            && let Some(code) = code
            && let Some(enrollments) = enrollments
            && let Some(issued) = self.verify_totp_at_once(ctx, &loc, enrollments, code).await?
        {
            return Ok(issued);
        }
        let svc = self.clone();
        let ctx = ctx.clone();
        self.store
            .write(move |c| {
                let now = ctx.now;
                let Some((user, ch)) = Service::reread(c, &loc, now)? else {
                    return Ok(Err(Error::InvalidChallenge));
                };
                if let Some(e) = svc.blocked(&user, method.as_str(), now) {
                    return Ok(Err(e));
                }
                let enrolled = match svc.check_proof(c, Some(&ch), &user, method, &proof.proof(), now)? {
                    Checked::Accepted { enroll, enrolled } => {
                        svc.enroll_accepted(c, &ctx, &user, Some(ch.id), enroll)?;
                        enrolled
                    }
                    Checked::Replayed => return Ok(Err(svc.on_replay(&user, method.as_str(), now))),
                    Checked::Wrong { expired } => {
                        return Ok(Err(svc.on_failure(c, &ctx, &user, method.as_str(), expired)?));
                    }
                    Checked::CounterRegressed { credential_id, counter, stored } => {
                        return Ok(Err(svc.on_counter_regressed(c, &ctx, &user, &credential_id, counter, stored)?));
                    }
                    Checked::NotEnrolled => return Ok(Err(Error::MethodNotAllowed)),
                };
                if method != Method::Authenticator {
                    enrollments::mark_used(c, user.id, method, now)?;
                }
                if user.lockout != OtpLockout::default() || user.preferred != Some(method) {
                    users::set_verified(c, user.id, method)?;
                }
                let events = verified_sign_in_events(&ctx, &user, method);
                let mut user = user;
                if !user.preferred_chosen {
                    user.preferred = Some(method);
                }
                let sign_in = CompletedSignIn {
                    challenge: &ch,
                    tenant: &loc.tenant,
                    enrolled,
                    remember_device,
                    metric: method.as_str(),
                };
                Ok(Ok(svc.complete_sign_in(c, &ctx, &user, &sign_in, &events)?))
            })
            .await?
    }

    /// The writes every completed second step shares: the challenge ends, a session whose
    /// second factor is verified now is issued, the audit events are appended, the success
    /// is counted in the metrics, and a trusted device is remembered when asked for
    /// and allowed. `user` is the user as he is after the verification.
    pub(super) fn complete_sign_in(
        &self,
        conn: &mut DbConn,
        ctx: &RequestCtx,
        user: &User,
        sign_in: &CompletedSignIn<'_>,
        events: &[AuditEvent],
    ) -> StoreResult<IssuedSession> {
        challenges::end(conn, sign_in.challenge.id, ctx.now)?;
        let (token, session) = self.issue_session(conn, user, true, ctx.now)?;
        let hooks = audit::insert_all(conn, events)?;
        ctx.notices.push(hooks, false);
        self.metrics.otp_verifications.with_label_values(&[sign_in.metric, "success"]).inc();
        let view = match sign_in.enrolled {
            Some(enrolled) => UserView::new(user, enrolled),
            None => self.user_view(conn, user)?,
        };
        let mut issued = IssuedSession::new(token, session.expires_at, view);
        if sign_in.remember_device {
            issued.device = self.remember_device(conn, ctx, user, sign_in.tenant)?;
        }
        Ok(issued)
    }

    /// Remembers the requesting device for `user` where his role allows it (DESIGN.md 5.4):
    /// a new `device_token`, stored only as a keyed hash, lasting the role's
    /// `remember_device_days`; audited `trusted_device_created`. `None` where the role allows
    /// none (the flag is then ignored).
    fn remember_device(
        &self,
        conn: &mut DbConn,
        ctx: &RequestCtx,
        user: &User,
        tenant: &Tenant,
    ) -> StoreResult<Option<IssuedDevice>> {
        let days = tenant.settings.remember_device_days.get(user.role);
        let Some(expires_at) = trust::device_expiry(ctx.now, days) else { return Ok(None) };
        let token = SecretToken::generate();
        let device = TrustedDevice {
            id: TrustedDeviceId::new(),
            tenant_id: user.tenant_id,
            user_id: user.id,
            created_at: ctx.now,
            last_used_at: None,
            expires_at,
            revoked_at: None,
            user_agent: ctx.user_agent.clone(),
            ip: ctx.ip.clone(),
        };
        trusted_devices::insert(conn, &device, &self.keys.token_hash(TokenPurpose::Device, token.expose()))?;
        let who = Some(user.id.to_string());
        let detail = json!({"device_id": device.id, "expires_at": expires_at});
        Service::audit(conn, ctx, user.tenant_id, who, Some(user.id), AuditKind::TrustedDeviceCreated, detail)?;
        self.notify(conn, ctx, user.tenant_id, Notice::TrustedDeviceCreated { user: user.id })?;
        Ok(Some(IssuedDevice { token, expires_at }))
    }
}

/// What a completed second step needs besides the user.
pub(super) struct CompletedSignIn<'a> {
    /// The challenge, to end.
    pub challenge: &'a Challenge,
    /// The tenant (its settings say whether and how long a device is remembered).
    pub tenant: &'a Tenant,
    /// The user's enrolled methods, when already read.
    pub enrolled: Option<MethodSet>,
    /// Whether the client asked to remember the device.
    pub remember_device: bool,
    /// The `method` label of the success in `latchkey_otp_verifications_total`.
    pub metric: &'static str,
}
