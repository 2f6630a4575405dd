//! `mail_deliveries`: one row per queued email, the idempotency record that makes a job
//! send at most one message however often it is retried or redelivered.
//!
//! States: `pending` → (claim) `sending` → `sent` | `dropped`; a failed attempt goes back to
//! `pending`. A `sending` claim older than the lease is considered abandoned (a crashed
//! worker) and may be claimed again.

use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use latchkey_core::DeliveryId;

use crate::DbConn;
use crate::error::StoreResult;
use crate::model::ms;
use crate::schema::mail_deliveries as md;

/// A delivery's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Waiting to be sent (or to be retried).
    Pending,
    /// Claimed by a worker that is talking to the SMTP server.
    Sending,
    /// Accepted by the SMTP server.
    Sent,
    /// Given up (expired before it could be sent).
    Dropped,
}

impl DeliveryState {
    fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Sending => "sending",
            DeliveryState::Sent => "sent",
            DeliveryState::Dropped => "dropped",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "sending" => Self::Sending,
            "sent" => Self::Sent,
            "dropped" => Self::Dropped,
            _ => return None,
        })
    }
}

/// Records a new delivery (state `pending`).
pub fn insert(conn: &mut DbConn, id: DeliveryId, kind: &str, now: DateTime<Utc>) -> StoreResult<()> {
    diesel::insert_into(md::table)
        .values((
            md::id.eq(id.to_string()),
            md::kind.eq(kind),
            md::state.eq(DeliveryState::Pending.as_str()),
            md::attempts.eq(0),
            md::created_at.eq(ms(now)),
            md::updated_at.eq(ms(now)),
        ))
        .execute(conn)?;
    Ok(())
}

/// Claims the delivery for sending: succeeds only from `pending`, or from a `sending` claim
/// older than `lease` (atomic conditional update, so two workers never both win).
pub fn claim(conn: &mut DbConn, id: DeliveryId, now: DateTime<Utc>, lease: Duration) -> StoreResult<bool> {
    let n = diesel::update(
        md::table.find(id.to_string()).filter(
            md::state
                .eq(DeliveryState::Pending.as_str())
                .or(md::state.eq(DeliveryState::Sending.as_str()).and(md::updated_at.lt(ms(now - lease)))),
        ),
    )
    .set((md::state.eq(DeliveryState::Sending.as_str()), md::attempts.eq(md::attempts + 1), md::updated_at.eq(ms(now))))
    .execute(conn)?;
    Ok(n == 1)
}

/// Moves a claimed delivery to `state` (`Sent`, `Dropped`, or back to `Pending` after a
/// failed attempt).
pub fn finish(conn: &mut DbConn, id: DeliveryId, state: DeliveryState, now: DateTime<Utc>) -> StoreResult<()> {
    diesel::update(md::table.find(id.to_string()))
        .set((md::state.eq(state.as_str()), md::updated_at.eq(ms(now))))
        .execute(conn)?;
    Ok(())
}

/// The delivery's state and attempts so far.
pub fn get(conn: &mut DbConn, id: DeliveryId) -> StoreResult<Option<(DeliveryState, i32)>> {
    let row: Option<(String, i32)> =
        md::table.find(id.to_string()).select((md::state, md::attempts)).first(conn).optional()?;
    row.map(|(s, n)| DeliveryState::parse(&s).map(|s| (s, n)).ok_or(crate::StoreError::Corrupt("delivery state")))
        .transpose()
}

/// Deletes finished deliveries older than `before` (housekeeping).
pub fn purge_before(conn: &mut DbConn, before: DateTime<Utc>) -> StoreResult<usize> {
    Ok(diesel::delete(
        md::table
            .filter(md::updated_at.lt(ms(before)))
            .filter(md::state.eq_any([DeliveryState::Sent.as_str(), DeliveryState::Dropped.as_str()])),
    )
    .execute(conn)?)
}
