//! Recovery codes (DESIGN.md 5.2): a set of ten single-use codes a user generates for the day
//! he has lost his other factors, and their use on a sign-in challenge. A recovery code is not
//! a method: `methods` never lists it; the challenge's `recovery_code` flag governs it.

use chrono::{DateTime, Utc};
use latchkey_core::{AuditKind, recovery_code};
use latchkey_store::Backend;
use latchkey_store::model::{AuditEvent, ChallengePurpose, Enrollment, NextAction, User};
use latchkey_store::repo::sign_in_at_once::Factor;
use latchkey_store::repo::{challenges, email_codes, enrollments, recovery_codes, users};
use serde_json::json;
use zeroize::Zeroizing;

use super::challenge::Located;
use super::signin::IssuedSession;
use super::verify::{AtOnce, CompletedSignIn};
use super::{Auth, Notice, RequestCtx, Service};
use crate::error::{Error, Result};

/// The `factor` name of recovery codes in metrics and audit details.
pub const RECOVERY_CODE: &str = "recovery_code";

/// A new set of recovery codes, shown once.
pub struct RecoveryCodes {
    /// The ten codes, as `xxxxx-xxxxx`.
    pub codes: Vec<Zeroizing<String>>,
    /// When they were generated.
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for RecoveryCodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveryCodes").field("created_at", &self.created_at).finish_non_exhaustive()
    }
}

impl Service {
    /// `POST /api/v1/me/recovery-codes`: a new set of ten codes for the signed-in user, who
    /// must have an enrolled method and a fresh second factor; stored only as keyed hashes,
    /// the previous set void; the user's open challenges and codes are void too (a change of
    /// his factors); audited `recovery_codes_generated`.
    ///
    /// Errors: `MethodNotAllowed` (the role may not use recovery codes), `EnrollmentRequired`
    /// (no enrolled method), `StepUpRequired`.
    pub async fn generate_recovery_codes(&self, ctx: &RequestCtx, auth: &Auth) -> Result<RecoveryCodes> {
        if !auth.tenant.settings.recovery_codes.get(auth.user.role) {
            return Err(Error::MethodNotAllowed);
        }
        let user_id = auth.user.id;
        if self.store.run(move |c| enrollments::methods_of(c, user_id)).await?.is_empty() {
            return Err(Error::EnrollmentRequired);
        }
        self.require_fresh_factor(auth, ctx.now)?;
        let codes = recovery_code::generate_set();
        let hashes: Vec<[u8; 32]> = codes
            .iter()
            .filter_map(|c| recovery_code::normalize(c))
            .map(|c| self.keys.recovery_code_hash(&user_id.to_string(), &c))
            .collect();
        let user = auth.user.clone();
        let ctx2 = ctx.clone();
        let svc = self.clone();
        self.store
            .write(move |c| {
                users::lock(c, user.id)?;
                recovery_codes::replace(c, user.tenant_id, user.id, &hashes, ctx2.now)?;
                challenges::end_for_user(c, user.id, None, ctx2.now)?;
                email_codes::void_for_user(c, user.id, ctx2.now)?;
                let who = Some(user.id.to_string());
                let detail = json!({"count": hashes.len()});
                Service::audit(
                    c,
                    &ctx2,
                    user.tenant_id,
                    who,
                    Some(user.id),
                    AuditKind::RecoveryCodesGenerated,
                    detail,
                )?;
                let count = u32::try_from(hashes.len()).unwrap_or(u32::MAX);
                svc.notify(c, &ctx2, user.tenant_id, Notice::RecoveryCodesGenerated { user: user.id, count })
            })
            .await?;
        Ok(RecoveryCodes { codes, created_at: ctx.now })
    }

    /// `DELETE /api/v1/me/recovery-codes`: voids the user's set (a fresh second factor is
    /// needed while he has an enrolled method); audited `factor_removed`.
    ///
    /// Errors: `StepUpRequired`.
    pub async fn delete_recovery_codes(&self, ctx: &RequestCtx, auth: &Auth) -> Result<()> {
        let user_id = auth.user.id;
        if !self.store.run(move |c| enrollments::methods_of(c, user_id)).await?.is_empty() {
            self.require_fresh_factor(auth, ctx.now)?;
        }
        let user = auth.user.clone();
        let ctx = ctx.clone();
        self.store
            .write(move |c| {
                users::lock(c, user.id)?;
                if recovery_codes::delete_for_user(c, user.id)? == 0 {
                    return Ok(());
                }
                let who = Some(user.id.to_string());
                let detail = json!({"method": RECOVERY_CODE});
                Service::audit(c, &ctx, user.tenant_id, who, Some(user.id), AuditKind::FactorRemoved, detail)
            })
            .await?;
        Ok(())
    }

    /// `POST /api/v1/auth/2fa/verify` with `method: "recovery_code"`: an unused code of the
    /// user (already normalised, see [`recovery_code::normalize`]) completes the sign-in like
    /// a code of a method; it is spent by one conditional update (single-use however many
    /// requests race) and audited `recovery_code_used`. A wrong or spent code counts as a
    /// wrong code. The session's second factor counts as verified (so the user can enroll a
    /// new one).
    ///
    /// Errors: `InvalidChallenge`, `MethodNotAllowed` (the challenge's `recovery_code` is
    /// false: not a `verify` challenge, not allowed for the role, or no unused code),
    /// `OtpBlocked`, `InvalidCode`.
    pub async fn verify_recovery_code(
        &self,
        ctx: &RequestCtx,
        challenge_token: &str,
        code: &str,
        remember_device: bool,
    ) -> Result<IssuedSession> {
        // On Postgres the sign-in may be committed in one statement, which needs the
        // enrollments (for the answer): read with the challenge, in the same query.
        let postgres = self.store.backend() == Backend::Postgres;
        let (loc, enrollments) = if postgres {
            let (loc, enrollments) = self
                .locate_with_enrollments(challenge_token, ChallengePurpose::SignIn, ctx.now, || Error::InvalidChallenge)
                .await?;
            (loc, Some(enrollments))
        } else {
            (self.locate(challenge_token, ChallengePurpose::SignIn, ctx.now, || Error::InvalidChallenge).await?, None)
        };
        if loc.challenge.next != NextAction::Verify || !loc.tenant.settings.recovery_codes.get(loc.user.role) {
            return Err(Error::MethodNotAllowed);
        }
        let hashes = self.keys.recovery_code_hashes(&loc.user.id.to_string(), code);
        if !remember_device
            && loc.user.lockout.blocked(ctx.now).is_none()
            && let Some(enrollments) = enrollments
            && let Some(issued) = self.verify_recovery_code_at_once(ctx, &loc, enrollments, &hashes).await?
        {
            return Ok(issued);
        }
        let svc = self.clone();
        let ctx = ctx.clone();
        self.store
            .write(move |c| {
                let now = ctx.now;
                let Some((user, ch)) = Service::reread(c, &loc, now)? else {
                    return Ok(Err(Error::InvalidChallenge));
                };
                if let Some(e) = svc.blocked(&user, RECOVERY_CODE, now) {
                    return Ok(Err(e));
                }
                if !recovery_codes::has_unused(c, user.id)? {
                    return Ok(Err(Error::MethodNotAllowed));
                }
                let mut spent = false;
                for hash in &hashes {
                    spent = recovery_codes::spend(c, user.id, hash, now)?;
                    if spent {
                        break;
                    }
                }
                if !spent {
                    return Ok(Err(svc.on_failure(c, &ctx, &user, RECOVERY_CODE, false)?));
                }
                users::set_lockout(c, user.id, Default::default())?;
                let remaining = recovery_codes::set_of(c, user.id)?.map_or(0, |s| s.remaining);
                let events = recovery_sign_in_events(&ctx, &user, remaining);
                let sign_in = CompletedSignIn {
                    challenge: &ch,
                    tenant: &loc.tenant,
                    enrolled: None,
                    remember_device,
                    metric: RECOVERY_CODE,
                };
                let issued = svc.complete_sign_in(c, &ctx, &user, &sign_in, &events)?;
                svc.notify(c, &ctx, user.tenant_id, Notice::RecoveryCodeUsed { user: user.id, remaining })?;
                Ok(Ok(issued))
            })
            .await?
    }

    /// The common case of a recovery-code sign-in on Postgres, in three round trips instead
    /// of about fifteen (the challenge with its user and `enrollments`, read together by
    /// [`Service::locate_with_enrollments`], the count of the user's unused codes, then one
    /// statement, [`Service::commit_at_once`]): the code is spent, the sign-in completed,
    /// `recovery_code_used` audited and the notice recorded, based on the count read, which
    /// the statement rechecks under the locks. `None` when the statement refused (a wrong or
    /// spent code, a code spent meanwhile, a blocked user, an ended challenge) or the user has
    /// no unused code: the portable path then decides under the user's lock and counts a
    /// wrong code.
    async fn verify_recovery_code_at_once(
        &self,
        ctx: &RequestCtx,
        loc: &Located,
        enrollments: Vec<Enrollment>,
        hashes: &[[u8; 32]],
    ) -> Result<Option<IssuedSession>> {
        let svc = self.clone();
        let ctx = ctx.clone();
        let (user, tenant, challenge) = (loc.user.clone(), loc.tenant.clone(), loc.challenge.id);
        let code_hashes: Vec<Vec<u8>> = hashes.iter().map(|h| h.to_vec()).collect();
        let issued = self
            .store
            .run(move |c| {
                let unused = recovery_codes::unused_count(c, user.id)?;
                let Some(remaining) = u32::try_from(unused).ok().and_then(|n| n.checked_sub(1)) else {
                    return Ok(None);
                };
                let notice = Notice::RecoveryCodeUsed { user: user.id, remaining };
                let sealed = svc.sealed_self_notice(&ctx, &tenant, &user, &notice)?;
                let at_once = AtOnce {
                    factor: Factor::RecoveryCode { code_hashes, unused },
                    method: None,
                    metric: RECOVERY_CODE,
                    audit: recovery_sign_in_events(&ctx, &user, remaining).to_vec(),
                    notice: sealed.map(|n| (n, notice.answer_waits())),
                };
                let enrolled = enrollments.iter().map(|e| e.method).collect();
                svc.commit_at_once(c, &ctx, &user, challenge, enrolled, at_once)
            })
            .await?;
        Ok(issued)
    }
}

/// The audit events of a sign-in completed with a recovery code: `recovery_code_used` with
/// the unused codes left, and `signed_in` naming it (`{"second_factor": true, "method":
/// "recovery_code"}`), the user acting on himself.
fn recovery_sign_in_events(ctx: &RequestCtx, user: &User, remaining: u32) -> [AuditEvent; 2] {
    Service::new_audit_events(
        ctx,
        user.tenant_id,
        Some(user.id.to_string()),
        Some(user.id),
        [
            (AuditKind::RecoveryCodeUsed, json!({"remaining": remaining})),
            (AuditKind::SignedIn, json!({"second_factor": true, "method": RECOVERY_CODE})),
        ],
    )
}
