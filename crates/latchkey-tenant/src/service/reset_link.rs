//! An admin's reset link: sent by email under the shared send budget, used once to reset
//! the admin's second factor (DESIGN.md "Recovery").

use latchkey_core::crypto::TokenPurpose;
use latchkey_core::otp::decide_send;
use latchkey_core::{AuditKind, ResetTokenId, Role, SecretToken};
use latchkey_store::model::ResetToken;
use latchkey_store::repo::deliveries::{self, Attempt, DeliveryKind, DeliveryState};
use latchkey_store::repo::{reset_tokens, users};
use serde_json::json;

use super::challenge::Located;
use super::email_code::send_refusal;
use super::recovery::RecoveryStarted;
use super::{Notice, RequestCtx, Service};
use crate::error::{Error, Result};
use crate::outbox::{DeliveryJob, MailPayload};

impl Service {
    pub(super) async fn send_reset_link(&self, ctx: &RequestCtx, loc: Located) -> Result<RecoveryStarted> {
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
                let sent = svc.mails_sent(c, user.id, now)?;
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
        let hashes = self.keys.token_hashes(TokenPurpose::Reset, token);
        let ctx = ctx.clone();
        let svc = self.clone();
        self.store
            .write(move |c| {
                let now = ctx.now;
                let mut row = None;
                for hash in &hashes {
                    row = reset_tokens::live_by_hash(c, hash, now)?;
                    if row.is_some() {
                        break;
                    }
                }
                let Some(row) = row else {
                    return Ok(Err(Error::InvalidToken));
                };
                // A link works only while its user is still an admin (DESIGN.md "Accounts").
                let Some(user) = users::lock_and_get(c, row.tenant_id, row.user_id)?.filter(|u| u.role == Role::Admin)
                else {
                    return Ok(Err(Error::InvalidToken));
                };
                if !reset_tokens::mark_used(c, row.id, now)? {
                    return Ok(Err(Error::InvalidToken));
                }
                Service::reset_second_factor(c, &ctx, &user)?;
                let who = Some(row.user_id.to_string());
                Service::audit(c, &ctx, row.tenant_id, who, Some(row.user_id), AuditKind::ResetLinkUsed, json!({}))?;
                svc.notify(c, &ctx, row.tenant_id, Notice::ResetLinkUsed { user: row.user_id })?;
                Ok(Ok(()))
            })
            .await?
    }
}
