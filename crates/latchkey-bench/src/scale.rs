//! The scale phase (issue 17): do the service's costs stay flat as its tables grow?
//!
//! 1. **Small tables.** `--scale-probe-users` agents with an authenticator (over
//!    `--verify-tenants` tenants, as the TOTP phase loads them) sign in once each (closed loop,
//!    `POST /api/v1/auth`, the cheap hash: the database path, not argon2) and verify once each
//!    with a TOTP code (closed loop), on a fresh service process. These are the baselines.
//! 2. **Bulk load**, server-side (`INSERT … SELECT … FROM generate_series`, never client
//!    rows): `--scale-tenants` tenants, `--scale-users` agents spread round-robin over them (all
//!    with the same cheap password hash), `--scale-sessions` open sessions (one per user
//!    round-robin, valid for a day) and `--scale-audit` `signed_in` audit events over the past
//!    50 days, newest id last as the service writes them (UUIDv7 text made of the instant).
//!    Tenant `scale-0` is "hot": 1 % of the events (at least enough for 100 pages of the API's
//!    default page) and an admin with a session. Then `VACUUM ANALYZE` of the loaded tables.
//!    The load time and the database size are reported.
//! 3. **Big tables.** The same probe users sign in and verify again, on a fresh process, in a
//!    later TOTP time step (a step is accepted once): throughput big/small, target ≥ 0.8.
//! 4. **Audit log.** The hot tenant's admin reads `GET /api/v1/audit-events` sequentially on
//!    one keep-alive connection (latency is service time, not queueing): the first page
//!    `--scale-audit-requests` times; then follows `next_cursor` to page 100 (the walk is
//!    timed too) and reads page 100 as often. p99 of each, target < 20 ms.
//! 5. **Purge.** `--scale-expired` sessions expired an hour ago and as many challenges expired
//!    two days ago (both past the purge's cut-offs) are loaded; the probe users sign in again
//!    (challenges collected), then verify in an open loop at `--scale-purge-rate` per second for
//!    `--scale-purge-secs` s. A third of the way in, a second service process starts on the same
//!    database: its housekeeping purges at start-up (`Service::purge`, every 10 minutes after,
//!    not configurable), while the first process serves the sign-ins. A side connection samples
//!    `pg_stat_activity` every 50 ms: the purge's `DELETE` statements (first and last seen),
//!    every backend waiting on a lock (`wait_event_type = 'Lock'`) and whether its blocker
//!    (`pg_blocking_pids`) is a `DELETE`. Reported: rows purged and per second, expired rows
//!    left, sign-in latency of the requests in flight during the purge against the others,
//!    the open-loop rate reached, and the lock waits.
//!
//! During steps 3–5 the same sampler also records statements running longer than 10 ms
//! (the slow queries against the big tables), and the scans of every table between the load
//! and the end of the phase (`pg_stat_user_tables`: a sequential scan of a big table is a
//! missing index).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::sql_types::{BigInt, Bool, Text};
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl};
use latchkey_core::SecretToken;
use latchkey_core::crypto::TokenPurpose;
use latchkey_core::totp::TotpSecret;
use serde_json::{Value, json};

use crate::db::{self, SessionRow, UserRow, text};
use crate::http::{self, Response, get};
use crate::load::{self, Outcome, Scenario};
use crate::service::{self, Process};
use crate::stats::{self, Summary};
use crate::{Bench, BenchResult, current_step, expect_status, scenario, totp_verify_request, unix_ms};

/// The API's default page size (`GET /api/v1/audit-events` without `limit`, DESIGN.md).
pub const PAGE_SIZE: usize = 50;
/// How deep the deep page is (page 100: 99 cursors followed).
pub const DEPTH: usize = 100;
/// The mark of the harness's own statements during a measurement (the sampler skips them).
const OWN: &str = "/* latchkey-bench */";
/// How often the side connection samples `pg_stat_activity`.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// A statement running at least this long when sampled is reported as slow.
const SLOW_MS: i64 = 10;
const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

/// The sizes of the scale phase (flags `--scale-*`; the defaults are issue 17's).
#[derive(Debug, Clone)]
pub struct Sizes {
    /// Bulk-loaded agents (`--scale-users`).
    pub users: usize,
    /// Bulk-loaded tenants they are spread over (`--scale-tenants`, at least 1).
    pub tenants: usize,
    /// Bulk-loaded audit events (`--scale-audit`).
    pub audit: usize,
    /// Bulk-loaded open sessions (`--scale-sessions`).
    pub sessions: usize,
    /// Expired sessions, and as many expired challenges, loaded for the purge (`--scale-expired`).
    pub expired: usize,
    /// Users whose sign-in and verify are measured (`--scale-probe-users`).
    pub probes: usize,
    /// Verifications per second during the purge (`--scale-purge-rate`).
    pub purge_rate: f64,
    /// Duration of the purge's open loop, in seconds (`--scale-purge-secs`).
    pub purge_secs: u64,
    /// Requests of the first page, and of page 100 (`--scale-audit-requests`).
    pub audit_requests: usize,
}

impl Default for Sizes {
    fn default() -> Self {
        Self {
            users: 1_000_000,
            tenants: 10_000,
            audit: 10_000_000,
            sessions: 1_000_000,
            expired: 1_000_000,
            probes: 20_000,
            purge_rate: 1000.0,
            purge_secs: 20,
            audit_requests: 500,
        }
    }
}

impl Sizes {
    /// Sets the size named by `flag` (`--scale-…`) to `value`.
    ///
    /// Errors: an unknown flag, or a value that is not a number.
    pub fn set(&mut self, flag: &str, value: &str) -> Result<(), String> {
        fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
            v.parse().map_err(|_| format!("{flag}: `{v}` is not a number"))
        }
        match flag {
            "--scale-users" => self.users = num(flag, value)?,
            "--scale-tenants" => self.tenants = num::<usize>(flag, value)?.max(1),
            "--scale-audit" => self.audit = num(flag, value)?,
            "--scale-sessions" => self.sessions = num(flag, value)?,
            "--scale-expired" => self.expired = num(flag, value)?,
            "--scale-probe-users" => self.probes = num::<usize>(flag, value)?.max(1),
            "--scale-purge-rate" => self.purge_rate = num::<f64>(flag, value)?.max(1.0),
            "--scale-purge-secs" => self.purge_secs = num::<u64>(flag, value)?.max(1),
            "--scale-audit-requests" => self.audit_requests = num::<usize>(flag, value)?.max(1),
            other => return Err(format!("unknown option {other}")),
        }
        Ok(())
    }

    /// As a JSON object (for the run's configuration).
    pub fn json(&self) -> Value {
        json!({
            "users": self.users,
            "tenants": self.tenants,
            "audit": self.audit,
            "sessions": self.sessions,
            "expired": self.expired,
            "probe_users": self.probes,
            "purge_rate": self.purge_rate,
            "purge_secs": self.purge_secs,
            "audit_requests": self.audit_requests,
        })
    }

    /// Verifications of the purge's open loop: rate × seconds, at most one per probe user.
    fn purge_count(&self) -> usize {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
        let n = (self.purge_rate * self.purge_secs as f64).round() as usize;
        n.clamp(1, self.probes)
    }

    /// Every `hot_every`-th audit event belongs to the hot tenant: 1 % of them, but at least
    /// enough for [`DEPTH`] pages and one more.
    fn hot_every(&self) -> usize {
        let want = (self.audit / 100).max((DEPTH + 1) * PAGE_SIZE + PAGE_SIZE);
        (self.audit / want.max(1)).max(1)
    }
}

/// The probe users: their sign-in bodies and TOTP secrets.
struct Probes {
    signin: Vec<String>,
    secrets: Arc<Vec<TotpSecret>>,
}

/// The instants (Unix ms) the bulk-loaded ids are made of, so that every id is in the past and
/// each table's ids are distinct: row `n` of a table gets `base + n` (audit: `base + n·step`).
#[derive(Debug, Clone, Copy)]
struct Bases {
    tenants: i64,
    users: i64,
    sessions: i64,
    challenges: i64,
    audit: i64,
    audit_step: i64,
    now: i64,
}

impl Bases {
    fn at(now: i64, sizes: &Sizes) -> Self {
        let span = 50 * DAY_MS;
        let step = (span / i64::try_from(sizes.audit.max(1)).unwrap_or(i64::MAX)).max(1);
        Self {
            tenants: now - 90 * DAY_MS,
            users: now - 80 * DAY_MS,
            sessions: now - 70 * DAY_MS,
            challenges: now - 60 * DAY_MS,
            audit: now - 55 * DAY_MS,
            audit_step: step,
            now,
        }
    }

    /// SQL: the id of bulk tenant `k` (an SQL expression).
    fn tenant_id(&self, k: &str) -> String {
        format!("bench_uuid7({} + ({k}), ({k}))", self.tenants)
    }

    /// SQL: the id of bulk user `u`.
    fn user_id(&self, u: &str) -> String {
        format!("bench_uuid7({} + ({u}), ({u}))", self.users)
    }
}

/// `bench_uuid7(ms, n)`: a UUIDv7 text whose 48-bit time is `ms` and whose 62 random bits are
/// `n` (so a table's rows are distinct and in time order). Dropped after the load.
const UUID7_FN: &str = "CREATE OR REPLACE FUNCTION bench_uuid7(ms bigint, n bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT substr(lpad(to_hex(ms), 12, '0'), 1, 8) || '-' || substr(lpad(to_hex(ms), 12, '0'), 9, 4) || '-7000-'
    || substr(to_hex(n | (-9223372036854775808)::bigint), 1, 4) || '-'
    || substr(to_hex(n | (-9223372036854775808)::bigint), 5, 12)
$$";

#[derive(QueryableByName)]
struct One {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    s: String,
}

fn scalar(conn: &mut PgConnection, sql: &str) -> BenchResult<i64> {
    let rows: Vec<One> = diesel::sql_query(sql).load(conn)?;
    Ok(rows.first().map_or(0, |r| r.n))
}

fn secs(d: Duration) -> f64 {
    stats::round3(d.as_secs_f64())
}

/// Runs `sql`, returning the seconds it took.
fn timed(conn: &mut PgConnection, what: &str, sql: &str) -> BenchResult<f64> {
    let t0 = Instant::now();
    conn.batch_execute(sql).map_err(|e| format!("scale: loading {what}: {e}"))?;
    let s = secs(t0.elapsed());
    eprintln!("scale:   {what}: {s:.1} s");
    Ok(s)
}

/// Statements of `count` rows from `start`, in chunks of at most `chunk`: `body(lo, hi)`.
fn chunked(
    conn: &mut PgConnection,
    what: &str,
    start: usize,
    count: usize,
    chunk: usize,
    body: impl Fn(usize, usize) -> String,
) -> BenchResult<f64> {
    let mut total = 0.0;
    let mut lo = start;
    while lo < start + count {
        let hi = (lo + chunk).min(start + count) - 1;
        total += timed(conn, &format!("{what} {}..={}", lo - start, hi - start), &body(lo, hi))?;
        lo = hi + 1;
    }
    Ok(total)
}

/// The bulk load of step 2 (not the expired rows): per table, the seconds it took.
fn bulk_load(conn: &mut PgConnection, sizes: &Sizes, b: &Bases, hash: &str) -> BenchResult<Value> {
    conn.batch_execute(UUID7_FN)?;
    conn.batch_execute("SET maintenance_work_mem = '512MB'; SET synchronous_commit = off")?;
    let (t, u) = (sizes.tenants, sizes.users.max(1));
    let per_tenant = (u / t).max(1);
    let tenants = timed(
        conn,
        &format!("{t} tenants"),
        &format!(
            "INSERT INTO tenants (id, slug, name, two_factor_enabled, methods_admin, methods_supervisor, methods_agent, created_at, updated_at)
             SELECT {}, 'scale-' || k, 'Scale ' || k, false, 3, 3, 3, {t0}, {t0} FROM generate_series(0::bigint, {}) k",
            b.tenant_id("k"),
            t - 1,
            t0 = b.tenants
        ),
    )?;
    let hash = text(hash);
    let users = chunked(conn, "users", 0, sizes.users, 1_000_000, |lo, hi| {
        format!(
            "INSERT INTO users (id, tenant_id, email, name, role, password_hash, otp_failures, created_at, updated_at)
             SELECT {}, {}, 'u' || n || '@scale.bench.test', 'Scale User', 'agent', {hash}, 0, {u0}, {u0}
             FROM generate_series({lo}::bigint, {hi}) n",
            b.user_id("n"),
            b.tenant_id(&format!("n % {t}")),
            u0 = b.users
        )
    })?;
    let sessions = chunked(conn, "open sessions", 0, sizes.sessions, 1_000_000, |lo, hi| {
        sessions_sql(b, t, u, lo, hi, b.now - HOUR_MS, b.now + DAY_MS)
    })?;
    // 1 event in `hot` to tenant 0; the others round robin over every tenant. The subject
    // (and actor: a sign-in) is one of the event's tenant's users.
    let hot = sizes.hot_every();
    let audit = chunked(conn, "audit events", 0, sizes.audit, 1_000_000, |lo, hi| {
        let user = format!("g.k + {t} * ((g.n / {t}) % {per_tenant})");
        format!(
            "INSERT INTO audit_events (id, tenant_id, at, actor_id, subject_id, kind, ip, user_agent, detail)
             SELECT bench_uuid7(g.m, g.n), {}, g.m, {uid}, {uid}, 'signed_in', '127.0.0.1', 'latchkey-bench/scale',
                    '{{\"second_factor\":true,\"method\":\"authenticator\"}}'
             FROM (SELECT n, {a0} + n * {step} AS m, CASE WHEN n % {hot} = 0 THEN 0 ELSE n % {t} END AS k
                   FROM generate_series({lo}::bigint, {hi}) n) g",
            b.tenant_id("g.k"),
            uid = b.user_id(&user),
            a0 = b.audit,
            step = b.audit_step
        )
    })?;
    // One statement each: VACUUM cannot run in the implicit transaction of a batch.
    let mut vacuum = 0.0;
    for table in ["tenants", "users", "sessions", "audit_events"] {
        vacuum += timed(conn, &format!("VACUUM ANALYZE {table}"), &format!("VACUUM ANALYZE {table}"))?;
    }
    // The load's gigabytes of dirty pages are written now, not by a checkpoint during the
    // measurement (a database that grew over months has no such backlog).
    let checkpoint = timed(conn, "CHECKPOINT", "CHECKPOINT")?;
    Ok(json!({
        "tenants_s": tenants, "users_s": users, "sessions_s": sessions, "audit_s": audit, "vacuum_analyze_s": vacuum,
        "checkpoint_s": checkpoint,
        "hot_tenant_events": sizes.audit.div_ceil(hot),
    }))
}

/// SQL: sessions `lo..=hi` of the bulk users (round robin), created at `created`, expiring at
/// `expires`; token hash `sha256('scale-s' || n)` (no one holds their tokens).
fn sessions_sql(b: &Bases, t: usize, u: usize, lo: usize, hi: usize, created: i64, expires: i64) -> String {
    format!(
        "INSERT INTO sessions (id, token_hash, tenant_id, user_id, created_at, expires_at, second_factor_at)
         SELECT bench_uuid7({s0} + n, n), sha256(('scale-s' || n)::bytea), {}, {}, {created}, {expires}, NULL
         FROM generate_series({lo}::bigint, {hi}) n",
        b.tenant_id(&format!("(n % {u}) % {t}")),
        b.user_id(&format!("n % {u}")),
        s0 = b.sessions
    )
}

/// The rows the purge must delete: `expired` sessions expired an hour ago (numbered after the
/// open ones) and as many sign-in challenges expired two days ago, half of them ended.
fn load_expired(conn: &mut PgConnection, sizes: &Sizes, b: &Bases) -> BenchResult<Value> {
    conn.batch_execute(UUID7_FN)?;
    conn.batch_execute("SET synchronous_commit = off")?;
    let (t, u) = (sizes.tenants, sizes.users.max(1));
    let now = unix_ms();
    let sessions = chunked(conn, "expired sessions", sizes.sessions, sizes.expired, 1_000_000, |lo, hi| {
        sessions_sql(b, t, u, lo, hi, now - 13 * HOUR_MS, now - HOUR_MS)
    })?;
    let (created, expires) = (now - 2 * DAY_MS - 600_000, now - 2 * DAY_MS);
    let challenges = chunked(conn, "expired challenges", 0, sizes.expired, 1_000_000, |lo, hi| {
        format!(
            "INSERT INTO challenges (id, token_hash, tenant_id, user_id, purpose, next_action, methods, session_id,
                                     pending_secret, created_at, expires_at, ended_at)
             SELECT bench_uuid7({c0} + n, n), sha256(('scale-c' || n)::bytea), {}, {}, 'sign_in', 'verify', 1, NULL,
                    NULL, {created}, {expires}, CASE WHEN n % 2 = 0 THEN {ended} END
             FROM generate_series({lo}::bigint, {hi}) n",
            b.tenant_id(&format!("(n % {u}) % {t}")),
            b.user_id(&format!("n % {u}")),
            c0 = b.challenges,
            ended = created + 30_000
        )
    })?;
    let analyze = timed(conn, "ANALYZE sessions, challenges", "ANALYZE sessions; ANALYZE challenges")?;
    conn.batch_execute("DROP FUNCTION IF EXISTS bench_uuid7(bigint, bigint)")?;
    Ok(json!({"sessions_s": sessions, "challenges_s": challenges, "analyze_s": analyze}))
}

/// Expired rows the purge deletes: sessions expired at `now`, challenges expired a day before.
fn expired_counts(conn: &mut PgConnection, now: i64) -> BenchResult<(i64, i64)> {
    Ok((
        scalar(conn, &format!("{OWN} SELECT count(*) AS n FROM sessions WHERE expires_at <= {now}"))?,
        scalar(conn, &format!("{OWN} SELECT count(*) AS n FROM challenges WHERE expires_at <= {}", now - DAY_MS))?,
    ))
}

/// Sizes of the database and of the big tables (with their indexes), in bytes.
fn sizes_on_disk(conn: &mut PgConnection) -> BenchResult<Value> {
    let mut out = serde_json::Map::new();
    out.insert("database_bytes".into(), json!(scalar(conn, "SELECT pg_database_size(current_database()) AS n")?));
    for table in ["users", "sessions", "challenges", "audit_events"] {
        let n = scalar(conn, &format!("SELECT pg_total_relation_size('{table}') AS n"))?;
        out.insert(format!("{table}_bytes"), json!(n));
    }
    Ok(Value::Object(out))
}

#[derive(QueryableByName)]
struct TableScans {
    #[diesel(sql_type = Text)]
    relname: String,
    #[diesel(sql_type = BigInt)]
    seq_scan: i64,
    #[diesel(sql_type = BigInt)]
    seq_tup_read: i64,
    #[diesel(sql_type = BigInt)]
    idx_scan: i64,
    #[diesel(sql_type = BigInt)]
    live: i64,
}

fn table_scans(conn: &mut PgConnection) -> BenchResult<BTreeMap<String, TableScans>> {
    let rows: Vec<TableScans> = diesel::sql_query(
        "SELECT relname::text AS relname, coalesce(seq_scan, 0) AS seq_scan, coalesce(seq_tup_read, 0) AS seq_tup_read,
                coalesce(idx_scan, 0) AS idx_scan, coalesce(n_live_tup, 0) AS live
         FROM pg_stat_user_tables",
    )
    .load(conn)?;
    Ok(rows.into_iter().map(|r| (r.relname.clone(), r)).collect())
}

/// The scans of each table between two snapshots (tables with any scan).
fn scans_between(before: &BTreeMap<String, TableScans>, after: &BTreeMap<String, TableScans>) -> Value {
    let mut out = serde_json::Map::new();
    for (name, a) in after {
        let b = before.get(name);
        let seq = a.seq_scan - b.map_or(0, |b| b.seq_scan);
        let read = a.seq_tup_read - b.map_or(0, |b| b.seq_tup_read);
        let idx = a.idx_scan - b.map_or(0, |b| b.idx_scan);
        if seq > 0 || idx > 0 {
            out.insert(
                name.clone(),
                json!({"seq_scans": seq, "seq_rows_read": read, "index_scans": idx, "live_rows": a.live}),
            );
        }
    }
    Value::Object(out)
}

/// One active backend, as the sampler sees it.
#[derive(QueryableByName)]
struct Active {
    #[diesel(sql_type = Text)]
    wait_type: String,
    #[diesel(sql_type = Text)]
    wait_event: String,
    #[diesel(sql_type = Text)]
    query: String,
    #[diesel(sql_type = BigInt)]
    running_ms: i64,
    #[diesel(sql_type = Bool)]
    by_delete: bool,
}

const SAMPLE_SQL: &str = "SELECT coalesce(a.wait_event_type, '') AS wait_type, coalesce(a.wait_event, '') AS wait_event,
    left(regexp_replace(a.query, '\\s+', ' ', 'g'), 160) AS query,
    coalesce((extract(epoch FROM clock_timestamp() - a.query_start) * 1000)::bigint, 0) AS running_ms,
    coalesce(a.wait_event_type = 'Lock' AND EXISTS (
        SELECT 1 FROM pg_stat_activity b WHERE b.pid = ANY (pg_blocking_pids(a.pid)) AND b.query ILIKE 'DELETE%'), false) AS by_delete
FROM pg_stat_activity a
WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND a.state = 'active'
  AND a.query NOT LIKE '/* latchkey-bench */%'";

/// What the sampler saw.
#[derive(Debug, Default)]
struct Samples {
    samples: usize,
    /// Samples with at least one backend (other than a purge statement) waiting on a lock.
    with_lock_waiter: usize,
    /// Most backends waiting on a lock in one sample (purge statements excepted).
    max_lock_waiters: usize,
    /// Backend-samples waiting on a lock held by a `DELETE` (the purge).
    blocked_by_delete: usize,
    /// Backend-samples of a purge statement waiting on a lock.
    delete_waiting: usize,
    /// Lock waiters by statement.
    waiting: BTreeMap<String, usize>,
    /// Backend-samples by wait event (`type:event`), all active backends.
    wait_events: BTreeMap<String, usize>,
    /// `DELETE` statements: first and last seen.
    deletes: BTreeMap<String, (Instant, Instant, usize)>,
    /// Statements seen running for at least [`SLOW_MS`]: times seen, longest.
    slow: BTreeMap<String, (usize, i64)>,
    /// Failed samples (the first error).
    error: Option<String>,
}

impl Samples {
    fn add(&mut self, rows: &[Active], at: Instant) {
        self.samples += 1;
        let mut waiters = 0;
        for r in rows {
            let delete = r.query.get(..6).is_some_and(|p| p.eq_ignore_ascii_case("DELETE"));
            if !r.wait_type.is_empty() {
                *self.wait_events.entry(format!("{}:{}", r.wait_type, r.wait_event)).or_default() += 1;
            }
            if delete {
                let key = r.query.split(" WHERE").next().unwrap_or_default().to_owned();
                let e = self.deletes.entry(key).or_insert((at, at, 0));
                e.1 = at;
                e.2 += 1;
                if r.wait_type == "Lock" {
                    self.delete_waiting += 1;
                }
                continue;
            }
            if r.wait_type == "Lock" {
                waiters += 1;
                *self.waiting.entry(r.query.clone()).or_default() += 1;
                if r.by_delete {
                    self.blocked_by_delete += 1;
                }
            }
            if r.running_ms >= SLOW_MS {
                let e = self.slow.entry(r.query.clone()).or_insert((0, 0));
                e.0 += 1;
                e.1 = e.1.max(r.running_ms);
            }
        }
        if waiters > 0 {
            self.with_lock_waiter += 1;
        }
        self.max_lock_waiters = self.max_lock_waiters.max(waiters);
    }

    /// From the first to the last sample of any `DELETE` (plus one sample interval).
    fn purge_window(&self) -> Option<(Instant, Instant)> {
        let first = self.deletes.values().map(|d| d.0).min()?;
        let last = self.deletes.values().map(|d| d.1).max()?;
        Some((first, last + SAMPLE_EVERY))
    }

    fn json(&self, origin: Instant) -> Value {
        let ms = |t: Instant| stats::round3(t.saturating_duration_since(origin).as_secs_f64() * 1000.0);
        let deletes: Vec<Value> = self
            .deletes
            .iter()
            .map(
                |(q, (a, b, n))| json!({"statement": q, "first_seen_ms": ms(*a), "last_seen_ms": ms(*b), "samples": n}),
            )
            .collect();
        let mut slow: Vec<(&String, &(usize, i64))> = self.slow.iter().collect();
        slow.sort_by_key(|s| std::cmp::Reverse(s.1.1));
        let slow: Vec<Value> = slow
            .iter()
            .take(20)
            .map(|(q, (n, max))| json!({"statement": q, "samples": n, "longest_ms": max}))
            .collect();
        json!({
            "samples": self.samples,
            "interval_ms": SAMPLE_EVERY.as_millis(),
            "samples_with_lock_waiter": self.with_lock_waiter,
            "max_lock_waiters": self.max_lock_waiters,
            "blocked_by_delete": self.blocked_by_delete,
            "purge_statement_waiting": self.delete_waiting,
            "lock_waiters_by_statement": self.waiting,
            "wait_events": self.wait_events,
            "deletes": deletes,
            "slow_statements": slow,
            "error": self.error,
        })
    }
}

/// A side connection sampling `pg_stat_activity` every [`SAMPLE_EVERY`] on a thread of its own.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: tokio::task::JoinHandle<Samples>,
}

impl Sampler {
    fn start(url: &str) -> BenchResult<Self> {
        let mut conn = PgConnection::establish(url)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = tokio::task::spawn_blocking(move || {
            let mut s = Samples::default();
            while !flag.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                match diesel::sql_query(SAMPLE_SQL).load::<Active>(&mut conn) {
                    Ok(rows) => s.add(&rows, t0),
                    Err(e) => {
                        if s.error.is_none() {
                            s.error = Some(e.to_string());
                        }
                    }
                }
                std::thread::sleep(SAMPLE_EVERY.saturating_sub(t0.elapsed()));
            }
            s
        });
        Ok(Self { stop, thread })
    }

    async fn finish(self) -> BenchResult<Samples> {
        self.stop.store(true, Ordering::Relaxed);
        Ok(self.thread.await?)
    }
}

/// Waits until the TOTP time step is past `step` (a step is accepted once per user).
async fn wait_step_after(step: i64) {
    while current_step() <= step {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sign-in and verify throughput of one pass over the probe users.
struct Pass {
    signin: Outcome,
    verify: Outcome,
    /// The last time step a code was sent in.
    step: i64,
}

impl Pass {
    fn json(&self) -> Value {
        json!({"signin": self.signin.json(), "verify": self.verify.json()})
    }
}

impl Bench {
    /// The scale phase (see the module's documentation): loads its probe users, measures the
    /// small tables, bulk-loads, measures the big tables, the audit log and the purge, and
    /// records `results["scale"]`. `hash` is the password hash of every loaded user.
    pub(crate) async fn scale(&mut self, conn: &mut PgConnection, hash: &str) -> BenchResult<()> {
        let sizes = self.opts.scale.clone();
        let now = unix_ms();
        eprintln!("scale: {} probe users…", sizes.probes);
        let mut probes = Probes { signin: Vec::new(), secrets: Arc::new(Vec::new()) };
        let mut secrets = Vec::with_capacity(sizes.probes);
        for (_, _, body, secret) in self.load_authenticator_users(conn, "scale", sizes.probes, hash, now)? {
            probes.signin.push(body);
            secrets.push(secret);
        }
        probes.secrets = Arc::new(secrets);
        conn.batch_execute("ANALYZE")?;

        eprintln!("scale: small tables, sign-in and verify…");
        let svc = self.env.serve(service::free_addr()?, self.opts.http_workers).await?;
        let small = self.scale_pass(&svc, &probes, None).await;
        svc.stop();
        let small = small?;

        let bases = Bases::at(unix_ms(), &sizes);
        eprintln!(
            "scale: bulk load of {} tenants, {} users, {} open sessions, {} audit events…",
            sizes.tenants, sizes.users, sizes.sessions, sizes.audit
        );
        let t0 = Instant::now();
        let loaded = bulk_load(conn, &sizes, &bases, hash)?;
        // The hot tenant's admin and his session.
        let hot_id = bases.tenant_id("0");
        let rows: Vec<Name> = diesel::sql_query(format!("SELECT {hot_id} AS s")).load(conn)?;
        let hot_id = rows.first().map(|r| r.s.clone()).ok_or("no hot tenant")?;
        let admin = UserRow {
            id: uuid::Uuid::now_v7().to_string(),
            tenant_id: hot_id.clone(),
            email: "admin@scale-0.bench.test".into(),
            role: "admin",
        };
        db::insert_users(conn, std::slice::from_ref(&admin), hash, now)?;
        let token = SecretToken::generate().expose().to_owned();
        let session = SessionRow {
            tenant_id: hot_id,
            user_id: admin.id.clone(),
            token_hash: self.keys.token_hash(TokenPurpose::Session, &token).to_vec(),
        };
        db::insert_sessions(conn, std::slice::from_ref(&session), unix_ms())?;
        let load_secs = secs(t0.elapsed());
        let disk = sizes_on_disk(conn)?;
        eprintln!(
            "scale: loaded in {load_secs:.1} s; database {:.2} GiB",
            disk["database_bytes"].as_f64().unwrap_or(0.0) / 1_073_741_824.0
        );
        let scans_before = table_scans(conn)?;

        let svc = self.env.serve(service::free_addr()?, self.opts.http_workers).await?;
        let big = self.scale_big(conn, &svc, &probes, &sizes, &bases, &token, small.step).await;
        svc.stop();
        let (big, sampled, audit, purge) = big?;
        // The service's backends have exited: their statistics are flushed.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let scans = scans_between(&scans_before, &table_scans(conn)?);

        let ratio = |b: &Outcome, s: &Outcome| stats::round3(b.rate() / s.rate().max(1e-9));
        let errors = small.signin.errors + small.verify.errors + big.signin.errors + big.verify.errors;
        if errors > 0 {
            self.correct = false;
            eprintln!(
                "scale: {errors} errors in sign-in/verify: {:?} {:?} {:?} {:?}",
                small.signin.first_error, small.verify.first_error, big.signin.first_error, big.verify.first_error
            );
        }
        self.results.insert(
            "scale".into(),
            json!({
                "sizes": sizes.json(),
                "load": {"secs": load_secs, "steps": loaded, "disk": disk},
                "small": small.json(),
                "big": big.json(),
                "big_sampler": sampled,
                "signin_ratio": ratio(&big.signin, &small.signin),
                "verify_ratio": ratio(&big.verify, &small.verify),
                "audit": audit,
                "purge": purge,
                "table_scans": scans,
            }),
        );
        Ok(())
    }

    /// Steps 3–5 on the big tables' service: (throughput pass, what the sampler saw during it
    /// and the audit log, audit log, purge).
    #[allow(clippy::too_many_arguments)]
    async fn scale_big(
        &mut self,
        conn: &mut PgConnection,
        svc: &Process,
        probes: &Probes,
        sizes: &Sizes,
        bases: &Bases,
        token: &str,
        step: i64,
    ) -> BenchResult<(Pass, Value, Value, Value)> {
        let started = Instant::now();
        eprintln!("scale: big tables, sign-in and verify…");
        let sampler = Sampler::start(&self.scratch.url)?;
        let origin = Instant::now();
        let big = self.scale_pass(svc, probes, Some(step)).await?;
        eprintln!("scale: audit log, first page and page {DEPTH}…");
        let audit = self.scale_audit(svc, token, sizes.audit_requests).await?;
        let samples = sampler.finish().await?.json(origin);
        // The big service's next housekeeping is 10 minutes after its start: the expired rows
        // must be loaded and purged (by another process) before then.
        if started.elapsed() > Duration::from_secs(420) {
            eprintln!(
                "scale: the big pass took {} s; the purge may overlap the periodic one",
                started.elapsed().as_secs()
            );
        }
        let purge = self.scale_purge(conn, svc, probes, sizes, bases, big.step).await?;
        Ok((big, samples, audit, purge))
    }

    /// One pass: every probe user signs in (closed loop), then verifies (closed loop), in a
    /// time step after `after` when given.
    async fn scale_pass(&mut self, svc: &Process, probes: &Probes, after: Option<i64>) -> BenchResult<Pass> {
        if let Some(step) = after {
            wait_step_after(step).await;
        }
        let (signin, tokens) = self.collect_challenges(svc, probes.signin.clone()).await;
        let ready: Vec<usize> = (0..tokens.len()).filter(|&i| tokens[i].get().is_some()).collect();
        let verify = load::closed(
            svc.addr,
            self.opts.connections,
            verify_scenario(svc, tokens, Arc::clone(&probes.secrets), ready, None),
            None,
        )
        .await;
        Ok(Pass { signin, verify, step: current_step() })
    }

    /// Step 4: the first page and page [`DEPTH`] of the hot tenant's audit log, `n` times each,
    /// sequentially on one connection; the walk from page 1 to page [`DEPTH`] is timed too.
    async fn scale_audit(&mut self, svc: &Process, token: &str, n: usize) -> BenchResult<Value> {
        let host = svc.addr.to_string();
        let page = |cursor: Option<&str>| {
            let path = cursor
                .map_or_else(|| "/api/v1/audit-events".to_owned(), |c| format!("/api/v1/audit-events?cursor={c}"));
            get(&host, &path, Some(token))
        };
        let mut c = http::Conn::connect(svc.addr).await?;
        let mut errors = 0usize;
        let mut first_error: Option<String> = None;
        let mut fail = |e: String| {
            errors += 1;
            if first_error.is_none() {
                first_error = Some(e);
            }
        };
        // Warm-up: the tenant's actor, the connection, the plan.
        for _ in 0..20 {
            let r = c.send(&page(None)).await?;
            if let Err(e) = check_page(&r) {
                fail(e);
            }
        }
        let mut first = Vec::with_capacity(n);
        for _ in 0..n {
            let req = page(None);
            let t0 = Instant::now();
            let r = c.send(&req).await?;
            first.push(t0.elapsed());
            if let Err(e) = check_page(&r) {
                fail(e);
            }
        }
        let mut walk = Vec::with_capacity(DEPTH);
        let mut cursor: Option<String> = None;
        let mut last_id: Option<String> = None;
        for k in 1..DEPTH {
            let req = page(cursor.as_deref());
            let t0 = Instant::now();
            let r = c.send(&req).await?;
            walk.push(t0.elapsed());
            match check_page(&r) {
                Ok(next) => {
                    let body = r.json();
                    let top = body["items"][0]["id"].as_str().map(str::to_owned);
                    // Newest first: each page starts below the previous page's last id.
                    if let (Some(top), Some(prev)) = (&top, &last_id)
                        && top >= prev
                    {
                        fail(format!("page {k} does not continue below the previous page"));
                    }
                    last_id = body["items"][PAGE_SIZE - 1]["id"].as_str().map(str::to_owned);
                    cursor = Some(next);
                }
                Err(e) => {
                    fail(format!("page {k}: {e}"));
                    break;
                }
            }
        }
        let deep_cursor = cursor.ok_or("the audit log has fewer than 100 pages")?;
        let mut deep = Vec::with_capacity(n);
        for _ in 0..n {
            let req = page(Some(&deep_cursor));
            let t0 = Instant::now();
            let r = c.send(&req).await?;
            deep.push(t0.elapsed());
            if let Err(e) = check_page(&r) {
                fail(e);
            }
        }
        if errors > 0 {
            self.correct = false;
            eprintln!("scale: audit log: {errors} errors ({first_error:?})");
        }
        let (first, walk, deep): (Summary, Summary, Summary) =
            (stats::summarize(first), stats::summarize(walk), stats::summarize(deep));
        Ok(json!({
            "page_size": PAGE_SIZE,
            "depth": DEPTH,
            "first_page": first.json(),
            "walk_to_depth": walk.json(),
            "deep_page": deep.json(),
            "errors": errors,
            "first_error": first_error,
        }))
    }

    /// Step 5: the purge by a second process while the first serves verifications at the
    /// purge rate (open loop).
    async fn scale_purge(
        &mut self,
        conn: &mut PgConnection,
        svc: &Process,
        probes: &Probes,
        sizes: &Sizes,
        bases: &Bases,
        step: i64,
    ) -> BenchResult<Value> {
        eprintln!("scale: loading {} expired sessions and challenges…", sizes.expired);
        let t0 = Instant::now();
        let loaded = load_expired(conn, sizes, bases)?;
        let load_secs = secs(t0.elapsed());
        let count = sizes.purge_count();
        wait_step_after(step).await;
        eprintln!("scale: purge: {count} users sign in…");
        let (signed, tokens) = self.collect_challenges(svc, probes.signin[..count].to_vec()).await;
        let ready: Vec<usize> = (0..count).filter(|&i| tokens[i].get().is_some()).collect();
        let cutoff = unix_ms();
        let before = expired_counts(conn, cutoff)?;
        eprintln!(
            "scale: purge: {} expired sessions, {} expired challenges; {count} verifications at {}/s, purging from a second process…",
            before.0, before.1, sizes.purge_rate
        );
        let done: Arc<Vec<OnceLock<Instant>>> = Arc::new((0..count).map(|_| OnceLock::new()).collect());
        let scen = verify_scenario(svc, tokens, Arc::clone(&probes.secrets), ready, Some(Arc::clone(&done)));
        let sampler = Sampler::start(&self.scratch.url)?;
        let env = self.env.clone();
        let delay = Duration::from_secs_f64(sizes.purge_secs as f64 / 3.0);
        let purger = async move {
            tokio::time::sleep(delay).await;
            let started = Instant::now();
            let process = match service::free_addr() {
                Ok(addr) => env.serve(addr, 1).await,
                Err(e) => Err(e),
            };
            (process, started, Instant::now())
        };
        let ((out, start), (purger, purger_started, purger_ready)) =
            tokio::join!(load::open(svc.addr, sizes.purge_rate, count, scen), purger);
        // Let the purge finish (each DELETE is one statement; the counts drop at its commit).
        let until = Instant::now() + Duration::from_secs(600);
        let mut after = expired_counts(conn, cutoff)?;
        while (after.0 > 0 || after.1 > 0) && Instant::now() < until && purger.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            after = expired_counts(conn, cutoff)?;
        }
        let purged_at = Instant::now();
        tokio::time::sleep(SAMPLE_EVERY * 2).await;
        let samples = sampler.finish().await?;
        let purger = purger?;
        purger.stop();

        // Latency of each verification from its scheduled instant; "during" = in flight while a
        // purge statement was seen running.
        let window = samples.purge_window();
        let (mut during, mut outside) = (Vec::new(), Vec::new());
        let mut by_second: Vec<Vec<Duration>> = Vec::new();
        for (i, d) in done.iter().enumerate() {
            let Some(&d) = d.get() else { continue };
            #[allow(clippy::cast_precision_loss)]
            let at = start + Duration::from_secs_f64(i as f64 / sizes.purge_rate);
            let latency = d.saturating_duration_since(at);
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
            let second = (i as f64 / sizes.purge_rate) as usize;
            if by_second.len() <= second {
                by_second.resize_with(second + 1, Vec::new);
            }
            by_second[second].push(latency);
            // "Outside": before the purge began (after it, the backlog it left drains).
            match window {
                Some((w0, w1)) if at <= w1 && d >= w0 => during.push(latency),
                Some((w0, _)) if d < w0 => outside.push(latency),
                Some(_) => {}
                None => outside.push(latency),
            }
        }
        let (during, outside) = (stats::summarize(during), stats::summarize(outside));
        let p99_by_second: Vec<f64> =
            by_second.into_iter().map(|l| stats::round3(stats::summarize(l).p99_ms)).collect();
        let purged = (before.0 - after.0, before.1 - after.1);
        // A purge no sample caught took less than one sample interval.
        let purge_secs = window
            .map(|(a, b)| secs(b.saturating_duration_since(a)))
            .or_else(|| (purged.0 + purged.1 > 0).then(|| SAMPLE_EVERY.as_secs_f64()));
        #[allow(clippy::cast_precision_loss)]
        let per_second =
            purge_secs.map(|s| stats::round3((purged.0 + purged.1) as f64 / s.max(SAMPLE_EVERY.as_secs_f64())));
        // Rows each sign-in leaves for a later purge: its challenge and its session.
        let creation = 2.0 * sizes.purge_rate;
        if out.errors > 0 || signed.errors > 0 {
            self.correct = false;
            eprintln!("scale: purge: errors: {:?} {:?}", signed.first_error, out.first_error);
        }
        if after.0 > 0 || after.1 > 0 {
            eprintln!("scale: purge: {} sessions and {} challenges still expired", after.0, after.1);
        }
        Ok(json!({
            "expired_load_s": load_secs,
            "expired_load": loaded,
            "count": count,
            "rate": sizes.purge_rate,
            "signin_setup": signed.json(),
            "verify": out.json(),
            "reached_per_second": stats::round3(out.rate()),
            "expired_before": {"sessions": before.0, "challenges": before.1},
            "expired_after": {"sessions": after.0, "challenges": after.1},
            "purged": purged.0 + purged.1,
            "purge_secs": purge_secs,
            "purge_rows_per_second": per_second,
            "creation_rows_per_second": creation,
            "keeps_up": per_second.map(|p| p >= creation && after.0 == 0 && after.1 == 0),
            "purger_started_ms": stats::round3(purger_started.saturating_duration_since(start).as_secs_f64() * 1000.0),
            "purger_ready_ms": stats::round3(purger_ready.saturating_duration_since(start).as_secs_f64() * 1000.0),
            "p99_ms_by_second": p99_by_second,
            "purge_done_ms": stats::round3(purged_at.saturating_duration_since(start).as_secs_f64() * 1000.0),
            "during_purge": if during.count > 0 { during.json() } else { Value::Null },
            "before_purge": outside.json(),
            "sampler": samples.json(start),
        }))
    }
}

/// Checks a page of the audit log: 200, a full page, a next cursor; the cursor.
fn check_page(r: &Response) -> Result<String, String> {
    expect_status(r, 200)?;
    let body = r.json();
    let items = body["items"].as_array().map_or(0, Vec::len);
    if items != PAGE_SIZE {
        return Err(format!("{items} items, expected {PAGE_SIZE}"));
    }
    body["next_cursor"].as_str().map(str::to_owned).ok_or_else(|| "no next_cursor".to_owned())
}

/// Verifications of the users `ready` (the `i`-th request verifies `ready[i]` with his current
/// code); `done[i]`, when given, gets the instant its answer arrived.
fn verify_scenario(
    svc: &Process,
    tokens: Arc<Vec<OnceLock<String>>>,
    secrets: Arc<Vec<TotpSecret>>,
    ready: Vec<usize>,
    done: Option<Arc<Vec<OnceLock<Instant>>>>,
) -> Arc<dyn Scenario> {
    let host = svc.addr.to_string();
    scenario(
        move |i| {
            let user = *ready.get(i)?;
            let token = tokens[user].get()?;
            Some(totp_verify_request(&host, token, &secrets[user]))
        },
        move |i, r| {
            if let Some(d) = done.as_ref().and_then(|d| d.get(i)) {
                let _ = d.set(Instant::now());
            }
            expect_status(r, 200)?;
            if r.json()["authentication_token"].is_string() { Ok(()) } else { Err("no session".into()) }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_hot_share() {
        let mut s = Sizes::default();
        assert_eq!(s.hot_every(), 100);
        assert_eq!(s.purge_count(), 20_000);
        s.set("--scale-audit", "100000").unwrap();
        // 1 % would be 1,000 events, fewer than 102 pages of 50: at least 5,100.
        assert!(s.audit.div_ceil(s.hot_every()) >= (DEPTH + 1) * PAGE_SIZE);
        s.set("--scale-probe-users", "500").unwrap();
        assert_eq!(s.purge_count(), 500);
        assert!(s.set("--scale-bogus", "1").is_err());
        assert!(s.set("--scale-users", "x").is_err());
    }

    #[test]
    fn purge_window_from_samples() {
        let mut s = Samples::default();
        let t0 = Instant::now();
        let row = |q: &str, wait: &str, by_delete: bool| Active {
            wait_type: wait.into(),
            wait_event: if wait.is_empty() { String::new() } else { "tuple".into() },
            query: q.into(),
            running_ms: 12,
            by_delete,
        };
        s.add(&[row("SELECT 1", "", false)], t0);
        assert_eq!(s.purge_window(), None);
        let t1 = t0 + Duration::from_millis(100);
        s.add(&[row("DELETE FROM \"sessions\" WHERE x", "", false), row("WITH p AS", "Lock", true)], t1);
        assert_eq!(s.purge_window(), Some((t1, t1 + SAMPLE_EVERY)));
        assert_eq!((s.with_lock_waiter, s.max_lock_waiters, s.blocked_by_delete), (1, 1, 1));
        assert!(s.slow.contains_key("WITH p AS") && !s.slow.keys().any(|q| q.starts_with("DELETE")));
    }
}
