//! `challenges`: sign-in challenges and enablement setups, found by the keyed hash of their
//! token.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use latchkey_core::{ChallengeId, MethodSet, SessionId, TenantId, UserId};

use super::enrollments::Row as EnrollmentRow;
use super::users::Row as UserRow;
use crate::DbConn;
use crate::error::StoreResult;
use crate::model::{
    Challenge, ChallengePurpose, Enrollment, NextAction, User, WebauthnCredential, at, at_opt, ms, parse, parse_opt,
};
use crate::schema::challenges as c;

#[derive(Queryable, Selectable)]
#[diesel(table_name = c)]
struct Row {
    id: String,
    tenant_id: String,
    user_id: String,
    purpose: String,
    next_action: String,
    methods: i32,
    session_id: Option<String>,
    pending_secret: Option<Vec<u8>>,
    created_at: i64,
    expires_at: i64,
    ended_at: Option<i64>,
}

impl Row {
    fn into_challenge(self) -> StoreResult<Challenge> {
        Ok(Challenge {
            id: parse("challenge id", &self.id)?,
            tenant_id: parse("tenant id", &self.tenant_id)?,
            user_id: parse("user id", &self.user_id)?,
            purpose: parse::<ChallengePurpose>("purpose", &self.purpose)?,
            next: parse::<NextAction>("next action", &self.next_action)?,
            methods: MethodSet::from_bits(self.methods),
            session_id: parse_opt("session id", self.session_id.as_deref())?,
            pending_secret: self.pending_secret,
            created_at: at(self.created_at)?,
            expires_at: at(self.expires_at)?,
            ended_at: at_opt(self.ended_at)?,
        })
    }
}

/// Stores a challenge under the keyed hash of its token.
pub fn insert(conn: &mut DbConn, ch: &Challenge, token_hash: &[u8]) -> StoreResult<()> {
    diesel::insert_into(c::table)
        .values((
            c::id.eq(ch.id.to_string()),
            c::token_hash.eq(token_hash.to_vec()),
            c::tenant_id.eq(ch.tenant_id.to_string()),
            c::user_id.eq(ch.user_id.to_string()),
            c::purpose.eq(ch.purpose.as_str()),
            c::next_action.eq(ch.next.as_str()),
            c::methods.eq(ch.methods.bits()),
            c::session_id.eq(ch.session_id.map(|s| s.to_string())),
            c::pending_secret.eq(ch.pending_secret.clone()),
            c::created_at.eq(ms(ch.created_at)),
            c::expires_at.eq(ms(ch.expires_at)),
            c::ended_at.eq(ch.ended_at.map(ms)),
        ))
        .execute(conn)?;
    Ok(())
}

/// The open (unexpired, not ended) challenge whose token hashes to `token_hash`.
pub fn open_by_token_hash(conn: &mut DbConn, token_hash: &[u8], now: DateTime<Utc>) -> StoreResult<Option<Challenge>> {
    c::table
        .filter(c::token_hash.eq(token_hash.to_vec()))
        .filter(c::ended_at.is_null())
        .filter(c::expires_at.gt(ms(now)))
        .select(Row::as_select())
        .first(conn)
        .optional()?
        .map(Row::into_challenge)
        .transpose()
}

/// The open challenge whose token hashes to `token_hash`, with its user (who must belong to
/// the challenge's tenant), in one query.
pub fn open_with_user_by_token_hash(
    conn: &mut DbConn,
    token_hash: &[u8],
    now: DateTime<Utc>,
) -> StoreResult<Option<(Challenge, User)>> {
    use crate::schema::users as u;
    let found: Option<(Row, UserRow)> = c::table
        .inner_join(u::table.on(u::id.eq(c::user_id).and(u::tenant_id.eq(c::tenant_id))))
        .filter(c::token_hash.eq(token_hash.to_vec()))
        .filter(c::ended_at.is_null())
        .filter(c::expires_at.gt(ms(now)))
        .select((Row::as_select(), UserRow::as_select()))
        .first(conn)
        .optional()?;
    found.map(|(ch, user)| Ok((ch.into_challenge()?, user.into_user()?))).transpose()
}

/// What a passkey verification at sign-in reads before it checks the assertion, in one
/// query ([`open_for_assertion_by_token_hash`]).
pub struct OpenForAssertion {
    /// The open challenge.
    pub challenge: Challenge,
    /// Its user.
    pub user: User,
    /// The user's enrollments (at most one per method).
    pub enrollments: Vec<Enrollment>,
    /// The sealed WebAuthn ceremony on the challenge, if one was started.
    pub ceremony: Option<Vec<u8>>,
    /// The user's credential of the id the assertion names, if he has it.
    pub credential: Option<WebauthnCredential>,
}

/// [`open_with_user_by_token_hash`] with the user's enrollments, in one query (a left join
/// of `enrollments`: one row per enrollment, at most one per method): what a TOTP
/// verification reads before it checks the code, one round trip instead of two (issue 17).
/// The enrollments are as the query saw them, unlocked: a write that relies on them must
/// recheck its condition in the statement (as `sign_in_at_once` does with the time step).
pub fn open_with_user_and_enrollments_by_token_hash(
    conn: &mut DbConn,
    token_hash: &[u8],
    now: DateTime<Utc>,
) -> StoreResult<Option<(Challenge, User, Vec<Enrollment>)>> {
    use crate::schema::enrollments as e;
    use crate::schema::users as u;
    let rows: Vec<(Row, UserRow, Option<EnrollmentRow>)> = c::table
        .inner_join(u::table.on(u::id.eq(c::user_id).and(u::tenant_id.eq(c::tenant_id))))
        .left_join(e::table.on(e::user_id.eq(c::user_id)))
        .filter(c::token_hash.eq(token_hash.to_vec()))
        .filter(c::ended_at.is_null())
        .filter(c::expires_at.gt(ms(now)))
        .select((Row::as_select(), UserRow::as_select(), Option::<EnrollmentRow>::as_select()))
        .load(conn)?;
    let mut rows = rows.into_iter();
    let Some((ch, user, first)) = rows.next() else { return Ok(None) };
    let enrollments = first
        .into_iter()
        .chain(rows.filter_map(|(_, _, en)| en))
        .map(EnrollmentRow::into_enrollment)
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(Some((ch.into_challenge()?, user.into_user()?, enrollments)))
}

/// [`open_with_user_and_enrollments_by_token_hash`] with what the one-statement passkey
/// sign-in needs before it checks the assertion (`sign_in_at_once`), in the same query, so
/// that a passkey verification is one read and one write (issue 17): the challenge's
/// ceremony and the user's credential `credential_id` (a left join). As the query saw them,
/// unlocked: the statement rechecks the ceremony and the counter. (TOTP and recovery codes
/// keep the narrower query: the wider one cost a TOTP verification about 9 % in the
/// benchmark.)
pub fn open_for_assertion_by_token_hash(
    conn: &mut DbConn,
    token_hash: &[u8],
    now: DateTime<Utc>,
    credential_id: &str,
) -> StoreResult<Option<OpenForAssertion>> {
    use super::webauthn::Row as CredentialRow;
    use crate::schema::enrollments as e;
    use crate::schema::users as u;
    use crate::schema::webauthn_credentials as wc;
    type Joined = (Row, UserRow, Option<EnrollmentRow>, Option<Vec<u8>>, Option<CredentialRow>);
    let rows: Vec<Joined> = c::table
        .inner_join(u::table.on(u::id.eq(c::user_id).and(u::tenant_id.eq(c::tenant_id))))
        .left_join(e::table.on(e::user_id.eq(c::user_id)))
        .left_join(wc::table.on(wc::user_id.eq(c::user_id).and(wc::credential_id.eq(credential_id.to_owned()))))
        .filter(c::token_hash.eq(token_hash.to_vec()))
        .filter(c::ended_at.is_null())
        .filter(c::expires_at.gt(ms(now)))
        .select((
            Row::as_select(),
            UserRow::as_select(),
            Option::<EnrollmentRow>::as_select(),
            c::ceremony,
            Option::<CredentialRow>::as_select(),
        ))
        .load(conn)?;
    let mut rows = rows.into_iter();
    let Some((ch, user, first, ceremony, credential)) = rows.next() else { return Ok(None) };
    let enrollments = first
        .into_iter()
        .chain(rows.filter_map(|(_, _, en, ..)| en))
        .map(EnrollmentRow::into_enrollment)
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(Some(OpenForAssertion {
        challenge: ch.into_challenge()?,
        user: user.into_user()?,
        enrollments,
        ceremony,
        credential: credential.map(CredentialRow::into_credential).transpose()?,
    }))
}

/// Re-reads a challenge by id (inside a transaction, after taking the user's lock).
pub fn by_id(conn: &mut DbConn, id: ChallengeId) -> StoreResult<Option<Challenge>> {
    c::table.find(id.to_string()).select(Row::as_select()).first(conn).optional()?.map(Row::into_challenge).transpose()
}

/// Stores the sealed secret of an authenticator being set up (replacing an earlier one).
pub fn set_pending_secret(conn: &mut DbConn, id: ChallengeId, sealed: &[u8]) -> StoreResult<()> {
    diesel::update(c::table.find(id.to_string())).set(c::pending_secret.eq(Some(sealed.to_vec()))).execute(conn)?;
    Ok(())
}

/// Stores the sealed state of a WebAuthn ceremony on an open challenge (replacing an earlier
/// one: only the newest ceremony of a challenge can finish). Returns whether the challenge
/// was still open.
pub fn set_ceremony(conn: &mut DbConn, id: ChallengeId, sealed: &[u8]) -> StoreResult<bool> {
    let n = diesel::update(c::table.find(id.to_string()).filter(c::ended_at.is_null()))
        .set(c::ceremony.eq(Some(sealed.to_vec())))
        .execute(conn)?;
    Ok(n == 1)
}

/// Takes the sealed ceremony state of a challenge: returns it and clears it in one
/// conditional update, so that one ceremony is finished at most once however many requests
/// race (`None` when there is none, or another request took it).
pub fn take_ceremony(conn: &mut DbConn, id: ChallengeId) -> StoreResult<Option<Vec<u8>>> {
    let Some(sealed) = ceremony_of(conn, id)? else {
        return Ok(None);
    };
    let n = diesel::update(c::table.find(id.to_string()).filter(c::ceremony.eq(sealed.clone())))
        .set(c::ceremony.eq(None::<Vec<u8>>))
        .execute(conn)?;
    Ok((n == 1).then_some(sealed))
}

/// The sealed ceremony state on challenge `id`, left in place; `None` when it has none or
/// does not exist.
pub fn ceremony_of(conn: &mut DbConn, id: ChallengeId) -> StoreResult<Option<Vec<u8>>> {
    Ok(c::table.find(id.to_string()).select(c::ceremony).first::<Option<Vec<u8>>>(conn).optional()?.flatten())
}

/// Ends a challenge if it is still open; returns whether this call ended it.
pub fn end(conn: &mut DbConn, id: ChallengeId, now: DateTime<Utc>) -> StoreResult<bool> {
    let n = diesel::update(c::table.find(id.to_string()).filter(c::ended_at.is_null()))
        .set((c::ended_at.eq(ms(now)), c::pending_secret.eq(None::<Vec<u8>>), c::ceremony.eq(None::<Vec<u8>>)))
        .execute(conn)?;
    Ok(n == 1)
}

/// Ends every open challenge of `user` except `keep`.
pub fn end_for_user(
    conn: &mut DbConn,
    user: UserId,
    keep: Option<ChallengeId>,
    now: DateTime<Utc>,
) -> StoreResult<usize> {
    let keep = keep.map(|k| k.to_string()).unwrap_or_default();
    Ok(diesel::update(
        c::table.filter(c::user_id.eq(user.to_string())).filter(c::ended_at.is_null()).filter(c::id.ne(keep)),
    )
    .set((c::ended_at.eq(ms(now)), c::pending_secret.eq(None::<Vec<u8>>), c::ceremony.eq(None::<Vec<u8>>)))
    .execute(conn)?)
}

/// Ends every open challenge of `tenant` (of any purpose) except `keep`: found through the
/// live challenges (index `challenges_expiry`; no index holds `ended_at`, so that ending a
/// challenge is a HOT update), whose number is bounded by the sign-in rate times the
/// challenge lifetime.
pub fn end_for_tenant(
    conn: &mut DbConn,
    tenant: TenantId,
    keep: Option<ChallengeId>,
    now: DateTime<Utc>,
) -> StoreResult<usize> {
    let keep = keep.map(|k| k.to_string()).unwrap_or_default();
    Ok(diesel::update(
        c::table
            .filter(c::expires_at.gt(ms(now)))
            .filter(c::tenant_id.eq(tenant.to_string()))
            .filter(c::ended_at.is_null())
            .filter(c::id.ne(keep)),
    )
    .set((c::ended_at.eq(ms(now)), c::pending_secret.eq(None::<Vec<u8>>), c::ceremony.eq(None::<Vec<u8>>)))
    .execute(conn)?)
}

/// Deletes challenges that expired before `before` (housekeeping).
/// At most `limit` rows, one batch (the caller repeats until fewer come back, so that no
/// statement deletes, locks or logs much at once).
pub fn purge_expired(conn: &mut DbConn, before: DateTime<Utc>, limit: i64) -> StoreResult<usize> {
    let expired = diesel::alias!(crate::schema::challenges as expired);
    let batch = expired.filter(expired.field(c::expires_at).le(ms(before))).select(expired.field(c::id)).limit(limit);
    Ok(diesel::delete(c::table.filter(c::id.eq_any(batch))).execute(conn)?)
}

/// The newest open challenge of `purpose` bound to `session` of `user` (a step-up in
/// progress); found through the user's challenges (index `challenges_user`).
pub fn open_for_session(
    conn: &mut DbConn,
    user: UserId,
    session: SessionId,
    purpose: ChallengePurpose,
    now: DateTime<Utc>,
) -> StoreResult<Option<Challenge>> {
    c::table
        .filter(c::user_id.eq(user.to_string()))
        .filter(c::session_id.eq(session.to_string()))
        .filter(c::purpose.eq(purpose.as_str()))
        .filter(c::ended_at.is_null())
        .filter(c::expires_at.gt(ms(now)))
        .order(c::id.desc())
        .select(Row::as_select())
        .first(conn)
        .optional()?
        .map(Row::into_challenge)
        .transpose()
}
