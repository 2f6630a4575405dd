//! Latchkey's use-cases and per-tenant actors.
//!
//! [`Service`] holds one method per use-case (sign-in, challenges, settings, users, recovery,
//! audit). Each reads the tenant's policy through its [`TenantActor`](actor::TenantActor),
//! checks passwords on the blocking pool, and makes its decision inside one store
//! transaction that serialises the user's counters, applying the pure rules of
//! `latchkey_core` to the state it reads there. Mail and webhook deliveries are recorded in
//! that transaction; their jobs go to an [`Outbox`].

pub mod actor;
pub mod error;
pub mod outbox;
pub mod service;

pub use actor::{ActorSettings, Registry, TenantWithVerifier, Verifier, build_verifier};
pub use error::{Error, Result};
pub use outbox::{DeliveryJob, MailPayload, MemoryOutbox, NoticeEvent, NoticeMail, Outbox, OutboxError};
pub use service::*;

/// The JSON forms of the browser's WebAuthn answers (webauthn-rs's types), as the API parses
/// `credential` (DESIGN.md 5.1).
pub mod webauthn_json {
    pub use webauthn_rs_core::proto::{PublicKeyCredential, RegisterPublicKeyCredential};
}
