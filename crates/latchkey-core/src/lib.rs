//! Latchkey's domain: identifiers, roles and methods, the clock, tokens and their keyed
//! hashes, AEAD sealing of secrets, password hashing, TOTP (RFC 6238), email one-time codes,
//! and the pure rules of the product (lockout, send windows, sign-in throttling).
//!
//! Nothing here does IO or reads the system clock on its own: callers read the clock once at
//! the edge (see [`clock::Clock`]) and pass `now` down, so every rule is a pure function of
//! `(state, now)` and is tested with fixed times.

pub mod audit;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod email;
pub mod handoff;
pub mod ids;
pub mod metrics;
pub mod names;
pub mod otp;
pub mod password;
pub mod recovery_code;
pub mod role;
pub mod settings;
pub mod totp;
pub mod trust;
pub mod webhook;

pub use audit::AuditKind;
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Config, Limits};
pub use crypto::{KeyId, Keys, SecretToken, ServerKey};
pub use ids::*;
pub use role::{Method, MethodSet, Role};
