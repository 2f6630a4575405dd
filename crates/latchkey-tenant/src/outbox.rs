//! Email jobs and the queue they go to. The use-cases push jobs through [`Outbox`]; the mail
//! crate implements it on apalis (Redis or embedded) and delivers them.
//!
//! A job never carries a plaintext code or token: the code (or reset-link token) is sealed
//! under the server key with the delivery id as associated data, and `Debug` redacts it.

use std::fmt;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use latchkey_core::{DeliveryId, EmailCodeId, ResetTokenId};
use serde::{Deserialize, Serialize};

/// The associated data under which a job's code or token is sealed: binds the ciphertext
/// to its delivery, so it cannot be moved into another job.
pub fn job_aad(delivery: DeliveryId) -> Vec<u8> {
    format!("mail-job:{delivery}").into_bytes()
}

/// Deliver an emailed one-time code.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendEmailOtp {
    /// Idempotency key (a `mail_deliveries` row).
    pub delivery_id: DeliveryId,
    /// The code's row, to check it is still live before sending.
    pub code_id: EmailCodeId,
    /// Recipient address.
    pub to: String,
    /// Tenant display name, for the message.
    pub tenant_name: String,
    /// The code sealed under the server key (AAD = delivery id), base64.
    pub sealed_code: String,
    /// When the code expires: the job is dropped, never sent, after this.
    pub expires_at: DateTime<Utc>,
    /// When the job was queued (delivery latency is measured from here).
    pub enqueued_at: DateTime<Utc>,
}

impl fmt::Debug for SendEmailOtp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendEmailOtp")
            .field("delivery_id", &self.delivery_id)
            .field("code_id", &self.code_id)
            .field("expires_at", &self.expires_at)
            .field("sealed_code", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Deliver an admin reset link.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendResetLink {
    /// Idempotency key (a `mail_deliveries` row).
    pub delivery_id: DeliveryId,
    /// The token's row, to check it is still live before sending.
    pub token_id: ResetTokenId,
    /// Recipient address.
    pub to: String,
    /// Tenant display name, for the message.
    pub tenant_name: String,
    /// The link's token sealed under the server key (AAD = delivery id), base64.
    pub sealed_token: String,
    /// When the link expires: the job is dropped after this.
    pub expires_at: DateTime<Utc>,
    /// When the job was queued.
    pub enqueued_at: DateTime<Utc>,
}

impl fmt::Debug for SendResetLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendResetLink")
            .field("delivery_id", &self.delivery_id)
            .field("token_id", &self.token_id)
            .field("expires_at", &self.expires_at)
            .field("sealed_token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// An email job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailJob {
    /// A one-time code.
    EmailOtp(SendEmailOtp),
    /// A reset link.
    ResetLink(SendResetLink),
}

/// The queue refused or could not take a job.
#[derive(Debug, thiserror::Error)]
#[error("mail queue error: {0}")]
pub struct OutboxError(pub String);

/// Where use-cases push email jobs.
pub trait Outbox: Send + Sync + fmt::Debug {
    /// Queues `job` durably (it survives a restart of the worker).
    fn enqueue(&self, job: MailJob) -> BoxFuture<'_, Result<(), OutboxError>>;
    /// Checks that the queue is reachable (for `/readyz`).
    fn ping(&self) -> BoxFuture<'_, Result<(), OutboxError>>;
}

/// An [`Outbox`] that keeps jobs in memory, for tests of the use-cases.
#[derive(Debug, Default, Clone)]
pub struct MemoryOutbox {
    jobs: std::sync::Arc<std::sync::Mutex<Vec<MailJob>>>,
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl MemoryOutbox {
    /// The jobs queued so far.
    pub fn jobs(&self) -> Vec<MailJob> {
        self.jobs.lock().map(|j| j.clone()).unwrap_or_default()
    }

    /// Makes every later `enqueue` fail (or succeed again).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Outbox for MemoryOutbox {
    fn enqueue(&self, job: MailJob) -> BoxFuture<'_, Result<(), OutboxError>> {
        Box::pin(async move {
            if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(OutboxError("queue down".into()));
            }
            self.jobs.lock().map_err(|_| OutboxError("poisoned".into()))?.push(job);
            Ok(())
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), OutboxError>> {
        Box::pin(async move {
            if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
                Err(OutboxError("queue down".into()))
            } else {
                Ok(())
            }
        })
    }
}
