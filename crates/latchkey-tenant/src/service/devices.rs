//! Trusted devices (DESIGN.md 5.4): listing and revoking them, by the user and by an admin.
//! They are remembered at verification (`verify.rs`), honoured at sign-in (`signin.rs`), and
//! revoked by every event 5.4 names ([`Service::revoke_devices`] and the tenant-wide
//! revocations of the settings).

use latchkey_core::{AuditKind, TrustedDeviceId, UserId};
use latchkey_store::model::TrustedDevice;
use latchkey_store::repo::{trusted_devices, users};
use serde_json::json;

use super::{Auth, RequestCtx, Service};
use crate::error::{Error, Result};

impl Service {
    /// `GET /api/v1/me/trusted-devices`: the user's live devices, oldest first.
    pub async fn trusted_devices(&self, ctx: &RequestCtx, auth: &Auth) -> Result<Vec<TrustedDevice>> {
        let (user, now) = (auth.user.id, ctx.now);
        Ok(self.store.run(move |c| trusted_devices::live_for_user(c, user, now)).await?)
    }

    /// `DELETE /api/v1/me/trusted-devices/{id}`: revokes one of the user's devices; audited
    /// `trusted_device_revoked`.
    ///
    /// Errors: `NotFound` (unknown, another user's, or already revoked).
    pub async fn revoke_trusted_device(&self, ctx: &RequestCtx, auth: &Auth, id: TrustedDeviceId) -> Result<()> {
        let user = auth.user.clone();
        let ctx = ctx.clone();
        self.store
            .write(move |c| {
                users::lock(c, user.id)?;
                if !trusted_devices::revoke(c, user.id, id, ctx.now)? {
                    return Ok(Err(Error::NotFound));
                }
                let who = Some(user.id.to_string());
                let detail = json!({"device_id": id, "reason": "revoked"});
                Service::audit(c, &ctx, user.tenant_id, who, Some(user.id), AuditKind::TrustedDeviceRevoked, detail)?;
                Ok(Ok(()))
            })
            .await?
    }

    /// `DELETE /api/v1/me/trusted-devices`: revokes all of the user's devices.
    pub async fn revoke_own_devices(&self, ctx: &RequestCtx, auth: &Auth) -> Result<()> {
        let user = auth.user.clone();
        let ctx = ctx.clone();
        self.store
            .write(move |c| {
                users::lock(c, user.id)?;
                Service::revoke_devices(c, &ctx, &user, "revoked")
            })
            .await?;
        Ok(())
    }

    /// `DELETE /api/v1/agents/{id}/trusted-devices` (admin): revokes all devices of a user of
    /// the tenant.
    ///
    /// Errors: `Forbidden`, `NotFound` (also another tenant's user).
    pub async fn revoke_user_devices(&self, ctx: &RequestCtx, auth: &Auth, id: UserId) -> Result<()> {
        Service::require_admin(auth)?;
        let tenant = auth.tenant.id;
        let ctx = ctx.clone();
        self.store
            .write(move |c| {
                let Some(user) = users::lock_and_get(c, tenant, id)? else {
                    return Ok(Err(Error::NotFound));
                };
                Service::revoke_devices(c, &ctx, &user, "admin")?;
                Ok(Ok(()))
            })
            .await?
    }
}
