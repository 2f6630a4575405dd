//! `audit_events`: the tenant's audit log, written in the transaction of the change it
//! records — with the webhook deliveries of each event (DESIGN.md 5.6): one per enabled
//! endpoint of the tenant subscribed to its kind, in the same transaction (on Postgres, in the
//! same statement).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use latchkey_core::{AuditEventId, AuditKind, DeliveryId, TenantId};

use super::Page;
use crate::DbConn;
use crate::error::StoreResult;
use crate::model::{AuditEvent, at, ms, parse};
use crate::schema::audit_events as ae;

#[derive(Queryable, Selectable)]
#[diesel(table_name = ae)]
struct Row {
    id: String,
    tenant_id: String,
    at: i64,
    actor_id: Option<String>,
    subject_id: Option<String>,
    kind: String,
    ip: Option<String>,
    user_agent: Option<String>,
    detail: String,
}

impl Row {
    fn into_event(self) -> StoreResult<AuditEvent> {
        Ok(AuditEvent {
            id: parse("audit event id", &self.id)?,
            tenant_id: parse("tenant id", &self.tenant_id)?,
            at: at(self.at)?,
            actor_id: self.actor_id,
            subject_id: self.subject_id,
            kind: parse::<AuditKind>("audit kind", &self.kind)?,
            ip: self.ip,
            user_agent: self.user_agent,
            detail: serde_json::from_str(&self.detail).map_err(|_| crate::StoreError::Corrupt("audit detail"))?,
        })
    }
}

#[derive(Insertable)]
#[diesel(table_name = ae)]
struct NewRow {
    id: String,
    tenant_id: String,
    at: i64,
    actor_id: Option<String>,
    subject_id: Option<String>,
    kind: &'static str,
    ip: Option<String>,
    user_agent: Option<String>,
    detail: String,
}

impl NewRow {
    fn of(e: &AuditEvent) -> Self {
        Self {
            id: e.id.to_string(),
            tenant_id: e.tenant_id.to_string(),
            at: ms(e.at),
            actor_id: e.actor_id.clone(),
            subject_id: e.subject_id.clone(),
            kind: e.kind.as_str(),
            ip: e.ip.clone(),
            user_agent: e.user_agent.clone(),
            detail: e.detail.to_string(),
        }
    }
}

/// Appends an event (and its webhook deliveries, whose ids it returns).
pub fn insert(conn: &mut DbConn, e: &AuditEvent) -> StoreResult<Vec<DeliveryId>> {
    insert_all(conn, std::slice::from_ref(e))
}

/// Appends several events, and creates their webhook deliveries, in one statement on
/// Postgres (so an audit write costs one round trip with or without webhooks). Returns the
/// ids of the webhook deliveries created, for the request to queue once it is done (the
/// worker's sweep queues any it does not).
pub fn insert_all(conn: &mut DbConn, events: &[AuditEvent]) -> StoreResult<Vec<DeliveryId>> {
    use diesel::sql_types::{Array, BigInt, Nullable, Text};
    if events.is_empty() {
        return Ok(Vec::new());
    }
    match conn {
        DbConn::Pg(pg) => {
            let rows: Vec<NewRow> = events.iter().map(NewRow::of).collect();
            let created: Vec<CreatedId> = diesel::sql_query(format!(
                "WITH audit AS (INSERT INTO audit_events \
                 (id, tenant_id, at, actor_id, subject_id, kind, ip, user_agent, detail) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], \
                 $6::text[], $7::text[], $8::text[], $9::text[]) RETURNING id, tenant_id, kind, at) {}",
                super::webhooks::PG_FAN_OUT
            ))
            .bind::<Array<Text>, _>(rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(rows.iter().map(|r| r.tenant_id.clone()).collect::<Vec<_>>())
            .bind::<Array<BigInt>, _>(rows.iter().map(|r| r.at).collect::<Vec<_>>())
            .bind::<Array<Nullable<Text>>, _>(rows.iter().map(|r| r.actor_id.clone()).collect::<Vec<_>>())
            .bind::<Array<Nullable<Text>>, _>(rows.iter().map(|r| r.subject_id.clone()).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(rows.iter().map(|r| r.kind).collect::<Vec<_>>())
            .bind::<Array<Nullable<Text>>, _>(rows.iter().map(|r| r.ip.clone()).collect::<Vec<_>>())
            .bind::<Array<Nullable<Text>>, _>(rows.iter().map(|r| r.user_agent.clone()).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(rows.iter().map(|r| r.detail.clone()).collect::<Vec<_>>())
            .load(pg)?;
            created.into_iter().map(|c| parse("delivery id", &c.id)).collect()
        }
        // No round trip to save on SQLite.
        DbConn::Sqlite(lite) => {
            for e in events {
                diesel::insert_into(ae::table).values(NewRow::of(e)).execute(lite)?;
            }
            super::webhooks::fan_out(conn, events)
        }
    }
}

/// The id of a webhook delivery the audit statement created (Postgres).
#[derive(QueryableByName)]
struct CreatedId {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
}

/// The event `id` of `tenant`.
pub fn by_id(conn: &mut DbConn, tenant: TenantId, id: AuditEventId) -> StoreResult<Option<AuditEvent>> {
    ae::table
        .filter(ae::tenant_id.eq(tenant.to_string()))
        .filter(ae::id.eq(id.to_string()))
        .select(Row::as_select())
        .first(conn)
        .optional()?
        .map(Row::into_event)
        .transpose()
}

/// Filters of the audit log.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only events at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Only events of this kind.
    pub kind: Option<AuditKind>,
    /// Only events about this subject.
    pub subject_id: Option<String>,
}

/// Events of `tenant`, newest first.
pub fn list(conn: &mut DbConn, tenant: TenantId, filter: &AuditFilter, page: Page<'_>) -> StoreResult<Vec<AuditEvent>> {
    let mut q = ae::table.filter(ae::tenant_id.eq(tenant.to_string())).into_boxed();
    if let Some(since) = filter.since {
        q = q.filter(ae::at.ge(ms(since)));
    }
    if let Some(kind) = filter.kind {
        q = q.filter(ae::kind.eq(kind.as_str()));
    }
    if let Some(subject) = &filter.subject_id {
        q = q.filter(ae::subject_id.eq(subject.clone()));
    }
    if let Some(after) = page.after {
        q = q.filter(ae::id.lt(after.to_owned()));
    }
    q.order(ae::id.desc())
        .limit(page.limit)
        .select(Row::as_select())
        .load(conn)?
        .into_iter()
        .map(Row::into_event)
        .collect()
}
