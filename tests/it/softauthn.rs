//! A software WebAuthn authenticator and browser for the tests: ES256 (P-256) credentials,
//! `none` attestation, the JSON a browser's `PublicKeyCredential.toJSON()` gives, and knobs to
//! forge what a broken or hostile client sends. A few lines of CBOR writing for the
//! attestation object and the COSE key; test code only.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const UP: u8 = 0x01;
const UV: u8 = 0x04;
const BE: u8 = 0x08;
const BS: u8 = 0x10;
const AT: u8 = 0x40;

/// One credential the authenticator holds.
pub struct SoftKey {
    pub id: Vec<u8>,
    key: SigningKey,
    pub rp_id: String,
    pub user_handle: Vec<u8>,
    /// The last signature counter sent.
    pub count: u32,
}

impl SoftKey {
    pub fn id_b64(&self) -> String {
        B64.encode(&self.id)
    }
}

/// What to forge in an answer.
#[derive(Default, Clone)]
pub struct Forge {
    pub origin: Option<String>,
    pub rp_id: Option<String>,
    pub challenge: Option<Vec<u8>>,
    pub no_up: bool,
    pub uv: Option<bool>,
    /// The counter to send instead of the next one (not remembered).
    pub counter: Option<u32>,
    pub bad_signature: bool,
    pub type_: Option<String>,
    pub user_handle: Option<Vec<u8>>,
}

/// A platform authenticator and the browser in front of it, on `origin`.
pub struct SoftAuthenticator {
    pub origin: String,
    pub uv: bool,
    pub be: bool,
    /// Counter increment per assertion (0: a key whose counter stays 0).
    pub step: u32,
    pub keys: Vec<SoftKey>,
}

pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

pub fn unb64(text: &str) -> Vec<u8> {
    B64.decode(text.trim_end_matches('=')).unwrap()
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::fill(&mut b);
    b
}

// ---------------------------------------------------------------- minimal CBOR

fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend([m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend((n as u16).to_be_bytes());
        }
        _ => {
            out.push(m | 26);
            out.extend((n as u32).to_be_bytes());
        }
    }
}

fn int(out: &mut Vec<u8>, v: i64) {
    if v >= 0 { head(out, 0, v as u64) } else { head(out, 1, (-1 - v) as u64) }
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    head(out, 2, b.len() as u64);
    out.extend_from_slice(b);
}

fn text(out: &mut Vec<u8>, s: &str) {
    head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

impl SoftAuthenticator {
    pub fn new(origin: &str) -> Self {
        Self { origin: origin.trim_end_matches('/').to_owned(), uv: true, be: false, step: 1, keys: Vec::new() }
    }

    fn client_data(&self, type_: &str, challenge: &[u8], f: &Forge) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "type": f.type_.as_deref().unwrap_or(type_),
            "challenge": b64(f.challenge.as_deref().unwrap_or(challenge)),
            "origin": f.origin.as_deref().unwrap_or(&self.origin),
            "crossOrigin": false,
        }))
        .unwrap()
    }

    fn flags(&self, f: &Forge, extra: u8) -> u8 {
        let mut flags = extra;
        if !f.no_up {
            flags |= UP;
        }
        if f.uv.unwrap_or(self.uv) {
            flags |= UV;
        }
        if self.be {
            flags |= BE | BS;
        }
        flags
    }

    /// `navigator.credentials.create(options)`.
    pub fn create(&mut self, options: &Value) -> Value {
        self.create_forged(options, &Forge::default(), true)
    }

    /// `create`, forged as `f`; `keep` whether the new key is kept.
    pub fn create_forged(&mut self, options: &Value, f: &Forge, keep: bool) -> Value {
        let pk = options.get("publicKey").unwrap_or(options);
        let rp_id = pk["rp"]["id"].as_str().unwrap().to_owned();
        let challenge = unb64(pk["challenge"].as_str().unwrap());
        let handle = unb64(pk["user"]["id"].as_str().unwrap());
        let key = SigningKey::from_slice(&random::<32>()).unwrap();
        let point = key.verifying_key().to_sec1_point(false);
        let sec1 = point.as_bytes();
        let (x, y) = (&sec1[1..33], &sec1[33..65]);
        let id = random::<32>().to_vec();
        let mut cose = Vec::new();
        head(&mut cose, 5, 5);
        int(&mut cose, 1);
        int(&mut cose, 2);
        int(&mut cose, 3);
        int(&mut cose, -7);
        int(&mut cose, -1);
        int(&mut cose, 1);
        int(&mut cose, -2);
        bytes(&mut cose, x);
        int(&mut cose, -3);
        bytes(&mut cose, y);
        let mut auth_data = Sha256::digest(f.rp_id.as_deref().unwrap_or(&rp_id).as_bytes()).to_vec();
        auth_data.push(self.flags(f, AT));
        auth_data.extend(0u32.to_be_bytes());
        auth_data.extend([0u8; 16]);
        auth_data.extend((id.len() as u16).to_be_bytes());
        auth_data.extend(&id);
        auth_data.extend(&cose);
        let mut att = Vec::new();
        head(&mut att, 5, 3);
        text(&mut att, "fmt");
        text(&mut att, "none");
        text(&mut att, "attStmt");
        head(&mut att, 5, 0);
        text(&mut att, "authData");
        bytes(&mut att, &auth_data);
        let client_data = self.client_data("webauthn.create", &challenge, f);
        let soft = SoftKey { id: id.clone(), key, rp_id, user_handle: handle, count: 0 };
        if keep {
            self.keys.push(soft);
        }
        json!({
            "id": b64(&id), "rawId": b64(&id), "type": "public-key",
            "response": {"clientDataJSON": b64(&client_data), "attestationObject": b64(&att), "transports": ["internal"]},
            "authenticatorAttachment": "platform", "clientExtensionResults": {},
        })
    }

    /// `navigator.credentials.get(options)` with the newest key.
    pub fn get(&mut self, options: &Value) -> Value {
        self.get_forged(options, &Forge::default(), None)
    }

    /// `get` with key `index` (default: the newest), forged as `f`.
    pub fn get_forged(&mut self, options: &Value, f: &Forge, index: Option<usize>) -> Value {
        let pk = options.get("publicKey").unwrap_or(options);
        let challenge = unb64(pk["challenge"].as_str().unwrap());
        let flags = self.flags(f, 0);
        let client_data = self.client_data("webauthn.get", &challenge, f);
        let i = index.unwrap_or(self.keys.len() - 1);
        let step = self.step;
        let soft = &mut self.keys[i];
        let rp_id = pk["rpId"].as_str().map_or(soft.rp_id.clone(), str::to_owned);
        let count = match f.counter {
            Some(c) => c,
            None => {
                soft.count += step;
                soft.count
            }
        };
        let mut auth_data = Sha256::digest(f.rp_id.as_deref().unwrap_or(&rp_id).as_bytes()).to_vec();
        auth_data.push(flags);
        auth_data.extend(count.to_be_bytes());
        let mut signed = auth_data.clone();
        signed.extend(Sha256::digest(&client_data));
        if f.bad_signature {
            signed.push(0);
        }
        let sig: Signature = soft.key.sign(&signed);
        let handle = f.user_handle.clone().unwrap_or_else(|| soft.user_handle.clone());
        json!({
            "id": soft.id_b64(), "rawId": soft.id_b64(), "type": "public-key",
            "response": {
                "clientDataJSON": b64(&client_data), "authenticatorData": b64(&auth_data),
                "signature": b64(sig.to_der().as_bytes()), "userHandle": b64(&handle),
            },
            "authenticatorAttachment": "platform", "clientExtensionResults": {},
        })
    }
}
