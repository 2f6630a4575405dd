//! HTTP handlers, one file per resource. Each is thin: parse, authorise (extractors), call
//! one use-case, map the result.

pub mod agents;
pub mod audit;
pub mod auth;
pub mod me;
pub mod operator;
pub mod ops;
pub mod recovery;
pub mod reset_page;
pub mod settings;
pub mod two_factor;
pub mod webauthn;
pub mod webhooks;

use actix_web::HttpResponse;
use actix_web::http::header;
use serde::Serialize;

use crate::error::ApiError;

/// Default page size of lists.
pub const DEFAULT_LIMIT: i64 = 50;
/// Largest page size of lists.
pub const MAX_LIMIT: i64 = 200;

/// The page size of `?limit=`: default 50, at most 200.
///
/// Errors: 400 `invalid_request` below 1.
pub fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if n >= 1 => Ok(n.min(MAX_LIMIT)),
        Some(_) => Err(ApiError::InvalidRequest("limit must be between 1 and 200".into())),
    }
}

/// Checks the shape of a code: a string of exactly 6 ASCII digits (else 400, not counted
/// as an attempt).
pub fn code_shape(code: &str) -> Result<&str, ApiError> {
    if latchkey_core::otp::is_code_shape(code) {
        Ok(code)
    } else {
        Err(ApiError::InvalidRequest("code must be a string of exactly 6 digits".into()))
    }
}

/// A JSON response that must not be cached (it may hold a token).
pub fn json<T: Serialize>(status: actix_web::http::StatusCode, body: &T) -> HttpResponse {
    HttpResponse::build(status).insert_header((header::CACHE_CONTROL, "no-store")).json(body)
}

/// Splits a page fetched with one extra item into the page and its next cursor.
pub fn paginate<T>(mut items: Vec<T>, limit: i64, cursor_of: impl Fn(&T) -> String) -> (Vec<T>, Option<String>) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if items.len() > limit {
        items.truncate(limit);
        let next = items.last().map(cursor_of);
        (items, next)
    } else {
        (items, None)
    }
}

/// Parses a `credential` member (the browser's `PublicKeyCredential` as JSON, DESIGN.md 5.1)
/// into webauthn-rs's type.
///
/// Errors: 400 `invalid_request` for any other shape (missing members, binary fields that are
/// not base64url), not counted as an attempt.
pub fn parse_credential<T: serde::de::DeserializeOwned>(value: Option<&serde_json::Value>) -> Result<T, ApiError> {
    let value = value.ok_or_else(|| ApiError::InvalidRequest("credential is required".into()))?;
    T::deserialize(value).map_err(|e| ApiError::InvalidRequest(format!("credential is not a PublicKeyCredential: {e}")))
}
