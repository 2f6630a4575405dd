//! Tokens, keyed hashes and AEAD sealing under the server key.
//!
//! - Every token (challenge, session, setup, reset) is 256 random bits, base64url without
//!   padding (43 characters). Only its keyed hash (HMAC-SHA256 under a key derived from the
//!   server key, with a purpose label) is stored, so a database dump yields no usable token.
//! - Email codes are stored as HMAC-SHA256 of `(code id, code)`.
//! - Secrets that must be read back (TOTP secrets, codes on their way through the queue) are
//!   sealed with XChaCha20-Poly1305 (random 192-bit nonce) under another derived key, with
//!   associated data binding the ciphertext to its owner.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

type HmacSha256 = Hmac<Sha256>;

/// Length of the server key in bytes (256 bits).
pub const SERVER_KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;

/// Errors of key parsing and of opening sealed data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The configured key is not 32 bytes in hex (64 characters) or base64 (44 characters).
    #[error("the secret key must be 32 bytes, written as 64 hex or 44 base64 characters")]
    BadKey,
    /// Sealed data was altered, truncated, or sealed under another key or owner.
    #[error("sealed data cannot be opened with this key")]
    Open,
}

/// The server's root secret (32 bytes); every working key is derived from it.
/// `Debug` never shows it.
#[derive(Clone)]
pub struct ServerKey(Zeroizing<[u8; SERVER_KEY_LEN]>);

impl ServerKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut bytes = [0u8; SERVER_KEY_LEN];
        rand::fill(&mut bytes);
        let key = Self(Zeroizing::new(bytes));
        bytes.zeroize();
        key
    }

    /// Parses a key written as 64 hex characters or standard base64 of 32 bytes
    /// (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        let text = text.trim();
        let mut bytes = Zeroizing::new([0u8; SERVER_KEY_LEN]);
        if text.len() == 2 * SERVER_KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            for (i, chunk) in text.as_bytes().chunks(2).enumerate() {
                let hex = std::str::from_utf8(chunk).map_err(|_| CryptoError::BadKey)?;
                bytes[i] = u8::from_str_radix(hex, 16).map_err(|_| CryptoError::BadKey)?;
            }
            return Ok(Self(bytes));
        }
        let decoded = Zeroizing::new(STANDARD.decode(text).map_err(|_| CryptoError::BadKey)?);
        if decoded.len() != SERVER_KEY_LEN {
            return Err(CryptoError::BadKey);
        }
        bytes.copy_from_slice(&decoded);
        Ok(Self(bytes))
    }

    /// The key as standard base64 (for writing `secret.key`).
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.0.as_slice()))
    }

    fn derive(&self, label: &[u8]) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&hmac(self.0.as_slice(), &[b"latchkey/v1/", label]));
        out
    }
}

impl fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerKey(<redacted>)")
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match <HmacSha256 as KeyInit>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    for part in parts {
        // Length-prefix every part so that ("ab","c") and ("a","bc") differ.
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// The working keys derived from the [`ServerKey`]: one for keyed hashes, one for sealing.
#[derive(Clone)]
pub struct Keys {
    mac_key: Zeroizing<[u8; 32]>,
    aead: XChaCha20Poly1305,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

/// What a token is for; part of its keyed hash, so a token of one kind never matches another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPurpose {
    /// A session's bearer token (`authentication_token`).
    Session,
    /// A sign-in challenge (`challenge_token`) or an enablement setup (`setup_token`).
    Challenge,
    /// An admin's emailed reset link.
    Reset,
    /// A trusted device's `device_token` (DESIGN.md 5.4).
    Device,
    /// A passwordless sign-in ceremony's `passkey_token` (DESIGN.md 5.1).
    Passkey,
}

impl TokenPurpose {
    fn label(self) -> &'static [u8] {
        match self {
            TokenPurpose::Session => b"session",
            TokenPurpose::Challenge => b"challenge",
            TokenPurpose::Reset => b"reset",
            TokenPurpose::Device => b"device",
            TokenPurpose::Passkey => b"passkey",
        }
    }
}

impl Keys {
    /// Derives the working keys from the server key.
    pub fn new(server_key: &ServerKey) -> Self {
        let aead_key = server_key.derive(b"aead");
        let aead = match XChaCha20Poly1305::new_from_slice(aead_key.as_slice()) {
            Ok(aead) => aead,
            Err(_) => unreachable!("the derived key is 32 bytes"),
        };
        Self { mac_key: server_key.derive(b"mac"), aead }
    }

    /// The keyed hash (HMAC-SHA256) under which a token of `purpose` is stored.
    pub fn token_hash(&self, purpose: TokenPurpose, token: &str) -> [u8; 32] {
        hmac(self.mac_key.as_slice(), &[b"token", purpose.label(), token.as_bytes()])
    }

    /// The keyed hash under which an email code is stored; bound to the code's row id so
    /// equal codes sent twice hash differently.
    pub fn code_hash(&self, code_id: &str, code: &str) -> [u8; 32] {
        hmac(self.mac_key.as_slice(), &[b"email-code", code_id.as_bytes(), code.as_bytes()])
    }

    /// The keyed hash under which a recovery code of `user` is stored, of its normalised form
    /// ([`crate::recovery_code::normalize`]); bound to the user, so that the store can look a
    /// typed code up directly.
    pub fn recovery_code_hash(&self, user: &str, code: &str) -> [u8; 32] {
        hmac(self.mac_key.as_slice(), &[b"recovery-code", user.as_bytes(), code.as_bytes()])
    }

    /// A keyed hash of an arbitrary label (e.g. an unknown sign-in address for its failure
    /// counter), so the store never holds the raw value.
    pub fn label_hash(&self, label: &str) -> String {
        URL_SAFE_NO_PAD.encode(hmac(self.mac_key.as_slice(), &[b"label", label.as_bytes()]))
    }

    /// Seals `plaintext` (XChaCha20-Poly1305, random nonce) with `aad` as associated data;
    /// the result is `nonce ‖ ciphertext ‖ tag`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let nonce = XNonce::generate();
        let mut out = nonce.to_vec();
        match self.aead.encrypt(&nonce, Payload { msg: plaintext, aad }) {
            Ok(ciphertext) => out.extend_from_slice(&ciphertext),
            // Encryption only fails for messages beyond 256 GiB.
            Err(_) => unreachable!("XChaCha20-Poly1305 encrypts any message this small"),
        }
        out
    }

    /// Opens what [`Keys::seal`] produced with the same `aad`.
    ///
    /// Errors: [`CryptoError::Open`] when the data is truncated, altered, or sealed under
    /// another key or associated data.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if sealed.len() < NONCE_LEN {
            return Err(CryptoError::Open);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| CryptoError::Open)?;
        self.aead.decrypt(&nonce, Payload { msg: ciphertext, aad }).map(Zeroizing::new).map_err(|_| CryptoError::Open)
    }
}

/// Constant-time equality of two byte strings (length is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// A bearer secret handed to a client once: 256 random bits, base64url without padding.
/// `Debug` never shows it; it is not `Serialize`, so it cannot be logged or queued by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretToken(Zeroizing<String>);

impl SecretToken {
    /// A fresh random token.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::fill(bytes.as_mut_slice());
        Self(Zeroizing::new(URL_SAFE_NO_PAD.encode(bytes.as_slice())))
    }

    /// The token text, to put in a response body or a link.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretToken(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::new(&ServerKey::parse(&"ab".repeat(32)).unwrap())
    }

    #[test]
    fn key_parsing() {
        assert!(ServerKey::parse(&"0f".repeat(32)).is_ok());
        let k = ServerKey::generate();
        let again = ServerKey::parse(&k.to_base64()).unwrap();
        assert_eq!(k.0.as_slice(), again.0.as_slice());
        assert_eq!(ServerKey::parse("short").err(), Some(CryptoError::BadKey));
        assert_eq!(ServerKey::parse(&"0f".repeat(31)).err(), Some(CryptoError::BadKey));
        assert_eq!(format!("{k:?}"), "ServerKey(<redacted>)");
    }

    #[test]
    fn token_hashes_depend_on_purpose_and_key() {
        let k = keys();
        let t = SecretToken::generate();
        assert_eq!(t.expose().len(), 43);
        assert_eq!(k.token_hash(TokenPurpose::Session, t.expose()), k.token_hash(TokenPurpose::Session, t.expose()));
        assert_ne!(k.token_hash(TokenPurpose::Session, t.expose()), k.token_hash(TokenPurpose::Challenge, t.expose()));
        let other = Keys::new(&ServerKey::generate());
        assert_ne!(
            k.token_hash(TokenPurpose::Session, t.expose()),
            other.token_hash(TokenPurpose::Session, t.expose())
        );
        assert!(!format!("{t:?}").contains(t.expose()));
        assert_ne!(k.code_hash("a", "123456"), k.code_hash("b", "123456"));
    }

    #[test]
    fn seal_and_open() {
        let k = keys();
        let sealed = k.seal(b"secret", b"user-1");
        assert_eq!(k.open(&sealed, b"user-1").unwrap().as_slice(), b"secret");
        assert_eq!(k.open(&sealed, b"user-2").err(), Some(CryptoError::Open));
        let mut tampered = sealed.clone();
        tampered[30] ^= 1;
        assert_eq!(k.open(&tampered, b"user-1").err(), Some(CryptoError::Open));
        assert_eq!(k.open(&sealed[..10], b"user-1").err(), Some(CryptoError::Open));
        assert_ne!(k.seal(b"secret", b"user-1"), sealed, "nonces are random");
    }

    #[test]
    fn constant_time_eq() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
