//! `enrollments`: the second-factor methods users have set up.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::upsert::excluded;
use latchkey_core::{Method, MethodSet, TenantId, UserId};

use crate::error::StoreResult;
use crate::model::{Enrollment, at, ms, parse};
use crate::schema::enrollments as e;
use crate::{DbConn, per_backend};

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = e)]
pub(crate) struct Row {
    user_id: String,
    method: String,
    tenant_id: String,
    secret_sealed: Option<Vec<u8>>,
    last_step: Option<i64>,
    created_at: i64,
    last_used_at: Option<i64>,
}

impl Row {
    pub(crate) fn into_enrollment(self) -> StoreResult<Enrollment> {
        Ok(Enrollment {
            user_id: parse("user id", &self.user_id)?,
            method: parse("method", &self.method)?,
            secret_sealed: self.secret_sealed,
            last_step: self.last_step,
            created_at: at(self.created_at)?,
            last_used_at: crate::model::at_opt(self.last_used_at)?,
        })
    }
}

/// The enrollments of `user`.
pub fn for_user(conn: &mut DbConn, user: UserId) -> StoreResult<Vec<Enrollment>> {
    e::table
        .filter(e::user_id.eq(user.to_string()))
        .select(Row::as_select())
        .load(conn)?
        .into_iter()
        .map(Row::into_enrollment)
        .collect()
}

/// The enrolled methods of `user`.
pub fn methods_of(conn: &mut DbConn, user: UserId) -> StoreResult<MethodSet> {
    Ok(for_user(conn, user)?.into_iter().map(|en| en.method).collect())
}

/// The enrolled methods of several users at once (for lists).
pub fn methods_of_many(conn: &mut DbConn, users: &[UserId]) -> StoreResult<HashMap<UserId, MethodSet>> {
    let ids: Vec<String> = users.iter().map(ToString::to_string).collect();
    let rows: Vec<(String, String)> =
        e::table.filter(e::user_id.eq_any(ids)).select((e::user_id, e::method)).load(conn)?;
    let mut out: HashMap<UserId, MethodSet> = HashMap::new();
    for (user, method) in rows {
        let entry = out.entry(parse("user id", &user)?).or_default();
        *entry = entry.with(parse::<Method>("method", &method)?);
    }
    Ok(out)
}

/// Enrolls (or re-enrolls, replacing the secret and last step) a method.
pub fn upsert(conn: &mut DbConn, tenant: TenantId, en: &Enrollment) -> StoreResult<()> {
    let row = Row {
        user_id: en.user_id.to_string(),
        method: en.method.as_str().to_owned(),
        tenant_id: tenant.to_string(),
        secret_sealed: en.secret_sealed.clone(),
        last_step: en.last_step,
        created_at: ms(en.created_at),
        last_used_at: en.last_used_at.map(ms),
    };
    per_backend!(conn, c => diesel::insert_into(e::table)
        .values(&row)
        .on_conflict((e::user_id, e::method))
        .do_update()
        .set((
            e::secret_sealed.eq(excluded(e::secret_sealed)),
            e::last_step.eq(excluded(e::last_step)),
            e::created_at.eq(excluded(e::created_at)),
        ))
        .execute(c))?;
    Ok(())
}

/// Records the last accepted TOTP step, only if it moves forward (the atomic conditional
/// update behind replay protection), and when the method was used. Returns whether it moved.
pub fn advance_last_step(conn: &mut DbConn, user: UserId, step: i64, now: DateTime<Utc>) -> StoreResult<bool> {
    let n = diesel::update(
        e::table
            .filter(e::user_id.eq(user.to_string()))
            .filter(e::method.eq(Method::Authenticator.as_str()))
            .filter(e::last_step.is_null().or(e::last_step.lt(step))),
    )
    .set((e::last_step.eq(step), e::last_used_at.eq(ms(now))))
    .execute(conn)?;
    Ok(n == 1)
}

/// Records that `user`'s `method` verified at `now`.
pub fn mark_used(conn: &mut DbConn, user: UserId, method: Method, now: DateTime<Utc>) -> StoreResult<()> {
    diesel::update(e::table.filter(e::user_id.eq(user.to_string())).filter(e::method.eq(method.as_str())))
        .set(e::last_used_at.eq(ms(now)))
        .execute(conn)?;
    Ok(())
}

/// Removes `user`'s enrollment of `method`; returns whether there was one.
pub fn delete(conn: &mut DbConn, user: UserId, method: Method) -> StoreResult<bool> {
    let n = diesel::delete(e::table.filter(e::user_id.eq(user.to_string())).filter(e::method.eq(method.as_str())))
        .execute(conn)?;
    Ok(n > 0)
}

/// Removes every enrollment of `user` (recovery, reset).
pub fn delete_for_user(conn: &mut DbConn, user: UserId) -> StoreResult<usize> {
    Ok(diesel::delete(e::table.filter(e::user_id.eq(user.to_string()))).execute(conn)?)
}
