//! Every sealed value of the database, column by column, for `latchkey keys rotate` and
//! `latchkey keys status` (DESIGN.md 5.8): listing in batches (keyset pagination, so a
//! rotation can resume anywhere), re-sealing one value by an atomic conditional update (safe
//! while other processes write), and counting values per key id in the database.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Binary, Nullable};

use crate::error::StoreResult;
use crate::schema::{challenges as ch, deliveries as d, enrollments as e, passkey_ceremonies as pk, webhooks as w};
use crate::{DbConn, per_backend};

/// A column that holds sealed values, and how its associated data is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedColumn {
    /// `enrollments.secret_sealed`: a user's TOTP secret (AAD `totp:<user id>`).
    EnrollmentSecret,
    /// `challenges.pending_secret`: a TOTP secret being set up (AAD `pending-totp:<challenge id>`).
    PendingSecret,
    /// `deliveries.payload`: a mail on its way (AAD `delivery:<id>`).
    DeliveryPayload,
    /// `webhooks.secret_sealed`: an endpoint's signing secret (AAD `webhook-secret:<id>`).
    WebhookSecret,
    /// `challenges.ceremony`: a WebAuthn ceremony's state (AAD `webauthn-ceremony:<challenge id>`).
    ChallengeCeremony,
    /// `passkey_ceremonies.state`: a passwordless ceremony's state (AAD `passkey-ceremony:<id>`).
    PasskeyCeremony,
}

/// One sealed value: the key of its row, the owner its associated data names, the value.
#[derive(Clone)]
pub struct SealedRow {
    /// The row's key (for enrollments: user id and method, separated by a space).
    pub key: String,
    /// The id the associated data binds the value to.
    pub owner: String,
    /// The sealed bytes.
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for SealedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedRow").field("key", &self.key).finish_non_exhaustive()
    }
}

/// Number of sealed values of a column per key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCount {
    /// The key id recorded in the values (8 bytes), `None` for values of the first format.
    pub key_id: Option<Vec<u8>>,
    /// How many.
    pub count: i64,
}

#[derive(QueryableByName)]
struct GroupRow {
    #[diesel(sql_type = Nullable<Binary>)]
    kid: Option<Vec<u8>>,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

impl SealedColumn {
    /// Every sealed column.
    pub const ALL: [SealedColumn; 6] = [
        SealedColumn::EnrollmentSecret,
        SealedColumn::PendingSecret,
        SealedColumn::DeliveryPayload,
        SealedColumn::WebhookSecret,
        SealedColumn::ChallengeCeremony,
        SealedColumn::PasskeyCeremony,
    ];

    /// `table.column`.
    pub fn name(self) -> &'static str {
        match self {
            SealedColumn::EnrollmentSecret => "enrollments.secret_sealed",
            SealedColumn::PendingSecret => "challenges.pending_secret",
            SealedColumn::DeliveryPayload => "deliveries.payload",
            SealedColumn::WebhookSecret => "webhooks.secret_sealed",
            SealedColumn::ChallengeCeremony => "challenges.ceremony",
            SealedColumn::PasskeyCeremony => "passkey_ceremonies.state",
        }
    }

    /// The associated data a value of this column owned by `owner` is sealed with.
    pub fn aad(self, owner: &str) -> Vec<u8> {
        match self {
            SealedColumn::EnrollmentSecret => format!("totp:{owner}"),
            SealedColumn::PendingSecret => format!("pending-totp:{owner}"),
            SealedColumn::DeliveryPayload => format!("delivery:{owner}"),
            SealedColumn::WebhookSecret => format!("webhook-secret:{owner}"),
            SealedColumn::ChallengeCeremony => format!("webauthn-ceremony:{owner}"),
            SealedColumn::PasskeyCeremony => format!("passkey-ceremony:{owner}"),
        }
        .into_bytes()
    }

    /// At most `limit` values of the column whose row key is after `after`, in key order.
    pub fn batch(self, conn: &mut DbConn, after: Option<&str>, limit: i64) -> StoreResult<Vec<SealedRow>> {
        let after = after.unwrap_or("");
        Ok(match self {
            SealedColumn::EnrollmentSecret => {
                let (user, method) = after.split_once(' ').unwrap_or((after, ""));
                e::table
                    .filter(e::secret_sealed.is_not_null())
                    .filter(e::user_id.gt(user).or(e::user_id.eq(user).and(e::method.gt(method))))
                    .order((e::user_id, e::method))
                    .limit(limit)
                    .select((e::user_id, e::method, e::secret_sealed))
                    .load::<(String, String, Option<Vec<u8>>)>(conn)?
                    .into_iter()
                    .filter_map(|(u, m, s)| s.map(|sealed| SealedRow { key: format!("{u} {m}"), owner: u, sealed }))
                    .collect()
            }
            SealedColumn::PendingSecret => ch::table
                .filter(ch::pending_secret.is_not_null())
                .filter(ch::id.gt(after))
                .order(ch::id)
                .limit(limit)
                .select((ch::id, ch::pending_secret))
                .load::<(String, Option<Vec<u8>>)>(conn)?
                .into_iter()
                .filter_map(|(id, s)| s.map(|sealed| SealedRow { key: id.clone(), owner: id, sealed }))
                .collect(),
            SealedColumn::DeliveryPayload => d::table
                .filter(d::payload.is_not_null())
                .filter(d::id.gt(after))
                .order(d::id)
                .limit(limit)
                .select((d::id, d::payload))
                .load::<(String, Option<Vec<u8>>)>(conn)?
                .into_iter()
                .filter_map(|(id, s)| s.map(|sealed| SealedRow { key: id.clone(), owner: id, sealed }))
                .collect(),
            SealedColumn::WebhookSecret => w::table
                .filter(w::id.gt(after))
                .order(w::id)
                .limit(limit)
                .select((w::id, w::secret_sealed))
                .load::<(String, Vec<u8>)>(conn)?
                .into_iter()
                .map(|(id, sealed)| SealedRow { key: id.clone(), owner: id, sealed })
                .collect(),
            SealedColumn::ChallengeCeremony => ch::table
                .filter(ch::ceremony.is_not_null())
                .filter(ch::id.gt(after))
                .order(ch::id)
                .limit(limit)
                .select((ch::id, ch::ceremony))
                .load::<(String, Option<Vec<u8>>)>(conn)?
                .into_iter()
                .filter_map(|(id, s)| s.map(|sealed| SealedRow { key: id.clone(), owner: id, sealed }))
                .collect(),
            SealedColumn::PasskeyCeremony => pk::table
                .filter(pk::id.gt(after))
                .order(pk::id)
                .limit(limit)
                .select((pk::id, pk::state))
                .load::<(String, Vec<u8>)>(conn)?
                .into_iter()
                .map(|(id, sealed)| SealedRow { key: id.clone(), owner: id, sealed })
                .collect(),
        })
    }

    /// Replaces the value of `row` by `resealed`, only if it is still `row.sealed` (another
    /// process may have changed it meanwhile: then it is left alone); whether it was replaced.
    pub fn replace(self, conn: &mut DbConn, row: &SealedRow, resealed: &[u8]) -> StoreResult<bool> {
        let old = row.sealed.as_slice();
        let n = match self {
            SealedColumn::EnrollmentSecret => {
                let (user, method) = row.key.split_once(' ').unwrap_or((row.key.as_str(), ""));
                diesel::update(
                    e::table.filter(e::user_id.eq(user)).filter(e::method.eq(method)).filter(e::secret_sealed.eq(old)),
                )
                .set(e::secret_sealed.eq(resealed))
                .execute(conn)?
            }
            SealedColumn::PendingSecret => {
                diesel::update(ch::table.filter(ch::id.eq(&row.key)).filter(ch::pending_secret.eq(old)))
                    .set(ch::pending_secret.eq(resealed))
                    .execute(conn)?
            }
            SealedColumn::DeliveryPayload => {
                diesel::update(d::table.filter(d::id.eq(&row.key)).filter(d::payload.eq(old)))
                    .set(d::payload.eq(resealed))
                    .execute(conn)?
            }
            SealedColumn::WebhookSecret => {
                diesel::update(w::table.filter(w::id.eq(&row.key)).filter(w::secret_sealed.eq(old)))
                    .set(w::secret_sealed.eq(resealed))
                    .execute(conn)?
            }
            SealedColumn::ChallengeCeremony => {
                diesel::update(ch::table.filter(ch::id.eq(&row.key)).filter(ch::ceremony.eq(old)))
                    .set(ch::ceremony.eq(resealed))
                    .execute(conn)?
            }
            SealedColumn::PasskeyCeremony => {
                diesel::update(pk::table.filter(pk::id.eq(&row.key)).filter(pk::state.eq(old)))
                    .set(pk::state.eq(resealed))
                    .execute(conn)?
            }
        };
        Ok(n == 1)
    }

    /// The values of the column counted per recorded key id, by the database (one grouped
    /// scan; no value leaves it). `magic` is the first bytes of a value that records its key
    /// and `id_len` the key id's length; other values count under `None`.
    pub fn count_by_key(self, conn: &mut DbConn, magic: &[u8], id_len: usize) -> StoreResult<Vec<KeyCount>> {
        let (table, column) = self.name().split_once('.').unwrap_or(("", ""));
        let hex: String = magic.iter().map(|b| format!("{b:02x}")).collect();
        let lit = match conn {
            DbConn::Pg(_) => format!("'\\x{hex}'::bytea"),
            DbConn::Sqlite(_) => format!("X'{hex}'"),
        };
        let m = magic.len();
        // Table, column and the literal come from constants: nothing here is user input.
        let sql = format!(
            "SELECT CASE WHEN length({column}) >= {min} AND substr({column}, 1, {m}) = {lit} \
             THEN substr({column}, {start}, {id_len}) ELSE NULL END AS kid, COUNT(*) AS n \
             FROM {table} WHERE {column} IS NOT NULL GROUP BY 1",
            min = m + id_len + 24,
            start = m + 1,
        );
        let rows: Vec<GroupRow> = per_backend!(conn, c => diesel::sql_query(&sql).load::<GroupRow>(c))?;
        Ok(rows.into_iter().map(|r| KeyCount { key_id: r.kid, count: r.n }).collect())
    }
}
