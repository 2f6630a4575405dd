//! The delivery queue: one apalis queue of [`DeliveryJob`]s (a delivery id each: a sign-in
//! code, a reset link, a notice or a webhook delivery), on Redis or on the embedded SQLite
//! queue, behind the [`Outbox`] trait the use-cases push through. The queue only wakes the
//! worker: the `deliveries` table is the record of what is owed, and the worker's sweep
//! queues again whatever the queue lost.
//!
//! - **Embedded** (no queue URL): apalis-sqlite in its own file, `$DATA_DIR/queue.db` — never
//!   the diesel database: apalis' own `setup()` would switch that file to `synchronous=OFF`
//!   (STACK.md trap 3). We do not call `setup()` at all: the queue file is opened with
//!   `journal_mode=WAL`, `synchronous=NORMAL` (so a queued message survives a crash of the
//!   process and of the machine) and apalis' migrations are run directly.
//! - **Redis** (`redis://…`): apalis-redis, every key under `<namespace>:mail:…`. The namespace
//!   defaults to `latchkey`; `?namespace=<name>` on the queue URL changes it (so tests, or
//!   several deployments, can share one Redis without taking each other's jobs).
//!
//! Jobs travel as JSON (`{"delivery_id": "…"}`); the worker reads them as untyped JSON and
//! decodes them itself, so a job it cannot read is killed and logged instead of jamming the
//! queue. A job carries no secret at all (see [`latchkey_tenant::outbox`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use apalis::prelude::{Metrics as _, TaskSink};
use apalis_redis::{ConnectionManager, RedisStorage};
use apalis_sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteStorage};
use futures::future::BoxFuture;
use latchkey_tenant::outbox::{DeliveryJob, Outbox, OutboxError};
use serde_json::Value;

use crate::error::MailError;

/// The default Redis key namespace.
pub const DEFAULT_NAMESPACE: &str = "latchkey";

/// The file name of the embedded queue inside the data directory.
pub const EMBEDDED_QUEUE_FILE: &str = "queue.db";

/// The queue (job type) name inside the embedded queue file.
const SQLITE_QUEUE: &str = "latchkey:mail";

/// Heartbeat of a worker; a worker silent for `HEARTBEAT * MISSED_HEARTBEATS` (60 s) is
/// considered dead and the jobs it held are re-queued by the other workers.
const HEARTBEAT: Duration = Duration::from_secs(10);
const MISSED_HEARTBEATS: usize = 6;

/// The apalis storages, typed as untyped JSON (see the module doc).
#[derive(Clone)]
pub(crate) enum Storage {
    Sqlite { storage: SqliteStorage<Value>, path: PathBuf },
    Redis { storage: RedisStorage<Value>, conn: ConnectionManager, namespace: String },
}

/// The mail queue: push jobs ([`Outbox`]), check it (`ping`), and hand it to
/// [`crate::run_worker`]. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct MailQueue {
    pub(crate) storage: Storage,
}

impl std::fmt::Debug for MailQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the Redis URL: it may hold a password.
        match &self.storage {
            Storage::Sqlite { path, .. } => f.debug_struct("MailQueue::Sqlite").field("path", path).finish(),
            Storage::Redis { namespace, .. } => {
                f.debug_struct("MailQueue::Redis").field("namespace", namespace).finish_non_exhaustive()
            }
        }
    }
}

/// Opens the pool of the embedded queue file and brings its tables up to date.
async fn connect_sqlite(path: &Path) -> Result<SqlitePool, String> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .pragma("journal_mode", "WAL")
        .pragma("synchronous", "NORMAL")
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await.map_err(|e| e.to_string())?;
    if let Err(e) = SqliteStorage::migrations().run(&pool).await {
        pool.close().await;
        return Err(e.to_string());
    }
    Ok(pool)
}

/// Splits `?namespace=…` off a Redis URL: the URL without it, and the namespace.
fn split_namespace(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut namespace = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix("namespace=") {
            Some(ns) => {
                namespace = Some(ns.to_owned()).filter(|n| !n.is_empty());
                false
            }
            None => !pair.is_empty(),
        })
        .collect();
    let url = if rest.is_empty() { base.to_owned() } else { format!("{base}?{}", rest.join("&")) };
    (url, namespace)
}

impl MailQueue {
    /// Opens the queue the configuration names: Redis when `queue_url` is `redis://…` or
    /// `rediss://…` (namespace from `?namespace=`, default [`DEFAULT_NAMESPACE`]), the embedded
    /// queue `data_dir/queue.db` when it is unset or empty.
    ///
    /// Errors: [`MailError::QueueUrl`] for another scheme, else those of
    /// [`MailQueue::open_redis`] and [`MailQueue::open_sqlite`].
    pub async fn open(queue_url: Option<&str>, data_dir: &Path) -> Result<Self, MailError> {
        match queue_url.map(str::trim).filter(|u| !u.is_empty()) {
            None => Self::open_sqlite(&data_dir.join(EMBEDDED_QUEUE_FILE)).await,
            Some(url)
                if url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("redis+unix://") =>
            {
                let (url, namespace) = split_namespace(url);
                Self::open_redis(&url, namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)).await
            }
            Some(_) => Err(MailError::QueueUrl),
        }
    }

    /// Opens (creating it if needed) the embedded queue in the SQLite file `path`, and brings
    /// its tables up to date.
    ///
    /// Errors: [`MailError::Sqlite`] when the file cannot be created, opened or migrated.
    pub async fn open_sqlite(path: &Path) -> Result<Self, MailError> {
        let fail = |e: String| MailError::Sqlite(path.to_owned(), e);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        }
        // Two processes starting on a fresh data directory race to switch the file to WAL
        // (an exclusive lock busy_timeout does not wait for) and to create the tables (SQLite
        // migrations take no lock): the loser retries and finds the work done.
        let mut attempt = 0u32;
        let pool = loop {
            match connect_sqlite(path).await {
                Ok(pool) => break pool,
                Err(e) if attempt >= 5 => return Err(fail(e)),
                Err(_) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
            }
        };
        let config = apalis_sqlite::Config::default()
            .queue(SQLITE_QUEUE)
            .batch_size(1)
            .heartbeat_interval(HEARTBEAT)
            .missed_heartbeats(MISSED_HEARTBEATS);
        let storage = SqliteStorage::new(&pool).with_config(config);
        Ok(Self { storage: Storage::Sqlite { storage, path: path.to_owned() } })
    }

    /// Connects to Redis at `url` and uses the queue `<namespace>:mail`.
    ///
    /// Errors: [`MailError::Redis`] when the URL is invalid or Redis does not answer.
    pub async fn open_redis(url: &str, namespace: &str) -> Result<Self, MailError> {
        let client = redis::Client::open(url).map_err(|e| MailError::Redis(e.to_string()))?;
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2);
        let mut conn = client
            .get_connection_manager_with_config(manager_config)
            .await
            .map_err(|e| MailError::Redis(e.to_string()))?;
        redis::cmd("PING").query_async::<String>(&mut conn).await.map_err(|e| MailError::Redis(e.to_string()))?;
        let config = apalis_redis::Config::default()
            .queue(format!("{namespace}:mail"))
            .batch_size(1)
            .heartbeat_interval(HEARTBEAT)
            .missed_heartbeats(MISSED_HEARTBEATS)
            .emit_events(false);
        let storage = RedisStorage::new(conn.clone()).with_config(config);
        Ok(Self { storage: Storage::Redis { storage, conn, namespace: namespace.to_owned() } })
    }

    /// `"sqlite"` or `"redis"`.
    pub fn backend_name(&self) -> &'static str {
        match self.storage {
            Storage::Sqlite { .. } => "sqlite",
            Storage::Redis { .. } => "redis",
        }
    }

    /// Queues `job`.
    ///
    /// Errors: [`OutboxError`] when the job cannot be encoded or the backend refuses it.
    pub async fn push(&self, job: DeliveryJob) -> Result<(), OutboxError> {
        let value = serde_json::to_value(job).map_err(|e| OutboxError(format!("encode: {e}")))?;
        self.push_value(value).await
    }

    /// Queues an already encoded job (tests push malformed jobs through this).
    pub(crate) async fn push_value(&self, value: Value) -> Result<(), OutboxError> {
        match &self.storage {
            Storage::Sqlite { storage, .. } => {
                storage.clone().push(value).await.map_err(|e| OutboxError(e.to_string()))
            }
            Storage::Redis { storage, .. } => storage.clone().push(value).await.map_err(|e| OutboxError(e.to_string())),
        }
    }

    /// Checks that the backend answers (for `/readyz`).
    ///
    /// Errors: [`OutboxError`] when Redis does not answer `PING` or no SQLite connection can
    /// be had.
    pub async fn check(&self) -> Result<(), OutboxError> {
        match &self.storage {
            Storage::Sqlite { storage, .. } => {
                storage.pool().acquire().await.map(drop).map_err(|e| OutboxError(e.to_string()))
            }
            Storage::Redis { conn, .. } => {
                let mut conn = conn.clone();
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .map(drop)
                    .map_err(|e| OutboxError(e.to_string()))
            }
        }
    }

    /// Jobs waiting to be picked up (not counting those being delivered).
    ///
    /// Errors: [`OutboxError`] when the backend cannot be asked.
    pub async fn depth(&self) -> Result<i64, OutboxError> {
        match &self.storage {
            Storage::Sqlite { storage, .. } => {
                let stats = storage.fetch_by_queue().await.map_err(|e| OutboxError(e.to_string()))?;
                let pending = stats
                    .iter()
                    .filter(|s| s.title == "PENDING_JOBS")
                    .filter_map(|s| s.value.parse::<f64>().ok())
                    .sum::<f64>();
                // A job count is far below 2^53: the conversion is exact.
                #[allow(clippy::cast_possible_truncation)]
                Ok(pending as i64)
            }
            Storage::Redis { storage, conn, .. } => {
                let config = storage.get_config();
                let mut conn = conn.clone();
                let (active, scheduled): (i64, i64) = redis::pipe()
                    .cmd("LLEN")
                    .arg(config.active_jobs_list())
                    .cmd("ZCARD")
                    .arg(config.scheduled_jobs_set())
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| OutboxError(e.to_string()))?;
                Ok(active + scheduled)
            }
        }
    }

    /// Deletes finished (done or killed) jobs older than `age`: housekeeping, the deliveries
    /// table and not the queue is the record of what was sent. Returns how many were removed.
    ///
    /// apalis' own `Vacuum` is not reachable without depending on `apalis-core` (and its
    /// Redis version also deletes failed jobs still waiting for a retry), hence these few
    /// lines per backend.
    pub(crate) async fn vacuum(&self, age: Duration) -> Result<usize, OutboxError> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let cutoff = i64::try_from(now.saturating_sub(age).as_secs()).unwrap_or(i64::MAX);
        match &self.storage {
            Storage::Sqlite { path, .. } => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || purge_sqlite(&path, cutoff))
                    .await
                    .map_err(|e| OutboxError(e.to_string()))?
                    .map_err(OutboxError)
            }
            Storage::Redis { storage, conn, .. } => {
                let config = storage.get_config();
                let mut conn = conn.clone();
                redis::Script::new(PURGE_REDIS)
                    .key(config.done_jobs_set())
                    .key(config.dead_jobs_set())
                    .key(config.job_data_hash())
                    .key(config.job_meta_hash())
                    .arg(cutoff)
                    .arg(1000)
                    .invoke_async::<usize>(&mut conn)
                    .await
                    .map_err(|e| OutboxError(e.to_string()))
            }
        }
    }

    /// Closes the embedded queue's connections (waiting for them to finish); a no-op on
    /// Redis. Call it after the worker and the API have stopped, before exiting.
    pub async fn close(&self) {
        if let Storage::Sqlite { storage, .. } = &self.storage {
            storage.pool().close().await;
        }
    }
}

/// Removes up to ARGV[2] finished jobs (members of the done and dead sets) whose `done_at` is
/// at or before ARGV[1], with their data, result and metadata.
const PURGE_REDIS: &str = r"
local removed = 0
local limit = tonumber(ARGV[2])
for _, set in ipairs({KEYS[1], KEYS[2]}) do
  local ids = redis.call('SRANDMEMBER', set, limit)
  for _, id in ipairs(ids) do
    local meta_key = KEYS[4] .. ':' .. id
    local done_at = redis.call('HGET', meta_key, 'done_at')
    if (not done_at) or tonumber(done_at) <= tonumber(ARGV[1]) then
      redis.call('HDEL', KEYS[3], id)
      redis.call('HDEL', KEYS[4] .. ':result', id)
      redis.call('DEL', meta_key)
      redis.call('SREM', set, id)
      removed = removed + 1
    end
  end
end
return removed
";

/// Deletes the embedded queue's done and killed jobs finished at or before `cutoff` (Unix
/// seconds).
fn purge_sqlite(path: &Path, cutoff: i64) -> Result<usize, String> {
    use diesel::connection::SimpleConnection as _;
    use diesel::sql_types::{BigInt, Text};
    use diesel::{Connection as _, RunQueryDsl as _};

    let mut conn = diesel::SqliteConnection::establish(&path.to_string_lossy()).map_err(|e| e.to_string())?;
    conn.batch_execute("PRAGMA busy_timeout = 10000;").map_err(|e| e.to_string())?;
    diesel::sql_query(
        "DELETE FROM Jobs WHERE job_type = ? AND status IN ('Done', 'Killed') AND done_at IS NOT NULL AND done_at <= ?",
    )
    .bind::<Text, _>(SQLITE_QUEUE)
    .bind::<BigInt, _>(cutoff)
    .execute(&mut conn)
    .map_err(|e| e.to_string())
}

impl Outbox for MailQueue {
    fn enqueue(&self, job: DeliveryJob) -> BoxFuture<'_, Result<(), OutboxError>> {
        Box::pin(self.push(job))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), OutboxError>> {
        Box::pin(self.check())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_is_split_off_the_url() {
        assert_eq!(split_namespace("redis://h:6379"), ("redis://h:6379".to_owned(), None));
        assert_eq!(split_namespace("redis://h/2?namespace=t1"), ("redis://h/2".to_owned(), Some("t1".to_owned())));
        assert_eq!(
            split_namespace("redis://h?protocol=resp3&namespace=x&a=b"),
            ("redis://h?protocol=resp3&a=b".to_owned(), Some("x".to_owned()))
        );
        assert_eq!(split_namespace("redis://h?namespace="), ("redis://h".to_owned(), None));
    }
}
