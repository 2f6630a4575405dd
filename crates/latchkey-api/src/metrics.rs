//! The HTTP request metrics of DESIGN.md section 3: `latchkey_http_requests_total{method,route,status}`
//! and `latchkey_http_request_duration_seconds{method,route}`.
//!
//! Every label takes only values the server chooses, so no client can grow the number of
//! series (a Prometheus series lives for the life of the process): `method` is one of
//! [`KNOWN_METHODS`] or `other`, `route` the matched route pattern (`/api/v1/agents/{id}`,
//! never the raw path) or `unmatched`, `status` the answered status code.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{Error, web};
use latchkey_core::metrics::{HTTP_DURATION, HTTP_REQUESTS};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// The `method` label values other than `other`.
pub const KNOWN_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// The `route` label of a request no route pattern matches.
pub const UNMATCHED: &str = "unmatched";

/// The `method` label of `method`: its name when it is one of [`KNOWN_METHODS`], else
/// `other` (HTTP methods are client-chosen tokens of any length).
pub fn method_label(method: &Method) -> &'static str {
    KNOWN_METHODS.iter().find(|m| **m == method.as_str()).copied().unwrap_or("other")
}

/// The two HTTP metrics, registered in the shared registry. Cheap to clone.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl HttpMetrics {
    /// Registers both metrics in `registry` (the one `/metrics` renders).
    ///
    /// Errors: a metric of the same name is already registered there.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(HTTP_REQUESTS, "HTTP requests by method, route pattern and status"),
            &["method", "route", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(HTTP_DURATION, "Seconds from a request's arrival to its response head"),
            &["method", "route"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self { requests, duration })
    }

    fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.requests.with_label_values(&[method, route, &status.to_string()]).inc();
        self.duration.with_label_values(&[method, route]).observe(seconds);
    }
}

/// The middleware: counts and times every request with bounded labels (an error of an
/// inner middleware counts with its status). Reads the method before any rewrite (a `HEAD`
/// stays `HEAD`), so it wraps [`crate::middleware::head_as_get`]. The app must hold
/// `web::Data<HttpMetrics>`.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let Some(metrics) = req.app_data::<web::Data<HttpMetrics>>().cloned() else {
        return next.call(req).await;
    };
    let method = method_label(req.method());
    // The pattern by path alone; the router's own match (below) wins when there is one.
    let by_path = req.match_pattern();
    let started = std::time::Instant::now();
    let result = next.call(req).await;
    let seconds = started.elapsed().as_secs_f64();
    match &result {
        Ok(res) => {
            let route = res.request().match_pattern().or(by_path);
            metrics.observe(method, route.as_deref().unwrap_or(UNMATCHED), res.status().as_u16(), seconds);
        }
        Err(e) => {
            let status = e.as_response_error().status_code().as_u16();
            metrics.observe(method, by_path.as_deref().unwrap_or(UNMATCHED), status, seconds);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_methods_are_labels() {
        for m in KNOWN_METHODS {
            assert_eq!(method_label(&Method::from_bytes(m.as_bytes()).unwrap()), m);
        }
        for m in ["TRACE", "CONNECT", "PROPFIND", "get", "BREW", "X".repeat(200).as_str()] {
            assert_eq!(method_label(&Method::from_bytes(m.as_bytes()).unwrap()), "other", "{m}");
        }
    }

    #[test]
    fn both_metrics_register_once() {
        let registry = Registry::new();
        let m = HttpMetrics::register(&registry).unwrap();
        m.observe("GET", "/healthz", 200, 0.001);
        let names: Vec<String> = registry.gather().iter().map(|f| f.name().to_owned()).collect();
        assert!(names.contains(&HTTP_REQUESTS.to_owned()) && names.contains(&HTTP_DURATION.to_owned()), "{names:?}");
        assert!(HttpMetrics::register(&registry).is_err());
    }
}
