//! `reset_tokens`: admin reset links (keyed hashes only); the rows are also the send log of
//! the link's send limits.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use latchkey_core::{ResetTokenId, UserId};

use crate::DbConn;
use crate::error::StoreResult;
use crate::model::{ResetToken, at, at_opt, ms, parse};
use crate::schema::reset_tokens as rt;

#[derive(Queryable, Selectable)]
#[diesel(table_name = rt)]
struct Row {
    id: String,
    tenant_id: String,
    user_id: String,
    created_at: i64,
    expires_at: i64,
    used_at: Option<i64>,
    voided_at: Option<i64>,
}

impl Row {
    fn into_token(self) -> StoreResult<ResetToken> {
        Ok(ResetToken {
            id: parse("reset token id", &self.id)?,
            tenant_id: parse("tenant id", &self.tenant_id)?,
            user_id: parse("user id", &self.user_id)?,
            created_at: at(self.created_at)?,
            expires_at: at(self.expires_at)?,
            used_at: at_opt(self.used_at)?,
            voided_at: at_opt(self.voided_at)?,
        })
    }
}

/// Stores a link's token under its keyed hash.
pub fn insert(conn: &mut DbConn, t: &ResetToken, token_hash: &[u8]) -> StoreResult<()> {
    diesel::insert_into(rt::table)
        .values((
            rt::id.eq(t.id.to_string()),
            rt::token_hash.eq(token_hash.to_vec()),
            rt::tenant_id.eq(t.tenant_id.to_string()),
            rt::user_id.eq(t.user_id.to_string()),
            rt::created_at.eq(ms(t.created_at)),
            rt::expires_at.eq(ms(t.expires_at)),
        ))
        .execute(conn)?;
    Ok(())
}

/// The live (unused, not voided, unexpired) token hashing to `token_hash`.
pub fn live_by_hash(conn: &mut DbConn, token_hash: &[u8], now: DateTime<Utc>) -> StoreResult<Option<ResetToken>> {
    rt::table
        .filter(rt::token_hash.eq(token_hash.to_vec()))
        .filter(rt::used_at.is_null())
        .filter(rt::voided_at.is_null())
        .filter(rt::expires_at.gt(ms(now)))
        .select(Row::as_select())
        .first(conn)
        .optional()?
        .map(Row::into_token)
        .transpose()
}

/// Send times of `user`'s links since `since`.
pub fn sent_since(conn: &mut DbConn, user: UserId, since: DateTime<Utc>) -> StoreResult<Vec<DateTime<Utc>>> {
    rt::table
        .filter(rt::user_id.eq(user.to_string()))
        .filter(rt::created_at.gt(ms(since)))
        .select(rt::created_at)
        .load::<i64>(conn)?
        .into_iter()
        .map(at)
        .collect()
}

/// Voids every live link of `user`.
pub fn void_for_user(conn: &mut DbConn, user: UserId, now: DateTime<Utc>) -> StoreResult<usize> {
    Ok(diesel::update(
        rt::table
            .filter(rt::user_id.eq(user.to_string()))
            .filter(rt::voided_at.is_null())
            .filter(rt::used_at.is_null()),
    )
    .set(rt::voided_at.eq(ms(now)))
    .execute(conn)?)
}

/// Marks a link used if it is still live; returns whether this call used it.
pub fn mark_used(conn: &mut DbConn, id: ResetTokenId, now: DateTime<Utc>) -> StoreResult<bool> {
    let n =
        diesel::update(rt::table.find(id.to_string()).filter(rt::used_at.is_null()).filter(rt::voided_at.is_null()))
            .set(rt::used_at.eq(ms(now)))
            .execute(conn)?;
    Ok(n == 1)
}

/// Whether the link can still be used at `now`.
pub fn is_live(conn: &mut DbConn, id: ResetTokenId, now: DateTime<Utc>) -> StoreResult<bool> {
    let n: i64 = rt::table
        .filter(rt::id.eq(id.to_string()))
        .filter(rt::used_at.is_null())
        .filter(rt::voided_at.is_null())
        .filter(rt::expires_at.gt(ms(now)))
        .count()
        .get_result(conn)?;
    Ok(n > 0)
}

/// Deletes a link row (when its job could not be queued).
pub fn delete(conn: &mut DbConn, id: ResetTokenId) -> StoreResult<()> {
    diesel::delete(rt::table.find(id.to_string())).execute(conn)?;
    Ok(())
}
