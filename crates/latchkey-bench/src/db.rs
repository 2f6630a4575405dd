//! The benchmark's own Postgres database, and bulk loading of tenants, users, enrollments and
//! sessions straight into Latchkey's tables (multi-row `INSERT`s of 1,000 rows), so that
//! thousands of users cost seconds, not one argon2 hash each.

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};

use crate::BenchResult;

/// A database created for one run, dropped by [`Scratch::drop_now`].
#[derive(Debug)]
pub struct Scratch {
    admin_url: String,
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
}

impl Scratch {
    /// Creates `latchkey_bench_<random>` on the server of `server` (`postgres://user@host:port`).
    pub fn create(server: &str) -> BenchResult<Self> {
        let server = server.trim_end_matches('/');
        let admin_url = format!("{server}/postgres");
        let name = format!("latchkey_bench_{}", uuid::Uuid::now_v7().simple());
        let mut admin = PgConnection::establish(&admin_url).map_err(|e| format!("Postgres at {admin_url}: {e}"))?;
        admin.batch_execute(&format!("CREATE DATABASE {name}"))?;
        Ok(Self { url: format!("{server}/{name}"), admin_url, name })
    }

    /// A connection to the database.
    pub fn connect(&self) -> BenchResult<PgConnection> {
        Ok(PgConnection::establish(&self.url)?)
    }

    /// Drops the database (closing its connections).
    pub fn drop_now(&self) -> BenchResult<()> {
        let mut admin = PgConnection::establish(&self.admin_url)?;
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))?;
        Ok(())
    }
}

/// A SQL string literal.
pub fn text(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A SQL `bytea` literal.
pub fn bytea(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2 + 12);
    out.push_str("'\\x");
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out.push_str("'::bytea");
    out
}

/// An optional SQL value.
pub fn opt(value: Option<String>) -> String {
    value.unwrap_or_else(|| "NULL".to_owned())
}

/// Inserts `rows` (each a parenthesised tuple of SQL literals) into `table (columns)`,
/// 1,000 rows per statement.
pub fn insert_rows(
    conn: &mut PgConnection,
    table: &str,
    columns: &str,
    rows: impl IntoIterator<Item = String>,
) -> BenchResult<usize> {
    let mut count = 0;
    let mut batch: Vec<String> = Vec::with_capacity(1000);
    let mut flush = |batch: &mut Vec<String>| -> BenchResult<()> {
        if !batch.is_empty() {
            conn.batch_execute(&format!("INSERT INTO {table} ({columns}) VALUES {}", batch.join(",")))?;
            batch.clear();
        }
        Ok(())
    };
    for row in rows {
        batch.push(row);
        count += 1;
        if batch.len() == 1000 {
            flush(&mut batch)?;
        }
    }
    flush(&mut batch)?;
    Ok(count)
}

/// A tenant row.
#[derive(Debug, Clone)]
pub struct TenantRow {
    /// Id (UUIDv7 text).
    pub id: String,
    /// Slug.
    pub slug: String,
    /// 2FA on.
    pub two_factor: bool,
    /// Methods of every role (bit mask: 1 authenticator, 2 email).
    pub methods: i32,
}

/// Inserts tenants.
pub fn insert_tenants(conn: &mut PgConnection, tenants: &[TenantRow], now_ms: i64) -> BenchResult<usize> {
    insert_rows(
        conn,
        "tenants",
        "id, slug, name, two_factor_enabled, methods_admin, methods_supervisor, methods_agent, created_at, updated_at",
        tenants.iter().map(|t| {
            format!(
                "({}, {}, {}, {}, {m}, {m}, {m}, {now_ms}, {now_ms})",
                text(&t.id),
                text(&t.slug),
                text(&format!("Bench {}", t.slug)),
                t.two_factor,
                m = t.methods
            )
        }),
    )
}

/// A user row.
#[derive(Debug, Clone)]
pub struct UserRow {
    /// Id (UUIDv7 text).
    pub id: String,
    /// Tenant id.
    pub tenant_id: String,
    /// Email (normalised).
    pub email: String,
    /// `admin`, `supervisor` or `agent`.
    pub role: &'static str,
}

/// Inserts users, all with the same password hash.
pub fn insert_users(
    conn: &mut PgConnection,
    users: &[UserRow],
    password_hash: &str,
    now_ms: i64,
) -> BenchResult<usize> {
    let hash = text(password_hash);
    insert_rows(
        conn,
        "users",
        "id, tenant_id, email, name, role, password_hash, otp_failures, created_at, updated_at",
        users.iter().map(|u| {
            format!(
                "({}, {}, {}, 'Bench User', {}, {hash}, 0, {now_ms}, {now_ms})",
                text(&u.id),
                text(&u.tenant_id),
                text(&u.email),
                text(u.role)
            )
        }),
    )
}

/// An enrollment row.
#[derive(Debug, Clone)]
pub struct EnrollmentRow {
    /// User id.
    pub user_id: String,
    /// Tenant id.
    pub tenant_id: String,
    /// `authenticator` or `email`.
    pub method: &'static str,
    /// The sealed TOTP secret (authenticator only).
    pub secret_sealed: Option<Vec<u8>>,
}

/// Inserts enrollments (no TOTP step used yet).
pub fn insert_enrollments(conn: &mut PgConnection, rows: &[EnrollmentRow], now_ms: i64) -> BenchResult<usize> {
    insert_rows(
        conn,
        "enrollments",
        "user_id, method, tenant_id, secret_sealed, last_step, created_at",
        rows.iter().map(|e| {
            format!(
                "({}, {}, {}, {}, NULL, {now_ms})",
                text(&e.user_id),
                text(e.method),
                text(&e.tenant_id),
                opt(e.secret_sealed.as_deref().map(bytea))
            )
        }),
    )
}

/// A recovery-code row (one unused code).
#[derive(Debug, Clone)]
pub struct RecoveryCodeRow {
    /// Tenant id.
    pub tenant_id: String,
    /// User id.
    pub user_id: String,
    /// The keyed hash of the normalised code, bound to the user.
    pub code_hash: Vec<u8>,
}

/// Bulk-inserts unused recovery codes.
pub fn insert_recovery_codes(conn: &mut PgConnection, rows: &[RecoveryCodeRow], now_ms: i64) -> BenchResult<usize> {
    insert_rows(
        conn,
        "recovery_codes",
        "id, tenant_id, user_id, code_hash, created_at",
        rows.iter().map(|r| {
            format!(
                "({}, {}, {}, {}, {now_ms})",
                text(&uuid::Uuid::now_v7().to_string()),
                text(&r.tenant_id),
                text(&r.user_id),
                bytea(&r.code_hash)
            )
        }),
    )
}

/// A session row.
#[derive(Debug, Clone)]
pub struct SessionRow {
    /// Tenant id.
    pub tenant_id: String,
    /// User id.
    pub user_id: String,
    /// The keyed hash of its bearer token.
    pub token_hash: Vec<u8>,
}

/// Inserts sessions valid for a day.
pub fn insert_sessions(conn: &mut PgConnection, rows: &[SessionRow], now_ms: i64) -> BenchResult<usize> {
    let expires = now_ms + 86_400_000;
    insert_rows(
        conn,
        "sessions",
        "id, token_hash, tenant_id, user_id, created_at, expires_at, second_factor_at",
        rows.iter().map(|s| {
            format!(
                "({}, {}, {}, {}, {now_ms}, {expires}, NULL)",
                text(&uuid::Uuid::now_v7().to_string()),
                bytea(&s.token_hash),
                text(&s.tenant_id),
                text(&s.user_id)
            )
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals() {
        assert_eq!(text("o'clock"), "'o''clock'");
        assert_eq!(bytea(&[0, 255, 16]), "'\\x00ff10'::bytea");
        assert_eq!(opt(None), "NULL");
    }
}
