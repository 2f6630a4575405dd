//! A TOTP sign-in committed in one statement on Postgres: the writes of a successful
//! `POST /api/v1/auth/2fa/verify` with `method: "authenticator"` (DESIGN.md section 1,
//! "Authenticator"), which the portable path sends as a transaction of about ten statements.
//!
//! One data-modifying `WITH` statement, in autocommit, so it is one round trip and one
//! commit: it locks the user (not blocked) and the challenge (still open) with
//! `SELECT … FOR UPDATE`, moves the enrollment's last accepted time step forward with a
//! conditional `UPDATE` (RFC 6238 section 5.2: a step is accepted at most once), and only
//! if that moved ends the challenge, clears the wrong-code counter and block, inserts the
//! session, appends the audit events and creates their webhook deliveries (DESIGN.md 5.6).
//! Either every write happens or none does.
//!
//! Lock order: the user row first, as on every other path that writes a user's challenges
//! (the portable verify, resets, role and email changes, deletion): the challenge is looked
//! up only through the locked user, so a statement waiting for the user holds nothing. The
//! counter is cleared unconditionally: a condition on the counter would be tested on the row
//! as the statement's snapshot saw it, before the lock, and could skip a newer count. SQLite
//! keeps the portable path: there is no round trip to save.

use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{Array, BigInt, Bytea, Nullable, Text};
use latchkey_core::{ChallengeId, DeliveryId, Method, UserId};

use crate::DbConn;
use crate::error::StoreResult;
use crate::model::{AuditEvent, Session, ms, parse};

/// The writes of one accepted TOTP code.
pub struct TotpSignIn<'a> {
    /// The user, whose lock the statement takes; refused if blocked at `session.created_at`.
    pub user: UserId,
    /// The sign-in challenge, ended by the statement; refused unless open at `session.created_at`.
    pub challenge: ChallengeId,
    /// The accepted RFC 6238 time step (Unix time / 30 s); refused unless above the stored one.
    pub step: i64,
    /// The session to create (its `created_at` is the instant of the verification).
    pub session: &'a Session,
    /// Keyed hash of the session's bearer token.
    pub session_token_hash: &'a [u8],
    /// Audit events to append with it.
    pub audit: &'a [AuditEvent],
}

impl std::fmt::Debug for TotpSignIn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpSignIn")
            .field("user", &self.user)
            .field("challenge", &self.challenge)
            .field("step", &self.step)
            .field("session", &self.session.id)
            .field("audit_events", &self.audit.len())
            .finish_non_exhaustive()
    }
}

/// What [`commit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TotpSignInOutcome {
    /// Every write happened: the session exists.
    Committed,
    /// Nothing was written: the user is blocked, the challenge is no longer open, the user has
    /// no authenticator or the step is not above the last accepted one. The portable path
    /// tells which.
    Refused,
    /// The backend has no one-statement form (SQLite): use the portable path.
    Unsupported,
}

/// The statement, in three parts around its two groups of parameters: the scalars (`p`) and
/// the audit events as parallel arrays (`unnest`).
const SQL_HEAD: &str = "WITH p AS (SELECT ";
const SQL_BODY: &str = "
), locked_user AS (
    SELECT u.id FROM users u
    WHERE u.id = (SELECT user_id FROM p)
      AND (u.otp_blocked_until IS NULL OR u.otp_blocked_until <= (SELECT now FROM p))
    FOR UPDATE
), locked_challenge AS (
    SELECT c.id FROM challenges c
    WHERE c.id = (SELECT challenge_id FROM p) AND c.user_id = (SELECT id FROM locked_user)
      AND c.purpose = 'sign_in' AND c.ended_at IS NULL AND c.expires_at > (SELECT now FROM p)
    FOR UPDATE
), advanced AS (
    UPDATE enrollments e SET last_step = p.step, last_used_at = p.now FROM p
    WHERE e.user_id = (SELECT id FROM locked_user) AND e.method = p.method
      AND (e.last_step IS NULL OR e.last_step < p.step)
      AND EXISTS (SELECT 1 FROM locked_challenge)
    RETURNING e.user_id
), ended AS (
    UPDATE challenges c SET ended_at = p.now, pending_secret = NULL FROM p
    WHERE c.id = p.challenge_id AND EXISTS (SELECT 1 FROM advanced)
), verified AS (
    UPDATE users u SET otp_failures = 0, otp_blocked_until = NULL,
        preferred_method = CASE WHEN u.preferred_chosen THEN u.preferred_method ELSE p.method END FROM p
    WHERE u.id = p.user_id AND EXISTS (SELECT 1 FROM advanced)
), session AS (
    INSERT INTO sessions (id, token_hash, tenant_id, user_id, created_at, expires_at, second_factor_at)
    SELECT p.session_id, p.token_hash, p.tenant_id, p.user_id, p.now, p.expires_at, p.second_factor_at
    FROM p, advanced
), audit AS (
    INSERT INTO audit_events (id, tenant_id, at, actor_id, subject_id, kind, ip, user_agent, detail)
    SELECT e.id, e.tenant_id, e.at, e.actor_id, e.subject_id, e.kind, e.ip, e.user_agent, e.detail
    FROM advanced, unnest(";
/// After the audit events: their webhook deliveries (`webhooks::PG_FAN_OUT`), then the
/// answer.
const SQL_TAIL: &str = ") AS e (id, tenant_id, at, actor_id, subject_id, kind, ip, user_agent, detail)
    RETURNING id, tenant_id, kind, at
), hooks AS (
";
const SQL_END: &str = "
)
SELECT (SELECT count(*) FROM advanced), ARRAY(SELECT id FROM hooks)";

/// The statement with its parameters: a diesel query of its own (rather than `sql_query`)
/// so that diesel prepares it once per connection and Postgres parses and plans it once.
struct Statement {
    user: String,
    now: i64,
    challenge: String,
    step: i64,
    method: &'static str,
    session_id: String,
    token_hash: Vec<u8>,
    tenant_id: String,
    expires_at: i64,
    second_factor_at: Option<i64>,
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
    fn of(s: &TotpSignIn<'_>) -> Self {
        let a = s.audit;
        Self {
            user: s.user.to_string(),
            now: ms(s.session.created_at),
            challenge: s.challenge.to_string(),
            step: s.step,
            method: Method::Authenticator.as_str(),
            session_id: s.session.id.to_string(),
            token_hash: s.session_token_hash.to_vec(),
            tenant_id: s.session.tenant_id.to_string(),
            expires_at: ms(s.session.expires_at),
            second_factor_at: s.session.second_factor_at.map(ms),
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

/// The static identity under which diesel caches the prepared statement.
struct StatementId;

impl QueryId for Statement {
    type QueryId = StatementId;
    const HAS_STATIC_QUERY_ID: bool = true;
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
        out.push_bind_param::<BigInt, _>(&self.step)?;
        out.push_sql("::bigint AS step, ");
        out.push_bind_param::<Text, _>(self.method)?;
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
        out.push_sql("::bigint AS second_factor_at");
        out.push_sql(SQL_BODY);
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
/// webhook deliveries of its audit events (for the request to queue once it is done).
///
/// Errors: database errors only; every refusal is [`TotpSignInOutcome::Refused`] with nothing
/// written.
pub fn commit(conn: &mut DbConn, s: &TotpSignIn<'_>) -> StoreResult<(TotpSignInOutcome, Vec<DeliveryId>)> {
    let DbConn::Pg(pg) = conn else {
        return Ok((TotpSignInOutcome::Unsupported, Vec::new()));
    };
    let (accepted, hooks): (i64, Vec<String>) = Statement::of(s).get_result(pg)?;
    if accepted != 1 {
        return Ok((TotpSignInOutcome::Refused, Vec::new()));
    }
    let hooks = hooks.iter().map(|id| parse("delivery id", id)).collect::<StoreResult<Vec<_>>>()?;
    Ok((TotpSignInOutcome::Committed, hooks))
}
