//! The admin pages: two-factor settings (the toggle with its password prompt and setup,
//! methods per role, the other settings), agent management with the **Requested** tab, and
//! the audit log.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use latchkey_core::settings::{NoticesChange, PerRoleChange, SettingsChange};
use latchkey_core::{AuditKind, Method, MethodSet, RecoveryRequestId, Role, UserId};
use latchkey_store::model::RecoveryStatus;
use latchkey_store::repo::audit::AuditFilter;
use latchkey_tenant::{Error, MethodChanges, NewUser, UserChanges};

use crate::WebState;
use crate::common::{self, ONCE, Signed, clear_cookie, describe, render, see_other, set_cookie};
use crate::pages::{
    AgentsPage, AuditPage, EnableEmailPage, EnablePage, EventRow, RequestRow, SettingsPage, TotpPage, UserRow,
};
use crate::signin::{SealedSetup, query};

type St = web::Data<WebState>;
type Slug = web::Path<String>;

const ROLES: [(Role, &str); 3] = [(Role::Admin, "Admins"), (Role::Supervisor, "Supervisors"), (Role::Agent, "Agents")];

fn admin_only(st: &WebState, s: &Signed) -> Option<HttpResponse> {
    (s.auth.user.role != Role::Admin).then(|| common::error_page(s.chrome(st, "Admins only"), &Error::Forbidden))
}

fn done_text(done: &str) -> Option<String> {
    Some(
        match done {
            "enabled" => "Two-factor authentication is on.",
            "disabled" => "Two-factor authentication is off.",
            "methods" => "The methods were saved.",
            "settings" => "The settings were saved.",
            "created" => "The user was created.",
            "deleted" => "The user was deleted.",
            "role" => "The role was changed.",
            "reset" => "The user's second factor was reset.",
            "approved" => "Request approved: the user's second factor was reset.",
            "dismissed" => "Request dismissed.",
            _ => return None,
        }
        .to_owned(),
    )
}

fn done_of(req: &HttpRequest) -> Option<String> {
    query(req).iter().find(|(k, _)| k == "done").and_then(|(_, v)| done_text(v))
}

async fn settings(
    st: &WebState,
    s: &Signed,
    notice: Option<String>,
    error: Option<String>,
    status: StatusCode,
) -> HttpResponse {
    let view = st.service.settings_view(&s.auth.tenant);
    let roles = ROLES
        .iter()
        .map(|(role, label)| {
            let allowed = view.policy.methods_for(*role);
            let boxes = Method::ALL
                .iter()
                .map(|m| {
                    let ml = if *m == Method::Email { "Email" } else { "Authenticator app" };
                    (m.as_str().to_owned(), ml.to_owned(), allowed.contains(*m))
                })
                .collect();
            (role.as_str().to_owned(), (*label).to_owned(), boxes)
        })
        .collect();
    let per_role = ROLES
        .iter()
        .map(|(role, label)| {
            (
                role.as_str().to_owned(),
                (*label).to_owned(),
                view.settings.recovery_codes.get(*role),
                view.settings.remember_device_days.get(*role),
            )
        })
        .collect();
    let page = SettingsPage {
        c: s.chrome(st, "Two-factor settings").notice(notice).error(error),
        enabled: view.policy.enabled,
        roles,
        per_role,
        max_days: st.service.server().bounds.remember_device_max_days,
        grace: view.settings.enrollment_grace_days,
        notices_security: view.settings.notices.security,
        notices_recovery: view.settings.notices.recovery_requests,
        return_urls: view.settings.return_urls.join("\n"),
    };
    render(status, &page)
}

async fn refused(st: &WebState, s: &Signed, e: &Error) -> HttpResponse {
    let (status, text) = describe(e);
    settings(st, s, None, Some(text), status).await
}

/// `GET /ui/{tenant}/settings`: the two-factor settings (admins).
pub async fn settings_page(st: St, req: HttpRequest, slug: Slug) -> HttpResponse {
    let s = match common::signed(&st, &req, &slug).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Some(r) = admin_only(&st, &s) {
        return r;
    }
    settings(&st, &s, done_of(&req), None, StatusCode::OK).await
}

/// `GET /ui/{tenant}/settings/enable`: the password prompt and the method.
pub async fn enable_page(st: St, req: HttpRequest, slug: Slug) -> HttpResponse {
    let s = match common::signed(&st, &req, &slug).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Some(r) = admin_only(&st, &s) {
        return r;
    }
    render(StatusCode::OK, &EnablePage { c: s.chrome(&st, "Turn on two-factor authentication") })
}

fn enable_aad(s: &Signed) -> String {
    format!("ui-enable:{}", s.token)
}

/// `POST /ui/{tenant}/settings/enable` (password, method): starts the enablement.
pub async fn enable(st: St, req: HttpRequest, slug: Slug, body: web::Bytes) -> HttpResponse {
    let (s, form) = match common::signed_post(&st, &req, &slug, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let method = form.str("method").parse::<Method>().unwrap_or(Method::Authenticator);
    let password = form.str("password");
    let again = |text: String, status| {
        render(status, &EnablePage { c: s.chrome(&st, "Turn on two-factor authentication").error(Some(text)) })
    };
    if password.is_empty() {
        return again("Enter your password.".into(), StatusCode::BAD_REQUEST);
    }
    match st.service.enable(&s.ctx, &s.auth, password, method).await {
        Ok(setup) => {
            let mut sealed = match &setup.totp {
                Some(t) => SealedSetup::of(setup.setup_token.expose(), t),
                None => SealedSetup {
                    token: setup.setup_token.expose().to_owned(),
                    secret: String::new(),
                    uri: String::new(),
                    email_masked: String::new(),
                },
            };
            sealed.email_masked = setup.email_masked.clone().unwrap_or_default();
            let mut b = see_other(&format!("/ui/{}/settings/enable/confirm", s.tenant.slug));
            b.append_header(set_cookie(&st, ONCE, &sealed.seal(&st, &enable_aad(&s)), None));
            b.finish()
        }
        Err(e) => {
            let (status, text) = describe(&e);
            again(text, status)
        }
    }
}

fn confirm_form(
    st: &WebState,
    s: &Signed,
    setup: &SealedSetup,
    error: Option<String>,
    status: StatusCode,
) -> HttpResponse {
    if setup.uri.is_empty() {
        let c = s.chrome(st, "Turn on two-factor authentication").error(error);
        let masked = if setup.email_masked.is_empty() { "your address".to_owned() } else { setup.email_masked.clone() };
        return render(status, &EnableEmailPage { c, email_masked: masked });
    }
    let page = TotpPage {
        c: s.chrome(st, "Turn on two-factor authentication").error(error),
        csrf: common::csrf(st, &s.token),
        intro: "Set up your own authenticator app; the code it shows turns two-factor authentication on.".into(),
        qr_png: setup.qr(),
        key: common::grouped(&setup.secret),
        action: format!("/ui/{}/settings/enable/confirm", s.tenant.slug),
        button: "Confirm and turn on".into(),
    };
    render(status, &page)
}

/// `GET /ui/{tenant}/settings/enable/confirm`: the setup (QR code and key, or the emailed
/// code) and the code field.
pub async fn enable_confirm_page(st: St, req: HttpRequest, slug: Slug) -> HttpResponse {
    let s = match common::signed(&st, &req, &slug).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match SealedSetup::open(&st, &req, &enable_aad(&s)) {
        Some(setup) => confirm_form(&st, &s, &setup, None, StatusCode::OK),
        None => see_other(&format!("/ui/{}/settings", s.tenant.slug)).finish(),
    }
}

/// `POST /ui/{tenant}/settings/enable/confirm` (code): turns 2FA on.
pub async fn enable_confirm(st: St, req: HttpRequest, slug: Slug, body: web::Bytes) -> HttpResponse {
    let (s, form) = match common::signed_post(&st, &req, &slug, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(setup) = SealedSetup::open(&st, &req, &enable_aad(&s)) else {
        return see_other(&format!("/ui/{}/settings", s.tenant.slug)).finish();
    };
    let code = form.str("code").trim();
    if !latchkey_core::otp::is_code_shape(code) {
        return confirm_form(&st, &s, &setup, Some("Enter the 6 digits of the code.".into()), StatusCode::BAD_REQUEST);
    }
    match st.service.enable_confirm(&s.ctx, &s.auth, &setup.token, code).await {
        Ok(()) => {
            let mut b = see_other(&format!("/ui/{}/settings?done=enabled", s.tenant.slug));
            b.append_header(clear_cookie(&st, ONCE));
            b.finish()
        }
        Err(e) => {
            let (status, text) = describe(&e);
            confirm_form(&st, &s, &setup, Some(text), status)
        }
    }
}

/// `POST /ui/{tenant}/settings/disable` (password): turns 2FA off (step-up).
pub async fn disable(st: St, req: HttpRequest, slug: Slug, body: web::Bytes) -> HttpResponse {
    let (s, form) = match common::signed_post(&st, &req, &slug, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match st.service.disable(&s.ctx, &s.auth, form.str("password")).await {
        Ok(()) => see_other(&format!("/ui/{}/settings?done=disabled", s.tenant.slug)).finish(),
        Err(e) => refused(&st, &s, &e).await,
    }
}

/// `POST /ui/{tenant}/settings/methods` (checkboxes `admin`, `supervisor`, `agent` = method):
/// the methods per role (each a non-empty list).
pub async fn methods(st: St, req: HttpRequest, slug: Slug, body: web::Bytes) -> HttpResponse {
    let (s, form) = match common::signed_post(&st, &req, &slug, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let of = |role: &str| -> MethodSet {
        form.0.iter().filter(|(k, _)| k == role).filter_map(|(_, v)| v.parse::<Method>().ok()).collect()
    };
    let changes =
        MethodChanges { admin: Some(of("admin")), supervisor: Some(of("supervisor")), agent: Some(of("agent")) };
    if [changes.admin, changes.supervisor, changes.agent].iter().any(|m| m.is_some_and(|m| m.is_empty())) {
        let text = "Every role needs at least one method.".to_owned();
        return settings(&st, &s, None, Some(text), StatusCode::BAD_REQUEST).await;
    }
    match st.service.set_methods(&s.ctx, &s.auth, changes).await {
        Ok(_) => see_other(&format!("/ui/{}/settings?done=methods", s.tenant.slug)).finish(),
        Err(e) => refused(&st, &s, &e).await,
    }
}

/// `POST /ui/{tenant}/settings/other`: recovery codes and remembered devices per role, the
/// grace period, notices and return URLs.
pub async fn other_settings(st: St, req: HttpRequest, slug: Slug, body: web::Bytes) -> HttpResponse {
    let (s, form) = match common::signed_post(&st, &req, &slug, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let num = |name: &str| -> Result<u32, String> {
        let v = form.str(name).trim();
        if v.is_empty() { Ok(0) } else { v.parse().map_err(|_| format!("{name} must be a whole number of days")) }
    };
    let parsed = (|| -> Result<SettingsChange, String> {
        Ok(SettingsChange {
            recovery_codes: Some(PerRoleChange {
                admin: Some(form.checked("recovery_codes_admin")),
                supervisor: Some(form.checked("recovery_codes_supervisor")),
                agent: Some(form.checked("recovery_codes_agent")),
            }),
            remember_device_days: Some(PerRoleChange {
                admin: Some(num("remember_device_days_admin")?),
                supervisor: Some(num("remember_device_days_supervisor")?),
                agent: Some(num("remember_device_days_agent")?),
            }),
            enrollment_grace_days: Some(num("enrollment_grace_days")?),
            notices: Some(NoticesChange {
                security: Some(form.checked("notices_security")),
                recovery_requests: Some(form.checked("notices_recovery_requests")),
            }),
            return_urls: Some(
                form.str("return_urls").lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect(),
            ),
            ..SettingsChange::default()
        })
    })();
    let change = match parsed {
        Ok(c) => c,
        Err(text) => return settings(&st, &s, None, Some(text), StatusCode::BAD_REQUEST).await,
    };
    match st.service.update_settings(&s.ctx, &s.auth, change).await {
        Ok(_) => see_other(&format!("/ui/{}/settings?done=settings", s.tenant.slug)).finish(),
        Err(e) => refused(&st, &s, &e).await,
    }
}

const PAGE: i64 = 50;

async fn agents(
    st: &WebState,
    s: &Signed,
    req: &HttpRequest,
    notice: Option<String>,
    error: Option<String>,
    status: StatusCode,
) -> HttpResponse {
    let qs = query(req);
    let requested = qs.iter().any(|(k, v)| k == "tab" && v == "requested");
    let cursor = qs.iter().find(|(k, _)| k == "cursor").and_then(|(_, v)| v.parse::<UserId>().ok());
    let pending = match st.service.list_recovery_requests(&s.auth, Some(RecoveryStatus::Pending), None, 200).await {
        Ok(p) => p,
        Err(e) => return common::error_page(s.chrome(st, "Agent management"), &e),
    };
    let users = if requested {
        Vec::new()
    } else {
        match st.service.list_users(&s.auth, cursor, PAGE + 1).await {
            Ok(u) => u,
            Err(e) => return common::error_page(s.chrome(st, "Agent management"), &e),
        }
    };
    let next_cursor = (users.len() as i64 > PAGE).then(|| users[PAGE as usize - 1].id.to_string());
    let users = users
        .iter()
        .take(PAGE as usize)
        .map(|u| UserRow {
            id: u.id.to_string(),
            name: u.name.clone(),
            email: u.email.clone(),
            role: u.role.as_str().into(),
            two_factor: if u.enrolled.is_empty() {
                "not set up".into()
            } else {
                u.enrolled.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ")
            },
        })
        .collect();
    let requests = pending
        .iter()
        .map(|r| RequestRow {
            id: r.request.id.to_string(),
            name: r.user.name.clone(),
            email: r.user.email.clone(),
            role: r.user.role.as_str().into(),
            when: common::when(r.request.created_at),
            ip: r.request.ip.clone().unwrap_or_else(|| "unknown".into()),
            user_agent: r.request.user_agent.clone().unwrap_or_else(|| "unknown".into()),
        })
        .collect();
    let page = AgentsPage {
        c: s.chrome(st, "Agent management").notice(notice).error(error),
        requested,
        pending: pending.len(),
        users,
        next_cursor,
        requests,
        role_options: ROLES.iter().map(|(r, _)| (r.as_str().to_owned(), capital(r.as_str()))).collect(),
    };
    render(status, &page)
}

fn capital(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
}

async fn agents_refused(st: &WebState, s: &Signed, req: &HttpRequest, e: &Error) -> HttpResponse {
    let (status, text) = describe(e);
    agents(st, s, req, None, Some(text), status).await
}

/// `GET /ui/{tenant}/agents[?tab=requested]`: the users, or the pending recovery requests.
pub async fn agents_page(st: St, req: HttpRequest, slug: Slug) -> HttpResponse {
    let s = match common::signed(&st, &req, &slug).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Some(r) = admin_only(&st, &s) {
        return r;
    }
    agents(&st, &s, &req, done_of(&req), None, StatusCode::OK).await
}

/// `POST /ui/{tenant}/agents` (email, name, role, password): creates a user.
pub async fn create_agent(st: St, req: HttpRequest, slug: Slug, body: web::Bytes) -> HttpResponse {
    let (s, form) = match common::signed_post(&st, &req, &slug, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Ok(role) = form.str("role").parse::<Role>() else {
        return agents(&st, &s, &req, None, Some("Choose a role.".into()), StatusCode::BAD_REQUEST).await;
    };
    let new = NewUser {
        email: form.str("email").trim().to_owned(),
        name: form.str("name").trim().to_owned(),
        role,
        password: form.str("password").to_owned(),
    };
    if new.email.is_empty() || new.name.is_empty() || new.password.is_empty() {
        let text = "Enter the email, the name and a password.".to_owned();
        return agents(&st, &s, &req, None, Some(text), StatusCode::BAD_REQUEST).await;
    }
    match st.service.create_user(&s.ctx, &s.auth, new).await {
        Ok(_) => see_other(&format!("/ui/{}/agents?done=created", s.tenant.slug)).finish(),
        Err(e) => agents_refused(&st, &s, &req, &e).await,
    }
}

/// `POST /ui/{tenant}/agents/action` (id, action = role | reset_2fa | delete, role).
pub async fn agent_action(st: St, req: HttpRequest, slug: Slug, body: web::Bytes) -> HttpResponse {
    let (s, form) = match common::signed_post(&st, &req, &slug, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Ok(id) = form.str("id").parse::<UserId>() else {
        return agents(&st, &s, &req, None, Some("Unknown user.".into()), StatusCode::BAD_REQUEST).await;
    };
    let outcome = match form.str("action") {
        "delete" => st.service.delete_user(&s.ctx, &s.auth, id).await.map(|_| "deleted"),
        "reset_2fa" => st.service.admin_reset(&s.ctx, &s.auth, id).await.map(|_| "reset"),
        "role" => match form.str("role").parse::<Role>() {
            Ok(role) => {
                let changes = UserChanges { role: Some(role), ..UserChanges::default() };
                st.service.update_user(&s.ctx, &s.auth, id, changes).await.map(|_| "role")
            }
            Err(_) => Err(Error::InvalidRequest("unknown role".into())),
        },
        _ => Err(Error::InvalidRequest("unknown action".into())),
    };
    match outcome {
        Ok(done) => see_other(&format!("/ui/{}/agents?done={done}", s.tenant.slug)).finish(),
        Err(e) => agents_refused(&st, &s, &req, &e).await,
    }
}

/// `POST /ui/{tenant}/requests/decide` (id, decision = approve | dismiss): the Requested
/// tab's **Reset** and **Dismiss**.
pub async fn decide_request(st: St, req: HttpRequest, slug: Slug, body: web::Bytes) -> HttpResponse {
    let (s, form) = match common::signed_post(&st, &req, &slug, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let approve = match form.str("decision") {
        "approve" => true,
        "dismiss" => false,
        _ => {
            return agents(&st, &s, &req, None, Some("Choose Dismiss or Reset.".into()), StatusCode::BAD_REQUEST).await;
        }
    };
    let Ok(id) = form.str("id").parse::<RecoveryRequestId>() else {
        return agents(&st, &s, &req, None, Some("Unknown request.".into()), StatusCode::BAD_REQUEST).await;
    };
    match st.service.decide_recovery(&s.ctx, &s.auth, id, approve).await {
        Ok(_) => {
            let done = if approve { "approved" } else { "dismissed" };
            see_other(&format!("/ui/{}/agents?tab=requested&done={done}", s.tenant.slug)).finish()
        }
        Err(e) => agents_refused(&st, &s, &req, &e).await,
    }
}

/// `GET /ui/{tenant}/audit[?kind=&subject_id=&cursor=]`: the audit log, newest first.
pub async fn audit_page(st: St, req: HttpRequest, slug: Slug) -> HttpResponse {
    let s = match common::signed(&st, &req, &slug).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Some(r) = admin_only(&st, &s) {
        return r;
    }
    let qs = query(&req);
    let get = |n: &str| qs.iter().find(|(k, _)| k == n).map(|(_, v)| v.trim().to_owned()).filter(|v| !v.is_empty());
    let kind_text = get("kind").unwrap_or_default();
    let kind = match kind_text.as_str() {
        "" => None,
        k => match k.parse::<AuditKind>() {
            Ok(k) => Some(k),
            Err(_) => {
                return common::message(
                    StatusCode::BAD_REQUEST,
                    s.chrome(&st, "Audit log"),
                    "Invalid filter",
                    "Unknown event kind.",
                );
            }
        },
    };
    let subject = get("subject_id").filter(|v| v.len() <= 64);
    let cursor = get("cursor").filter(|v| v.len() <= 64);
    let filter = AuditFilter { since: None, kind, subject_id: subject.clone() };
    let events = match st.service.audit_events(&s.auth, filter, cursor, PAGE + 1).await {
        Ok(e) => e,
        Err(e) => return common::error_page(s.chrome(&st, "Audit log"), &e),
    };
    let next_link = (events.len() as i64 > PAGE).then(|| {
        let last = events[PAGE as usize - 1].id.to_string();
        format!(
            "/ui/{}/audit?kind={}&subject_id={}&cursor={}",
            s.tenant.slug,
            common::q(&kind_text),
            common::q(subject.as_deref().unwrap_or("")),
            common::q(&last)
        )
    });
    let rows = events
        .iter()
        .take(PAGE as usize)
        .map(|e| EventRow {
            when: common::when(e.at),
            kind: e.kind.as_str().into(),
            actor: e.actor_id.clone().unwrap_or_else(|| "system".into()),
            subject: e.subject_id.clone().unwrap_or_default(),
            ip: e.ip.clone().unwrap_or_default(),
            detail: e.detail.to_string(),
        })
        .collect();
    let page = AuditPage {
        c: s.chrome(&st, "Audit log"),
        kinds: AuditKind::ALL.iter().map(|k| k.as_str().to_owned()).collect(),
        kind: kind_text,
        subject_id: subject.unwrap_or_default(),
        events: rows,
        next_link,
    };
    render(StatusCode::OK, &page)
}
