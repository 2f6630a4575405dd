//! The sign-in pages: password, method choice, authenticator enrollment, code entry (with the
//! email Resend and its countdown, recovery codes, remember this device), Need recovery, the
//! grace skip, the hand-off to a dashboard, and sign-out.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use latchkey_core::{Method, handoff};
use latchkey_store::model::{NextAction, Tenant};
use latchkey_tenant::webauthn_json::{PublicKeyCredential, RegisterPublicKeyCredential};
use latchkey_tenant::{Error, IssuedSession, RecoveryStarted, SignIn, TotpSetup};
use serde::{Deserialize, Serialize};

use crate::WebState;
use crate::common::{
    self, CHALLENGE, ChallengeState, DEVICE, HANDOFF, Handoff, ONCE, PRE, SESSION, accept_post, clear_cookie, cookie,
    describe, message, pre_binding, q, render, render_with, see_other, set_cookie,
};
use crate::pages::{Chrome, EnrollPage, MessagePage, SignInPage, TotpPage, VerifyPage, WebauthnPage};

type St = web::Data<WebState>;
type Slug = web::Path<String>;

/// The query string of a request as pairs (unreadable parts ignored).
pub fn query(req: &HttpRequest) -> Vec<(String, String)> {
    serde_urlencoded::from_str(req.query_string()).unwrap_or_default()
}

fn param<'a>(qs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    qs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn method_label(m: &str) -> &'static str {
    match m {
        "authenticator" => "Authenticator app",
        "email" => "Email code",
        "webauthn" => "Passkey or security key",
        "recovery_code" => "Recovery code",
        _ => "Other method",
    }
}

/// `GET /ui/{tenant}`: to the account when signed in, else to the sign-in page.
pub async fn root(st: St, req: HttpRequest, slug: Slug) -> HttpResponse {
    let tenant = match common::tenant(&st, &slug).await {
        Ok(t) => t,
        Err(page) => return page,
    };
    let ctx = common::ctx(&st, &req);
    let to = if common::auth(&st, &req, &ctx, &tenant).await.is_some() { "account" } else { "sign-in" };
    see_other(&format!("/ui/{}/{to}", tenant.slug)).finish()
}

fn sign_in_form(
    st: &WebState,
    req: &HttpRequest,
    tenant: &Tenant,
    chrome: Chrome,
    status: StatusCode,
    email: &str,
) -> HttpResponse {
    let passkey = tenant.settings.passkey_sign_in;
    let (pre, new) = pre_binding(req);
    let mut b = HttpResponse::build(status);
    if new {
        b.insert_header(set_cookie(st, PRE, &pre, None));
    }
    render_with(b, &SignInPage { c: chrome, csrf: common::csrf(st, &pre), email: email.to_owned(), passkey })
}

/// `GET /ui/{tenant}/sign-in[?return_to=&state=&code_challenge=&code_challenge_method=S256]`:
/// the sign-in form. With a hand-off, `return_to` must start with one of the tenant's
/// `return_urls` (else an error page, never a redirect) and the challenge must be S256.
pub async fn sign_in_page(st: St, req: HttpRequest, slug: Slug) -> HttpResponse {
    let tenant = match common::tenant(&st, &slug).await {
        Ok(t) => t,
        Err(page) => return page,
    };
    let qs = query(&req);
    let chrome = Chrome::of(&tenant, "Sign in");
    let mut handoff_cookie = None;
    if let Some(return_to) = param(&qs, "return_to") {
        let challenge = param(&qs, "code_challenge").unwrap_or("");
        let method = param(&qs, "code_challenge_method").unwrap_or("");
        if !handoff::return_to_allowed(return_to, &tenant.settings.return_urls) {
            return message(
                StatusCode::BAD_REQUEST,
                chrome,
                "Return address not allowed",
                "The address this sign-in should return to is not registered for this organisation, so the sign-in cannot continue. Nothing was sent there.",
            );
        }
        if method != "S256" || !handoff::valid_pkce_string(challenge) {
            return message(
                StatusCode::BAD_REQUEST,
                chrome,
                "Invalid sign-in request",
                "The dashboard's sign-in request is invalid: it needs a PKCE code_challenge with code_challenge_method S256.",
            );
        }
        let state = param(&qs, "state").unwrap_or("");
        if state.len() > 512 {
            return message(StatusCode::BAD_REQUEST, chrome, "Invalid sign-in request", "The state is too long.");
        }
        let h =
            Handoff { return_to: return_to.to_owned(), state: state.to_owned(), code_challenge: challenge.to_owned() };
        handoff_cookie = Some(set_cookie(&st, HANDOFF, &h.encode(), None));
    }
    let notice = match param(&qs, "done") {
        Some("enrolled") => Some("Your second factor is set up. Sign in again to use it."),
        Some("signed_out") => Some("You are signed out."),
        Some("expired") => Some("Your sign-in expired. Please sign in again."),
        _ => None,
    };
    let mut res = sign_in_form(&st, &req, &tenant, chrome.notice(notice.map(str::to_owned)), StatusCode::OK, "");
    let headers = res.headers_mut();
    if let Some((k, v)) = handoff_cookie {
        if let Ok(v) = v.parse() {
            headers.append(k, v);
        }
    } else if notice.is_none()
        && cookie(&req, HANDOFF).is_some()
        && let Ok(v) = clear_cookie(&st, HANDOFF).1.parse()
    {
        headers.append(actix_web::http::header::SET_COOKIE, v);
    }
    res
}

/// Sets the session cookie and goes on: to the dashboard's hand-off when one waits, else to
/// the account page.
fn finish_sign_in(st: &WebState, req: &HttpRequest, tenant: &Tenant, issued: &IssuedSession) -> HttpResponse {
    let now = st.clock.now();
    let age = (issued.expires_at - now).num_seconds().max(1);
    let next = if Handoff::of(req).is_some() { "continue" } else { "account" };
    let mut b = see_other(&format!("/ui/{}/{next}", tenant.slug));
    b.append_header(set_cookie(st, SESSION, issued.token.expose(), Some(age)));
    b.append_header(clear_cookie(st, CHALLENGE));
    if let Some(device) = &issued.device {
        let days = (device.expires_at - now).num_seconds().max(1);
        b.append_header(set_cookie(st, DEVICE, device.token.expose(), Some(days)));
    }
    b.finish()
}

/// `POST /ui/{tenant}/sign-in` (email, password): a session (2FA off, or a trusted device),
/// or the second-factor pages.
pub async fn sign_in_submit(st: St, req: HttpRequest, slug: Slug, body: web::Bytes) -> HttpResponse {
    let tenant = match common::tenant(&st, &slug).await {
        Ok(t) => t,
        Err(page) => return page,
    };
    let chrome = Chrome::of(&tenant, "Sign in");
    let pre = cookie(&req, PRE);
    let form = match accept_post(&st, &req, &body, pre.as_deref(), &chrome) {
        Ok(f) => f,
        Err(page) => return page,
    };
    let email = form.str("email").trim().to_owned();
    let password = form.str("password");
    if email.is_empty() || password.is_empty() {
        let c = chrome.error(Some("Enter your email and your password.".into()));
        return sign_in_form(&st, &req, &tenant, c, StatusCode::BAD_REQUEST, &email);
    }
    let ctx = common::ctx(&st, &req);
    let device = cookie(&req, DEVICE);
    match st.service.sign_in(&ctx, &tenant.slug, &email, password, device.as_deref()).await {
        Ok(SignIn::Session(issued)) => finish_sign_in(&st, &req, &tenant, &issued),
        Ok(SignIn::Challenge { user, challenge }) => {
            let state = ChallengeState {
                token: challenge.token.expose().to_owned(),
                next: if challenge.next == NextAction::Enroll { "enroll" } else { "verify" }.into(),
                methods: challenge.methods.iter().map(|m| m.as_str().to_owned()).collect(),
                email_masked: challenge.email_masked.clone(),
                recovery_code: challenge.recovery_code,
                skippable: challenge.skippable,
                role: user.role.as_str().to_owned(),
                remember_days: tenant.settings.remember_device_days.get(user.role),
            };
            let mut b = see_other(&format!("/ui/{}/two-factor", tenant.slug));
            b.append_header(set_cookie(&st, CHALLENGE, &state.encode(), None));
            b.append_header(clear_cookie(&st, ONCE));
            b.finish()
        }
        Err(e) => {
            let (status, text) = describe(&e);
            sign_in_form(&st, &req, &tenant, chrome.error(Some(text)), status, &email)
        }
    }
}

/// The email page's state after a send.
#[derive(Default)]
struct Sent {
    sent: bool,
    resend_at: i64,
    sends_left: Option<u32>,
}

/// The links to the other methods of a challenge (and to a recovery code) from `method`'s page.
fn others(tenant: &Tenant, ch: &ChallengeState, method: &str) -> Vec<(String, String)> {
    if ch.enroll() {
        return vec![(format!("/ui/{}/two-factor", tenant.slug), "Choose another method".into())];
    }
    let mut others: Vec<(String, String)> = ch
        .methods
        .iter()
        .filter(|m| m.as_str() != method)
        .map(|m| (format!("/ui/{}/two-factor?method={m}", tenant.slug), format!("Use: {}", method_label(m))))
        .collect();
    if ch.recovery_code && method != "recovery_code" {
        others.push((format!("/ui/{}/two-factor?method=recovery_code", tenant.slug), "Use a recovery code".into()));
    }
    others
}

/// The passkey page of a challenge: a registration (`enroll`) or an assertion (`verify`),
/// with a new ceremony (the previous one of the challenge is replaced).
async fn webauthn_page(
    st: &WebState,
    req: &HttpRequest,
    tenant: &Tenant,
    ch: &ChallengeState,
    error: Option<String>,
    status: StatusCode,
) -> HttpResponse {
    let ctx = common::ctx(st, req);
    let started = if ch.enroll() {
        st.service.webauthn_register_start(&ctx, &ch.token).await
    } else {
        st.service.webauthn_authenticate_start(&ctx, &ch.token).await
    };
    let options = match started {
        Ok(o) => o,
        Err(Error::InvalidChallenge) => return expired(st, tenant),
        Err(e) => {
            let (status, text) = describe(&e);
            return message(status, Chrome::of(tenant, "Passkey"), "Passkeys are not available", &text);
        }
    };
    let (pre, new) = pre_binding(req);
    let (title, intro, action, button) = if ch.enroll() {
        (
            "Set up a passkey",
            "A passkey signs you in with this device's screen lock (fingerprint, face or PIN) or with a security key. Press the button and follow your browser.",
            format!("/ui/{}/enroll/webauthn", tenant.slug),
            "Create a passkey",
        )
    } else {
        (
            "Use your passkey",
            "Press the button and confirm with your passkey or security key.",
            format!("/ui/{}/two-factor/verify", tenant.slug),
            "Sign in with a passkey",
        )
    };
    let mut c = Chrome::of(tenant, title).error(error);
    c.webauthn = true;
    let page = WebauthnPage {
        c,
        csrf: common::csrf(st, &pre),
        intro: intro.into(),
        action,
        mode: if ch.enroll() { "create" } else { "get" }.into(),
        options: options.to_string(),
        method: if ch.enroll() { String::new() } else { "webauthn".into() },
        ask_name: ch.enroll(),
        remember_days: if ch.enroll() { 0 } else { ch.remember_days },
        button: button.into(),
        others: others(tenant, ch, "webauthn"),
        can_recover: !ch.enroll(),
    };
    let mut b = HttpResponse::build(status);
    if new {
        b.insert_header(set_cookie(st, PRE, &pre, None));
    }
    render_with(b, &page)
}

#[allow(clippy::too_many_arguments)]
fn code_page(
    st: &WebState,
    req: &HttpRequest,
    tenant: &Tenant,
    ch: &ChallengeState,
    method: &str,
    sent: Sent,
    error: Option<String>,
    status: StatusCode,
) -> HttpResponse {
    let (pre, new) = pre_binding(req);
    let now = st.clock.now().timestamp();
    let title = match method {
        "email" => "Email code",
        "recovery_code" => "Recovery code",
        _ => "Authenticator code",
    };
    let others = others(tenant, ch, method);
    let mut c = Chrome::of(tenant, title).error(error);
    c.script = method == "email" && sent.sent;
    let page = VerifyPage {
        c,
        csrf: common::csrf(st, &pre),
        method: method.to_owned(),
        email_masked: ch.email_masked.clone(),
        sent: sent.sent,
        resend_at: sent.resend_at,
        resend_wait: (sent.resend_at - now).max(0),
        sends_left: sent.sends_left,
        remember_days: if ch.enroll() { 0 } else { ch.remember_days },
        others,
        can_recover: !ch.enroll(),
    };
    let mut b = HttpResponse::build(status);
    if new {
        b.insert_header(set_cookie(st, PRE, &pre, None));
    }
    render_with(b, &page)
}

fn expired(st: &WebState, tenant: &Tenant) -> HttpResponse {
    let mut b = see_other(&format!("/ui/{}/sign-in?done=expired", tenant.slug));
    b.append_header(clear_cookie(st, CHALLENGE));
    b.finish()
}

/// `GET /ui/{tenant}/two-factor[?method=]`: the method choice of an enrollment, or the code
/// entry of a method.
pub async fn challenge_page(st: St, req: HttpRequest, slug: Slug) -> HttpResponse {
    let tenant = match common::tenant(&st, &slug).await {
        Ok(t) => t,
        Err(page) => return page,
    };
    let Some(ch) = ChallengeState::of(&req) else { return expired(&st, &tenant) };
    let qs = query(&req);
    let wanted = param(&qs, "method");
    if ch.enroll() && wanted.is_none() {
        let (pre, new) = pre_binding(&req);
        let methods = ch
            .methods
            .iter()
            .map(|m| {
                let (href, hint) = match m.as_str() {
                    "authenticator" => (
                        format!("/ui/{}/enroll/authenticator", tenant.slug),
                        "codes from an app on your phone (scan a QR code)",
                    ),
                    "email" => (format!("/ui/{}/two-factor?method=email", tenant.slug), "codes sent to your mailbox"),
                    "webauthn" => (
                        format!("/ui/{}/two-factor?method=webauthn", tenant.slug),
                        "this device's screen lock or a security key (needs JavaScript)",
                    ),
                    other => (format!("/ui/{}/two-factor?method={other}", tenant.slug), ""),
                };
                (href, method_label(m).to_owned(), hint.to_owned())
            })
            .collect();
        let page = EnrollPage {
            c: Chrome::of(&tenant, "Set up two-factor authentication"),
            csrf: common::csrf(&st, &pre),
            methods,
            skippable: ch.skippable,
            skip_text: "You may skip this for now; you will be asked again at your next sign-in.".into(),
        };
        let mut b = HttpResponse::Ok();
        if new {
            b.insert_header(set_cookie(&st, PRE, &pre, None));
        }
        return render_with(b, &page);
    }
    let method = match wanted {
        Some("recovery_code") if ch.recovery_code && !ch.enroll() => "recovery_code".to_owned(),
        Some(m) if ch.methods.iter().any(|x| x == m) => m.to_owned(),
        _ => ch.methods.first().cloned().unwrap_or_else(|| "authenticator".into()),
    };
    if ch.enroll() && method == "authenticator" {
        return see_other(&format!("/ui/{}/enroll/authenticator", tenant.slug)).finish();
    }
    if method == "webauthn" {
        return webauthn_page(&st, &req, &tenant, &ch, None, StatusCode::OK).await;
    }
    let sent = Sent {
        sent: param(&qs, "sent").is_some(),
        resend_at: param(&qs, "resend_at").and_then(|v| v.parse().ok()).unwrap_or(0),
        sends_left: param(&qs, "left").and_then(|v| v.parse().ok()),
    };
    code_page(&st, &req, &tenant, &ch, &method, sent, None, StatusCode::OK)
}

/// The checks of a POST of the sign-in pages: the form and the challenge cookie.
fn challenge_post(
    st: &WebState,
    req: &HttpRequest,
    tenant: &Tenant,
    body: &web::Bytes,
) -> Result<(common::Form, ChallengeState), HttpResponse> {
    let chrome = Chrome::of(tenant, "Sign in");
    let pre = cookie(req, PRE);
    let form = accept_post(st, req, body, pre.as_deref(), &chrome)?;
    let ch = ChallengeState::of(req).ok_or_else(|| expired(st, tenant))?;
    Ok((form, ch))
}

/// `POST /ui/{tenant}/two-factor/send`: emails a code (Send code, Resend) under the send
/// limits, then the code page with the countdown and the sends left.
pub async fn send_code(st: St, req: HttpRequest, slug: Slug, body: web::Bytes) -> HttpResponse {
    let tenant = match common::tenant(&st, &slug).await {
        Ok(t) => t,
        Err(page) => return page,
    };
    let (_, ch) = match challenge_post(&st, &req, &tenant, &body) {
        Ok(x) => x,
        Err(page) => return page,
    };
    let ctx = common::ctx(&st, &req);
    match st.service.email_send(&ctx, &ch.token).await {
        Ok(sent) => see_other(&format!(
            "/ui/{}/two-factor?method=email&sent=1&resend_at={}&left={}",
            tenant.slug,
            sent.resend_available_at.timestamp(),
            sent.sends_remaining
        ))
        .finish(),
        Err(Error::InvalidChallenge) => expired(&st, &tenant),
        Err(e) => {
            let retry = match &e {
                Error::ResendTooSoon { retry_after } | Error::SendLimitReached { retry_after } => *retry_after as i64,
                _ => 0,
            };
            let (status, text) = describe(&e);
            let sent = Sent { sent: true, resend_at: ctx.now.timestamp() + retry, sends_left: None };
            code_page(&st, &req, &tenant, &ch, "email", sent, Some(text), status)
        }
    }
}

/// `POST /ui/{tenant}/two-factor/verify` (method, code, remember_device): completes the
/// sign-in; refusals show on the code page with the API's limits and blocks.
pub async fn verify_code(st: St, req: HttpRequest, slug: Slug, body: web::Bytes) -> HttpResponse {
    let tenant = match common::tenant(&st, &slug).await {
        Ok(t) => t,
        Err(page) => return page,
    };
    let (form, ch) = match challenge_post(&st, &req, &tenant, &body) {
        Ok(x) => x,
        Err(page) => return page,
    };
    let method = form.str("method").to_owned();
    let code = form.str("code").trim().to_owned();
    let remember = form.checked("remember_device");
    let ctx = common::ctx(&st, &req);
    let sent = || Sent { sent: true, resend_at: 0, sends_left: None };
    let result = match method.as_str() {
        "recovery_code" => match latchkey_core::recovery_code::normalize(&code) {
            Some(code) => st.service.verify_recovery_code(&ctx, &ch.token, &code, remember).await,
            None => {
                let text = "A recovery code is 10 letters and digits, as xxxxx-xxxxx.".to_owned();
                return code_page(&st, &req, &tenant, &ch, &method, sent(), Some(text), StatusCode::BAD_REQUEST);
            }
        },
        "authenticator" | "email" => {
            if !latchkey_core::otp::is_code_shape(&code) {
                let text = "Enter the 6 digits of the code.".to_owned();
                return code_page(&st, &req, &tenant, &ch, &method, sent(), Some(text), StatusCode::BAD_REQUEST);
            }
            let m = if method == "email" { Method::Email } else { Method::Authenticator };
            st.service.verify(&ctx, &ch.token, m, &code, remember).await
        }
        "webauthn" => match common::credential::<PublicKeyCredential>(&form) {
            Some(credential) => st.service.verify_webauthn(&ctx, &ch.token, credential, remember).await,
            None => {
                let text =
                    Some("No passkey answer came with the form. Press the button to use your passkey.".to_owned());
                return webauthn_page(&st, &req, &tenant, &ch, text, StatusCode::BAD_REQUEST).await;
            }
        },
        _ => {
            return message(StatusCode::BAD_REQUEST, Chrome::of(&tenant, "Sign in"), "Invalid form", "Unknown method.");
        }
    };
    match result {
        Ok(issued) => finish_sign_in(&st, &req, &tenant, &issued),
        Err(Error::InvalidChallenge) => expired(&st, &tenant),
        Err(e) if method == "webauthn" => {
            let (status, text) = describe(&e);
            let text = text.replace("That code is not valid.", "That passkey was not accepted.");
            webauthn_page(&st, &req, &tenant, &ch, Some(text), status).await
        }
        Err(e) => {
            let (status, text) = describe(&e);
            code_page(&st, &req, &tenant, &ch, &method, sent(), Some(text), status)
        }
    }
}

/// `POST /ui/{tenant}/two-factor/recovery` ("Need recovery"): a recovery request for an
/// admin to decide (agents, supervisors), or a reset link by email (admins).
pub async fn need_recovery(st: St, req: HttpRequest, slug: Slug, body: web::Bytes) -> HttpResponse {
    let tenant = match common::tenant(&st, &slug).await {
        Ok(t) => t,
        Err(page) => return page,
    };
    let (_, ch) = match challenge_post(&st, &req, &tenant, &body) {
        Ok(x) => x,
        Err(page) => return page,
    };
    let ctx = common::ctx(&st, &req);
    match st.service.recovery(&ctx, &ch.token).await {
        Ok(RecoveryStarted::AdminApproval(_)) => {
            see_other(&format!("/ui/{}/two-factor/recovery?kind=admin_approval", tenant.slug)).finish()
        }
        Ok(RecoveryStarted::EmailLink { .. }) => {
            see_other(&format!("/ui/{}/two-factor/recovery?kind=email_link", tenant.slug)).finish()
        }
        Err(Error::InvalidChallenge) => expired(&st, &tenant),
        Err(e) => {
            let (status, text) = describe(&e);
            let method = ch.methods.first().cloned().unwrap_or_default();
            code_page(&st, &req, &tenant, &ch, &method, Sent::default(), Some(text), status)
        }
    }
}

/// `GET /ui/{tenant}/two-factor/recovery?kind=`: what happens now.
pub async fn recovery_page(st: St, req: HttpRequest, slug: Slug) -> HttpResponse {
    let tenant = match common::tenant(&st, &slug).await {
        Ok(t) => t,
        Err(page) => return page,
    };
    let qs = query(&req);
    let masked = ChallengeState::of(&req).map(|c| c.email_masked).unwrap_or_default();
    let (title, text) = if param(&qs, "kind") == Some("email_link") {
        (
            "Check your email",
            format!(
                "We sent a reset link to your email address {masked}. Open it from your inbox and press Reset OTP; then sign in again and set up your second factor anew."
            ),
        )
    } else {
        (
            "Recovery requested",
            "Your recovery request is waiting for an admin of your organisation to approve it. Once an admin has reset your second factor, sign in again to set up a new method.".to_owned(),
        )
    };
    let link = Some((format!("/ui/{}/sign-in", tenant.slug), "Back to sign-in".to_owned()));
    render(StatusCode::OK, &MessagePage { c: Chrome::of(&tenant, title), title: title.into(), text, link })
}

/// `POST /ui/{tenant}/two-factor/skip`: skips the enrollment within the grace period.
pub async fn skip(st: St, req: HttpRequest, slug: Slug, body: web::Bytes) -> HttpResponse {
    let tenant = match common::tenant(&st, &slug).await {
        Ok(t) => t,
        Err(page) => return page,
    };
    let (_, ch) = match challenge_post(&st, &req, &tenant, &body) {
        Ok(x) => x,
        Err(page) => return page,
    };
    let ctx = common::ctx(&st, &req);
    match st.service.skip_enrollment(&ctx, &ch.token).await {
        Ok(issued) => finish_sign_in(&st, &req, &tenant, &issued),
        Err(Error::InvalidChallenge) => expired(&st, &tenant),
        Err(e) => common::error_page(Chrome::of(&tenant, "Set up two-factor authentication"), &e),
    }
}

/// Authenticator setup material kept sealed in a cookie between the page and its form.
#[derive(Serialize, Deserialize)]
pub struct SealedSetup {
    /// The setup token (settings and account setups), or "".
    pub token: String,
    /// The base32 setup key.
    pub secret: String,
    /// The `otpauth://` URI.
    pub uri: String,
    /// Where the code went, masked (email setups).
    #[serde(default)]
    pub email_masked: String,
}

impl SealedSetup {
    /// From the use-case's setup.
    pub fn of(token: &str, setup: &TotpSetup) -> Self {
        Self {
            token: token.into(),
            secret: setup.secret.clone(),
            uri: setup.otpauth_uri.clone(),
            email_masked: String::new(),
        }
    }

    /// Sealed for a cookie bound to `aad`.
    pub fn seal(&self, st: &WebState, aad: &str) -> String {
        st.service.seal_page_value(&serde_json::to_vec(self).unwrap_or_default(), aad)
    }

    /// The setup in the request's cookie, when it opens under `aad`.
    pub fn open(st: &WebState, req: &HttpRequest, aad: &str) -> Option<Self> {
        let raw = st.service.open_page_value(&cookie(req, ONCE)?, aad)?;
        serde_json::from_slice(&raw).ok()
    }

    /// The QR code of the URI (PNG, base64).
    pub fn qr(&self) -> String {
        latchkey_core::totp::qr_png_base64(&self.uri).unwrap_or_default()
    }
}

fn enroll_aad(ch: &ChallengeState) -> String {
    format!("ui-enroll:{}", ch.token)
}

fn totp_page(
    st: &WebState,
    req: &HttpRequest,
    tenant: &Tenant,
    setup: &SealedSetup,
    error: Option<String>,
    status: StatusCode,
) -> HttpResponse {
    let (pre, new) = pre_binding(req);
    let page = TotpPage {
        c: Chrome::of(tenant, "Set up your authenticator app").error(error),
        csrf: common::csrf(st, &pre),
        intro: "Use an authenticator app such as Aegis, FreeOTP, Google Authenticator or 1Password.".into(),
        qr_png: setup.qr(),
        key: common::grouped(&setup.secret),
        action: format!("/ui/{}/enroll/authenticator", tenant.slug),
        button: "Confirm".into(),
    };
    let mut b = HttpResponse::build(status);
    if new {
        b.insert_header(set_cookie(st, PRE, &pre, None));
    }
    render_with(b, &page)
}

/// `GET /ui/{tenant}/enroll/authenticator`: the QR code and setup key of a new secret (kept
/// for reloads of this page in a sealed cookie), and the code field.
pub async fn enroll_authenticator_page(st: St, req: HttpRequest, slug: Slug) -> HttpResponse {
    let tenant = match common::tenant(&st, &slug).await {
        Ok(t) => t,
        Err(page) => return page,
    };
    let Some(ch) = ChallengeState::of(&req) else { return expired(&st, &tenant) };
    let aad = enroll_aad(&ch);
    if let Some(setup) = SealedSetup::open(&st, &req, &aad) {
        return totp_page(&st, &req, &tenant, &setup, None, StatusCode::OK);
    }
    let ctx = common::ctx(&st, &req);
    match st.service.authenticator_setup(&ctx, &ch.token).await {
        Ok(setup) => {
            let sealed = SealedSetup::of("", &setup);
            let mut res = totp_page(&st, &req, &tenant, &sealed, None, StatusCode::OK);
            if let Ok(v) = set_cookie(&st, ONCE, &sealed.seal(&st, &aad), None).1.parse() {
                res.headers_mut().append(actix_web::http::header::SET_COOKIE, v);
            }
            res
        }
        Err(Error::InvalidChallenge) => expired(&st, &tenant),
        Err(e) => common::error_page(Chrome::of(&tenant, "Set up two-factor authentication"), &e),
    }
}

/// `POST /ui/{tenant}/enroll/authenticator` (code): confirms the enrollment; then the user
/// signs in again.
pub async fn enroll_authenticator_confirm(st: St, req: HttpRequest, slug: Slug, body: web::Bytes) -> HttpResponse {
    let tenant = match common::tenant(&st, &slug).await {
        Ok(t) => t,
        Err(page) => return page,
    };
    let (form, ch) = match challenge_post(&st, &req, &tenant, &body) {
        Ok(x) => x,
        Err(page) => return page,
    };
    let aad = enroll_aad(&ch);
    let Some(setup) = SealedSetup::open(&st, &req, &aad) else {
        return see_other(&format!("/ui/{}/enroll/authenticator", tenant.slug)).finish();
    };
    let code = form.str("code").trim();
    if !latchkey_core::otp::is_code_shape(code) {
        let text = Some("Enter the 6 digits the app shows.".to_owned());
        return totp_page(&st, &req, &tenant, &setup, text, StatusCode::BAD_REQUEST);
    }
    let ctx = common::ctx(&st, &req);
    match st.service.authenticator_confirm(&ctx, &ch.token, code).await {
        Ok(()) => {
            let mut b = see_other(&format!("/ui/{}/sign-in?done=enrolled", tenant.slug));
            b.append_header(clear_cookie(&st, CHALLENGE));
            b.append_header(clear_cookie(&st, ONCE));
            b.finish()
        }
        Err(Error::InvalidChallenge) => expired(&st, &tenant),
        Err(e) => {
            let (status, text) = describe(&e);
            totp_page(&st, &req, &tenant, &setup, Some(text), status)
        }
    }
}

/// `POST /ui/{tenant}/enroll/webauthn` (credential, name): finishes the passkey registration
/// of an enrollment; then the user signs in again with it.
pub async fn enroll_webauthn_finish(st: St, req: HttpRequest, slug: Slug, body: web::Bytes) -> HttpResponse {
    let tenant = match common::tenant(&st, &slug).await {
        Ok(t) => t,
        Err(page) => return page,
    };
    let (form, ch) = match challenge_post(&st, &req, &tenant, &body) {
        Ok(x) => x,
        Err(page) => return page,
    };
    let Some(credential) = common::credential::<RegisterPublicKeyCredential>(&form) else {
        let text = Some("No passkey came with the form. Press the button to create one.".to_owned());
        return webauthn_page(&st, &req, &tenant, &ch, text, StatusCode::BAD_REQUEST).await;
    };
    let name = Some(form.str("name").trim()).filter(|n| !n.is_empty());
    let ctx = common::ctx(&st, &req);
    match st.service.webauthn_register_finish(&ctx, &ch.token, credential, name).await {
        Ok(()) => {
            let mut b = see_other(&format!("/ui/{}/sign-in?done=enrolled", tenant.slug));
            b.append_header(clear_cookie(&st, CHALLENGE));
            b.finish()
        }
        Err(Error::InvalidChallenge) => expired(&st, &tenant),
        Err(e) => {
            let (status, text) = describe(&e);
            webauthn_page(&st, &req, &tenant, &ch, Some(text), status).await
        }
    }
}

/// The sealed cookie of a passwordless ceremony (its `passkey_token`), bound to the browser's
/// pre-sign-in cookie.
fn passkey_aad(pre: &str) -> String {
    format!("ui-passkey:{pre}")
}

/// `GET /ui/{tenant}/passkey`: passwordless sign-in with a passkey (tenant setting
/// `passkey_sign_in`, DESIGN.md 5.1): a new ceremony, its token sealed in a cookie.
pub async fn passkey_page(st: St, req: HttpRequest, slug: Slug) -> HttpResponse {
    let tenant = match common::tenant(&st, &slug).await {
        Ok(t) => t,
        Err(page) => return page,
    };
    passkey_form(&st, &req, &tenant, None, StatusCode::OK).await
}

async fn passkey_form(
    st: &WebState,
    req: &HttpRequest,
    tenant: &Tenant,
    error: Option<String>,
    status: StatusCode,
) -> HttpResponse {
    if !tenant.settings.passkey_sign_in {
        return see_other(&format!("/ui/{}/sign-in", tenant.slug)).finish();
    }
    let ctx = common::ctx(st, req);
    let start = match st.service.passkey_start(&ctx, &tenant.slug).await {
        Ok(s) => s,
        Err(e) => return common::error_page(Chrome::of(tenant, "Sign in with a passkey"), &e),
    };
    let (pre, _) = pre_binding(req);
    let sealed = st.service.seal_page_value(start.passkey_token.expose().as_bytes(), &passkey_aad(&pre));
    let mut c = Chrome::of(tenant, "Sign in with a passkey").error(error);
    c.webauthn = true;
    let page = WebauthnPage {
        c,
        csrf: common::csrf(st, &pre),
        intro:
            "Sign in without a password: choose your passkey for this organisation and confirm with your screen lock."
                .into(),
        action: format!("/ui/{}/passkey", tenant.slug),
        mode: "get".into(),
        options: start.options.to_string(),
        method: String::new(),
        ask_name: false,
        remember_days: 0,
        button: "Sign in with a passkey".into(),
        others: vec![(format!("/ui/{}/sign-in", tenant.slug), "Sign in with email and password".into())],
        can_recover: false,
    };
    let mut b = HttpResponse::build(status);
    b.insert_header(set_cookie(st, PRE, &pre, None));
    b.append_header(set_cookie(st, ONCE, &sealed, Some(600)));
    render_with(b, &page)
}

/// `POST /ui/{tenant}/passkey` (credential): finishes a passwordless sign-in; every refusal
/// shows the same message.
pub async fn passkey_finish(st: St, req: HttpRequest, slug: Slug, body: web::Bytes) -> HttpResponse {
    let tenant = match common::tenant(&st, &slug).await {
        Ok(t) => t,
        Err(page) => return page,
    };
    let chrome = Chrome::of(&tenant, "Sign in with a passkey");
    let pre = cookie(&req, PRE);
    let form = match accept_post(&st, &req, &body, pre.as_deref(), &chrome) {
        Ok(f) => f,
        Err(page) => return page,
    };
    let token = pre
        .as_deref()
        .and_then(|pre| st.service.open_page_value(&cookie(&req, ONCE)?, &passkey_aad(pre)))
        .and_then(|raw| String::from_utf8(raw.to_vec()).ok());
    let (Some(token), Some(credential)) = (token, common::credential::<PublicKeyCredential>(&form)) else {
        let text = Some("No passkey answer came with the form, or the page is old. Try again.".to_owned());
        return passkey_form(&st, &req, &tenant, text, StatusCode::BAD_REQUEST).await;
    };
    let ctx = common::ctx(&st, &req);
    match st.service.passkey_finish(&ctx, &token, credential).await {
        Ok(issued) => {
            let mut res = finish_sign_in(&st, &req, &tenant, &issued);
            if let Ok(v) = clear_cookie(&st, ONCE).1.parse() {
                res.headers_mut().append(actix_web::http::header::SET_COOKIE, v);
            }
            res
        }
        Err(Error::InvalidCredentials) => {
            let text = Some("That passkey was not accepted for this organisation.".to_owned());
            passkey_form(&st, &req, &tenant, text, StatusCode::UNAUTHORIZED).await
        }
        Err(e) => {
            let (status, text) = describe(&e);
            passkey_form(&st, &req, &tenant, Some(text), status).await
        }
    }
}

/// `GET /ui/{tenant}/continue`: the hand-off. A code `K` for the signed-in user and the
/// dashboard's PKCE challenge, then a page that forwards the browser to `return_to?code=K&state=S`
/// (meta refresh and a visible link: `form-action 'self'` stops a redirect from a form post).
pub async fn continue_page(st: St, req: HttpRequest, slug: Slug) -> HttpResponse {
    let tenant = match common::tenant(&st, &slug).await {
        Ok(t) => t,
        Err(page) => return page,
    };
    let ctx = common::ctx(&st, &req);
    let Some((auth, _)) = common::auth(&st, &req, &ctx, &tenant).await else {
        return see_other(&format!("/ui/{}/sign-in", tenant.slug)).finish();
    };
    let Some(h) = Handoff::of(&req) else { return see_other(&format!("/ui/{}/account", tenant.slug)).finish() };
    let chrome = Chrome::of(&tenant, "Returning to the dashboard");
    if !handoff::return_to_allowed(&h.return_to, &auth.tenant.settings.return_urls) {
        let mut res = message(
            StatusCode::BAD_REQUEST,
            chrome,
            "Return address not allowed",
            "The address this sign-in should return to is not registered for this organisation.",
        );
        if let Ok(v) = clear_cookie(&st, HANDOFF).1.parse() {
            res.headers_mut().append(actix_web::http::header::SET_COOKIE, v);
        }
        return res;
    }
    let code = match st.service.handoff_code(&ctx, &auth, &h.code_challenge).await {
        Ok(c) => c,
        Err(e) => return common::error_page(chrome, &e),
    };
    let sep = if h.return_to.contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}code={}&state={}", h.return_to, q(code.expose()), q(&h.state));
    let mut c = chrome;
    c.refresh = Some(url.clone());
    let page = MessagePage {
        c,
        title: "You are signed in".into(),
        text: "Taking you back to the dashboard…".into(),
        link: Some((url, "Continue to the dashboard".into())),
    };
    let mut b = HttpResponse::Ok();
    b.append_header(clear_cookie(&st, HANDOFF));
    render_with(b, &page)
}

/// `POST /ui/{tenant}/sign-out`: ends the session.
pub async fn sign_out(st: St, req: HttpRequest, slug: Slug, body: web::Bytes) -> HttpResponse {
    let tenant = match common::tenant(&st, &slug).await {
        Ok(t) => t,
        Err(page) => return page,
    };
    let ctx = common::ctx(&st, &req);
    let Some((auth, token)) = common::auth(&st, &req, &ctx, &tenant).await else {
        return see_other(&format!("/ui/{}/sign-in", tenant.slug)).finish();
    };
    if let Err(page) = accept_post(&st, &req, &body, Some(&token), &Chrome::of(&tenant, "Sign out")) {
        return page;
    }
    if let Err(e) = st.service.logout(&auth).await {
        return common::error_page(Chrome::of(&tenant, "Sign out"), &e);
    }
    let mut b = see_other(&format!("/ui/{}/sign-in?done=signed_out", tenant.slug));
    b.append_header(clear_cookie(&st, SESSION));
    b.append_header(clear_cookie(&st, HANDOFF));
    b.finish()
}
