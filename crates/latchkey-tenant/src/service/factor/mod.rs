//! Second factors: one module per method, behind one small interface ([`SecondFactor`]) that
//! the flows (sign-in verification, enrollment, enablement, step-up) call without knowing
//! which method they hold.
//!
//! A method module owns what it stores and how a proof of it is checked; method-specific
//! ceremonies (an authenticator's setup, an email code's sending) stay in the flow files that
//! offer them. Adding a method is a module here and one line in [`factor`].

mod authenticator;
mod email;
mod webauthn;

use chrono::{DateTime, Utc};
use latchkey_core::{ChallengeId, Method, MethodSet};
use latchkey_store::model::{Challenge, Enrollment, User};
use latchkey_store::repo::{challenges, email_codes, enrollments};
use latchkey_store::{DbConn, StoreResult};
use serde_json::json;

pub use authenticator::TotpSetup;
pub(super) use authenticator::{pending_aad, totp_setup};
pub(super) use webauthn::{
    Ceremony, ceremony_aad, check_assertion, credential_id, default_name, open_ceremony, record_of,
};

use super::{Notice, RequestCtx, Service};

/// What the user presents as proof of a factor.
pub(super) enum Proof<'a> {
    /// A one-time code (checked for its shape before: 6 ASCII digits).
    Code(&'a str),
    /// A WebAuthn assertion (the browser's `PublicKeyCredential`), to check with the tenant's
    /// verifier against the ceremony started on the challenge.
    Assertion { credential: &'a webauthn_rs_core::proto::PublicKeyCredential, verifier: &'a crate::Verifier },
}

/// A proof as a flow carries it into the user's transaction.
pub(super) enum Presented {
    /// A one-time code.
    Code(zeroize::Zeroizing<String>),
    /// A WebAuthn assertion and the tenant's verifier.
    Assertion(Box<webauthn_rs_core::proto::PublicKeyCredential>, std::sync::Arc<crate::Verifier>),
}

impl Presented {
    /// The proof to check.
    pub(super) fn proof(&self) -> Proof<'_> {
        match self {
            Presented::Code(code) => Proof::Code(code),
            Presented::Assertion(credential, verifier) => Proof::Assertion { credential, verifier },
        }
    }
}

/// The verdict on a proof, reached inside the user's transaction.
pub(super) enum Checked {
    /// Accepted; whatever made it single-use (a TOTP step, an email code) is used up.
    /// `enroll` is the enrollment this acceptance creates (from a pending setup, or the
    /// user's first email code), not yet stored; `enrolled` the user's enrolled methods when
    /// the check read them (so the caller need not read them again).
    Accepted { enroll: Option<Enrollment>, enrolled: Option<MethodSet> },
    /// The right code of an already used TOTP step: refused, not counted.
    Replayed,
    /// Refused and counted; `expired` for an email code past its lifetime or voided.
    Wrong { expired: bool },
    /// The user has nothing of this method to check the proof against.
    NotEnrolled,
    /// A WebAuthn assertion that verified but whose signature counter did not grow (a cloned
    /// authenticator, or a replay): refused and counted like a wrong code, and audited
    /// `webauthn_counter_regressed` (DESIGN.md 5.1).
    CounterRegressed {
        /// The credential id (base64url).
        credential_id: String,
        /// The counter the assertion carried.
        counter: u32,
        /// The counter stored.
        stored: i64,
    },
}

/// A second-factor method as the flows see it.
pub(super) trait SecondFactor: Sync {
    /// Checks `proof` for `user` on `challenge` (`None` for a step-up by a method that needs
    /// none), inside the user's transaction (the caller holds the user's lock and has checked
    /// that the user is not blocked). A one-time value it accepts is used up here by a
    /// conditional update, so that it is accepted at most once however many requests race.
    fn check(
        &self,
        svc: &Service,
        conn: &mut DbConn,
        challenge: Option<&Challenge>,
        user: &User,
        proof: &Proof<'_>,
        now: DateTime<Utc>,
    ) -> StoreResult<Checked>;
}

/// The implementation of `method`: the one place where methods are listed.
pub(super) fn factor(method: Method) -> &'static dyn SecondFactor {
    match method {
        Method::Authenticator => &authenticator::Authenticator,
        Method::Email => &email::EmailCode,
        Method::Webauthn => &webauthn::Webauthn,
    }
}

impl Service {
    /// Checks `proof` of `method` (see [`SecondFactor::check`]).
    pub(super) fn check_proof(
        &self,
        conn: &mut DbConn,
        challenge: Option<&Challenge>,
        user: &User,
        method: Method,
        proof: &Proof<'_>,
        now: DateTime<Utc>,
    ) -> StoreResult<Checked> {
        factor(method).check(self, conn, challenge, user, proof, now)
    }

    /// Stores the enrollment an accepted proof created, if any: the user's other challenges
    /// (all but `keep`) and codes are void (DESIGN.md "Challenges") and the audit log records
    /// `enrolled`, and the user gets a notice.
    pub(super) fn enroll_accepted(
        &self,
        conn: &mut DbConn,
        ctx: &RequestCtx,
        user: &User,
        keep: Option<ChallengeId>,
        enroll: Option<Enrollment>,
    ) -> StoreResult<()> {
        let Some(enrollment) = enroll else { return Ok(()) };
        enrollments::upsert(conn, user.tenant_id, &enrollment)?;
        challenges::end_for_user(conn, user.id, keep, ctx.now)?;
        email_codes::void_for_user(conn, user.id, ctx.now)?;
        let who = Some(user.id.to_string());
        let detail = json!({"method": enrollment.method});
        Service::audit(conn, ctx, user.tenant_id, who, Some(user.id), latchkey_core::AuditKind::Enrolled, detail)?;
        self.notify(conn, ctx, user.tenant_id, Notice::MethodEnrolled { user: user.id, method: enrollment.method })
    }
}
