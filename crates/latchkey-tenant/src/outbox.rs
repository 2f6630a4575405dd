//! Deliveries and the queue that wakes the worker for them (DESIGN.md 5.6, 5.8).
//!
//! The database is the record of what is owed: a use-case writes a `deliveries` row in the
//! transaction of what it announces (see [`latchkey_store::repo::deliveries`]); a mail row
//! carries its message as a [`MailPayload`], sealed under the server key with the delivery
//! id as associated data ([`seal_payload`]). The queue ([`Outbox`]) then carries only
//! [`DeliveryJob`]s — a delivery id, no secret at all — pushed right after the commit for
//! codes and reset links, and by the worker's sweep for everything else (and for anything
//! the queue lost). `Debug` of every type here redacts codes and tokens.

use std::fmt;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use latchkey_core::{DeliveryId, EmailCodeId, Keys, Method, ResetTokenId, Role};
use latchkey_store::repo::deliveries::payload_aad;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// A job of the queue: "deliver this row". The row says what and to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryJob {
    /// The `deliveries` row.
    pub delivery_id: DeliveryId,
}

/// The message of a mail delivery, as sealed in its row.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MailPayload {
    /// An emailed sign-in code.
    Otp {
        /// The code's row, checked to be live before sending.
        code_id: EmailCodeId,
        /// Recipient address.
        to: String,
        /// Tenant display name, for the message.
        tenant_name: String,
        /// The six digits.
        code: String,
    },
    /// An admin reset link.
    ResetLink {
        /// The token's row, checked to be live before sending.
        token_id: ResetTokenId,
        /// Recipient address.
        to: String,
        /// Tenant display name, for the message.
        tenant_name: String,
        /// The link's token.
        token: String,
    },
    /// A notice (DESIGN.md 5.6).
    Notice(NoticeMail),
}

impl MailPayload {
    /// The recipient address.
    pub fn to(&self) -> &str {
        match self {
            MailPayload::Otp { to, .. } | MailPayload::ResetLink { to, .. } => to,
            MailPayload::Notice(n) => &n.to,
        }
    }
}

impl fmt::Debug for MailPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MailPayload::Otp { code_id, .. } => {
                f.debug_struct("Otp").field("code_id", code_id).field("code", &"<redacted>").finish_non_exhaustive()
            }
            MailPayload::ResetLink { token_id, .. } => f
                .debug_struct("ResetLink")
                .field("token_id", token_id)
                .field("token", &"<redacted>")
                .finish_non_exhaustive(),
            MailPayload::Notice(n) => f.debug_tuple("Notice").field(&n.what).finish(),
        }
    }
}

/// A notice mail: who gets it, about which tenant, what happened, when and from where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeMail {
    /// Recipient address.
    pub to: String,
    /// Recipient's display name.
    pub recipient_name: String,
    /// Tenant display name (in the subject).
    pub tenant_name: String,
    /// Tenant slug (in links to the hosted pages).
    pub tenant_slug: String,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The client IP of the request that made it happen.
    pub ip: Option<String>,
    /// The client's user agent.
    pub user_agent: Option<String>,
    /// What happened.
    pub what: NoticeEvent,
}

/// What a notice tells (DESIGN.md 5.6). Never a code, a token or a link that grants access.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum NoticeEvent {
    /// The recipient enrolled a second-factor method.
    MethodEnrolled {
        /// The method.
        method: Method,
    },
    /// The recipient removed a second factor.
    FactorRemoved {
        /// Its name as the user knows it (`authenticator`, `email`, a passkey's name).
        factor: String,
    },
    /// The recipient generated a new set of recovery codes.
    RecoveryCodesGenerated {
        /// How many.
        count: u32,
    },
    /// The recipient signed in with a recovery code.
    RecoveryCodeUsed {
        /// Unused codes left.
        remaining: u32,
    },
    /// A device of the recipient was remembered.
    TrustedDeviceCreated,
    /// An admin approved the recipient's recovery request (his second factor was reset).
    RecoveryApproved,
    /// An admin dismissed the recipient's recovery request.
    RecoveryDismissed,
    /// The recipient's reset link was used.
    ResetLinkUsed,
    /// The recipient's password changed.
    PasswordChanged,
    /// The recipient's email address changed (this notice goes to the old one).
    EmailChanged {
        /// The new address, masked.
        new_email_masked: String,
    },
    /// An agent or supervisor asked for recovery (this notice goes to the admins).
    RecoveryRequested {
        /// The requester's display name.
        requester_name: String,
        /// The requester's address.
        requester_email: String,
        /// The requester's role.
        requester_role: Role,
        /// `LATCHKEY_PUBLIC_URL/ui/{tenant}/agents?tab=requested`.
        review_url: String,
    },
}

/// Seals `payload` for the row `id` (AEAD under the server key, AAD `delivery:<id>`).
///
/// Errors: none in practice (a payload always encodes); an encoding failure is reported as
/// [`OutboxError`].
pub fn seal_payload(keys: &Keys, id: DeliveryId, payload: &MailPayload) -> Result<Vec<u8>, OutboxError> {
    let json = Zeroizing::new(serde_json::to_vec(payload).map_err(|e| OutboxError(format!("encode: {e}")))?);
    Ok(keys.seal(&json, &payload_aad(id)))
}

/// Opens the payload of the row `id`.
///
/// Errors: [`OutboxError`] when it cannot be opened with the server key (another key, another
/// row's payload) or does not decode.
pub fn open_payload(keys: &Keys, id: DeliveryId, sealed: &[u8]) -> Result<MailPayload, OutboxError> {
    let json =
        keys.open(sealed, &payload_aad(id)).map_err(|_| OutboxError("sealed payload cannot be opened".into()))?;
    // Only the position: the error text could quote the payload.
    serde_json::from_slice(&json).map_err(|e| OutboxError(format!("payload does not decode at column {}", e.column())))
}

/// The queue refused or could not take a job.
#[derive(Debug, thiserror::Error)]
#[error("mail queue error: {0}")]
pub struct OutboxError(pub String);

/// Where use-cases push delivery jobs.
pub trait Outbox: Send + Sync + fmt::Debug {
    /// Queues `job` (a lost job is re-queued by the sweep).
    fn enqueue(&self, job: DeliveryJob) -> BoxFuture<'_, Result<(), OutboxError>>;
    /// Checks that the queue is reachable (for `/readyz`).
    fn ping(&self) -> BoxFuture<'_, Result<(), OutboxError>>;
}

/// An [`Outbox`] that keeps jobs in memory, for tests of the use-cases.
#[derive(Debug, Default, Clone)]
pub struct MemoryOutbox {
    jobs: std::sync::Arc<std::sync::Mutex<Vec<DeliveryJob>>>,
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl MemoryOutbox {
    /// The jobs queued so far.
    pub fn jobs(&self) -> Vec<DeliveryJob> {
        self.jobs.lock().map(|j| j.clone()).unwrap_or_default()
    }

    /// Makes every later `enqueue` fail (or succeed again).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Outbox for MemoryOutbox {
    fn enqueue(&self, job: DeliveryJob) -> BoxFuture<'_, Result<(), OutboxError>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_sealed_to_their_row_and_redacted() {
        let keys = Keys::new(&latchkey_core::ServerKey::parse(&"42".repeat(32)).unwrap());
        let id = DeliveryId::new();
        let p = MailPayload::Otp {
            code_id: EmailCodeId::new(),
            to: "a@example.com".into(),
            tenant_name: "Acme".into(),
            code: "012345".into(),
        };
        let sealed = seal_payload(&keys, id, &p).unwrap();
        assert!(!String::from_utf8_lossy(&sealed).contains("012345"));
        assert_eq!(open_payload(&keys, id, &sealed).unwrap(), p);
        assert!(open_payload(&keys, DeliveryId::new(), &sealed).is_err(), "bound to its row");
        assert!(!format!("{p:?}").contains("012345"));
        let job = serde_json::to_string(&DeliveryJob { delivery_id: id }).unwrap();
        assert_eq!(job, format!("{{\"delivery_id\":\"{id}\"}}"));
    }
}
