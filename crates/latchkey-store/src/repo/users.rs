//! `users`: tenant users, their password hash and their wrong-code counter.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use latchkey_core::otp::OtpLockout;
use latchkey_core::{Method, Role, TenantId, UserId};

use super::Page;
use crate::DbConn;
use crate::error::StoreResult;
use crate::model::{User, at, at_opt, ms, parse, parse_opt};
use crate::schema::users;

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = users)]
pub(crate) struct Row {
    id: String,
    tenant_id: String,
    email: String,
    name: String,
    role: String,
    password_hash: String,
    preferred_method: Option<String>,
    otp_failures: i32,
    otp_blocked_until: Option<i64>,
    created_at: i64,
    updated_at: i64,
    enroll_asked_at: Option<i64>,
    preferred_chosen: bool,
}

impl Row {
    pub(crate) fn into_user(self) -> StoreResult<User> {
        Ok(User {
            id: parse("user id", &self.id)?,
            tenant_id: parse("tenant id", &self.tenant_id)?,
            email: self.email,
            name: self.name,
            role: parse("role", &self.role)?,
            password_hash: self.password_hash,
            preferred: parse_opt::<Method>("method", self.preferred_method.as_deref())?,
            lockout: OtpLockout {
                failures: u32::try_from(self.otp_failures).unwrap_or(0),
                blocked_until: at_opt(self.otp_blocked_until)?,
            },
            created_at: at(self.created_at)?,
            enroll_asked_at: at_opt(self.enroll_asked_at)?,
            preferred_chosen: self.preferred_chosen,
        })
    }
}

/// Inserts a user. Errors: `Conflict` when the email is taken in the tenant.
pub fn insert(conn: &mut DbConn, u: &User) -> StoreResult<()> {
    let row = Row {
        id: u.id.to_string(),
        tenant_id: u.tenant_id.to_string(),
        email: u.email.clone(),
        name: u.name.clone(),
        role: u.role.as_str().to_owned(),
        password_hash: u.password_hash.clone(),
        preferred_method: u.preferred.map(|m| m.as_str().to_owned()),
        otp_failures: 0,
        otp_blocked_until: None,
        created_at: ms(u.created_at),
        updated_at: ms(u.created_at),
        enroll_asked_at: u.enroll_asked_at.map(ms),
        preferred_chosen: u.preferred_chosen,
    };
    diesel::insert_into(users::table).values(&row).execute(conn)?;
    Ok(())
}

/// The user of `tenant` with the (normalised) `email`.
pub fn by_email(conn: &mut DbConn, tenant: TenantId, email: &str) -> StoreResult<Option<User>> {
    users::table
        .filter(users::tenant_id.eq(tenant.to_string()))
        .filter(users::email.eq(email))
        .select(Row::as_select())
        .first(conn)
        .optional()?
        .map(Row::into_user)
        .transpose()
}

/// The user `id` of `tenant` (users of other tenants are not found).
pub fn by_id(conn: &mut DbConn, tenant: TenantId, id: UserId) -> StoreResult<Option<User>> {
    users::table
        .filter(users::tenant_id.eq(tenant.to_string()))
        .filter(users::id.eq(id.to_string()))
        .select(Row::as_select())
        .first(conn)
        .optional()?
        .map(Row::into_user)
        .transpose()
}

/// Users of `tenant` in creation order, after the cursor.
pub fn list(conn: &mut DbConn, tenant: TenantId, page: Page<'_>) -> StoreResult<Vec<User>> {
    let mut q = users::table.filter(users::tenant_id.eq(tenant.to_string())).into_boxed();
    if let Some(after) = page.after {
        q = q.filter(users::id.gt(after.to_owned()));
    }
    q.order(users::id.asc())
        .limit(page.limit)
        .select(Row::as_select())
        .load(conn)?
        .into_iter()
        .map(Row::into_user)
        .collect()
}

/// The admins of `tenant`, in creation order (the recipients of recovery-request notices,
/// DESIGN.md 5.6).
pub fn admins(conn: &mut DbConn, tenant: TenantId) -> StoreResult<Vec<User>> {
    users::table
        .filter(users::tenant_id.eq(tenant.to_string()))
        .filter(users::role.eq(Role::Admin.as_str()))
        .order(users::id.asc())
        .select(Row::as_select())
        .load(conn)?
        .into_iter()
        .map(Row::into_user)
        .collect()
}

/// Number of admins of `tenant`.
pub fn count_admins(conn: &mut DbConn, tenant: TenantId) -> StoreResult<i64> {
    Ok(users::table
        .filter(users::tenant_id.eq(tenant.to_string()))
        .filter(users::role.eq(Role::Admin.as_str()))
        .count()
        .get_result(conn)?)
}

/// Takes the lock that serialises changes to one user's counters and one-time values until
/// the transaction ends: a row lock on Postgres; on SQLite the `BEGIN IMMEDIATE` of
/// [`write_tx`](crate::write_tx) already holds the database's write lock.
pub fn lock(conn: &mut DbConn, id: UserId) -> StoreResult<()> {
    if let DbConn::Pg(pg) = conn {
        users::table.find(id.to_string()).select(users::id).for_update().first::<String>(pg).optional()?;
    }
    Ok(())
}

/// The user `id` of `tenant`, read under the lock of [`lock`]: one `SELECT … FOR UPDATE`
/// on Postgres (instead of a lock, then a read); a plain read on SQLite, where the
/// transaction already holds the write lock.
pub fn lock_and_get(conn: &mut DbConn, tenant: TenantId, id: UserId) -> StoreResult<Option<User>> {
    match conn {
        DbConn::Pg(pg) => users::table
            .filter(users::tenant_id.eq(tenant.to_string()))
            .filter(users::id.eq(id.to_string()))
            .select(Row::as_select())
            .for_update()
            .first(pg)
            .optional()?
            .map(Row::into_user)
            .transpose(),
        DbConn::Sqlite(_) => by_id(conn, tenant, id),
    }
}

/// After a verified code: clears the wrong-code counter and block and records the method as
/// preferred unless the user chose his preferred method himself, in one statement.
pub fn set_verified(conn: &mut DbConn, id: UserId, method: Method) -> StoreResult<()> {
    diesel::update(users::table.find(id.to_string()))
        .set((users::otp_failures.eq(0), users::otp_blocked_until.eq(None::<i64>)))
        .execute(conn)?;
    diesel::update(users::table.find(id.to_string()).filter(users::preferred_chosen.eq(false)))
        .set(users::preferred_method.eq(Some(method.as_str())))
        .execute(conn)?;
    Ok(())
}

/// The user's own choice of preferred method (`PUT /api/v1/me/two-factor/preferred`); kept by
/// later verifications with other methods.
pub fn choose_preferred(conn: &mut DbConn, id: UserId, method: Method) -> StoreResult<()> {
    diesel::update(users::table.find(id.to_string()))
        .set((users::preferred_method.eq(Some(method.as_str())), users::preferred_chosen.eq(true)))
        .execute(conn)?;
    Ok(())
}

/// Records the first time the user was asked to enroll (the start of his grace period), unless
/// it is already recorded; returns the recorded instant.
pub fn mark_enroll_asked(conn: &mut DbConn, id: UserId, now: DateTime<Utc>) -> StoreResult<Option<DateTime<Utc>>> {
    diesel::update(users::table.find(id.to_string()).filter(users::enroll_asked_at.is_null()))
        .set(users::enroll_asked_at.eq(ms(now)))
        .execute(conn)?;
    let asked: Option<Option<i64>> =
        users::table.find(id.to_string()).select(users::enroll_asked_at).first(conn).optional()?;
    at_opt(asked.flatten())
}

/// Takes the tenant-wide lock (the tenant row) for changes that count users, such as the
/// last-admin rule.
pub fn lock_tenant(conn: &mut DbConn, tenant: TenantId) -> StoreResult<()> {
    if let DbConn::Pg(pg) = conn {
        use crate::schema::tenants;
        tenants::table.find(tenant.to_string()).select(tenants::id).for_update().first::<String>(pg).optional()?;
    }
    Ok(())
}

/// Stores the wrong-code counter and block.
pub fn set_lockout(conn: &mut DbConn, id: UserId, lockout: OtpLockout) -> StoreResult<()> {
    diesel::update(users::table.find(id.to_string()))
        .set((
            users::otp_failures.eq(i32::try_from(lockout.failures).unwrap_or(i32::MAX)),
            users::otp_blocked_until.eq(lockout.blocked_until.map(ms)),
        ))
        .execute(conn)?;
    Ok(())
}

/// Records the method the user last verified with (`None` after a reset, which also forgets
/// his own choice and when he was first asked to enroll).
pub fn set_preferred(conn: &mut DbConn, id: UserId, method: Option<Method>) -> StoreResult<()> {
    diesel::update(users::table.find(id.to_string()).filter(users::preferred_chosen.eq(false)))
        .set(users::preferred_method.eq(method.map(|m| m.as_str().to_owned())))
        .execute(conn)?;
    if method.is_none() {
        diesel::update(users::table.find(id.to_string()))
            .set((
                users::preferred_method.eq(None::<String>),
                users::preferred_chosen.eq(false),
                users::enroll_asked_at.eq(None::<i64>),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// Changes name, email and role (the values given). Errors: `Conflict` on a taken email.
pub fn update_profile(
    conn: &mut DbConn,
    id: UserId,
    name: Option<&str>,
    email: Option<&str>,
    role: Option<Role>,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let id = id.to_string();
    if let Some(name) = name {
        diesel::update(users::table.find(&id)).set(users::name.eq(name)).execute(conn)?;
    }
    if let Some(email) = email {
        diesel::update(users::table.find(&id)).set(users::email.eq(email)).execute(conn)?;
    }
    if let Some(role) = role {
        diesel::update(users::table.find(&id)).set(users::role.eq(role.as_str())).execute(conn)?;
    }
    diesel::update(users::table.find(&id)).set(users::updated_at.eq(ms(now))).execute(conn)?;
    Ok(())
}

/// Replaces the password hash.
pub fn set_password(conn: &mut DbConn, id: UserId, hash: &str, now: DateTime<Utc>) -> StoreResult<()> {
    diesel::update(users::table.find(id.to_string()))
        .set((users::password_hash.eq(hash), users::updated_at.eq(ms(now))))
        .execute(conn)?;
    Ok(())
}

/// Deletes a user; sessions, challenges, codes, enrollments and requests go with it.
pub fn delete(conn: &mut DbConn, id: UserId) -> StoreResult<bool> {
    let n = diesel::delete(users::table.find(id.to_string())).execute(conn)?;
    Ok(n > 0)
}
