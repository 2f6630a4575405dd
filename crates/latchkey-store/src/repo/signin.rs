//! `signin_attempts`: the sliding logs of password attempts (DESIGN.md "Accounts"), one row
//! per subject, keyed by a keyed hash of what is counted (a user of a tenant, an unknown
//! address of a tenant, an unknown tenant slug and address), so that every limit holds across
//! processes and restarts.
//!
//! A reservation locks the subject's own row ([`lock`]), never the tenant's or the user's, so
//! that a storm of attempts on one subject queues on that row alone.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use latchkey_core::TenantId;
use latchkey_core::otp::SigninThrottle;

use crate::error::StoreResult;
use crate::model::ms;
use crate::schema::signin_attempts as sa;
use crate::{DbConn, per_backend};

/// The attempt log of `key_hash`, locked until the transaction ends: the row is created if
/// missing (`ON CONFLICT DO NOTHING`, so that two processes creating it at once both go on),
/// then read `FOR UPDATE` on Postgres; on SQLite the `BEGIN IMMEDIATE` of
/// [`write_tx`](crate::write_tx) already holds the write lock. `tenant` is the known tenant the
/// subject belongs to (its logs go with it), `None` for an unknown tenant.
pub fn lock(
    conn: &mut DbConn,
    key_hash: &[u8],
    tenant: Option<TenantId>,
    now: DateTime<Utc>,
) -> StoreResult<SigninThrottle> {
    let values = (
        sa::key_hash.eq(key_hash.to_vec()),
        sa::tenant_id.eq(tenant.map(|t| t.to_string())),
        sa::attempts.eq(String::new()),
        sa::updated_at.eq(ms(now)),
    );
    per_backend!(conn, c => diesel::insert_into(sa::table).values(values.clone()).on_conflict(sa::key_hash).do_nothing().execute(c))?;
    let q = sa::table.find(key_hash.to_vec()).select(sa::attempts);
    let attempts: Option<String> = match conn {
        DbConn::Pg(pg) => q.for_update().first(pg).optional()?,
        DbConn::Sqlite(_) => q.first(conn).optional()?,
    };
    Ok(attempts.map(|a| SigninThrottle::decode(&a)).unwrap_or_default())
}

/// Stores the attempt log of `key_hash` (its row exists and is locked: see [`lock`]).
pub fn put(conn: &mut DbConn, key_hash: &[u8], state: &SigninThrottle, now: DateTime<Utc>) -> StoreResult<()> {
    diesel::update(sa::table.find(key_hash.to_vec()))
        .set((sa::attempts.eq(state.encode()), sa::updated_at.eq(ms(now))))
        .execute(conn)?;
    Ok(())
}

/// Forgets the attempts of `key_hash` (after a successful sign-in or password check).
pub fn clear(conn: &mut DbConn, key_hash: &[u8]) -> StoreResult<()> {
    diesel::delete(sa::table.find(key_hash.to_vec())).execute(conn)?;
    Ok(())
}

/// Deletes logs untouched since `before` (no attempt in them counts any more).
/// At most `limit` rows, one batch (the caller repeats until fewer come back, so that no
/// statement deletes, locks or logs much at once).
pub fn purge_before(conn: &mut DbConn, before: DateTime<Utc>, limit: i64) -> StoreResult<usize> {
    let expired = diesel::alias!(crate::schema::signin_attempts as expired);
    let batch =
        expired.filter(expired.field(sa::updated_at).lt(ms(before))).select(expired.field(sa::key_hash)).limit(limit);
    Ok(diesel::delete(sa::table.filter(sa::key_hash.eq_any(batch))).execute(conn)?)
}
