//! Errors as RFC 9457 `application/problem+json`, with a stable `code` per variant and an
//! explicit HTTP status; 500 only for the unexpected (whose detail is logged, never sent).

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use latchkey_tenant::Error as Domain;
use serde::Serialize;
use utoipa::ToSchema;

/// The `Content-Type` of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem document, with Latchkey's extension members.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type (`urn:latchkey:problem:<code>`).
    #[serde(rename = "type")]
    pub type_: String,
    /// A short summary of the problem type.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// The stable machine code clients branch on.
    pub code: String,
    /// A human-readable explanation of this occurrence.
    pub detail: String,
    /// Wrong codes left before the block (`invalid_code`, `code_expired`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts_remaining: Option<u32>,
    /// Seconds to wait (`rate_limited`, `resend_too_soon`, `send_limit_reached`,
    /// `otp_blocked`, and the `invalid_code` that starts a block); also in `Retry-After`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
}

/// Every `code` the API can answer with, and its status (a test checks them against
/// DESIGN.md and the OpenAPI document).
pub const CODES: &[(&str, u16)] = &[
    ("invalid_request", 400),
    ("invalid_credential", 400),
    ("unauthenticated", 401),
    ("invalid_credentials", 401),
    ("invalid_challenge", 401),
    ("invalid_code", 401),
    ("invalid_token", 401),
    ("invalid_password", 401),
    ("invalid_setup_token", 401),
    ("forbidden", 403),
    ("step_up_required", 403),
    ("method_not_allowed", 403),
    ("email_change_forbidden", 403),
    ("enrollment_required", 403),
    ("not_found", 404),
    ("http_method_not_allowed", 405),
    ("request_timeout", 408),
    ("tenant_exists", 409),
    ("email_taken", 409),
    ("already_enrolled", 409),
    ("setup_required", 409),
    ("already_enabled", 409),
    ("last_admin", 409),
    ("request_not_pending", 409),
    ("last_method", 409),
    ("code_expired", 410),
    ("payload_too_large", 413),
    ("unsupported_media_type", 415),
    ("otp_blocked", 423),
    ("rate_limited", 429),
    ("resend_too_soon", 429),
    ("send_limit_reached", 429),
    ("internal", 500),
    ("unavailable", 503),
];

/// An error answered by the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A use-case refused the request.
    #[error(transparent)]
    Domain(#[from] Domain),
    /// The body or query is malformed (400 `invalid_request`).
    #[error("{0}")]
    InvalidRequest(String),
    /// The body exceeds 1 MiB (413 `payload_too_large`).
    #[error("the request body is larger than 1 MiB")]
    PayloadTooLarge,
    /// The body is not JSON (415 `unsupported_media_type`).
    #[error("send the body as application/json")]
    UnsupportedMediaType,
    /// No route (404 `not_found`).
    #[error("no such resource")]
    NotFound,
    /// The route exists but not for this HTTP method (405 `http_method_not_allowed`), with
    /// the methods it does accept for the `Allow` header (RFC 9110 section 15.5.6).
    #[error("this resource does not accept that HTTP method")]
    HttpMethodNotAllowed {
        /// The `Allow` header value, e.g. `GET, HEAD, PATCH`.
        allow: Option<String>,
    },
    /// The request took longer than the request timeout (408 `request_timeout`).
    #[error("the request took too long")]
    RequestTimeout,
    /// A dependency is down (503 `unavailable`).
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::HttpMethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, "http_method_not_allowed"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::Domain(e) => (domain_status(e), e.code()),
        }
    }

    /// `res` (this error's problem response) with the headers the error carries besides
    /// `Retry-After`: `Allow` on a 405.
    pub fn with_headers(&self, mut res: HttpResponse) -> HttpResponse {
        if let ApiError::HttpMethodNotAllowed { allow: Some(allow) } = self
            && let Ok(value) = HeaderValue::from_str(allow)
        {
            res.headers_mut().insert(header::ALLOW, value);
        }
        res
    }

    /// The problem document of this error.
    pub fn problem(&self) -> Problem {
        let (status, code) = self.parts();
        let detail = match self {
            ApiError::Domain(Domain::Internal(_)) => "an unexpected error occurred".to_owned(),
            other => other.to_string(),
        };
        let (attempts_remaining, retry_after_seconds) = match self {
            ApiError::Domain(Domain::InvalidCode { attempts_remaining, retry_after }) => {
                (Some(*attempts_remaining), *retry_after)
            }
            ApiError::Domain(Domain::CodeExpired { attempts_remaining }) => (Some(*attempts_remaining), None),
            ApiError::Domain(
                Domain::RateLimited { retry_after }
                | Domain::OtpBlocked { retry_after }
                | Domain::ResendTooSoon { retry_after }
                | Domain::SendLimitReached { retry_after },
            ) => (None, Some(*retry_after)),
            _ => (None, None),
        };
        Problem {
            type_: format!("urn:latchkey:problem:{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            code: code.to_owned(),
            detail,
            attempts_remaining,
            retry_after_seconds,
        }
    }
}

fn domain_status(e: &Domain) -> StatusCode {
    match e {
        Domain::InvalidRequest(_) | Domain::InvalidCredential(_) => StatusCode::BAD_REQUEST,
        Domain::Unauthenticated
        | Domain::InvalidCredentials
        | Domain::InvalidChallenge
        | Domain::InvalidCode { .. }
        | Domain::InvalidToken
        | Domain::InvalidPassword
        | Domain::InvalidSetupToken => StatusCode::UNAUTHORIZED,
        Domain::Forbidden
        | Domain::MethodNotAllowed
        | Domain::StepUpRequired
        | Domain::EmailChangeForbidden
        | Domain::EnrollmentRequired => StatusCode::FORBIDDEN,
        Domain::NotFound => StatusCode::NOT_FOUND,
        Domain::TenantExists
        | Domain::EmailTaken
        | Domain::AlreadyEnrolled
        | Domain::SetupRequired
        | Domain::AlreadyEnabled
        | Domain::LastAdmin
        | Domain::RequestNotPending
        | Domain::LastMethod => StatusCode::CONFLICT,
        Domain::CodeExpired { .. } => StatusCode::GONE,
        Domain::OtpBlocked { .. } => StatusCode::LOCKED,
        Domain::RateLimited { .. } | Domain::ResendTooSoon { .. } | Domain::SendLimitReached { .. } => {
            StatusCode::TOO_MANY_REQUESTS
        }
        Domain::QueueUnavailable | Domain::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        Domain::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The response of a problem document (with `Retry-After` when it has a wait).
pub fn problem_response(problem: &Problem) -> HttpResponse {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut res = HttpResponse::build(status);
    res.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON)));
    res.insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
    if let Some(secs) = problem.retry_after_seconds {
        res.insert_header((header::RETRY_AFTER, secs.to_string()));
    }
    let body = serde_json::to_string(problem).unwrap_or_else(|_| String::from("{}"));
    res.body(body)
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.parts().0
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Domain(Domain::Internal(detail)) = self {
            tracing::error!(%detail, "internal error");
        }
        self.with_headers(problem_response(&self.problem()))
    }
}

/// The result of handlers.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_domain_code_is_listed_with_its_status() {
        let samples = [
            Domain::InvalidRequest(String::new()),
            Domain::Unauthenticated,
            Domain::Forbidden,
            Domain::NotFound,
            Domain::InvalidCredentials,
            Domain::InvalidCredential(String::new()),
            Domain::RateLimited { retry_after: 1 },
            Domain::TenantExists,
            Domain::EmailTaken,
            Domain::InvalidChallenge,
            Domain::InvalidCode { attempts_remaining: 1, retry_after: None },
            Domain::CodeExpired { attempts_remaining: 1 },
            Domain::OtpBlocked { retry_after: 1 },
            Domain::MethodNotAllowed,
            Domain::AlreadyEnrolled,
            Domain::SetupRequired,
            Domain::ResendTooSoon { retry_after: 1 },
            Domain::SendLimitReached { retry_after: 1 },
            Domain::InvalidToken,
            Domain::InvalidPassword,
            Domain::AlreadyEnabled,
            Domain::StepUpRequired,
            Domain::LastAdmin,
            Domain::RequestNotPending,
            Domain::InvalidSetupToken,
            Domain::EmailChangeForbidden,
            Domain::LastMethod,
            Domain::EnrollmentRequired,
            Domain::QueueUnavailable,
            Domain::StoreUnavailable,
            Domain::Internal(String::new()),
        ];
        for e in samples {
            let p = ApiError::Domain(e).problem();
            assert!(CODES.contains(&(p.code.as_str(), p.status)), "{} {}", p.code, p.status);
        }
    }

    /// Every `code` DESIGN.md section 3 names, with the status it gives it.
    #[test]
    fn the_codes_of_the_design_are_answered_with_their_status() {
        for (code, status) in [
            ("invalid_request", 400),
            ("unauthenticated", 401),
            ("invalid_credentials", 401),
            ("invalid_challenge", 401),
            ("invalid_code", 401),
            ("invalid_token", 401),
            ("invalid_password", 401),
            ("invalid_setup_token", 401),
            ("forbidden", 403),
            ("step_up_required", 403),
            ("method_not_allowed", 403),
            ("email_change_forbidden", 403),
            ("not_found", 404),
            ("tenant_exists", 409),
            ("email_taken", 409),
            ("already_enrolled", 409),
            ("already_enabled", 409),
            ("last_admin", 409),
            ("request_not_pending", 409),
            ("code_expired", 410),
            ("otp_blocked", 423),
            ("rate_limited", 429),
            ("resend_too_soon", 429),
            ("send_limit_reached", 429),
            // DESIGN.md 5.8 "New problem codes".
            ("invalid_credential", 400),
            ("last_method", 409),
            ("enrollment_required", 403),
        ] {
            assert!(CODES.contains(&(code, status)), "{code} {status}");
        }
    }

    #[test]
    fn internal_details_are_not_sent() {
        let p = ApiError::Domain(Domain::Internal("db password=hunter2".into())).problem();
        assert_eq!(p.status, 500);
        assert!(!p.detail.contains("hunter2"));
    }

    #[test]
    fn a_405_names_the_allowed_methods() {
        let res = ApiError::HttpMethodNotAllowed { allow: Some("GET, HEAD".into()) }.error_response();
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(res.headers().get(header::ALLOW).and_then(|v| v.to_str().ok()), Some("GET, HEAD"));
    }

    #[test]
    fn waits_become_retry_after() {
        let res = ApiError::Domain(Domain::OtpBlocked { retry_after: 42 }).error_response();
        assert_eq!(res.status(), StatusCode::LOCKED);
        assert_eq!(res.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("42"));
    }
}
