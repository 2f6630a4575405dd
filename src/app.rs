//! Wiring: the store, keys, metrics, tenant actors and use-cases, the HTTP server.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use latchkey_api::AppState;
use latchkey_core::metrics::Metrics;
use latchkey_core::password::PasswordHasher;
use latchkey_core::{Clock, Config, Keys};
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
}

/// Errors of start-up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The database cannot be opened or migrated.
    #[error("database: {0}")]
    Store(#[from] latchkey_store::StoreError),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl Core {
    /// Opens the store (running migrations) and loads or generates the server key.
    /// Blocking: call before serving.
    pub fn open(config: Config, clock: Arc<dyn Clock>) -> Result<Self, StartError> {
        let keys = config::keys(&config)?;
        let store = Store::open(&config.database_url(), config.db_pool_size)?;
        let metrics = Metrics::new().map_err(|e| StartError::Other(e.to_string()))?;
        Ok(Self { config: Arc::new(config), store, keys, metrics, clock })
    }

    /// The use-cases, with tenant actors on `arbiter` and mail going to `outbox`.
    pub fn service(&self, outbox: Arc<dyn Outbox>, arbiter: ArbiterHandle) -> Result<Service, StartError> {
        let hasher =
            PasswordHasher::new(self.config.password_params()).map_err(|e| StartError::Other(e.to_string()))?;
        let settings = ActorSettings {
            idle: Duration::from_secs(self.config.tenant_idle_secs),
            policy_ttl: Duration::from_millis(self.config.policy_cache_ms),
            requests_per_second: self.config.tenant_requests_per_second,
        };
        let registry = Registry::new(arbiter, self.store.clone(), settings, self.metrics.clone());
        Ok(Service::new(
            self.store.clone(),
            self.keys.clone(),
            Arc::new(hasher),
            self.config.limits(),
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
        let state = AppState::new(
            service,
            self.clock.clone(),
            self.metrics.clone(),
            self.config.operator_token.as_ref().map(|t| t.0.clone()),
            self.config.trusted_proxies.clone(),
            self.config.signin_per_ip_per_minute,
        );
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
