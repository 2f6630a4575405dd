//! The worker's configuration: where mail goes, what it looks like, and how hard it retries.

use std::path::PathBuf;
use std::time::Duration;

use latchkey_core::Config;
use latchkey_core::config::Sensitive;

use crate::error::MailError;

/// Where messages go.
#[derive(Clone, PartialEq, Eq)]
pub enum TransportConfig {
    /// An SMTP server: `smtp://host:port` (plain), `smtp://host:port?tls=required`
    /// (STARTTLS) or `smtps://host:port` (TLS); credentials as `smtp://user:pass@host`.
    /// The URL may hold a password, so `Debug` redacts it.
    Smtp(Sensitive),
    /// No SMTP server: one `.eml` file per message in this directory (created if missing).
    Outbox(PathBuf),
}

impl std::fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransportConfig::Smtp(_) => f.write_str("Smtp(<redacted>)"),
            TransportConfig::Outbox(dir) => f.debug_tuple("Outbox").field(dir).finish(),
        }
    }
}

/// Everything the mail worker needs besides the queue, the store, the keys, the metrics and
/// the clock. Build it with [`MailConfig::from_config`] (or by hand in tests).
#[derive(Debug, Clone)]
pub struct MailConfig {
    /// SMTP server or outbox directory.
    pub transport: TransportConfig,
    /// The `From` header of every message, e.g. `Latchkey <no-reply@localhost>`.
    pub from: String,
    /// Base URL of links in messages, without a trailing slash (`https://auth.example.com`).
    pub public_url: String,
    /// Wait before the first retry of a failed SMTP delivery; doubles on every retry.
    pub retry_initial: Duration,
    /// Cap of the retry wait.
    pub retry_max: Duration,
    /// Jobs one worker delivers at once.
    pub concurrency: usize,
    /// Timeout of each SMTP connection attempt and command.
    pub smtp_timeout: Duration,
    /// How long in-flight jobs may take to finish once shutdown is asked for; what is still
    /// running afterwards is abandoned (its job is re-queued by the backend's orphan recovery).
    pub shutdown_timeout: Duration,
    /// How long a claimed delivery stays reserved for the worker sending it; a claim older
    /// than this (a crashed worker) may be taken over.
    pub claim_lease: Duration,
    /// How often an idle worker looks for new jobs.
    pub poll_interval: Duration,
    /// How often the sweep looks for deliveries that are due and not in flight
    /// (`LATCHKEY_DELIVERY_SWEEP_MS`). A retry due sooner than this is waited for by the
    /// worker holding the delivery; a later one is left to the sweep.
    pub sweep_interval: Duration,
    /// How long a queued delivery counts as in flight before the sweep queues it again
    /// (`LATCHKEY_DELIVERY_REQUEUE_MS`).
    pub requeue: Duration,
    /// Webhook deliveries.
    pub webhooks: WebhookConfig,
}

/// How webhook deliveries are made (DESIGN.md 5.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Wait before the first retry (`LATCHKEY_WEBHOOK_RETRY_INITIAL_MS`); doubles per retry.
    pub retry_initial: Duration,
    /// Cap of the retry wait (`LATCHKEY_WEBHOOK_RETRY_MAX_SECS`).
    pub retry_max: Duration,
    /// Attempts before a delivery is `failed` (`LATCHKEY_WEBHOOK_MAX_ATTEMPTS`).
    pub max_attempts: u32,
    /// Whole-request timeout of one attempt (10 s).
    pub timeout: Duration,
    /// The URL and address rules (`LATCHKEY_WEBHOOK_ALLOW_HTTP`, `…_ALLOW_PRIVATE`).
    pub policy: latchkey_core::webhook::UrlPolicy,
}

impl WebhookConfig {
    /// The webhook settings of the product configuration.
    pub fn from_config(config: &Config) -> Self {
        Self {
            retry_initial: Duration::from_millis(config.webhook_retry_initial_ms.max(1)),
            retry_max: Duration::from_secs(config.webhook_retry_max_secs.max(1)),
            max_attempts: config.webhook_max_attempts.max(1),
            timeout: Duration::from_secs(10),
            policy: config.webhook_policy(),
        }
    }
}

impl MailConfig {
    /// The worker configuration of the product configuration: `smtp_url` (else the outbox
    /// `$DATA_DIR/outbox`), `mail_from`, `public_url()`, `mail_retry_initial_ms`,
    /// `mail_retry_max_secs`, `worker_concurrency` and `shutdown_timeout_secs`.
    pub fn from_config(config: &Config) -> Self {
        let transport = match config.smtp_url.as_deref().map(str::trim) {
            Some(url) if !url.is_empty() => TransportConfig::Smtp(Sensitive(url.to_owned())),
            _ => TransportConfig::Outbox(config.data_dir.join("outbox")),
        };
        Self {
            transport,
            from: config.mail_from.clone(),
            public_url: config.public_url(),
            retry_initial: Duration::from_millis(config.mail_retry_initial_ms.max(1)),
            retry_max: Duration::from_secs(config.mail_retry_max_secs.max(1)),
            concurrency: usize::try_from(config.worker_concurrency).unwrap_or(16).max(1),
            smtp_timeout: Duration::from_secs(15),
            shutdown_timeout: Duration::from_secs(config.shutdown_timeout_secs),
            claim_lease: Duration::from_secs(60),
            poll_interval: Duration::from_millis(25),
            sweep_interval: Duration::from_millis(config.delivery_sweep_ms.max(1)),
            requeue: config.delivery_requeue().to_std().unwrap_or(Duration::from_secs(3)),
            webhooks: WebhookConfig::from_config(config),
        }
    }

    /// Checks the settings the worker would refuse at start — the `From` address and the SMTP
    /// URL — and creates the outbox directory; for the binary to fail fast before it starts
    /// serving.
    ///
    /// Errors: [`MailError::From`], [`MailError::Transport`] or [`MailError::Outbox`].
    pub fn check(&self) -> Result<(), MailError> {
        self.from.trim().parse::<lettre::message::Mailbox>().map_err(|_| MailError::From(self.from.clone()))?;
        crate::transport::Mailer::new(&self.transport, self.smtp_timeout).map(drop)
    }

    /// A configuration writing to `transport`, with short retry delays (10 ms doubling up to
    /// 200 ms), a fast poll and sweep (50 ms, re-queueing after 1 s), and webhooks to plain
    /// http on loopback allowed, for tests.
    pub fn for_test(transport: TransportConfig) -> Self {
        Self {
            transport,
            from: "Latchkey <no-reply@localhost>".to_owned(),
            public_url: "http://latchkey.test".to_owned(),
            retry_initial: Duration::from_millis(10),
            retry_max: Duration::from_millis(200),
            concurrency: 4,
            smtp_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(5),
            claim_lease: Duration::from_secs(60),
            poll_interval: Duration::from_millis(25),
            sweep_interval: Duration::from_millis(50),
            requeue: Duration::from_millis(1000),
            webhooks: WebhookConfig {
                retry_initial: Duration::from_millis(10),
                retry_max: Duration::from_millis(200),
                max_attempts: 4,
                timeout: Duration::from_secs(2),
                policy: latchkey_core::webhook::UrlPolicy { allow_http: true, allow_private: true },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_config_follows_the_design_defaults() {
        let c = Config::default();
        let m = MailConfig::from_config(&c);
        assert_eq!(m.transport, TransportConfig::Outbox(PathBuf::from("./data/outbox")));
        assert_eq!(m.from, "Latchkey <no-reply@localhost>");
        assert_eq!(m.public_url, "http://127.0.0.1:8080");
        assert_eq!(m.retry_initial, Duration::from_secs(1));
        assert_eq!(m.retry_max, Duration::from_secs(30));
        assert_eq!(m.concurrency, 16);

        let c = Config { smtp_url: Some("smtp://user:hunter2@mail:25".into()), ..Config::default() };
        let m = MailConfig::from_config(&c);
        assert!(matches!(m.transport, TransportConfig::Smtp(_)));
        assert!(!format!("{m:?}").contains("hunter2"));
    }
}
