//! What every step of a challenge shares: finding the challenge, re-reading it under the
//! user's lock, the block, and the answer to a refused code. The flows are in their own files
//! (`enroll`, `email_code`, `verify`, `recovery`, `reset_link`); the methods in `factor`.

use chrono::{DateTime, Utc};
use latchkey_core::crypto::TokenPurpose;
use latchkey_core::otp::seconds_until;
use latchkey_core::{AuditKind, Method};
use latchkey_store::model::{AuditEvent, Challenge, ChallengePurpose, Enrollment, Tenant, User, WebauthnCredential};
use latchkey_store::repo::{challenges, users};
use latchkey_store::{DbConn, StoreResult};
use serde_json::json;

use super::{RequestCtx, Service};
use crate::error::{Error, Result};

/// What a passkey verification at sign-in read with its challenge
/// ([`Service::locate_for_assertion`]), unlocked: the one-statement sign-in rechecks what it
/// relies on.
pub(super) struct AssertionRead {
    /// The user's enrollments.
    pub enrollments: Vec<Enrollment>,
    /// The sealed WebAuthn ceremony on the challenge, if one was started.
    pub ceremony: Option<Vec<u8>>,
    /// The user's credential the assertion names, if he has it.
    pub credential: Option<WebauthnCredential>,
}

/// An open challenge with its user and tenant (the tenant through its actor).
pub(super) struct Located {
    pub challenge: Challenge,
    pub tenant: Tenant,
    pub user: User,
}

/// The audit event of a sign-in completed with a verified code of `method`: one
/// `signed_in` row whose detail names the method (`{"second_factor": true, "method": …}`),
/// the user acting on himself. A sign-in writes no `verified` row: that kind is for
/// verifications that are not sign-ins (enablement, step-up), so that a verification writes
/// as few rows as it can (issue 17's product decision).
pub(super) fn verified_sign_in_events(ctx: &RequestCtx, user: &User, method: Method) -> [AuditEvent; 1] {
    Service::new_audit_events(
        ctx,
        user.tenant_id,
        Some(user.id.to_string()),
        Some(user.id),
        [(AuditKind::SignedIn, json!({"second_factor": true, "method": method}))],
    )
}

impl Service {
    /// Finds the open challenge of `token` with `purpose`, its user and tenant.
    pub(super) async fn locate(
        &self,
        token: &str,
        purpose: ChallengePurpose,
        now: DateTime<Utc>,
        missing: fn() -> Error,
    ) -> Result<Located> {
        let found = self.find_open(token, now, challenges::open_with_user_by_token_hash).await?;
        let (challenge, user) = found.filter(|(ch, _)| ch.purpose == purpose).ok_or_else(missing)?;
        self.located(challenge, user, missing).await
    }

    /// [`Service::locate`] with the user's enrollments, read in the same query (a TOTP or
    /// recovery-code verification needs them before it commits in one statement: one round
    /// trip fewer, issue 17).
    pub(super) async fn locate_with_enrollments(
        &self,
        token: &str,
        purpose: ChallengePurpose,
        now: DateTime<Utc>,
        missing: fn() -> Error,
    ) -> Result<(Located, Vec<Enrollment>)> {
        let found = self.find_open(token, now, challenges::open_with_user_and_enrollments_by_token_hash).await?;
        let (challenge, user, enrollments) = found.filter(|(ch, ..)| ch.purpose == purpose).ok_or_else(missing)?;
        Ok((self.located(challenge, user, missing).await?, enrollments))
    }

    /// [`Service::locate`] for a sign-in challenge, with what the one-statement passkey
    /// sign-in needs before it checks the assertion, read in the same query
    /// ([`challenges::open_for_assertion_by_token_hash`]; `credential_id`: the credential the
    /// assertion names).
    ///
    /// Errors: `InvalidChallenge`.
    pub(super) async fn locate_for_assertion(
        &self,
        token: &str,
        now: DateTime<Utc>,
        credential_id: String,
    ) -> Result<(Located, AssertionRead)> {
        let find = move |c: &mut DbConn, hash: &[u8], now| {
            challenges::open_for_assertion_by_token_hash(c, hash, now, &credential_id)
        };
        let found = self.find_open(token, now, find).await?;
        let open = found.filter(|o| o.challenge.purpose == ChallengePurpose::SignIn).ok_or(Error::InvalidChallenge)?;
        let read =
            AssertionRead { enrollments: open.enrollments, ceremony: open.ceremony, credential: open.credential };
        Ok((self.located(open.challenge, open.user, || Error::InvalidChallenge).await?, read))
    }

    /// Runs `find` with the hash of `token` under the current key, then under the previous
    /// ones (a token issued before a key rotation), until one finds an open challenge.
    async fn find_open<T, F>(&self, token: &str, now: DateTime<Utc>, find: F) -> Result<Option<T>>
    where
        T: Send + 'static,
        F: Fn(&mut DbConn, &[u8], DateTime<Utc>) -> StoreResult<Option<T>> + Send + 'static,
    {
        let hashes = self.keys.token_hashes(TokenPurpose::Challenge, token);
        let found = self
            .store
            .run(move |c| {
                for hash in &hashes {
                    if let Some(found) = find(c, hash, now)? {
                        return Ok(Some(found));
                    }
                }
                Ok(None)
            })
            .await?;
        Ok(found)
    }

    /// The [`Located`] of a challenge found open: its tenant through the actor.
    async fn located(&self, challenge: Challenge, user: User, missing: fn() -> Error) -> Result<Located> {
        let span = tracing::Span::current();
        span.record("tenant", tracing::field::display(challenge.tenant_id));
        span.record("user", tracing::field::display(user.id));
        let tenant = self.registry.enter(challenge.tenant_id).await.map_err(|e| match e {
            Error::NotFound => missing(),
            other => other,
        })?;
        Ok(Located { challenge, tenant, user })
    }

    /// Re-reads the user (taking its lock) and the challenge, which must still be open.
    pub(super) fn reread(
        conn: &mut DbConn,
        loc: &Located,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<(User, Challenge)>> {
        let user = users::lock_and_get(conn, loc.tenant.id, loc.user.id)?;
        let ch = challenges::by_id(conn, loc.challenge.id)?.filter(|ch| ch.is_open(now));
        Ok(user.zip(ch))
    }

    /// `OtpBlocked` if the user is blocked at `now` (counted in metrics, not as a failure).
    /// `factor` is the method's wire name, or `recovery_code`.
    pub(super) fn blocked(&self, user: &User, factor: &'static str, now: DateTime<Utc>) -> Option<Error> {
        let until = user.lockout.blocked(now)?;
        self.metrics.otp_verifications.with_label_values(&[factor, "blocked"]).inc();
        Some(Error::OtpBlocked { retry_after: seconds_until(until, now) })
    }

    /// Counts a refused code: the lockout moves, the audit log and metrics record it, and the
    /// answer is built (`invalid_code` with `attempts_remaining`, or `code_expired`; the code
    /// that reaches the limit answers `invalid_code` with 0 and `retry_after`). `factor` is the
    /// method's wire name, or `recovery_code`.
    pub(super) fn on_failure(
        &self,
        conn: &mut DbConn,
        ctx: &RequestCtx,
        user: &User,
        factor: &'static str,
        expired: bool,
    ) -> StoreResult<Error> {
        let now = ctx.now;
        let (lockout, failure) = user.lockout.fail(now, &self.limits);
        users::set_lockout(conn, user.id, lockout)?;
        let outcome = if expired { "expired" } else { "invalid" };
        self.metrics.otp_verifications.with_label_values(&[factor, outcome]).inc();
        let who = Some(user.id.to_string());
        Service::audit(
            conn,
            ctx,
            user.tenant_id,
            who.clone(),
            Some(user.id),
            AuditKind::VerifyFailed,
            json!({"method": factor, "reason": outcome}),
        )?;
        if let Some(until) = failure.blocked_until {
            self.metrics.otp_blocks.inc();
            Service::audit(
                conn,
                ctx,
                user.tenant_id,
                who,
                Some(user.id),
                AuditKind::OtpBlocked,
                json!({"until": until}),
            )?;
            return Ok(Error::InvalidCode { attempts_remaining: 0, retry_after: Some(seconds_until(until, now)) });
        }
        Ok(if expired {
            Error::CodeExpired { attempts_remaining: failure.attempts_remaining }
        } else {
            Error::InvalidCode { attempts_remaining: failure.attempts_remaining, retry_after: None }
        })
    }

    /// A WebAuthn assertion whose signature counter did not grow: audited
    /// `webauthn_counter_regressed` (with the credential and both counts), then counted like
    /// a wrong code (DESIGN.md 5.1).
    pub(super) fn on_counter_regressed(
        &self,
        conn: &mut DbConn,
        ctx: &RequestCtx,
        user: &User,
        credential_id: &str,
        counter: u32,
        stored: i64,
    ) -> StoreResult<Error> {
        Service::audit(
            conn,
            ctx,
            user.tenant_id,
            Some(user.id.to_string()),
            Some(user.id),
            AuditKind::WebauthnCounterRegressed,
            json!({"credential_id": credential_id, "counter": counter, "stored_counter": stored}),
        )?;
        self.on_failure(conn, ctx, user, Method::Webauthn.as_str(), false)
    }

    /// A replayed TOTP step: refused with the attempts left, not counted.
    pub(super) fn on_replay(&self, user: &User, factor: &'static str, now: DateTime<Utc>) -> Error {
        self.metrics.otp_verifications.with_label_values(&[factor, "replayed"]).inc();
        let failures = user.lockout.at(now).failures;
        Error::InvalidCode {
            attempts_remaining: self.limits.otp_max_failures.saturating_sub(failures),
            retry_after: None,
        }
    }
}
