//! Emailed codes: sending one for a challenge under the send rules (cooldown, sliding window,
//! block; one budget for every mail a user can make us send), and queueing it.

use chrono::{DateTime, Utc};
use latchkey_core::otp::{SendRefusal, decide_send, generate_email_code, seconds_until};
use latchkey_core::{EmailCodeId, Method, UserId};
use latchkey_store::model::{ChallengePurpose, EmailCode};
use latchkey_store::repo::deliveries::{self, Attempt, DeliveryKind, DeliveryState};
use latchkey_store::repo::{email_codes, reset_tokens};
use latchkey_store::{DbConn, StoreResult};

use super::challenge::Located;
use super::{RequestCtx, Service};
use crate::error::{Error, Result};
use crate::outbox::{DeliveryJob, MailPayload};

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

pub(super) fn send_refusal(refusal: SendRefusal, now: DateTime<Utc>) -> Error {
    match refusal {
        SendRefusal::TooSoon { retry_at } => Error::ResendTooSoon { retry_after: seconds_until(retry_at, now) },
        SendRefusal::LimitReached { retry_at } => Error::SendLimitReached { retry_after: seconds_until(retry_at, now) },
    }
}

impl Service {
    /// When `user` was last sent a mail he can make us send (email codes of every kind and
    /// reset links), within the span the send rules look at: one cooldown and one window for
    /// all of them (DESIGN.md "Recovery"). Call under the user's lock.
    pub(super) fn mails_sent(
        &self,
        conn: &mut DbConn,
        user: UserId,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<DateTime<Utc>>> {
        let since = now - self.limits.email_otp_window.max(self.limits.email_otp_resend);
        let mut sent = email_codes::sent_since(conn, user, since)?;
        sent.extend(reset_tokens::sent_since(conn, user, since)?);
        Ok(sent)
    }

    /// Queues `job`; if the queue refuses it, `undo` removes what the send recorded (so a
    /// refused send does not count) and the answer is `QueueUnavailable`.
    pub(super) async fn enqueue_or_undo<F>(&self, job: DeliveryJob, undo: F) -> Result<()>
    where
        F: FnOnce(&mut DbConn) -> StoreResult<()> + Send + 'static,
    {
        let Err(e) = self.outbox.enqueue(job).await else { return Ok(()) };
        tracing::error!(error = %e, "could not queue an email");
        self.store.run(undo).await?;
        Err(Error::QueueUnavailable)
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
                let sent = svc.mails_sent(c, user.id, now)?;
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
}
