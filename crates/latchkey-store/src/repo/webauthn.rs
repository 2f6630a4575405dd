//! `webauthn_credentials`, `webauthn_handles` and `passkey_ceremonies`: the method `webauthn`
//! (DESIGN.md 5.1). Counters move only forward and ceremonies are taken once, each by one
//! conditional update.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use latchkey_core::{TenantId, UserId};

use crate::error::StoreResult;
use crate::model::{WebauthnCredential, at, at_opt, ms, parse};
use crate::schema::{passkey_ceremonies as pc, webauthn_credentials as wc, webauthn_handles as wh};
use crate::{DbConn, StoreError, per_backend};

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = wc)]
pub(crate) struct Row {
    tenant_id: String,
    credential_id: String,
    user_id: String,
    name: String,
    credential: String,
    sign_count: i64,
    transports: String,
    backup_eligible: bool,
    created_at: i64,
    last_used_at: Option<i64>,
}

impl Row {
    pub(crate) fn into_credential(self) -> StoreResult<WebauthnCredential> {
        Ok(WebauthnCredential {
            tenant_id: parse("tenant id", &self.tenant_id)?,
            credential_id: self.credential_id,
            user_id: parse("user id", &self.user_id)?,
            name: self.name,
            credential: self.credential,
            sign_count: self.sign_count,
            transports: serde_json::from_str(&self.transports).map_err(|_| StoreError::Corrupt("transports"))?,
            backup_eligible: self.backup_eligible,
            created_at: at(self.created_at)?,
            last_used_at: at_opt(self.last_used_at)?,
        })
    }
}

fn load(rows: Vec<Row>) -> StoreResult<Vec<WebauthnCredential>> {
    rows.into_iter().map(Row::into_credential).collect()
}

/// `user`'s credentials, oldest first.
pub fn for_user(conn: &mut DbConn, user: UserId) -> StoreResult<Vec<WebauthnCredential>> {
    load(
        wc::table
            .filter(wc::user_id.eq(user.to_string()))
            .order((wc::created_at.asc(), wc::credential_id.asc()))
            .select(Row::as_select())
            .load(conn)?,
    )
}

/// The credential `id` of `tenant` (any user's).
pub fn by_id(conn: &mut DbConn, tenant: TenantId, id: &str) -> StoreResult<Option<WebauthnCredential>> {
    wc::table
        .find((tenant.to_string(), id))
        .select(Row::as_select())
        .first(conn)
        .optional()?
        .map(Row::into_credential)
        .transpose()
}

/// How many credentials `user` has.
pub fn count_for_user(conn: &mut DbConn, user: UserId) -> StoreResult<i64> {
    Ok(wc::table.filter(wc::user_id.eq(user.to_string())).count().get_result(conn)?)
}

/// Stores a new credential; `false` when its id is already registered in the tenant (to
/// anyone), and nothing is stored.
pub fn insert(conn: &mut DbConn, cred: &WebauthnCredential) -> StoreResult<bool> {
    let transports = serde_json::to_string(&cred.transports).map_err(|_| StoreError::Corrupt("transports"))?;
    let row = Row {
        tenant_id: cred.tenant_id.to_string(),
        credential_id: cred.credential_id.clone(),
        user_id: cred.user_id.to_string(),
        name: cred.name.clone(),
        credential: cred.credential.clone(),
        sign_count: cred.sign_count,
        transports,
        backup_eligible: cred.backup_eligible,
        created_at: ms(cred.created_at),
        last_used_at: cred.last_used_at.map(ms),
    };
    let n = per_backend!(conn, c => diesel::insert_into(wc::table).values(&row).on_conflict_do_nothing().execute(c))?;
    Ok(n == 1)
}

/// Records an accepted assertion of `user`'s credential `id`: its new counter and record and
/// the time, only if the stored counter is still `seen` (what the check compared against), so
/// that of two assertions raced with one count at most one is recorded. Returns whether it was.
pub fn record_use(
    conn: &mut DbConn,
    user: UserId,
    id: &str,
    seen: i64,
    sign_count: i64,
    credential: &str,
    now: DateTime<Utc>,
) -> StoreResult<bool> {
    let n = diesel::update(
        wc::table
            .filter(wc::user_id.eq(user.to_string()))
            .filter(wc::credential_id.eq(id))
            .filter(wc::sign_count.eq(seen)),
    )
    .set((wc::sign_count.eq(sign_count), wc::credential.eq(credential), wc::last_used_at.eq(ms(now))))
    .execute(conn)?;
    Ok(n == 1)
}

/// Renames `user`'s credential `id`; returns whether he has it.
pub fn rename(conn: &mut DbConn, user: UserId, id: &str, name: &str) -> StoreResult<bool> {
    let n = diesel::update(wc::table.filter(wc::user_id.eq(user.to_string())).filter(wc::credential_id.eq(id)))
        .set(wc::name.eq(name))
        .execute(conn)?;
    Ok(n == 1)
}

/// Removes `user`'s credential `id`; returns whether he had it.
pub fn delete(conn: &mut DbConn, user: UserId, id: &str) -> StoreResult<bool> {
    let n = diesel::delete(wc::table.filter(wc::user_id.eq(user.to_string())).filter(wc::credential_id.eq(id)))
        .execute(conn)?;
    Ok(n == 1)
}

/// Removes every credential of `user` (a reset, or removing the method).
pub fn delete_for_user(conn: &mut DbConn, user: UserId) -> StoreResult<usize> {
    Ok(diesel::delete(wc::table.filter(wc::user_id.eq(user.to_string()))).execute(conn)?)
}

/// `user`'s WebAuthn user handle (base64url), if he has one.
pub fn handle_of(conn: &mut DbConn, user: UserId) -> StoreResult<Option<String>> {
    Ok(wh::table.find(user.to_string()).select(wh::handle).first(conn).optional()?)
}

/// Gives `user` the handle `handle` unless he has one; returns the handle he has afterwards.
pub fn ensure_handle(conn: &mut DbConn, tenant: TenantId, user: UserId, handle: &str) -> StoreResult<String> {
    per_backend!(conn, c => diesel::insert_into(wh::table)
        .values((wh::user_id.eq(user.to_string()), wh::tenant_id.eq(tenant.to_string()), wh::handle.eq(handle)))
        .on_conflict_do_nothing()
        .execute(c))?;
    handle_of(conn, user)?.ok_or(StoreError::Corrupt("webauthn handle"))
}

/// The user of `tenant` whose handle is `handle`.
pub fn user_of_handle(conn: &mut DbConn, tenant: TenantId, handle: &str) -> StoreResult<Option<UserId>> {
    let found: Option<String> = wh::table
        .filter(wh::tenant_id.eq(tenant.to_string()))
        .filter(wh::handle.eq(handle))
        .select(wh::user_id)
        .first(conn)
        .optional()?;
    found.map(|u| parse("user id", &u)).transpose()
}

/// A passwordless sign-in ceremony, as stored.
#[derive(Clone)]
pub struct PasskeyCeremony {
    /// Id (a UUID, the associated data of the sealed state).
    pub id: String,
    /// The tenant.
    pub tenant_id: TenantId,
    /// webauthn-rs's authentication state, sealed.
    pub state: Vec<u8>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for PasskeyCeremony {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasskeyCeremony")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .finish_non_exhaustive()
    }
}

/// Stores a passwordless ceremony under the keyed hash of its `passkey_token`.
pub fn insert_ceremony(conn: &mut DbConn, ceremony: &PasskeyCeremony, token_hash: &[u8]) -> StoreResult<()> {
    diesel::insert_into(pc::table)
        .values((
            pc::id.eq(&ceremony.id),
            pc::token_hash.eq(token_hash),
            pc::tenant_id.eq(ceremony.tenant_id.to_string()),
            pc::state.eq(&ceremony.state),
            pc::created_at.eq(ms(ceremony.created_at)),
            pc::expires_at.eq(ms(ceremony.expires_at)),
        ))
        .execute(conn)?;
    Ok(())
}

/// Takes the unexpired, unused ceremony whose token hashes to `token_hash`: marks it used in
/// one conditional update, so that it is taken at most once however many requests race.
pub fn take_ceremony(conn: &mut DbConn, token_hash: &[u8], now: DateTime<Utc>) -> StoreResult<Option<PasskeyCeremony>> {
    let found: Option<(String, String, Vec<u8>, i64, i64)> = pc::table
        .filter(pc::token_hash.eq(token_hash))
        .filter(pc::used_at.is_null())
        .filter(pc::expires_at.gt(ms(now)))
        .select((pc::id, pc::tenant_id, pc::state, pc::created_at, pc::expires_at))
        .first(conn)
        .optional()?;
    let Some((id, tenant, state, created_at, expires_at)) = found else { return Ok(None) };
    let n =
        diesel::update(pc::table.find(&id).filter(pc::used_at.is_null())).set(pc::used_at.eq(ms(now))).execute(conn)?;
    if n != 1 {
        return Ok(None);
    }
    Ok(Some(PasskeyCeremony {
        id,
        tenant_id: parse("tenant id", &tenant)?,
        state,
        created_at: at(created_at)?,
        expires_at: at(expires_at)?,
    }))
}

/// Deletes ceremonies that expired before `before` (housekeeping).
/// At most `limit` rows, one batch (the caller repeats until fewer come back, so that no
/// statement deletes, locks or logs much at once).
pub fn purge_expired_ceremonies(conn: &mut DbConn, before: DateTime<Utc>, limit: i64) -> StoreResult<usize> {
    let expired = diesel::alias!(crate::schema::passkey_ceremonies as expired);
    let batch = expired.filter(expired.field(pc::expires_at).le(ms(before))).select(expired.field(pc::id)).limit(limit);
    Ok(diesel::delete(pc::table.filter(pc::id.eq_any(batch))).execute(conn)?)
}
