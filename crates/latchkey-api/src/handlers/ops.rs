//! Operations: `/healthz`, `/readyz`, `/metrics`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, get, web};

use crate::dto::Readiness;
use crate::error::{ApiError, Problem, problem_response};
use crate::state::{AppState, OutboxProbe};

/// The process is up.
#[utoipa::path(tag = "operations", responses((status = 200, description = "Up", body = String)))]
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; charset=utf-8").body("ok")
}

/// The database and the queue answer and, with embedded mail, the outbox directory can be
/// written ([`AppState::outbox_probe`]); otherwise 503 naming what is down (the reason is
/// logged, not answered).
#[utoipa::path(
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "`unavailable`: the detail names what is down", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/readyz")]
pub async fn readyz(st: web::Data<AppState>) -> HttpResponse {
    if st.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return problem_response(&ApiError::Unavailable("not ready: shutting down".into()).problem());
    }
    let db = st.service.store().ping().await;
    let queue = st.service.outbox().ping().await;
    if let Err(e) = &db {
        tracing::warn!(error = %e, "readiness: database down");
    }
    if let Err(e) = &queue {
        tracing::warn!(error = %e, "readiness: queue down");
    }
    let outbox = match st.outbox_probe.clone() {
        Some(OutboxProbe(check)) => {
            let result = web::block(move || check()).await.unwrap_or_else(|e| Err(e.to_string()));
            if let Err(e) = &result {
                tracing::warn!(error = %e, "readiness: outbox cannot be written");
            }
            Some(result.is_ok())
        }
        None => None,
    };
    let down: Vec<&str> = [("database", db.is_err()), ("queue", queue.is_err()), ("outbox", outbox == Some(false))]
        .into_iter()
        .filter_map(|(name, is_down)| is_down.then_some(name))
        .collect();
    if down.is_empty() {
        let outbox = outbox.map(|_| "ok".to_owned());
        return HttpResponse::Ok().json(Readiness { database: "ok".into(), queue: "ok".into(), outbox });
    }
    problem_response(&ApiError::Unavailable(format!("not ready: {} down", down.join(" and "))).problem())
}

/// Prometheus metrics in the text format (no tenant or user labels).
#[utoipa::path(tag = "operations", responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
#[get("/metrics")]
pub async fn metrics(st: web::Data<AppState>) -> HttpResponse {
    match st.metrics.render() {
        Ok(text) => {
            HttpResponse::build(StatusCode::OK).content_type("text/plain; version=0.0.4; charset=utf-8").body(text)
        }
        Err(e) => {
            tracing::error!(error = %e, "metrics rendering failed");
            HttpResponse::InternalServerError().finish()
        }
    }
}
