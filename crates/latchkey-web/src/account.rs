//! The account page: methods (add or replace the authenticator, remove), step-up, recovery
//! codes shown once, trusted devices, password change.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use latchkey_core::{Method, TrustedDeviceId};
use latchkey_tenant::Error;
use latchkey_tenant::webauthn_json::{PublicKeyCredential, RegisterPublicKeyCredential};
use serde::{Deserialize, Serialize};

use crate::WebState;
use crate::common::{self, ONCE, Signed, clear_cookie, describe, render, render_with, see_other, set_cookie};
use crate::pages::{AccountPage, CodesPage, StepUpPage, TotpPage, WebauthnPage};
use crate::signin::{SealedSetup, query};

type St = web::Data<WebState>;
type Slug = web::Path<String>;

fn done_text(done: &str) -> Option<String> {
    Some(
        match done {
            "password" => "Your password was changed. Your other sessions were signed out.",
            "device" => "The device was forgotten.",
            "removed" => "The method was removed.",
            "authenticator" => "Your authenticator app is set up.",
            "step_up" => "Confirmed. You can change your methods for a few minutes.",
            "sent" => "We emailed you a code.",
            "passkey" => "Your passkey was added.",
            "renamed" => "The passkey was renamed.",
            "passkey_removed" => "The passkey was removed.",
            _ => return None,
        }
        .to_owned(),
    )
}

async fn account(
    st: &WebState,
    s: &Signed,
    notice: Option<String>,
    error: Option<String>,
    status: StatusCode,
) -> HttpResponse {
    let overview = match st.service.two_factor_overview(&s.auth, s.ctx.now).await {
        Ok(o) => o,
        Err(e) => return common::error_page(s.chrome(st, "Account"), &e),
    };
    let allowed = s.auth.tenant.policy.methods_for(s.auth.user.role);
    let mut methods = Vec::new();
    if let Some(a) = &overview.authenticator {
        let used = a.last_used_at.map(|t| format!(", last used {}", common::when(t))).unwrap_or_default();
        methods.push((
            "authenticator".to_owned(),
            "Authenticator app".to_owned(),
            format!("added {}{used}", common::when(a.created_at)),
        ));
    }
    if let Some(e) = &overview.email {
        methods.push(("email".to_owned(), "Email code".to_owned(), format!("added {}", common::when(e.created_at))));
    }
    let recovery_text = match &overview.recovery_codes {
        Some(rc) => format!("{} unused recovery codes (generated {}).", rc.remaining, common::when(rc.created_at)),
        None => "You have no recovery codes.".into(),
    };
    let passkeys = overview
        .webauthn
        .iter()
        .map(|p| {
            let used = p.last_used_at.map(|t| format!(", last used {}", common::when(t))).unwrap_or_default();
            let kind = if p.backup_eligible { "synced passkey" } else { "device-bound" };
            (p.credential_id.clone(), p.name.clone(), format!("{kind}, added {}{used}", common::when(p.created_at)))
        })
        .collect();
    let devices = overview
        .trusted_devices
        .iter()
        .map(|d| {
            let ua = d.user_agent.clone().unwrap_or_else(|| "unknown browser".into());
            (d.id.to_string(), format!("{ua} — until {}", common::when(d.expires_at)))
        })
        .collect();
    let page = AccountPage {
        c: s.chrome(st, "Account").notice(notice).error(error),
        name: s.auth.user.name.clone(),
        email: s.auth.user.email.clone(),
        role: s.auth.user.role.as_str().into(),
        methods,
        has_authenticator: overview.authenticator.is_some(),
        can_add_authenticator: allowed.contains(Method::Authenticator),
        recovery_text,
        can_generate_codes: !overview.enrolled.is_empty()
            && s.auth.tenant.settings.recovery_codes.get(s.auth.user.role),
        devices,
        passkeys,
        can_add_passkey: allowed.contains(Method::Webauthn),
    };
    render(status, &page)
}

async fn refused(st: &WebState, s: &Signed, e: &Error) -> HttpResponse {
    let (status, text) = describe(e);
    account(st, s, None, Some(text), status).await
}

fn back(s: &Signed, done: &str) -> HttpResponse {
    see_other(&format!("/ui/{}/account?done={done}", s.tenant.slug)).finish()
}

/// `GET /ui/{tenant}/account`: the signed-in user's page.
pub async fn page(st: St, req: HttpRequest, slug: Slug) -> HttpResponse {
    let s = match common::signed(&st, &req, &slug).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let notice = query(&req).iter().find(|(k, _)| k == "done").and_then(|(_, v)| done_text(v));
    account(&st, &s, notice, None, StatusCode::OK).await
}

/// `POST /ui/{tenant}/account/password` (current, new, confirm): changes the password; the
/// other sessions end.
pub async fn change_password(st: St, req: HttpRequest, slug: Slug, body: web::Bytes) -> HttpResponse {
    let (s, form) = match common::signed_post(&st, &req, &slug, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let (current, new, confirm) =
        (form.str("current_password"), form.str("new_password"), form.str("confirm_password"));
    if current.is_empty() || new.is_empty() {
        let text = "Enter your current password and the new one.".to_owned();
        return account(&st, &s, None, Some(text), StatusCode::BAD_REQUEST).await;
    }
    if form.get("confirm_password").is_some() && new != confirm {
        let text = "The new password and its confirmation differ.".to_owned();
        return account(&st, &s, None, Some(text), StatusCode::BAD_REQUEST).await;
    }
    match st.service.change_password(&s.ctx, &s.auth, current, new).await {
        Ok(()) => back(&s, "password"),
        Err(e) => refused(&st, &s, &e).await,
    }
}

fn codes_aad(s: &Signed) -> String {
    format!("ui-codes:{}", s.token)
}

/// `POST /ui/{tenant}/account/recovery-codes`: a new set of recovery codes (step-up), shown
/// once on the next page.
pub async fn generate_codes(st: St, req: HttpRequest, slug: Slug, body: web::Bytes) -> HttpResponse {
    let (s, _) = match common::signed_post(&st, &req, &slug, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match st.service.generate_recovery_codes(&s.ctx, &s.auth).await {
        Ok(codes) => {
            let text: Vec<&str> = codes.codes.iter().map(|c| c.as_str()).collect();
            let sealed = st.service.seal_page_value(text.join("\n").as_bytes(), &codes_aad(&s));
            let mut b = see_other(&format!("/ui/{}/account/recovery-codes", s.tenant.slug));
            b.append_header(set_cookie(&st, ONCE, &sealed, Some(300)));
            b.finish()
        }
        Err(e) => refused(&st, &s, &e).await,
    }
}

/// `GET /ui/{tenant}/account/recovery-codes`: the codes just generated, once (the sealed
/// cookie is deleted with this answer).
pub async fn show_codes(st: St, req: HttpRequest, slug: Slug) -> HttpResponse {
    let s = match common::signed(&st, &req, &slug).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let opened = common::cookie(&req, ONCE).and_then(|v| st.service.open_page_value(&v, &codes_aad(&s)));
    let Some(raw) = opened else { return back(&s, "none") };
    let codes: Vec<String> = String::from_utf8_lossy(&raw).lines().map(str::to_owned).collect();
    let download = common::q(&codes.join("\n"));
    let mut b = HttpResponse::Ok();
    b.append_header(clear_cookie(&st, ONCE));
    render_with(b, &CodesPage { c: s.chrome(&st, "Your recovery codes"), codes, download })
}

/// `POST /ui/{tenant}/account/devices/revoke` (id): forgets a trusted device.
pub async fn revoke_device(st: St, req: HttpRequest, slug: Slug, body: web::Bytes) -> HttpResponse {
    let (s, form) = match common::signed_post(&st, &req, &slug, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Ok(id) = form.str("id").parse::<TrustedDeviceId>() else {
        return account(&st, &s, None, Some("Unknown device.".into()), StatusCode::BAD_REQUEST).await;
    };
    match st.service.revoke_trusted_device(&s.ctx, &s.auth, id).await {
        Ok(()) => back(&s, "device"),
        Err(e) => refused(&st, &s, &e).await,
    }
}

/// `POST /ui/{tenant}/account/methods/remove` (method): removes a method (step-up;
/// `last_method` refused).
pub async fn remove_method(st: St, req: HttpRequest, slug: Slug, body: web::Bytes) -> HttpResponse {
    let (s, form) = match common::signed_post(&st, &req, &slug, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Ok(method) = form.str("method").parse::<Method>() else {
        return account(&st, &s, None, Some("Unknown method.".into()), StatusCode::BAD_REQUEST).await;
    };
    match st.service.remove_method(&s.ctx, &s.auth, method).await {
        Ok(()) => back(&s, "removed"),
        Err(e) => refused(&st, &s, &e).await,
    }
}

fn setup_aad(s: &Signed) -> String {
    format!("ui-account-totp:{}", s.token)
}

fn authenticator_form(
    st: &WebState,
    s: &Signed,
    setup: &SealedSetup,
    error: Option<String>,
    status: StatusCode,
) -> HttpResponse {
    let page = TotpPage {
        c: s.chrome(st, "Set up your authenticator app").error(error),
        csrf: common::csrf(st, &s.token),
        intro: "Your current authenticator keeps working until you confirm the new one.".into(),
        qr_png: setup.qr(),
        key: common::grouped(&setup.secret),
        action: format!("/ui/{}/account/authenticator/confirm", s.tenant.slug),
        button: "Confirm".into(),
    };
    render(status, &page)
}

/// `POST /ui/{tenant}/account/authenticator`: starts adding or replacing the authenticator
/// (step-up when a method is enrolled).
pub async fn add_authenticator(st: St, req: HttpRequest, slug: Slug, body: web::Bytes) -> HttpResponse {
    let (s, _) = match common::signed_post(&st, &req, &slug, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match st.service.add_authenticator(&s.ctx, &s.auth).await {
        Ok(setup) => {
            let sealed = SealedSetup::of(setup.setup_token.expose(), &setup.setup);
            let mut b = see_other(&format!("/ui/{}/account/authenticator", s.tenant.slug));
            b.append_header(set_cookie(&st, ONCE, &sealed.seal(&st, &setup_aad(&s)), None));
            b.finish()
        }
        Err(e) => refused(&st, &s, &e).await,
    }
}

/// `GET /ui/{tenant}/account/authenticator`: the QR code, setup key and code field.
pub async fn authenticator_page(st: St, req: HttpRequest, slug: Slug) -> HttpResponse {
    let s = match common::signed(&st, &req, &slug).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match SealedSetup::open(&st, &req, &setup_aad(&s)) {
        Some(setup) => authenticator_form(&st, &s, &setup, None, StatusCode::OK),
        None => back(&s, "none"),
    }
}

/// `POST /ui/{tenant}/account/authenticator/confirm` (code).
pub async fn confirm_authenticator(st: St, req: HttpRequest, slug: Slug, body: web::Bytes) -> HttpResponse {
    let (s, form) = match common::signed_post(&st, &req, &slug, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(setup) = SealedSetup::open(&st, &req, &setup_aad(&s)) else { return back(&s, "none") };
    let code = form.str("code").trim();
    if !latchkey_core::otp::is_code_shape(code) {
        return authenticator_form(
            &st,
            &s,
            &setup,
            Some("Enter the 6 digits the app shows.".into()),
            StatusCode::BAD_REQUEST,
        );
    }
    match st.service.confirm_method(&s.ctx, &s.auth, Method::Authenticator, &setup.token, code).await {
        Ok(_) => {
            let mut b = see_other(&format!("/ui/{}/account?done=authenticator", s.tenant.slug));
            b.append_header(clear_cookie(&st, ONCE));
            b.finish()
        }
        Err(e) => {
            let (status, text) = describe(&e);
            authenticator_form(&st, &s, &setup, Some(text), status)
        }
    }
}

fn step_up_form(
    st: &WebState,
    s: &Signed,
    enrolled: &[Method],
    notice: Option<String>,
    error: Option<String>,
    status: StatusCode,
) -> HttpResponse {
    let methods = enrolled
        .iter()
        .filter(|m| matches!(m, Method::Email | Method::Authenticator))
        .map(|m| {
            let label = if *m == Method::Email { "Email code" } else { "Authenticator app" };
            (m.as_str().to_owned(), label.to_owned())
        })
        .collect();
    let page = StepUpPage {
        c: s.chrome(st, "Confirm it's you").notice(notice).error(error),
        has_email: enrolled.contains(&Method::Email),
        has_passkey: enrolled.contains(&Method::Webauthn),
        methods,
    };
    render(status, &page)
}

/// `GET /ui/{tenant}/account/step-up`: the step-up form.
pub async fn step_up_page(st: St, req: HttpRequest, slug: Slug) -> HttpResponse {
    let s = match common::signed(&st, &req, &slug).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let notice = query(&req).iter().find(|(k, _)| k == "done").and_then(|(_, v)| done_text(v));
    let enrolled = st.service.me(&s.auth).await.map(|u| u.enrolled).unwrap_or_default();
    step_up_form(&st, &s, &enrolled, notice, None, StatusCode::OK)
}

/// `POST /ui/{tenant}/account/step-up/send`: emails a step-up code.
pub async fn step_up_send(st: St, req: HttpRequest, slug: Slug, body: web::Bytes) -> HttpResponse {
    let (s, _) = match common::signed_post(&st, &req, &slug, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let enrolled = st.service.me(&s.auth).await.map(|u| u.enrolled).unwrap_or_default();
    match st.service.step_up_email(&s.ctx, &s.auth).await {
        Ok(_) => see_other(&format!("/ui/{}/account/step-up?done=sent", s.tenant.slug)).finish(),
        Err(e) => {
            let (status, text) = describe(&e);
            step_up_form(&st, &s, &enrolled, None, Some(text), status)
        }
    }
}

/// `POST /ui/{tenant}/account/step-up` (method, code): refreshes the session's second factor.
pub async fn step_up(st: St, req: HttpRequest, slug: Slug, body: web::Bytes) -> HttpResponse {
    let (s, form) = match common::signed_post(&st, &req, &slug, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let enrolled = st.service.me(&s.auth).await.map(|u| u.enrolled).unwrap_or_default();
    let code = form.str("code").trim();
    let method = form.str("method").parse::<Method>();
    let (Ok(method), true) = (method, latchkey_core::otp::is_code_shape(code)) else {
        let text = Some("Choose a method and enter the 6 digits of the code.".to_owned());
        return step_up_form(&st, &s, &enrolled, None, text, StatusCode::BAD_REQUEST);
    };
    match st.service.step_up(&s.ctx, &s.auth, method, code).await {
        Ok(_) => back(&s, "step_up"),
        Err(e) => {
            let (status, text) = describe(&e);
            step_up_form(&st, &s, &enrolled, None, Some(text), status)
        }
    }
}

/// A passkey being added: the setup token and the creation options, sealed in a cookie
/// between `POST /account/passkeys` and its page.
#[derive(Serialize, Deserialize)]
struct PasskeySetup {
    token: String,
    options: serde_json::Value,
}

fn passkey_aad(s: &Signed) -> String {
    format!("ui-account-passkey:{}", s.token)
}

fn passkey_form(
    st: &WebState,
    s: &Signed,
    setup: &PasskeySetup,
    error: Option<String>,
    status: StatusCode,
) -> HttpResponse {
    let mut c = s.chrome(st, "Add a passkey").error(error);
    c.webauthn = true;
    let page = WebauthnPage {
        c,
        csrf: common::csrf(st, &s.token),
        intro: "Press the button and follow your browser to create a passkey on this device or a security key.".into(),
        action: format!("/ui/{}/account/passkeys/finish", s.tenant.slug),
        mode: "create".into(),
        options: setup.options.to_string(),
        method: String::new(),
        ask_name: true,
        remember_days: 0,
        button: "Create a passkey".into(),
        others: vec![(format!("/ui/{}/account", s.tenant.slug), "Back to the account".into())],
        can_recover: false,
    };
    render(status, &page)
}

/// `POST /ui/{tenant}/account/passkeys`: starts adding a passkey (step-up while a method is
/// enrolled; at most `LATCHKEY_WEBAUTHN_MAX_CREDENTIALS`).
pub async fn add_passkey(st: St, req: HttpRequest, slug: Slug, body: web::Bytes) -> HttpResponse {
    let (s, _) = match common::signed_post(&st, &req, &slug, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match st.service.add_passkey_start(&s.ctx, &s.auth).await {
        Ok(added) => {
            let setup = PasskeySetup { token: added.setup_token.expose().to_owned(), options: added.setup };
            let sealed = st.service.seal_page_value(&serde_json::to_vec(&setup).unwrap_or_default(), &passkey_aad(&s));
            let mut b = see_other(&format!("/ui/{}/account/passkeys/new", s.tenant.slug));
            b.append_header(set_cookie(&st, ONCE, &sealed, Some(600)));
            b.finish()
        }
        Err(e) => refused(&st, &s, &e).await,
    }
}

fn open_passkey_setup(st: &WebState, req: &HttpRequest, s: &Signed) -> Option<PasskeySetup> {
    let raw = st.service.open_page_value(&common::cookie(req, ONCE)?, &passkey_aad(s))?;
    serde_json::from_slice(&raw).ok()
}

/// `GET /ui/{tenant}/account/passkeys/new`: the ceremony page of the passkey being added.
pub async fn passkey_page(st: St, req: HttpRequest, slug: Slug) -> HttpResponse {
    let s = match common::signed(&st, &req, &slug).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match open_passkey_setup(&st, &req, &s) {
        Some(setup) => passkey_form(&st, &s, &setup, None, StatusCode::OK),
        None => back(&s, "none"),
    }
}

/// `POST /ui/{tenant}/account/passkeys/finish` (credential, name): adds the passkey.
pub async fn finish_passkey(st: St, req: HttpRequest, slug: Slug, body: web::Bytes) -> HttpResponse {
    let (s, form) = match common::signed_post(&st, &req, &slug, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(setup) = open_passkey_setup(&st, &req, &s) else { return back(&s, "none") };
    let Some(credential) = common::credential::<RegisterPublicKeyCredential>(&form) else {
        let text = Some("No passkey came with the form. Press the button to create one.".to_owned());
        return passkey_form(&st, &s, &setup, text, StatusCode::BAD_REQUEST);
    };
    let name = Some(form.str("name").trim()).filter(|n| !n.is_empty());
    match st.service.add_passkey_finish(&s.ctx, &s.auth, &setup.token, credential, name).await {
        Ok(_) => {
            let mut b = see_other(&format!("/ui/{}/account?done=passkey", s.tenant.slug));
            b.append_header(clear_cookie(&st, ONCE));
            b.finish()
        }
        Err(e @ (Error::InvalidSetupToken | Error::InvalidCredential(_))) => {
            // The setup is used up: start again from the account page.
            let mut res = refused(&st, &s, &e).await;
            if let Ok(v) = clear_cookie(&st, ONCE).1.parse() {
                res.headers_mut().append(actix_web::http::header::SET_COOKIE, v);
            }
            res
        }
        Err(e) => {
            let (status, text) = describe(&e);
            passkey_form(&st, &s, &setup, Some(text), status)
        }
    }
}

/// `POST /ui/{tenant}/account/passkeys/rename` (id, name): renames one of the user's passkeys
/// (step-up).
pub async fn rename_passkey(st: St, req: HttpRequest, slug: Slug, body: web::Bytes) -> HttpResponse {
    let (s, form) = match common::signed_post(&st, &req, &slug, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let (id, name) = (form.str("id"), form.str("name").trim());
    if id.is_empty() || name.is_empty() {
        return account(&st, &s, None, Some("Enter the passkey's new name.".into()), StatusCode::BAD_REQUEST).await;
    }
    match st.service.rename_passkey(&s.ctx, &s.auth, id, name).await {
        Ok(_) => back(&s, "renamed"),
        Err(e) => refused(&st, &s, &e).await,
    }
}

/// `POST /ui/{tenant}/account/passkeys/remove` (id): removes one of the user's passkeys
/// (step-up; `last_method` refused).
pub async fn remove_passkey(st: St, req: HttpRequest, slug: Slug, body: web::Bytes) -> HttpResponse {
    let (s, form) = match common::signed_post(&st, &req, &slug, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let id = form.str("id");
    if id.is_empty() {
        return account(&st, &s, None, Some("Unknown passkey.".into()), StatusCode::BAD_REQUEST).await;
    }
    match st.service.remove_passkey(&s.ctx, &s.auth, id).await {
        Ok(()) => back(&s, "passkey_removed"),
        Err(e) => refused(&st, &s, &e).await,
    }
}

async fn step_up_passkey_form(st: &WebState, s: &Signed, error: Option<String>, status: StatusCode) -> HttpResponse {
    let options = match st.service.step_up_webauthn_start(&s.ctx, &s.auth).await {
        Ok(o) => o,
        Err(e) => {
            let enrolled = st.service.me(&s.auth).await.map(|u| u.enrolled).unwrap_or_default();
            let (status, text) = describe(&e);
            return step_up_form(st, s, &enrolled, None, Some(text), status);
        }
    };
    let mut c = s.chrome(st, "Confirm it's you with a passkey").error(error);
    c.webauthn = true;
    let page = WebauthnPage {
        c,
        csrf: common::csrf(st, &s.token),
        intro: "Press the button and confirm with your passkey or security key.".into(),
        action: format!("/ui/{}/account/step-up/passkey", s.tenant.slug),
        mode: "get".into(),
        options: options.to_string(),
        method: String::new(),
        ask_name: false,
        remember_days: 0,
        button: "Confirm with a passkey".into(),
        others: vec![(format!("/ui/{}/account/step-up", s.tenant.slug), "Confirm with a code instead".into())],
        can_recover: false,
    };
    render(status, &page)
}

/// `GET /ui/{tenant}/account/step-up/passkey`: a step-up with a passkey (a new ceremony).
pub async fn step_up_passkey_page(st: St, req: HttpRequest, slug: Slug) -> HttpResponse {
    let s = match common::signed(&st, &req, &slug).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    step_up_passkey_form(&st, &s, None, StatusCode::OK).await
}

/// `POST /ui/{tenant}/account/step-up/passkey` (credential): refreshes the session's second
/// factor with a passkey (a refused assertion counts as a wrong code).
pub async fn step_up_passkey(st: St, req: HttpRequest, slug: Slug, body: web::Bytes) -> HttpResponse {
    let (s, form) = match common::signed_post(&st, &req, &slug, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(credential) = common::credential::<PublicKeyCredential>(&form) else {
        let text = Some("No passkey answer came with the form. Press the button to use your passkey.".to_owned());
        return step_up_passkey_form(&st, &s, text, StatusCode::BAD_REQUEST).await;
    };
    match st.service.step_up_webauthn(&s.ctx, &s.auth, credential).await {
        Ok(_) => back(&s, "step_up"),
        Err(e) => {
            let (status, text) = describe(&e);
            let text = text.replace("That code is not valid.", "That passkey was not accepted.");
            step_up_passkey_form(&st, &s, Some(text), status).await
        }
    }
}
