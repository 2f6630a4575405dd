//! Accounts: tenants (operator), the signed-in user's own profile and password, and user
//! management by admins.

use latchkey_core::{AuditKind, Role, SessionId, TenantId, UserId};
use latchkey_store::model::{Tenant, TwoFactorPolicy, User};
use latchkey_store::repo::{
    Page, challenges, email_codes, enrollments, recovery, reset_tokens, sessions, tenants, users,
};
use latchkey_store::{DbConn, StoreError, StoreResult};
use serde_json::json;

use super::{Auth, Notice, RequestCtx, Service, UserView, check_new_password, clean_email, clean_name};
use crate::error::{Error, Result};

/// A user to create.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Email address (normalised on the way in).
    pub email: String,
    /// Display name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Initial password.
    pub password: String,
}

/// Changes to a user; `None` leaves a field as it is.
#[derive(Clone, Default)]
pub struct UserChanges {
    /// New email address.
    pub email: Option<String>,
    /// New display name.
    pub name: Option<String>,
    /// New role.
    pub role: Option<Role>,
    /// The acting admin's password: required when the admin changes their own email here,
    /// as on `PATCH /api/v1/me`.
    pub password: Option<String>,
}

impl std::fmt::Debug for UserChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserChanges")
            .field("email", &self.email)
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

fn conflict_as(e: StoreError, err: Error) -> Error {
    if e.is_conflict() { err } else { e.into() }
}

/// Checks a tenant slug: 1 to 63 lower-case letters, digits and inner hyphens.
pub fn check_slug(slug: &str) -> Result<()> {
    let ok = !slug.is_empty()
        && slug.len() <= 63
        && slug.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !slug.starts_with('-')
        && !slug.ends_with('-');
    if ok { Ok(()) } else { Err(Error::InvalidRequest("slug must be 1 to 63 of a-z, 0-9 and inner hyphens".into())) }
}

impl Service {
    /// `POST /api/v1/tenants` (operator): a tenant (2FA off, both methods allowed) and its
    /// first admin.
    ///
    /// Errors: `InvalidRequest`, `TenantExists`.
    pub async fn create_tenant(
        &self,
        ctx: &RequestCtx,
        slug: &str,
        name: &str,
        admin: NewUser,
    ) -> Result<(Tenant, UserView)> {
        check_slug(slug)?;
        let name = clean_name(name)?;
        let email = clean_email(&admin.email)?;
        let admin_name = clean_name(&admin.name)?;
        check_new_password(&admin.password)?;
        let hash = self.hash_password(&admin.password).await?;
        let now = ctx.now;
        let tenant = Tenant {
            id: TenantId::new(),
            slug: slug.to_owned(),
            name,
            policy: TwoFactorPolicy::default(),
            settings: Default::default(),
            created_at: now,
        };
        let user = User {
            id: UserId::new(),
            tenant_id: tenant.id,
            email,
            name: admin_name,
            role: Role::Admin,
            password_hash: hash,
            preferred: None,
            lockout: Default::default(),
            created_at: now,
            enroll_asked_at: None,
            preferred_chosen: false,
        };
        let ctx = ctx.clone();
        let (t, u) = (tenant.clone(), user.clone());
        self.store
            .write(move |c| {
                tenants::insert(c, &t)?;
                users::insert(c, &u)?;
                Service::audit(
                    c,
                    &ctx,
                    t.id,
                    Some("operator".into()),
                    Some(u.id),
                    AuditKind::AgentCreated,
                    json!({"role": "admin"}),
                )
            })
            .await
            .map_err(|e| conflict_as(e, Error::TenantExists))?;
        Ok((tenant, UserView::new(&user, Default::default())))
    }

    /// `GET /api/v1/me`.
    pub async fn me(&self, auth: &Auth) -> Result<UserView> {
        let svc = self.clone();
        let user = auth.user.clone();
        Ok(self.store.run(move |c| svc.user_view(c, &user)).await?)
    }

    /// Changes `target`'s email inside a transaction holding the tenant lock: ends the user's
    /// sessions (except `keep`), challenges, codes and reset links, audits it and tells the
    /// old address.
    fn change_email(
        &self,
        conn: &mut DbConn,
        ctx: &RequestCtx,
        actor: UserId,
        target: &User,
        email: &str,
        keep: Option<SessionId>,
    ) -> StoreResult<()> {
        let now = ctx.now;
        users::update_profile(conn, target.id, None, Some(email), None, now)?;
        sessions::delete_for_user(conn, target.id, keep)?;
        challenges::end_for_user(conn, target.id, None, now)?;
        email_codes::void_for_user(conn, target.id, now)?;
        reset_tokens::void_for_user(conn, target.id, now)?;
        Service::revoke_devices(conn, ctx, target, "email_changed")?;
        let detail =
            json!({"from": latchkey_core::email::mask(&target.email), "to": latchkey_core::email::mask(email)});
        Service::audit(
            conn,
            ctx,
            target.tenant_id,
            Some(actor.to_string()),
            Some(target.id),
            AuditKind::EmailChanged,
            detail,
        )?;
        let notice =
            Notice::EmailChanged { user: target.id, old_email: target.email.clone(), new_email: email.to_owned() };
        self.notify(conn, ctx, target.tenant_id, notice)
    }

    /// `PATCH /api/v1/me`: name for anyone; email for admins only, with the password and a
    /// recent second factor (the session is kept, the admin's others end).
    ///
    /// Errors: `EmailChangeForbidden`, `InvalidRequest`, `InvalidPassword`, `StepUpRequired`,
    /// `EmailTaken`.
    pub async fn update_me(
        &self,
        ctx: &RequestCtx,
        auth: &Auth,
        name: Option<&str>,
        email: Option<&str>,
        password: Option<&str>,
    ) -> Result<UserView> {
        let name = name.map(clean_name).transpose()?;
        let email = match email {
            None => None,
            Some(email) => {
                if auth.user.role != Role::Admin {
                    return Err(Error::EmailChangeForbidden);
                }
                let email = clean_email(email)?;
                let password =
                    password.ok_or_else(|| Error::InvalidRequest("password is required to change the email".into()))?;
                self.require_step_up(auth, ctx.now)?;
                self.confirm_password(ctx, &auth.user, password).await?;
                Some(email).filter(|e| *e != auth.user.email)
            }
        };
        let svc = self.clone();
        let ctx = ctx.clone();
        let user = auth.user.clone();
        let keep = auth.session.id;
        self.store
            .write(move |c| {
                users::lock_tenant(c, user.tenant_id)?;
                if let Some(email) = &email {
                    svc.change_email(c, &ctx, user.id, &user, email, Some(keep))?;
                }
                if let Some(name) = &name {
                    users::update_profile(c, user.id, Some(name), None, None, ctx.now)?;
                }
                let fresh = users::by_id(c, user.tenant_id, user.id)?.ok_or(StoreError::Corrupt("user vanished"))?;
                svc.user_view(c, &fresh)
            })
            .await
            .map_err(|e| conflict_as(e, Error::EmailTaken))
    }

    /// `POST /api/v1/me/password`: with the current password, sets a new one and ends the
    /// user's other sessions.
    ///
    /// Errors: `InvalidPassword`, `InvalidRequest` (rules), `RateLimited`.
    pub async fn change_password(&self, ctx: &RequestCtx, auth: &Auth, current: &str, new: &str) -> Result<()> {
        check_new_password(new)?;
        self.confirm_password(ctx, &auth.user, current).await?;
        let hash = self.hash_password(new).await?;
        let user = auth.user.clone();
        let keep = auth.session.id;
        let ctx = ctx.clone();
        let svc = self.clone();
        self.store
            .write(move |c| {
                users::lock(c, user.id)?;
                users::set_password(c, user.id, &hash, ctx.now)?;
                // Nothing opened with the old password outlives it: other sessions, open
                // challenges and their codes (DESIGN.md "Accounts").
                sessions::delete_for_user(c, user.id, Some(keep))?;
                challenges::end_for_user(c, user.id, None, ctx.now)?;
                email_codes::void_for_user(c, user.id, ctx.now)?;
                Service::revoke_devices(c, &ctx, &user, "password_changed")?;
                Service::audit(
                    c,
                    &ctx,
                    user.tenant_id,
                    Some(user.id.to_string()),
                    Some(user.id),
                    AuditKind::PasswordChanged,
                    json!({}),
                )?;
                svc.notify(c, &ctx, user.tenant_id, Notice::PasswordChanged { user: user.id })
            })
            .await?;
        Ok(())
    }

    /// `GET /api/v1/agents` (admin): the tenant's users in creation order.
    pub async fn list_users(&self, auth: &Auth, after: Option<UserId>, limit: i64) -> Result<Vec<UserView>> {
        Service::require_admin(auth)?;
        let tenant = auth.tenant.id;
        Ok(self
            .store
            .run(move |c| {
                let after = after.map(|a| a.to_string());
                let list = users::list(c, tenant, Page { after: after.as_deref(), limit })?;
                let ids: Vec<UserId> = list.iter().map(|u| u.id).collect();
                let methods = enrollments::methods_of_many(c, &ids)?;
                Ok(list.iter().map(|u| UserView::new(u, methods.get(&u.id).copied().unwrap_or_default())).collect())
            })
            .await?)
    }

    /// `POST /api/v1/agents` (admin): creates a user; creating an admin needs a recent
    /// second factor.
    ///
    /// Errors: `Forbidden`, `StepUpRequired`, `InvalidRequest`, `EmailTaken`.
    pub async fn create_user(&self, ctx: &RequestCtx, auth: &Auth, new: NewUser) -> Result<UserView> {
        Service::require_admin(auth)?;
        if new.role == Role::Admin {
            self.require_step_up(auth, ctx.now)?;
        }
        let email = clean_email(&new.email)?;
        let name = clean_name(&new.name)?;
        check_new_password(&new.password)?;
        let hash = self.hash_password(&new.password).await?;
        let user = User {
            id: UserId::new(),
            tenant_id: auth.tenant.id,
            email,
            name,
            role: new.role,
            password_hash: hash,
            preferred: None,
            lockout: Default::default(),
            created_at: ctx.now,
            enroll_asked_at: None,
            preferred_chosen: false,
        };
        let ctx = ctx.clone();
        let actor = auth.user.id.to_string();
        let u = user.clone();
        self.store
            .write(move |c| {
                users::lock_tenant(c, u.tenant_id)?;
                users::insert(c, &u)?;
                Service::audit(
                    c,
                    &ctx,
                    u.tenant_id,
                    Some(actor),
                    Some(u.id),
                    AuditKind::AgentCreated,
                    json!({"role": u.role}),
                )
            })
            .await
            .map_err(|e| conflict_as(e, Error::EmailTaken))?;
        Ok(UserView::new(&user, Default::default()))
    }

    /// `PATCH /api/v1/agents/{id}` (admin): email, name, role. Email changes and promotions
    /// to admin need a recent second factor; demoting the last admin is refused. An email or
    /// role change voids the user's challenges and codes; an email change ends the user's
    /// sessions (except the acting admin's current one).
    ///
    /// Errors: `Forbidden`, `NotFound` (also for another tenant's user), `StepUpRequired`,
    /// `LastAdmin`, `EmailTaken`, `InvalidRequest`.
    pub async fn update_user(
        &self,
        ctx: &RequestCtx,
        auth: &Auth,
        id: UserId,
        changes: UserChanges,
    ) -> Result<UserView> {
        Service::require_admin(auth)?;
        let email = changes.email.as_deref().map(clean_email).transpose()?;
        let name = changes.name.as_deref().map(clean_name).transpose()?;
        if email.is_some() || changes.role == Some(Role::Admin) {
            self.require_step_up(auth, ctx.now)?;
        }
        if id == auth.user.id && email.as_ref().is_some_and(|e| *e != auth.user.email) {
            // The admin's own address: the same rule as `PATCH /api/v1/me`.
            let password = changes
                .password
                .as_deref()
                .ok_or_else(|| Error::InvalidRequest("password is required to change your own email".into()))?;
            self.confirm_password(ctx, &auth.user, password).await?;
        }
        let svc = self.clone();
        let ctx = ctx.clone();
        let tenant = auth.tenant.id;
        let actor = auth.user.id;
        let keep = auth.session.id;
        self.store
            .write(move |c| {
                users::lock_tenant(c, tenant)?;
                let Some(target) = users::by_id(c, tenant, id)? else {
                    return Ok(Err(Error::NotFound));
                };
                users::lock(c, target.id)?;
                if let Some(role) = changes.role.filter(|r| *r != target.role) {
                    if target.role == Role::Admin && users::count_admins(c, tenant)? <= 1 {
                        return Ok(Err(Error::LastAdmin));
                    }
                    users::update_profile(c, target.id, None, None, Some(role), ctx.now)?;
                    // The old role's ways back in end with it: open challenges and codes, a
                    // pending recovery request (agents), reset links (admins).
                    challenges::end_for_user(c, target.id, None, ctx.now)?;
                    email_codes::void_for_user(c, target.id, ctx.now)?;
                    reset_tokens::void_for_user(c, target.id, ctx.now)?;
                    recovery::dismiss_pending_for_user(c, target.id, actor, ctx.now)?;
                    Service::revoke_devices(c, &ctx, &target, "role_changed")?;
                    let detail = json!({"from": target.role, "to": role});
                    Service::audit(
                        c,
                        &ctx,
                        tenant,
                        Some(actor.to_string()),
                        Some(target.id),
                        AuditKind::RoleChanged,
                        detail,
                    )?;
                }
                if let Some(email) = email.as_deref().filter(|e| *e != target.email) {
                    svc.change_email(c, &ctx, actor, &target, email, Some(keep))?;
                }
                if let Some(name) = &name {
                    users::update_profile(c, target.id, Some(name), None, None, ctx.now)?;
                }
                let fresh = users::by_id(c, tenant, id)?.ok_or(StoreError::Corrupt("user vanished"))?;
                Ok(Ok(svc.user_view(c, &fresh)?))
            })
            .await
            .map_err(|e| conflict_as(e, Error::EmailTaken))?
    }

    /// `DELETE /api/v1/agents/{id}` (admin): deletes the user with their sessions, challenges
    /// and requests; a tenant keeps at least one admin.
    ///
    /// Errors: `Forbidden`, `NotFound`, `LastAdmin`.
    pub async fn delete_user(&self, ctx: &RequestCtx, auth: &Auth, id: UserId) -> Result<()> {
        Service::require_admin(auth)?;
        let ctx = ctx.clone();
        let tenant = auth.tenant.id;
        let actor = auth.user.id.to_string();
        self.store
            .write(move |c| {
                users::lock_tenant(c, tenant)?;
                let Some(target) = users::by_id(c, tenant, id)? else { return Ok(Err(Error::NotFound)) };
                if target.role == Role::Admin && users::count_admins(c, tenant)? <= 1 {
                    return Ok(Err(Error::LastAdmin));
                }
                users::delete(c, target.id)?;
                let detail = json!({"email": latchkey_core::email::mask(&target.email), "role": target.role});
                Service::audit(c, &ctx, tenant, Some(actor), Some(target.id), AuditKind::AgentDeleted, detail)?;
                Ok(Ok(()))
            })
            .await?
    }
}
