//! Wiring: the store, keys, metrics, tenant actors and use-cases, the HTTP server.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_web::{App, HttpResponse, HttpServer, web};
use latchkey_api::{AppState, OutboxProbe};
use latchkey_core::metrics::Metrics;
use latchkey_core::password::PasswordHasher;
use latchkey_core::{Clock, Config, Keys};
use latchkey_mail::{MailConfig, MailQueue, TransportConfig};
use latchkey_store::Store;
use latchkey_tenant::{ActorSettings, Outbox, Registry, Service};

use crate::config;

/// What every mode needs: the configuration, the store (migrated), the keys, the metrics.
#[derive(Clone, Debug)]
pub struct Core {
    /// The configuration.
    pub config: Arc<Config>,
    /// The database.
    pub store: Store,
    /// The working keys.
    pub keys: Keys,
    /// The metrics registry.
    pub metrics: Metrics,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Set at shutdown: the HTTP API closes every connection after its answer (keep-alive
    /// connections drain instead of being cut) and `/readyz` answers 503.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

/// Errors of start-up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The server key does not match the database's, or sealed values name an unknown key.
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
    /// The database cannot be opened or migrated.
    #[error("database: {0}")]
    Store(#[from] latchkey_store::StoreError),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl Core {
    /// Opens the store (running migrations; a SQLite file is created mode 0600), loads or
    /// generates the server key and checks it against the database's (DESIGN.md 5.8): a
    /// process with another key stops here, before it serves or takes a job. Blocking: call
    /// before serving.
    pub fn open(config: Config, clock: Arc<dyn Clock>) -> Result<Self, StartError> {
        let keys = config::keys(&config)?;
        if let Some(file) = config::sqlite_file(&config.database_url()) {
            config::private_file(&file)?;
        }
        // Before the migrations too, so that a process with the wrong key changes nothing.
        crate::keys::precheck(&config.database_url(), &keys)?;
        let store = Store::open(&config.database_url(), config.db_pool_size)?;
        match crate::keys::check_server_key(&store, &keys, clock.as_ref())? {
            crate::keys::KeyCheck::First(id) => {
                tracing::info!(fingerprint = %id, "the database now keeps the check value of this server key")
            }
            crate::keys::KeyCheck::Matched(id) => tracing::debug!(fingerprint = %id, "server key matches the database"),
            crate::keys::KeyCheck::Rotated { from, to } => tracing::warn!(
                from = %from,
                to = %to,
                "server key rotated: the database's key is now the current one; processes still on the previous \
                 key will refuse to start; run `latchkey keys rotate` to re-seal the stored values"
            ),
        }
        crate::keys::check_sealed_keys(&store, &keys)?;
        let metrics = Metrics::new().map_err(|e| StartError::Other(e.to_string()))?;
        Ok(Self { config: Arc::new(config), store, keys, metrics, clock, draining: Arc::default() })
    }

    /// The use-cases, with tenant actors on `arbiter` and mail going to `outbox`.
    pub fn service(&self, outbox: Arc<dyn Outbox>, arbiter: ArbiterHandle) -> Result<Service, StartError> {
        let hasher =
            PasswordHasher::new(self.config.password_params()).map_err(|e| StartError::Other(e.to_string()))?;
        let settings = ActorSettings {
            idle: Duration::from_secs(self.config.tenant_idle_secs),
            policy_ttl: Duration::from_millis(self.config.policy_cache_ms),
            requests_per_second: self.config.tenant_requests_per_second,
            ceremony_timeout: Duration::from_secs(self.config.challenge_ttl_secs),
        };
        let registry =
            Registry::new(arbiter, self.store.clone(), settings, self.metrics.clone(), self.config.relying_party());
        Ok(Service::new(
            self.store.clone(),
            self.keys.clone(),
            Arc::new(hasher),
            self.config.limits(),
            latchkey_tenant::ServerSettings::from_config(&self.config),
            outbox,
            self.metrics.clone(),
            registry,
        ))
    }

    /// Starts the HTTP API on `listener` (call inside an actix system).
    pub fn serve_http(
        &self,
        service: Service,
        listener: TcpListener,
        workers: usize,
    ) -> Result<actix_web::dev::Server, StartError> {
        let mut state = AppState::new(
            service,
            self.clock.clone(),
            self.metrics.clone(),
            self.config.operator_token.as_ref().map(|t| t.0.clone()),
            self.config.trusted_proxies.clone(),
            self.config.signin_per_ip_per_minute,
        );
        state.request_timeout = Duration::from_secs(self.config.request_timeout_secs.max(1));
        state.docs = self.config.docs;
        state.outbox_probe = self.outbox_probe();
        let proxies = Arc::new(self.config.trusted_proxies.clone());
        let client_ip: latchkey_web::ClientIp =
            Arc::new(move |req: &actix_web::HttpRequest| latchkey_api::extract::client_ip(req, &proxies));
        let web = latchkey_web::WebState::new(state.service.clone(), self.clock.clone(), client_ip);
        state.extra_routes = Some(Arc::new(latchkey_web::configure(web)));
        state.draining = self.draining.clone();
        let limiter = state.ip_limiter.clone();
        actix_rt::spawn(async move {
            let mut every = actix_rt::time::interval(Duration::from_secs(60));
            loop {
                every.tick().await;
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
        });
        latchkey_api::serve(state, listener, workers, self.config.shutdown_timeout_secs)
            .map_err(|e| StartError::Other(e.to_string()))
    }
}

impl Core {
    /// With embedded mail (no `LATCHKEY_SMTP_URL`), the readiness check that the outbox
    /// directory can be written; `None` with SMTP.
    pub fn outbox_probe(&self) -> Option<OutboxProbe> {
        match MailConfig::from_config(&self.config).transport {
            TransportConfig::Outbox(dir) => {
                Some(OutboxProbe(Arc::new(move || latchkey_mail::check_outbox(&dir).map_err(|e| e.to_string()))))
            }
            TransportConfig::Smtp(_) => None,
        }
    }

    /// Opens the job queue (Redis, or the embedded one in the data directory, its file
    /// created mode 0600) and checks the mail settings, so that bad ones stop the process
    /// before it serves.
    pub async fn open_mail(&self) -> Result<(MailQueue, MailConfig), StartError> {
        let mail = MailConfig::from_config(&self.config);
        mail.check().map_err(|e| StartError::Other(format!("mail settings: {e}")))?;
        if self.config.queue_url.as_deref().is_none_or(|u| u.trim().is_empty()) {
            config::private_file(&self.config.data_dir.join(latchkey_mail::EMBEDDED_QUEUE_FILE))?;
        }
        let queue = MailQueue::open(self.config.queue_url.as_deref(), &self.config.data_dir)
            .await
            .map_err(|e| StartError::Other(format!("LATCHKEY_QUEUE_URL: {e}")))?;
        Ok((queue, mail))
    }

    /// Runs the mail worker until `shutdown` resolves.
    pub async fn run_worker(
        &self,
        queue: MailQueue,
        mail: MailConfig,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), StartError> {
        latchkey_mail::run_worker(
            queue,
            self.store.clone(),
            self.keys.clone(),
            self.metrics.clone(),
            self.clock.clone(),
            mail,
            shutdown,
        )
        .await
        .map_err(|e| StartError::Other(format!("mail worker: {e}")))
    }

    /// Deletes rows nothing can use any more, at start and then every
    /// `LATCHKEY_PURGE_INTERVAL_SECS` (default ten minutes; every process may run it), in
    /// batches ([`Service::purge`]).
    pub fn spawn_housekeeping(&self, service: Service) {
        let clock = self.clock.clone();
        let interval = Duration::from_secs(self.config.purge_interval_secs);
        actix_rt::spawn(async move {
            let mut every = actix_rt::time::interval(interval);
            // A purge that took longer than the interval is not followed by a burst of them.
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                match service.purge(clock.now()).await {
                    Ok(purged) => tracing::debug!(?purged, "housekeeping"),
                    Err(e) => tracing::warn!(error = %e, "housekeeping failed"),
                }
            }
        });
    }

    /// The worker's own HTTP endpoints (`latchkey worker`): `/metrics`, `/healthz` and
    /// `/readyz` (database, queue and, with embedded mail, the outbox), for Prometheus and
    /// orchestrators; `HEAD` wherever `GET` is.
    pub fn serve_worker_http(
        &self,
        queue: MailQueue,
        listener: TcpListener,
    ) -> Result<actix_web::dev::Server, StartError> {
        let metrics = self.metrics.clone();
        let store = self.store.clone();
        let outbox = self.outbox_probe();
        let server = HttpServer::new(move || {
            let metrics = metrics.clone();
            let store = store.clone();
            let queue = queue.clone();
            let outbox = outbox.clone();
            App::new()
                .wrap(actix_web::middleware::from_fn(latchkey_api::middleware::head_as_get))
                .route(
                    "/metrics",
                    web::get().to(move || {
                        let metrics = metrics.clone();
                        async move {
                            match metrics.render() {
                                Ok(text) => HttpResponse::Ok()
                                    .content_type("text/plain; version=0.0.4; charset=utf-8")
                                    .body(text),
                                Err(_) => HttpResponse::InternalServerError().finish(),
                            }
                        }
                    }),
                )
                .route("/healthz", web::get().to(|| async { HttpResponse::Ok().body("ok") }))
                .route(
                    "/readyz",
                    web::get().to(move || {
                        let store = store.clone();
                        let queue = queue.clone();
                        let outbox = outbox.clone();
                        async move {
                            let db = store.ping().await.is_ok();
                            let q = queue.check().await.is_ok();
                            let word = |ok: bool| if ok { "ok" } else { "down" };
                            let mut body = serde_json::json!({"database": word(db), "queue": word(q)});
                            let mut ready = db && q;
                            if let Some(OutboxProbe(check)) = outbox {
                                let written = match web::block(move || check()).await {
                                    Ok(Ok(())) => true,
                                    Ok(Err(e)) => {
                                        tracing::warn!(error = %e, "readiness: outbox cannot be written");
                                        false
                                    }
                                    Err(_) => false,
                                };
                                body["outbox"] = word(written).into();
                                ready &= written;
                            }
                            if ready {
                                HttpResponse::Ok().json(body)
                            } else {
                                HttpResponse::ServiceUnavailable().json(body)
                            }
                        }
                    }),
                )
        })
        .listen(listener)
        .map_err(|e| StartError::Other(e.to_string()))?
        .workers(1)
        .disable_signals()
        .shutdown_timeout(self.config.shutdown_timeout_secs);
        Ok(server.run())
    }
}
