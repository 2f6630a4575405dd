//! TOTP (RFC 6238): HMAC-SHA1, 6 digits, 30-second time steps, ±1 step of skew, with replay
//! protection by the last accepted time step, plus the setup material an authenticator app
//! needs (base32 setup key, `otpauth://` URI in the Key Uri Format, PNG QR code).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use totp_rs::{Algorithm, Builder, Secret, Totp};
use zeroize::Zeroizing;

use crate::crypto::ct_eq;

/// Length of a time step in seconds (RFC 6238 §4.1, `X = 30`).
pub const STEP_SECS: i64 = 30;
/// Digits of a code (RFC 4226 §5.3).
pub const DIGITS: usize = 6;
/// Accepted steps either side of the current one (RFC 6238 §5.2: "at most one time step").
pub const SKEW_STEPS: i64 = 1;
/// Length of a generated secret in bytes (160 bits, RFC 4226 §4 R6).
pub const SECRET_LEN: usize = 20;

/// Characters kept as they are in URI components: RFC 3986 unreserved.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Errors of TOTP setup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TotpError {
    /// A stored secret is not 160 bits.
    #[error("a TOTP secret must be {SECRET_LEN} bytes")]
    BadSecret,
    /// The otpauth URI is too long for a QR code (an absurdly long tenant name or address).
    #[error("the otpauth URI is too long for a QR code")]
    QrTooLong,
}

/// A 160-bit TOTP secret. `Debug` never shows it; it is zeroed on drop.
#[derive(Clone)]
pub struct TotpSecret(Zeroizing<Vec<u8>>);

impl TotpSecret {
    /// A fresh random secret (160 bits from the thread CSPRNG).
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new(vec![0u8; SECRET_LEN]);
        rand::fill(bytes.as_mut_slice());
        Self(bytes)
    }

    /// A secret from its raw bytes (e.g. just unsealed from storage).
    ///
    /// Errors: [`TotpError::BadSecret`] unless exactly [`SECRET_LEN`] bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TotpError> {
        if bytes.len() != SECRET_LEN {
            return Err(TotpError::BadSecret);
        }
        Ok(Self(Zeroizing::new(bytes.to_vec())))
    }

    /// The raw bytes, to seal for storage.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The setup key shown to the user: RFC 4648 base32, upper case, no padding
    /// (32 characters for 160 bits).
    pub fn to_base32(&self) -> String {
        Secret::from(self.0.as_slice()).to_base32()
    }

    fn totp(&self) -> Totp {
        Builder::new()
            .with_algorithm(Algorithm::SHA1)
            .with_digits(DIGITS as u8)
            .with_step_duration(STEP_SECS as u64)
            .with_skew(0)
            .with_secret(self.0.as_slice())
            .build_noncompliant()
    }

    /// The code of time step `step` (RFC 6238 §4.2: HOTP with `T = step`), 6 digits with
    /// leading zeros kept. Steps before the epoch give the code of step 0.
    pub fn code_at_step(&self, step: i64) -> String {
        let t = u64::try_from(step.max(0)).unwrap_or(0).saturating_mul(STEP_SECS as u64);
        self.totp().generate(t).to_string()
    }

    /// The code an authenticator shows at `now`.
    pub fn code_at(&self, now: DateTime<Utc>) -> String {
        self.code_at_step(time_step(now))
    }
}

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret(<redacted>)")
    }
}

/// The time step of `now`: `floor(unix seconds / 30)` (RFC 6238 §4.2).
pub fn time_step(now: DateTime<Utc>) -> i64 {
    now.timestamp().div_euclid(STEP_SECS)
}

/// The outcome of checking a TOTP code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TotpCheck {
    /// The code matches time step `step`, later than the last accepted one: accept it and
    /// store `step` as the new last accepted step.
    Accepted {
        /// The matched time step.
        step: i64,
    },
    /// The code matches a step within the window, but that step was already used (at or below
    /// the last accepted step): refuse it, without counting a wrong code (the product rule
    /// on replays).
    Replayed,
    /// The code matches no step within the window: a wrong code.
    Invalid,
}

/// Checks `code` against the steps `[t-1, t, t+1]` around `now` (RFC 6238 §5.2), refusing
/// any step at or below `last_step` (replay protection, RFC 6238 §5.2 "MUST NOT accept the
/// second attempt of the same OTP"). Every candidate is compared in constant time.
pub fn check(secret: &TotpSecret, code: &str, now: DateTime<Utc>, last_step: Option<i64>) -> TotpCheck {
    let current = time_step(now);
    let mut accepted = None;
    let mut replayed = false;
    for step in (current - SKEW_STEPS)..=(current + SKEW_STEPS) {
        if step < 0 {
            continue;
        }
        let matches = ct_eq(secret.code_at_step(step).as_bytes(), code.as_bytes());
        if matches {
            if last_step.is_some_and(|last| step <= last) {
                replayed = true;
            } else if accepted.is_none() {
                accepted = Some(step);
            }
        }
    }
    match (accepted, replayed) {
        (Some(step), _) => TotpCheck::Accepted { step },
        (None, true) => TotpCheck::Replayed,
        (None, false) => TotpCheck::Invalid,
    }
}

/// The `otpauth://` URI of the Key Uri Format:
/// `otpauth://totp/ISSUER:ACCOUNT?secret=..&issuer=ISSUER&algorithm=SHA1&digits=6&period=30`,
/// with issuer and account percent-encoded (RFC 3986 unreserved characters kept, so spaces,
/// `&`, `+`, `@`, `:` and non-ASCII letters survive any parser).
pub fn otpauth_uri(secret: &TotpSecret, issuer: &str, account: &str) -> String {
    let issuer = utf8_percent_encode(issuer, COMPONENT).to_string();
    let account = utf8_percent_encode(account, COMPONENT);
    format!(
        "otpauth://totp/{issuer}:{account}?secret={}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        secret.to_base32()
    )
}

/// A PNG QR code of `uri` (error correction M, 8 pixels per module, a quiet zone of 4
/// modules), base64-encoded.
///
/// Errors: [`TotpError::QrTooLong`] when `uri` does not fit in a QR code.
pub fn qr_png_base64(uri: &str) -> Result<String, TotpError> {
    let png = Zeroizing::new(qrcodegen_image::draw_png(uri).map_err(|_| TotpError::QrTooLong)?);
    Ok(STANDARD.encode(png.as_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn rfc_secret() -> TotpSecret {
        TotpSecret::from_bytes(b"12345678901234567890").unwrap()
    }

    /// RFC 6238 Appendix B (SHA1); 6-digit codes are the last 6 digits of the 8-digit ones.
    #[test]
    fn rfc6238_appendix_b_vectors() {
        let s = rfc_secret();
        for (t, eight) in [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(s.code_at(at(t)), &eight[2..], "T = {t}");
        }
    }

    #[test]
    fn step_boundaries() {
        assert_eq!(time_step(at(0)), 0);
        assert_eq!(time_step(at(29)), 0);
        assert_eq!(time_step(at(30)), 1);
        assert_eq!(time_step(at(59)), 1);
        assert_eq!(time_step(at(-1)), -1);
    }

    #[test]
    fn window_is_previous_current_next() {
        let s = rfc_secret();
        let now = at(1_111_111_111);
        let t = time_step(now);
        for (offset, expected) in [(-2, false), (-1, true), (0, true), (1, true), (2, false)] {
            let code = s.code_at_step(t + offset);
            let accepted = matches!(check(&s, &code, now, None), TotpCheck::Accepted { step } if step == t + offset);
            assert_eq!(accepted, expected, "offset {offset}");
        }
        assert_eq!(check(&s, "000000", now, None), TotpCheck::Invalid);
        assert_eq!(check(&s, "12345", now, None), TotpCheck::Invalid);
    }

    #[test]
    fn the_edge_of_a_step_accepts_the_neighbour() {
        let s = rfc_secret();
        // Last second of step 10: the code of step 11 is "next", the code of step 9 "previous".
        let now = at(11 * 30 - 1);
        assert_eq!(check(&s, &s.code_at_step(11), now, None), TotpCheck::Accepted { step: 11 });
        assert_eq!(check(&s, &s.code_at_step(9), now, None), TotpCheck::Accepted { step: 9 });
        assert_eq!(check(&s, &s.code_at_step(12), now, None), TotpCheck::Invalid);
        // One second later (step 11) step 9 is out of the window.
        assert_eq!(check(&s, &s.code_at_step(9), at(11 * 30), None), TotpCheck::Invalid);
    }

    #[test]
    fn replays_are_refused() {
        let s = rfc_secret();
        let now = at(1_234_567_890);
        let t = time_step(now);
        let code = s.code_at_step(t);
        assert_eq!(check(&s, &code, now, Some(t - 1)), TotpCheck::Accepted { step: t });
        assert_eq!(check(&s, &code, now, Some(t)), TotpCheck::Replayed);
        assert_eq!(check(&s, &s.code_at_step(t - 1), now, Some(t)), TotpCheck::Replayed);
        // After using the next step, the current one is a replay too.
        assert_eq!(check(&s, &code, now, Some(t + 1)), TotpCheck::Replayed);
        assert_eq!(check(&s, &s.code_at_step(t + 1), now, Some(t)), TotpCheck::Accepted { step: t + 1 });
    }

    #[test]
    fn setup_material() {
        let s = TotpSecret::generate();
        let key = s.to_base32();
        assert_eq!(key.len(), 32);
        assert!(key.bytes().all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)));
        let uri = otpauth_uri(&s, "Acme & Co+ Ünïcode", "jo+x@example.com");
        assert_eq!(
            uri,
            format!(
                "otpauth://totp/Acme%20%26%20Co%2B%20%C3%9Cn%C3%AFcode:jo%2Bx%40example.com?secret={key}&issuer=Acme%20%26%20Co%2B%20%C3%9Cn%C3%AFcode&algorithm=SHA1&digits=6&period=30"
            )
        );
        let png = STANDARD.decode(qr_png_base64(&uri).unwrap()).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(qr_png_base64(&"x".repeat(5000)), Err(TotpError::QrTooLong));
        assert!(!format!("{s:?}").contains(&key));
    }

    #[test]
    fn secrets_are_160_bits() {
        assert_eq!(TotpSecret::generate().as_bytes().len(), SECRET_LEN);
        assert!(TotpSecret::from_bytes(&[0; 10]).is_err());
    }
}
