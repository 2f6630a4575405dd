//! `handoff_codes`: the hosted sign-in's hand-off codes (DESIGN.md 5.7), stored only as keyed
//! hashes, single-use by one conditional update.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use latchkey_core::{TenantId, UserId};

use crate::DbConn;
use crate::error::StoreResult;
use crate::model::{at_opt, ms, parse};
use crate::schema::handoff_codes as h;

/// A hand-off code as stored (without its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandoffCode {
    /// The tenant.
    pub tenant_id: TenantId,
    /// The user who signed in.
    pub user_id: UserId,
    /// The PKCE S256 challenge (base64url of SHA-256 of the verifier, no padding).
    pub code_challenge: String,
    /// When the browser session last presented a second factor (carried to the new session).
    pub second_factor_at: Option<DateTime<Utc>>,
}

/// Stores a code under its keyed hash, valid until `expires_at`.
pub fn insert(
    conn: &mut DbConn,
    code_hash: &[u8],
    code: &HandoffCode,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> StoreResult<()> {
    diesel::insert_into(h::table)
        .values((
            h::code_hash.eq(code_hash.to_vec()),
            h::tenant_id.eq(code.tenant_id.to_string()),
            h::user_id.eq(code.user_id.to_string()),
            h::code_challenge.eq(&code.code_challenge),
            h::second_factor_at.eq(code.second_factor_at.map(ms)),
            h::created_at.eq(ms(now)),
            h::expires_at.eq(ms(expires_at)),
        ))
        .execute(conn)?;
    Ok(())
}

/// Uses up the unexpired, unused code whose hash is `code_hash` (one conditional update, so
/// two racing exchanges cannot both take it) and returns it; `None` when there is none.
pub fn take(conn: &mut DbConn, code_hash: &[u8], now: DateTime<Utc>) -> StoreResult<Option<HandoffCode>> {
    let taken = diesel::update(
        h::table
            .filter(h::code_hash.eq(code_hash.to_vec()))
            .filter(h::used_at.is_null())
            .filter(h::expires_at.gt(ms(now))),
    )
    .set(h::used_at.eq(ms(now)))
    .execute(conn)?;
    if taken != 1 {
        return Ok(None);
    }
    let row: (String, String, String, Option<i64>) = h::table
        .filter(h::code_hash.eq(code_hash.to_vec()))
        .select((h::tenant_id, h::user_id, h::code_challenge, h::second_factor_at))
        .first(conn)?;
    Ok(Some(HandoffCode {
        tenant_id: parse("tenant id", &row.0)?,
        user_id: parse("user id", &row.1)?,
        code_challenge: row.2,
        second_factor_at: at_opt(row.3)?,
    }))
}

/// Deletes codes that expired before `now`.
/// At most `limit` rows, one batch (the caller repeats until fewer come back, so that no
/// statement deletes, locks or logs much at once).
pub fn purge_expired(conn: &mut DbConn, now: DateTime<Utc>, limit: i64) -> StoreResult<usize> {
    let expired = diesel::alias!(crate::schema::handoff_codes as expired);
    let batch =
        expired.filter(expired.field(h::expires_at).le(ms(now))).select(expired.field(h::code_hash)).limit(limit);
    Ok(diesel::delete(h::table.filter(h::code_hash.eq_any(batch))).execute(conn)?)
}
