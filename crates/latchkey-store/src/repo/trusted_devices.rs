//! `trusted_devices`: devices a user asked to remember (DESIGN.md 5.4); tokens are stored only
//! as keyed hashes, revocation is final.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use latchkey_core::{Role, TenantId, TrustedDeviceId, UserId};

use crate::DbConn;
use crate::error::StoreResult;
use crate::model::{TrustedDevice, at, at_opt, ms, parse};
use crate::schema::{trusted_devices as td, users};

#[derive(Queryable, Selectable)]
#[diesel(table_name = td)]
struct Row {
    id: String,
    tenant_id: String,
    user_id: String,
    created_at: i64,
    last_used_at: Option<i64>,
    expires_at: i64,
    revoked_at: Option<i64>,
    user_agent: Option<String>,
    ip: Option<String>,
}

impl Row {
    fn into_device(self) -> StoreResult<TrustedDevice> {
        Ok(TrustedDevice {
            id: parse("trusted device id", &self.id)?,
            tenant_id: parse("tenant id", &self.tenant_id)?,
            user_id: parse("user id", &self.user_id)?,
            created_at: at(self.created_at)?,
            last_used_at: at_opt(self.last_used_at)?,
            expires_at: at(self.expires_at)?,
            revoked_at: at_opt(self.revoked_at)?,
            user_agent: self.user_agent,
            ip: self.ip,
        })
    }
}

/// Stores a device under the keyed hash of its token.
pub fn insert(conn: &mut DbConn, d: &TrustedDevice, token_hash: &[u8]) -> StoreResult<()> {
    diesel::insert_into(td::table)
        .values((
            td::id.eq(d.id.to_string()),
            td::token_hash.eq(token_hash.to_vec()),
            td::tenant_id.eq(d.tenant_id.to_string()),
            td::user_id.eq(d.user_id.to_string()),
            td::created_at.eq(ms(d.created_at)),
            td::expires_at.eq(ms(d.expires_at)),
            td::user_agent.eq(d.user_agent.clone()),
            td::ip.eq(d.ip.clone()),
        ))
        .execute(conn)?;
    Ok(())
}

/// The device of `user` whose token hashes to `token_hash` (live or not).
pub fn by_token_hash(conn: &mut DbConn, user: UserId, token_hash: &[u8]) -> StoreResult<Option<TrustedDevice>> {
    td::table
        .filter(td::token_hash.eq(token_hash.to_vec()))
        .filter(td::user_id.eq(user.to_string()))
        .select(Row::as_select())
        .first(conn)
        .optional()?
        .map(Row::into_device)
        .transpose()
}

/// Records a sign-in with the device.
pub fn mark_used(conn: &mut DbConn, id: TrustedDeviceId, now: DateTime<Utc>) -> StoreResult<()> {
    diesel::update(td::table.find(id.to_string())).set(td::last_used_at.eq(ms(now))).execute(conn)?;
    Ok(())
}

/// `user`'s live devices (not revoked, not expired), oldest first.
pub fn live_for_user(conn: &mut DbConn, user: UserId, now: DateTime<Utc>) -> StoreResult<Vec<TrustedDevice>> {
    td::table
        .filter(td::user_id.eq(user.to_string()))
        .filter(td::revoked_at.is_null())
        .filter(td::expires_at.gt(ms(now)))
        .order(td::id.asc())
        .select(Row::as_select())
        .load(conn)?
        .into_iter()
        .map(Row::into_device)
        .collect()
}

/// Revokes `user`'s live device `id`; returns whether there was one.
pub fn revoke(conn: &mut DbConn, user: UserId, id: TrustedDeviceId, now: DateTime<Utc>) -> StoreResult<bool> {
    let n = diesel::update(
        td::table.find(id.to_string()).filter(td::user_id.eq(user.to_string())).filter(td::revoked_at.is_null()),
    )
    .set(td::revoked_at.eq(ms(now)))
    .execute(conn)?;
    Ok(n == 1)
}

/// Revokes every unrevoked device of `user`; returns how many.
pub fn revoke_for_user(conn: &mut DbConn, user: UserId, now: DateTime<Utc>) -> StoreResult<usize> {
    Ok(diesel::update(td::table.filter(td::user_id.eq(user.to_string())).filter(td::revoked_at.is_null()))
        .set(td::revoked_at.eq(ms(now)))
        .execute(conn)?)
}

/// Revokes every unrevoked device of the users of `tenant` (of `role` only, when given);
/// returns how many.
pub fn revoke_for_tenant(
    conn: &mut DbConn,
    tenant: TenantId,
    role: Option<Role>,
    now: DateTime<Utc>,
) -> StoreResult<usize> {
    let mut users_q = users::table.filter(users::tenant_id.eq(tenant.to_string())).select(users::id).into_boxed();
    if let Some(role) = role {
        users_q = users_q.filter(users::role.eq(role.as_str()));
    }
    let ids: Vec<String> = users_q.load(conn)?;
    Ok(diesel::update(td::table.filter(td::user_id.eq_any(ids)).filter(td::revoked_at.is_null()))
        .set(td::revoked_at.eq(ms(now)))
        .execute(conn)?)
}

/// Deletes devices that expired before `before` (housekeeping).
/// At most `limit` rows, one batch (the caller repeats until fewer come back, so that no
/// statement deletes, locks or logs much at once).
pub fn purge_expired(conn: &mut DbConn, before: DateTime<Utc>, limit: i64) -> StoreResult<usize> {
    let expired = diesel::alias!(crate::schema::trusted_devices as expired);
    let batch = expired.filter(expired.field(td::expires_at).le(ms(before))).select(expired.field(td::id)).limit(limit);
    Ok(diesel::delete(td::table.filter(td::id.eq_any(batch))).execute(conn)?)
}
