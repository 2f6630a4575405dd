//! Tokens, keyed hashes and AEAD sealing under the server key.
//!
//! - Every token (challenge, session, setup, reset) is 256 random bits, base64url without
//!   padding (43 characters). Only its keyed hash (HMAC-SHA256 under a key derived from the
//!   server key, with a purpose label) is stored, so a database dump yields no usable token.
//! - Email codes are stored as HMAC-SHA256 of `(code id, code)`.
//! - Secrets that must be read back (TOTP secrets, codes on their way through the queue) are
//!   sealed with XChaCha20-Poly1305 (random 192-bit nonce) under another derived key, with
//!   associated data binding the ciphertext to its owner.
//!
//! Key rotation (DESIGN.md 5.8): [`Keys`] holds the current server key and any previous
//! ones (`LATCHKEY_PREVIOUS_SECRET_KEYS`). Sealing always uses the current key; a sealed value
//! records which key sealed it ([`SEALED_MAGIC`] ‖ [`KeyId`] ‖ nonce ‖ ciphertext ‖ tag), and
//! opening picks that key. Values sealed before key ids existed (nonce ‖ ciphertext ‖ tag)
//! stay readable: they are tried under every known key. Keyed hashes are checked against the
//! current key first, then the previous ones ([`Keys::token_hashes`]).

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
/// The first bytes of a sealed value that records its key ([`KeyId`]); values without them
/// are of the first format (no key id), opened by trying every known key.
pub const SEALED_MAGIC: [u8; 4] = *b"LKs1";
/// Length of a [`KeyId`] in bytes.
pub const KEY_ID_LEN: usize = 8;
const HEADER_LEN: usize = SEALED_MAGIC.len() + KEY_ID_LEN;

/// A short, public name of a server key: the first 8 bytes of its check value
/// ([`ServerKey::check_value`]). Written into every sealed value and shown to operators as a
/// fingerprint (16 hex digits). It reveals nothing of the key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl KeyId {
    /// The fingerprint: 16 lower-case hex digits.
    pub fn fingerprint(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.fingerprint())
    }
}

/// Which key a sealed value names, read from its header without opening it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedBy {
    /// A value of the current format, sealed by this key.
    Key(KeyId),
    /// A value of the first format (no key id).
    Unrecorded,
}

/// What key a sealed value names, from its header alone (no key needed).
pub fn sealed_by(sealed: &[u8]) -> SealedBy {
    match sealed.strip_prefix(&SEALED_MAGIC[..]) {
        Some(rest) if rest.len() >= KEY_ID_LEN + NONCE_LEN => {
            let mut id = [0u8; KEY_ID_LEN];
            id.copy_from_slice(&rest[..KEY_ID_LEN]);
            SealedBy::Key(KeyId(id))
        }
        _ => SealedBy::Unrecorded,
    }
}

/// Errors of key parsing and of opening sealed data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The configured key is not 32 bytes in hex (64 characters) or base64 (44 characters).
    #[error("the secret key must be 32 bytes, written as 64 hex or 44 base64 characters")]
    BadKey,
    /// Sealed data was altered, truncated, or sealed under another key or owner.
    #[error("sealed data cannot be opened with this key")]
    Open,
    /// Sealed data names a key that is neither the current nor a previous one.
    #[error(
        "sealed data was sealed by key {0}, which is neither LATCHKEY_SECRET_KEY nor in LATCHKEY_PREVIOUS_SECRET_KEYS"
    )]
    UnknownKey(KeyId),
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

    /// The check value the database keeps of its server key (DESIGN.md 5.8): HMAC-SHA256 of a
    /// fixed label under the key. It proves that a process holds the same key without
    /// revealing it.
    pub fn check_value(&self) -> [u8; 32] {
        hmac(self.0.as_slice(), &[b"latchkey/key-check/v1"])
    }

    /// The key's id and fingerprint: the first 8 bytes of [`ServerKey::check_value`].
    pub fn id(&self) -> KeyId {
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&self.check_value()[..KEY_ID_LEN]);
        KeyId(id)
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

/// The working keys derived from one [`ServerKey`]: one for keyed hashes, one for sealing.
#[derive(Clone)]
struct WorkingKeys {
    id: KeyId,
    check: [u8; 32],
    mac_key: Zeroizing<[u8; 32]>,
    aead: XChaCha20Poly1305,
}

impl WorkingKeys {
    fn new(server_key: &ServerKey) -> Self {
        let aead_key = server_key.derive(b"aead");
        let aead = match XChaCha20Poly1305::new_from_slice(aead_key.as_slice()) {
            Ok(aead) => aead,
            Err(_) => unreachable!("the derived key is 32 bytes"),
        };
        Self { id: server_key.id(), check: server_key.check_value(), mac_key: server_key.derive(b"mac"), aead }
    }

    fn open_raw(&self, nonce_and_ciphertext: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if nonce_and_ciphertext.len() < NONCE_LEN {
            return Err(CryptoError::Open);
        }
        let (nonce, ciphertext) = nonce_and_ciphertext.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| CryptoError::Open)?;
        self.aead.decrypt(&nonce, Payload { msg: ciphertext, aad }).map(Zeroizing::new).map_err(|_| CryptoError::Open)
    }
}

/// The working keys of the server: those of the current [`ServerKey`] (used for sealing and
/// for new keyed hashes) and of the previous ones (accepted for opening and checking only).
#[derive(Clone)]
pub struct Keys {
    current: WorkingKeys,
    previous: Vec<WorkingKeys>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keys(current {}, {} previous, <redacted>)", self.current.id, self.previous.len())
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

/// The associated data of a sealed value of the current format: its header, then the
/// caller's associated data, so the key id cannot be swapped.
fn header_aad(header: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len() + aad.len());
    out.extend_from_slice(header);
    out.extend_from_slice(aad);
    out
}

impl Keys {
    /// The working keys of one server key (no previous keys).
    pub fn new(server_key: &ServerKey) -> Self {
        Self { current: WorkingKeys::new(server_key), previous: Vec::new() }
    }

    /// The working keys of the current key and of `previous` keys (for opening and checking
    /// only), in the order given.
    pub fn with_previous(current: &ServerKey, previous: &[ServerKey]) -> Self {
        Self { current: WorkingKeys::new(current), previous: previous.iter().map(WorkingKeys::new).collect() }
    }

    /// The id of the current key (the one that seals).
    pub fn current_id(&self) -> KeyId {
        self.current.id
    }

    /// The check value of the current key ([`ServerKey::check_value`]).
    pub fn current_check(&self) -> [u8; 32] {
        self.current.check
    }

    /// The previous key whose check value is `check`, if any.
    pub fn previous_with_check(&self, check: &[u8]) -> Option<KeyId> {
        self.previous.iter().find(|k| ct_eq(&k.check, check)).map(|k| k.id)
    }

    /// The ids of the previous keys, in their configured order.
    pub fn previous_ids(&self) -> Vec<KeyId> {
        self.previous.iter().map(|k| k.id).collect()
    }

    /// Whether `id` is the current key or one of the previous ones.
    pub fn knows(&self, id: KeyId) -> bool {
        self.all().any(|k| k.id == id)
    }

    fn all(&self) -> impl Iterator<Item = &WorkingKeys> {
        std::iter::once(&self.current).chain(self.previous.iter())
    }

    /// The keyed hash (HMAC-SHA256) under which a token of `purpose` is stored (current key).
    pub fn token_hash(&self, purpose: TokenPurpose, token: &str) -> [u8; 32] {
        Self::token_hash_under(&self.current, purpose, token)
    }

    fn token_hash_under(k: &WorkingKeys, purpose: TokenPurpose, token: &str) -> [u8; 32] {
        hmac(k.mac_key.as_slice(), &[b"token", purpose.label(), token.as_bytes()])
    }

    /// The keyed hashes a stored token may have: under the current key first, then under each
    /// previous key (a token issued before a rotation). Look a token up by each in turn.
    pub fn token_hashes(&self, purpose: TokenPurpose, token: &str) -> Vec<[u8; 32]> {
        self.all().map(|k| Self::token_hash_under(k, purpose, token)).collect()
    }

    /// The keyed hash under which an email code is stored; bound to the code's row id so
    /// equal codes sent twice hash differently.
    pub fn code_hash(&self, code_id: &str, code: &str) -> [u8; 32] {
        Self::code_hash_under(&self.current, code_id, code)
    }

    fn code_hash_under(k: &WorkingKeys, code_id: &str, code: &str) -> [u8; 32] {
        hmac(k.mac_key.as_slice(), &[b"email-code", code_id.as_bytes(), code.as_bytes()])
    }

    /// Whether `stored` is the keyed hash of `code` for `code_id` under the current or a
    /// previous key (constant-time comparisons, every key tried).
    pub fn code_matches(&self, code_id: &str, code: &str, stored: &[u8]) -> bool {
        self.all().fold(false, |found, k| ct_eq(&Self::code_hash_under(k, code_id, code), stored) | found)
    }

    /// The keyed hash under which a recovery code of `user` is stored, of its normalised form
    /// ([`crate::recovery_code::normalize`]); bound to the user, so that the store can look a
    /// typed code up directly.
    pub fn recovery_code_hash(&self, user: &str, code: &str) -> [u8; 32] {
        Self::recovery_code_hash_under(&self.current, user, code)
    }

    fn recovery_code_hash_under(k: &WorkingKeys, user: &str, code: &str) -> [u8; 32] {
        hmac(k.mac_key.as_slice(), &[b"recovery-code", user.as_bytes(), code.as_bytes()])
    }

    /// The keyed hashes a stored recovery code may have: current key first, then previous.
    pub fn recovery_code_hashes(&self, user: &str, code: &str) -> Vec<[u8; 32]> {
        self.all().map(|k| Self::recovery_code_hash_under(k, user, code)).collect()
    }

    /// A keyed hash of an arbitrary label (e.g. an unknown sign-in address for its failure
    /// counter), so the store never holds the raw value.
    pub fn label_hash(&self, label: &str) -> String {
        URL_SAFE_NO_PAD.encode(hmac(self.current.mac_key.as_slice(), &[b"label", label.as_bytes()]))
    }

    /// Seals `plaintext` (XChaCha20-Poly1305, random nonce) under the current key with `aad`
    /// as associated data; the result is `SEALED_MAGIC ‖ key id ‖ nonce ‖ ciphertext ‖ tag`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + plaintext.len() + 16);
        out.extend_from_slice(&SEALED_MAGIC);
        out.extend_from_slice(&self.current.id.0);
        let nonce = XNonce::generate();
        let full_aad = header_aad(&out, aad);
        out.extend_from_slice(&nonce);
        match self.current.aead.encrypt(&nonce, Payload { msg: plaintext, aad: &full_aad }) {
            Ok(ciphertext) => out.extend_from_slice(&ciphertext),
            // Encryption only fails for messages beyond 256 GiB.
            Err(_) => unreachable!("XChaCha20-Poly1305 encrypts any message this small"),
        }
        out
    }

    /// Opens what [`Keys::seal`] produced with the same `aad`, under the key it names, or a
    /// value of the first format under whichever known key opens it.
    ///
    /// Errors: [`CryptoError::UnknownKey`] when the value names a key that is not known;
    /// [`CryptoError::Open`] when the data is truncated, altered, or sealed under another key
    /// or associated data.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.open_with_id(sealed, aad).map(|(plain, _)| plain)
    }

    /// As [`Keys::open`], and also which key opened the value.
    pub fn open_with_id(&self, sealed: &[u8], aad: &[u8]) -> Result<(Zeroizing<Vec<u8>>, KeyId), CryptoError> {
        if let SealedBy::Key(id) = sealed_by(sealed) {
            let (header, body) = sealed.split_at(HEADER_LEN);
            match self.all().find(|k| k.id == id) {
                Some(k) => {
                    if let Ok(plain) = k.open_raw(body, &header_aad(header, aad)) {
                        return Ok((plain, id));
                    }
                }
                None => {
                    // A value of the first format whose random nonce happens to begin with
                    // the magic bytes (1 in 2^32) is still opened below.
                    return self.open_unrecorded(sealed, aad).map_err(|_| CryptoError::UnknownKey(id));
                }
            }
        }
        self.open_unrecorded(sealed, aad)
    }

    fn open_unrecorded(&self, sealed: &[u8], aad: &[u8]) -> Result<(Zeroizing<Vec<u8>>, KeyId), CryptoError> {
        for k in self.all() {
            if let Ok(plain) = k.open_raw(sealed, aad) {
                return Ok((plain, k.id));
            }
        }
        Err(CryptoError::Open)
    }

    /// Whether a sealed value must be re-sealed by `latchkey keys rotate`: it names a key
    /// other than the current one, or none (the first format).
    pub fn needs_reseal(&self, sealed: &[u8]) -> bool {
        sealed_by(sealed) != SealedBy::Key(self.current.id)
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

    /// A value of the first format (no key id), as sealed before rotation existed.
    fn seal_unrecorded(server_key: &ServerKey, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let k = WorkingKeys::new(server_key);
        let nonce = XNonce::generate();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&k.aead.encrypt(&nonce, Payload { msg: plaintext, aad }).unwrap());
        out
    }

    #[test]
    fn sealed_values_name_their_key() {
        let old = ServerKey::parse(&"ab".repeat(32)).unwrap();
        let new = ServerKey::parse(&"cd".repeat(32)).unwrap();
        let before = Keys::new(&old);
        let sealed = before.seal(b"secret", b"user-1");
        assert_eq!(&sealed[..4], b"LKs1");
        assert_eq!(sealed_by(&sealed), SealedBy::Key(old.id()));
        assert!(!before.needs_reseal(&sealed));

        // After rotation: opened under the previous key, re-sealed under the current one.
        let after = Keys::with_previous(&new, std::slice::from_ref(&old));
        let (plain, id) = after.open_with_id(&sealed, b"user-1").unwrap();
        assert_eq!((plain.as_slice(), id), (&b"secret"[..], old.id()));
        assert!(after.needs_reseal(&sealed));
        let resealed = after.seal(&plain, b"user-1");
        assert_eq!(sealed_by(&resealed), SealedBy::Key(new.id()));
        assert!(!after.needs_reseal(&resealed));
        assert_eq!(after.open(&resealed, b"user-2").err(), Some(CryptoError::Open));

        // Without the previous key: the value names a key that is not known.
        let alone = Keys::new(&new);
        assert_eq!(alone.open(&sealed, b"user-1").err(), Some(CryptoError::UnknownKey(old.id())));
        // The old process cannot open what the new key sealed.
        assert_eq!(before.open(&resealed, b"user-1").err(), Some(CryptoError::UnknownKey(new.id())));

        // The header is authenticated: naming another known key does not open it.
        let mut swapped = resealed.clone();
        swapped[4..12].copy_from_slice(&old.id().0);
        assert_eq!(after.open(&swapped, b"user-1").err(), Some(CryptoError::Open));
    }

    #[test]
    fn values_of_the_first_format_stay_readable() {
        let old = ServerKey::parse(&"ab".repeat(32)).unwrap();
        let new = ServerKey::parse(&"cd".repeat(32)).unwrap();
        let legacy = seal_unrecorded(&old, b"secret", b"totp:1");
        assert_eq!(sealed_by(&legacy), SealedBy::Unrecorded);
        assert_eq!(Keys::new(&old).open(&legacy, b"totp:1").unwrap().as_slice(), b"secret");
        let rotated = Keys::with_previous(&new, std::slice::from_ref(&old));
        assert!(rotated.needs_reseal(&legacy));
        assert_eq!(rotated.open_with_id(&legacy, b"totp:1").unwrap().1, old.id());
        assert_eq!(Keys::new(&new).open(&legacy, b"totp:1").err(), Some(CryptoError::Open));
        // A first-format value whose nonce begins with the magic bytes still opens.
        let k = WorkingKeys::new(&old);
        let mut nonce_bytes = [7u8; NONCE_LEN];
        nonce_bytes[..4].copy_from_slice(b"LKs1");
        let nonce = XNonce::try_from(&nonce_bytes[..]).unwrap();
        let mut tricky = nonce_bytes.to_vec();
        tricky.extend_from_slice(&k.aead.encrypt(&nonce, Payload { msg: b"s", aad: b"a" }).unwrap());
        assert!(matches!(sealed_by(&tricky), SealedBy::Key(_)));
        assert_eq!(Keys::new(&old).open(&tricky, b"a").unwrap().as_slice(), b"s");
    }

    #[test]
    fn keyed_hashes_are_checked_against_previous_keys() {
        let old = ServerKey::parse(&"ab".repeat(32)).unwrap();
        let new = ServerKey::parse(&"cd".repeat(32)).unwrap();
        let before = Keys::new(&old);
        let after = Keys::with_previous(&new, std::slice::from_ref(&old));
        let stored = before.token_hash(TokenPurpose::Session, "t");
        let hashes = after.token_hashes(TokenPurpose::Session, "t");
        assert_eq!(hashes.len(), 2);
        assert_eq!(hashes[0], after.token_hash(TokenPurpose::Session, "t"));
        assert_eq!(hashes[1], stored);
        let code = before.code_hash("c1", "123456");
        assert!(after.code_matches("c1", "123456", &code));
        assert!(!after.code_matches("c1", "123457", &code));
        assert!(!Keys::new(&new).code_matches("c1", "123456", &code));
        assert!(after.recovery_code_hashes("u", "x").contains(&before.recovery_code_hash("u", "x")));
    }

    #[test]
    fn check_values_and_fingerprints() {
        let a = ServerKey::parse(&"ab".repeat(32)).unwrap();
        let b = ServerKey::parse(&"cd".repeat(32)).unwrap();
        assert_eq!(a.check_value(), ServerKey::parse(&a.to_base64()).unwrap().check_value());
        assert_ne!(a.check_value(), b.check_value());
        assert_eq!(a.id().fingerprint().len(), 16);
        assert_eq!(&a.check_value()[..8], &a.id().0);
        let k = Keys::with_previous(&b, std::slice::from_ref(&a));
        assert!(k.knows(a.id()) && k.knows(b.id()));
        assert!(!format!("{k:?}").contains(&"ab".repeat(4)));
    }

    #[test]
    fn constant_time_eq() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
