//! `deliveries`: the record of what is owed (DESIGN.md 5.8, "queue loss"). One row per email
//! (sign-in code, reset link, notice) and per webhook delivery, written in the transaction of
//! what it announces; the job queue carries only delivery ids, and a sweep re-queues the rows
//! that are due and not in flight, so a queue that loses its contents loses nothing.
//!
//! ```text
//!              claim (a worker)                 accepted
//!   pending ───────────────────▶ sending ───────────────────▶ sent
//!     ▲  ▲                          │   refused for good, expired ──▶ dropped | failed
//!     │  └── reschedule (retry) ────┘
//!     └───── the sweep, once a `sending` claim's lease ran out (a worker died)
//! ```
//!
//! `lease_until` says how long a row is in flight: queued (the queue is trusted to hand it to
//! a worker until then), claimed by a worker, or held by a worker waiting for its next
//! attempt. The sweep takes only rows that are due (`next_attempt_at`) and whose lease has run
//! out. The claim is an atomic conditional update, so however many copies of a job exist
//! (a re-queue, a redelivery after a crash) one message is sent at most once.
//!
//! A mail row's `payload` is its message, sealed by the caller (never plaintext); a webhook
//! row has none: it names its endpoint (`webhook_id`) and its audit event (`event_id`), which
//! hold everything the message is made of.

use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use latchkey_core::{DeliveryId, TenantId};

use crate::DbConn;
use crate::error::{StoreError, StoreResult};
use crate::model::{at, at_opt, ms, parse};
use crate::schema::deliveries as d;

/// A delivery's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Waiting to be sent (or retried) once `next_attempt_at` has come.
    Pending,
    /// Claimed by a worker that is sending it.
    Sending,
    /// Accepted by the mail server, or answered 2xx by the webhook endpoint.
    Sent,
    /// Not sent and never will be: its code or link expired or was voided.
    Dropped,
    /// Given up: refused for good, unreadable, or out of attempts.
    Failed,
}

impl DeliveryState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Sending => "sending",
            DeliveryState::Sent => "sent",
            DeliveryState::Dropped => "dropped",
            DeliveryState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "sending" => Self::Sending,
            "sent" => Self::Sent,
            "dropped" => Self::Dropped,
            "failed" => Self::Failed,
            _ => return None,
        })
    }

    /// Whether the delivery is over (sent, dropped or failed).
    pub fn is_final(self) -> bool {
        matches!(self, DeliveryState::Sent | DeliveryState::Dropped | DeliveryState::Failed)
    }
}

/// What a delivery carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryKind {
    /// An emailed sign-in code.
    Otp,
    /// An admin's reset link.
    ResetLink,
    /// A notice mail (DESIGN.md 5.6).
    Notice,
    /// A webhook delivery (DESIGN.md 5.6).
    Webhook,
}

impl DeliveryKind {
    /// The stored name, also the `kind` label of `latchkey_email_jobs_total` for mail.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryKind::Otp => "otp",
            DeliveryKind::ResetLink => "reset_link",
            DeliveryKind::Notice => "notice",
            DeliveryKind::Webhook => "webhook",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "otp" => Self::Otp,
            "reset_link" => Self::ResetLink,
            "notice" => Self::Notice,
            "webhook" => Self::Webhook,
            _ => return None,
        })
    }
}

/// A delivery row.
#[derive(Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Id (the queue job and the idempotency key; a webhook's `webhook-id`).
    pub id: DeliveryId,
    /// The tenant.
    pub tenant_id: TenantId,
    /// What it carries.
    pub kind: DeliveryKind,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts so far (claims).
    pub attempts: i32,
    /// A mail's message, sealed by the caller.
    pub payload: Option<Vec<u8>>,
    /// When a code's or link's mail stops being worth sending.
    pub expires_at: Option<DateTime<Utc>>,
    /// When the next attempt is due.
    pub next_attempt_at: DateTime<Utc>,
    /// A webhook delivery's endpoint.
    pub webhook_id: Option<String>,
    /// A webhook delivery's audit event.
    pub event_id: Option<String>,
    /// The last HTTP status a webhook endpoint answered.
    pub last_status: Option<i32>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was delivered.
    pub delivered_at: Option<DateTime<Utc>>,
    /// When it was recorded (the job's enqueue time).
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("state", &self.state)
            .field("attempts", &self.attempts)
            .field("payload", &self.payload.as_ref().map(|_| "<sealed>"))
            .finish_non_exhaustive()
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = d)]
struct Row {
    id: String,
    tenant_id: String,
    kind: String,
    state: String,
    attempts: i32,
    payload: Option<Vec<u8>>,
    expires_at: Option<i64>,
    next_attempt_at: i64,
    webhook_id: Option<String>,
    event_id: Option<String>,
    last_status: Option<i32>,
    last_error: Option<String>,
    delivered_at: Option<i64>,
    created_at: i64,
}

impl Row {
    fn into_delivery(self) -> StoreResult<Delivery> {
        Ok(Delivery {
            id: parse("delivery id", &self.id)?,
            tenant_id: parse("tenant id", &self.tenant_id)?,
            kind: DeliveryKind::parse(&self.kind).ok_or(StoreError::Corrupt("delivery kind"))?,
            state: DeliveryState::parse(&self.state).ok_or(StoreError::Corrupt("delivery state"))?,
            attempts: self.attempts,
            payload: self.payload,
            expires_at: at_opt(self.expires_at)?,
            next_attempt_at: at(self.next_attempt_at)?,
            webhook_id: self.webhook_id,
            event_id: self.event_id,
            last_status: self.last_status,
            last_error: self.last_error,
            delivered_at: at_opt(self.delivered_at)?,
            created_at: at(self.created_at)?,
        })
    }
}

/// A mail to record, due at once.
pub struct NewMail<'a> {
    /// Its id.
    pub id: DeliveryId,
    /// The tenant.
    pub tenant_id: TenantId,
    /// `Otp`, `ResetLink` or `Notice`.
    pub kind: DeliveryKind,
    /// The message, sealed with [`payload_aad`] of `id`.
    pub payload: &'a [u8],
    /// When a code's or link's mail stops being worth sending.
    pub expires_at: Option<DateTime<Utc>>,
    /// Until when the row counts as in flight: `now` when nobody pushes it to the queue (the
    /// sweep will), later when the caller pushes it right after the commit.
    pub lease_until: DateTime<Utc>,
    /// The instant of the request.
    pub now: DateTime<Utc>,
}

/// The associated data under which a mail delivery's payload is sealed: binds the
/// ciphertext to its row, so it cannot be moved into another.
pub fn payload_aad(id: DeliveryId) -> Vec<u8> {
    super::sealed::SealedColumn::DeliveryPayload.aad(&id.to_string())
}

/// Records a mail delivery (state `pending`, due at `now`).
pub fn insert_mail(conn: &mut DbConn, m: &NewMail<'_>) -> StoreResult<()> {
    diesel::insert_into(d::table)
        .values((
            d::id.eq(m.id.to_string()),
            d::tenant_id.eq(m.tenant_id.to_string()),
            d::kind.eq(m.kind.as_str()),
            d::state.eq(DeliveryState::Pending.as_str()),
            d::attempts.eq(0),
            d::payload.eq(Some(m.payload)),
            d::expires_at.eq(m.expires_at.map(ms)),
            d::next_attempt_at.eq(ms(m.now)),
            d::lease_until.eq(ms(m.lease_until)),
            d::created_at.eq(ms(m.now)),
            d::updated_at.eq(ms(m.now)),
        ))
        .execute(conn)?;
    Ok(())
}

/// The delivery `id`.
pub fn get(conn: &mut DbConn, id: DeliveryId) -> StoreResult<Option<Delivery>> {
    d::table.find(id.to_string()).select(Row::as_select()).first(conn).optional()?.map(Row::into_delivery).transpose()
}

/// The deliveries of `kind` of `tenant`, oldest first (for operators and tests).
pub fn of_tenant(conn: &mut DbConn, tenant: TenantId, kind: DeliveryKind) -> StoreResult<Vec<Delivery>> {
    d::table
        .filter(d::tenant_id.eq(tenant.to_string()))
        .filter(d::kind.eq(kind.as_str()))
        .order(d::id.asc())
        .select(Row::as_select())
        .load(conn)?
        .into_iter()
        .map(Row::into_delivery)
        .collect()
}

/// Claims the delivery for an attempt: succeeds only when it is due and `pending`, or
/// `sending` under a claim whose lease has run out (a worker that died); the attempt is
/// counted and the row is leased to the caller until `now + lease`. An atomic conditional
/// update, so two workers never both win.
pub fn claim(conn: &mut DbConn, id: DeliveryId, now: DateTime<Utc>, lease: Duration) -> StoreResult<bool> {
    let n = diesel::update(
        d::table.find(id.to_string()).filter(d::next_attempt_at.le(ms(now))).filter(
            d::state
                .eq(DeliveryState::Pending.as_str())
                .or(d::state.eq(DeliveryState::Sending.as_str()).and(d::lease_until.le(ms(now)))),
        ),
    )
    .set((
        d::state.eq(DeliveryState::Sending.as_str()),
        d::attempts.eq(d::attempts + 1),
        d::lease_until.eq(ms(now + lease)),
        d::updated_at.eq(ms(now)),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// Claims a pending delivery that the caller rescheduled and waited for itself (see
/// [`reschedule`]), even a little before its due time.
pub fn claim_held(conn: &mut DbConn, id: DeliveryId, now: DateTime<Utc>, lease: Duration) -> StoreResult<bool> {
    let n = diesel::update(d::table.find(id.to_string()).filter(d::state.eq(DeliveryState::Pending.as_str())))
        .set((
            d::state.eq(DeliveryState::Sending.as_str()),
            d::attempts.eq(d::attempts + 1),
            d::lease_until.eq(ms(now + lease)),
            d::updated_at.eq(ms(now)),
        ))
        .execute(conn)?;
    Ok(n == 1)
}

/// What an attempt learnt: the endpoint's HTTP status and the reason of a failure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attempt {
    /// The HTTP status a webhook endpoint answered.
    pub status: Option<i32>,
    /// Why it failed (never a secret: a status line, a transport error, a refusal).
    pub error: Option<String>,
}

/// Ends a claimed delivery: `Sent` (with the delivery time), `Dropped` or `Failed`.
pub fn finish(
    conn: &mut DbConn,
    id: DeliveryId,
    state: DeliveryState,
    attempt: &Attempt,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let delivered = (state == DeliveryState::Sent).then(|| ms(now));
    diesel::update(d::table.find(id.to_string()))
        .set((
            d::state.eq(state.as_str()),
            d::lease_until.eq(0),
            d::last_status.eq(attempt.status),
            d::last_error.eq(attempt.error.as_deref()),
            d::delivered_at.eq(delivered),
            d::updated_at.eq(ms(now)),
        ))
        .execute(conn)?;
    Ok(())
}

/// Puts a claimed delivery back for another attempt at `next_attempt_at`; the row stays in
/// flight until `hold_until` (the caller waits for the attempt itself, and the sweep takes it
/// over if it has not claimed it by then), or is left to the sweep when `hold_until` is not
/// after `next_attempt_at`.
pub fn reschedule(
    conn: &mut DbConn,
    id: DeliveryId,
    next_attempt_at: DateTime<Utc>,
    hold_until: DateTime<Utc>,
    attempt: &Attempt,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    diesel::update(d::table.find(id.to_string()))
        .set((
            d::state.eq(DeliveryState::Pending.as_str()),
            d::next_attempt_at.eq(ms(next_attempt_at)),
            d::lease_until.eq(ms(hold_until)),
            d::last_status.eq(attempt.status),
            d::last_error.eq(attempt.error.as_deref()),
            d::updated_at.eq(ms(now)),
        ))
        .execute(conn)?;
    Ok(())
}

/// Gives up a worker's hold on a pending delivery (shutdown): the sweep re-queues it at once.
pub fn release(conn: &mut DbConn, id: DeliveryId, now: DateTime<Utc>) -> StoreResult<()> {
    diesel::update(d::table.find(id.to_string()).filter(d::state.eq(DeliveryState::Pending.as_str())))
        .set((d::lease_until.eq(ms(now)), d::updated_at.eq(ms(now))))
        .execute(conn)?;
    Ok(())
}

/// The sweep (call inside a write transaction): up to `limit` deliveries that are due and not
/// in flight, oldest due first, leased until `now + requeue` (so that no other sweep takes
/// them while they travel through the queue) and set `pending` (a `sending` claim whose lease
/// ran out belonged to a worker that died). On Postgres the rows are taken `FOR UPDATE SKIP
/// LOCKED`, so sweeps of several processes share the work without waiting for each other;
/// SQLite has one writer at a time.
pub fn take_due(conn: &mut DbConn, now: DateTime<Utc>, requeue: Duration, limit: i64) -> StoreResult<Vec<DeliveryId>> {
    let open = [DeliveryState::Pending.as_str(), DeliveryState::Sending.as_str()];
    let due = d::table
        .filter(d::state.eq_any(open))
        .filter(d::next_attempt_at.le(ms(now)))
        .filter(d::lease_until.le(ms(now)))
        .order(d::next_attempt_at.asc())
        .limit(limit)
        .select(d::id);
    let ids: Vec<String> = match conn {
        DbConn::Pg(pg) => due.for_update().skip_locked().load(pg)?,
        DbConn::Sqlite(lite) => due.load(lite)?,
    };
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    diesel::update(d::table.filter(d::id.eq_any(&ids)))
        .set((
            d::state.eq(DeliveryState::Pending.as_str()),
            d::lease_until.eq(ms(now + requeue)),
            d::updated_at.eq(ms(now)),
        ))
        .execute(conn)?;
    ids.iter().map(|id| parse("delivery id", id)).collect()
}

/// Deletes finished deliveries: mail last changed before `mail_before`, webhook deliveries
/// (the endpoints' delivery history) before `webhook_before` (housekeeping).
/// At most `limit` rows of each, one batch (the caller repeats until fewer come back).
pub fn purge_before(
    conn: &mut DbConn,
    mail_before: DateTime<Utc>,
    webhook_before: DateTime<Utc>,
    limit: i64,
) -> StoreResult<usize> {
    let finished = [DeliveryState::Sent.as_str(), DeliveryState::Dropped.as_str(), DeliveryState::Failed.as_str()];
    let old = diesel::alias!(crate::schema::deliveries as old);
    let mail = old
        .filter(old.field(d::state).eq_any(finished))
        .filter(old.field(d::kind).ne(DeliveryKind::Webhook.as_str()))
        .filter(old.field(d::updated_at).lt(ms(mail_before)))
        .select(old.field(d::id))
        .limit(limit);
    let mail = diesel::delete(d::table.filter(d::id.eq_any(mail))).execute(conn)?;
    let hooks = old
        .filter(old.field(d::state).eq_any(finished))
        .filter(old.field(d::kind).eq(DeliveryKind::Webhook.as_str()))
        .filter(old.field(d::updated_at).lt(ms(webhook_before)))
        .select(old.field(d::id))
        .limit(limit);
    let hooks = diesel::delete(d::table.filter(d::id.eq_any(hooks))).execute(conn)?;
    Ok(mail + hooks)
}
