//! Self-service second factors (DESIGN.md 5.3): the signed-in user sees his factors, adds or
//! replaces an authenticator, adds email, removes a method and picks his preferred one. Every
//! change needs a fresh second factor while he has an enrolled method, is refused for a method
//! his role does not allow, is audited, voids his open challenges and codes, and (removals)
//! revokes his trusted devices.

use chrono::{DateTime, Utc};
use latchkey_core::totp::TotpSecret;
use latchkey_core::{AuditKind, Method, MethodSet, SecretToken};
use latchkey_store::model::{ChallengePurpose, Enrollment, NextAction, RecoveryCodeSet, TrustedDevice, User};
use latchkey_store::repo::locks::{self, TenantLock};
use latchkey_store::repo::{challenges, email_codes, enrollments, recovery_codes, trusted_devices, users, webauthn};
use latchkey_store::{DbConn, StoreResult};
use serde_json::json;
use zeroize::Zeroizing;

use super::challenge::Located;
use super::email_code::EmailSent;
use super::factor::{Checked, Proof, TotpSetup, pending_aad, totp_setup};
use super::{Auth, Notice, RequestCtx, Service};
use crate::error::{Error, Result};

/// `GET /api/v1/me/two-factor`: the user's second factors.
#[derive(Debug, Clone)]
pub struct TwoFactorOverview {
    /// Enrolled methods.
    pub enrolled: Vec<Method>,
    /// The preferred method, when enrolled.
    pub preferred: Option<Method>,
    /// The authenticator's enrollment, if any.
    pub authenticator: Option<Enrollment>,
    /// The email method's enrollment, if any.
    pub email: Option<Enrollment>,
    /// The recovery codes, if the user has a set.
    pub recovery_codes: Option<RecoveryCodeSet>,
    /// Live trusted devices.
    pub trusted_devices: Vec<TrustedDevice>,
    /// The WebAuthn credentials (passkeys, security keys), oldest first.
    pub webauthn: Vec<latchkey_store::model::WebauthnCredential>,
}

/// A method being added: the setup token and what the method needs.
#[derive(Debug, Clone)]
pub struct MethodSetup<T> {
    /// The `setup_token` (stored hashed, bound to this session, single-use).
    pub setup_token: SecretToken,
    /// The authenticator's setup material, or where the email code went.
    pub setup: T,
}

impl Service {
    /// `GET /api/v1/me/two-factor`.
    pub async fn two_factor_overview(&self, auth: &Auth, now: DateTime<Utc>) -> Result<TwoFactorOverview> {
        let user = auth.user.clone();
        Ok(self
            .store
            .run(move |c| {
                let all = enrollments::for_user(c, user.id)?;
                let enrolled: MethodSet = all.iter().map(|e| e.method).collect();
                let find = |m: Method| all.iter().find(|e| e.method == m).cloned();
                Ok(TwoFactorOverview {
                    enrolled: enrolled.to_vec(),
                    preferred: user.preferred.filter(|m| enrolled.contains(*m)),
                    authenticator: find(Method::Authenticator),
                    email: find(Method::Email),
                    recovery_codes: recovery_codes::set_of(c, user.id)?,
                    trusted_devices: trusted_devices::live_for_user(c, user.id, now)?,
                    webauthn: webauthn::for_user(c, user.id)?,
                })
            })
            .await?)
    }

    /// What every self-service change checks first: `method` is allowed for the role
    /// (`MethodNotAllowed`), and the session's second factor is fresh while the user has an
    /// enrolled method (`StepUpRequired`).
    pub(super) async fn may_change(&self, ctx: &RequestCtx, auth: &Auth, method: Method) -> Result<()> {
        if !auth.tenant.policy.methods_for(auth.user.role).contains(method) {
            return Err(Error::MethodNotAllowed);
        }
        let user = auth.user.id;
        if !self.store.run(move |c| enrollments::methods_of(c, user)).await?.is_empty() {
            self.require_fresh_factor(auth, ctx.now)?;
        }
        Ok(())
    }

    /// Opens a setup bound to the session for `method`, with a pending secret when `secret`.
    pub(super) async fn open_setup(
        &self,
        auth: &Auth,
        method: Method,
        secret: Option<&TotpSecret>,
        now: DateTime<Utc>,
    ) -> Result<(SecretToken, latchkey_store::model::Challenge)> {
        let svc = self.clone();
        let user = auth.user.clone();
        let session = auth.session.id;
        let secret_bytes = secret.map(|s| Zeroizing::new(s.as_bytes().to_vec()));
        Ok(self
            .store
            .write(move |c| {
                users::lock(c, user.id)?;
                let methods = MethodSet::EMPTY.with(method);
                let (token, mut ch) = svc.open_challenge(
                    c,
                    &user,
                    ChallengePurpose::Setup,
                    NextAction::Enroll,
                    methods,
                    Some(session),
                    now,
                )?;
                if let Some(bytes) = &secret_bytes {
                    let sealed = svc.keys.seal(bytes, &pending_aad(&ch));
                    challenges::set_pending_secret(c, ch.id, &sealed)?;
                    ch.pending_secret = Some(sealed);
                }
                Ok((token, ch))
            })
            .await?)
    }

    /// `POST /api/v1/me/two-factor/authenticator`: a new secret to add an authenticator, or to
    /// replace the enrolled one (new phone). The old secret keeps working until the new one is
    /// confirmed.
    ///
    /// Errors: `MethodNotAllowed`, `StepUpRequired`.
    pub async fn add_authenticator(&self, ctx: &RequestCtx, auth: &Auth) -> Result<MethodSetup<TotpSetup>> {
        self.may_change(ctx, auth, Method::Authenticator).await?;
        let secret = TotpSecret::generate();
        let (setup_token, _) = self.open_setup(auth, Method::Authenticator, Some(&secret), ctx.now).await?;
        Ok(MethodSetup { setup_token, setup: totp_setup(&secret, &auth.tenant, &auth.user)? })
    }

    /// `POST /api/v1/me/two-factor/email`: emails a code to the user's address to add the
    /// email method (the send rules of every code apply).
    ///
    /// Errors: `MethodNotAllowed`, `StepUpRequired`, `OtpBlocked`, `ResendTooSoon`,
    /// `SendLimitReached`, `QueueUnavailable`.
    pub async fn add_email(&self, ctx: &RequestCtx, auth: &Auth) -> Result<MethodSetup<EmailSent>> {
        self.may_change(ctx, auth, Method::Email).await?;
        let (setup_token, challenge) = self.open_setup(auth, Method::Email, None, ctx.now).await?;
        let loc = Located { challenge, tenant: auth.tenant.clone(), user: auth.user.clone() };
        let sent = self.send_email_code(ctx, loc, || Error::InvalidSetupToken).await?;
        Ok(MethodSetup { setup_token, setup: sent })
    }

    /// `POST /api/v1/me/two-factor/{authenticator|email}/confirm`: a code of the method being
    /// added (the new app's, or the emailed one) enrolls it: audited `enrolled`, the user's
    /// open challenges and codes void. A replaced authenticator's last accepted step never
    /// moves back. A wrong code counts.
    ///
    /// Errors: `InvalidSetupToken` (unknown, expired, used, another session's or another
    /// method's), `OtpBlocked`, `InvalidCode`, `CodeExpired`.
    pub async fn confirm_method(
        &self,
        ctx: &RequestCtx,
        auth: &Auth,
        method: Method,
        setup_token: &str,
        code: &str,
    ) -> Result<()> {
        let loc = self.locate(setup_token, ChallengePurpose::Setup, ctx.now, || Error::InvalidSetupToken).await?;
        if loc.challenge.session_id != Some(auth.session.id)
            || loc.user.id != auth.user.id
            || !loc.challenge.methods.contains(method)
        {
            return Err(Error::InvalidSetupToken);
        }
        let svc = self.clone();
        let ctx = ctx.clone();
        let code = Zeroizing::new(code.to_owned());
        self.store
            .write(move |c| {
                let now = ctx.now;
                let Some((user, ch)) = Service::reread(c, &loc, now)? else {
                    return Ok(Err(Error::InvalidSetupToken));
                };
                if let Some(e) = svc.blocked(&user, method.as_str(), now) {
                    return Ok(Err(e));
                }
                let enroll = match svc.check_proof(c, Some(&ch), &user, method, &Proof::Code(&code), now)? {
                    Checked::Accepted { enroll, .. } => enroll,
                    Checked::Replayed => return Ok(Err(svc.on_replay(&user, method.as_str(), now))),
                    Checked::Wrong { expired } => {
                        return Ok(Err(svc.on_failure(c, &ctx, &user, method.as_str(), expired)?));
                    }
                    Checked::CounterRegressed { .. } => {
                        return Ok(Err(svc.on_failure(c, &ctx, &user, method.as_str(), false)?));
                    }
                    Checked::NotEnrolled => return Ok(Err(Error::InvalidSetupToken)),
                };
                let enroll = enroll.map(|mut new| {
                    // A replacement keeps the highest step ever accepted (replay protection).
                    if let Ok(old) = enrollments::for_user(c, user.id) {
                        let old_step = old.iter().find(|e| e.method == new.method).and_then(|e| e.last_step);
                        new.last_step = new.last_step.max(old_step);
                    }
                    new
                });
                // Already enrolled (email confirmed twice): nothing to store, the setup ends.
                challenges::end(c, ch.id, now)?;
                svc.enroll_accepted(c, &ctx, &user, None, enroll)?;
                users::set_lockout(c, user.id, Default::default())?;
                svc.metrics.otp_verifications.with_label_values(&[method.as_str(), "success"]).inc();
                Ok(Ok(()))
            })
            .await?
    }

    /// `DELETE /api/v1/me/two-factor/{method}`: removes an enrolled method, unless that would
    /// leave the user of a 2FA tenant without a method his role allows; audited
    /// `factor_removed`; his open challenges and codes void and his trusted devices revoked.
    ///
    /// Errors: `StepUpRequired`, `NotFound` (not enrolled), `LastMethod`.
    pub async fn remove_method(&self, ctx: &RequestCtx, auth: &Auth, method: Method) -> Result<()> {
        self.require_fresh_factor(auth, ctx.now)?;
        let svc = self.clone();
        let ctx = ctx.clone();
        let (tenant_id, user_id) = (auth.tenant.id, auth.user.id);
        self.store
            .write(move |c| {
                let Some((tenant, user)) = locks::tenant_then_user(c, tenant_id, TenantLock::Share, user_id)? else {
                    return Ok(Err(Error::Unauthenticated));
                };
                let enrolled = enrollments::methods_of(c, user.id)?;
                if !enrolled.contains(method) {
                    return Ok(Err(Error::NotFound));
                }
                let left: MethodSet = enrolled.to_vec().into_iter().filter(|m| *m != method).collect();
                if tenant.policy.enabled && left.intersect(tenant.policy.methods_for(user.role)).is_empty() {
                    return Ok(Err(Error::LastMethod));
                }
                enrollments::delete(c, user.id, method)?;
                if method == Method::Webauthn {
                    webauthn::delete_for_user(c, user.id)?;
                }
                if user.preferred == Some(method) {
                    users::set_preferred(c, user.id, None)?;
                }
                svc.after_factor_removed(c, &ctx, &user, json!({"method": method}))?;
                Ok(Ok(()))
            })
            .await?
    }

    /// After a factor (or one passkey) was removed: the user's open challenges and codes are
    /// void, the removal is audited `factor_removed` with `detail`, he gets a notice and his
    /// trusted devices are revoked.
    pub(super) fn after_factor_removed(
        &self,
        conn: &mut DbConn,
        ctx: &RequestCtx,
        user: &User,
        detail: serde_json::Value,
    ) -> StoreResult<()> {
        Service::factor_changed(conn, ctx, user)?;
        let factor = detail.get("method").and_then(|m| m.as_str()).unwrap_or("webauthn").to_owned();
        let who = Some(user.id.to_string());
        Service::audit(conn, ctx, user.tenant_id, who, Some(user.id), AuditKind::FactorRemoved, detail)?;
        self.notify(conn, ctx, user.tenant_id, Notice::FactorRemoved { user: user.id, factor })?;
        Service::revoke_devices(conn, ctx, user, "factor_removed")
    }

    /// After a change of the user's factors: his open challenges and codes are void.
    fn factor_changed(conn: &mut DbConn, ctx: &RequestCtx, user: &User) -> StoreResult<()> {
        challenges::end_for_user(conn, user.id, None, ctx.now)?;
        email_codes::void_for_user(conn, user.id, ctx.now)?;
        Ok(())
    }

    /// `PUT /api/v1/me/two-factor/preferred`: the user's own choice of preferred method,
    /// which challenges list first and later verifications keep.
    ///
    /// Errors: `StepUpRequired`, `InvalidRequest` (not enrolled).
    pub async fn choose_preferred(&self, ctx: &RequestCtx, auth: &Auth, method: Method) -> Result<TwoFactorOverview> {
        self.require_fresh_factor(auth, ctx.now)?;
        let user = auth.user.id;
        let done = self
            .store
            .write(move |c| {
                users::lock(c, user)?;
                if !enrollments::methods_of(c, user)?.contains(method) {
                    return Ok(false);
                }
                users::choose_preferred(c, user, method)?;
                Ok(true)
            })
            .await?;
        if !done {
            return Err(Error::InvalidRequest(format!("{method} is not enrolled")));
        }
        let mut auth = auth.clone();
        auth.user.preferred = Some(method);
        self.two_factor_overview(&auth, ctx.now).await
    }
}
