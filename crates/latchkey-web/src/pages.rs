//! The page templates (askama, compile-time checked and auto-escaped; `templates/`).

use askama::Template;
use latchkey_store::model::Tenant;

/// What every page shows around its content: the tenant's name, the signed-in user and the
/// navigation, messages, and the CSRF token of the sign-out form.
#[derive(Debug, Clone, Default)]
pub struct Chrome {
    /// The tenant's display name (on every page).
    pub tenant_name: String,
    /// The tenant's slug (links).
    pub slug: String,
    /// The page's title.
    pub title: String,
    /// The signed-in user's email (shows the navigation and Sign out).
    pub user_email: Option<String>,
    /// Whether the signed-in user is an admin (admin navigation).
    pub admin: bool,
    /// The session's CSRF token (sign-out and the page's forms).
    pub csrf: String,
    /// An error message.
    pub error: Option<String>,
    /// A confirmation message.
    pub notice: Option<String>,
    /// A URL the page forwards to (meta refresh).
    pub refresh: Option<String>,
    /// Whether the page loads the script (the Resend countdown).
    pub script: bool,
    /// Whether the page loads the WebAuthn script (`/ui/assets/webauthn.js`).
    pub webauthn: bool,
}

impl Chrome {
    /// A page outside any tenant.
    pub fn bare(title: &str) -> Self {
        Self { tenant_name: "Latchkey".into(), title: title.into(), ..Self::default() }
    }

    /// A page of `tenant`.
    pub fn of(tenant: &Tenant, title: &str) -> Self {
        Self { tenant_name: tenant.name.clone(), slug: tenant.slug.clone(), title: title.into(), ..Self::default() }
    }

    /// With an error message.
    pub fn error(mut self, e: Option<String>) -> Self {
        self.error = e;
        self
    }

    /// With a confirmation message.
    pub fn notice(mut self, n: Option<String>) -> Self {
        self.notice = n;
        self
    }
}

/// A title and a message.
#[derive(Template)]
#[template(path = "message.html")]
pub struct MessagePage {
    pub c: Chrome,
    pub title: String,
    pub text: String,
    pub link: Option<(String, String)>,
}

/// The sign-in form.
#[derive(Template)]
#[template(path = "sign_in.html")]
pub struct SignInPage {
    pub c: Chrome,
    pub csrf: String,
    pub email: String,
    /// Whether passwordless passkey sign-in is on (a link to it).
    pub passkey: bool,
}

/// The method choice of an enrollment.
#[derive(Template)]
#[template(path = "enroll.html")]
pub struct EnrollPage {
    pub c: Chrome,
    pub csrf: String,
    /// (link, label, hint) per method.
    pub methods: Vec<(String, String, String)>,
    pub skippable: bool,
    pub skip_text: String,
}

/// Code entry (authenticator, email with Resend, recovery code).
#[derive(Template)]
#[template(path = "verify.html")]
pub struct VerifyPage {
    pub c: Chrome,
    pub csrf: String,
    pub method: String,
    pub email_masked: String,
    pub sent: bool,
    pub resend_at: i64,
    pub resend_wait: i64,
    pub sends_left: Option<u32>,
    pub remember_days: u32,
    pub others: Vec<(String, String)>,
    pub can_recover: bool,
}

/// A WebAuthn ceremony (DESIGN.md 5.1): a form the script completes with the browser's
/// credential (`mode` `create` for a registration, `get` for an assertion).
#[derive(Template)]
#[template(path = "webauthn.html")]
pub struct WebauthnPage {
    pub c: Chrome,
    pub csrf: String,
    pub intro: String,
    pub action: String,
    /// `create` or `get`.
    pub mode: String,
    /// The options as JSON (`{"publicKey": {…}}`).
    pub options: String,
    /// A hidden `method` field ("" for none).
    pub method: String,
    pub ask_name: bool,
    pub remember_days: u32,
    pub button: String,
    pub others: Vec<(String, String)>,
    pub can_recover: bool,
}

/// An authenticator setup: QR code, setup key, code.
#[derive(Template)]
#[template(path = "totp.html")]
pub struct TotpPage {
    pub c: Chrome,
    pub csrf: String,
    pub intro: String,
    pub qr_png: String,
    pub key: String,
    pub action: String,
    pub button: String,
}

/// The account page.
#[derive(Template)]
#[template(path = "account.html")]
pub struct AccountPage {
    pub c: Chrome,
    pub name: String,
    pub email: String,
    pub role: String,
    /// (method, label, detail).
    pub methods: Vec<(String, String, String)>,
    pub has_authenticator: bool,
    pub can_add_authenticator: bool,
    pub recovery_text: String,
    pub can_generate_codes: bool,
    /// (id, description).
    pub devices: Vec<(String, String)>,
    /// The passkeys: (credential id, name, detail).
    pub passkeys: Vec<(String, String, String)>,
    pub can_add_passkey: bool,
}

/// Recovery codes, shown once.
#[derive(Template)]
#[template(path = "codes.html")]
pub struct CodesPage {
    pub c: Chrome,
    pub codes: Vec<String>,
    pub download: String,
}

/// Step-up.
#[derive(Template)]
#[template(path = "step_up.html")]
pub struct StepUpPage {
    pub c: Chrome,
    pub has_email: bool,
    pub has_passkey: bool,
    pub methods: Vec<(String, String)>,
}

/// Turning 2FA on: password and method.
#[derive(Template)]
#[template(path = "enable.html")]
pub struct EnablePage {
    pub c: Chrome,
}

/// Turning 2FA on by email: the code.
#[derive(Template)]
#[template(path = "enable_email.html")]
pub struct EnableEmailPage {
    pub c: Chrome,
    pub email_masked: String,
}

/// A role's method checkboxes: (role, label, [(method, label, allowed)]).
pub type RoleMethods = (String, String, Vec<(String, String, bool)>);

/// The two-factor settings.
#[derive(Template)]
#[template(path = "settings.html")]
pub struct SettingsPage {
    pub c: Chrome,
    pub enabled: bool,
    /// (role, label, [(method, label, allowed)]).
    pub roles: Vec<RoleMethods>,
    /// (role, label, recovery codes allowed, remember days).
    pub per_role: Vec<(String, String, bool, u32)>,
    pub max_days: u32,
    pub grace: u32,
    pub notices_security: bool,
    pub notices_recovery: bool,
    pub return_urls: String,
}

/// A user row.
pub struct UserRow {
    pub id: String,
    pub name: String,
    pub email: String,
    pub role: String,
    pub two_factor: String,
}

/// A recovery request row.
pub struct RequestRow {
    pub id: String,
    pub name: String,
    pub email: String,
    pub role: String,
    pub when: String,
    pub ip: String,
    pub user_agent: String,
}

/// Agent management.
#[derive(Template)]
#[template(path = "agents.html")]
pub struct AgentsPage {
    pub c: Chrome,
    pub requested: bool,
    pub pending: usize,
    pub users: Vec<UserRow>,
    pub next_cursor: Option<String>,
    pub requests: Vec<RequestRow>,
    pub role_options: Vec<(String, String)>,
}

/// An audit row.
pub struct EventRow {
    pub when: String,
    pub kind: String,
    pub actor: String,
    pub subject: String,
    pub ip: String,
    pub detail: String,
}

/// The audit log.
#[derive(Template)]
#[template(path = "audit.html")]
pub struct AuditPage {
    pub c: Chrome,
    pub kinds: Vec<String>,
    pub kind: String,
    pub subject_id: String,
    pub events: Vec<EventRow>,
    pub next_link: Option<String>,
}
