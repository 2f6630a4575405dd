//! "Need recovery" on a challenge: agents and supervisors get a request for an admin to
//! decide; admins get a reset link by email (see `reset_link`).

use latchkey_core::{AuditKind, RecoveryRequestId, Role};
use latchkey_store::model::{ChallengePurpose, RecoveryRequest, RecoveryStatus};
use latchkey_store::repo::recovery;
use serde_json::json;

use super::admin::RecoveryView;
use super::{Notice, RequestCtx, Service};
use crate::error::{Error, Result};

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

impl Service {
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
}
