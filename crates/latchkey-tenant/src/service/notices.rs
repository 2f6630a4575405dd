//! Notices (DESIGN.md 5.6): mails that tell a user about a change to his security, and the
//! admins about a new recovery request. One call, inside the transaction of the change:
//!
//! ```ignore
//! svc.notify(c, &ctx, user.tenant_id, Notice::PasswordChanged { user: user.id })?;
//! ```
//!
//! [`Service::notify`] reads the tenant's `notices` setting and the recipients in that
//! transaction and records one sealed mail delivery per recipient; the worker's sweep queues
//! it once the transaction has committed (within `LATCHKEY_DELIVERY_SWEEP_MS`), so a notice
//! goes out exactly when its change happened, and survives a crash right after. The wording
//! lives in the mail crate's templates.

use chrono::{DateTime, Utc};
use latchkey_core::{DeliveryId, Method, Role, TenantId, UserId};
use latchkey_store::model::{Tenant, User};
use latchkey_store::repo::deliveries::{self, DeliveryKind, DeliveryState, NewMail};
use latchkey_store::repo::{tenants, users};
use latchkey_store::{DbConn, StoreError, StoreResult};

use super::{PendingNotices, RequestCtx, Service};
use crate::outbox::{DeliveryJob, MailPayload, NoticeEvent, NoticeMail, seal_payload};

/// A change that the user (or, for a recovery request, the tenant's admins) is told about.
/// Each variant names the user it is about; the notice goes to that user's current address
/// unless said otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The user enrolled a method (at sign-in, at enablement, or from the account).
    MethodEnrolled {
        /// The user.
        user: UserId,
        /// The method.
        method: Method,
    },
    /// The user removed a second factor (a method or a passkey).
    FactorRemoved {
        /// The user.
        user: UserId,
        /// What was removed, as the user knows it (`authenticator`, `email`, a passkey name).
        factor: String,
    },
    /// The user generated a new set of recovery codes.
    RecoveryCodesGenerated {
        /// The user.
        user: UserId,
        /// How many codes the set has.
        count: u32,
    },
    /// The user signed in with a recovery code.
    RecoveryCodeUsed {
        /// The user.
        user: UserId,
        /// Unused codes left.
        remaining: u32,
    },
    /// A device of the user was remembered (DESIGN.md 5.4).
    TrustedDeviceCreated {
        /// The user.
        user: UserId,
    },
    /// An admin approved the user's recovery request.
    RecoveryApproved {
        /// The requester.
        user: UserId,
    },
    /// An admin dismissed the user's recovery request.
    RecoveryDismissed {
        /// The requester.
        user: UserId,
    },
    /// The admin's reset link was used.
    ResetLinkUsed {
        /// The admin.
        user: UserId,
    },
    /// The user's password changed.
    PasswordChanged {
        /// The user.
        user: UserId,
    },
    /// The user's email address changed: the notice goes to the **old** address.
    EmailChanged {
        /// The user.
        user: UserId,
        /// The address before the change (the recipient).
        old_email: String,
        /// The address after it (shown masked).
        new_email: String,
    },
    /// An agent or supervisor asked for recovery: every admin of the tenant but the requester
    /// is told (group `recovery_requests`).
    RecoveryRequested {
        /// The requester.
        user: UserId,
    },
}

/// A notice mail sealed before its row exists ([`Service::sealed_self_notice`]).
pub(super) struct SealedNotice {
    /// The delivery's id (the payload is bound to it).
    pub id: DeliveryId,
    /// The sealed payload.
    pub payload: Vec<u8>,
    /// Until when the row counts as in flight.
    pub lease_until: DateTime<Utc>,
}

impl SealedNotice {
    /// The row to record, of `tenant`, due at `now`.
    pub(super) fn new_mail(&self, tenant: TenantId, now: DateTime<Utc>) -> NewMail<'_> {
        NewMail {
            id: self.id,
            tenant_id: tenant,
            kind: DeliveryKind::Notice,
            payload: &self.payload,
            expires_at: None,
            lease_until: self.lease_until,
            now,
        }
    }
}

/// The setting group of a notice (`notices.security` or `notices.recovery_requests`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeGroup {
    /// Changes to the recipient's own security.
    Security,
    /// New recovery requests, to admins.
    RecoveryRequests,
}

impl Notice {
    /// The group whose tenant setting turns this notice off.
    pub fn group(&self) -> NoticeGroup {
        match self {
            Notice::RecoveryRequested { .. } => NoticeGroup::RecoveryRequests,
            _ => NoticeGroup::Security,
        }
    }

    /// Whether the answer to the request that caused the notice waits until it has gone out
    /// ([`Service::deliver_notices`]). Every notice does, so that mail to one address comes in
    /// the order of what happened (the notice of an enrollment before the next code, the old
    /// address's notice of an email change before anything else), except the two that a
    /// completed sign-in writes — a recovery code used and a device remembered: they are
    /// pushed to the queue at once but the sign-in's answer does not wait for an SMTP round
    /// trip (issue 17: it halved the throughput of recovery-code sign-ins). The answer ends
    /// the sign-in, so nothing the same request caused can be mailed after them.
    pub fn answer_waits(&self) -> bool {
        !matches!(self, Notice::RecoveryCodeUsed { .. } | Notice::TrustedDeviceCreated { .. })
    }

    /// Whether tenant `t`'s settings send this notice (its group is on).
    pub fn is_on(&self, t: &Tenant) -> bool {
        match self.group() {
            NoticeGroup::Security => t.settings.notices.security,
            NoticeGroup::RecoveryRequests => t.settings.notices.recovery_requests,
        }
    }

    /// What the mail says, for a notice that goes to the user it is about; `None` for the two
    /// that go to someone else (a recovery request: the admins; an email change: the old
    /// address).
    fn event_for_self(&self) -> Option<NoticeEvent> {
        Some(match self {
            Notice::MethodEnrolled { method, .. } => NoticeEvent::MethodEnrolled { method: *method },
            Notice::FactorRemoved { factor, .. } => NoticeEvent::FactorRemoved { factor: factor.clone() },
            Notice::RecoveryCodesGenerated { count, .. } => NoticeEvent::RecoveryCodesGenerated { count: *count },
            Notice::RecoveryCodeUsed { remaining, .. } => NoticeEvent::RecoveryCodeUsed { remaining: *remaining },
            Notice::TrustedDeviceCreated { .. } => NoticeEvent::TrustedDeviceCreated,
            Notice::RecoveryApproved { .. } => NoticeEvent::RecoveryApproved,
            Notice::RecoveryDismissed { .. } => NoticeEvent::RecoveryDismissed,
            Notice::ResetLinkUsed { .. } => NoticeEvent::ResetLinkUsed,
            Notice::PasswordChanged { .. } => NoticeEvent::PasswordChanged,
            Notice::EmailChanged { .. } | Notice::RecoveryRequested { .. } => return None,
        })
    }

    /// The user the notice is about.
    pub fn user(&self) -> UserId {
        match self {
            Notice::MethodEnrolled { user, .. }
            | Notice::FactorRemoved { user, .. }
            | Notice::RecoveryCodesGenerated { user, .. }
            | Notice::RecoveryCodeUsed { user, .. }
            | Notice::TrustedDeviceCreated { user }
            | Notice::RecoveryApproved { user }
            | Notice::RecoveryDismissed { user }
            | Notice::ResetLinkUsed { user }
            | Notice::PasswordChanged { user }
            | Notice::EmailChanged { user, .. }
            | Notice::RecoveryRequested { user } => *user,
        }
    }
}

impl Service {
    /// Queues the notice of a change, inside the transaction that makes the change (DESIGN.md
    /// 5.6): nothing is sent when the tenant turned the notice's group off, when the user no
    /// longer exists, or (a recovery request) for an admin requester or a tenant with no other
    /// admin. Each recipient gets one mail delivery, sealed like every other (the recipient's
    /// address, the tenant's name, the time, the request's IP and user agent and what
    /// happened). The request's edge pushes them once it is done ([`Service::deliver_notices`]);
    /// should that never happen (a crash right after the commit), the sweep sends them within
    /// `LATCHKEY_DELIVERY_REQUEUE_MS`.
    ///
    /// Errors: database errors only (the caller's transaction then rolls back).
    pub fn notify(&self, conn: &mut DbConn, ctx: &RequestCtx, tenant: TenantId, notice: Notice) -> StoreResult<()> {
        let wait = notice.answer_waits();
        let ids = self.record_notice(conn, ctx, tenant, notice)?;
        ctx.notices.push(ids, wait);
        Ok(())
    }

    fn record_notice(
        &self,
        conn: &mut DbConn,
        ctx: &RequestCtx,
        tenant: TenantId,
        notice: Notice,
    ) -> StoreResult<Vec<DeliveryId>> {
        let Some(t) = tenants::by_id(conn, tenant)? else { return Ok(Vec::new()) };
        if !notice.is_on(&t) {
            return Ok(Vec::new());
        }
        let Some(user) = users::by_id(conn, tenant, notice.user())? else { return Ok(Vec::new()) };
        let (recipients, what): (Vec<(String, String)>, NoticeEvent) = match notice {
            Notice::RecoveryRequested { .. } => {
                if user.role == Role::Admin {
                    return Ok(Vec::new());
                }
                let review_url = format!("{}/ui/{}/agents?tab=requested", self.server.public_url, t.slug);
                let admins = users::admins(conn, tenant)?;
                let to = admins.into_iter().filter(|a| a.id != user.id).map(|a| (a.email, a.name)).collect();
                let what = NoticeEvent::RecoveryRequested {
                    requester_name: user.name.clone(),
                    requester_email: user.email.clone(),
                    requester_role: user.role,
                    review_url,
                };
                (to, what)
            }
            Notice::EmailChanged { old_email, new_email, .. } => (
                vec![(old_email, user.name.clone())],
                NoticeEvent::EmailChanged { new_email_masked: latchkey_core::email::mask(&new_email) },
            ),
            other => {
                let Some(what) = other.event_for_self() else { return Ok(Vec::new()) };
                (vec![(user.email.clone(), user.name.clone())], what)
            }
        };
        let mut ids = Vec::with_capacity(recipients.len());
        for (to, recipient_name) in recipients {
            let mail = self.notice_mail(ctx, &t, to, recipient_name, what.clone());
            let kind = DeliveryKind::Notice;
            ids.push(self.record_mail(conn, tenant, kind, &MailPayload::Notice(mail), None, true, ctx.now)?);
        }
        Ok(ids)
    }

    /// The notice mail of `what` to `to` (named `recipient_name`), as of the request `ctx`.
    fn notice_mail(
        &self,
        ctx: &RequestCtx,
        t: &Tenant,
        to: String,
        recipient_name: String,
        what: NoticeEvent,
    ) -> NoticeMail {
        NoticeMail {
            to,
            recipient_name,
            tenant_name: t.name.clone(),
            tenant_slug: t.slug.clone(),
            at: ctx.now,
            ip: ctx.ip.clone(),
            user_agent: ctx.user_agent.clone(),
            what,
        }
    }

    /// The sealed notice `notice` to `user` himself, ready to be recorded by another
    /// statement (the one-statement sign-in, `sign_in_at_once`) instead of [`Service::notify`]:
    /// `None` when the tenant turned its group off or the notice goes to someone else (a
    /// recovery request, an email change). The mail counts as pushed by the request (its lease
    /// runs `LATCHKEY_DELIVERY_REQUEUE_MS`); the caller pushes its id once the statement has
    /// committed, with [`Notice::answer_waits`].
    pub(super) fn sealed_self_notice(
        &self,
        ctx: &RequestCtx,
        t: &Tenant,
        user: &User,
        notice: &Notice,
    ) -> StoreResult<Option<SealedNotice>> {
        if !notice.is_on(t) {
            return Ok(None);
        }
        let Some(what) = notice.event_for_self() else { return Ok(None) };
        let mail = self.notice_mail(ctx, t, user.email.clone(), user.name.clone(), what);
        let id = DeliveryId::new();
        let payload = seal_payload(&self.keys, id, &MailPayload::Notice(mail))
            .map_err(|_| StoreError::Corrupt("mail payload"))?;
        Ok(Some(SealedNotice { id, payload, lease_until: ctx.now + self.server.delivery_requeue }))
    }

    /// Delivers the notices a request recorded (its [`RequestCtx::notices`]), once its
    /// use-cases are done (their transactions committed): pushes them to the queue and waits,
    /// at most `LATCHKEY_NOTICE_WAIT_MS`, until the worker has finished those whose
    /// [`Notice::answer_waits`], so that an answer never
    /// comes before the notices of what it did (an email change: the old address hears of it
    /// before the admin's confirmation, DESIGN.md 5.6). A queue that refuses leaves them to
    /// the sweep; the wait only ever delays the answer. Call at the edge, after the use-case.
    pub async fn deliver_notices(&self, pending: &PendingNotices) {
        let ids = pending.take();
        if ids.is_empty() {
            return;
        }
        for (id, _) in &ids {
            if let Err(e) = self.outbox.enqueue(DeliveryJob { delivery_id: *id }).await {
                tracing::warn!(error = %e, "a notice is left to the delivery sweep");
            }
        }
        let deadline = tokio::time::Instant::now() + self.server.notice_wait;
        let mut left: Vec<DeliveryId> = ids.into_iter().filter(|(_, wait)| *wait).map(|(id, _)| id).collect();
        while !left.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            let check = left.clone();
            let done = self
                .store
                .run(move |c| {
                    let mut done = Vec::new();
                    for id in check {
                        let finished = deliveries::get(c, id)?
                            .is_none_or(|d| !matches!(d.state, DeliveryState::Pending | DeliveryState::Sending));
                        if finished {
                            done.push(id);
                        }
                    }
                    Ok(done)
                })
                .await;
            match done {
                Ok(done) => left.retain(|id| !done.contains(id)),
                Err(_) => break,
            }
        }
    }

    /// Records a mail delivery of `payload` (sealed under the server key, bound to the new
    /// row), due at `now`. `pushed`: the caller queues it right after the commit, so the row
    /// counts as in flight for `LATCHKEY_DELIVERY_REQUEUE_MS`; otherwise the sweep queues it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn record_mail(
        &self,
        conn: &mut DbConn,
        tenant: TenantId,
        kind: DeliveryKind,
        payload: &MailPayload,
        expires_at: Option<DateTime<Utc>>,
        pushed: bool,
        now: DateTime<Utc>,
    ) -> StoreResult<DeliveryId> {
        let id = DeliveryId::new();
        let sealed = seal_payload(&self.keys, id, payload).map_err(|_| StoreError::Corrupt("mail payload"))?;
        let lease_until = if pushed { now + self.server.delivery_requeue } else { now };
        deliveries::insert_mail(
            conn,
            &NewMail { id, tenant_id: tenant, kind, payload: &sealed, expires_at, lease_until, now },
        )?;
        Ok(id)
    }
}
