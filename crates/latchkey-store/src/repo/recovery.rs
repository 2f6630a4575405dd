//! `recovery_requests`: agents' and supervisors' requests for an admin reset.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use latchkey_core::{RecoveryRequestId, TenantId, UserId};

use super::Page;
use crate::DbConn;
use crate::error::StoreResult;
use crate::model::{RecoveryRequest, RecoveryStatus, at, at_opt, ms, parse, parse_opt};
use crate::schema::recovery_requests as rr;

#[derive(Queryable, Selectable)]
#[diesel(table_name = rr)]
struct Row {
    id: String,
    tenant_id: String,
    user_id: String,
    status: String,
    ip: Option<String>,
    user_agent: Option<String>,
    created_at: i64,
    decided_at: Option<i64>,
    decided_by: Option<String>,
}

impl Row {
    fn into_request(self) -> StoreResult<RecoveryRequest> {
        Ok(RecoveryRequest {
            id: parse("recovery request id", &self.id)?,
            tenant_id: parse("tenant id", &self.tenant_id)?,
            user_id: parse("user id", &self.user_id)?,
            status: parse::<RecoveryStatus>("recovery status", &self.status)?,
            ip: self.ip,
            user_agent: self.user_agent,
            created_at: at(self.created_at)?,
            decided_at: at_opt(self.decided_at)?,
            decided_by: parse_opt("user id", self.decided_by.as_deref())?,
        })
    }
}

/// Stores a request. Errors: `Conflict` if the user already has a pending one.
pub fn insert(conn: &mut DbConn, r: &RecoveryRequest) -> StoreResult<()> {
    diesel::insert_into(rr::table)
        .values((
            rr::id.eq(r.id.to_string()),
            rr::tenant_id.eq(r.tenant_id.to_string()),
            rr::user_id.eq(r.user_id.to_string()),
            rr::status.eq(r.status.as_str()),
            rr::ip.eq(r.ip.clone()),
            rr::user_agent.eq(r.user_agent.clone()),
            rr::created_at.eq(ms(r.created_at)),
        ))
        .execute(conn)?;
    Ok(())
}

/// The pending request of `user`, if any.
pub fn pending_for_user(conn: &mut DbConn, user: UserId) -> StoreResult<Option<RecoveryRequest>> {
    rr::table
        .filter(rr::user_id.eq(user.to_string()))
        .filter(rr::status.eq(RecoveryStatus::Pending.as_str()))
        .select(Row::as_select())
        .first(conn)
        .optional()?
        .map(Row::into_request)
        .transpose()
}

/// The request `id` of `tenant`.
pub fn by_id(conn: &mut DbConn, tenant: TenantId, id: RecoveryRequestId) -> StoreResult<Option<RecoveryRequest>> {
    rr::table
        .filter(rr::tenant_id.eq(tenant.to_string()))
        .filter(rr::id.eq(id.to_string()))
        .select(Row::as_select())
        .first(conn)
        .optional()?
        .map(Row::into_request)
        .transpose()
}

/// Requests of `tenant`, newest first, optionally of one status.
pub fn list(
    conn: &mut DbConn,
    tenant: TenantId,
    status: Option<RecoveryStatus>,
    page: Page<'_>,
) -> StoreResult<Vec<RecoveryRequest>> {
    let mut q = rr::table.filter(rr::tenant_id.eq(tenant.to_string())).into_boxed();
    if let Some(status) = status {
        q = q.filter(rr::status.eq(status.as_str()));
    }
    if let Some(after) = page.after {
        q = q.filter(rr::id.lt(after.to_owned()));
    }
    q.order(rr::id.desc())
        .limit(page.limit)
        .select(Row::as_select())
        .load(conn)?
        .into_iter()
        .map(Row::into_request)
        .collect()
}

/// Decides a pending request; returns whether it was pending (atomic conditional update).
pub fn decide(
    conn: &mut DbConn,
    id: RecoveryRequestId,
    status: RecoveryStatus,
    by: UserId,
    now: DateTime<Utc>,
) -> StoreResult<bool> {
    let n = diesel::update(rr::table.find(id.to_string()).filter(rr::status.eq(RecoveryStatus::Pending.as_str())))
        .set((rr::status.eq(status.as_str()), rr::decided_at.eq(ms(now)), rr::decided_by.eq(by.to_string())))
        .execute(conn)?;
    Ok(n == 1)
}

/// Dismisses `user`'s pending request, if any, as decided by `by` (a role change voids it:
/// DESIGN.md "Accounts"); returns whether there was one.
pub fn dismiss_pending_for_user(conn: &mut DbConn, user: UserId, by: UserId, now: DateTime<Utc>) -> StoreResult<bool> {
    let n = diesel::update(
        rr::table.filter(rr::user_id.eq(user.to_string())).filter(rr::status.eq(RecoveryStatus::Pending.as_str())),
    )
    .set((
        rr::status.eq(RecoveryStatus::Dismissed.as_str()),
        rr::decided_at.eq(ms(now)),
        rr::decided_by.eq(by.to_string()),
    ))
    .execute(conn)?;
    Ok(n > 0)
}
