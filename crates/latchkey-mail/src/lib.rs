//! Email delivery for Latchkey: the job queue and the worker that sends emailed sign-in codes
//! and admin reset links (DESIGN.md "Methods/Email OTP", "Recovery", section 2).
//!
//! - [`MailQueue`] implements [`latchkey_tenant::Outbox`], where the use-cases push
//!   [`MailJob`](latchkey_tenant::outbox::MailJob)s: apalis-redis for `redis://…` queue URLs,
//!   else the embedded apalis-sqlite queue in its own file `$DATA_DIR/queue.db`.
//! - [`run_worker`] takes jobs off the queue and delivers them with lettre, over SMTP or into
//!   `.eml` files in an outbox directory ([`MailConfig`], [`TransportConfig`]).
//!
//! Delivery semantics (see the `deliver` module): a job's code or token travels sealed and is
//! opened only to render the message; a job is dropped, never sent late, once its code or
//! link has expired or been voided; a failed SMTP delivery is retried with exponential
//! backoff until then; the `mail_deliveries` row makes one job send at most one message
//! however often it is retried or redelivered. Metrics: `latchkey_email_jobs_total{kind,
//! outcome}`, `latchkey_email_delivery_seconds{kind}`, `latchkey_email_queue_depth`.
//!
//! No code, token or sealed value is ever logged, and every `Debug` here redacts them (and
//! the SMTP/Redis credentials).

mod config;
mod deliver;
mod error;
mod message;
mod queue;
mod smtp;
mod transport;
mod webhook;
mod worker;

#[cfg(test)]
mod tests;

pub use config::{MailConfig, TransportConfig, WebhookConfig};
pub use error::MailError;
pub use queue::{DEFAULT_NAMESPACE, EMBEDDED_QUEUE_FILE, MailQueue};
pub use transport::check_outbox;
pub use worker::run_worker;
