//! The email one-time code and the product's pure rules (DESIGN.md section 1), as functions of
//! `(state, now)`:
//!
//! - [`OtpLockout`]: wrong codes per user and the block that follows.
//! - [`decide_send`]: the resend cooldown and the sliding send window.
//! - [`SigninThrottle`]: password attempts per user (or unknown address) per sliding window.
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

/// Password attempts counted per user (or per unknown address of a tenant) in a sliding
/// window (DESIGN.md "Accounts"): the instants of the latest attempts, at most
/// `signin_max_failures` of them, so that no window-long span ever holds more than the limit.
/// An attempt is reserved before its password is checked; a success clears the log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SigninThrottle {
    /// Instants of the counted attempts still in the window, oldest first.
    pub attempts: Vec<DateTime<Utc>>,
}

impl SigninThrottle {
    /// The attempts that still count at `now` (younger than the window).
    fn live(&self, now: DateTime<Utc>, window: Duration) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        self.attempts.iter().copied().filter(move |t| *t + window > now)
    }

    /// `Err(retry_at)` when the limit is reached at `now`: sign-in is refused (429) even with
    /// the right password until the oldest counted attempt leaves the window.
    pub fn check(&self, now: DateTime<Utc>, limits: &Limits) -> Result<(), DateTime<Utc>> {
        let mut live: Vec<DateTime<Utc>> = self.live(now, limits.signin_window).collect();
        let max = usize::try_from(limits.signin_max_failures).unwrap_or(usize::MAX).max(1);
        if live.len() < max {
            return Ok(());
        }
        live.sort_unstable();
        // The attempt that frees a place is the one `len - max` from the oldest.
        let frees = live.get(live.len() - max).copied().unwrap_or(now);
        Err(frees + limits.signin_window)
    }

    /// The log after an attempt at `now`: only attempts still in the window are kept, at most
    /// the limit of them (the newest).
    pub fn fail(&self, now: DateTime<Utc>, limits: &Limits) -> Self {
        let mut attempts: Vec<DateTime<Utc>> = self.live(now, limits.signin_window).collect();
        attempts.push(now);
        attempts.sort_unstable();
        let max = usize::try_from(limits.signin_max_failures).unwrap_or(usize::MAX).max(1);
        let drop = attempts.len().saturating_sub(max);
        attempts.drain(..drop);
        Self { attempts }
    }

    /// The stored form: Unix milliseconds, comma-separated.
    pub fn encode(&self) -> String {
        self.attempts.iter().map(|t| t.timestamp_millis().to_string()).collect::<Vec<_>>().join(",")
    }

    /// The log of a stored form; entries that do not parse are dropped (the log only ever
    /// counts against the user, so a damaged one errs on the side of fewer attempts left).
    pub fn decode(text: &str) -> Self {
        let attempts = text
            .split(',')
            .filter_map(|x| x.trim().parse::<i64>().ok())
            .filter_map(DateTime::from_timestamp_millis)
            .collect();
        Self { attempts }
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
    fn signin_throttle_slides() {
        let l = limits();
        let mut s = SigninThrottle::default();
        for i in 0..10 {
            assert_eq!(s.check(t(i * 60), &l), Ok(()));
            s = s.fail(t(i * 60), &l);
        }
        // Ten attempts at t(0)…t(540): the eleventh waits until t(0) leaves the window.
        assert_eq!(s.check(t(541), &l), Err(t(900)));
        assert_eq!(s.check(t(899), &l), Err(t(900)));
        assert_eq!(s.check(t(900), &l), Ok(()));
        // The window slides: one more at t(900), and the next place is at t(960).
        s = s.fail(t(900), &l);
        assert_eq!(s.check(t(901), &l), Err(t(960)));
        assert_eq!(s.attempts.len(), 10);
        assert_eq!(SigninThrottle::decode(&s.encode()), s);
        assert_eq!(SigninThrottle::decode("x,1700000000000,"), SigninThrottle { attempts: vec![t(0)] });
    }

    /// Whatever the timing, no window-long span holds more attempts than the limit (the
    /// fixed window let 19 guesses through around its edge).
    #[test]
    fn no_span_holds_more_than_the_limit() {
        let l = limits();
        let mut s = SigninThrottle::default();
        let mut allowed = Vec::new();
        for ms in (0..3_600_000i64).step_by(7_919) {
            let now = t(0) + Duration::milliseconds(ms);
            if s.check(now, &l).is_ok() {
                allowed.push(now);
                s = s.fail(now, &l);
            }
        }
        for (i, start) in allowed.iter().enumerate() {
            let in_span = allowed[i..].iter().take_while(|x| **x < *start + l.signin_window).count();
            assert!(in_span <= 10, "{in_span} attempts within a window from {start}");
        }
        assert!(allowed.len() >= 30);
    }
}
