//! The time rules of self-service (DESIGN.md 5.3-5.5) as pure functions of `(state, now)`:
//! when a session's second factor is fresh enough for a sensitive change (step-up), until when
//! a trusted device is honoured, and until when an enrollment may be skipped.

use chrono::{DateTime, Duration, Utc};

/// Whether a second factor verified at `verified_at` (a sign-in code, a passkey, a recovery
/// code, or a step-up; never a trusted device or a skipped enrollment) still satisfies step-up
/// at `now`: within `window` (`LATCHKEY_STEP_UP_SECS`), inclusive.
pub fn is_fresh(verified_at: Option<DateTime<Utc>>, now: DateTime<Utc>, window: Duration) -> bool {
    verified_at.is_some_and(|at| at <= now && at + window >= now)
}

/// When a device remembered at `created_at` for a role allowing `days` stops being honoured;
/// `None` when the role allows none (0 days).
pub fn device_expiry(created_at: DateTime<Utc>, days: u32) -> Option<DateTime<Utc>> {
    (days > 0).then(|| created_at + Duration::days(i64::from(days)))
}

/// Whether a trusted device is honoured at `now`: not revoked, before its expiry, and its user
/// not blocked (a block refuses every shortcut past the second factor).
pub fn device_honoured(
    expires_at: DateTime<Utc>,
    revoked: bool,
    user_blocked_until: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> bool {
    !revoked && now < expires_at && user_blocked_until.is_none_or(|until| until <= now)
}

/// The deadline of an enrollment grace period: the first time the user was asked to enroll plus
/// `days`; `None` when there is no grace period (0 days).
pub fn enroll_by(first_asked: DateTime<Utc>, days: u32) -> Option<DateTime<Utc>> {
    (days > 0).then(|| first_asked + Duration::days(i64::from(days)))
}

/// Whether an enrollment may be skipped at `now` with deadline `enroll_by` (strictly before it).
pub fn may_skip(enroll_by: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    enroll_by.is_some_and(|by| now < by)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn step_up_freshness() {
        let w = Duration::seconds(300);
        assert!(!is_fresh(None, t(0), w));
        assert!(is_fresh(Some(t(0)), t(0), w));
        assert!(is_fresh(Some(t(0)), t(300), w));
        assert!(!is_fresh(Some(t(0)), t(301), w));
        assert!(!is_fresh(Some(t(10)), t(0), w), "a verification in the future does not count");
    }

    #[test]
    fn devices() {
        assert_eq!(device_expiry(t(0), 0), None);
        let exp = device_expiry(t(0), 30).unwrap();
        assert_eq!(exp, t(30 * 86_400));
        assert!(device_honoured(exp, false, None, t(0)));
        assert!(device_honoured(exp, false, None, exp - Duration::seconds(1)));
        assert!(!device_honoured(exp, false, None, exp));
        assert!(!device_honoured(exp, true, None, t(1)));
        assert!(!device_honoured(exp, false, Some(t(100)), t(50)), "not while blocked");
        assert!(device_honoured(exp, false, Some(t(100)), t(100)), "once the block has ended");
    }

    #[test]
    fn grace() {
        assert_eq!(enroll_by(t(0), 0), None);
        let by = enroll_by(t(0), 7);
        assert_eq!(by, Some(t(7 * 86_400)));
        assert!(may_skip(by, t(0)));
        assert!(may_skip(by, t(7 * 86_400 - 1)));
        assert!(!may_skip(by, t(7 * 86_400)));
        assert!(!may_skip(None, t(0)));
    }
}
