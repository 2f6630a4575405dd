//! The email one-time code and the product's pure rules (DESIGN.md section 1), as functions of
//! `(state, now)`:
//!
//! - [`OtpLockout`]: wrong codes per user and the block that follows.
//! - [`decide_send`]: the resend cooldown and the sliding send window.
//! - [`SigninThrottle`]: wrong passwords per user (or unknown address) per window.
//!
//! ```text
//! OtpLockout, with max = 3:
//!
//!   failures=0 --wrong--> failures=1 --wrong--> failures=2 --wrong--> BLOCKED(until now+block)
//!        ^                    |                     |                     |
//!        +------success-------+---------------------+        (time passes: until <= now)
//!        +------------------------------------------------------------------+
//!   While BLOCKED every code (right or wrong) and every send is refused; the refusal is
//!   not counted. A replayed TOTP step is refused but never counted.
//! ```

use chrono::{DateTime, Duration, Utc};
use zeroize::Zeroizing;

use crate::config::Limits;

/// Whether `code` has the shape of a code: exactly 6 ASCII digits.
pub fn is_code_shape(code: &str) -> bool {
    code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit())
}

/// A fresh emailed code: 6 digits drawn uniformly from `000000..=999999` by the thread
/// CSPRNG (leading zeros kept).
pub fn generate_email_code() -> Zeroizing<String> {
    let n: u32 = rand::random_range(0..1_000_000);
    Zeroizing::new(format!("{n:06}"))
}

/// Whole seconds until `until`, rounded up, at least 1 (for `Retry-After`).
pub fn seconds_until(until: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    let ms = (until - now).num_milliseconds().max(0);
    u64::try_from((ms + 999) / 1000).unwrap_or(0).max(1)
}

/// A user's wrong-code counter and block (shared by both methods).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OtpLockout {
    /// Wrong codes since the last success or block.
    pub failures: u32,
    /// End of the current block, if any (a past instant means the block is over).
    pub blocked_until: Option<DateTime<Utc>>,
}

/// What a counted wrong code leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// Wrong codes left before the block (0 when this one started it).
    pub attempts_remaining: u32,
    /// End of the block this failure started, if it reached the limit.
    pub blocked_until: Option<DateTime<Utc>>,
}

impl OtpLockout {
    /// The state as it stands at `now`: a block that has ended is gone, with its count.
    pub fn at(self, now: DateTime<Utc>) -> Self {
        match self.blocked_until {
            Some(until) if until <= now => Self::default(),
            _ => self,
        }
    }

    /// The end of the block in force at `now`, if any.
    pub fn blocked(self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.blocked_until.filter(|until| *until > now)
    }

    /// Records a wrong code at `now` (call only when not blocked). Reaching
    /// `limits.otp_max_failures` starts a block of `limits.otp_block` and resets the count.
    pub fn fail(self, now: DateTime<Utc>, limits: &Limits) -> (Self, Failure) {
        let current = self.at(now);
        let failures = current.failures.saturating_add(1);
        if failures >= limits.otp_max_failures {
            let until = now + limits.otp_block;
            (
                Self { failures: 0, blocked_until: Some(until) },
                Failure { attempts_remaining: 0, blocked_until: Some(until) },
            )
        } else {
            (
                Self { failures, blocked_until: None },
                Failure { attempts_remaining: limits.otp_max_failures - failures, blocked_until: None },
            )
        }
    }
}

/// Why a send (email code or reset link) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendRefusal {
    /// The previous send is younger than the resend cooldown (429 `resend_too_soon`).
    TooSoon {
        /// When the next send is allowed.
        retry_at: DateTime<Utc>,
    },
    /// The sliding window already holds the maximum of sends (429 `send_limit_reached`).
    LimitReached {
        /// When the next send is allowed (both the window and the cooldown permitting).
        retry_at: DateTime<Utc>,
    },
}

/// A permitted send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendPermit {
    /// Sends left in the window after this one.
    pub sends_remaining: u32,
    /// When the next send will be allowed by the cooldown.
    pub resend_available_at: DateTime<Utc>,
}

/// Decides whether a send at `now` is allowed, given the instants of the user's earlier sends
/// (any order; older ones are ignored). A send at `t` counts in the window while
/// `now < t + window`; the cooldown runs from the latest send.
pub fn decide_send(earlier: &[DateTime<Utc>], now: DateTime<Utc>, limits: &Limits) -> Result<SendPermit, SendRefusal> {
    let mut in_window: Vec<DateTime<Utc>> =
        earlier.iter().copied().filter(|t| *t + limits.email_otp_window > now).collect();
    in_window.sort_unstable();
    let cooldown_until = earlier.iter().max().map(|last| *last + limits.email_otp_resend).filter(|t| *t > now);
    let max = usize::try_from(limits.email_otp_max_sends).unwrap_or(usize::MAX);
    if in_window.len() >= max {
        // The send that frees a place is the one `len - max` from the oldest.
        let frees = in_window.get(in_window.len() - max).copied().unwrap_or(now) + limits.email_otp_window;
        let retry_at = cooldown_until.map_or(frees, |c| c.max(frees));
        return Err(SendRefusal::LimitReached { retry_at });
    }
    if let Some(retry_at) = cooldown_until {
        return Err(SendRefusal::TooSoon { retry_at });
    }
    let used = u32::try_from(in_window.len() + 1).unwrap_or(u32::MAX);
    Ok(SendPermit {
        sends_remaining: limits.email_otp_max_sends.saturating_sub(used),
        resend_available_at: now + limits.email_otp_resend,
    })
}

/// Wrong passwords counted per user (or per unknown address of a tenant) in a fixed window
/// that opens at the first failure (DESIGN.md "Accounts").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SigninThrottle {
    /// Wrong passwords in the window.
    pub failures: u32,
    /// Start of the window.
    pub window_started_at: DateTime<Utc>,
}

impl SigninThrottle {
    fn live(state: Option<Self>, now: DateTime<Utc>, window: Duration) -> Option<Self> {
        state.filter(|s| s.window_started_at + window > now)
    }

    /// `Err(retry_at)` when the limit is reached at `now`: sign-in is refused (429) even
    /// with the right password until the window passes.
    pub fn check(state: Option<Self>, now: DateTime<Utc>, limits: &Limits) -> Result<(), DateTime<Utc>> {
        match Self::live(state, now, limits.signin_window) {
            Some(s) if s.failures >= limits.signin_max_failures => Err(s.window_started_at + limits.signin_window),
            _ => Ok(()),
        }
    }

    /// The state after a wrong password at `now`.
    pub fn fail(state: Option<Self>, now: DateTime<Utc>, limits: &Limits) -> Self {
        match Self::live(state, now, limits.signin_window) {
            Some(s) => Self { failures: s.failures.saturating_add(1), ..s },
            None => Self { failures: 1, window_started_at: now },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn code_shape() {
        assert!(is_code_shape("012345"));
        for bad in ["12345", "1234567", "12345a", " 12345", "١٢٣٤٥٦", ""] {
            assert!(!is_code_shape(bad), "{bad:?}");
        }
    }

    #[test]
    fn codes_are_six_digits_and_vary() {
        let codes: Vec<_> = (0..200).map(|_| generate_email_code()).collect();
        assert!(codes.iter().all(|c| is_code_shape(c)));
        let distinct: std::collections::HashSet<_> = codes.iter().map(|c| c.to_string()).collect();
        assert!(distinct.len() > 150);
    }

    #[test]
    fn lockout_counts_to_the_limit_then_blocks() {
        let l = limits();
        let s = OtpLockout::default();
        let (s, f1) = s.fail(t(0), &l);
        assert_eq!(f1, Failure { attempts_remaining: 2, blocked_until: None });
        let (s, f2) = s.fail(t(1), &l);
        assert_eq!(f2.attempts_remaining, 1);
        let (s, f3) = s.fail(t(2), &l);
        assert_eq!(f3, Failure { attempts_remaining: 0, blocked_until: Some(t(302)) });
        assert_eq!(s.blocked(t(2)), Some(t(302)));
        assert_eq!(s.blocked(t(301)), Some(t(302)));
        // The block ends exactly at its end, with a fresh count.
        assert_eq!(s.blocked(t(302)), None);
        assert_eq!(s.at(t(302)), OtpLockout::default());
        let (_, again) = s.fail(t(303), &l);
        assert_eq!(again.attempts_remaining, 2);
    }

    #[test]
    fn lockout_with_other_limits() {
        let l = Limits { otp_max_failures: 1, otp_block: Duration::seconds(5), ..limits() };
        let (s, f) = OtpLockout::default().fail(t(0), &l);
        assert_eq!(f.blocked_until, Some(t(5)));
        assert_eq!(s.blocked(t(4)), Some(t(5)));
    }

    #[test]
    fn first_send_is_free() {
        let p = decide_send(&[], t(0), &limits()).unwrap();
        assert_eq!(p, SendPermit { sends_remaining: 2, resend_available_at: t(60) });
    }

    #[test]
    fn cooldown_edges() {
        let l = limits();
        assert_eq!(decide_send(&[t(0)], t(59), &l), Err(SendRefusal::TooSoon { retry_at: t(60) }));
        assert_eq!(decide_send(&[t(0)], t(60), &l).map(|p| p.sends_remaining), Ok(1));
    }

    #[test]
    fn sliding_window_edges() {
        let l = limits();
        let sends = [t(0), t(60), t(120)];
        // Fourth send: refused until the first leaves the window at t(300).
        assert_eq!(decide_send(&sends, t(180), &l), Err(SendRefusal::LimitReached { retry_at: t(300) }));
        assert_eq!(decide_send(&sends, t(299), &l), Err(SendRefusal::LimitReached { retry_at: t(300) }));
        let p = decide_send(&sends, t(300), &l).unwrap();
        // Two earlier sends still count.
        assert_eq!(p.sends_remaining, 0);
        // With the first two gone, one place again.
        assert_eq!(decide_send(&[t(0), t(60), t(120), t(300)], t(361), &l).map(|p| p.sends_remaining), Ok(0));
        assert!(decide_send(&[t(0), t(60), t(120), t(300)], t(360), &l).is_ok());
        assert!(decide_send(&[t(0), t(60), t(120), t(300)], t(359), &l).is_err());
    }

    #[test]
    fn limit_reached_waits_for_the_cooldown_too() {
        let l = Limits { email_otp_resend: Duration::seconds(100), email_otp_max_sends: 2, ..limits() };
        assert_eq!(decide_send(&[t(0), t(250)], t(260), &l), Err(SendRefusal::LimitReached { retry_at: t(350) }));
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(seconds_until(t(5), t(0)), 5);
        assert_eq!(seconds_until(t(5), t(5)), 1);
        assert_eq!(seconds_until(t(5) + Duration::milliseconds(1), t(0)), 6);
    }

    #[test]
    fn signin_throttle() {
        let l = limits();
        let mut s = None;
        for i in 0..10 {
            assert_eq!(SigninThrottle::check(s, t(i), &l), Ok(()));
            s = Some(SigninThrottle::fail(s, t(i), &l));
        }
        assert_eq!(SigninThrottle::check(s, t(10), &l), Err(t(900)));
        assert_eq!(SigninThrottle::check(s, t(899), &l), Err(t(900)));
        assert_eq!(SigninThrottle::check(s, t(900), &l), Ok(()));
        let fresh = SigninThrottle::fail(s, t(900), &l);
        assert_eq!(fresh, SigninThrottle { failures: 1, window_started_at: t(900) });
    }
}
