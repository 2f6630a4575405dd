//! `sessions`: signed-in sessions, found by the keyed hash of their bearer token.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use latchkey_core::{SessionId, TenantId, UserId};

use crate::DbConn;
use crate::error::StoreResult;
use crate::model::{Session, at, at_opt, ms, parse};
use crate::schema::sessions as s;

#[derive(Queryable, Selectable)]
#[diesel(table_name = s)]
struct Row {
    id: String,
    tenant_id: String,
    user_id: String,
    created_at: i64,
    expires_at: i64,
    second_factor_at: Option<i64>,
}

impl Row {
    fn into_session(self) -> StoreResult<Session> {
        Ok(Session {
            id: parse("session id", &self.id)?,
            tenant_id: parse("tenant id", &self.tenant_id)?,
            user_id: parse("user id", &self.user_id)?,
            created_at: at(self.created_at)?,
            expires_at: at(self.expires_at)?,
            second_factor_at: at_opt(self.second_factor_at)?,
        })
    }
}

/// Stores a session under the keyed hash of its token.
pub fn insert(conn: &mut DbConn, session: &Session, token_hash: &[u8]) -> StoreResult<()> {
    diesel::insert_into(s::table)
        .values((
            s::id.eq(session.id.to_string()),
            s::token_hash.eq(token_hash.to_vec()),
            s::tenant_id.eq(session.tenant_id.to_string()),
            s::user_id.eq(session.user_id.to_string()),
            s::created_at.eq(ms(session.created_at)),
            s::expires_at.eq(ms(session.expires_at)),
            s::second_factor_at.eq(session.second_factor_at.map(ms)),
        ))
        .execute(conn)?;
    Ok(())
}

/// The unexpired session whose token hashes to `token_hash`.
pub fn by_token_hash(conn: &mut DbConn, token_hash: &[u8], now: DateTime<Utc>) -> StoreResult<Option<Session>> {
    s::table
        .filter(s::token_hash.eq(token_hash.to_vec()))
        .filter(s::expires_at.gt(ms(now)))
        .select(Row::as_select())
        .first(conn)
        .optional()?
        .map(Row::into_session)
        .transpose()
}

/// Records a second-factor verification on the session (step-up).
pub fn mark_second_factor(conn: &mut DbConn, id: SessionId, now: DateTime<Utc>) -> StoreResult<()> {
    diesel::update(s::table.find(id.to_string())).set(s::second_factor_at.eq(ms(now))).execute(conn)?;
    Ok(())
}

/// Ends one session.
pub fn delete(conn: &mut DbConn, id: SessionId) -> StoreResult<()> {
    diesel::delete(s::table.find(id.to_string())).execute(conn)?;
    Ok(())
}

/// Ends every session of `user` except `keep`.
pub fn delete_for_user(conn: &mut DbConn, user: UserId, keep: Option<SessionId>) -> StoreResult<usize> {
    let keep = keep.map(|k| k.to_string()).unwrap_or_default();
    Ok(diesel::delete(s::table.filter(s::user_id.eq(user.to_string())).filter(s::id.ne(keep))).execute(conn)?)
}

/// Ends every session of `tenant` except `keep`: through the tenant's users and the index
/// `sessions_user` (sessions keep only the indexes their queries need: token hash, user,
/// expiry).
pub fn delete_for_tenant(conn: &mut DbConn, tenant: TenantId, keep: Option<SessionId>) -> StoreResult<usize> {
    use crate::schema::users;
    let keep = keep.map(|k| k.to_string()).unwrap_or_default();
    let members = users::table.filter(users::tenant_id.eq(tenant.to_string())).select(users::id);
    Ok(diesel::delete(s::table.filter(s::user_id.eq_any(members)).filter(s::id.ne(keep))).execute(conn)?)
}

/// Deletes sessions expired before `now` (housekeeping).
/// At most `limit` rows, one batch (the caller repeats until fewer come back, so that no
/// statement deletes, locks or logs much at once).
pub fn purge_expired(conn: &mut DbConn, now: DateTime<Utc>, limit: i64) -> StoreResult<usize> {
    let expired = diesel::alias!(crate::schema::sessions as expired);
    let batch = expired.filter(expired.field(s::expires_at).le(ms(now))).select(expired.field(s::id)).limit(limit);
    Ok(diesel::delete(s::table.filter(s::id.eq_any(batch))).execute(conn)?)
}
