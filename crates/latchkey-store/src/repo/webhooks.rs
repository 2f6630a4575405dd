//! `webhooks`: a tenant's webhook endpoints (DESIGN.md 5.6), and their deliveries: one
//! `deliveries` row per (audit event, endpoint), created in the transaction that writes the
//! audit event ([`fan_out`], called by [`audit::insert_all`](super::audit::insert_all); on
//! Postgres the same statement inserts both).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use latchkey_core::webhook::Events;
use latchkey_core::{AuditEventId, DeliveryId, TenantId, WebhookId};

use super::deliveries::{Delivery, DeliveryKind, DeliveryState};
use crate::DbConn;
use crate::error::{StoreError, StoreResult};
use crate::model::{AuditEvent, at, ms, parse};
use crate::schema::{deliveries as d, webhooks as w};

/// A webhook endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Id.
    pub id: WebhookId,
    /// The tenant.
    pub tenant_id: TenantId,
    /// Where deliveries are POSTed.
    pub url: String,
    /// What it subscribes to.
    pub events: Events,
    /// The admin's note.
    pub description: Option<String>,
    /// Whether new events are delivered.
    pub enabled: bool,
    /// The signing secret, sealed under the server key ([`secret_aad`]).
    pub secret_sealed: Vec<u8>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

/// The associated data of a webhook's sealed secret: binds it to its endpoint.
pub fn secret_aad(id: WebhookId) -> Vec<u8> {
    super::sealed::SealedColumn::WebhookSecret.aad(&id.to_string())
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = w)]
struct Row {
    id: String,
    tenant_id: String,
    url: String,
    events: String,
    description: Option<String>,
    enabled: bool,
    secret_sealed: Vec<u8>,
    created_at: i64,
}

impl Row {
    fn into_webhook(self) -> StoreResult<Webhook> {
        Ok(Webhook {
            id: parse("webhook id", &self.id)?,
            tenant_id: parse("tenant id", &self.tenant_id)?,
            url: self.url,
            events: Events::from_stored(&self.events),
            description: self.description,
            enabled: self.enabled,
            secret_sealed: self.secret_sealed,
            created_at: at(self.created_at)?,
        })
    }
}

/// Adds an endpoint.
pub fn insert(conn: &mut DbConn, h: &Webhook) -> StoreResult<()> {
    diesel::insert_into(w::table)
        .values((
            w::id.eq(h.id.to_string()),
            w::tenant_id.eq(h.tenant_id.to_string()),
            w::url.eq(&h.url),
            w::events.eq(h.events.to_stored()),
            w::description.eq(h.description.as_deref()),
            w::enabled.eq(h.enabled),
            w::secret_sealed.eq(&h.secret_sealed),
            w::created_at.eq(ms(h.created_at)),
            w::updated_at.eq(ms(h.created_at)),
        ))
        .execute(conn)?;
    Ok(())
}

/// The endpoints of `tenant`, oldest first.
pub fn list(conn: &mut DbConn, tenant: TenantId) -> StoreResult<Vec<Webhook>> {
    w::table
        .filter(w::tenant_id.eq(tenant.to_string()))
        .order(w::id.asc())
        .select(Row::as_select())
        .load(conn)?
        .into_iter()
        .map(Row::into_webhook)
        .collect()
}

/// How many endpoints `tenant` has.
pub fn count(conn: &mut DbConn, tenant: TenantId) -> StoreResult<i64> {
    Ok(w::table.filter(w::tenant_id.eq(tenant.to_string())).count().get_result(conn)?)
}

/// The endpoint `id` of `tenant` (another tenant's is `None`).
pub fn get(conn: &mut DbConn, tenant: TenantId, id: WebhookId) -> StoreResult<Option<Webhook>> {
    w::table
        .filter(w::tenant_id.eq(tenant.to_string()))
        .filter(w::id.eq(id.to_string()))
        .select(Row::as_select())
        .first(conn)
        .optional()?
        .map(Row::into_webhook)
        .transpose()
}

/// Replaces the endpoint's URL, events, description and switch (the caller read it first).
pub fn update(conn: &mut DbConn, h: &Webhook, now: DateTime<Utc>) -> StoreResult<()> {
    diesel::update(w::table.find(h.id.to_string()))
        .set((
            w::url.eq(&h.url),
            w::events.eq(h.events.to_stored()),
            w::description.eq(h.description.as_deref()),
            w::enabled.eq(h.enabled),
            w::updated_at.eq(ms(now)),
        ))
        .execute(conn)?;
    Ok(())
}

/// Replaces the endpoint's sealed secret: the old one stops at once (every later attempt is
/// signed with the new one).
pub fn set_secret(conn: &mut DbConn, id: WebhookId, sealed: &[u8], now: DateTime<Utc>) -> StoreResult<()> {
    diesel::update(w::table.find(id.to_string()))
        .set((w::secret_sealed.eq(sealed), w::updated_at.eq(ms(now))))
        .execute(conn)?;
    Ok(())
}

/// Deletes the endpoint and its deliveries.
pub fn delete(conn: &mut DbConn, id: WebhookId) -> StoreResult<bool> {
    diesel::delete(d::table.filter(d::webhook_id.eq(id.to_string()))).execute(conn)?;
    Ok(diesel::delete(w::table.find(id.to_string())).execute(conn)? == 1)
}

/// The statement that creates the webhook deliveries of the audit events returned by the
/// CTE `audit` (`id, tenant_id, kind, at`) on Postgres: one per enabled endpoint of the
/// event's tenant that subscribes to its kind; returns their `id`s (for the request to queue
/// at once, the sweep being the fallback). Shared by [`audit::insert_all`]
/// (super::audit::insert_all) and the one-statement TOTP sign-in.
pub(crate) const PG_FAN_OUT: &str = "INSERT INTO deliveries \
    (id, tenant_id, kind, state, attempts, next_attempt_at, lease_until, webhook_id, event_id, created_at, updated_at) \
    SELECT gen_random_uuid()::text, a.tenant_id, 'webhook', 'pending', 0, a.at, 0, wh.id, a.id, a.at, a.at \
    FROM audit a JOIN webhooks wh ON wh.tenant_id = a.tenant_id AND wh.enabled \
    AND (wh.events = '*' OR strpos(wh.events, ',' || a.kind || ',') > 0) \
    RETURNING id";

/// Creates the webhook deliveries of `events`, just written (SQLite; on Postgres the audit
/// statement does it): one per enabled endpoint of the event's tenant subscribed to its kind,
/// due at once. Returns their ids (the request queues them when it is done; the sweep is the
/// fallback).
pub fn fan_out(conn: &mut DbConn, events: &[AuditEvent]) -> StoreResult<Vec<DeliveryId>> {
    let mut created = Vec::new();
    for e in events {
        let needle = format!(",{},", e.kind.as_str());
        let hooks: Vec<String> = w::table
            .filter(w::tenant_id.eq(e.tenant_id.to_string()))
            .filter(w::enabled.eq(true))
            .filter(w::events.eq("*").or(w::events.like(format!("%{}%", like_escape(&needle))).escape('\\')))
            .select(w::id)
            .load(conn)?;
        for hook in hooks {
            let id = DeliveryId::new();
            diesel::insert_into(d::table)
                .values((
                    d::id.eq(id.to_string()),
                    d::tenant_id.eq(e.tenant_id.to_string()),
                    d::kind.eq(DeliveryKind::Webhook.as_str()),
                    d::state.eq(DeliveryState::Pending.as_str()),
                    d::attempts.eq(0),
                    d::next_attempt_at.eq(ms(e.at)),
                    d::lease_until.eq(0),
                    d::webhook_id.eq(hook),
                    d::event_id.eq(e.id.to_string()),
                    d::created_at.eq(ms(e.at)),
                    d::updated_at.eq(ms(e.at)),
                ))
                .execute(conn)?;
            created.push(id);
        }
    }
    Ok(created)
}

/// `s` with the `LIKE` wildcards escaped (`\\` as the escape character).
fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

/// The deliveries of endpoint `id`, newest event first, after the cursor (an event id), each
/// with its audit event's kind (`None` once the event is gone).
pub fn deliveries(
    conn: &mut DbConn,
    id: WebhookId,
    after: Option<AuditEventId>,
    limit: i64,
) -> StoreResult<Vec<(Delivery, Option<String>)>> {
    use crate::schema::audit_events as a;
    let mut q = d::table.filter(d::webhook_id.eq(id.to_string())).into_boxed();
    if let Some(after) = after {
        q = q.filter(d::event_id.lt(after.to_string()));
    }
    let ids: Vec<(String, Option<String>)> =
        q.order(d::event_id.desc()).limit(limit).select((d::id, d::event_id)).load(conn)?;
    let mut out = Vec::with_capacity(ids.len());
    for (i, event) in ids {
        let delivery = super::deliveries::get(conn, parse("delivery id", &i)?)?;
        let kind: Option<String> = match event {
            Some(e) => a::table.find(e).select(a::kind).first(conn).optional()?,
            None => None,
        };
        out.push((delivery.ok_or(StoreError::Corrupt("delivery vanished"))?, kind));
    }
    Ok(out)
}

/// Makes a delivery of endpoint `hook` due at once with a fresh run of attempts (the admin's
/// "retry"); a delivery being attempted right now is left alone. `false` when the endpoint has
/// no such delivery.
pub fn retry(conn: &mut DbConn, hook: WebhookId, delivery: DeliveryId, now: DateTime<Utc>) -> StoreResult<bool> {
    let mine = d::table.filter(d::id.eq(delivery.to_string())).filter(d::webhook_id.eq(hook.to_string()));
    let found: Option<String> = mine.clone().select(d::state).first(conn).optional()?;
    let Some(state) = found else { return Ok(false) };
    if state != DeliveryState::Sending.as_str() {
        diesel::update(mine)
            .set((
                d::state.eq(DeliveryState::Pending.as_str()),
                d::attempts.eq(0),
                d::next_attempt_at.eq(ms(now)),
                d::lease_until.eq(0),
                d::updated_at.eq(ms(now)),
            ))
            .execute(conn)?;
    }
    Ok(true)
}

/// What a worker needs to make a webhook delivery: the endpoint, its tenant's slug and the
/// audit event. `None` when the endpoint or the event no longer exists.
pub fn target(conn: &mut DbConn, delivery: &Delivery) -> StoreResult<Option<(Webhook, String, AuditEvent)>> {
    let (Some(hook), Some(event)) = (&delivery.webhook_id, &delivery.event_id) else {
        return Err(StoreError::Corrupt("webhook delivery without endpoint or event"));
    };
    let hook: Option<Webhook> = w::table
        .filter(w::id.eq(hook))
        .select(Row::as_select())
        .first(conn)
        .optional()?
        .map(Row::into_webhook)
        .transpose()?;
    let Some(hook) = hook else { return Ok(None) };
    let Some(tenant) = super::tenants::by_id(conn, hook.tenant_id)? else { return Ok(None) };
    let event = super::audit::by_id(conn, hook.tenant_id, parse("audit event id", event)?)?;
    Ok(event.map(|e| (hook, tenant.slug, e)))
}
