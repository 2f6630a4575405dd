//! Shared state of the HTTP app.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;
use latchkey_core::Clock;
use latchkey_core::metrics::Metrics;
use latchkey_tenant::Service;

/// Extra routes mounted into the app by the binary (the hosted pages under `/ui/`, crate
/// `latchkey-web`), registered before the fallback 404/405.
pub type ExtraRoutes = Arc<dyn Fn(&mut actix_web::web::ServiceConfig) + Send + Sync>;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The use-cases.
    pub service: Service,
    /// The clock, read once per request.
    pub clock: Arc<dyn Clock>,
    /// The metrics registry.
    pub metrics: Metrics,
    /// Bearer token of operator endpoints (`None`: disabled).
    pub operator_token: Option<String>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<Vec<IpNet>>,
    /// The global per-client-IP limiter of every request but signed-in API calls.
    pub ip_limiter: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    /// Longest time a request may take, body included.
    pub request_timeout: std::time::Duration,
    /// Whether `/docs/` (the interactive API page) is served (`LATCHKEY_DOCS`).
    pub docs: bool,
    /// With embedded mail, the check that the outbox directory can be written, run by
    /// `/readyz`; `None` with SMTP.
    pub outbox_probe: Option<OutboxProbe>,
    /// Routes of other crates mounted beside the API (the hosted pages); `None`: none.
    pub extra_routes: Option<ExtraRoutes>,
    /// Set at shutdown: every answer closes its connection (`Connection: close`), so that
    /// keep-alive clients move to another process instead of having an idle connection cut
    /// under a request, and `/readyz` answers 503 (see [`crate::middleware::drain`]).
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

/// A blocking check (run on the blocking pool) that says why the outbox cannot be written.
#[derive(Clone)]
pub struct OutboxProbe(pub Arc<dyn Fn() -> Result<(), String> + Send + Sync>);

impl std::fmt::Debug for OutboxProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutboxProbe")
    }
}

impl AppState {
    /// The state; `per_ip_per_minute` is the budget per client IP of every request but
    /// signed-in API calls. `/docs/` on, no outbox probe, a 30 s request timeout.
    pub fn new(
        service: Service,
        clock: Arc<dyn Clock>,
        metrics: Metrics,
        operator_token: Option<String>,
        trusted_proxies: Vec<IpNet>,
        per_ip_per_minute: u32,
    ) -> Self {
        let per_minute = NonZeroU32::new(per_ip_per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        Self {
            service,
            clock,
            metrics,
            operator_token,
            trusted_proxies: Arc::new(trusted_proxies),
            ip_limiter: Arc::new(RateLimiter::keyed(Quota::per_minute(per_minute))),
            request_timeout: std::time::Duration::from_secs(30),
            docs: true,
            outbox_probe: None,
            extra_routes: None,
            draining: Arc::default(),
        }
    }
}
