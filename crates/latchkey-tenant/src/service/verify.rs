//! Verification at sign-in: a proof of one of the challenge's methods completes the sign-in
//! with a session whose second factor is verified now, and may remember the device.

use latchkey_core::crypto::TokenPurpose;
use latchkey_core::otp::OtpLockout;
use latchkey_core::{AuditKind, ChallengeId, Method, MethodSet, SecretToken, TrustedDeviceId, trust};
use latchkey_store::model::{
    AuditEvent, Challenge, ChallengePurpose, Enrollment, NextAction, Tenant, TrustedDevice, User,
};
use latchkey_store::repo::sign_in_at_once::{self, Factor, SignInAtOnce, SignInOutcome};
use latchkey_store::repo::{audit, challenges, enrollments, trusted_devices, users};
use latchkey_store::{Backend, DbConn, StoreResult};
use serde_json::json;
use zeroize::Zeroizing;

use super::challenge::verified_sign_in_events;
use super::factor::{Checked, Presented};
use super::notices::SealedNotice;
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
        // On Postgres the sign-in may be committed in one statement, which needs the
        // enrollments (for the answer): read with the challenge, in the same query.
        // The enrollments, the ceremony and the credential, read with the challenge.
        let (loc, read) = if self.store.backend() == Backend::Postgres {
            let id = super::factor::credential_id(credential.get_credential_id());
            let (loc, read) = self.locate_for_assertion(challenge_token, ctx.now, id).await?;
            (loc, Some(read))
        } else {
            (self.locate(challenge_token, ChallengePurpose::SignIn, ctx.now, || Error::InvalidChallenge).await?, None)
        };
        let verifier = self.registry.enter_with_verifier(loc.tenant.id).await?.verifier;
        method_allowed(&loc, Method::Webauthn)?;
        if !remember_device
            && loc.user.lockout.blocked(ctx.now).is_none()
            && let Some(read) = read
            && let Some(issued) = self.verify_assertion_at_once(ctx, &loc, read, &credential, &verifier).await?
        {
            return Ok(issued);
        }
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
        method_allowed(&loc, method)?;
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

/// `MethodNotAllowed` unless the challenge offers `method` to the user's role, and (for the
/// methods that need an enrollment) asks for a verification, not an enrollment.
fn method_allowed(loc: &super::challenge::Located, method: Method) -> Result<()> {
    let allowed = loc.challenge.methods.intersect(loc.tenant.policy.methods_for(loc.user.role));
    let needs_enrolled = matches!(method, Method::Authenticator | Method::Webauthn);
    if !allowed.contains(method) || (needs_enrolled && loc.challenge.next == NextAction::Enroll) {
        return Err(Error::MethodNotAllowed);
    }
    Ok(())
}

/// A sign-in to commit in one statement on Postgres ([`Service::commit_at_once`]): what makes
/// the proof single-use, and what the sign-in writes besides the session.
pub(super) struct AtOnce {
    /// The single-use part of the proof, used up by the statement.
    pub factor: Factor,
    /// The method that becomes the preferred one unless the user chose his own (`None` for a
    /// recovery code).
    pub method: Option<Method>,
    /// The `method` label of the success in `latchkey_otp_verifications_total`.
    pub metric: &'static str,
    /// The audit events of the sign-in.
    pub audit: Vec<AuditEvent>,
    /// A notice to the user, sealed, with whether the answer waits for it.
    pub notice: Option<(SealedNotice, bool)>,
}

impl Service {
    /// Commits the sign-in of `user` on `challenge` in one statement
    /// ([`sign_in_at_once::commit`]), inside a [`Store::run`](latchkey_store::Store::run)
    /// closure on Postgres: a new session whose second factor is verified now, the audit
    /// events, their webhook deliveries and the notice, all queued once the request is done.
    /// `enrolled` are the user's enrolled methods (for the answer). `None` when the statement
    /// refused, with nothing written: the caller then takes the portable path, which decides
    /// under the user's lock and tells why.
    pub(super) fn commit_at_once(
        &self,
        conn: &mut DbConn,
        ctx: &RequestCtx,
        user: &User,
        challenge: ChallengeId,
        enrolled: MethodSet,
        at_once: AtOnce,
    ) -> StoreResult<Option<IssuedSession>> {
        let (token, session) = self.new_session(user, true, ctx.now);
        let token_hash = self.keys.token_hash(TokenPurpose::Session, token.expose());
        let sign_in = SignInAtOnce {
            user: user.id,
            challenge,
            factor: at_once.factor,
            method: at_once.method,
            session: &session,
            session_token_hash: &token_hash,
            audit: &at_once.audit,
            notice: at_once.notice.as_ref().map(|(n, _)| n.new_mail(user.tenant_id, ctx.now)),
        };
        let (outcome, hooks) = sign_in_at_once::commit(conn, &sign_in)?;
        if outcome != SignInOutcome::Committed {
            return Ok(None);
        }
        ctx.notices.push(hooks, false);
        if let Some((notice, wait)) = &at_once.notice {
            ctx.notices.push(vec![notice.id], *wait);
        }
        self.metrics.otp_verifications.with_label_values(&[at_once.metric, "success"]).inc();
        let mut user = user.clone();
        if !user.preferred_chosen
            && let Some(method) = at_once.method
        {
            user.preferred = Some(method);
        }
        Ok(Some(IssuedSession::new(token, session.expires_at, UserView::new(&user, enrolled))))
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
