//! Tenant 2FA settings (admin): read, enable with a first enrollment, disable, methods per
//! role.

use latchkey_core::settings::{RelyingParty, SettingsChange, TenantSettings};
use latchkey_core::totp::TotpSecret;
use latchkey_core::{AuditKind, Method, MethodSet, Role, SecretToken, TenantId};
use latchkey_store::model::{ChallengePurpose, NextAction, Tenant, TwoFactorPolicy};
use latchkey_store::repo::{challenges, enrollments, sessions, tenants, trusted_devices, users};
use latchkey_store::{DbConn, StoreResult};
use serde_json::json;
use zeroize::Zeroizing;

use super::challenge::Located;
use super::factor::{Checked, Proof, TotpSetup, pending_aad, totp_setup};
use super::{Auth, RequestCtx, Service};
use crate::error::{Error, Result};

/// The answer to an enablement: a setup token and what the chosen method needs.
#[derive(Debug, Clone)]
pub struct EnableSetup {
    /// The `setup_token` (stored hashed, bound to the admin's session, single-use).
    pub setup_token: SecretToken,
    /// The chosen method.
    pub method: Method,
    /// Authenticator setup material, unless the admin already has an authenticator (then a
    /// code from it confirms).
    pub totp: Option<TotpSetup>,
    /// Where the email code went, masked (email method).
    pub email_masked: Option<String>,
}

/// A tenant's settings as `GET /api/v1/settings/two-factor` shows them: the policy, the
/// version-2 settings, and the relying party in force (the tenant's own or the server's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsView {
    /// The toggle and the methods per role.
    pub policy: TwoFactorPolicy,
    /// The version-2 settings as stored.
    pub settings: TenantSettings,
    /// The relying party in force.
    pub relying_party: RelyingParty,
}

/// New method lists per role; `None` leaves a role as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct MethodChanges {
    /// Admins.
    pub admin: Option<MethodSet>,
    /// Supervisors.
    pub supervisor: Option<MethodSet>,
    /// Agents.
    pub agent: Option<MethodSet>,
}

impl Service {
    /// `GET /api/v1/settings/two-factor` (admin).
    pub fn two_factor_settings(&self, auth: &Auth) -> Result<SettingsView> {
        Service::require_admin(auth)?;
        Ok(self.settings_view(&auth.tenant))
    }

    /// The settings of `tenant` with the relying party in force.
    pub fn settings_view(&self, tenant: &Tenant) -> SettingsView {
        SettingsView {
            policy: tenant.policy,
            settings: tenant.settings.clone(),
            relying_party: self.relying_party(tenant),
        }
    }

    /// The relying party of `tenant`: its own, else the server's (DESIGN.md 5.1).
    pub fn relying_party(&self, tenant: &Tenant) -> RelyingParty {
        tenant.settings.webauthn.clone().unwrap_or_else(|| self.server.relying_party.clone())
    }

    /// `PATCH /api/v1/settings/two-factor` (admin; a recent second factor while 2FA is on):
    /// changes any of the version-2 settings (DESIGN.md 5.8), checked against the server's
    /// bounds, in one transaction under the tenant's lock; audited `settings_changed` with the
    /// names of the changed settings. An empty change answers the settings unchanged.
    ///
    /// Errors: `Forbidden`, `StepUpRequired`, `InvalidRequest` (a value out of bounds, a bad
    /// relying party or return URL).
    pub async fn update_settings(&self, ctx: &RequestCtx, auth: &Auth, change: SettingsChange) -> Result<SettingsView> {
        Service::require_admin(auth)?;
        self.require_step_up(auth, ctx.now)?;
        // Checked before the transaction, for the answer; checked again on the row read there.
        change.apply(&auth.tenant.settings, &self.server.bounds).map_err(|e| Error::InvalidRequest(e.0))?;
        let fields = change.fields();
        if fields.is_empty() {
            return Ok(self.settings_view(&auth.tenant));
        }
        let tenant_id = auth.tenant.id;
        let actor = Some(auth.user.id.to_string());
        let bounds = self.server.bounds;
        let ctx2 = ctx.clone();
        let tenant = self
            .store
            .write(move |c| {
                users::lock_tenant(c, tenant_id)?;
                let Some(mut tenant) = tenants::by_id(c, tenant_id)? else {
                    return Ok(Err(Error::NotFound));
                };
                let next = match change.apply(&tenant.settings, &bounds) {
                    Ok(next) => next,
                    Err(e) => return Ok(Err(Error::InvalidRequest(e.0))),
                };
                for role in Role::ALL {
                    if tenant.settings.remember_device_days.get(role) > 0 && next.remember_device_days.get(role) == 0 {
                        Service::revoke_tenant_devices(c, &ctx2, tenant_id, Some(role), "remember_device_off")?;
                    }
                }
                tenants::set_settings(c, tenant_id, &next, ctx2.now)?;
                Service::audit(
                    c,
                    &ctx2,
                    tenant_id,
                    actor,
                    None,
                    AuditKind::SettingsChanged,
                    json!({"changed": fields}),
                )?;
                tenant.settings = next;
                Ok(Ok(tenant))
            })
            .await??;
        self.registry.invalidate(tenant_id);
        Ok(self.settings_view(&tenant))
    }

    /// `POST /api/v1/settings/two-factor/enable`: checks the admin's password, then opens a
    /// setup bound to the admin's session: a new authenticator secret (or, when the admin
    /// already has one, a request for its code), or an emailed code.
    ///
    /// Errors: `Forbidden`, `AlreadyEnabled`, `MethodNotAllowed` (not allowed to admins),
    /// `InvalidPassword`, `RateLimited`, and the email send errors.
    pub async fn enable(&self, ctx: &RequestCtx, auth: &Auth, password: &str, method: Method) -> Result<EnableSetup> {
        Service::require_admin(auth)?;
        if auth.tenant.policy.enabled {
            return Err(Error::AlreadyEnabled);
        }
        // Enabling is confirmed with a code (DESIGN.md section 1): an authenticator or email.
        if !auth.tenant.policy.admin.contains(method) || method == Method::Webauthn {
            return Err(Error::MethodNotAllowed);
        }
        self.confirm_password(ctx, &auth.user, password).await?;
        let svc = self.clone();
        let user = auth.user.clone();
        let session_id = auth.session.id;
        let now = ctx.now;
        let (token, challenge, secret) = self
            .store
            .write(move |c| {
                users::lock(c, user.id)?;
                let enrolled = enrollments::methods_of(c, user.id)?;
                let next = if enrolled.contains(method) { NextAction::Verify } else { NextAction::Enroll };
                challenges::end_for_user(c, user.id, None, now)?;
                let (token, mut challenge) = svc.open_challenge(
                    c,
                    &user,
                    ChallengePurpose::Enable,
                    next,
                    MethodSet::EMPTY.with(method),
                    Some(session_id),
                    now,
                )?;
                let mut secret = None;
                if method == Method::Authenticator && next == NextAction::Enroll {
                    let fresh = TotpSecret::generate();
                    let sealed = svc.keys.seal(fresh.as_bytes(), &pending_aad(&challenge));
                    challenges::set_pending_secret(c, challenge.id, &sealed)?;
                    challenge.pending_secret = Some(sealed);
                    secret = Some(fresh);
                }
                Ok((token, challenge, secret))
            })
            .await?;
        let mut setup = EnableSetup { setup_token: token, method, totp: None, email_masked: None };
        match method {
            Method::Authenticator => {
                if let Some(secret) = secret {
                    setup.totp = Some(totp_setup(&secret, &auth.tenant, &auth.user)?);
                }
            }
            Method::Email => {
                let loc = Located { challenge, tenant: auth.tenant.clone(), user: auth.user.clone() };
                let sent = self.send_email_code(ctx, loc, || Error::InvalidSetupToken).await?;
                setup.email_masked = Some(sent.email_masked);
            }
            Method::Webauthn => return Err(Error::MethodNotAllowed),
        }
        Ok(setup)
    }

    /// `POST /api/v1/settings/two-factor/enable/confirm`: a code of the chosen method turns
    /// 2FA on, enrolls the admin, ends every other session of the tenant and counts as a
    /// second-factor verification of the admin's current session.
    ///
    /// Errors: `Forbidden`, `InvalidSetupToken` (unknown, expired, used, or another
    /// session's), `InvalidCode`, `CodeExpired`, `OtpBlocked`.
    pub async fn enable_confirm(&self, ctx: &RequestCtx, auth: &Auth, setup_token: &str, code: &str) -> Result<()> {
        Service::require_admin(auth)?;
        let loc = self.locate(setup_token, ChallengePurpose::Enable, ctx.now, || Error::InvalidSetupToken).await?;
        if loc.challenge.session_id != Some(auth.session.id) || loc.user.id != auth.user.id {
            return Err(Error::InvalidSetupToken);
        }
        let method = loc.challenge.methods.to_vec().first().copied().ok_or(Error::InvalidSetupToken)?;
        let svc = self.clone();
        let ctx2 = ctx.clone();
        let session_id = auth.session.id;
        let code = Zeroizing::new(code.to_owned());
        let tenant_id = auth.tenant.id;
        self.store
            .write(move |c| {
                let ctx = ctx2;
                let now = ctx.now;
                // The lock order: the tenant (its toggle changes here), then the user.
                users::lock_tenant(c, tenant_id)?;
                let Some((user, ch)) = Service::reread(c, &loc, now)? else {
                    return Ok(Err(Error::InvalidSetupToken));
                };
                if let Some(e) = svc.blocked(&user, method.as_str(), now) {
                    return Ok(Err(e));
                }
                let who = Some(user.id.to_string());
                match svc.check_proof(c, Some(&ch), &user, method, &Proof::Code(&code), now)? {
                    Checked::Accepted { enroll, .. } => svc.enroll_accepted(c, &ctx, &user, Some(ch.id), enroll)?,
                    Checked::Replayed => return Ok(Err(svc.on_replay(&user, method.as_str(), now))),
                    Checked::Wrong { expired } => {
                        return Ok(Err(svc.on_failure(c, &ctx, &user, method.as_str(), expired)?));
                    }
                    Checked::CounterRegressed { .. } => {
                        return Ok(Err(svc.on_failure(c, &ctx, &user, method.as_str(), false)?));
                    }
                    Checked::NotEnrolled => return Ok(Err(Error::InvalidSetupToken)),
                }
                tenants::set_enabled(c, tenant_id, true, now)?;
                challenges::end_for_tenant(c, tenant_id, None, now)?;
                sessions::delete_for_tenant(c, tenant_id, Some(session_id))?;
                sessions::mark_second_factor(c, session_id, now)?;
                users::set_lockout(c, user.id, Default::default())?;
                users::set_preferred(c, user.id, Some(method))?;
                svc.metrics.otp_verifications.with_label_values(&[method.as_str(), "success"]).inc();
                Service::audit(c, &ctx, tenant_id, who, None, AuditKind::TwoFactorEnabled, json!({"method": method}))?;
                Ok(Ok(()))
            })
            .await??;
        self.registry.invalidate(tenant_id);
        Ok(())
    }

    /// `POST /api/v1/settings/two-factor/disable`: with the password and a recent second
    /// factor, turns 2FA off and voids open challenges. Enrollments are kept. Disabling an
    /// already disabled tenant succeeds.
    ///
    /// Errors: `Forbidden`, `StepUpRequired`, `InvalidPassword`, `RateLimited`.
    pub async fn disable(&self, ctx: &RequestCtx, auth: &Auth, password: &str) -> Result<()> {
        Service::require_admin(auth)?;
        if !auth.tenant.policy.enabled {
            return Ok(());
        }
        self.require_step_up(auth, ctx.now)?;
        self.confirm_password(ctx, &auth.user, password).await?;
        let tenant_id = auth.tenant.id;
        let actor = Some(auth.user.id.to_string());
        let ctx2 = ctx.clone();
        self.store
            .write(move |c| {
                users::lock_tenant(c, tenant_id)?;
                tenants::set_enabled(c, tenant_id, false, ctx2.now)?;
                challenges::end_for_tenant(c, tenant_id, None, ctx2.now)?;
                Service::revoke_tenant_devices(c, &ctx2, tenant_id, None, "two_factor_disabled")?;
                Service::audit(c, &ctx2, tenant_id, actor, None, AuditKind::TwoFactorDisabled, json!({}))
            })
            .await?;
        self.registry.invalidate(tenant_id);
        Ok(())
    }

    /// `PUT /api/v1/settings/two-factor/methods`: sets the methods allowed per role (each a
    /// non-empty set), with a recent second factor while 2FA is on.
    ///
    /// Errors: `Forbidden`, `StepUpRequired`, `InvalidRequest` (an empty set).
    pub async fn set_methods(&self, ctx: &RequestCtx, auth: &Auth, changes: MethodChanges) -> Result<SettingsView> {
        Service::require_admin(auth)?;
        self.require_step_up(auth, ctx.now)?;
        if [changes.admin, changes.supervisor, changes.agent].iter().flatten().any(|m| m.is_empty()) {
            return Err(Error::InvalidRequest("each role needs at least one method".into()));
        }
        let tenant_id = auth.tenant.id;
        let actor = Some(auth.user.id.to_string());
        let ctx2 = ctx.clone();
        let tenant = self
            .store
            .write(move |c| {
                users::lock_tenant(c, tenant_id)?;
                let Some(mut tenant) = tenants::by_id(c, tenant_id)? else {
                    return Ok(Err(Error::NotFound));
                };
                let policy = &mut tenant.policy;
                policy.admin = changes.admin.unwrap_or(policy.admin);
                policy.supervisor = changes.supervisor.unwrap_or(policy.supervisor);
                policy.agent = changes.agent.unwrap_or(policy.agent);
                tenants::set_methods(c, tenant_id, policy, ctx2.now)?;
                let detail = json!({
                    "admin": policy.admin.to_vec(),
                    "supervisor": policy.supervisor.to_vec(),
                    "agent": policy.agent.to_vec(),
                });
                Service::audit(c, &ctx2, tenant_id, actor, None, AuditKind::MethodsChanged, detail)?;
                Ok(Ok(tenant))
            })
            .await??;
        self.registry.invalidate(tenant_id);
        Ok(self.settings_view(&tenant))
    }
}

impl Service {
    /// Revokes the trusted devices of every user of `tenant` (of `role` only, when given):
    /// disabling 2FA, or a role's `remember_device_days` lowered to 0 (DESIGN.md 5.4); audited
    /// once, `trusted_device_revoked` with the count, when there were any. Revoked devices
    /// stay revoked when the days are raised again.
    fn revoke_tenant_devices(
        conn: &mut DbConn,
        ctx: &RequestCtx,
        tenant: TenantId,
        role: Option<Role>,
        reason: &str,
    ) -> StoreResult<()> {
        let n = trusted_devices::revoke_for_tenant(conn, tenant, role, ctx.now)?;
        if n == 0 {
            return Ok(());
        }
        let detail = json!({"reason": reason, "role": role, "count": n});
        Service::audit(conn, ctx, tenant, None, None, AuditKind::TrustedDeviceRevoked, detail)
    }
}
