//! The page an admin's emailed reset link opens: `GET /reset-otp?token=…` shows a "Reset
//! OTP" button; pressing it posts the token (`POST /reset-otp`, a plain form, no script) and
//! the page tells the outcome. Self-contained (no external assets), with
//! `Referrer-Policy: no-referrer` and `Cache-Control: no-store`; the token is HTML-escaped and
//! never logged.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, get, post, web};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::extract::Ctx;
use crate::state::AppState;

/// The link's query (and the form's body).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TokenQuery {
    /// The reset token.
    pub token: Option<String>,
}

fn page(status: StatusCode, body: &str) -> HttpResponse {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Reset OTP</title><style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}}\
         button{{font-size:1rem;padding:.6rem 1.2rem}}</style></head><body>{body}</body></html>"
    );
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header((
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ))
        .body(html)
}

/// The page with the "Reset OTP" button.
#[utoipa::path(
    tag = "second factor",
    params(TokenQuery),
    responses((status = 200, description = "HTML page", body = String, content_type = "text/html"), (status = 400, description = "No token", body = String, content_type = "text/html"))
)]
#[get("/reset-otp")]
pub async fn show(q: web::Query<TokenQuery>) -> HttpResponse {
    let Some(token) = q.token.as_deref().filter(|t| !t.is_empty()) else {
        return page(StatusCode::BAD_REQUEST, "<h1>Reset OTP</h1><p>This link is incomplete. Ask for a new one.</p>");
    };
    let token = html_escape::encode_double_quoted_attribute(token);
    page(
        StatusCode::OK,
        &format!(
            "<h1>Reset OTP</h1><p>This removes your two-factor setup (authenticator and email) and signs you out \
             everywhere. You will set up two-factor authentication again at your next sign-in.</p>\
             <form method=\"post\" action=\"/reset-otp\"><input type=\"hidden\" name=\"token\" value=\"{token}\">\
             <button type=\"submit\">Reset OTP</button></form>"
        ),
    )
}

/// The button's target: resets, then tells the outcome.
#[utoipa::path(
    tag = "second factor",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "`token=…`"),
    responses(
        (status = 200, description = "Reset done", body = String, content_type = "text/html"),
        (status = 401, description = "Invalid or used link", body = String, content_type = "text/html"),
        (status = 413, description = "Form over 1 MiB", body = String, content_type = "text/html"),
    )
)]
#[post("/reset-otp")]
pub async fn submit(
    st: web::Data<AppState>,
    ctx: Ctx,
    form: Result<web::Form<TokenQuery>, actix_web::Error>,
) -> HttpResponse {
    let token = match form {
        Ok(f) => f.into_inner().token.unwrap_or_default(),
        Err(e) if e.as_response_error().status_code() == StatusCode::PAYLOAD_TOO_LARGE => {
            return page(StatusCode::PAYLOAD_TOO_LARGE, "<h1>Request too large</h1>");
        }
        Err(_) => String::new(),
    };
    match st.service.reset_with_link(&ctx.0, &token).await {
        Ok(()) => page(StatusCode::OK, "<h1>Two-factor authentication reset</h1><p>Sign in again to set it up.</p>"),
        Err(latchkey_tenant::Error::InvalidToken) => page(
            StatusCode::UNAUTHORIZED,
            "<h1>This link is no longer valid</h1><p>It was used, replaced by a newer one, or has expired. Ask for a new one.</p>",
        ),
        Err(e) => {
            tracing::error!(error = %e, "reset page failed");
            page(StatusCode::INTERNAL_SERVER_ERROR, "<h1>Something went wrong</h1><p>Try again later.</p>")
        }
    }
}
