//! The email code: a 6-digit code per send, stored only as a keyed hash, bound to the
//! challenge it was sent for, single-use, with a lifetime; the user's first accepted code
//! enrolls the method (DESIGN.md "Methods"). Sending lives in the email-code flow.

use chrono::{DateTime, Utc};
use latchkey_core::Method;
use latchkey_store::model::{Challenge, Enrollment, User};
use latchkey_store::repo::{email_codes, enrollments};
use latchkey_store::{DbConn, StoreResult};

use super::{Checked, Proof, SecondFactor};
use crate::service::Service;

/// The email method.
pub(super) struct EmailCode;

impl SecondFactor for EmailCode {
    /// The challenge's live code, compared in constant time with each of the challenge's
    /// codes; a match that is used is wrong, one that is voided or past its lifetime is
    /// expired. The code is marked used here (a conditional update, so a code raced twice is
    /// accepted once); the user's first one enrolls email.
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
        // An email code belongs to the challenge it was sent for; without one, none matches.
        let Some(challenge) = challenge else { return Ok(Checked::Wrong { expired: false }) };
        let codes = email_codes::for_challenge(conn, challenge.id)?;
        let matched = codes.iter().find(|c| svc.keys.code_matches(&c.id.to_string(), code, &c.code_hash));
        let live = match matched {
            Some(c) if c.used_at.is_some() => return Ok(Checked::Wrong { expired: false }),
            Some(c) if c.voided_at.is_some() || c.expires_at <= now => return Ok(Checked::Wrong { expired: true }),
            Some(c) => c,
            None => return Ok(Checked::Wrong { expired: false }),
        };
        if !email_codes::mark_used(conn, live.id, now)? {
            return Ok(Checked::Wrong { expired: false });
        }
        let enrolled = enrollments::methods_of(conn, user.id)?;
        let enroll = (!enrolled.contains(Method::Email)).then_some(Enrollment {
            user_id: user.id,
            method: Method::Email,
            secret_sealed: None,
            last_step: None,
            created_at: now,
            last_used_at: None,
        });
        Ok(Checked::Accepted { enrolled: Some(enrolled.with(Method::Email)), enroll })
    }
}
