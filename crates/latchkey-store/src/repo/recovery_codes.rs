//! `recovery_codes`: a user's current set of recovery codes, each stored only as a keyed hash
//! bound to the user (DESIGN.md 5.2).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use latchkey_core::{RecoveryCodeId, TenantId, UserId};

use crate::error::StoreResult;
use crate::model::{RecoveryCodeSet, at, ms};
use crate::schema::recovery_codes as rc;
use crate::{DbConn, per_backend};

/// Replaces `user`'s set with the codes of `hashes` (keyed hashes), generated at `now`.
pub fn replace(
    conn: &mut DbConn,
    tenant: TenantId,
    user: UserId,
    hashes: &[[u8; 32]],
    now: DateTime<Utc>,
) -> StoreResult<()> {
    delete_for_user(conn, user)?;
    let rows: Vec<_> = hashes
        .iter()
        .map(|h| {
            (
                rc::id.eq(RecoveryCodeId::new().to_string()),
                rc::tenant_id.eq(tenant.to_string()),
                rc::user_id.eq(user.to_string()),
                rc::code_hash.eq(h.to_vec()),
                rc::created_at.eq(ms(now)),
            )
        })
        .collect();
    // A batch insert has a form per backend (MultiConnection has none of its own).
    per_backend!(conn, c => diesel::insert_into(rc::table).values(rows.clone()).execute(c))?;
    Ok(())
}

/// Spends the unused code of `user` hashing to `hash`: one conditional update, so a code
/// raced any number of ways is spent once. Returns whether it was unused.
pub fn spend(conn: &mut DbConn, user: UserId, hash: &[u8], now: DateTime<Utc>) -> StoreResult<bool> {
    let n = diesel::update(
        rc::table
            .filter(rc::user_id.eq(user.to_string()))
            .filter(rc::code_hash.eq(hash.to_vec()))
            .filter(rc::used_at.is_null()),
    )
    .set(rc::used_at.eq(ms(now)))
    .execute(conn)?;
    Ok(n == 1)
}

/// `user`'s set: unused codes and the generation time; `None` when he has none.
pub fn set_of(conn: &mut DbConn, user: UserId) -> StoreResult<Option<RecoveryCodeSet>> {
    let rows: Vec<(i64, Option<i64>)> =
        rc::table.filter(rc::user_id.eq(user.to_string())).select((rc::created_at, rc::used_at)).load(conn)?;
    let Some(created) = rows.iter().map(|(c, _)| *c).max() else { return Ok(None) };
    let remaining = u32::try_from(rows.iter().filter(|(_, used)| used.is_none()).count()).unwrap_or(u32::MAX);
    Ok(Some(RecoveryCodeSet { remaining, created_at: at(created)? }))
}

/// How many unused codes `user` has.
pub fn unused_count(conn: &mut DbConn, user: UserId) -> StoreResult<i64> {
    Ok(rc::table.filter(rc::user_id.eq(user.to_string())).filter(rc::used_at.is_null()).count().get_result(conn)?)
}

/// Whether `user` has an unused code.
pub fn has_unused(conn: &mut DbConn, user: UserId) -> StoreResult<bool> {
    Ok(unused_count(conn, user)? > 0)
}

/// Deletes `user`'s set (a new set, a reset, `DELETE /api/v1/me/recovery-codes`); returns how
/// many codes it held.
pub fn delete_for_user(conn: &mut DbConn, user: UserId) -> StoreResult<usize> {
    Ok(diesel::delete(rc::table.filter(rc::user_id.eq(user.to_string()))).execute(conn)?)
}
