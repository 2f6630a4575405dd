//! Kinds of audit events (DESIGN.md section 3, "Audit event kinds").

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! kinds {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)*) => {
        /// What an audit event records.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum AuditKind {
            $($(#[$doc])* $variant,)*
        }

        impl AuditKind {
            /// Every kind.
            pub const ALL: &'static [AuditKind] = &[$(AuditKind::$variant,)*];

            /// The wire name (snake case).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(AuditKind::$variant => $name,)*
                }
            }
        }

        impl FromStr for AuditKind {
            type Err = crate::role::UnknownName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok(AuditKind::$variant),)*
                    _ => Err(crate::role::UnknownName::new("audit kind", s)),
                }
            }
        }
    };
}

kinds! {
    /// A session was issued (password alone, or after the second factor).
    SignedIn => "signed_in",
    /// A user enrolled a method.
    Enrolled => "enrolled",
    /// A second-factor code was accepted.
    Verified => "verified",
    /// A second-factor code was refused (and counted).
    VerifyFailed => "verify_failed",
    /// A user's OTP was blocked after too many wrong codes.
    OtpBlocked => "otp_blocked",
    /// An admin turned 2FA on for the tenant.
    TwoFactorEnabled => "two_factor_enabled",
    /// An admin turned 2FA off.
    TwoFactorDisabled => "two_factor_disabled",
    /// An admin changed the methods allowed per role.
    MethodsChanged => "methods_changed",
    /// An agent or supervisor asked for recovery.
    RecoveryRequested => "recovery_requested",
    /// An admin approved (reset) a recovery request.
    RecoveryApproved => "recovery_approved",
    /// An admin dismissed a recovery request.
    RecoveryDismissed => "recovery_dismissed",
    /// An admin reset link was sent.
    ResetLinkSent => "reset_link_sent",
    /// An admin reset link was used.
    ResetLinkUsed => "reset_link_used",
    /// A user's email address changed.
    EmailChanged => "email_changed",
    /// An admin created a user.
    AgentCreated => "agent_created",
    /// An admin deleted a user.
    AgentDeleted => "agent_deleted",
    /// A user's role changed.
    RoleChanged => "role_changed",
    /// A user changed their password.
    PasswordChanged => "password_changed",
    /// The operator reset a user's 2FA.
    OperatorReset => "operator_reset",
    /// A recovery code was used to sign in (DESIGN.md 5.2).
    RecoveryCodeUsed => "recovery_code_used",
    /// A user generated a new set of recovery codes.
    RecoveryCodesGenerated => "recovery_codes_generated",
    /// A user removed a second factor (a method or a passkey).
    FactorRemoved => "factor_removed",
    /// A WebAuthn assertion came with a signature counter that did not grow (DESIGN.md 5.1).
    WebauthnCounterRegressed => "webauthn_counter_regressed",
    /// A trusted device was remembered (DESIGN.md 5.4).
    TrustedDeviceCreated => "trusted_device_created",
    /// A trusted device was revoked.
    TrustedDeviceRevoked => "trusted_device_revoked",
    /// A supervisor or agent skipped enrollment in the grace period (DESIGN.md 5.5).
    EnrollmentSkipped => "enrollment_skipped",
    /// An admin reset a user's second factor (DESIGN.md 5.8).
    AdminReset => "admin_reset",
    /// A session's second factor was verified again (step-up, DESIGN.md 5.3).
    StepUp => "step_up",
    /// An admin created a webhook (DESIGN.md 5.6).
    WebhookCreated => "webhook_created",
    /// An admin changed a webhook or rotated its secret.
    WebhookChanged => "webhook_changed",
    /// An admin deleted a webhook.
    WebhookDeleted => "webhook_deleted",
    /// An admin changed the tenant's settings (DESIGN.md 5.8).
    SettingsChanged => "settings_changed",
}

impl fmt::Display for AuditKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        assert_eq!(AuditKind::ALL.len(), 32);
        for k in AuditKind::ALL {
            assert_eq!(k.as_str().parse::<AuditKind>().ok(), Some(*k));
            assert_eq!(serde_json::to_string(k).ok(), Some(format!("\"{}\"", k.as_str())));
        }
    }
}
