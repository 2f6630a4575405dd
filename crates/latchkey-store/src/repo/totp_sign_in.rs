//! A TOTP sign-in committed in one statement on Postgres: the writes of a successful
//! `POST /api/v1/auth/2fa/verify` with `method: "authenticator"` (DESIGN.md section 1,
//! "Authenticator"), which the portable path sends as a transaction of about ten statements.
//!
//! One data-modifying `WITH` statement, in autocommit, so it is one round trip and one
//! commit: it locks the user (not blocked) and the challenge (still open) with
//! `SELECT … FOR UPDATE`, moves the enrollment's last accepted time step forward with a
//! conditional `UPDATE` (RFC 6238 section 5.2: a step is accepted at most once), and only
//! if that moved ends the challenge, clears the wrong-code counter and block, inserts the
//! session and appends the audit events. Either every write happens or none does; the locks
//! are those of the portable path (the user row first), so the two paths can run side by
//! side on one database. SQLite keeps the portable path: there is no round trip to save.

use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bytea, Nullable, Text};
use latchkey_core::{ChallengeId, Method, UserId};

use crate::DbConn;
use crate::error::StoreResult;
use crate::model::{AuditEvent, Session, ms};

/// The writes of one accepted TOTP code.
#[derive(Debug)]
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

const SQL: &str = "\
WITH locked_user AS (
    SELECT id FROM users
    WHERE id = $1 AND (otp_blocked_until IS NULL OR otp_blocked_until <= $2)
    FOR UPDATE
), locked_challenge AS (
    SELECT id FROM challenges
    WHERE id = $3 AND user_id = $1 AND purpose = 'sign_in' AND ended_at IS NULL AND expires_at > $2
    FOR UPDATE
), advanced AS (
    UPDATE enrollments SET last_step = $4
    WHERE user_id = (SELECT id FROM locked_user) AND method = $5
      AND (last_step IS NULL OR last_step < $4)
      AND EXISTS (SELECT 1 FROM locked_challenge)
    RETURNING user_id
), ended AS (
    UPDATE challenges SET ended_at = $2, pending_secret = NULL
    WHERE id = $3 AND EXISTS (SELECT 1 FROM advanced)
), verified AS (
    UPDATE users SET otp_failures = 0, otp_blocked_until = NULL, preferred_method = $5
    WHERE id = $1 AND EXISTS (SELECT 1 FROM advanced)
      AND (otp_failures <> 0 OR otp_blocked_until IS NOT NULL OR preferred_method IS DISTINCT FROM $5)
), session AS (
    INSERT INTO sessions (id, token_hash, tenant_id, user_id, created_at, expires_at, second_factor_at)
    SELECT $6, $7, $8, $1, $2, $9, $10 FROM advanced
), audit AS (
    INSERT INTO audit_events (id, tenant_id, at, actor_id, subject_id, kind, ip, user_agent, detail)
    SELECT e.id, e.tenant_id, e.at, e.actor_id, e.subject_id, e.kind, e.ip, e.user_agent, e.detail
    FROM advanced, unnest($11::text[], $12::text[], $13::bigint[], $14::text[], $15::text[], $16::text[],
                          $17::text[], $18::text[], $19::text[])
        AS e (id, tenant_id, at, actor_id, subject_id, kind, ip, user_agent, detail)
)
SELECT count(*) AS accepted FROM advanced";

#[derive(QueryableByName)]
struct Accepted {
    #[diesel(sql_type = BigInt)]
    accepted: i64,
}

/// Commits the sign-in `s` in one statement on Postgres.
///
/// Errors: database errors only; every refusal is [`TotpSignInOutcome::Refused`] with nothing
/// written.
pub fn commit(conn: &mut DbConn, s: &TotpSignIn<'_>) -> StoreResult<TotpSignInOutcome> {
    let DbConn::Pg(pg) = conn else {
        return Ok(TotpSignInOutcome::Unsupported);
    };
    let now = ms(s.session.created_at);
    let row: Accepted = diesel::sql_query(SQL)
        .bind::<Text, _>(s.user.to_string())
        .bind::<BigInt, _>(now)
        .bind::<Text, _>(s.challenge.to_string())
        .bind::<BigInt, _>(s.step)
        .bind::<Text, _>(Method::Authenticator.as_str())
        .bind::<Text, _>(s.session.id.to_string())
        .bind::<Bytea, _>(s.session_token_hash)
        .bind::<Text, _>(s.session.tenant_id.to_string())
        .bind::<BigInt, _>(ms(s.session.expires_at))
        .bind::<Nullable<BigInt>, _>(s.session.second_factor_at.map(ms))
        .bind::<Array<Text>, _>(s.audit.iter().map(|e| e.id.to_string()).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(s.audit.iter().map(|e| e.tenant_id.to_string()).collect::<Vec<_>>())
        .bind::<Array<BigInt>, _>(s.audit.iter().map(|e| ms(e.at)).collect::<Vec<_>>())
        .bind::<Array<Nullable<Text>>, _>(s.audit.iter().map(|e| e.actor_id.clone()).collect::<Vec<_>>())
        .bind::<Array<Nullable<Text>>, _>(s.audit.iter().map(|e| e.subject_id.clone()).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(s.audit.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>())
        .bind::<Array<Nullable<Text>>, _>(s.audit.iter().map(|e| e.ip.clone()).collect::<Vec<_>>())
        .bind::<Array<Nullable<Text>>, _>(s.audit.iter().map(|e| e.user_agent.clone()).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(s.audit.iter().map(|e| e.detail.to_string()).collect::<Vec<_>>())
        .get_result(pg)?;
    Ok(if row.accepted == 1 { TotpSignInOutcome::Committed } else { TotpSignInOutcome::Refused })
}
