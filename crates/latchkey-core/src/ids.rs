//! Identifier newtypes. Every id is a UUIDv7 (time-ordered), stored as its hyphenated text,
//! so ordering by id is ordering by creation and ids double as pagination cursors.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta] $name:ident),* $(,)?) => {$(
        #[$doc]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new time-ordered id (UUIDv7).
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    )*};
}

id_type!(
    /// A tenant (a company using Latchkey).
    TenantId,
    /// A user of a tenant (admin, supervisor or agent).
    UserId,
    /// A signed-in session.
    SessionId,
    /// A second-factor challenge (sign-in) or a 2FA enablement setup.
    ChallengeId,
    /// One emailed one-time code.
    EmailCodeId,
    /// One admin reset link.
    ResetTokenId,
    /// A recovery request of an agent or supervisor.
    RecoveryRequestId,
    /// An audit event.
    AuditEventId,
    /// One delivery: an email or a webhook delivery (a queued job's idempotency key).
    DeliveryId,
    /// One recovery code of a user's set (DESIGN.md 5.2).
    RecoveryCodeId,
    /// A trusted device (DESIGN.md 5.4).
    TrustedDeviceId,
    /// A tenant's webhook endpoint (DESIGN.md 5.6).
    WebhookId,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_sort_by_creation() {
        let a = UserId::new();
        let b = UserId::new();
        assert!(a.to_string() < b.to_string());
        assert_eq!(a.to_string().parse::<UserId>().ok(), Some(a));
        assert!("not-a-uuid".parse::<UserId>().is_err());
    }
}
