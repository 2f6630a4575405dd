//! Delivering one job: unseal, check it is still wanted, claim the delivery, send, record.
//!
//! ```text
//!   unseal ──fail──▶ failed (no retry)
//!     │
//!     ▼
//!   ┌▶ expired? ──yes──▶ dropped_expired (claim → Dropped), never sent
//!   │    │ no
//!   │    ▼
//!   │  claim(delivery, lease) ──lost──▶ Sent/Dropped: done (a copy already handled it)
//!   │    │ won                           Sending: another copy is at it → wait, re-check
//!   │    ▼                               missing: failed (unknown delivery)
//!   │  code/token live? ──no──▶ Dropped, dropped_expired
//!   │    │ yes
//!   │    ▼
//!   │  SMTP send ──ok──▶ Sent, `sent`, delivery latency observed
//!   │    │ error
//!   │    ▼
//!   │  back to Pending, `retried`
//!   └── wait: retry_initial, doubling, capped at retry_max (and at the expiry)
//! ```
//!
//! **Why the retry loop lives in the handler** rather than in apalis' retry layer or backend
//! rescheduling: the product rule is "retry until the code expires" — a deadline, not a number
//! of attempts — with a first retry within a second. apalis' tower retry counts attempts, and
//! backend rescheduling (SQLite `run_at`, Redis scheduled set) has one-second resolution and
//! its own fixed backoff. Looping here gives exactly the wanted schedule, is tested with
//! millisecond delays, and stops at the deadline. The job stays claimed by this worker in the
//! backend while it waits (the worker's heartbeat keeps it), and a shutdown interrupts the
//! wait: the job is handed back to the backend as failed-retryable and picked up again later.
//!
//! **At most one message per job**: the `mail_deliveries` row is claimed (conditional update)
//! before sending and marked `Sent` after the server accepted; any copy of the job (retry,
//! redelivery after a crash, duplicate push) finds it `Sent` and stops. Only a worker that
//! dies between the server's acceptance and the `Sent` mark leaves a claim that a copy may
//! take over after the lease — the unavoidable at-least-once window of SMTP.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use latchkey_core::metrics::Metrics;
use latchkey_core::{Clock, DeliveryId, Keys};
use latchkey_store::Store;
use latchkey_store::repo::deliveries::{self, DeliveryState};
use latchkey_store::repo::{email_codes, reset_tokens};
use latchkey_tenant::outbox::job_aad;
use lettre::message::Mailbox;
use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::config::MailConfig;
use crate::error::MailError;
use crate::message::{self, Rendered};
use crate::queue::WireJob;
use crate::transport::{Accepted, Mailer};

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The server accepted the message.
    Sent,
    /// Not sent: expired, or the code/token is no longer live.
    Dropped,
    /// Nothing to do: the delivery was already sent or dropped (a copy of this job).
    AlreadyHandled,
    /// Permanent failure, never retried.
    Failed(&'static str),
    /// Shutdown interrupted the wait between two attempts; the job should be retried later.
    Interrupted,
}

/// The job's kind as the metrics label it.
fn kind(job: &WireJob) -> &'static str {
    match job {
        WireJob::EmailOtp(_) => "otp",
        WireJob::ResetLink(_) => "reset_link",
    }
}

/// What the handler needs of a job, whatever its kind.
struct Parts<'a> {
    delivery: DeliveryId,
    to: &'a str,
    tenant: &'a str,
    sealed: &'a str,
    expires_at: DateTime<Utc>,
    enqueued_at: DateTime<Utc>,
}

fn parts(job: &WireJob) -> Parts<'_> {
    match job {
        WireJob::EmailOtp(j) => Parts {
            delivery: j.delivery_id,
            to: &j.to,
            tenant: &j.tenant_name,
            sealed: &j.sealed_code,
            expires_at: j.expires_at,
            enqueued_at: j.enqueued_at,
        },
        WireJob::ResetLink(j) => Parts {
            delivery: j.delivery_id,
            to: &j.to,
            tenant: &j.tenant_name,
            sealed: &j.sealed_token,
            expires_at: j.expires_at,
            enqueued_at: j.enqueued_at,
        },
    }
}

/// Delivers jobs; shared by every concurrent job of a worker.
pub(crate) struct Deliverer {
    store: Store,
    keys: Keys,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
    mailer: Mailer,
    from: Mailbox,
    public_url: String,
    retry_initial: Duration,
    retry_max: Duration,
    lease: chrono::Duration,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer").field("mailer", &self.mailer).finish_non_exhaustive()
    }
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
        })
    }

    fn count(&self, kind: &str, outcome: &str) {
        self.metrics.email_jobs.with_label_values(&[kind, outcome]).inc();
    }

    /// Opens the job's sealed code or token.
    fn unseal(&self, job: &WireJob) -> Result<Zeroizing<String>, &'static str> {
        let p = parts(job);
        let sealed = Zeroizing::new(STANDARD.decode(p.sealed.as_bytes()).map_err(|_| "sealed value is not base64")?);
        let opened = self.keys.open(&sealed, &job_aad(p.delivery)).map_err(|_| "sealed value cannot be opened")?;
        let text = std::str::from_utf8(&opened).map_err(|_| "sealed value is not text")?;
        let valid = match job {
            WireJob::EmailOtp(_) => text.len() == 6 && text.bytes().all(|b| b.is_ascii_digit()),
            WireJob::ResetLink(_) => !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic()),
        };
        if !valid {
            return Err("sealed value has the wrong shape");
        }
        Ok(Zeroizing::new(text.to_owned()))
    }

    fn render(&self, job: &WireJob, secret: &str) -> Rendered {
        let p = parts(job);
        let valid_for = p.expires_at - p.enqueued_at;
        match job {
            WireJob::EmailOtp(_) => message::otp(p.tenant, secret, valid_for),
            WireJob::ResetLink(_) => {
                message::reset_link(p.tenant, &message::reset_url(&self.public_url, secret), valid_for)
            }
        }
    }

    /// Whether the job's code or token can still be used at `now`.
    async fn is_live(&self, job: &WireJob, now: DateTime<Utc>) -> Result<bool, String> {
        let r = match job {
            WireJob::EmailOtp(j) => {
                let id = j.code_id;
                self.store.run(move |c| email_codes::is_live(c, id, now)).await
            }
            WireJob::ResetLink(j) => {
                let id = j.token_id;
                self.store.run(move |c| reset_tokens::is_live(c, id, now)).await
            }
        };
        r.map_err(|e| e.to_string())
    }

    async fn claim(&self, id: DeliveryId, now: DateTime<Utc>) -> Result<bool, String> {
        let lease = self.lease;
        self.store.run(move |c| deliveries::claim(c, id, now, lease)).await.map_err(|e| e.to_string())
    }

    async fn state(&self, id: DeliveryId) -> Result<Option<DeliveryState>, String> {
        self.store.run(move |c| deliveries::get(c, id)).await.map(|r| r.map(|(s, _)| s)).map_err(|e| e.to_string())
    }

    /// Records the end state of a delivery this worker holds; retried a few times because a
    /// lost `Sent` mark is what could let a copy send again.
    async fn finish(&self, id: DeliveryId, state: DeliveryState) {
        for attempt in 0..3u32 {
            let now = self.clock.now();
            match self.store.run(move |c| deliveries::finish(c, id, state, now)).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(delivery = %id, ?state, attempt, error = %e, "could not record a delivery state");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
            }
        }
    }

    /// Ends a job past its expiry: it is never sent.
    async fn expire(&self, job: &WireJob, kind: &'static str) -> Outcome {
        let id = parts(job).delivery;
        match self.claim(id, self.clock.now()).await {
            Ok(true) => self.finish(id, DeliveryState::Dropped).await,
            Ok(false) => match self.state(id).await {
                Ok(None) => {
                    self.count(kind, "failed");
                    tracing::error!(delivery = %id, kind, "email job for an unknown delivery");
                    return Outcome::Failed("unknown delivery");
                }
                Ok(Some(DeliveryState::Sent | DeliveryState::Dropped)) => {
                    return Outcome::AlreadyHandled;
                }
                // Held by another worker (or a crashed claim): that worker checks the expiry too.
                Ok(Some(DeliveryState::Pending | DeliveryState::Sending)) | Err(_) => {}
            },
            Err(e) => {
                tracing::warn!(delivery = %id, error = %e, "could not record an expired delivery")
            }
        }
        self.count(kind, "dropped_expired");
        tracing::info!(delivery = %id, kind, "email job expired before it could be sent: dropped");
        Outcome::Dropped
    }

    /// Gives up a job that can never be sent, marking its delivery dropped when we can claim it.
    async fn fail(&self, job: &WireJob, kind: &'static str, reason: &'static str) -> Outcome {
        let id = parts(job).delivery;
        if let Ok(true) = self.claim(id, self.clock.now()).await {
            self.finish(id, DeliveryState::Dropped).await;
        }
        self.count(kind, "failed");
        tracing::error!(delivery = %id, kind, reason, "email job failed permanently");
        Outcome::Failed(reason)
    }

    /// Delivers `job` (see the module doc). `stop` turning `true` interrupts a wait between
    /// two attempts (never a send in progress).
    pub(crate) async fn deliver(&self, job: &WireJob, stop: &mut watch::Receiver<bool>) -> Outcome {
        let kind = kind(job);
        let p = parts(job);
        let id = p.delivery;
        let secret = match self.unseal(job) {
            Ok(s) => s,
            Err(reason) => return self.fail(job, kind, reason).await,
        };
        let rendered = self.render(job, &secret);
        drop(secret);
        let message = match message::build(&self.from, p.to, id, &rendered) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(delivery = %id, kind, error = %e, "cannot build the message");
                return self.fail(job, kind, "cannot build the message").await;
            }
        };
        drop(rendered);
        let to = latchkey_core::email::mask(p.to);

        let mut delay = self.retry_initial;
        loop {
            let now = self.clock.now();
            if p.expires_at <= now {
                return self.expire(job, kind).await;
            }
            match self.claim(id, now).await {
                Ok(true) => match self.is_live(job, now).await {
                    Ok(false) => {
                        self.finish(id, DeliveryState::Dropped).await;
                        self.count(kind, "dropped_expired");
                        tracing::info!(delivery = %id, kind, "code or link no longer valid: email dropped");
                        return Outcome::Dropped;
                    }
                    Err(e) => {
                        tracing::warn!(delivery = %id, kind, error = %e, "cannot check the code; will retry");
                        self.finish(id, DeliveryState::Pending).await;
                    }
                    Ok(true) => match self.mailer.send(message.clone()).await {
                        Ok(accepted) => {
                            self.finish(id, DeliveryState::Sent).await;
                            self.count(kind, "sent");
                            let latency = (self.clock.now() - p.enqueued_at).num_milliseconds().max(0);
                            #[allow(clippy::cast_precision_loss)] // milliseconds far below 2^52
                            self.metrics.email_delivery.with_label_values(&[kind]).observe(latency as f64 / 1000.0);
                            match accepted {
                                Accepted::Smtp => {
                                    tracing::info!(delivery = %id, kind, %to, "email sent")
                                }
                                Accepted::File(file) => {
                                    tracing::info!(delivery = %id, kind, %to, file = %file.display(), "email written to the outbox")
                                }
                            }
                            return Outcome::Sent;
                        }
                        Err(e) if e.permanent => {
                            self.finish(id, DeliveryState::Dropped).await;
                            self.count(kind, "failed");
                            tracing::error!(delivery = %id, kind, error = %e, "the mail server refused the email for good");
                            return Outcome::Failed("refused by the mail server");
                        }
                        Err(e) => {
                            self.finish(id, DeliveryState::Pending).await;
                            self.count(kind, "retried");
                            tracing::warn!(delivery = %id, kind, error = %e, retry_in_ms = delay.as_millis(), "email delivery failed; will retry");
                        }
                    },
                },
                Ok(false) => match self.state(id).await {
                    Ok(None) => {
                        self.count(kind, "failed");
                        tracing::error!(delivery = %id, kind, "email job for an unknown delivery");
                        return Outcome::Failed("unknown delivery");
                    }
                    Ok(Some(DeliveryState::Sent | DeliveryState::Dropped)) => {
                        tracing::debug!(delivery = %id, kind, "delivery already handled");
                        return Outcome::AlreadyHandled;
                    }
                    // Another copy holds the claim (or held it and crashed: the lease will run
                    // out), or it was released between our two reads: look again later.
                    Ok(Some(DeliveryState::Sending | DeliveryState::Pending)) => {}
                    Err(e) => {
                        tracing::warn!(delivery = %id, kind, error = %e, "cannot read the delivery; will retry")
                    }
                },
                Err(e) => {
                    tracing::warn!(delivery = %id, kind, error = %e, "cannot claim the delivery; will retry")
                }
            }

            // Wait, but not past the expiry (then the job is dropped at once).
            let until_expiry = (p.expires_at - self.clock.now()).to_std().unwrap_or(Duration::ZERO);
            let wait = delay.min(until_expiry.max(Duration::from_millis(1)));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|stop| *stop) => {
                    tracing::info!(delivery = %id, kind, "shutting down: email job handed back to the queue");
                    return Outcome::Interrupted;
                }
            }
            delay = (delay * 2).min(self.retry_max);
        }
    }
}
