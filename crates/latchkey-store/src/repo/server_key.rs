//! The check value of the server key (DESIGN.md 5.8): one row, written on the first start,
//! moved to the new key by a rotation. A process compares its own key's check value with it
//! before it serves or takes a job.

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use crate::error::StoreResult;
use crate::model::{at, ms};
use crate::schema::server_key as sk;
use crate::{DbConn, per_backend};

/// The stored check value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// Hex fingerprint of the key (the first 8 bytes of the check value).
    pub fingerprint: String,
    /// HMAC-SHA256 of a fixed label under the key.
    pub check_value: Vec<u8>,
    /// When the database first met a key.
    pub created_at: DateTime<Utc>,
    /// When the row last changed (a rotation).
    pub updated_at: DateTime<Utc>,
}

/// The stored check value, if any process has started on this database yet.
pub fn read(conn: &mut DbConn) -> StoreResult<Option<StoredKey>> {
    let row = sk::table
        .find(1)
        .select((sk::fingerprint, sk::check_value, sk::created_at, sk::updated_at))
        .first::<(String, Vec<u8>, i64, i64)>(conn)
        .optional()?;
    row.map(|(fingerprint, check_value, created, updated)| {
        Ok(StoredKey { fingerprint, check_value, created_at: at(created)?, updated_at: at(updated)? })
    })
    .transpose()
}

/// Stores the check value of the first key to start on this database, unless one is stored
/// already (two processes starting at once: the first wins); returns the stored row.
pub fn insert_first(
    conn: &mut DbConn,
    fingerprint: &str,
    check_value: &[u8],
    now: DateTime<Utc>,
) -> StoreResult<StoredKey> {
    let values = (
        sk::id.eq(1),
        sk::fingerprint.eq(fingerprint),
        sk::check_value.eq(check_value),
        sk::created_at.eq(ms(now)),
        sk::updated_at.eq(ms(now)),
    );
    per_backend!(conn, c => diesel::insert_into(sk::table).values(values).on_conflict(sk::id).do_nothing().execute(c))?;
    match read(conn)? {
        Some(row) => Ok(row),
        None => Err(crate::StoreError::Corrupt("server_key")),
    }
}

/// Moves the stored check value from `from` (the previous key's) to a new key, only if it is
/// still `from` (an atomic conditional update); whether it moved.
pub fn replace(
    conn: &mut DbConn,
    from: &[u8],
    fingerprint: &str,
    check_value: &[u8],
    now: DateTime<Utc>,
) -> StoreResult<bool> {
    let n = diesel::update(sk::table.filter(sk::id.eq(1)).filter(sk::check_value.eq(from)))
        .set((sk::fingerprint.eq(fingerprint), sk::check_value.eq(check_value), sk::updated_at.eq(ms(now))))
        .execute(conn)?;
    Ok(n == 1)
}
