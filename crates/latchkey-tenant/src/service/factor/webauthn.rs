//! Passkeys and security keys (W3C Web Authentication, DESIGN.md 5.1): a user's credentials
//! (public keys with their signature counters), a random user handle per user, and the
//! ceremony state of a registration or an authentication sealed on its challenge, taken once.
//! Verification is webauthn-rs's (origin, RP id hash, challenge, flags, signature, counter);
//! nothing here parses CBOR or checks a signature itself.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use latchkey_core::ChallengeId;
use latchkey_store::model::{Challenge, User, WebauthnCredential};
use latchkey_store::repo::sign_in_at_once::Factor;
use latchkey_store::repo::{challenges, webauthn};
use latchkey_store::{DbConn, StoreError, StoreResult};
use serde::{Deserialize, Serialize};
use webauthn_rs_core::error::WebauthnError;
use webauthn_rs_core::proto::{
    Authentication, AuthenticationResult, AuthenticationState, Credential, RegistrationState,
};

use super::{Checked, Proof, SecondFactor};
use crate::service::Service;
use crate::service::challenge::verified_sign_in_events;
use crate::service::verify::AtOnce;

/// The state of a ceremony in progress, sealed on its challenge (or passwordless ceremony).
#[derive(Serialize, Deserialize)]
pub(in crate::service) enum Ceremony {
    /// `register/start` was called: the state `register/finish` checks against.
    Register(RegistrationState),
    /// `authenticate/start` (or a step-up, or a passwordless start) was called.
    Authenticate(AuthenticationState),
}

impl Ceremony {
    /// The sealed form of the ceremony, bound to `aad`.
    pub(in crate::service) fn seal(&self, svc: &Service, aad: &[u8]) -> StoreResult<Vec<u8>> {
        let json = zeroize::Zeroizing::new(serde_json::to_vec(self).map_err(|_| StoreError::Corrupt("ceremony"))?);
        Ok(svc.keys.seal(&json, aad))
    }
}

/// The associated data of the ceremony sealed on challenge `id`.
pub(in crate::service) fn ceremony_aad(id: ChallengeId) -> Vec<u8> {
    format!("webauthn-ceremony:{id}").into_bytes()
}

/// Opens a sealed ceremony (`Corrupt` when it does not open or parse: another key, or tampering).
pub(in crate::service) fn open_ceremony(svc: &Service, sealed: &[u8], aad: &[u8]) -> StoreResult<Ceremony> {
    let json = svc.keys.open(sealed, aad).map_err(|_| StoreError::Corrupt("ceremony"))?;
    serde_json::from_slice(&json).map_err(|_| StoreError::Corrupt("ceremony"))
}

/// A credential id as stored and shown: base64url without padding.
pub(in crate::service) fn credential_id(raw: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(raw)
}

/// webauthn-rs's record of a stored credential, with the stored counter.
pub(in crate::service) fn record_of(stored: &WebauthnCredential) -> StoreResult<Credential> {
    let mut cred: Credential =
        serde_json::from_str(&stored.credential).map_err(|_| StoreError::Corrupt("webauthn credential"))?;
    cred.counter = u32::try_from(stored.sign_count).map_err(|_| StoreError::Corrupt("webauthn counter"))?;
    Ok(cred)
}

/// The verdict of webauthn-rs on an assertion of `stored`, recorded when it verified: the new
/// counter and flags are stored by a conditional update on the counter that was checked (so
/// that of assertions raced with one count, one is recorded).
pub(in crate::service) fn check_assertion(
    conn: &mut DbConn,
    verifier: &crate::Verifier,
    assertion: &webauthn_rs_core::proto::PublicKeyCredential,
    state: &AuthenticationState,
    stored: &WebauthnCredential,
    now: DateTime<Utc>,
) -> StoreResult<Checked> {
    let cred = record_of(stored)?;
    let result: AuthenticationResult = match verifier.authenticate_single_credential(assertion, state, &cred) {
        Ok(result) => result,
        Err(WebauthnError::CredentialPossibleCompromise) => {
            let data = webauthn_rs_core::internals::AuthenticatorData::<Authentication>::try_from(
                assertion.response.authenticator_data.as_slice(),
            );
            let counter = data.map(|d| d.counter).unwrap_or(0);
            return Ok(Checked::CounterRegressed {
                credential_id: stored.credential_id.clone(),
                counter,
                stored: stored.sign_count,
            });
        }
        Err(e) => {
            tracing::debug!(error = %e, "webauthn assertion refused");
            return Ok(Checked::Wrong { expired: false });
        }
    };
    let (sign_count, record) = updated_record(cred, &result)?;
    let recorded =
        webauthn::record_use(conn, stored.user_id, &stored.credential_id, stored.sign_count, sign_count, &record, now)?;
    Ok(if recorded { Checked::Accepted { enroll: None, enrolled: None } } else { Checked::Wrong { expired: false } })
}

/// The record of `cred` after the assertion that gave `result`: the counter (never lower)
/// and the backup flags it reported, with the counter to store.
fn updated_record(mut cred: Credential, result: &AuthenticationResult) -> StoreResult<(i64, String)> {
    cred.counter = cred.counter.max(result.counter());
    cred.backup_state = result.backup_state();
    cred.backup_eligible = result.backup_eligible();
    let record = serde_json::to_string(&cred).map_err(|_| StoreError::Corrupt("webauthn credential"))?;
    Ok((i64::from(cred.counter), record))
}

impl Service {
    /// The common case of a passkey sign-in on Postgres, in two round trips instead of about
    /// fifteen (the challenge with its user, enrollments, ceremony and the assertion's
    /// credential, read together by [`Service::locate_for_assertion`], then one statement,
    /// [`Service::commit_at_once`]): webauthn-rs checks the assertion against the ceremony
    /// and the credential as read, and the statement records the new counter and completes
    /// the sign-in only if the challenge still holds that ceremony and the credential that
    /// counter (so of assertions raced on one ceremony or one count, at most one signs in).
    /// `None` when the assertion does not verify or the statement refused: the portable path
    /// then decides under the user's lock, uses the ceremony up and counts a wrong code (or
    /// audits a counter that did not grow).
    pub(in crate::service) async fn verify_assertion_at_once(
        &self,
        ctx: &crate::service::RequestCtx,
        loc: &crate::service::challenge::Located,
        read: crate::service::challenge::AssertionRead,
        assertion: &webauthn_rs_core::proto::PublicKeyCredential,
        verifier: &std::sync::Arc<crate::Verifier>,
    ) -> crate::error::Result<Option<crate::service::signin::IssuedSession>> {
        let (Some(ceremony), Some(stored)) = (read.ceremony, read.credential) else { return Ok(None) };
        let svc = self.clone();
        let ctx = ctx.clone();
        let user = loc.user.clone();
        let challenge = loc.challenge.id;
        let assertion = assertion.clone();
        let verifier = verifier.clone();
        let enrolled = read.enrollments.iter().map(|e| e.method).collect();
        let issued = self
            .store
            .run(move |c| {
                let Ok(Ceremony::Authenticate(state)) = open_ceremony(&svc, &ceremony, &ceremony_aad(challenge)) else {
                    return Ok(None);
                };
                let cred = record_of(&stored)?;
                let Ok(result) = verifier.authenticate_single_credential(&assertion, &state, &cred) else {
                    return Ok(None);
                };
                let (sign_count, record) = updated_record(cred, &result)?;
                let method = latchkey_core::Method::Webauthn;
                let at_once = AtOnce {
                    factor: Factor::Assertion {
                        ceremony,
                        credential_id: stored.credential_id,
                        seen: stored.sign_count,
                        sign_count,
                        record,
                    },
                    method: Some(method),
                    metric: method.as_str(),
                    audit: verified_sign_in_events(&ctx, &user, method).to_vec(),
                    notice: None,
                };
                svc.commit_at_once(c, &ctx, &user, challenge, enrolled, at_once)
            })
            .await?;
        Ok(issued)
    }
}

/// The webauthn method.
pub(super) struct Webauthn;

impl SecondFactor for Webauthn {
    /// An assertion on the challenge's authentication ceremony (taken here: one assertion per
    /// ceremony, whatever its outcome), by one of the user's own credentials. A credential of
    /// another user or tenant, or an unknown one, is a wrong code.
    fn check(
        &self,
        svc: &Service,
        conn: &mut DbConn,
        challenge: Option<&Challenge>,
        user: &User,
        proof: &Proof<'_>,
        now: DateTime<Utc>,
    ) -> StoreResult<Checked> {
        let Proof::Assertion { credential, verifier } = proof else { return Ok(Checked::Wrong { expired: false }) };
        let Some(challenge) = challenge else { return Ok(Checked::Wrong { expired: false }) };
        let Some(sealed) = challenges::take_ceremony(conn, challenge.id)? else {
            return Ok(Checked::Wrong { expired: false });
        };
        let Ceremony::Authenticate(state) = open_ceremony(svc, &sealed, &ceremony_aad(challenge.id))? else {
            return Ok(Checked::Wrong { expired: false });
        };
        let id = credential_id(credential.get_credential_id());
        let stored = webauthn::for_user(conn, user.id)?;
        if stored.is_empty() {
            return Ok(Checked::NotEnrolled);
        }
        let Some(stored) = stored.into_iter().find(|c| c.credential_id == id) else {
            return Ok(Checked::Wrong { expired: false });
        };
        check_assertion(conn, verifier, credential, &state, &stored, now)
    }
}

/// The default name of a user's next credential: `Passkey N`, the first N from his count + 1
/// that no credential of his is named.
pub(in crate::service) fn default_name(existing: &[WebauthnCredential]) -> String {
    let mut n = existing.len() + 1;
    loop {
        let name = format!("Passkey {n}");
        if !existing.iter().any(|c| c.name == name) {
            return name;
        }
        n += 1;
    }
}
