//! The typed configuration: every key of DESIGN.md section 4 with its documented default,
//! plus the few operational knobs this implementation adds. Loading (environment variables
//! `LATCHKEY_*` over an optional `latchkey.toml`) and the checks that need the file system
//! live in the binary; this module is plain data.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use chrono::Duration;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};

use crate::password::PasswordParams;

/// A configuration value that must never be printed (keys, tokens). `Debug` redacts it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sensitive(#[serde(deserialize_with = "string_or_number")] pub String);

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Output format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The whole configuration. Field `x` is set by the environment variable `LATCHKEY_X`
/// (upper case) or the key `x` of `latchkey.toml`; durations are in seconds unless the name
/// says otherwise.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP API listens on (default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// Directory for the embedded database, queue, outbox and generated key (default `./data`).
    pub data_dir: PathBuf,
    /// `postgres://…` or `sqlite://path`; default `sqlite://$DATA_DIR/latchkey.db`.
    pub database_url: Option<String>,
    /// `redis://…` for Redis; default: the embedded queue in `$DATA_DIR/queue.db`.
    pub queue_url: Option<String>,
    /// `smtp://`, `smtp://…?tls=required` (STARTTLS) or `smtps://` URL; default: `.eml` files
    /// in `$DATA_DIR/outbox`.
    pub smtp_url: Option<String>,
    /// The `From` header of every message (default `Latchkey <no-reply@localhost>`).
    pub mail_from: String,
    /// Base of links in emails; default `http://$LISTEN`.
    pub public_url: Option<String>,
    /// The server key (32 bytes as 64 hex or 44 base64 characters); default: generated into
    /// `$DATA_DIR/secret.key` (mode 0600) on first start.
    pub secret_key: Option<Sensitive>,
    /// Server keys of before a rotation (comma-separated, each like `secret_key`): accepted
    /// for opening sealed values and checking keyed hashes, never for sealing (DESIGN.md 5.8).
    /// Default: none.
    pub previous_secret_keys: Option<Sensitive>,
    /// Bearer token of operator endpoints; unset disables them.
    pub operator_token: Option<Sensitive>,
    /// Proxies whose `X-Forwarded-For` is believed (comma-separated addresses or CIDRs).
    #[serde(deserialize_with = "comma_list")]
    pub trusted_proxies: Vec<IpNet>,

    /// Lifetime of an emailed code (default 300).
    pub email_otp_ttl_secs: u64,
    /// Wait between two emailed codes to one user (default 60).
    pub email_otp_resend_secs: u64,
    /// Most codes (or reset links) sent to one user per sliding window (default 3).
    pub email_otp_max_sends: u32,
    /// The sliding window of `email_otp_max_sends` (default 300).
    pub email_otp_window_secs: u64,
    /// Wrong codes, of either method, that block a user's OTP (default 3).
    pub otp_max_failures: u32,
    /// Length of that block (default 300).
    pub otp_block_secs: u64,
    /// Lifetime of a sign-in challenge or enablement setup (default 600).
    pub challenge_ttl_secs: u64,
    /// Lifetime of an admin reset link (default 3600).
    pub reset_link_ttl_secs: u64,
    /// Lifetime of a session (default 43200 = 12 h).
    pub session_ttl_secs: u64,
    /// Wrong passwords per user (or per unknown address of a tenant) per window before sign-in
    /// answers 429 `rate_limited` (default 10).
    pub signin_max_failures: u32,
    /// The window of `signin_max_failures` (default 900 = 15 minutes).
    pub signin_window_secs: u64,
    /// Unauthenticated requests per client IP per minute (default 600).
    pub signin_per_ip_per_minute: u32,
    /// How recent a session's second factor must be for sensitive admin actions (default 300).
    pub step_up_secs: u64,
    /// Lifetime of a hosted sign-in's hand-off code `K` (default 60, DESIGN.md 5.7).
    pub handoff_code_ttl_secs: u64,
    /// Most days a tenant may let a trusted device last (default 90, DESIGN.md 5.4).
    pub remember_device_max_days: u32,
    /// Most days of a tenant's enrollment grace period (default 365, DESIGN.md 5.5).
    pub enrollment_grace_max_days: u32,
    /// The default WebAuthn relying party id; default: the host of the public URL
    /// (DESIGN.md 5.1). A domain name, never an IP address.
    pub webauthn_rp_id: Option<String>,
    /// The default accepted WebAuthn origins (comma-separated); default: the origin of the
    /// public URL.
    #[serde(deserialize_with = "comma_strings")]
    pub webauthn_origins: Vec<String>,
    /// Most WebAuthn credentials (passkeys, security keys) per user (default 10, DESIGN.md 5.1).
    pub webauthn_max_credentials: u32,

    /// Idle time after which a tenant's actor stops (default 600).
    pub tenant_idle_secs: u64,
    /// How long a tenant actor trusts its cached policy before re-reading it, in
    /// milliseconds; bounds how soon another process sees a policy change (default 1000).
    pub policy_cache_ms: u64,
    /// Requests per second one tenant may make before 429, so one tenant's storm cannot
    /// starve the others (default 2000; burst of the same size).
    pub tenant_requests_per_second: u32,
    /// First retry delay of a failed email delivery, in milliseconds (default 1000);
    /// doubles on every retry.
    pub mail_retry_initial_ms: u64,
    /// Cap of the retry delay (default 30).
    pub mail_retry_max_secs: u64,
    /// Email jobs a worker delivers at once (default 16).
    pub worker_concurrency: u32,
    /// How often the worker's sweep looks for deliveries that are due and not in flight
    /// (lost by the queue, waiting for a retry, or recorded by a transaction), in
    /// milliseconds (default 1000, DESIGN.md 5.8).
    pub delivery_sweep_ms: u64,
    /// How long a delivery pushed to the queue counts as in flight before the sweep takes it
    /// for lost and queues it again, in milliseconds (default: 3 × `delivery_sweep_ms`,
    /// at least 1000).
    pub delivery_requeue_ms: Option<u64>,
    /// How long an answer waits, in milliseconds, for the notices of what it did to be handed
    /// to the mail server (DESIGN.md 5.6: e.g. the old address hears of an email change
    /// first); all notices but those of a completed sign-in; 0 answers at once (default 2000).
    pub notice_wait_ms: u64,
    /// How often each process deletes the rows nothing can use any more (expired sessions,
    /// long-expired challenges, old codes and deliveries), in seconds (default 600).
    pub purge_interval_secs: u64,
    /// Most rows of one table one purge statement deletes (default 5000): the purge goes
    /// on in rounds until less than this is left, so no statement deletes much at once.
    pub purge_batch: u32,
    /// The pause between two purge rounds, in milliseconds (default 20), which leaves the
    /// database's log to the requests meanwhile.
    pub purge_pause_ms: u64,
    /// First retry delay of a failed webhook delivery, in milliseconds (default 1000,
    /// DESIGN.md 5.6); doubles on every retry.
    pub webhook_retry_initial_ms: u64,
    /// Cap of the webhook retry delay (default 300).
    pub webhook_retry_max_secs: u64,
    /// Attempts of one webhook delivery before it is `failed` (default 10).
    pub webhook_max_attempts: u32,
    /// Accept `http://` webhook URLs, not only `https://` (default false).
    pub webhook_allow_http: bool,
    /// Accept webhook hosts that resolve to loopback, private, link-local, unique-local,
    /// multicast or unspecified addresses (default false: the SSRF guard).
    pub webhook_allow_private: bool,
    /// Most webhooks one tenant may have (default 20).
    pub webhooks_per_tenant: u32,
    /// Database connections per process (default 16).
    pub db_pool_size: u32,
    /// Time given to in-flight requests and jobs on SIGTERM (default 30).
    pub shutdown_timeout_secs: u64,
    /// Longest time one request may take, body included; then 408 (default 30).
    pub request_timeout_secs: u64,
    /// Whether `/docs/` (the interactive API page, Swagger UI) is served (default true);
    /// `/api/v1/openapi.json` is served either way.
    pub docs: bool,
    /// Log format: `text` or `json` (default `text`).
    pub log_format: LogFormat,
    /// argon2id memory cost in KiB (default 19456).
    pub argon2_memory_kib: u32,
    /// argon2id passes (default 2).
    pub argon2_iterations: u32,
    /// argon2id lanes (default 1).
    pub argon2_parallelism: u32,
}

impl Default for Config {
    fn default() -> Self {
        let pw = PasswordParams::default();
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            queue_url: None,
            smtp_url: None,
            mail_from: "Latchkey <no-reply@localhost>".to_owned(),
            public_url: None,
            secret_key: None,
            previous_secret_keys: None,
            operator_token: None,
            trusted_proxies: Vec::new(),
            email_otp_ttl_secs: 300,
            email_otp_resend_secs: 60,
            email_otp_max_sends: 3,
            email_otp_window_secs: 300,
            otp_max_failures: 3,
            otp_block_secs: 300,
            challenge_ttl_secs: 600,
            reset_link_ttl_secs: 3600,
            session_ttl_secs: 43_200,
            signin_max_failures: 10,
            signin_window_secs: 900,
            signin_per_ip_per_minute: 600,
            step_up_secs: 300,
            handoff_code_ttl_secs: 60,
            remember_device_max_days: 90,
            enrollment_grace_max_days: 365,
            webauthn_rp_id: None,
            webauthn_origins: Vec::new(),
            webauthn_max_credentials: 10,
            tenant_idle_secs: 600,
            policy_cache_ms: 1000,
            tenant_requests_per_second: 2000,
            mail_retry_initial_ms: 1000,
            mail_retry_max_secs: 30,
            worker_concurrency: 16,
            delivery_sweep_ms: 1000,
            delivery_requeue_ms: None,
            notice_wait_ms: 2000,
            purge_interval_secs: 600,
            purge_batch: 5000,
            purge_pause_ms: 20,
            webhook_retry_initial_ms: 1000,
            webhook_retry_max_secs: 300,
            webhook_max_attempts: 10,
            webhook_allow_http: false,
            webhook_allow_private: false,
            webhooks_per_tenant: 20,
            db_pool_size: 16,
            shutdown_timeout_secs: 30,
            request_timeout_secs: 30,
            docs: true,
            log_format: LogFormat::Text,
            argon2_memory_kib: pw.memory_kib,
            argon2_iterations: pw.iterations,
            argon2_parallelism: pw.parallelism,
        }
    }
}

fn secs(s: u64) -> Duration {
    Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX / 1000).min(i64::MAX / 1000))
}

impl Config {
    /// Defaults suited to tests: cheap argon2, a fixed server key, an operator token, and
    /// generous per-IP and per-tenant budgets. Storage URLs stay unset; tests set them.
    pub fn for_test() -> Self {
        let pw = PasswordParams::for_test();
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            secret_key: Some(Sensitive("11".repeat(32))),
            operator_token: Some(Sensitive("test-operator-token".to_owned())),
            signin_per_ip_per_minute: 100_000,
            tenant_requests_per_second: 100_000,
            mail_retry_initial_ms: 50,
            mail_retry_max_secs: 1,
            db_pool_size: 8,
            argon2_memory_kib: pw.memory_kib,
            argon2_iterations: pw.iterations,
            argon2_parallelism: pw.parallelism,
            // No worker in most tests: nothing would finish the notice the answer waits for.
            notice_wait_ms: 0,
            ..Self::default()
        }
    }

    /// The argon2id parameters.
    pub fn password_params(&self) -> PasswordParams {
        PasswordParams {
            memory_kib: self.argon2_memory_kib,
            iterations: self.argon2_iterations,
            parallelism: self.argon2_parallelism,
        }
    }

    /// The database URL, defaulting to the SQLite file in the data directory.
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("latchkey.db").display()))
    }

    /// The base URL of links in emails (no trailing slash).
    pub fn public_url(&self) -> String {
        let url = self.public_url.clone().unwrap_or_else(|| format!("http://{}", self.listen));
        url.trim_end_matches('/').to_owned()
    }

    /// How long a queued delivery counts as in flight: `delivery_requeue_ms`, else three
    /// sweeps (at least a second).
    pub fn delivery_requeue(&self) -> Duration {
        let ms = self.delivery_requeue_ms.unwrap_or(self.delivery_sweep_ms.saturating_mul(3)).max(1000);
        Duration::milliseconds(i64::try_from(ms).unwrap_or(i64::MAX / 1000).min(i64::MAX / 1000))
    }

    /// The webhook SSRF guard's settings.
    pub fn webhook_policy(&self) -> crate::webhook::UrlPolicy {
        crate::webhook::UrlPolicy { allow_http: self.webhook_allow_http, allow_private: self.webhook_allow_private }
    }

    /// The server's bounds on tenant settings.
    pub fn settings_bounds(&self) -> crate::settings::SettingsBounds {
        crate::settings::SettingsBounds {
            remember_device_max_days: self.remember_device_max_days,
            enrollment_grace_max_days: self.enrollment_grace_max_days,
        }
    }

    /// The default WebAuthn relying party: `webauthn_rp_id` or the host of the public URL,
    /// and `webauthn_origins` or the public URL's origin (DESIGN.md 5.1). Not checked here
    /// (see [`crate::settings::check_relying_party`]).
    pub fn relying_party(&self) -> crate::settings::RelyingParty {
        let public = self.public_url();
        let (scheme, rest) = public.split_once("://").unwrap_or(("http", public.as_str()));
        let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
        let origin = format!("{scheme}://{authority}");
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(v6),
            None => authority.split(':').next().unwrap_or(authority),
        }
        .to_ascii_lowercase();
        crate::settings::RelyingParty {
            rp_id: self.webauthn_rp_id.clone().unwrap_or(host),
            origins: if self.webauthn_origins.is_empty() { vec![origin] } else { self.webauthn_origins.clone() },
        }
    }

    /// The product limits as durations.
    pub fn limits(&self) -> Limits {
        Limits {
            email_otp_ttl: secs(self.email_otp_ttl_secs),
            email_otp_resend: secs(self.email_otp_resend_secs),
            email_otp_max_sends: self.email_otp_max_sends,
            email_otp_window: secs(self.email_otp_window_secs),
            otp_max_failures: self.otp_max_failures,
            otp_block: secs(self.otp_block_secs),
            challenge_ttl: secs(self.challenge_ttl_secs),
            reset_link_ttl: secs(self.reset_link_ttl_secs),
            session_ttl: secs(self.session_ttl_secs),
            signin_max_failures: self.signin_max_failures,
            signin_window: secs(self.signin_window_secs),
            step_up: secs(self.step_up_secs),
            handoff_code_ttl: secs(self.handoff_code_ttl_secs),
            webauthn_max_credentials: self.webauthn_max_credentials,
        }
    }
}

/// The product's timings and counts (DESIGN.md section 1), as the rules consume them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Lifetime of an emailed code.
    pub email_otp_ttl: Duration,
    /// Wait between two sends to one user.
    pub email_otp_resend: Duration,
    /// Most sends to one user per window.
    pub email_otp_max_sends: u32,
    /// The sliding send window.
    pub email_otp_window: Duration,
    /// Wrong codes before a block.
    pub otp_max_failures: u32,
    /// Length of a block.
    pub otp_block: Duration,
    /// Lifetime of a challenge or setup.
    pub challenge_ttl: Duration,
    /// Lifetime of a reset link.
    pub reset_link_ttl: Duration,
    /// Lifetime of a session.
    pub session_ttl: Duration,
    /// Wrong passwords per window before 429.
    pub signin_max_failures: u32,
    /// The wrong-password window.
    pub signin_window: Duration,
    /// Freshness of the second factor required for sensitive actions.
    pub step_up: Duration,
    /// Lifetime of a hosted sign-in's hand-off code (DESIGN.md 5.7).
    pub handoff_code_ttl: Duration,
    /// Most WebAuthn credentials per user.
    pub webauthn_max_credentials: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Config::default().limits()
    }
}

/// `url` with the password of its user info replaced by `***`
/// (`postgres://u:secret@h/db` → `postgres://u:***@h/db`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let masked = if userinfo.contains(':') { format!("{user}:***") } else { user.to_owned() };
            format!("{scheme}://{masked}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

impl Config {
    /// The configuration as in force: derived defaults filled in (database URL, public
    /// URL), passwords in URLs masked, keys and tokens redacted — for `latchkey config`.
    pub fn effective(&self) -> Config {
        let mut c = self.clone();
        c.database_url = Some(redact_url(&self.database_url()));
        c.public_url = Some(self.public_url());
        c.queue_url = self.queue_url.as_deref().map(redact_url);
        c.smtp_url = self.smtp_url.as_deref().map(redact_url);
        c
    }
}

/// Accepts a string or a number (an environment value such as `12345` arrives as a number).
fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        S(String),
        I(i64),
        U(u64),
        F(f64),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::S(s) => s,
        Raw::I(i) => i.to_string(),
        Raw::U(u) => u.to_string(),
        Raw::F(f) => f.to_string(),
    })
}

/// Accepts `"a, b"` or a list of strings; empty items are dropped.
fn comma_strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    let items = match Raw::deserialize(d)? {
        Raw::One(s) => s.split(',').map(str::to_owned).collect(),
        Raw::Many(v) => v,
    };
    Ok(items.into_iter().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
}

/// Accepts `"10.0.0.1, 10.1.0.0/16"` or a list; bare addresses become host networks.
fn comma_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    let items = match Raw::deserialize(d)? {
        Raw::One(s) => s.split(',').map(str::to_owned).collect(),
        Raw::Many(v) => v,
    };
    items
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| serde::de::Error::custom(format!("`{s}` is not an IP address or CIDR")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_design() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.database_url(), "sqlite://./data/latchkey.db");
        assert_eq!(c.public_url(), "http://127.0.0.1:8080");
        let l = c.limits();
        assert_eq!(l.email_otp_ttl, Duration::minutes(5));
        assert_eq!(l.email_otp_resend, Duration::seconds(60));
        assert_eq!(l.email_otp_max_sends, 3);
        assert_eq!(l.otp_max_failures, 3);
        assert_eq!(l.otp_block, Duration::minutes(5));
        assert_eq!(l.challenge_ttl, Duration::minutes(10));
        assert_eq!(l.reset_link_ttl, Duration::hours(1));
        assert_eq!(l.session_ttl, Duration::hours(12));
        assert_eq!(l.signin_max_failures, 10);
        assert_eq!(l.step_up, Duration::minutes(5));
        assert_eq!(c.settings_bounds(), crate::settings::SettingsBounds::default());
    }

    #[test]
    fn the_default_relying_party_is_the_public_url() {
        let c = Config { public_url: Some("http://localhost:8123/".into()), ..Config::default() };
        let rp = c.relying_party();
        assert_eq!((rp.rp_id.as_str(), rp.origins.clone()), ("localhost", vec!["http://localhost:8123".to_owned()]));
        let c = Config { public_url: Some("https://Login.Example.com/base".into()), ..Config::default() };
        assert_eq!(c.relying_party().rp_id, "login.example.com");
        assert_eq!(c.relying_party().origins, vec!["https://Login.Example.com".to_owned()]);
        let c = Config {
            webauthn_rp_id: Some("example.com".into()),
            webauthn_origins: vec!["https://a.example.com".into()],
            ..Config::default()
        };
        assert_eq!(c.relying_party().origins, vec!["https://a.example.com".to_owned()]);
    }

    #[test]
    fn url_passwords_are_masked() {
        assert_eq!(redact_url("postgres://u:pw@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact_url("redis://:pw@h/0"), "redis://:***@h/0");
        assert_eq!(redact_url("smtp://user@h:25"), "smtp://user@h:25");
        assert_eq!(redact_url("sqlite://./data/x.db"), "sqlite://./data/x.db");
        assert_eq!(redact_url("smtps://a:b@c@h"), "smtps://a:***@h");
        let c = Config { smtp_url: Some("smtp://u:hunter2@h".into()), ..Config::default() };
        let shown = format!("{:?}", c.effective());
        assert!(!shown.contains("hunter2") && shown.contains("sqlite://./data/latchkey.db"), "{shown}");
    }

    #[test]
    fn secrets_are_redacted() {
        let c = Config::for_test();
        let shown = format!("{c:?}");
        assert!(!shown.contains("test-operator-token"));
        assert!(!shown.contains(&"11".repeat(32)));
    }
}
