//! Loading and checking the configuration: `LATCHKEY_*` environment variables over an
//! optional `latchkey.toml`, over the documented defaults (DESIGN.md section 4); then the
//! checks that fail start-up with a message naming the bad key.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use latchkey_core::crypto::ServerKey;
use latchkey_core::{Config, Keys};
use latchkey_store::Backend;

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

fn bad(key: &str, why: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("{key}: {why}"))
}

/// The configuration keys (the fields of [`Config`]), lower-case.
fn known_keys() -> Vec<String> {
    match serde_json::to_value(Config::default()) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// `LATCHKEY_*` variables that are not configuration keys (typos, most likely), except
/// those other tools of the project read (`LATCHKEY_TEST_*`, `LATCHKEY_ADMIN_PASSWORD`, the
/// acceptance test's `LATCHKEY_BIN` and `LATCHKEY_ACCEPT_VENV`).
pub fn unknown_variables() -> Vec<String> {
    let keys = known_keys();
    std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("LATCHKEY_"))
        .filter(|k| {
            let key = k.trim_start_matches("LATCHKEY_");
            !keys.iter().any(|known| known.eq_ignore_ascii_case(key))
                && !key.starts_with("TEST_")
                && !["ADMIN_PASSWORD", "BIN", "ACCEPT_VENV"].contains(&key)
        })
        .collect()
}

/// Loads the configuration: defaults, then `file` (default `latchkey.toml` if present), then
/// the environment (`LATCHKEY_<KEY>`; other `LATCHKEY_*` variables, such as the test
/// settings, are ignored).
pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
    let path = file.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("latchkey.toml"));
    if file.is_some() && !path.exists() {
        return Err(bad("--config", format!("{} does not exist", path.display())));
    }
    let keys = known_keys();
    let env =
        Env::prefixed("LATCHKEY_").filter(move |k| keys.iter().any(|known| k.as_str().eq_ignore_ascii_case(known)));
    let config: Config = Figment::from(Serialized::defaults(Config::default()))
        .merge(Toml::file(&path))
        .merge(env)
        .extract()
        .map_err(|e| ConfigError(e.to_string().replace("key \"default.", "key \"")))?;
    validate(&config)?;
    Ok(config)
}

/// Checks what can be checked without the services: URL schemes, the key's length, the
/// limits, and that the data directory is writable (created if missing).
pub fn validate(c: &Config) -> Result<(), ConfigError> {
    Backend::of(&c.database_url()).map_err(|e| bad("LATCHKEY_DATABASE_URL", e))?;
    if let Some(q) = &c.queue_url
        && !(q.starts_with("redis://") || q.starts_with("rediss://"))
    {
        return Err(bad("LATCHKEY_QUEUE_URL", "must be redis://… or rediss://… (unset: the embedded queue)"));
    }
    if let Some(s) = &c.smtp_url
        && !(s.starts_with("smtp://") || s.starts_with("smtps://"))
    {
        return Err(bad("LATCHKEY_SMTP_URL", "must be smtp://… or smtps://… (unset: .eml files in the outbox)"));
    }
    let public = c.public_url();
    if !(public.starts_with("http://") || public.starts_with("https://")) {
        return Err(bad("LATCHKEY_PUBLIC_URL", "must start with http:// or https://"));
    }
    if let Some(key) = &c.secret_key {
        ServerKey::parse(&key.0).map_err(|e| bad("LATCHKEY_SECRET_KEY", e))?;
    }
    previous_keys(c)?;
    if c.operator_token.as_ref().is_some_and(|t| t.0.len() < 16) {
        return Err(bad("LATCHKEY_OPERATOR_TOKEN", "must be at least 16 characters"));
    }
    for (key, value) in [
        ("LATCHKEY_EMAIL_OTP_TTL_SECS", c.email_otp_ttl_secs),
        ("LATCHKEY_EMAIL_OTP_WINDOW_SECS", c.email_otp_window_secs),
        ("LATCHKEY_OTP_BLOCK_SECS", c.otp_block_secs),
        ("LATCHKEY_CHALLENGE_TTL_SECS", c.challenge_ttl_secs),
        ("LATCHKEY_RESET_LINK_TTL_SECS", c.reset_link_ttl_secs),
        ("LATCHKEY_SESSION_TTL_SECS", c.session_ttl_secs),
        ("LATCHKEY_SIGNIN_WINDOW_SECS", c.signin_window_secs),
        ("LATCHKEY_TENANT_IDLE_SECS", c.tenant_idle_secs),
        ("LATCHKEY_REQUEST_TIMEOUT_SECS", c.request_timeout_secs),
        ("LATCHKEY_DELIVERY_SWEEP_MS", c.delivery_sweep_ms),
        ("LATCHKEY_WEBHOOK_RETRY_INITIAL_MS", c.webhook_retry_initial_ms),
        ("LATCHKEY_WEBHOOK_RETRY_MAX_SECS", c.webhook_retry_max_secs),
        ("LATCHKEY_PURGE_INTERVAL_SECS", c.purge_interval_secs),
    ] {
        if value == 0 {
            return Err(bad(key, "must be greater than 0"));
        }
    }
    for (key, value) in [
        ("LATCHKEY_EMAIL_OTP_MAX_SENDS", c.email_otp_max_sends),
        ("LATCHKEY_OTP_MAX_FAILURES", c.otp_max_failures),
        ("LATCHKEY_SIGNIN_MAX_FAILURES", c.signin_max_failures),
        ("LATCHKEY_SIGNIN_PER_IP_PER_MINUTE", c.signin_per_ip_per_minute),
        ("LATCHKEY_DB_POOL_SIZE", c.db_pool_size),
        ("LATCHKEY_WORKER_CONCURRENCY", c.worker_concurrency),
        ("LATCHKEY_WEBHOOK_MAX_ATTEMPTS", c.webhook_max_attempts),
        ("LATCHKEY_WEBHOOKS_PER_TENANT", c.webhooks_per_tenant),
        ("LATCHKEY_PURGE_BATCH", c.purge_batch),
    ] {
        if value == 0 {
            return Err(bad(key, "must be greater than 0"));
        }
    }
    // A pause longer than the interval would hold one purge past the next (and a huge one
    // would stop housekeeping for good).
    if c.purge_pause_ms > c.purge_interval_secs.saturating_mul(1000) {
        return Err(bad("LATCHKEY_PURGE_PAUSE_MS", "must not exceed LATCHKEY_PURGE_INTERVAL_SECS"));
    }
    latchkey_core::password::PasswordHasher::new(c.password_params())
        .map(drop)
        .map_err(|e| bad("LATCHKEY_ARGON2_*", e))?;
    ensure_writable(&c.data_dir).map_err(|e| {
        bad("LATCHKEY_DATA_DIR", format!("the data directory {} cannot be used: {e}", c.data_dir.display()))
    })
}

/// Creates the data directory if needed (mode 0700: it holds the database, the key and the
/// outbox of sent codes) and checks that it is writable. An existing directory keeps its
/// mode, but one that other users may write to is refused (they could replace the key or
/// the database): the message names the directory and the fix. A warning says when others
/// can read it.
fn ensure_writable(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(dir)?;
    } else {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir)?.permissions().mode();
            if mode & 0o022 != 0 {
                return Err(std::io::Error::other(format!(
                    "it is writable by {} (mode {:o}); make it private with `chmod 700 {}`",
                    if mode & 0o002 != 0 { "every user" } else { "its group" },
                    mode & 0o7777,
                    dir.display()
                )));
            }
            if mode & 0o007 != 0 {
                eprintln!("latchkey: warning: the data directory {} is readable by other users", dir.display());
            }
        }
    }
    let probe = dir.join(format!(".latchkey-write-test-{}", std::process::id()));
    fs::File::create(&probe)?.write_all(b"ok")?;
    fs::remove_file(&probe)
}

/// Makes the file at `path` private before a library opens it: creates it empty with mode
/// 0600 when missing (SQLite takes an empty file for a new database and gives its `-wal`,
/// `-shm` and journal files the database file's mode), and takes the group and other
/// permissions off an existing one (a warning when that is not allowed).
///
/// Errors: the file cannot be opened or created; the message names the file.
pub fn private_file(path: &Path) -> Result<(), ConfigError> {
    let fail = |e: std::io::Error| bad("LATCHKEY_DATA_DIR", format!("cannot make {} private: {e}", path.display()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let file = options.open(path).map_err(fail)?;
        let mode = file.metadata().map_err(fail)?.permissions().mode();
        if mode & 0o077 != 0
            && let Err(e) = file.set_permissions(fs::Permissions::from_mode(mode & 0o700))
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot make the file private (mode 0600)");
        }
    }
    #[cfg(not(unix))]
    options.open(path).map_err(fail)?;
    Ok(())
}

/// The file of a SQLite database URL (`None` for Postgres and in-memory databases).
pub fn sqlite_file(database_url: &str) -> Option<PathBuf> {
    match Backend::of(database_url) {
        Ok((Backend::Sqlite, target)) if !target.starts_with(':') && !target.starts_with("file:") => {
            Some(PathBuf::from(target))
        }
        _ => None,
    }
}

/// The server key: `LATCHKEY_SECRET_KEY`, else `$DATA_DIR/secret.key`, generated (mode 0600)
/// on first start.
pub fn server_key(c: &Config) -> Result<ServerKey, ConfigError> {
    if let Some(key) = &c.secret_key {
        return ServerKey::parse(&key.0).map_err(|e| bad("LATCHKEY_SECRET_KEY", e));
    }
    let path = c.data_dir.join("secret.key");
    match fs::read_to_string(&path) {
        Ok(text) => ServerKey::parse(&text).map_err(|e| bad("LATCHKEY_DATA_DIR", format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = ServerKey::generate();
            write_private(&path, key.to_base64().as_bytes())
                .map_err(|e| bad("LATCHKEY_DATA_DIR", format!("cannot write {}: {e}", path.display())))?;
            tracing::info!(path = %path.display(), "generated a new server key");
            Ok(key)
        }
        Err(e) => Err(bad("LATCHKEY_DATA_DIR", format!("cannot read {}: {e}", path.display()))),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// The previous server keys (`LATCHKEY_PREVIOUS_SECRET_KEYS`, comma-separated), in order.
///
/// Errors, naming the variable and the position: a key that does not parse, or one listed
/// twice.
pub fn previous_keys(c: &Config) -> Result<Vec<ServerKey>, ConfigError> {
    const VAR: &str = "LATCHKEY_PREVIOUS_SECRET_KEYS";
    let Some(list) = &c.previous_secret_keys else { return Ok(Vec::new()) };
    let mut keys: Vec<ServerKey> = Vec::new();
    for (i, item) in list.0.split(',').map(str::trim).filter(|s| !s.is_empty()).enumerate() {
        let key = ServerKey::parse(item).map_err(|e| bad(VAR, format!("key {} of the list: {e}", i + 1)))?;
        if keys.iter().any(|k| k.id() == key.id()) {
            return Err(bad(VAR, format!("key {} of the list is listed twice (fingerprint {})", i + 1, key.id())));
        }
        keys.push(key);
    }
    Ok(keys)
}

/// The working keys of the configuration: the server key ([`server_key`]) and the previous
/// keys ([`previous_keys`]).
///
/// Errors: those of both, and a previous key equal to the current one (the message names
/// `LATCHKEY_PREVIOUS_SECRET_KEYS` and the fingerprint).
pub fn keys(c: &Config) -> Result<Keys, ConfigError> {
    let previous = previous_keys(c)?;
    let current = server_key(c)?;
    if previous.iter().any(|k| k.id() == current.id()) {
        return Err(bad(
            "LATCHKEY_PREVIOUS_SECRET_KEYS",
            format!(
                "lists the current server key (fingerprint {}); a previous key must differ from LATCHKEY_SECRET_KEY",
                current.id()
            ),
        ));
    }
    Ok(Keys::with_previous(&current, &previous))
}
