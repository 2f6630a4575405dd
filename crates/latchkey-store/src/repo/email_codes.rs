//! `email_codes`: emailed one-time codes (keyed hashes only). The rows double as the send log
//! of the sliding window, so they are kept (voided or used) until they leave it.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use latchkey_core::{ChallengeId, EmailCodeId, TenantId, UserId};

use crate::DbConn;
use crate::error::StoreResult;
use crate::model::{EmailCode, at, at_opt, ms, parse};
use crate::schema::email_codes as ec;

#[derive(Queryable, Selectable)]
#[diesel(table_name = ec)]
struct Row {
    id: String,
    user_id: String,
    challenge_id: String,
    code_hash: Vec<u8>,
    created_at: i64,
    expires_at: i64,
    used_at: Option<i64>,
    voided_at: Option<i64>,
}

impl Row {
    fn into_code(self) -> StoreResult<EmailCode> {
        Ok(EmailCode {
            id: parse("email code id", &self.id)?,
            user_id: parse("user id", &self.user_id)?,
            challenge_id: parse("challenge id", &self.challenge_id)?,
            code_hash: self.code_hash,
            created_at: at(self.created_at)?,
            expires_at: at(self.expires_at)?,
            used_at: at_opt(self.used_at)?,
            voided_at: at_opt(self.voided_at)?,
        })
    }
}

/// Stores a sent code.
pub fn insert(conn: &mut DbConn, tenant: TenantId, code: &EmailCode) -> StoreResult<()> {
    diesel::insert_into(ec::table)
        .values((
            ec::id.eq(code.id.to_string()),
            ec::tenant_id.eq(tenant.to_string()),
            ec::user_id.eq(code.user_id.to_string()),
            ec::challenge_id.eq(code.challenge_id.to_string()),
            ec::code_hash.eq(code.code_hash.clone()),
            ec::created_at.eq(ms(code.created_at)),
            ec::expires_at.eq(ms(code.expires_at)),
            ec::used_at.eq(code.used_at.map(ms)),
            ec::voided_at.eq(code.voided_at.map(ms)),
        ))
        .execute(conn)?;
    Ok(())
}

/// Every code sent for `challenge`, newest first.
pub fn for_challenge(conn: &mut DbConn, challenge: ChallengeId) -> StoreResult<Vec<EmailCode>> {
    ec::table
        .filter(ec::challenge_id.eq(challenge.to_string()))
        .order(ec::id.desc())
        .select(Row::as_select())
        .load(conn)?
        .into_iter()
        .map(Row::into_code)
        .collect()
}

/// Send times of `user`'s codes since `since` (the send log of the window and cooldown).
pub fn sent_since(conn: &mut DbConn, user: UserId, since: DateTime<Utc>) -> StoreResult<Vec<DateTime<Utc>>> {
    ec::table
        .filter(ec::user_id.eq(user.to_string()))
        .filter(ec::created_at.gt(ms(since)))
        .select(ec::created_at)
        .load::<i64>(conn)?
        .into_iter()
        .map(at)
        .collect()
}

/// Voids every live code of `user` (a new code, a reset, an email change).
pub fn void_for_user(conn: &mut DbConn, user: UserId, now: DateTime<Utc>) -> StoreResult<usize> {
    Ok(diesel::update(
        ec::table
            .filter(ec::user_id.eq(user.to_string()))
            .filter(ec::voided_at.is_null())
            .filter(ec::used_at.is_null()),
    )
    .set(ec::voided_at.eq(ms(now)))
    .execute(conn)?)
}

/// Marks a code used if it is still live; returns whether this call used it.
pub fn mark_used(conn: &mut DbConn, id: EmailCodeId, now: DateTime<Utc>) -> StoreResult<bool> {
    let n =
        diesel::update(ec::table.find(id.to_string()).filter(ec::used_at.is_null()).filter(ec::voided_at.is_null()))
            .set(ec::used_at.eq(ms(now)))
            .execute(conn)?;
    Ok(n == 1)
}

/// Whether the code can still be entered at `now` (not used, voided or expired): the worker
/// sends nothing for a dead code.
pub fn is_live(conn: &mut DbConn, id: EmailCodeId, now: DateTime<Utc>) -> StoreResult<bool> {
    let n: i64 = ec::table
        .filter(ec::id.eq(id.to_string()))
        .filter(ec::used_at.is_null())
        .filter(ec::voided_at.is_null())
        .filter(ec::expires_at.gt(ms(now)))
        .count()
        .get_result(conn)?;
    Ok(n > 0)
}

/// Deletes a code row (when its job could not be queued, so the send is not counted).
pub fn delete(conn: &mut DbConn, id: EmailCodeId) -> StoreResult<()> {
    diesel::delete(ec::table.find(id.to_string())).execute(conn)?;
    Ok(())
}

/// Deletes codes created before `before` (housekeeping; keep at least the send window).
/// At most `limit` rows, one batch (the caller repeats until fewer come back, so that no
/// statement deletes, locks or logs much at once).
pub fn purge_before(conn: &mut DbConn, before: DateTime<Utc>, limit: i64) -> StoreResult<usize> {
    let expired = diesel::alias!(crate::schema::email_codes as expired);
    let batch = expired.filter(expired.field(ec::created_at).lt(ms(before))).select(expired.field(ec::id)).limit(limit);
    Ok(diesel::delete(ec::table.filter(ec::id.eq_any(batch))).execute(conn)?)
}
