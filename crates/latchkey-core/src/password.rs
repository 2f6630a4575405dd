//! Password hashing with argon2id (RFC 9106), with a dummy hash so that unknown users cost
//! the same as known ones.
//!
//! Hashing and verifying are deliberately slow (tens of milliseconds): call them on a
//! blocking thread pool, never on an event loop or inside an actor.

use std::fmt;

use argon2::password_hash::phc::PasswordHash;
use argon2::{Algorithm, Argon2, Params, PasswordHasher as _, PasswordVerifier as _, Version};
use serde::{Deserialize, Serialize};

/// Shortest accepted new password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest accepted password, in bytes (bounds the hashing cost of hostile input).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordParams {
    /// Memory cost in KiB (default 19456 = 19 MiB, the OWASP recommendation).
    pub memory_kib: u32,
    /// Number of passes (default 2).
    pub iterations: u32,
    /// Degree of parallelism (default 1).
    pub parallelism: u32,
}

impl Default for PasswordParams {
    fn default() -> Self {
        Self { memory_kib: 19_456, iterations: 2, parallelism: 1 }
    }
}

impl PasswordParams {
    /// Cheap parameters for tests (the minimum argon2 allows is still a real argon2id).
    pub fn for_test() -> Self {
        Self { memory_kib: 64, iterations: 1, parallelism: 1 }
    }
}

/// Errors of password hashing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// The cost parameters are outside what argon2 accepts.
    #[error("invalid argon2 parameters: {0}")]
    Params(String),
    /// Hashing failed (out of memory, RNG failure).
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// Why a new password is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordRuleError {
    /// Fewer than [`MIN_PASSWORD_CHARS`] characters.
    #[error("the password must have at least {MIN_PASSWORD_CHARS} characters")]
    TooShort,
    /// More than [`MAX_PASSWORD_BYTES`] bytes.
    #[error("the password must have at most {MAX_PASSWORD_BYTES} bytes")]
    TooLong,
}

/// Checks a new password against the length rules.
pub fn check_new_password(password: &str) -> Result<(), PasswordRuleError> {
    if password.len() > MAX_PASSWORD_BYTES {
        Err(PasswordRuleError::TooLong)
    } else if password.chars().count() < MIN_PASSWORD_CHARS {
        Err(PasswordRuleError::TooShort)
    } else {
        Ok(())
    }
}

/// Hashes and verifies passwords (argon2id v19, PHC string format).
#[derive(Clone)]
pub struct PasswordHasher {
    params: Params,
    dummy: String,
}

impl fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordHasher").field("params", &self.params).finish_non_exhaustive()
    }
}

impl PasswordHasher {
    /// A hasher with `params`; computes the dummy hash used for unknown users (slow).
    pub fn new(params: PasswordParams) -> Result<Self, PasswordError> {
        let params = Params::new(params.memory_kib, params.iterations, params.parallelism, None)
            .map_err(|e| PasswordError::Params(e.to_string()))?;
        let mut hasher = Self { params, dummy: String::new() };
        hasher.dummy = hasher.hash("latchkey dummy password for unknown users")?;
        Ok(hasher)
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// The PHC string of `password` with a fresh random salt.
    pub fn hash(&self, password: &str) -> Result<String, PasswordError> {
        self.argon2()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| PasswordError::Hash(e.to_string()))
    }

    /// Whether `password` matches `stored` (a PHC string). With `stored = None` (unknown
    /// user) the password is checked against the dummy hash, which takes the same time, and
    /// the answer is `false`. A malformed stored hash is a mismatch. Passwords longer than
    /// [`MAX_PASSWORD_BYTES`] never match (and still cost a dummy verification).
    pub fn verify(&self, password: &str, stored: Option<&str>) -> bool {
        let too_long = password.len() > MAX_PASSWORD_BYTES;
        let (target, real) = match stored {
            Some(h) if !too_long => (h, true),
            _ => (self.dummy.as_str(), false),
        };
        let candidate = if too_long { "" } else { password };
        let ok = PasswordHash::new(target)
            .map(|parsed| self.argon2().verify_password(candidate.as_bytes(), &parsed).is_ok())
            .unwrap_or(false);
        ok && real
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = PasswordHasher::new(PasswordParams::for_test()).unwrap();
        let stored = h.hash("correct horse").unwrap();
        assert!(stored.starts_with("$argon2id$v=19$"));
        assert!(h.verify("correct horse", Some(&stored)));
        assert!(!h.verify("wrong horse", Some(&stored)));
        assert!(!h.verify("correct horse", None));
        assert!(!h.verify("correct horse", Some("not a phc string")));
        assert!(!h.verify(&"x".repeat(MAX_PASSWORD_BYTES + 1), Some(&stored)));
        assert_ne!(h.hash("correct horse").unwrap(), stored, "salts are random");
    }

    #[test]
    fn new_password_rules() {
        assert_eq!(check_new_password("short"), Err(PasswordRuleError::TooShort));
        assert_eq!(check_new_password("éééééééé"), Ok(()));
        assert_eq!(check_new_password(&"a".repeat(2000)), Err(PasswordRuleError::TooLong));
    }

    #[test]
    fn bad_params_are_refused() {
        let bad = PasswordParams { memory_kib: 1, iterations: 1, parallelism: 1 };
        assert!(matches!(PasswordHasher::new(bad), Err(PasswordError::Params(_))));
    }
}
