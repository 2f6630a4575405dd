//! The second step of sign-in: authenticator enrollment, emailed codes, verification,
//! recovery requests and admin reset links.

use std::fmt;

use chrono::{DateTime, Utc};
use latchkey_core::crypto::{TokenPurpose, ct_eq};
use latchkey_core::otp::{OtpLockout, SendRefusal, decide_send, generate_email_code, seconds_until};
use latchkey_core::totp::{self, TotpCheck, TotpSecret};
use latchkey_core::{
    AuditKind, ChallengeId, EmailCodeId, Method, MethodSet, RecoveryRequestId, ResetTokenId, Role, SecretToken, UserId,
};
use latchkey_store::model::{
    AuditEvent, Challenge, ChallengePurpose, EmailCode, Enrollment, NextAction, RecoveryRequest, RecoveryStatus,
    ResetToken, Tenant, User,
};
use latchkey_store::repo::deliveries::{self, Attempt, DeliveryKind, DeliveryState};
use latchkey_store::repo::totp_sign_in::{self, TotpSignIn, TotpSignInOutcome};
use latchkey_store::repo::{audit, challenges, email_codes, enrollments, recovery, reset_tokens, users};
use latchkey_store::{Backend, DbConn, StoreError, StoreResult};
use serde_json::json;
use zeroize::Zeroizing;

use super::admin::RecoveryView;
use super::signin::IssuedSession;
use super::{Notice, RequestCtx, Service, UserView};
use crate::error::{Error, Result};
use crate::outbox::{DeliveryJob, MailPayload};

/// What an authenticator app needs: the setup key, the `otpauth://` URI and its QR code.
#[derive(Clone)]
pub struct TotpSetup {
    /// Base32 setup key (no padding).
    pub secret: String,
    /// Key Uri Format URI.
    pub otpauth_uri: String,
    /// PNG QR code of the URI, base64.
    pub qr_png: String,
}

impl fmt::Debug for TotpSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSetup(<redacted>)")
    }
}

/// A code was queued for delivery.
#[derive(Debug, Clone)]
pub struct EmailSent {
    /// Where it goes, masked.
    pub email_masked: String,
    /// When the code expires.
    pub expires_at: DateTime<Utc>,
    /// When another code may be asked for.
    pub resend_available_at: DateTime<Utc>,
    /// Sends left in the sliding window.
    pub sends_remaining: u32,
}

/// How recovery proceeds.
#[derive(Debug, Clone)]
pub enum RecoveryStarted {
    /// Agents and supervisors: a request for an admin to decide.
    AdminApproval(Box<RecoveryView>),
    /// Admins: a reset link was emailed.
    EmailLink {
        /// Where it went, masked.
        email_masked: String,
    },
}

pub(super) struct Located {
    pub challenge: Challenge,
    pub tenant: Tenant,
    pub user: User,
}

/// The verdict on a code, reached inside the user's transaction.
pub(super) enum Checked {
    /// A TOTP code of a new time step. `enroll` holds the secret when it came from a pending
    /// setup (to be enrolled now); `enrolled` the user's enrolled methods when they were read
    /// to find the secret (so the caller need not read them again).
    Totp { step: i64, enroll: Option<TotpSecret>, enrolled: Option<MethodSet> },
    /// The challenge's live email code.
    Email { code_id: EmailCodeId },
    /// The right code of an already used TOTP step: refused, not counted.
    Replayed,
    /// Refused and counted; `expired` for an email code past its lifetime or voided.
    Wrong { expired: bool },
    /// No authenticator secret to check against.
    NoAuthenticator,
}

pub(super) fn pending_aad(challenge: &Challenge) -> Vec<u8> {
    format!("pending-totp:{}", challenge.id).into_bytes()
}

pub(super) fn enrolled_aad(user: UserId) -> Vec<u8> {
    format!("totp:{user}").into_bytes()
}

/// The audit events of a sign-in completed with a verified code of `method`: `verified`,
/// then `signed_in`, the user acting on himself.
fn verified_sign_in_events(ctx: &RequestCtx, user: &User, method: Method) -> [AuditEvent; 2] {
    Service::new_audit_events(
        ctx,
        user.tenant_id,
        Some(user.id.to_string()),
        Some(user.id),
        [
            (AuditKind::Verified, json!({"method": method})),
            (AuditKind::SignedIn, json!({"second_factor": true, "method": method})),
        ],
    )
}

fn send_refusal(refusal: SendRefusal, now: DateTime<Utc>) -> Error {
    match refusal {
        SendRefusal::TooSoon { retry_at } => Error::ResendTooSoon { retry_after: seconds_until(retry_at, now) },
        SendRefusal::LimitReached { retry_at } => Error::SendLimitReached { retry_after: seconds_until(retry_at, now) },
    }
}

impl Service {
    /// Finds the open challenge of `token` with `purpose`, its user and tenant.
    pub(super) async fn locate(
        &self,
        token: &str,
        purpose: ChallengePurpose,
        now: DateTime<Utc>,
        missing: fn() -> Error,
    ) -> Result<Located> {
        let hash = self.keys.token_hash(TokenPurpose::Challenge, token);
        let found = self.store.run(move |c| challenges::open_with_user_by_token_hash(c, &hash, now)).await?;
        let (challenge, user) = found.filter(|(ch, _)| ch.purpose == purpose).ok_or_else(missing)?;
        let span = tracing::Span::current();
        span.record("tenant", tracing::field::display(challenge.tenant_id));
        span.record("user", tracing::field::display(user.id));
        let tenant = self.registry.enter(challenge.tenant_id).await.map_err(|e| match e {
            Error::NotFound => missing(),
            other => other,
        })?;
        Ok(Located { challenge, tenant, user })
    }

    /// Re-reads the user (taking its lock) and the challenge, which must still be open.
    pub(super) fn reread(
        conn: &mut DbConn,
        loc: &Located,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<(User, Challenge)>> {
        let user = users::lock_and_get(conn, loc.tenant.id, loc.user.id)?;
        let ch = challenges::by_id(conn, loc.challenge.id)?.filter(|ch| ch.is_open(now));
        Ok(user.zip(ch))
    }

    /// `OtpBlocked` if the user is blocked at `now` (counted in metrics, not as a failure).
    pub(super) fn blocked(&self, user: &User, method: Method, now: DateTime<Utc>) -> Option<Error> {
        let until = user.lockout.blocked(now)?;
        self.metrics.otp_verifications.with_label_values(&[method.as_str(), "blocked"]).inc();
        Some(Error::OtpBlocked { retry_after: seconds_until(until, now) })
    }

    /// Checks `code` for `method` on `challenge`; for TOTP the last accepted step moves
    /// forward here (a conditional update), so a step is accepted at most once.
    pub(super) fn check_code(
        &self,
        conn: &mut DbConn,
        challenge: &Challenge,
        user: &User,
        method: Method,
        code: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Checked> {
        match method {
            Method::Authenticator => {
                if let Some(sealed) = &challenge.pending_secret {
                    let bytes = self
                        .keys
                        .open(sealed, &pending_aad(challenge))
                        .map_err(|_| StoreError::Corrupt("pending secret"))?;
                    let secret = TotpSecret::from_bytes(&bytes).map_err(|_| StoreError::Corrupt("pending secret"))?;
                    return Ok(match totp::check(&secret, code, now, None) {
                        TotpCheck::Accepted { step } => Checked::Totp { step, enroll: Some(secret), enrolled: None },
                        TotpCheck::Replayed => Checked::Replayed,
                        TotpCheck::Invalid => Checked::Wrong { expired: false },
                    });
                }
                let all = enrollments::for_user(conn, user.id)?;
                let enrolled: MethodSet = all.iter().map(|e| e.method).collect();
                let Some(enrollment) = all.into_iter().find(|e| e.method == Method::Authenticator) else {
                    return Ok(Checked::NoAuthenticator);
                };
                let secret = self.enrolled_secret(&enrollment)?;
                Ok(match totp::check(&secret, code, now, enrollment.last_step) {
                    TotpCheck::Accepted { step } => {
                        if enrollments::advance_last_step(conn, user.id, step)? {
                            Checked::Totp { step, enroll: None, enrolled: Some(enrolled) }
                        } else {
                            Checked::Replayed
                        }
                    }
                    TotpCheck::Replayed => Checked::Replayed,
                    TotpCheck::Invalid => Checked::Wrong { expired: false },
                })
            }
            Method::Email => {
                let codes = email_codes::for_challenge(conn, challenge.id)?;
                let matched = codes.iter().find(|c| ct_eq(&self.keys.code_hash(&c.id.to_string(), code), &c.code_hash));
                Ok(match matched {
                    Some(c) if c.used_at.is_some() => Checked::Wrong { expired: false },
                    Some(c) if c.voided_at.is_some() || c.expires_at <= now => Checked::Wrong { expired: true },
                    Some(c) => Checked::Email { code_id: c.id },
                    None => Checked::Wrong { expired: false },
                })
            }
        }
    }

    /// The TOTP secret of an authenticator enrollment, opened with the server key.
    fn enrolled_secret(&self, enrollment: &Enrollment) -> StoreResult<TotpSecret> {
        let sealed = enrollment.secret_sealed.as_deref().ok_or(StoreError::Corrupt("totp secret"))?;
        let bytes = self
            .keys
            .open(sealed, &enrolled_aad(enrollment.user_id))
            .map_err(|_| StoreError::Corrupt("totp secret"))?;
        TotpSecret::from_bytes(&bytes).map_err(|_| StoreError::Corrupt("totp secret"))
    }

    /// Counts a refused code: the lockout moves, the audit log and metrics record it, and the
    /// answer is built (`invalid_code` with `attempts_remaining`, or `code_expired`; the code
    /// that reaches the limit answers `invalid_code` with 0 and `retry_after`).
    pub(super) fn on_failure(
        &self,
        conn: &mut DbConn,
        ctx: &RequestCtx,
        user: &User,
        method: Method,
        expired: bool,
    ) -> StoreResult<Error> {
        let now = ctx.now;
        let (lockout, failure) = user.lockout.fail(now, &self.limits);
        users::set_lockout(conn, user.id, lockout)?;
        let outcome = if expired { "expired" } else { "invalid" };
        self.metrics.otp_verifications.with_label_values(&[method.as_str(), outcome]).inc();
        let who = Some(user.id.to_string());
        Service::audit(
            conn,
            ctx,
            user.tenant_id,
            who.clone(),
            Some(user.id),
            AuditKind::VerifyFailed,
            json!({"method": method, "reason": outcome}),
        )?;
        if let Some(until) = failure.blocked_until {
            self.metrics.otp_blocks.inc();
            Service::audit(
                conn,
                ctx,
                user.tenant_id,
                who,
                Some(user.id),
                AuditKind::OtpBlocked,
                json!({"until": until}),
            )?;
            return Ok(Error::InvalidCode { attempts_remaining: 0, retry_after: Some(seconds_until(until, now)) });
        }
        Ok(if expired {
            Error::CodeExpired { attempts_remaining: failure.attempts_remaining }
        } else {
            Error::InvalidCode { attempts_remaining: failure.attempts_remaining, retry_after: None }
        })
    }

    /// A replayed TOTP step: refused with the attempts left, not counted.
    pub(super) fn on_replay(&self, user: &User, method: Method, now: DateTime<Utc>) -> Error {
        self.metrics.otp_verifications.with_label_values(&[method.as_str(), "replayed"]).inc();
        let failures = user.lockout.at(now).failures;
        Error::InvalidCode {
            attempts_remaining: self.limits.otp_max_failures.saturating_sub(failures),
            retry_after: None,
        }
    }

    /// Enrolls the authenticator whose code was just accepted from a pending setup.
    pub(super) fn enroll_authenticator(
        &self,
        conn: &mut DbConn,
        ctx: &RequestCtx,
        user: &User,
        secret: &TotpSecret,
        step: i64,
    ) -> StoreResult<()> {
        let enrollment = Enrollment {
            user_id: user.id,
            method: Method::Authenticator,
            secret_sealed: Some(self.keys.seal(secret.as_bytes(), &enrolled_aad(user.id))),
            last_step: Some(step),
            created_at: ctx.now,
        };
        enrollments::upsert(conn, user.tenant_id, &enrollment)?;
        Service::enrolled(conn, ctx, user, Method::Authenticator, None)?;
        self.notify(conn, ctx, user.tenant_id, Notice::MethodEnrolled { user: user.id, method: Method::Authenticator })
    }

    /// Accepts the challenge's live email code; the user's first success enrolls the email
    /// method.
    pub(super) fn accept_email_code(
        &self,
        conn: &mut DbConn,
        ctx: &RequestCtx,
        user: &User,
        challenge: &Challenge,
        code_id: EmailCodeId,
    ) -> StoreResult<()> {
        email_codes::mark_used(conn, code_id, ctx.now)?;
        if enrollments::methods_of(conn, user.id)?.contains(Method::Email) {
            return Ok(());
        }
        let enrollment = Enrollment {
            user_id: user.id,
            method: Method::Email,
            secret_sealed: None,
            last_step: None,
            created_at: ctx.now,
        };
        enrollments::upsert(conn, user.tenant_id, &enrollment)?;
        Service::enrolled(conn, ctx, user, Method::Email, Some(challenge.id))?;
        self.notify(conn, ctx, user.tenant_id, Notice::MethodEnrolled { user: user.id, method: Method::Email })
    }

    /// After an enrollment: the user's other challenges and codes are void (DESIGN.md
    /// "Challenges"), and the audit log records it.
    fn enrolled(
        conn: &mut DbConn,
        ctx: &RequestCtx,
        user: &User,
        method: Method,
        keep: Option<ChallengeId>,
    ) -> StoreResult<()> {
        challenges::end_for_user(conn, user.id, keep, ctx.now)?;
        email_codes::void_for_user(conn, user.id, ctx.now)?;
        let who = Some(user.id.to_string());
        Service::audit(conn, ctx, user.tenant_id, who, Some(user.id), AuditKind::Enrolled, json!({"method": method}))
    }

    /// Queues `job`; if the queue refuses it, `undo` removes what the send recorded (so a
    /// refused send does not count) and the answer is `QueueUnavailable`.
    async fn enqueue_or_undo<F>(&self, job: DeliveryJob, undo: F) -> Result<()>
    where
        F: FnOnce(&mut DbConn) -> StoreResult<()> + Send + 'static,
    {
        let Err(e) = self.outbox.enqueue(job).await else { return Ok(()) };
        tracing::error!(error = %e, "could not queue an email");
        self.store.run(undo).await?;
        Err(Error::QueueUnavailable)
    }

    /// The setup material of a new TOTP secret for `user` of `tenant`.
    pub(super) fn totp_setup(secret: &TotpSecret, tenant: &Tenant, user: &User) -> Result<TotpSetup> {
        let otpauth_uri = totp::otpauth_uri(secret, &tenant.name, &user.email);
        let qr_png = totp::qr_png_base64(&otpauth_uri).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(TotpSetup { secret: secret.to_base32(), otpauth_uri, qr_png })
    }

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
        Service::totp_setup(&secret, &loc.tenant, &loc.user)
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
                match svc.check_code(c, &ch, &user, Method::Authenticator, &code, now)? {
                    Checked::Totp { step, enroll: Some(secret), .. } => {
                        svc.enroll_authenticator(c, &ctx, &user, &secret, step)?;
                        users::set_lockout(c, user.id, Default::default())?;
                        svc.metrics.otp_verifications.with_label_values(&["authenticator", "success"]).inc();
                        Ok(Ok(()))
                    }
                    Checked::Replayed => Ok(Err(svc.on_replay(&user, Method::Authenticator, now))),
                    Checked::Wrong { expired } => {
                        Ok(Err(svc.on_failure(c, &ctx, &user, Method::Authenticator, expired)?))
                    }
                    Checked::Totp { enroll: None, .. } | Checked::Email { .. } | Checked::NoAuthenticator => {
                        Ok(Err(Error::SetupRequired))
                    }
                }
            })
            .await?
    }

    /// `POST /api/v1/auth/2fa/email/send`: emails a new code for the challenge, voiding the
    /// user's previous one.
    ///
    /// Errors: `InvalidChallenge`, `MethodNotAllowed`, `OtpBlocked`, `ResendTooSoon`,
    /// `SendLimitReached`, `QueueUnavailable`.
    pub async fn email_send(&self, ctx: &RequestCtx, challenge_token: &str) -> Result<EmailSent> {
        let loc = self.locate(challenge_token, ChallengePurpose::SignIn, ctx.now, || Error::InvalidChallenge).await?;
        let allowed = loc.challenge.methods.intersect(loc.tenant.policy.methods_for(loc.user.role));
        if !allowed.contains(Method::Email) {
            return Err(Error::MethodNotAllowed);
        }
        self.send_email_code(ctx, loc, || Error::InvalidChallenge).await
    }

    /// Sends a code for the located challenge under the send rules (cooldown, sliding window,
    /// block), all decided in the user's transaction; then queues the job. If the queue
    /// refuses it, the code is deleted so the refused send does not count.
    pub(super) async fn send_email_code(
        &self,
        ctx: &RequestCtx,
        loc: Located,
        gone: fn() -> Error,
    ) -> Result<EmailSent> {
        let svc = self.clone();
        let now = ctx.now;
        let tenant_name = loc.tenant.name.clone();
        let (user, delivery_id, code_id, permit) = self
            .store
            .write(move |c| {
                let Some((user, ch)) = Service::reread(c, &loc, now)? else {
                    return Ok(Err(gone()));
                };
                if let Some(until) = user.lockout.blocked(now) {
                    return Ok(Err(Error::OtpBlocked { retry_after: seconds_until(until, now) }));
                }
                let since = now - svc.limits.email_otp_window.max(svc.limits.email_otp_resend);
                let sent = email_codes::sent_since(c, user.id, since)?;
                let permit = match decide_send(&sent, now, &svc.limits) {
                    Ok(p) => p,
                    Err(refusal) => return Ok(Err(send_refusal(refusal, now))),
                };
                let code = generate_email_code();
                email_codes::void_for_user(c, user.id, now)?;
                let code_id = EmailCodeId::new();
                email_codes::insert(
                    c,
                    user.tenant_id,
                    &EmailCode {
                        id: code_id,
                        user_id: user.id,
                        challenge_id: ch.id,
                        code_hash: svc.keys.code_hash(&code_id.to_string(), &code).to_vec(),
                        created_at: now,
                        expires_at: now + svc.limits.email_otp_ttl,
                        used_at: None,
                        voided_at: None,
                    },
                )?;
                let payload = MailPayload::Otp { code_id, to: user.email.clone(), tenant_name, code: code.to_string() };
                let expires = Some(now + svc.limits.email_otp_ttl);
                let delivery_id =
                    svc.record_mail(c, user.tenant_id, DeliveryKind::Otp, &payload, expires, true, now)?;
                Ok(Ok((user, delivery_id, code_id, permit)))
            })
            .await??;
        let expires_at = now + self.limits.email_otp_ttl;
        self.enqueue_or_undo(DeliveryJob { delivery_id }, move |c| {
            email_codes::delete(c, code_id)?;
            deliveries::finish(c, delivery_id, DeliveryState::Dropped, &Attempt::default(), now)
        })
        .await?;
        Ok(EmailSent {
            email_masked: latchkey_core::email::mask(&user.email),
            expires_at,
            resend_available_at: permit.resend_available_at,
            sends_remaining: permit.sends_remaining,
        })
    }

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
                let mut known_enrolled = None;
                match svc.check_code(c, &ch, &user, method, &code, now)? {
                    Checked::Totp { enrolled, .. } => known_enrolled = enrolled,
                    Checked::Email { code_id } => svc.accept_email_code(c, &ctx, &user, &ch, code_id)?,
                    Checked::Replayed => return Ok(Err(svc.on_replay(&user, method, now))),
                    Checked::Wrong { expired } => {
                        return Ok(Err(svc.on_failure(c, &ctx, &user, method, expired)?));
                    }
                    Checked::NoAuthenticator => return Ok(Err(Error::MethodNotAllowed)),
                }
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

    /// The common case of [`verify`](Self::verify) on Postgres, in three round trips instead
    /// of about ten: reads the authenticator enrollment, checks the code (RFC 6238, ±1 step,
    /// above the last accepted step) and commits the whole sign-in in one statement
    /// ([`totp_sign_in::commit`]). `None` when the code is not accepted, the statement refused
    /// (blocked user, ended challenge, replayed step) or the store is SQLite: the portable
    /// path then decides, under the user's lock, and counts a wrong code.
    async fn verify_totp_at_once(&self, ctx: &RequestCtx, loc: &Located, code: &str) -> Result<Option<IssuedSession>> {
        let svc = self.clone();
        let ctx = ctx.clone();
        let code = Zeroizing::new(code.to_owned());
        let mut user = loc.user.clone();
        let challenge = loc.challenge.id;
        let issued = self
            .store
            .run(move |c| {
                let all = enrollments::for_user(c, user.id)?;
                let enrolled: MethodSet = all.iter().map(|e| e.method).collect();
                let Some(enrollment) = all.iter().find(|e| e.method == Method::Authenticator) else {
                    return Ok(None);
                };
                let secret = svc.enrolled_secret(enrollment)?;
                let TotpCheck::Accepted { step } = totp::check(&secret, &code, ctx.now, enrollment.last_step) else {
                    return Ok(None);
                };
                let (token, session) = svc.new_session(&user, true, ctx.now);
                let method = Method::Authenticator;
                let audit = verified_sign_in_events(&ctx, &user, method);
                let token_hash = svc.keys.token_hash(TokenPurpose::Session, token.expose());
                let sign_in = TotpSignIn {
                    user: user.id,
                    challenge,
                    step,
                    session: &session,
                    session_token_hash: &token_hash,
                    audit: &audit,
                };
                if totp_sign_in::commit(c, &sign_in)? != TotpSignInOutcome::Committed {
                    return Ok(None);
                }
                svc.metrics.otp_verifications.with_label_values(&[method.as_str(), "success"]).inc();
                user.preferred = Some(method);
                Ok(Some(IssuedSession { token, expires_at: session.expires_at, user: UserView::new(&user, enrolled) }))
            })
            .await?;
        Ok(issued)
    }

    /// `POST /api/v1/auth/2fa/recovery`: for an agent or supervisor, the pending recovery
    /// request (created, or the existing one); for an admin, a reset link by email under the
    /// email send limits.
    ///
    /// Errors: `InvalidChallenge`, `ResendTooSoon`, `SendLimitReached`, `QueueUnavailable`.
    pub async fn recovery(&self, ctx: &RequestCtx, challenge_token: &str) -> Result<RecoveryStarted> {
        let loc = self.locate(challenge_token, ChallengePurpose::SignIn, ctx.now, || Error::InvalidChallenge).await?;
        if loc.user.role == Role::Admin {
            return self.send_reset_link(ctx, loc).await;
        }
        let svc = self.clone();
        let ctx = ctx.clone();
        self.store
            .write(move |c| {
                let Some((user, _)) = Service::reread(c, &loc, ctx.now)? else {
                    return Ok(Err(Error::InvalidChallenge));
                };
                let request = match recovery::pending_for_user(c, user.id)? {
                    Some(existing) => existing,
                    None => {
                        let request = RecoveryRequest {
                            id: RecoveryRequestId::new(),
                            tenant_id: user.tenant_id,
                            user_id: user.id,
                            status: RecoveryStatus::Pending,
                            ip: ctx.ip.clone(),
                            user_agent: ctx.user_agent.clone(),
                            created_at: ctx.now,
                            decided_at: None,
                            decided_by: None,
                        };
                        recovery::insert(c, &request)?;
                        let who = Some(user.id.to_string());
                        Service::audit(
                            c,
                            &ctx,
                            user.tenant_id,
                            who,
                            Some(user.id),
                            AuditKind::RecoveryRequested,
                            json!({"request_id": request.id}),
                        )?;
                        svc.notify(c, &ctx, user.tenant_id, Notice::RecoveryRequested { user: user.id })?;
                        request
                    }
                };
                let view = svc.user_view(c, &user)?;
                Ok(Ok(RecoveryStarted::AdminApproval(Box::new(RecoveryView { request, user: view }))))
            })
            .await?
    }

    async fn send_reset_link(&self, ctx: &RequestCtx, loc: Located) -> Result<RecoveryStarted> {
        let svc = self.clone();
        let ctx2 = ctx.clone();
        let now = ctx.now;
        let tenant_name = loc.tenant.name.clone();
        let (user, token_id, delivery_id) = self
            .store
            .write(move |c| {
                let Some((user, _)) = Service::reread(c, &loc, now)? else {
                    return Ok(Err(Error::InvalidChallenge));
                };
                let since = now - svc.limits.email_otp_window.max(svc.limits.email_otp_resend);
                let sent = reset_tokens::sent_since(c, user.id, since)?;
                if let Err(refusal) = decide_send(&sent, now, &svc.limits) {
                    return Ok(Err(send_refusal(refusal, now)));
                }
                reset_tokens::void_for_user(c, user.id, now)?;
                let token = SecretToken::generate();
                let row = ResetToken {
                    id: ResetTokenId::new(),
                    tenant_id: user.tenant_id,
                    user_id: user.id,
                    created_at: now,
                    expires_at: now + svc.limits.reset_link_ttl,
                    used_at: None,
                    voided_at: None,
                };
                reset_tokens::insert(c, &row, &svc.keys.token_hash(TokenPurpose::Reset, token.expose()))?;
                let payload = MailPayload::ResetLink {
                    token_id: row.id,
                    to: user.email.clone(),
                    tenant_name,
                    token: token.expose().to_owned(),
                };
                let kind = DeliveryKind::ResetLink;
                let delivery_id =
                    svc.record_mail(c, user.tenant_id, kind, &payload, Some(row.expires_at), true, now)?;
                let who = Some(user.id.to_string());
                Service::audit(c, &ctx2, user.tenant_id, who, Some(user.id), AuditKind::ResetLinkSent, json!({}))?;
                Ok(Ok((user, row.id, delivery_id)))
            })
            .await??;
        self.enqueue_or_undo(DeliveryJob { delivery_id }, move |c| {
            reset_tokens::delete(c, token_id)?;
            deliveries::finish(c, delivery_id, DeliveryState::Dropped, &Attempt::default(), now)
        })
        .await?;
        Ok(RecoveryStarted::EmailLink { email_masked: latchkey_core::email::mask(&user.email) })
    }

    /// `POST /api/v1/auth/2fa/reset`: uses an admin's reset link: removes the admin's
    /// enrollments, counters and blocks and ends the admin's sessions. Signs nobody in.
    ///
    /// Errors: `InvalidToken` for an unknown, used, voided or expired token.
    pub async fn reset_with_link(&self, ctx: &RequestCtx, token: &str) -> Result<()> {
        let hash = self.keys.token_hash(TokenPurpose::Reset, token);
        let ctx = ctx.clone();
        let svc = self.clone();
        self.store
            .write(move |c| {
                let now = ctx.now;
                let Some(row) = reset_tokens::live_by_hash(c, &hash, now)? else {
                    return Ok(Err(Error::InvalidToken));
                };
                users::lock(c, row.user_id)?;
                if !reset_tokens::mark_used(c, row.id, now)? {
                    return Ok(Err(Error::InvalidToken));
                }
                Service::reset_second_factor(c, row.user_id, now)?;
                let who = Some(row.user_id.to_string());
                Service::audit(c, &ctx, row.tenant_id, who, Some(row.user_id), AuditKind::ResetLinkUsed, json!({}))?;
                svc.notify(c, &ctx, row.tenant_id, Notice::ResetLinkUsed { user: row.user_id })?;
                Ok(Ok(()))
            })
            .await?
    }
}
