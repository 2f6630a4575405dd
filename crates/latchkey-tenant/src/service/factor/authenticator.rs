//! The authenticator app (TOTP, RFC 6238): a sealed secret per user, the last accepted time
//! step (replay protection: any step at or below it is refused), a pending secret on the
//! challenge while it is being set up.

use std::fmt;

use chrono::{DateTime, Utc};
use latchkey_core::totp::{self, TotpCheck, TotpSecret};
use latchkey_core::{Method, MethodSet, UserId};
use latchkey_store::model::{Challenge, Enrollment, Tenant, User};
use latchkey_store::repo::enrollments;
use latchkey_store::repo::sign_in_at_once::Factor;
use latchkey_store::{DbConn, StoreError, StoreResult};
use zeroize::Zeroizing;

use super::{Checked, Proof, SecondFactor};
use crate::error::{Error, Result};
use crate::service::challenge::{Located, verified_sign_in_events};
use crate::service::signin::IssuedSession;
use crate::service::verify::AtOnce;
use crate::service::{RequestCtx, Service};

/// What an authenticator app needs: the setup key, the `otpauth://` URI and its QR code.
#[derive(Clone)]
pub struct TotpSetup {
    /// Base32 setup key (no padding).
    pub secret: String,
    /// Key Uri Format URI.
    pub otpauth_uri: String,
    /// PNG QR code of the URI, base64.
    pub qr_png: String,
}

impl fmt::Debug for TotpSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSetup(<redacted>)")
    }
}

/// The associated data of a challenge's pending secret.
pub(in crate::service) fn pending_aad(challenge: &Challenge) -> Vec<u8> {
    latchkey_store::repo::sealed::SealedColumn::PendingSecret.aad(&challenge.id.to_string())
}

/// The associated data of a user's enrolled secret.
fn enrolled_aad(user: UserId) -> Vec<u8> {
    latchkey_store::repo::sealed::SealedColumn::EnrollmentSecret.aad(&user.to_string())
}

/// The setup material of a new TOTP secret for `user` of `tenant` (issuer = tenant name,
/// account = the user's email).
///
/// Errors: `Internal` if the QR code cannot be drawn.
pub(in crate::service) fn totp_setup(secret: &TotpSecret, tenant: &Tenant, user: &User) -> Result<TotpSetup> {
    let otpauth_uri = totp::otpauth_uri(secret, &tenant.name, &user.email);
    let qr_png = totp::qr_png_base64(&otpauth_uri).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(TotpSetup { secret: secret.to_base32(), otpauth_uri, qr_png })
}

/// The authenticator method.
pub(super) struct Authenticator;

impl Authenticator {
    /// The TOTP secret of an authenticator enrollment, opened with the server key.
    fn enrolled_secret(svc: &Service, enrollment: &Enrollment) -> StoreResult<TotpSecret> {
        let sealed = enrollment.secret_sealed.as_deref().ok_or(StoreError::Corrupt("totp secret"))?;
        let bytes =
            svc.keys.open(sealed, &enrolled_aad(enrollment.user_id)).map_err(|_| StoreError::Corrupt("totp secret"))?;
        TotpSecret::from_bytes(&bytes).map_err(|_| StoreError::Corrupt("totp secret"))
    }
}

impl SecondFactor for Authenticator {
    /// A code of the challenge's pending secret (an enrollment in progress: accepting it
    /// enrolls the secret with its step), else of the enrolled secret, whose last accepted
    /// step moves forward here (a conditional update).
    fn check(
        &self,
        svc: &Service,
        conn: &mut DbConn,
        challenge: Option<&Challenge>,
        user: &User,
        proof: &Proof<'_>,
        now: DateTime<Utc>,
    ) -> StoreResult<Checked> {
        let Proof::Code(code) = proof else { return Ok(Checked::Wrong { expired: false }) };
        if let Some(challenge) = challenge
            && let Some(sealed) = &challenge.pending_secret
        {
            let bytes =
                svc.keys.open(sealed, &pending_aad(challenge)).map_err(|_| StoreError::Corrupt("pending secret"))?;
            let secret = TotpSecret::from_bytes(&bytes).map_err(|_| StoreError::Corrupt("pending secret"))?;
            return Ok(match totp::check(&secret, code, now, None) {
                TotpCheck::Accepted { step } => Checked::Accepted {
                    enroll: Some(Enrollment {
                        user_id: user.id,
                        method: Method::Authenticator,
                        secret_sealed: Some(svc.keys.seal(secret.as_bytes(), &enrolled_aad(user.id))),
                        last_step: Some(step),
                        created_at: now,
                        last_used_at: None,
                    }),
                    enrolled: None,
                },
                TotpCheck::Replayed => Checked::Replayed,
                TotpCheck::Invalid => Checked::Wrong { expired: false },
            });
        }
        let all = enrollments::for_user(conn, user.id)?;
        let enrolled: MethodSet = all.iter().map(|e| e.method).collect();
        let Some(enrollment) = all.into_iter().find(|e| e.method == Method::Authenticator) else {
            return Ok(Checked::NotEnrolled);
        };
        let secret = Authenticator::enrolled_secret(svc, &enrollment)?;
        Ok(match totp::check(&secret, code, now, enrollment.last_step) {
            TotpCheck::Accepted { step } => {
                if enrollments::advance_last_step(conn, user.id, step, now)? {
                    Checked::Accepted { enroll: None, enrolled: Some(enrolled) }
                } else {
                    Checked::Replayed
                }
            }
            TotpCheck::Replayed => Checked::Replayed,
            TotpCheck::Invalid => Checked::Wrong { expired: false },
        })
    }
}

impl Service {
    /// The common case of sign-in verification with an authenticator on Postgres, in two
    /// round trips instead of about ten (the challenge with its user and `enrollments`, read
    /// together by [`Service::locate_with_enrollments`], then this): checks the code (RFC
    /// 6238, ±1 step, above the last accepted step) and commits the whole sign-in in one
    /// statement ([`Service::commit_at_once`]), which rechecks the step the read saw. `None`
    /// when the code is not accepted or the statement refused (blocked user, ended challenge,
    /// replayed step): the portable path then decides, under the user's lock, and counts a
    /// wrong code.
    pub(in crate::service) async fn verify_totp_at_once(
        &self,
        ctx: &RequestCtx,
        loc: &Located,
        enrollments: Vec<Enrollment>,
        code: &str,
    ) -> Result<Option<IssuedSession>> {
        let svc = self.clone();
        let ctx = ctx.clone();
        let code = Zeroizing::new(code.to_owned());
        let user = loc.user.clone();
        let challenge = loc.challenge.id;
        let issued = self
            .store
            .run(move |c| {
                let enrolled: MethodSet = enrollments.iter().map(|e| e.method).collect();
                let Some(enrollment) = enrollments.iter().find(|e| e.method == Method::Authenticator) else {
                    return Ok(None);
                };
                let secret = Authenticator::enrolled_secret(&svc, enrollment)?;
                let TotpCheck::Accepted { step } = totp::check(&secret, &code, ctx.now, enrollment.last_step) else {
                    return Ok(None);
                };
                let at_once = AtOnce {
                    factor: Factor::Totp { step },
                    method: Some(Method::Authenticator),
                    metric: Method::Authenticator.as_str(),
                    audit: verified_sign_in_events(&ctx, &user, Method::Authenticator).to_vec(),
                    notice: None,
                };
                svc.commit_at_once(c, &ctx, &user, challenge, enrolled, at_once)
            })
            .await?;
        Ok(issued)
    }
}
