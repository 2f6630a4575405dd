//! The Prometheus metrics of DESIGN.md section 3 ("Operations"), in one registry shared by
//! the API, the tenant actors and the mail worker. The HTTP metrics
//! ([`HTTP_REQUESTS`], [`HTTP_DURATION`]) are added to the same registry by the API's middleware. No metric carries a tenant or user label:
//! their number is unbounded.

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Name of the HTTP request counter, `{method,route,status}`; registered by the API's
/// metrics middleware in the same registry.
pub const HTTP_REQUESTS: &str = "latchkey_http_requests_total";
/// Name of the HTTP latency histogram, `{method,route}` (seconds).
pub const HTTP_DURATION: &str = "latchkey_http_request_duration_seconds";

/// Every metric Latchkey exports, registered in [`Metrics::registry`].
#[derive(Clone, Debug)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// `latchkey_otp_verifications_total{method,outcome}`; outcome is `success`, `invalid`,
    /// `expired`, `replayed` or `blocked`.
    pub otp_verifications: IntCounterVec,
    /// `latchkey_otp_blocks_total`: users blocked after too many wrong codes.
    pub otp_blocks: IntCounter,
    /// `latchkey_email_jobs_total{kind,outcome}`; kind `otp`, `reset_link` or `notice`,
    /// outcome `sent`, `retried`, `failed` or `dropped_expired`.
    pub email_jobs: IntCounterVec,
    /// `latchkey_webhook_deliveries_total{outcome}`: webhook delivery attempts by outcome,
    /// `delivered`, `retried` (an attempt failed, another follows) or `failed` (given up).
    pub webhook_deliveries: IntCounterVec,
    /// `latchkey_email_delivery_seconds{kind}`: from enqueue to the SMTP server's acceptance.
    pub email_delivery: HistogramVec,
    /// `latchkey_tenant_actors`: running tenant actors in this process.
    pub tenant_actors: IntGauge,
    /// `latchkey_email_queue_depth`: jobs waiting in the queue, where the backend can tell.
    pub email_queue_depth: IntGauge,
    /// `latchkey_signin_seconds`: duration of password checks (argon2id) on the blocking pool.
    pub password_check: Histogram,
    /// `latchkey_sealed_open_failures_total{kind}`: jobs a worker met whose sealed payload it
    /// cannot open with its keys (sealed under a key it does not have); each is left to be
    /// retried by a worker that can (DESIGN.md 5.8). kind `otp`, `reset_link`, `notice`, `webhook`.
    pub sealed_open_failures: IntCounterVec,
}

/// Errors of metric registration (a name registered twice).
pub type MetricsError = prometheus::Error;

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let otp_verifications = IntCounterVec::new(
            Opts::new("latchkey_otp_verifications_total", "Second-factor code verifications by outcome"),
            &["method", "outcome"],
        )?;
        let otp_blocks = IntCounter::new("latchkey_otp_blocks_total", "Users blocked after too many wrong codes")?;
        let email_jobs = IntCounterVec::new(
            Opts::new("latchkey_email_jobs_total", "Email jobs by kind and outcome"),
            &["kind", "outcome"],
        )?;
        let webhook_deliveries = IntCounterVec::new(
            Opts::new("latchkey_webhook_deliveries_total", "Webhook delivery attempts by outcome"),
            &["outcome"],
        )?;
        let email_delivery = HistogramVec::new(
            HistogramOpts::new("latchkey_email_delivery_seconds", "Seconds from enqueue to SMTP acceptance")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0]),
            &["kind"],
        )?;
        let tenant_actors = IntGauge::new("latchkey_tenant_actors", "Running tenant actors")?;
        let email_queue_depth = IntGauge::new("latchkey_email_queue_depth", "Email jobs waiting in the queue")?;
        let password_check = Histogram::with_opts(
            HistogramOpts::new("latchkey_password_check_seconds", "Seconds spent verifying a password (argon2id)")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]),
        )?;
        registry.register(Box::new(otp_verifications.clone()))?;
        registry.register(Box::new(otp_blocks.clone()))?;
        registry.register(Box::new(email_jobs.clone()))?;
        registry.register(Box::new(email_delivery.clone()))?;
        registry.register(Box::new(webhook_deliveries.clone()))?;
        registry.register(Box::new(tenant_actors.clone()))?;
        registry.register(Box::new(email_queue_depth.clone()))?;
        registry.register(Box::new(password_check.clone()))?;
        let sealed_open_failures = IntCounterVec::new(
            Opts::new(
                "latchkey_sealed_open_failures_total",
                "Jobs left for retry because their sealed payload cannot be opened with this process's keys",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(sealed_open_failures.clone()))?;
        for kind in ["otp", "reset_link", "notice", "webhook"] {
            sealed_open_failures.with_label_values(&[kind]);
        }
        // Make the labelled families visible before their first event.
        for method in ["authenticator", "email"] {
            for outcome in ["success", "invalid", "expired", "replayed", "blocked"] {
                otp_verifications.with_label_values(&[method, outcome]);
            }
        }
        for kind in ["otp", "reset_link", "notice"] {
            for outcome in ["sent", "retried", "failed", "dropped_expired"] {
                email_jobs.with_label_values(&[kind, outcome]);
            }
            email_delivery.with_label_values(&[kind]);
        }
        for outcome in ["delivered", "retried", "failed"] {
            webhook_deliveries.with_label_values(&[outcome]);
        }
        Ok(Self {
            registry,
            otp_verifications,
            otp_blocks,
            email_jobs,
            email_delivery,
            webhook_deliveries,
            tenant_actors,
            email_queue_depth,
            password_check,
            sealed_open_failures,
        })
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> Result<String, MetricsError> {
        prometheus::TextEncoder::new().encode_to_string(&self.registry.gather())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let m = Metrics::new().unwrap();
        let text = m.render().unwrap();
        for name in [
            "latchkey_otp_verifications_total",
            "latchkey_email_jobs_total",
            "latchkey_email_delivery_seconds",
            "latchkey_tenant_actors",
            "latchkey_otp_blocks_total",
            "latchkey_webhook_deliveries_total",
        ] {
            assert!(text.contains(name), "{name}");
        }
    }
}
