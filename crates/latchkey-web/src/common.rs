//! What every page handler shares: the request context, cookies, the CSRF and `Origin` checks,
//! form parsing, the signed-in user, and error messages.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpMessage as _, HttpRequest, HttpResponse, HttpResponseBuilder, web};
use askama::Template;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use latchkey_core::{Role, SecretToken};
use latchkey_store::model::Tenant;
use latchkey_tenant::{Auth, Error, PendingNotices, RequestCtx};
use serde::{Deserialize, Serialize};

use crate::WebState;
use crate::pages::{Chrome, MessagePage};

/// The session cookie (the session's bearer token).
pub const SESSION: &str = "lk_session";
/// The pre-sign-in cookie (random; the CSRF binding of forms before sign-in).
pub const PRE: &str = "lk_pre";
/// The open challenge of a sign-in ([`ChallengeState`]).
pub const CHALLENGE: &str = "lk_challenge";
/// The hand-off of the sign-in in progress ([`Handoff`]).
pub const HANDOFF: &str = "lk_handoff";
/// A sealed one-time value shown after a redirect (setup material, recovery codes).
pub const ONCE: &str = "lk_once";
/// A trusted device's token (DESIGN.md 5.4).
pub const DEVICE: &str = "lk_device";
/// The name of every form's CSRF field.
pub const CSRF_FIELD: &str = "csrf_token";
/// The longest value a form field may have.
pub const MAX_FIELD: usize = 4096;
/// The longest `credential` field (a WebAuthn credential as JSON, DESIGN.md 5.1).
pub const MAX_CREDENTIAL: usize = 16 * 1024;

/// The request context: the instant (read once), client IP and user agent.
pub fn ctx(st: &WebState, req: &HttpRequest) -> RequestCtx {
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.chars().take(512).collect::<String>());
    let ip = (st.client_ip)(req).map(|ip| ip.to_string());
    // One set of pending notices per request, as the API's extractors keep it: the app's
    // `deliver_notices` middleware (latchkey-api) delivers them before the answer leaves.
    let existing = req.extensions().get::<PendingNotices>().cloned();
    let notices = match existing {
        Some(shared) => shared,
        None => {
            let fresh = PendingNotices::default();
            req.extensions_mut().insert(fresh.clone());
            fresh
        }
    };
    RequestCtx { ip, user_agent, notices, ..RequestCtx::at(st.clock.now()) }
}

/// The value of cookie `name`.
pub fn cookie(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers().get_all(header::COOKIE).filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name && !v.is_empty()).then(|| v.to_owned())
    })
}

/// A `Set-Cookie` value: `HttpOnly`, `SameSite=Strict`, path `/ui`, `Secure` on https;
/// `max_age` in seconds (`Some(0)` deletes it; `None`: for the browser session).
pub fn set_cookie(st: &WebState, name: &str, value: &str, max_age: Option<i64>) -> (header::HeaderName, String) {
    let mut c = format!("{name}={value}; Path=/ui; HttpOnly; SameSite=Strict");
    if st.secure_cookies {
        c.push_str("; Secure");
    }
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    (header::SET_COOKIE, c)
}

/// Deletes cookie `name`.
pub fn clear_cookie(st: &WebState, name: &str) -> (header::HeaderName, String) {
    set_cookie(st, name, "x", Some(0))
}

/// A 303 to `location` (post/redirect/get).
pub fn see_other(location: &str) -> HttpResponseBuilder {
    let mut b = HttpResponse::SeeOther();
    b.insert_header((header::LOCATION, location.to_owned()));
    b
}

/// A rendered page with `status`.
pub fn render(status: StatusCode, page: &impl Template) -> HttpResponse {
    render_with(HttpResponse::build(status), page)
}

/// A rendered page on a prepared response (cookies set).
pub fn render_with(mut b: HttpResponseBuilder, page: &impl Template) -> HttpResponse {
    match page.render() {
        Ok(html) => b.content_type("text/html; charset=utf-8").body(html),
        Err(e) => {
            tracing::error!(error = %e, "page rendering failed");
            HttpResponse::InternalServerError().content_type("text/html; charset=utf-8").body(
                "<!doctype html><html lang=\"en\"><title>Error</title><p>Something went wrong. Please try again.</p></html>",
            )
        }
    }
}

/// A page with a title and a message (errors, refusals, confirmations).
pub fn message(status: StatusCode, chrome: Chrome, title: &str, text: &str) -> HttpResponse {
    render(status, &MessagePage { c: chrome, title: title.to_owned(), text: text.to_owned(), link: None })
}

/// The page of an unknown path or tenant: 404.
pub async fn not_found() -> HttpResponse {
    message(StatusCode::NOT_FOUND, Chrome::bare("Not found"), "Page not found", "There is no such page.")
}

/// The tenant of the path, or a 404 page.
pub async fn tenant(st: &WebState, slug: &str) -> Result<Tenant, HttpResponse> {
    match st.service.registry().enter_slug(slug).await {
        Ok(Some(t)) => Ok(t),
        Ok(None) | Err(Error::NotFound) => Err(not_found().await),
        Err(e) => Err(error_page(Chrome::bare("Error"), &e)),
    }
}

/// The signed-in user of `tenant` (the session cookie), if any.
pub async fn auth(st: &WebState, req: &HttpRequest, ctx: &RequestCtx, tenant: &Tenant) -> Option<(Auth, String)> {
    let token = cookie(req, SESSION)?;
    let auth = st.service.authenticate(ctx, &token).await.ok()?;
    (auth.tenant.id == tenant.id).then_some((auth, token))
}

/// The CSRF token of forms bound to `binding` (the session token, or the pre-sign-in cookie).
pub fn csrf(st: &WebState, binding: &str) -> String {
    st.service.page_token("csrf", binding)
}

/// Whether the POST may be judged by its token at all: refused when `Origin` names another
/// origin (`null`, sent by Chromium under `no-referrer`, is judged by the token) or
/// `Sec-Fetch-Site` is `cross-site`.
pub fn same_origin(st: &WebState, req: &HttpRequest) -> bool {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_ascii_lowercase);
    if header("sec-fetch-site").as_deref() == Some("cross-site") {
        return false;
    }
    match header("origin") {
        None => true,
        Some(o) if o == "null" => true,
        Some(o) => {
            let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok()).map(str::to_ascii_lowercase);
            let scheme = if st.secure_cookies { "https" } else { "http" };
            o == st.public_origin || host.is_some_and(|h| o == format!("{scheme}://{h}"))
        }
    }
}

/// A submitted form: its fields in order (duplicates kept).
#[derive(Debug, Default)]
pub struct Form(pub Vec<(String, String)>);

impl Form {
    /// Parses an `application/x-www-form-urlencoded` body; `Err` names why it is refused.
    pub fn parse(body: &web::Bytes) -> Result<Self, &'static str> {
        let fields: Vec<(String, String)> =
            serde_urlencoded::from_bytes(body).map_err(|_| "The form could not be read.")?;
        let too_long = |k: &str, v: &str| v.len() > if k == "credential" { MAX_CREDENTIAL } else { MAX_FIELD };
        if fields.iter().any(|(k, v)| k.len() > 64 || too_long(k, v)) {
            return Err("A field of the form is too long.");
        }
        Ok(Self(fields))
    }

    /// The value of `name` (the last one), trimmed of nothing.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The value of `name`, or "".
    pub fn str(&self, name: &str) -> &str {
        self.get(name).unwrap_or("")
    }

    /// Whether a checkbox `name` was checked.
    pub fn checked(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// The checks of every POST: same origin, a readable form, and its CSRF token bound to
/// `binding`. `Err` is the 403 (or 400) page to answer, never a redirect.
pub fn accept_post(
    st: &WebState,
    req: &HttpRequest,
    body: &web::Bytes,
    binding: Option<&str>,
    chrome: &Chrome,
) -> Result<Form, HttpResponse> {
    let refused = |text: &str| Err(message(StatusCode::FORBIDDEN, chrome.clone(), "Request refused", text));
    if !same_origin(st, req) {
        return refused("This form was sent from another site, so it was refused. Nothing was changed.");
    }
    let form = match Form::parse(body) {
        Ok(f) => f,
        Err(why) => return Err(message(StatusCode::BAD_REQUEST, chrome.clone(), "Invalid form", why)),
    };
    let Some(binding) = binding else {
        return refused(
            "Your session has ended or this browser does not accept cookies. Open the page again and retry. Nothing was changed.",
        );
    };
    if !st.service.page_token_ok("csrf", binding, form.str(CSRF_FIELD)) {
        return refused(
            "The form's security token is missing or wrong (the page may be old). Open the page again and retry. Nothing was changed.",
        );
    }
    Ok(form)
}

/// The browser's WebAuthn answer in the form's `credential` field (JSON), or `None` when it
/// is missing or not a `PublicKeyCredential` of the expected kind.
pub fn credential<T: serde::de::DeserializeOwned>(form: &Form) -> Option<T> {
    let raw = form.get("credential").filter(|v| !v.trim().is_empty())?;
    serde_json::from_str(raw).ok()
}

/// The pre-sign-in binding of a browser: its cookie, or a new one to set.
pub fn pre_binding(req: &HttpRequest) -> (String, bool) {
    match cookie(req, PRE) {
        Some(v) => (v, false),
        None => (SecretToken::generate().expose().to_owned(), true),
    }
}

/// The sign-in in progress: the challenge token and what the pages show of it. Kept in a
/// cookie; the use-cases check the token, the rest only shapes the page.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChallengeState {
    /// The challenge token.
    pub token: String,
    /// `enroll` or `verify`.
    pub next: String,
    /// The methods on offer, preferred first.
    pub methods: Vec<String>,
    /// The user's address, masked.
    pub email_masked: String,
    /// Whether a recovery code may be used.
    pub recovery_code: bool,
    /// Whether the enrollment may be skipped.
    pub skippable: bool,
    /// The user's role.
    pub role: String,
    /// Days a device may be remembered for this role (0: off).
    pub remember_days: u32,
}

impl ChallengeState {
    /// The cookie value.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    /// The state in the request's cookie.
    pub fn of(req: &HttpRequest) -> Option<Self> {
        let raw = URL_SAFE_NO_PAD.decode(cookie(req, CHALLENGE)?).ok()?;
        serde_json::from_slice(&raw).ok()
    }

    /// Whether this is an enrollment.
    pub fn enroll(&self) -> bool {
        self.next == "enroll"
    }
}

/// A dashboard waiting for the sign-in (DESIGN.md 5.7), kept in a cookie.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Handoff {
    /// Where to send the browser (checked against `return_urls` again at the end).
    pub return_to: String,
    /// The dashboard's `state`, returned as is.
    pub state: String,
    /// The PKCE S256 challenge.
    pub code_challenge: String,
}

impl Handoff {
    /// The cookie value.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    /// The hand-off in the request's cookie.
    pub fn of(req: &HttpRequest) -> Option<Self> {
        let raw = URL_SAFE_NO_PAD.decode(cookie(req, HANDOFF)?).ok()?;
        serde_json::from_slice(&raw).ok()
    }
}

/// A message for a refused use-case and the status of its page.
pub fn describe(e: &Error) -> (StatusCode, String) {
    let secs = |n: u64| if n == 1 { "1 second".to_owned() } else { format!("{n} seconds") };
    match e {
        Error::InvalidRequest(why) => (StatusCode::BAD_REQUEST, format!("Invalid input: {why}.")),
        Error::Unauthenticated => (StatusCode::UNAUTHORIZED, "Your session has ended. Please sign in again.".into()),
        Error::Forbidden => (StatusCode::FORBIDDEN, "Your role may not do this.".into()),
        Error::NotFound => (StatusCode::NOT_FOUND, "Not found.".into()),
        Error::InvalidCredentials => (StatusCode::UNAUTHORIZED, "The email or password is wrong.".into()),
        Error::InvalidCredential(_) => {
            (StatusCode::BAD_REQUEST, "This passkey or security key could not be registered. Please try again.".into())
        }
        Error::RateLimited { retry_after } => (
            StatusCode::TOO_MANY_REQUESTS,
            format!("Too many attempts. Please wait {} and try again.", secs(*retry_after)),
        ),
        Error::TenantExists => (StatusCode::CONFLICT, "That tenant exists.".into()),
        Error::EmailTaken => (StatusCode::CONFLICT, "A user with this email address exists already.".into()),
        Error::InvalidChallenge => {
            (StatusCode::UNAUTHORIZED, "Your sign-in has expired or ended. Please sign in again.".into())
        }
        Error::InvalidCode { attempts_remaining, retry_after } => match retry_after {
            Some(wait) => (
                StatusCode::UNAUTHORIZED,
                format!("That code is not valid. Too many wrong codes: codes are blocked for {}.", secs(*wait)),
            ),
            None => (
                StatusCode::UNAUTHORIZED,
                format!("That code is not valid. {attempts_remaining} attempts left before codes are blocked."),
            ),
        },
        Error::CodeExpired { attempts_remaining } => (
            StatusCode::GONE,
            format!(
                "That code has expired or was replaced by a newer one. Ask for a new code. {attempts_remaining} attempts left."
            ),
        ),
        Error::OtpBlocked { retry_after } => (
            StatusCode::LOCKED,
            format!("Too many wrong codes: codes are blocked. Try again in {}.", secs(*retry_after)),
        ),
        Error::MethodNotAllowed => (StatusCode::FORBIDDEN, "This method is not allowed here.".into()),
        Error::AlreadyEnrolled => (StatusCode::CONFLICT, "This method is set up already; sign in with it.".into()),
        Error::SetupRequired => (StatusCode::CONFLICT, "Set up the authenticator first.".into()),
        Error::ResendTooSoon { retry_after } => {
            (StatusCode::TOO_MANY_REQUESTS, format!("A new code can be sent in {}. Please wait.", secs(*retry_after)))
        }
        Error::SendLimitReached { retry_after } => (
            StatusCode::TOO_MANY_REQUESTS,
            format!("Too many codes were sent. Please wait {} before asking again.", secs(*retry_after)),
        ),
        Error::InvalidToken => (StatusCode::UNAUTHORIZED, "This link is unknown, used or expired.".into()),
        Error::InvalidPassword => (StatusCode::UNAUTHORIZED, "The password is wrong.".into()),
        Error::AlreadyEnabled => (StatusCode::CONFLICT, "Two-factor authentication is on already.".into()),
        Error::StepUpRequired => (
            StatusCode::FORBIDDEN,
            "For this change, confirm your second factor again first (Account → Confirm it's you).".into(),
        ),
        Error::LastAdmin => (StatusCode::CONFLICT, "A tenant keeps at least one admin.".into()),
        Error::RequestNotPending => (StatusCode::CONFLICT, "This request was decided already.".into()),
        Error::InvalidSetupToken => {
            (StatusCode::UNAUTHORIZED, "This setup has expired or ended. Please start it again.".into())
        }
        Error::LastMethod => (StatusCode::CONFLICT, "This is your last method; add another one first.".into()),
        Error::EnrollmentRequired => (StatusCode::FORBIDDEN, "Set up a second factor first.".into()),
        Error::EmailChangeForbidden => (StatusCode::FORBIDDEN, "Only an admin can change this email address.".into()),
        Error::QueueUnavailable | Error::StoreUnavailable => {
            (StatusCode::SERVICE_UNAVAILABLE, "The service is busy. Please try again in a moment.".into())
        }
        Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong. Please try again.".into()),
    }
}

/// The page of a refused use-case outside a form (the message and its status).
pub fn error_page(chrome: Chrome, e: &Error) -> HttpResponse {
    let (status, text) = describe(e);
    message(status, chrome, "Something is wrong", &text)
}

/// `value` percent-encoded for a query string.
pub fn q(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The setup key in groups of four characters.
pub fn grouped(key: &str) -> String {
    key.as_bytes().chunks(4).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join(" ")
}

/// A time for pages: `2026-12-01 10:15:02 UTC` (to the second).
pub fn when(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A signed-in page's request: the tenant, the session, its token and the context.
pub struct Signed {
    /// The tenant of the path.
    pub tenant: Tenant,
    /// The session, user and tenant.
    pub auth: Auth,
    /// The session token (the CSRF binding).
    pub token: String,
    /// The request context.
    pub ctx: RequestCtx,
}

impl Signed {
    /// The chrome of a signed-in page titled `title`.
    pub fn chrome(&self, st: &WebState, title: &str) -> Chrome {
        let mut c = Chrome::of(&self.tenant, title);
        c.user_email = Some(self.auth.user.email.clone());
        c.admin = self.auth.user.role == Role::Admin;
        c.csrf = csrf(st, &self.token);
        c
    }
}

/// The signed-in request of `slug`, or a 303 to its sign-in page.
pub async fn signed(st: &WebState, req: &HttpRequest, slug: &str) -> Result<Signed, HttpResponse> {
    let tenant = tenant(st, slug).await?;
    let ctx = ctx(st, req);
    match auth(st, req, &ctx, &tenant).await {
        Some((auth, token)) => Ok(Signed { tenant, auth, token, ctx }),
        None => Err(see_other(&format!("/ui/{}/sign-in", tenant.slug)).finish()),
    }
}

/// A signed-in POST: the session, the same-origin check and the form's CSRF token.
pub async fn signed_post(
    st: &WebState,
    req: &HttpRequest,
    slug: &str,
    body: &web::Bytes,
) -> Result<(Signed, Form), HttpResponse> {
    let tenant = tenant(st, slug).await?;
    let ctx = ctx(st, req);
    let chrome = Chrome::of(&tenant, "Request refused");
    let found = auth(st, req, &ctx, &tenant).await;
    let form = accept_post(st, req, body, found.as_ref().map(|(_, t)| t.as_str()), &chrome)?;
    match found {
        Some((auth, token)) => Ok((Signed { tenant, auth, token, ctx }, form)),
        None => Err(see_other(&format!("/ui/{}/sign-in", tenant.slug)).finish()),
    }
}
