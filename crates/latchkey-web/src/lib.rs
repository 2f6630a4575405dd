//! Latchkey's hosted pages (DESIGN.md 5.7): server-rendered screens under `/ui/{tenant}/…`
//! that carry out the sign-in (password, method choice, authenticator enrollment with QR code
//! and setup key, email code with Resend and its countdown, recovery codes, Need recovery,
//! grace skip, remember this device, passkeys and passwordless passkey sign-in), the account
//! page (passkeys added, renamed, removed; step-up with a passkey), and for admins the two-factor
//! settings, agent management with the **Requested** tab, and the audit log; plus the
//! hand-off to a dashboard (`return_to`, PKCE S256, `POST /api/v1/auth/exchange` in the API).
//!
//! Handlers call the tenant use-cases directly ([`latchkey_tenant::Service`]), so every limit,
//! block and audit event is the API's. Templates are askama (compile-time checked,
//! auto-escaped); the stylesheet and two small scripts (the Resend countdown; the WebAuthn
//! ceremonies, which post the browser's credential in a form) are compiled into the binary.
//!
//! Security: the session is a cookie (`HttpOnly`, `SameSite=Strict`, path `/ui`, `Secure`
//! when the public URL is https); every form carries a CSRF token bound to the session (or,
//! before sign-in, to a random pre-session cookie); POSTs naming another `Origin` or sent
//! `Sec-Fetch-Site: cross-site` are refused with 403; every page answers the CSP of 5.7,
//! `Referrer-Policy: no-referrer` and `Cache-Control: no-store`.

// Handlers answer a refused request with its page: `Result<_, HttpResponse>` carries that
// page, built once per request, so its size does not matter.
#![allow(clippy::result_large_err)]

mod account;
mod admin;
mod common;
#[allow(missing_docs)]
mod pages;
mod signin;

use std::net::IpAddr;
use std::sync::Arc;

use actix_web::middleware::DefaultHeaders;
use actix_web::{HttpRequest, HttpResponse, web};
use latchkey_core::Clock;
use latchkey_tenant::Service;

/// The client IP of a request as the API sees it (after `LATCHKEY_TRUSTED_PROXIES`).
pub type ClientIp = Arc<dyn Fn(&HttpRequest) -> Option<IpAddr> + Send + Sync>;

/// What the pages need.
#[derive(Clone)]
pub struct WebState {
    /// The use-cases.
    pub service: Service,
    /// The clock, read once per request.
    pub clock: Arc<dyn Clock>,
    /// The client IP of a request.
    pub client_ip: ClientIp,
    /// The origin of `LATCHKEY_PUBLIC_URL` (`scheme://host[:port]`): POSTs naming another
    /// `Origin` are refused.
    pub public_origin: String,
    /// Whether cookies are `Secure` (the public URL is https).
    pub secure_cookies: bool,
}

impl WebState {
    /// The state for `service`, with the public URL taken from its server settings.
    pub fn new(service: Service, clock: Arc<dyn Clock>, client_ip: ClientIp) -> Self {
        let public = service.server().public_url.clone();
        let public_origin = origin_of(&public);
        let secure_cookies = public.starts_with("https://");
        Self { service, clock, client_ip, public_origin, secure_cookies }
    }
}

/// `scheme://authority` of an absolute URL (the whole string when it has no path).
fn origin_of(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.trim_end_matches('/').to_owned() };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    format!("{}://{}", scheme.to_ascii_lowercase(), rest[..end].to_ascii_lowercase())
}

/// The Content-Security-Policy of every page (DESIGN.md 5.7).
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const STYLE: &[u8] = include_bytes!("../assets/style.css");
const SCRIPT: &[u8] = include_bytes!("../assets/ui.js");
const WEBAUTHN_SCRIPT: &[u8] = include_bytes!("../assets/webauthn.js");

/// Mounts the pages under `/ui/` into an app (`App::configure`).
pub fn configure(state: WebState) -> impl Fn(&mut web::ServiceConfig) + Send + Sync + 'static {
    let data = web::Data::new(state);
    move |cfg: &mut web::ServiceConfig| {
        cfg.service(
            web::scope("/ui")
                .app_data(data.clone())
                .wrap(
                    DefaultHeaders::new()
                        .add(("Content-Security-Policy", CSP))
                        .add(("Referrer-Policy", "no-referrer"))
                        .add(("Cache-Control", "no-store"))
                        .add(("X-Content-Type-Options", "nosniff"))
                        .add(("X-Frame-Options", "DENY")),
                )
                .route("/assets/style.css", web::get().to(style))
                .route("/assets/ui.js", web::get().to(script))
                .route("/assets/webauthn.js", web::get().to(webauthn_script))
                .route("/{tenant}", web::get().to(signin::root))
                .route("/{tenant}/", web::get().to(signin::root))
                .route("/{tenant}/sign-in", web::get().to(signin::sign_in_page))
                .route("/{tenant}/sign-in", web::post().to(signin::sign_in_submit))
                .route("/{tenant}/two-factor", web::get().to(signin::challenge_page))
                .route("/{tenant}/two-factor/send", web::post().to(signin::send_code))
                .route("/{tenant}/two-factor/verify", web::post().to(signin::verify_code))
                .route("/{tenant}/two-factor/recovery", web::get().to(signin::recovery_page))
                .route("/{tenant}/two-factor/recovery", web::post().to(signin::need_recovery))
                .route("/{tenant}/two-factor/skip", web::post().to(signin::skip))
                .route("/{tenant}/enroll/authenticator", web::get().to(signin::enroll_authenticator_page))
                .route("/{tenant}/enroll/authenticator", web::post().to(signin::enroll_authenticator_confirm))
                .route("/{tenant}/enroll/webauthn", web::post().to(signin::enroll_webauthn_finish))
                .route("/{tenant}/passkey", web::get().to(signin::passkey_page))
                .route("/{tenant}/passkey", web::post().to(signin::passkey_finish))
                .route("/{tenant}/continue", web::get().to(signin::continue_page))
                .route("/{tenant}/sign-out", web::post().to(signin::sign_out))
                .route("/{tenant}/account", web::get().to(account::page))
                .route("/{tenant}/account/password", web::post().to(account::change_password))
                .route("/{tenant}/account/recovery-codes", web::post().to(account::generate_codes))
                .route("/{tenant}/account/recovery-codes", web::get().to(account::show_codes))
                .route("/{tenant}/account/devices/revoke", web::post().to(account::revoke_device))
                .route("/{tenant}/account/methods/remove", web::post().to(account::remove_method))
                .route("/{tenant}/account/authenticator", web::post().to(account::add_authenticator))
                .route("/{tenant}/account/authenticator", web::get().to(account::authenticator_page))
                .route("/{tenant}/account/authenticator/confirm", web::post().to(account::confirm_authenticator))
                .route("/{tenant}/account/passkeys", web::post().to(account::add_passkey))
                .route("/{tenant}/account/passkeys/new", web::get().to(account::passkey_page))
                .route("/{tenant}/account/passkeys/finish", web::post().to(account::finish_passkey))
                .route("/{tenant}/account/passkeys/rename", web::post().to(account::rename_passkey))
                .route("/{tenant}/account/passkeys/remove", web::post().to(account::remove_passkey))
                .route("/{tenant}/account/step-up/passkey", web::get().to(account::step_up_passkey_page))
                .route("/{tenant}/account/step-up/passkey", web::post().to(account::step_up_passkey))
                .route("/{tenant}/account/step-up", web::get().to(account::step_up_page))
                .route("/{tenant}/account/step-up", web::post().to(account::step_up))
                .route("/{tenant}/account/step-up/send", web::post().to(account::step_up_send))
                .route("/{tenant}/settings", web::get().to(admin::settings_page))
                .route("/{tenant}/settings/enable", web::get().to(admin::enable_page))
                .route("/{tenant}/settings/enable", web::post().to(admin::enable))
                .route("/{tenant}/settings/enable/confirm", web::get().to(admin::enable_confirm_page))
                .route("/{tenant}/settings/enable/confirm", web::post().to(admin::enable_confirm))
                .route("/{tenant}/settings/disable", web::post().to(admin::disable))
                .route("/{tenant}/settings/methods", web::post().to(admin::methods))
                .route("/{tenant}/settings/other", web::post().to(admin::other_settings))
                .route("/{tenant}/agents", web::get().to(admin::agents_page))
                .route("/{tenant}/agents", web::post().to(admin::create_agent))
                .route("/{tenant}/agents/action", web::post().to(admin::agent_action))
                .route("/{tenant}/requests/decide", web::post().to(admin::decide_request))
                .route("/{tenant}/audit", web::get().to(admin::audit_page))
                .default_service(web::to(common::not_found)),
        );
    }
}

async fn style() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("Content-Type", "text/css; charset=utf-8"))
        .insert_header(("Cache-Control", "public, max-age=3600"))
        .body(STYLE)
}

async fn webauthn_script() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("Content-Type", "text/javascript; charset=utf-8"))
        .insert_header(("Cache-Control", "public, max-age=3600"))
        .body(WEBAUTHN_SCRIPT)
}

async fn script() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("Content-Type", "text/javascript; charset=utf-8"))
        .insert_header(("Cache-Control", "public, max-age=3600"))
        .body(SCRIPT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert_eq!(origin_of("http://localhost:8080"), "http://localhost:8080");
        assert_eq!(origin_of("https://Auth.Example/base/"), "https://auth.example");
    }
}
