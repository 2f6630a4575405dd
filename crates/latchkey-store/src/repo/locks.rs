//! Row locks and the one order they are taken in (DESIGN.md "Atomic sign-in").
//!
//! ```text
//!   tenant row  ──then──▶  user row  ──then──▶  the user's other rows (challenge, codes, …)
//! ```
//!
//! Every transaction that locks more than one of these takes them in this order, so two
//! requests never wait for each other in a cycle (no deadlock). On Postgres the locks are row
//! locks (`FOR SHARE` / `FOR UPDATE`); on SQLite the `BEGIN IMMEDIATE` of
//! [`write_tx`](crate::write_tx) already serialises every writer, and these are plain reads.
//!
//! - A sign-in takes the tenant `FOR SHARE` (sign-ins of one tenant do not wait for each
//!   other, but wait for a change of the tenant's policy, and it for them) and the user
//!   `FOR UPDATE`, and decides on the rows it read under them.
//! - A change of the tenant (policy, settings, users counted for the last-admin rule) takes
//!   the tenant `FOR UPDATE` first ([`users::lock_tenant`](super::users::lock_tenant)).
//! - A change of one user takes the user `FOR UPDATE` ([`users::lock`](super::users::lock)).

use diesel::prelude::*;
use latchkey_core::{TenantId, UserId};

use super::{tenants, users};
use crate::DbConn;
use crate::error::StoreResult;
use crate::model::{Tenant, User};
use crate::schema::tenants as t;

/// How a tenant row is locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantLock {
    /// `FOR SHARE`: readers that must not see the policy change under them (sign-in).
    Share,
    /// `FOR UPDATE`: writers of the tenant row or of what is counted per tenant.
    Update,
}

/// The tenant `id`, read under a lock of `mode` held until the transaction ends.
pub fn tenant(conn: &mut DbConn, id: TenantId, mode: TenantLock) -> StoreResult<Option<Tenant>> {
    if let DbConn::Pg(pg) = conn {
        let q = t::table.find(id.to_string()).select(t::id);
        let found = match mode {
            TenantLock::Share => q.for_share().first::<String>(pg).optional()?,
            TenantLock::Update => q.for_update().first::<String>(pg).optional()?,
        };
        if found.is_none() {
            return Ok(None);
        }
    }
    tenants::by_id(conn, id)
}

/// The tenant (locked as `mode`) and then its user `user` (`FOR UPDATE`), in the lock order;
/// `None` when either is gone.
pub fn tenant_then_user(
    conn: &mut DbConn,
    tenant_id: TenantId,
    mode: TenantLock,
    user: UserId,
) -> StoreResult<Option<(Tenant, User)>> {
    let Some(tenant) = tenant(conn, tenant_id, mode)? else { return Ok(None) };
    Ok(users::lock_and_get(conn, tenant_id, user)?.map(|u| (tenant, u)))
}
