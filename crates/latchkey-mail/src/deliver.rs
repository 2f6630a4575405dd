//! Delivering one job: read the delivery row, open its message, check it is still wanted,
//! claim it, send it, record the outcome.
//!
//! ```text
//!   row ──missing──▶ done (a purged row or a foreign job)      final state ──▶ done (a copy)
//!    │
//!    ▼
//!   open the sealed payload ──not under this process's keys──▶ left for retry (a worker
//!    │                       with the key takes it; metric + error log)
//!    │                    ──does not decode──▶ failed (never retried)
//!    │
//!    ▼
//!  ┌▶ expired? ──yes──▶ dropped, `dropped_expired`: never sent late
//!  │   │ no
//!  │   ▼
//!  │  claim ──lost──▶ done: another worker holds it, or it is not due yet (the sweep brings
//!  │   │ won          it back when it is)
//!  │   ▼
//!  │  code/token live? ──no──▶ dropped, `dropped_expired`
//!  │   │ yes
//!  │   ▼
//!  │  send ──ok──▶ sent, `sent`, delivery latency observed
//!  │   │ refused for good ──▶ failed
//!  │   │ transient error: `retried`, rescheduled (retry_initial, doubling, capped at retry_max)
//!  │   ▼
//!  └── the retry is due within a sweep interval: wait for it here, holding the row;
//!      later: leave it to the sweep (the job ends, the row is the record)
//! ```
//!
//! **The row is the record, the job is a wake-up call.** Every decision is taken on the
//! `deliveries` row, never on the job: a job that vanished is re-queued by the sweep, a
//! duplicate finds the row claimed or finished and stops. A worker never holds a job slot for
//! longer than one sweep interval of waiting, so retries of one delivery (a mail server down,
//! a webhook endpoint failing) cannot starve the others; waits that long keep the first retry
//! of a mail within a second at the default settings.
//!
//! **At most one message per delivery**: the row is claimed (conditional update) before
//! sending and marked `sent` after the server accepted. Only a worker that dies between the
//! server's acceptance and the mark leaves a claim that another may take over once its lease
//! has run out — the unavoidable at-least-once window of SMTP.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use latchkey_core::crypto::{CryptoError, SealedBy, sealed_by};
use latchkey_core::metrics::Metrics;
use latchkey_core::{Clock, DeliveryId, Keys};
use latchkey_store::Store;
use latchkey_store::repo::deliveries::{self, Attempt, Delivery, DeliveryKind, DeliveryState};
use latchkey_store::repo::{email_codes, reset_tokens};
use latchkey_tenant::outbox::{MailPayload, open_payload};
use lettre::message::Mailbox;
use tokio::sync::watch;

use crate::config::MailConfig;
use crate::error::MailError;
use crate::message::{self, Rendered};
use crate::transport::{Accepted, Mailer};
use crate::webhook::Webhooks;

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Delivered: the server accepted the message, or the endpoint answered 2xx.
    Sent,
    /// Not sent: expired, or the code/token is no longer live.
    Dropped,
    /// Nothing to do: the delivery is finished, held by another worker, or not due yet.
    AlreadyHandled,
    /// Permanent failure, never retried.
    Failed(&'static str),
    /// A retry is due later than this worker waits: the sweep will bring it back.
    Deferred,
    /// Shutdown interrupted the wait between two attempts; the row was released to the sweep.
    Interrupted,
}

/// Delivers jobs; shared by every concurrent job of a worker.
pub(crate) struct Deliverer {
    pub(crate) store: Store,
    pub(crate) keys: Keys,
    pub(crate) metrics: Metrics,
    pub(crate) clock: Arc<dyn Clock>,
    mailer: Mailer,
    from: Mailbox,
    public_url: String,
    retry_initial: Duration,
    retry_max: Duration,
    pub(crate) lease: chrono::Duration,
    /// The longest wait for a retry a worker sits through (one sweep interval).
    pub(crate) hold: Duration,
    /// How long past its due time a held row stays reserved for its holder.
    pub(crate) requeue: chrono::Duration,
    webhooks: Webhooks,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer").field("mailer", &self.mailer).finish_non_exhaustive()
    }
}

/// `initial`, doubled per attempt after the first, capped at `max`.
pub(crate) fn backoff(initial: Duration, max: Duration, attempts: i32) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1)).unwrap_or(0).min(30);
    initial.saturating_mul(1u32 << doublings).min(max)
}

impl Deliverer {
    /// Builds the deliverer of `config`.
    ///
    /// Errors: an invalid `From` address, SMTP URL or outbox directory.
    pub(crate) fn new(
        store: Store,
        keys: Keys,
        metrics: Metrics,
        clock: Arc<dyn Clock>,
        config: &MailConfig,
    ) -> Result<Self, MailError> {
        let from: Mailbox = config.from.trim().parse().map_err(|_| MailError::From(config.from.clone()))?;
        let mailer = Mailer::new(&config.transport, config.smtp_timeout)?;
        let lease = chrono::Duration::from_std(config.claim_lease).unwrap_or(chrono::Duration::seconds(60));
        let requeue = chrono::Duration::from_std(config.requeue).unwrap_or(chrono::Duration::seconds(3));
        Ok(Self {
            store,
            keys,
            metrics,
            clock,
            mailer,
            from,
            public_url: config.public_url.trim_end_matches('/').to_owned(),
            retry_initial: config.retry_initial.max(Duration::from_millis(1)),
            retry_max: config.retry_max.max(config.retry_initial),
            lease,
            hold: config.sweep_interval,
            requeue,
            webhooks: Webhooks::new(&config.webhooks),
        })
    }

    fn count(&self, kind: DeliveryKind, outcome: &str) {
        self.metrics.email_jobs.with_label_values(&[kind.as_str(), outcome]).inc();
    }

    /// Delivers the row `id` (see the module doc). `stop` turning `true` interrupts a wait
    /// between two attempts (never a send in progress).
    pub(crate) async fn deliver(&self, id: DeliveryId, stop: &mut watch::Receiver<bool>) -> Outcome {
        let row = match self.store.run(move |c| deliveries::get(c, id)).await {
            Ok(Some(row)) => row,
            Ok(None) => {
                tracing::warn!(delivery = %id, "job for an unknown delivery: ignored");
                return Outcome::AlreadyHandled;
            }
            Err(e) => {
                // The sweep queues it again once its lease has run out.
                tracing::warn!(delivery = %id, error = %e, "cannot read the delivery; the sweep will retry it");
                return Outcome::AlreadyHandled;
            }
        };
        if row.state.is_final() {
            tracing::debug!(delivery = %id, "delivery already handled");
            return Outcome::AlreadyHandled;
        }
        match row.kind {
            DeliveryKind::Webhook => self.webhooks.deliver(self, row, stop).await,
            _ => self.deliver_mail(row, stop).await,
        }
    }

    /// Ends a delivery; retried a few times because a lost `sent` mark is what could let a
    /// copy send again.
    pub(crate) async fn finish(&self, id: DeliveryId, state: DeliveryState, attempt: Attempt) {
        for n in 0..3u32 {
            let now = self.clock.now();
            let a = attempt.clone();
            match self.store.run(move |c| deliveries::finish(c, id, state, &a, now)).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(delivery = %id, ?state, attempt = n, error = %e, "could not record a delivery state");
                    tokio::time::sleep(Duration::from_millis(100 << n)).await;
                }
            }
        }
    }

    /// Claims the row for an attempt; `held`: this worker rescheduled it and waited for the
    /// retry itself.
    pub(crate) async fn claim(&self, id: DeliveryId, now: DateTime<Utc>, held: bool) -> Result<bool, String> {
        let lease = self.lease;
        let r = if held {
            self.store.run(move |c| deliveries::claim_held(c, id, now, lease)).await
        } else {
            self.store.run(move |c| deliveries::claim(c, id, now, lease)).await
        };
        r.map_err(|e| e.to_string())
    }

    /// After a failed attempt: schedules the next one after `delay`. A delay within one sweep
    /// interval is waited for here (`Some(wait)`), holding the row; a longer one is left to the
    /// sweep (`None`). When the row cannot be written, the sweep recovers it once the claim's
    /// lease has run out.
    pub(crate) async fn reschedule(&self, id: DeliveryId, delay: Duration, attempt: Attempt) -> Option<Duration> {
        let now = self.clock.now();
        let next = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        let wait_here = delay <= self.hold;
        let hold_until = if wait_here { next + self.requeue } else { now };
        match self.store.run(move |c| deliveries::reschedule(c, id, next, hold_until, &attempt, now)).await {
            Ok(()) => wait_here.then_some(delay),
            Err(e) => {
                tracing::warn!(delivery = %id, error = %e, "could not reschedule a delivery; the sweep will retry it");
                None
            }
        }
    }

    /// Waits `wait` unless shutdown comes first; then the row is released to the sweep.
    pub(crate) async fn wait(&self, id: DeliveryId, wait: Duration, stop: &mut watch::Receiver<bool>) -> bool {
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        // `None`: slept; `Some(true)`: shutdown; `Some(false)`: nobody can ask for a shutdown.
        let stopped = tokio::select! {
            () = &mut sleep => None,
            r = stop.wait_for(|stop| *stop) => Some(r.is_ok()),
        };
        match stopped {
            None => return true,
            Some(false) => {
                sleep.await;
                return true;
            }
            Some(true) => {}
        }
        let now = self.clock.now();
        if let Err(e) = self.store.run(move |c| deliveries::release(c, id, now)).await {
            tracing::warn!(delivery = %id, error = %e, "could not release a delivery; its hold runs out by itself");
        }
        tracing::info!(delivery = %id, "shutting down: delivery left to the sweep");
        false
    }

    fn render(&self, row: &Delivery, payload: &MailPayload) -> Result<Rendered, String> {
        let valid_for = row.expires_at.map_or(chrono::Duration::zero(), |e| e - row.created_at);
        Ok(match payload {
            MailPayload::Otp { tenant_name, code, .. } => message::otp(tenant_name, code, valid_for),
            MailPayload::ResetLink { tenant_name, token, .. } => {
                message::reset_link(tenant_name, &message::reset_url(&self.public_url, token), valid_for)
            }
            MailPayload::Notice(n) => message::notice(n).map_err(|e| e.to_string())?,
        })
    }

    /// Whether the mail's code or token can still be used at `now` (a notice always can).
    async fn is_live(&self, live: Live, now: DateTime<Utc>) -> Result<bool, String> {
        let r = match live {
            Live::Code(id) => self.store.run(move |c| email_codes::is_live(c, id, now)).await,
            Live::Token(id) => self.store.run(move |c| reset_tokens::is_live(c, id, now)).await,
            Live::Always => Ok(true),
        };
        r.map_err(|e| e.to_string())
    }

    /// Ends a delivery that can never be sent.
    async fn fail(&self, row: &Delivery, reason: &'static str) -> Outcome {
        if let Ok(true) = self.claim(row.id, self.clock.now(), false).await {
            self.finish(row.id, DeliveryState::Failed, Attempt { status: None, error: Some(reason.to_owned()) }).await;
        }
        self.count(row.kind, "failed");
        tracing::error!(delivery = %row.id, kind = row.kind.as_str(), reason, "email delivery failed permanently");
        Outcome::Failed(reason)
    }

    /// Ends a delivery past its expiry: it is never sent.
    async fn expire(&self, row: &Delivery) -> Outcome {
        let now = self.clock.now();
        // Only when this worker can claim it: a holder checks the expiry itself.
        match self.claim(row.id, now, false).await {
            Ok(true) => self.finish(row.id, DeliveryState::Dropped, Attempt::default()).await,
            Ok(false) => return Outcome::AlreadyHandled,
            Err(e) => tracing::warn!(delivery = %row.id, error = %e, "could not record an expired delivery"),
        }
        self.count(row.kind, "dropped_expired");
        tracing::info!(delivery = %row.id, kind = row.kind.as_str(), "email expired before it could be sent: dropped");
        Outcome::Dropped
    }

    async fn deliver_mail(&self, row: Delivery, stop: &mut watch::Receiver<bool>) -> Outcome {
        let kind = row.kind;
        let id = row.id;
        let Some(sealed) = row.payload.as_deref() else {
            return self.fail(&row, "mail delivery without a payload").await;
        };
        // Sealed under a key this process does not have: one it cannot name, or a value of the
        // first format (no key id) that none of its keys opens. A value that names one of its
        // keys and does not open is corrupt or misplaced: that fails below, for good.
        let foreign = match self.keys.open(sealed, &deliveries::payload_aad(id)) {
            Err(e @ CryptoError::UnknownKey(_)) => Some(e),
            Err(e) if sealed_by(sealed) == SealedBy::Unrecorded => Some(e),
            _ => None,
        };
        if let Some(e) = foreign {
            if row.expires_at.is_some_and(|at| at <= self.clock.now()) {
                return self.expire(&row).await;
            }
            // Sealed under a key this process does not have (a process started with another
            // key, a rotation under way): never dropped, the sweep queues it again for a
            // worker that can open it.
            self.metrics.sealed_open_failures.with_label_values(&[kind.as_str()]).inc();
            tracing::error!(
                delivery = %id,
                kind = kind.as_str(),
                error = %e,
                key = %self.keys.current_id(),
                "cannot open a mail delivery with this process's keys; left for another worker to retry \
                 (check LATCHKEY_SECRET_KEY and LATCHKEY_PREVIOUS_SECRET_KEYS)"
            );
            return Outcome::AlreadyHandled;
        }
        let payload = match open_payload(&self.keys, id, sealed) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(delivery = %id, error = %e, "cannot open a mail delivery");
                return self.fail(&row, "sealed payload cannot be opened").await;
            }
        };
        let message = match self
            .render(&row, &payload)
            .and_then(|r| message::build(&self.from, payload.to(), id, &r).map_err(|e| e.to_string()))
        {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(delivery = %id, kind = kind.as_str(), error = %e, "cannot build the message");
                return self.fail(&row, "cannot build the message").await;
            }
        };
        let to = latchkey_core::email::mask(payload.to());
        let live = Live::of(&payload);
        drop(payload);

        let mut held = false;
        let mut attempts = row.attempts;
        loop {
            let now = self.clock.now();
            if row.expires_at.is_some_and(|e| e <= now) {
                return self.expire(&row).await;
            }
            match self.claim(id, now, held).await {
                Ok(true) => attempts += 1,
                Ok(false) => {
                    tracing::debug!(delivery = %id, kind = kind.as_str(), "delivery held elsewhere, finished or not due");
                    return Outcome::AlreadyHandled;
                }
                Err(e) => {
                    tracing::warn!(delivery = %id, error = %e, "cannot claim the delivery; the sweep will retry it");
                    return Outcome::AlreadyHandled;
                }
            }
            let failure = match self.is_live(live, now).await {
                Ok(false) => {
                    self.finish(id, DeliveryState::Dropped, Attempt::default()).await;
                    self.count(kind, "dropped_expired");
                    tracing::info!(delivery = %id, kind = kind.as_str(), "code or link no longer valid: email dropped");
                    return Outcome::Dropped;
                }
                Err(e) => format!("cannot check the code: {e}"),
                Ok(true) => match self.mailer.send(message.clone()).await {
                    Ok(accepted) => {
                        self.finish(id, DeliveryState::Sent, Attempt::default()).await;
                        self.count(kind, "sent");
                        let latency = (self.clock.now() - row.created_at).num_milliseconds().max(0);
                        #[allow(clippy::cast_precision_loss)] // milliseconds far below 2^52
                        self.metrics
                            .email_delivery
                            .with_label_values(&[kind.as_str()])
                            .observe(latency as f64 / 1000.0);
                        match accepted {
                            Accepted::Smtp => tracing::info!(delivery = %id, kind = kind.as_str(), %to, "email sent"),
                            Accepted::File(file) => {
                                tracing::info!(delivery = %id, kind = kind.as_str(), %to, file = %file.display(), "email written to the outbox")
                            }
                        }
                        return Outcome::Sent;
                    }
                    Err(e) if e.permanent => {
                        let attempt = Attempt { status: None, error: Some(e.reason.clone()) };
                        self.finish(id, DeliveryState::Failed, attempt).await;
                        self.count(kind, "failed");
                        tracing::error!(delivery = %id, kind = kind.as_str(), error = %e, "the mail server refused the email for good");
                        return Outcome::Failed("refused by the mail server");
                    }
                    Err(e) => e.reason,
                },
            };
            self.count(kind, "retried");
            let delay = backoff(self.retry_initial, self.retry_max, attempts);
            tracing::warn!(delivery = %id, kind = kind.as_str(), error = %failure, retry_in_ms = delay.as_millis(), "email delivery failed; will retry");
            let attempt = Attempt { status: None, error: Some(failure) };
            let Some(wait) = self.reschedule(id, delay, attempt).await else { return Outcome::Deferred };
            // Not past the expiry: then it is dropped at once.
            let until_expiry =
                row.expires_at.map_or(wait, |e| (e - self.clock.now()).to_std().unwrap_or(Duration::ZERO));
            if !self.wait(id, wait.min(until_expiry.max(Duration::from_millis(1))), stop).await {
                return Outcome::Interrupted;
            }
            held = true;
        }
    }
}

/// What keeps a mail worth sending: its code's or token's row being live.
#[derive(Debug, Clone, Copy)]
enum Live {
    Code(latchkey_core::EmailCodeId),
    Token(latchkey_core::ResetTokenId),
    Always,
}

impl Live {
    fn of(payload: &MailPayload) -> Self {
        match payload {
            MailPayload::Otp { code_id, .. } => Live::Code(*code_id),
            MailPayload::ResetLink { token_id, .. } => Live::Token(*token_id),
            MailPayload::Notice(_) => Live::Always,
        }
    }
}
