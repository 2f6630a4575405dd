//! Admin reviews: recovery requests and the audit log; and the operator's reset.

use latchkey_core::{AuditKind, RecoveryRequestId, UserId};
use latchkey_store::model::{AuditEvent, RecoveryRequest, RecoveryStatus};
use latchkey_store::repo::audit::AuditFilter;
use latchkey_store::repo::{Page, audit, recovery, tenants, users};
use latchkey_store::{DbConn, StoreError, StoreResult};
use serde_json::json;

use super::{Auth, Notice, RequestCtx, Service, UserView};
use crate::error::{Error, Result};

/// A recovery request with its user.
#[derive(Debug, Clone)]
pub struct RecoveryView {
    /// The request.
    pub request: RecoveryRequest,
    /// The requesting user.
    pub user: UserView,
}

impl Service {
    fn recovery_view(&self, conn: &mut DbConn, request: RecoveryRequest) -> StoreResult<RecoveryView> {
        let user = users::by_id(conn, request.tenant_id, request.user_id)?
            .ok_or(StoreError::Corrupt("request without user"))?;
        Ok(RecoveryView { user: self.user_view(conn, &user)?, request })
    }

    /// `GET /api/v1/recovery-requests` (admin): newest first, optionally of one status.
    pub async fn list_recovery_requests(
        &self,
        auth: &Auth,
        status: Option<RecoveryStatus>,
        after: Option<RecoveryRequestId>,
        limit: i64,
    ) -> Result<Vec<RecoveryView>> {
        Service::require_admin(auth)?;
        let tenant = auth.tenant.id;
        let svc = self.clone();
        Ok(self
            .store
            .run(move |c| {
                let after = after.map(|a| a.to_string());
                let list = recovery::list(c, tenant, status, Page { after: after.as_deref(), limit })?;
                list.into_iter().map(|r| svc.recovery_view(c, r)).collect()
            })
            .await?)
    }

    /// `POST /api/v1/recovery-requests/{id}/approve` ("Reset") or `…/dismiss` (admin).
    /// Approval resets the user's second factor (enrollments, counters, blocks, sessions,
    /// challenges); the next sign-in enrolls again.
    ///
    /// Errors: `Forbidden`, `NotFound` (also another tenant's), `RequestNotPending`.
    pub async fn decide_recovery(
        &self,
        ctx: &RequestCtx,
        auth: &Auth,
        id: RecoveryRequestId,
        approve: bool,
    ) -> Result<RecoveryView> {
        Service::require_admin(auth)?;
        let tenant = auth.tenant.id;
        let admin = auth.user.id;
        let svc = self.clone();
        let ctx = ctx.clone();
        self.store
            .write(move |c| {
                let Some(request) = recovery::by_id(c, tenant, id)? else {
                    return Ok(Err(Error::NotFound));
                };
                let Some(user) = users::lock_and_get(c, tenant, request.user_id)? else {
                    return Ok(Err(Error::NotFound));
                };
                let status = if approve { RecoveryStatus::Approved } else { RecoveryStatus::Dismissed };
                if !recovery::decide(c, id, status, admin, ctx.now)? {
                    return Ok(Err(Error::RequestNotPending));
                }
                let (kind, notice) = if approve {
                    Service::reset_second_factor(c, &ctx, &user)?;
                    (AuditKind::RecoveryApproved, Notice::RecoveryApproved { user: request.user_id })
                } else {
                    (AuditKind::RecoveryDismissed, Notice::RecoveryDismissed { user: request.user_id })
                };
                Service::audit(
                    c,
                    &ctx,
                    tenant,
                    Some(admin.to_string()),
                    Some(request.user_id),
                    kind,
                    json!({"request_id": id}),
                )?;
                svc.notify(c, &ctx, tenant, notice)?;
                let decided = recovery::by_id(c, tenant, id)?.ok_or(StoreError::Corrupt("request vanished"))?;
                Ok(Ok(svc.recovery_view(c, decided)?))
            })
            .await?
    }

    /// `GET /api/v1/audit-events` (admin): newest first, filtered.
    pub async fn audit_events(
        &self,
        auth: &Auth,
        filter: AuditFilter,
        after: Option<String>,
        limit: i64,
    ) -> Result<Vec<AuditEvent>> {
        Service::require_admin(auth)?;
        let tenant = auth.tenant.id;
        Ok(self.store.run(move |c| audit::list(c, tenant, &filter, Page { after: after.as_deref(), limit })).await?)
    }

    /// `POST /api/v1/tenants/{slug}/users/{id}/reset-2fa` (operator): recovers a user (e.g. a
    /// sole admin who lost both factors); audited as `operator_reset`.
    ///
    /// Errors: `NotFound` for an unknown tenant or user.
    pub async fn operator_reset(&self, ctx: &RequestCtx, slug: &str, user: UserId) -> Result<UserView> {
        let slug = slug.to_owned();
        let svc = self.clone();
        let ctx = ctx.clone();
        self.store
            .write(move |c| {
                let Some(tenant) = tenants::by_slug(c, &slug)? else {
                    return Ok(Err(Error::NotFound));
                };
                let Some(target) = users::by_id(c, tenant.id, user)? else {
                    return Ok(Err(Error::NotFound));
                };
                let Some(target) = users::lock_and_get(c, tenant.id, target.id)? else {
                    return Ok(Err(Error::NotFound));
                };
                Service::reset_second_factor(c, &ctx, &target)?;
                Service::audit(
                    c,
                    &ctx,
                    tenant.id,
                    Some("operator".into()),
                    Some(target.id),
                    AuditKind::OperatorReset,
                    json!({}),
                )?;
                Ok(Ok(svc.user_view(c, &target)?))
            })
            .await?
    }
}

impl Service {
    /// `POST /api/v1/agents/{id}/reset-2fa` (admin, a recent second factor while 2FA is on,
    /// never on oneself): resets the user's second factor with the effects of a recovery
    /// approval (DESIGN.md 5.8); audited `admin_reset`.
    ///
    /// Errors: `Forbidden` (not an admin, or oneself), `StepUpRequired`, `NotFound` (also
    /// another tenant's user).
    pub async fn admin_reset(&self, ctx: &RequestCtx, auth: &Auth, id: UserId) -> Result<UserView> {
        Service::require_admin(auth)?;
        if id == auth.user.id {
            return Err(Error::Forbidden);
        }
        self.require_step_up(auth, ctx.now)?;
        let svc = self.clone();
        let ctx = ctx.clone();
        let (tenant, admin) = (auth.tenant.id, auth.user.id);
        self.store
            .write(move |c| {
                let Some(target) = users::lock_and_get(c, tenant, id)? else {
                    return Ok(Err(Error::NotFound));
                };
                Service::reset_second_factor(c, &ctx, &target)?;
                Service::audit(
                    c,
                    &ctx,
                    tenant,
                    Some(admin.to_string()),
                    Some(target.id),
                    AuditKind::AdminReset,
                    json!({}),
                )?;
                Ok(Ok(svc.user_view(c, &target)?))
            })
            .await?
    }
}

/// Days a finished webhook delivery stays in its endpoint's delivery list.
pub const WEBHOOK_HISTORY_DAYS: i64 = 30;

/// What a housekeeping pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Expired sessions.
    pub sessions: usize,
    /// Challenges expired for longer than a day.
    pub challenges: usize,
    /// Email codes older than both their lifetime and the send window.
    pub email_codes: usize,
    /// Finished mail deliveries older than a day, webhook deliveries older than
    /// [`WEBHOOK_HISTORY_DAYS`].
    pub deliveries: usize,
    /// Password attempt logs with no attempt left in the window.
    pub signin_attempts: usize,
    /// Trusted devices expired for longer than a day.
    pub trusted_devices: usize,
    /// Passwordless sign-in ceremonies expired for longer than a day.
    pub passkey_ceremonies: usize,
}

impl Purged {
    fn counts(&self) -> [usize; 7] {
        [
            self.sessions,
            self.challenges,
            self.email_codes,
            self.deliveries,
            self.signin_attempts,
            self.trusted_devices,
            self.passkey_ceremonies,
        ]
    }

    /// The largest count of one table.
    fn largest(&self) -> usize {
        self.counts().into_iter().max().unwrap_or(0)
    }

    fn add(&mut self, round: &Purged) {
        self.sessions += round.sessions;
        self.challenges += round.challenges;
        self.email_codes += round.email_codes;
        self.deliveries += round.deliveries;
        self.signin_attempts += round.signin_attempts;
        self.trusted_devices += round.trusted_devices;
        self.passkey_ceremonies += round.passkey_ceremonies;
    }
}

impl Service {
    /// Deletes rows nothing can use any more: expired sessions, long-expired challenges,
    /// email codes that have left both their lifetime and the send window, old finished
    /// deliveries, password attempt logs whose attempts have all left the window, long-expired
    /// trusted devices. Safe to run from every process at any time.
    ///
    /// In rounds of at most `LATCHKEY_PURGE_BATCH` rows per table, each its own short
    /// statement, `LATCHKEY_PURGE_PAUSE_MS` apart, until a round finds less than a batch
    /// anywhere: a million expired rows never make one long delete whose WAL stalls the
    /// sign-ins committing meanwhile (issue 17's scale phase). Returns the totals.
    pub async fn purge(&self, now: chrono::DateTime<chrono::Utc>) -> Result<Purged> {
        let keep_codes = self.limits.email_otp_window.max(self.limits.email_otp_ttl).max(self.limits.email_otp_resend);
        let day = chrono::Duration::days(1);
        let window = self.limits.signin_window;
        let batch = i64::from(self.server.purge_batch.max(1)); // refused at 0 by the configuration
        let mut total = Purged::default();
        loop {
            let round = self
                .store
                .run(move |c| {
                    use latchkey_store::repo::{
                        challenges, deliveries, email_codes, sessions, signin, trusted_devices,
                    };
                    Ok(Purged {
                        sessions: sessions::purge_expired(c, now, batch)?
                            + latchkey_store::repo::handoff_codes::purge_expired(c, now, batch)?,
                        challenges: challenges::purge_expired(c, now - day, batch)?,
                        email_codes: email_codes::purge_before(c, now - keep_codes, batch)?,
                        deliveries: deliveries::purge_before(
                            c,
                            now - day,
                            now - chrono::Duration::days(WEBHOOK_HISTORY_DAYS),
                            batch,
                        )?,
                        signin_attempts: signin::purge_before(c, now - window, batch)?,
                        trusted_devices: trusted_devices::purge_expired(c, now - day, batch)?,
                        passkey_ceremonies: latchkey_store::repo::webauthn::purge_expired_ceremonies(
                            c,
                            now - day,
                            batch,
                        )?,
                    })
                })
                .await?;
            total.add(&round);
            // A table's count can reach twice the batch (two deletes share a field): any
            // count of a batch or more means there may be more.
            if i64::try_from(round.largest()).unwrap_or(i64::MAX) < batch {
                return Ok(total);
            }
            tokio::time::sleep(self.server.purge_pause).await;
        }
    }
}
