//! The hosted pages' own use-cases (DESIGN.md 5.7): the hand-off code of a completed hosted
//! sign-in and its exchange for a session (PKCE S256), and the keyed tokens and sealed values
//! the pages keep in cookies and forms (CSRF tokens, one-time material shown after a redirect).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use latchkey_core::crypto::{TokenPurpose, ct_eq};
use latchkey_core::{AuditKind, SecretToken, handoff};
use latchkey_store::repo::handoff_codes::{self, HandoffCode};
use latchkey_store::repo::{sessions, users};
use serde_json::json;
use zeroize::Zeroizing;

use super::signin::IssuedSession;
use super::{Auth, RequestCtx, Service};
use crate::error::{Error, Result};

/// The keyed-hash purpose of hand-off codes (kept apart from every bearer token).
const HANDOFF_LABEL: &str = "handoff-code";

impl Service {
    fn handoff_hash(&self, code: &str) -> Vec<u8> {
        self.keys.label_hash(&format!("{HANDOFF_LABEL}:{code}")).into_bytes()
    }

    /// A hand-off code `K` for the signed-in `auth` (a completed hosted sign-in), bound to the
    /// dashboard's PKCE S256 `code_challenge`, single-use, valid `LATCHKEY_HANDOFF_CODE_TTL_SECS`
    /// (DESIGN.md 5.7). Only its keyed hash is stored.
    ///
    /// Errors: `InvalidRequest` for a challenge that is not 43 to 128 base64url characters.
    pub async fn handoff_code(&self, ctx: &RequestCtx, auth: &Auth, code_challenge: &str) -> Result<SecretToken> {
        if !handoff::valid_pkce_string(code_challenge) {
            return Err(Error::InvalidRequest("code_challenge must be a PKCE S256 challenge".into()));
        }
        let token = SecretToken::generate();
        let hash = self.handoff_hash(token.expose());
        let code = HandoffCode {
            tenant_id: auth.tenant.id,
            user_id: auth.user.id,
            code_challenge: code_challenge.to_owned(),
            second_factor_at: auth.session.second_factor_at,
        };
        let now = ctx.now;
        let expires = now + self.limits.handoff_code_ttl;
        self.store.write(move |c| handoff_codes::insert(c, &hash, &code, now, expires)).await?;
        Ok(token)
    }

    /// `POST /api/v1/auth/exchange {code, code_verifier}`: takes the hand-off code (used up by
    /// this attempt whatever its outcome) and, when the verifier's S256 is its challenge and its
    /// user still exists, issues a new session for the dashboard carrying the browser
    /// session's second-factor time. Audited `signed_in` with `{"hand_off": true}`.
    ///
    /// Errors: `InvalidCode` for an unknown, used or expired code or a wrong verifier.
    pub async fn exchange_handoff(&self, ctx: &RequestCtx, code: &str, verifier: &str) -> Result<IssuedSession> {
        let invalid = || Error::InvalidCode { attempts_remaining: 0, retry_after: None };
        if code.is_empty() || code.len() > 256 {
            return Err(invalid());
        }
        let hash = self.handoff_hash(code);
        let verifier = Zeroizing::new(verifier.to_owned());
        let svc = self.clone();
        let ctx = ctx.clone();
        self.store
            .write(move |c| {
                let Some(found) = handoff_codes::take(c, &hash, ctx.now)? else {
                    return Ok(Err(invalid()));
                };
                if !handoff::verifier_matches(&verifier, &found.code_challenge) {
                    return Ok(Err(invalid()));
                }
                let Some(user) = users::by_id(c, found.tenant_id, found.user_id)? else {
                    return Ok(Err(invalid()));
                };
                let (token, mut session) = svc.new_session(&user, false, ctx.now);
                session.second_factor_at = found.second_factor_at;
                sessions::insert(c, &session, &svc.keys.token_hash(TokenPurpose::Session, token.expose()))?;
                let who = Some(user.id.to_string());
                Service::audit(
                    c,
                    &ctx,
                    user.tenant_id,
                    who,
                    Some(user.id),
                    AuditKind::SignedIn,
                    json!({"hand_off": true}),
                )?;
                let view = svc.user_view(c, &user)?;
                Ok(Ok(IssuedSession::new(token, session.expires_at, view)))
            })
            .await?
    }

    /// A keyed token of the hosted pages for `purpose` bound to `binding` (e.g. the CSRF token
    /// of a session or of a browser's pre-sign-in cookie): base64url, never stored.
    pub fn page_token(&self, purpose: &str, binding: &str) -> String {
        self.keys.label_hash(&format!("ui-{purpose}:{binding}"))
    }

    /// Whether `given` is the [`Service::page_token`] of `purpose` and `binding` (constant time).
    pub fn page_token_ok(&self, purpose: &str, binding: &str, given: &str) -> bool {
        ct_eq(self.page_token(purpose, binding).as_bytes(), given.as_bytes())
    }

    /// Seals `value` for a cookie of the hosted pages (AEAD under the server key, `aad` binding
    /// it to its purpose and session): base64url.
    pub fn seal_page_value(&self, value: &[u8], aad: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.keys.seal(value, aad.as_bytes()))
    }

    /// Opens a value sealed by [`Service::seal_page_value`] with the same `aad`; `None` when it
    /// does not open (tampered, another purpose or session, another server key).
    pub fn open_page_value(&self, sealed: &str, aad: &str) -> Option<Zeroizing<Vec<u8>>> {
        let bytes = URL_SAFE_NO_PAD.decode(sealed).ok()?;
        self.keys.open(&bytes, aad.as_bytes()).ok()
    }
}
