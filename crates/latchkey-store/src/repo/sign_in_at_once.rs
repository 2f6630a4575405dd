//! A sign-in committed in one statement on Postgres: the writes of a successful
//! `POST /api/v1/auth/2fa/verify` by a TOTP code (DESIGN.md section 1, "Authenticator"), a
//! recovery code (5.2) or a WebAuthn assertion (5.1), which the portable path sends as a
//! transaction of ten to fifteen statements.
//!
//! One data-modifying `WITH` statement, in autocommit, so it is one round trip and one
//! commit: it locks the user (not blocked) and the challenge (still open) with
//! `SELECT … FOR UPDATE`, uses up what makes the proof single-use with a conditional
//! `UPDATE` ([`Factor`]: the enrollment's last accepted time step moves forward, RFC 6238
//! section 5.2; the recovery code is spent; the credential's signature counter moves from
//! the value the assertion was checked against), and only if that happened ends the
//! challenge, clears the wrong-code counter and block, inserts the session, appends the audit
//! events, creates their webhook deliveries (DESIGN.md 5.6) and records the notice mail, if
//! any. Either every write happens or none does.
//!
//! Lock order: the user row first, as on every other path that writes a user's challenges
//! or factors (the portable verify, resets, new recovery codes, role and email changes,
//! deletion): the challenge is looked up only through the locked user, so a statement
//! waiting for the user holds nothing. The counter is cleared unconditionally: a condition on
//! the counter would be tested on the row as the statement's snapshot saw it, before the
//! lock, and could skip a newer count. SQLite keeps the portable path: there is no round trip
//! to save.

use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{Array, BigInt, Bytea, Nullable, Text};
use latchkey_core::{ChallengeId, DeliveryId, Method, UserId};

use super::deliveries::NewMail;
use crate::DbConn;
use crate::error::StoreResult;
use crate::model::{AuditEvent, Session, ms, parse};

/// What makes the proof single-use, and how the statement uses it up.
#[derive(Clone)]
pub enum Factor {
    /// An accepted TOTP code: the authenticator enrollment's last accepted time step moves to
    /// `step` (Unix time / 30 s); refused unless above the stored one.
    Totp {
        /// The accepted time step.
        step: i64,
    },
    /// A recovery code: the user's unused code with one of `code_hashes` (keyed hashes, under
    /// the current key and the previous ones) is spent; refused unless the user has exactly
    /// `unused` unused codes before it (the count the caller based the audit detail and the
    /// notice on, checked under the locks, so a code spent by a concurrent request is seen).
    RecoveryCode {
        /// The keyed hashes of the presented code.
        code_hashes: Vec<Vec<u8>>,
        /// The user's unused codes before this one is spent.
        unused: i64,
    },
    /// A WebAuthn assertion verified against the ceremony `ceremony` (sealed, as read from
    /// the challenge) and the credential as stored with counter `seen`: the credential's
    /// record and counter are replaced, the challenge's ceremony is used up and the webauthn
    /// enrollment marked used; refused unless the challenge still holds that ceremony and the
    /// credential that counter.
    Assertion {
        /// The sealed ceremony state the assertion was checked against.
        ceremony: Vec<u8>,
        /// The credential id (base64url without padding).
        credential_id: String,
        /// The stored signature counter the assertion was checked against.
        seen: i64,
        /// The counter to store.
        sign_count: i64,
        /// webauthn-rs's updated record of the credential (JSON).
        record: String,
    },
}

/// The writes of one accepted proof.
pub struct SignInAtOnce<'a> {
    /// The user, whose lock the statement takes; refused if blocked at `session.created_at`.
    pub user: UserId,
    /// The sign-in challenge, ended by the statement; refused unless open at `session.created_at`.
    pub challenge: ChallengeId,
    /// The proof's single-use part.
    pub factor: Factor,
    /// The method that becomes the user's preferred one unless he chose his own (`None`: a
    /// recovery code, which is not a method).
    pub method: Option<Method>,
    /// The session to create (its `created_at` is the instant of the verification).
    pub session: &'a Session,
    /// Keyed hash of the session's bearer token.
    pub session_token_hash: &'a [u8],
    /// Audit events to append with it.
    pub audit: &'a [AuditEvent],
    /// A notice mail to record with it (its payload already sealed to its id).
    pub notice: Option<NewMail<'a>>,
}

impl std::fmt::Debug for SignInAtOnce<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let factor = match self.factor {
            Factor::Totp { .. } => "totp",
            Factor::RecoveryCode { .. } => "recovery_code",
            Factor::Assertion { .. } => "assertion",
        };
        f.debug_struct("SignInAtOnce")
            .field("user", &self.user)
            .field("challenge", &self.challenge)
            .field("factor", &factor)
            .field("session", &self.session.id)
            .field("audit_events", &self.audit.len())
            .field("notice", &self.notice.as_ref().map(|n| n.id))
            .finish_non_exhaustive()
    }
}

/// What [`commit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInOutcome {
    /// Every write happened: the session exists.
    Committed,
    /// Nothing was written: the user is blocked, the challenge is no longer open (or no
    /// longer holds the ceremony), or the single-use part was already used up or has changed.
    /// The portable path tells which.
    Refused,
    /// The backend has no one-statement form (SQLite): use the portable path.
    Unsupported,
}

/// The start of the statement, up to its scalar parameters (`p`).
const SQL_HEAD: &str = "WITH p AS (SELECT ";
/// After the parameters: the locks.
const SQL_LOCKS: &str = "
), locked_user AS (
    SELECT u.id FROM users u
    WHERE u.id = (SELECT user_id FROM p)
      AND (u.otp_blocked_until IS NULL OR u.otp_blocked_until <= (SELECT now FROM p))
    FOR UPDATE
), locked_challenge AS (
    SELECT c.id FROM challenges c
    WHERE c.id = (SELECT challenge_id FROM p) AND c.user_id = (SELECT id FROM locked_user)
      AND c.purpose = 'sign_in' AND c.ended_at IS NULL AND c.expires_at > (SELECT now FROM p)";
/// The end of the challenge's lock.
const SQL_LOCKS_END: &str = "
    FOR UPDATE
), ";
/// A TOTP code: the time step moves forward.
const SQL_TOTP: &str = "accepted AS (
    UPDATE enrollments e SET last_step = p.step, last_used_at = p.now FROM p
    WHERE e.user_id = (SELECT id FROM locked_user) AND e.method = 'authenticator'
      AND (e.last_step IS NULL OR e.last_step < p.step)
      AND EXISTS (SELECT 1 FROM locked_challenge)
    RETURNING e.user_id
)";
/// A recovery code: the user's unused codes are locked (so that one spent by a concurrent
/// request is rechecked, not counted from the snapshot) and counted, and the presented one
/// is spent if the count is the expected one.
const SQL_RECOVERY_CODE: &str = "unused AS (
    SELECT r.id FROM recovery_codes r
    WHERE r.user_id = (SELECT id FROM locked_user) AND r.used_at IS NULL
      AND EXISTS (SELECT 1 FROM locked_challenge)
    FOR UPDATE
), accepted AS (
    UPDATE recovery_codes r SET used_at = p.now FROM p
    WHERE r.user_id = p.user_id AND r.code_hash = ANY(p.code_hashes) AND r.used_at IS NULL
      AND r.id IN (SELECT id FROM unused) AND (SELECT count(*) FROM unused) = p.unused
    RETURNING r.user_id
)";
/// An assertion: the challenge must still hold the ceremony it was checked against.
const SQL_ASSERTION_CHALLENGE: &str = " AND c.ceremony = (SELECT ceremony FROM p)";
/// An assertion: the credential's counter moves from the value checked, the enrollment is
/// marked used.
const SQL_ASSERTION: &str = "accepted AS (
    UPDATE webauthn_credentials w SET sign_count = p.sign_count, credential = p.record, last_used_at = p.now FROM p
    WHERE w.user_id = (SELECT id FROM locked_user) AND w.credential_id = p.credential_id
      AND w.sign_count = p.seen AND EXISTS (SELECT 1 FROM locked_challenge)
    RETURNING w.user_id
), used AS (
    UPDATE enrollments e SET last_used_at = p.now FROM p
    WHERE e.user_id = p.user_id AND e.method = 'webauthn' AND EXISTS (SELECT 1 FROM accepted)
)";
/// After the factor: the writes every sign-in shares, up to the audit events' arrays.
const SQL_COMMON: &str = ", ended AS (
    UPDATE challenges c SET ended_at = p.now, pending_secret = NULL, ceremony = NULL FROM p
    WHERE c.id = p.challenge_id AND EXISTS (SELECT 1 FROM accepted)
), verified AS (
    UPDATE users u SET otp_failures = 0, otp_blocked_until = NULL,
        preferred_method = CASE WHEN u.preferred_chosen OR p.method IS NULL THEN u.preferred_method
            ELSE p.method END
    FROM p
    WHERE u.id = p.user_id AND EXISTS (SELECT 1 FROM accepted)
), session AS (
    INSERT INTO sessions (id, token_hash, tenant_id, user_id, created_at, expires_at, second_factor_at)
    SELECT p.session_id, p.token_hash, p.tenant_id, p.user_id, p.now, p.expires_at, p.second_factor_at
    FROM p WHERE EXISTS (SELECT 1 FROM accepted)
), notice AS (
    INSERT INTO deliveries
        (id, tenant_id, kind, state, attempts, payload, expires_at, next_attempt_at, lease_until,
         created_at, updated_at)
    SELECT p.notice_id, p.tenant_id, p.notice_kind, 'pending', 0, p.notice_payload, p.notice_expires_at, p.now,
        p.notice_lease_until, p.now, p.now
    FROM p WHERE p.notice_id IS NOT NULL AND EXISTS (SELECT 1 FROM accepted)
), audit AS (
    INSERT INTO audit_events (id, tenant_id, at, actor_id, subject_id, kind, ip, user_agent, detail)
    SELECT e.id, e.tenant_id, e.at, e.actor_id, e.subject_id, e.kind, e.ip, e.user_agent, e.detail
    FROM unnest(";
/// After the audit events: their webhook deliveries (`webhooks::PG_FAN_OUT`), then the
/// answer.
const SQL_TAIL: &str = ") AS e (id, tenant_id, at, actor_id, subject_id, kind, ip, user_agent, detail)
    WHERE EXISTS (SELECT 1 FROM accepted)
    RETURNING id, tenant_id, kind, at
), hooks AS (
";
const SQL_END: &str = "
)
SELECT (SELECT count(*) FROM accepted), ARRAY(SELECT id FROM hooks)";

/// The statement with its parameters: a diesel query of its own (rather than `sql_query`)
/// so that diesel prepares it once per connection and Postgres parses and plans it once
/// (one SQL text per factor, cached by its text).
struct Statement {
    user: String,
    now: i64,
    challenge: String,
    factor: Factor,
    method: Option<&'static str>,
    session_id: String,
    token_hash: Vec<u8>,
    tenant_id: String,
    expires_at: i64,
    second_factor_at: Option<i64>,
    notice_id: Option<String>,
    notice_kind: Option<&'static str>,
    notice_payload: Option<Vec<u8>>,
    notice_expires_at: Option<i64>,
    notice_lease_until: Option<i64>,
    audit_id: Vec<String>,
    audit_tenant_id: Vec<String>,
    audit_at: Vec<i64>,
    audit_actor_id: Vec<Option<String>>,
    audit_subject_id: Vec<Option<String>>,
    audit_kind: Vec<&'static str>,
    audit_ip: Vec<Option<String>>,
    audit_user_agent: Vec<Option<String>>,
    audit_detail: Vec<String>,
}

impl Statement {
    fn of(s: &SignInAtOnce<'_>) -> Self {
        let a = s.audit;
        let n = s.notice.as_ref();
        Self {
            user: s.user.to_string(),
            now: ms(s.session.created_at),
            challenge: s.challenge.to_string(),
            factor: s.factor.clone(),
            method: s.method.map(Method::as_str),
            session_id: s.session.id.to_string(),
            token_hash: s.session_token_hash.to_vec(),
            tenant_id: s.session.tenant_id.to_string(),
            expires_at: ms(s.session.expires_at),
            second_factor_at: s.session.second_factor_at.map(ms),
            notice_id: n.map(|n| n.id.to_string()),
            notice_kind: n.map(|n| n.kind.as_str()),
            notice_payload: n.map(|n| n.payload.to_vec()),
            notice_expires_at: n.and_then(|n| n.expires_at).map(ms),
            notice_lease_until: n.map(|n| ms(n.lease_until)),
            audit_id: a.iter().map(|e| e.id.to_string()).collect(),
            audit_tenant_id: a.iter().map(|e| e.tenant_id.to_string()).collect(),
            audit_at: a.iter().map(|e| ms(e.at)).collect(),
            audit_actor_id: a.iter().map(|e| e.actor_id.clone()).collect(),
            audit_subject_id: a.iter().map(|e| e.subject_id.clone()).collect(),
            audit_kind: a.iter().map(|e| e.kind.as_str()).collect(),
            audit_ip: a.iter().map(|e| e.ip.clone()).collect(),
            audit_user_agent: a.iter().map(|e| e.user_agent.clone()).collect(),
            audit_detail: a.iter().map(|e| e.detail.to_string()).collect(),
        }
    }
}

impl QueryId for Statement {
    type QueryId = ();
    /// Not static: the SQL text depends on the factor, so diesel caches it by its text.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Statement {
    type SqlType = (BigInt, Array<Text>);
}

impl RunQueryDsl<PgConnection> for Statement {}

impl QueryFragment<Pg> for Statement {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(SQL_HEAD);
        out.push_bind_param::<Text, _>(&self.user)?;
        out.push_sql("::text AS user_id, ");
        out.push_bind_param::<BigInt, _>(&self.now)?;
        out.push_sql("::bigint AS now, ");
        out.push_bind_param::<Text, _>(&self.challenge)?;
        out.push_sql("::text AS challenge_id, ");
        match &self.factor {
            Factor::Totp { step } => {
                out.push_bind_param::<BigInt, _>(step)?;
                out.push_sql("::bigint AS step, ");
            }
            Factor::RecoveryCode { code_hashes, unused } => {
                out.push_bind_param::<Array<Bytea>, _>(code_hashes)?;
                out.push_sql("::bytea[] AS code_hashes, ");
                out.push_bind_param::<BigInt, _>(unused)?;
                out.push_sql("::bigint AS unused, ");
            }
            Factor::Assertion { ceremony, credential_id, seen, sign_count, record } => {
                out.push_bind_param::<Bytea, _>(ceremony)?;
                out.push_sql("::bytea AS ceremony, ");
                out.push_bind_param::<Text, _>(credential_id)?;
                out.push_sql("::text AS credential_id, ");
                out.push_bind_param::<BigInt, _>(seen)?;
                out.push_sql("::bigint AS seen, ");
                out.push_bind_param::<BigInt, _>(sign_count)?;
                out.push_sql("::bigint AS sign_count, ");
                out.push_bind_param::<Text, _>(record)?;
                out.push_sql("::text AS record, ");
            }
        }
        out.push_bind_param::<Nullable<Text>, _>(&self.method)?;
        out.push_sql("::text AS method, ");
        out.push_bind_param::<Text, _>(&self.session_id)?;
        out.push_sql("::text AS session_id, ");
        out.push_bind_param::<Bytea, _>(&self.token_hash)?;
        out.push_sql("::bytea AS token_hash, ");
        out.push_bind_param::<Text, _>(&self.tenant_id)?;
        out.push_sql("::text AS tenant_id, ");
        out.push_bind_param::<BigInt, _>(&self.expires_at)?;
        out.push_sql("::bigint AS expires_at, ");
        out.push_bind_param::<Nullable<BigInt>, _>(&self.second_factor_at)?;
        out.push_sql("::bigint AS second_factor_at, ");
        out.push_bind_param::<Nullable<Text>, _>(&self.notice_id)?;
        out.push_sql("::text AS notice_id, ");
        out.push_bind_param::<Nullable<Text>, _>(&self.notice_kind)?;
        out.push_sql("::text AS notice_kind, ");
        out.push_bind_param::<Nullable<Bytea>, _>(&self.notice_payload)?;
        out.push_sql("::bytea AS notice_payload, ");
        out.push_bind_param::<Nullable<BigInt>, _>(&self.notice_expires_at)?;
        out.push_sql("::bigint AS notice_expires_at, ");
        out.push_bind_param::<Nullable<BigInt>, _>(&self.notice_lease_until)?;
        out.push_sql("::bigint AS notice_lease_until");
        out.push_sql(SQL_LOCKS);
        if matches!(self.factor, Factor::Assertion { .. }) {
            out.push_sql(SQL_ASSERTION_CHALLENGE);
        }
        out.push_sql(SQL_LOCKS_END);
        out.push_sql(match self.factor {
            Factor::Totp { .. } => SQL_TOTP,
            Factor::RecoveryCode { .. } => SQL_RECOVERY_CODE,
            Factor::Assertion { .. } => SQL_ASSERTION,
        });
        out.push_sql(SQL_COMMON);
        out.push_bind_param::<Array<Text>, _>(&self.audit_id)?;
        out.push_sql("::text[], ");
        out.push_bind_param::<Array<Text>, _>(&self.audit_tenant_id)?;
        out.push_sql("::text[], ");
        out.push_bind_param::<Array<BigInt>, _>(&self.audit_at)?;
        out.push_sql("::bigint[], ");
        out.push_bind_param::<Array<Nullable<Text>>, _>(&self.audit_actor_id)?;
        out.push_sql("::text[], ");
        out.push_bind_param::<Array<Nullable<Text>>, _>(&self.audit_subject_id)?;
        out.push_sql("::text[], ");
        out.push_bind_param::<Array<Text>, _>(&self.audit_kind)?;
        out.push_sql("::text[], ");
        out.push_bind_param::<Array<Nullable<Text>>, _>(&self.audit_ip)?;
        out.push_sql("::text[], ");
        out.push_bind_param::<Array<Nullable<Text>>, _>(&self.audit_user_agent)?;
        out.push_sql("::text[], ");
        out.push_bind_param::<Array<Text>, _>(&self.audit_detail)?;
        out.push_sql("::text[]");
        out.push_sql(SQL_TAIL);
        out.push_sql(super::webhooks::PG_FAN_OUT);
        out.push_sql(SQL_END);
        Ok(())
    }
}

/// Commits the sign-in `s` in one statement on Postgres; with the outcome, the ids of the
/// webhook deliveries of its audit events (for the request to queue once it is done, with
/// the notice's id if it had one).
///
/// Errors: database errors only; every refusal is [`SignInOutcome::Refused`] with nothing
/// written.
pub fn commit(conn: &mut DbConn, s: &SignInAtOnce<'_>) -> StoreResult<(SignInOutcome, Vec<DeliveryId>)> {
    let DbConn::Pg(pg) = conn else {
        return Ok((SignInOutcome::Unsupported, Vec::new()));
    };
    let (accepted, hooks): (i64, Vec<String>) = Statement::of(s).get_result(pg)?;
    if accepted != 1 {
        return Ok((SignInOutcome::Refused, Vec::new()));
    }
    let hooks = hooks.iter().map(|id| parse("delivery id", id)).collect::<StoreResult<Vec<_>>>()?;
    Ok((SignInOutcome::Committed, hooks))
}
