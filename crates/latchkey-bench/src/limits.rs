//! The machine's limits, measured in the same run as the service: L1 (Postgres: one-row
//! conditional `UPDATE` per transaction with pgbench) and L3 (argon2id on every core). L2, the
//! bare actix-web hello-world, is in [`crate::service::run_hello`] and driven by the same load
//! generator as the service.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diesel::PgConnection;
use diesel::connection::SimpleConnection;
use latchkey_core::password::{PasswordHasher, PasswordParams};
use serde_json::{Value, json};

use crate::BenchResult;

/// The result of pgbench.
#[derive(Debug, Clone)]
pub struct Pgbench {
    /// Transactions per second (without connection time).
    pub tps: f64,
    /// Mean latency in ms.
    pub latency_avg_ms: f64,
    /// The script run.
    pub script: String,
}

impl Pgbench {
    /// As JSON.
    pub fn json(&self) -> Value {
        json!({"tps": crate::stats::round3(self.tps), "latency_avg_ms": self.latency_avg_ms, "script": self.script})
    }
}

/// Rows of the L1 tables.
const L1_ROWS: usize = 20_000;

/// Creates `bench_l1`, a copy of the `enrollments` table's shape (same primary key, text ids),
/// with `L1_ROWS` rows; and the `lv_*` copies of the tables a TOTP verification touches, for
/// the replay of its statements ([`L1V_SCRIPT`]).
pub fn prepare_l1(conn: &mut PgConnection) -> BenchResult<()> {
    conn.batch_execute(&format!(
        "CREATE TABLE bench_l1 (LIKE enrollments INCLUDING ALL);
         INSERT INTO bench_l1 (user_id, method, tenant_id, secret_sealed, last_step, created_at)
           SELECT '0190a0c2-7d4e-7000-8000-' || lpad(g::text, 12, '0'), 'authenticator', 'bench', NULL, 0, 0
           FROM generate_series(1, {L1_ROWS}) g;
         CREATE TABLE lv_users (LIKE users INCLUDING ALL);
         CREATE TABLE lv_challenges (LIKE challenges INCLUDING ALL);
         CREATE TABLE lv_enrollments (LIKE enrollments INCLUDING ALL);
         CREATE TABLE lv_sessions (LIKE sessions INCLUDING ALL);
         CREATE TABLE lv_audit (LIKE audit_events INCLUDING ALL);
         INSERT INTO lv_users (id, tenant_id, email, name, role, password_hash, otp_failures, created_at, updated_at)
           SELECT 'u-' || g, 'bench', 'u' || g || '@bench.test', 'Bench', 'agent', 'x', 0, 0, 0
           FROM generate_series(1, {L1_ROWS}) g;
         INSERT INTO lv_challenges (id, token_hash, tenant_id, user_id, purpose, next_action, methods, created_at, expires_at)
           SELECT 'c-' || g, sha256(g::text::bytea), 'bench', 'u-' || g, 'sign_in', 'verify', 1, 0, 9000000000000000000
           FROM generate_series(1, {L1_ROWS}) g;
         INSERT INTO lv_enrollments (user_id, method, tenant_id, secret_sealed, last_step, created_at)
           SELECT 'u-' || g, 'authenticator', 'bench', sha256(g::text::bytea), 0, 0
           FROM generate_series(1, {L1_ROWS}) g;"
    ))?;
    for table in ["bench_l1", "lv_users", "lv_challenges", "lv_enrollments"] {
        conn.batch_execute(&format!("VACUUM ANALYZE {table}"))?;
    }
    Ok(())
}

/// L1: one conditional one-row `UPDATE` per transaction (the statement behind TOTP replay
/// protection).
pub const L1_SCRIPT: &str = "\\set u random(1, 20000)
UPDATE bench_l1 SET last_step = last_step + 1 \
WHERE user_id = '0190a0c2-7d4e-7000-8000-' || lpad(:u::text, 12, '0') AND method = 'authenticator' \
AND last_step < 9000000000000000000;
";

/// L1v: the statements one successful TOTP verification sends on Postgres, in the same
/// order, on copies of the tables: the read of the challenge with its user and enrollments
/// (one query since issue 17), then the one data-modifying statement that commits the sign-in
/// (`latchkey_store::repo::sign_in_at_once`), in autocommit. The database's own ceiling for
/// `verify`, without HTTP, Rust or the pool. Keep it in step with `Service::verify` (log the
/// service's statements with `log_statement = all`). (No colon in the JSON details: pgbench
/// would take it for a variable.)
pub const L1V_SCRIPT: &str = "\\set n random(1, 20000)
SELECT c.*, u.*, e.* FROM lv_challenges c JOIN lv_users u ON u.id = c.user_id AND u.tenant_id = c.tenant_id \
LEFT JOIN lv_enrollments e ON e.user_id = c.user_id \
WHERE c.token_hash = sha256(:n::text::bytea) AND c.ended_at IS NULL AND c.expires_at > 0;
WITH locked_user AS ( \
  SELECT id FROM lv_users WHERE id = 'u-' || :n AND (otp_blocked_until IS NULL OR otp_blocked_until <= 0) FOR UPDATE \
), locked_challenge AS ( \
  SELECT id FROM lv_challenges WHERE id = 'c-' || :n AND user_id = 'u-' || :n AND purpose = 'sign_in' \
  AND ended_at IS NULL AND expires_at > 0 FOR UPDATE \
), advanced AS ( \
  UPDATE lv_enrollments SET last_step = last_step + 1 WHERE user_id = (SELECT id FROM locked_user) \
  AND method = 'authenticator' AND (last_step IS NULL OR last_step < 9000000000000000000) \
  AND EXISTS (SELECT 1 FROM locked_challenge) RETURNING user_id \
), ended AS ( \
  UPDATE lv_challenges SET ended_at = NULL, pending_secret = NULL WHERE id = 'c-' || :n AND EXISTS (SELECT 1 FROM advanced) \
), verified AS ( \
  UPDATE lv_users SET otp_failures = 0, otp_blocked_until = NULL, preferred_method = 'authenticator' \
  WHERE id = 'u-' || :n AND EXISTS (SELECT 1 FROM advanced) \
), session AS ( \
  INSERT INTO lv_sessions SELECT gen_random_uuid()::text, sha256(gen_random_uuid()::text::bytea), 'bench', user_id, 0, 1, 0 \
  FROM advanced \
), audit AS ( \
  INSERT INTO lv_audit SELECT gen_random_uuid()::text, 'bench', 0, user_id, user_id, e.kind, '127.0.0.1', 'latchkey-bench', \
  e.detail FROM advanced, (VALUES ('signed_in', \
  json_build_object('second_factor', true, 'method', 'authenticator')::text)) AS e (kind, detail) \
) SELECT count(*) FROM advanced;
";

fn parse_number_after(text: &str, key: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.trim_start().starts_with(key))?;
    line.split('=').nth(1)?.split_whitespace().next()?.parse().ok()
}

/// Runs pgbench with `script` (saved as `name.sql` in `dir`): `clients` clients, prepared
/// statements, `synchronous_commit = on`, for `secs` seconds.
pub fn pgbench(url: &str, clients: usize, secs: u64, dir: &Path, name: &str, script: &str) -> BenchResult<Pgbench> {
    let file = dir.join(format!("{name}.sql"));
    std::fs::write(&file, script)?;
    let threads = std::thread::available_parallelism().map_or(2, usize::from).min(clients.max(1));
    let out = Command::new("pgbench")
        .env("PGOPTIONS", "-c synchronous_commit=on")
        .args(["-n", "-M", "prepared", "-c", &clients.to_string(), "-j", &threads.to_string()])
        .args(["-T", &secs.to_string(), "-f"])
        .arg(&file)
        .arg(url)
        .output()
        .map_err(|e| format!("pgbench: {e} (install it: apt-get install postgresql-client)"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("pgbench failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let tps = parse_number_after(&stdout, "tps").ok_or_else(|| format!("no tps in pgbench output:\n{stdout}"))?;
    let latency_avg_ms = parse_number_after(&stdout, "latency average").unwrap_or(0.0);
    Ok(Pgbench { tps, latency_avg_ms, script: script.to_owned() })
}

/// The result of the argon2id measurement.
#[derive(Debug, Clone, Copy)]
pub struct Argon2Rate {
    /// Verifications per second, all threads together.
    pub per_second: f64,
    /// Threads used (one per core).
    pub threads: usize,
    /// Mean time of one verification on one thread, in ms.
    pub single_ms: f64,
}

/// L3: argon2id verifications per second at `params` on one thread per core, for `secs`.
pub fn argon2(params: PasswordParams, secs: u64) -> BenchResult<Argon2Rate> {
    let hasher = PasswordHasher::new(params).map_err(|e| e.to_string())?;
    let stored = hasher.hash("benchmark password").map_err(|e| e.to_string())?;
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    let done = AtomicU64::new(0);
    let busy_ns = AtomicU64::new(0);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let t0 = Instant::now();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    if hasher.verify("benchmark password", Some(&stored)) {
                        n += 1;
                    }
                }
                done.fetch_add(n, Ordering::Relaxed);
                busy_ns.fetch_add(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
            });
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    if n == 0 {
        return Err("argon2: no verification succeeded".into());
    }
    #[allow(clippy::cast_precision_loss)]
    Ok(Argon2Rate {
        per_second: n as f64 / elapsed,
        threads,
        single_ms: busy_ns.load(Ordering::Relaxed) as f64 / 1e6 / n as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgbench_output() {
        let out = "number of failed transactions: 0 (0.000%)\nlatency average = 4.352 ms\n\
                   initial connection time = 12.1 ms\ntps = 3676.318 (without initial connection time)\n";
        assert_eq!(parse_number_after(out, "tps"), Some(3676.318));
        assert_eq!(parse_number_after(out, "latency average"), Some(4.352));
    }
}
