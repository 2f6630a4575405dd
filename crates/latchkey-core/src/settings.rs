//! A tenant's version-2 settings (DESIGN.md 5.8 "Settings"): the relying party of passkeys,
//! passwordless sign-in, recovery codes, trusted devices, the enrollment grace period, notices
//! and the dashboards a hosted sign-in may hand off to. The 2FA toggle and the allowed methods
//! per role are the tenant's policy and stay apart (they have their own endpoints).
//!
//! The settings are stored as one JSON document per tenant; every field has a default (a
//! missing field reads as its default), so a setting added later needs no migration. The
//! checks of a change ([`SettingsChange::apply`]) are pure functions of the change and the
//! server's bounds ([`SettingsBounds`]).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::role::Role;

/// One value per role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PerRole<T> {
    /// Admins.
    pub admin: T,
    /// Supervisors.
    pub supervisor: T,
    /// Agents.
    pub agent: T,
}

impl<T: Copy> PerRole<T> {
    /// The same value for every role.
    pub const fn all(value: T) -> Self {
        Self { admin: value, supervisor: value, agent: value }
    }

    /// The value of `role`.
    pub fn get(&self, role: Role) -> T {
        match role {
            Role::Admin => self.admin,
            Role::Supervisor => self.supervisor,
            Role::Agent => self.agent,
        }
    }

    /// The values of `change` where given, else these.
    fn merged(self, change: PerRoleChange<T>) -> Self {
        Self {
            admin: change.admin.unwrap_or(self.admin),
            supervisor: change.supervisor.unwrap_or(self.supervisor),
            agent: change.agent.unwrap_or(self.agent),
        }
    }
}

/// Some roles' new values; a missing role keeps its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PerRoleChange<T> {
    /// Admins.
    pub admin: Option<T>,
    /// Supervisors.
    pub supervisor: Option<T>,
    /// Agents.
    pub agent: Option<T>,
}

/// Which notices are sent (DESIGN.md 5.6); each group is on by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Notices {
    /// Mails to a user about changes to his own security.
    pub security: bool,
    /// Mails to every admin about a new recovery request.
    pub recovery_requests: bool,
}

impl Default for Notices {
    fn default() -> Self {
        Self { security: true, recovery_requests: true }
    }
}

/// Some notice groups' new values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NoticesChange {
    /// Security notices.
    pub security: Option<bool>,
    /// Recovery-request notices to admins.
    pub recovery_requests: Option<bool>,
}

/// A WebAuthn relying party (W3C Web Authentication §5.4.2 `rp.id`, §13.4.9 origin checks): the
/// RP id, a registrable domain name, and the origins whose ceremonies are accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RelyingParty {
    /// The RP id: a domain name, never an IP address.
    pub rp_id: String,
    /// Accepted origins (`https://…`, or `http://` on `localhost` / `*.localhost`), each on
    /// the RP id or one of its subdomains.
    pub origins: Vec<String>,
}

/// A tenant's settings (DESIGN.md 5.8). Defaults: no own relying party (the server's),
/// passwordless sign-in off, recovery codes allowed to every role, trusted devices off, no
/// grace period, every notice on, no return URLs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TenantSettings {
    /// The tenant's own relying party; `None`: the server's (`LATCHKEY_WEBAUTHN_RP_ID`,
    /// `LATCHKEY_WEBAUTHN_ORIGINS`).
    pub webauthn: Option<RelyingParty>,
    /// Whether users may sign in with a passkey alone (DESIGN.md 5.1).
    pub passkey_sign_in: bool,
    /// Whether each role may use recovery codes (DESIGN.md 5.2).
    pub recovery_codes: PerRole<bool>,
    /// Days a trusted device lasts, per role; 0 = off (DESIGN.md 5.4).
    pub remember_device_days: PerRole<u32>,
    /// Days a supervisor or agent may skip enrollment after first being asked; 0 = none
    /// (DESIGN.md 5.5).
    pub enrollment_grace_days: u32,
    /// Which notices are sent (DESIGN.md 5.6).
    pub notices: Notices,
    /// URL prefixes a hosted sign-in may return to (DESIGN.md 5.7).
    pub return_urls: Vec<String>,
}

impl Default for TenantSettings {
    fn default() -> Self {
        Self {
            webauthn: None,
            passkey_sign_in: false,
            recovery_codes: PerRole::all(true),
            remember_device_days: PerRole::all(0),
            enrollment_grace_days: 0,
            notices: Notices::default(),
            return_urls: Vec::new(),
        }
    }
}

impl TenantSettings {
    /// The stored form (JSON).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }

    /// The settings of a stored document; `None` when it is not a settings document.
    pub fn from_json(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }
}

/// The server's bounds on settings (configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettingsBounds {
    /// Most days a trusted device may last (`LATCHKEY_REMEMBER_DEVICE_MAX_DAYS`, default 90).
    pub remember_device_max_days: u32,
    /// Most days of an enrollment grace period (`LATCHKEY_ENROLLMENT_GRACE_MAX_DAYS`, default 365).
    pub enrollment_grace_max_days: u32,
}

impl Default for SettingsBounds {
    fn default() -> Self {
        Self { remember_device_max_days: 90, enrollment_grace_max_days: 365 }
    }
}

/// Most return URLs per tenant.
pub const MAX_RETURN_URLS: usize = 20;
/// Most origins of a relying party.
pub const MAX_ORIGINS: usize = 20;
/// Longest URL (return URL or origin) accepted, in bytes.
pub const MAX_URL_LEN: usize = 2048;

/// A change to some settings (`PATCH /api/v1/settings/two-factor`); a missing field keeps its
/// value, per-role objects may name only some roles.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SettingsChange {
    /// A new relying party; `null` is not accepted here (use the server's by omitting it).
    pub webauthn: Option<RelyingParty>,
    /// Passwordless sign-in on or off.
    pub passkey_sign_in: Option<bool>,
    /// Recovery codes per role.
    pub recovery_codes: Option<PerRoleChange<bool>>,
    /// Trusted-device days per role.
    pub remember_device_days: Option<PerRoleChange<u32>>,
    /// The grace period in days.
    pub enrollment_grace_days: Option<u32>,
    /// Notice groups.
    pub notices: Option<NoticesChange>,
    /// The return URL prefixes (the whole list).
    pub return_urls: Option<Vec<String>>,
}

/// Why a settings change is refused (400 `invalid_request`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSetting(pub String);

impl SettingsChange {
    /// The names of the settings this change touches (for the audit log).
    pub fn fields(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.webauthn.is_some() {
            out.push("webauthn");
        }
        if self.passkey_sign_in.is_some() {
            out.push("passkey_sign_in");
        }
        if self.recovery_codes.is_some() {
            out.push("recovery_codes");
        }
        if self.remember_device_days.is_some() {
            out.push("remember_device_days");
        }
        if self.enrollment_grace_days.is_some() {
            out.push("enrollment_grace_days");
        }
        if self.notices.is_some() {
            out.push("notices");
        }
        if self.return_urls.is_some() {
            out.push("return_urls");
        }
        out
    }

    /// The settings after this change, checked against `bounds`.
    ///
    /// Errors: [`InvalidSetting`] for days above the bounds, a relying party that
    /// [`check_relying_party`] refuses, or a return URL that [`check_return_url`] refuses.
    pub fn apply(&self, current: &TenantSettings, bounds: &SettingsBounds) -> Result<TenantSettings, InvalidSetting> {
        let mut next = current.clone();
        if let Some(rp) = &self.webauthn {
            next.webauthn = Some(check_relying_party(rp)?);
        }
        if let Some(on) = self.passkey_sign_in {
            next.passkey_sign_in = on;
        }
        if let Some(change) = self.recovery_codes {
            next.recovery_codes = next.recovery_codes.merged(change);
        }
        if let Some(change) = self.remember_device_days {
            let days = next.remember_device_days.merged(change);
            let max = bounds.remember_device_max_days;
            if [days.admin, days.supervisor, days.agent].iter().any(|d| *d > max) {
                return Err(InvalidSetting(format!("remember_device_days must be between 0 and {max}")));
            }
            next.remember_device_days = days;
        }
        if let Some(days) = self.enrollment_grace_days {
            let max = bounds.enrollment_grace_max_days;
            if days > max {
                return Err(InvalidSetting(format!("enrollment_grace_days must be between 0 and {max}")));
            }
            next.enrollment_grace_days = days;
        }
        if let Some(change) = self.notices {
            next.notices = Notices {
                security: change.security.unwrap_or(next.notices.security),
                recovery_requests: change.recovery_requests.unwrap_or(next.notices.recovery_requests),
            };
        }
        if let Some(urls) = &self.return_urls {
            if urls.len() > MAX_RETURN_URLS {
                return Err(InvalidSetting(format!("at most {MAX_RETURN_URLS} return_urls")));
            }
            let mut checked = Vec::with_capacity(urls.len());
            for url in urls {
                let url = check_return_url(url)?;
                if !checked.contains(&url) {
                    checked.push(url);
                }
            }
            next.return_urls = checked;
        }
        Ok(next)
    }
}

/// The scheme, host and port of an absolute `http(s)` URL without user info; the rest
/// (path, query, fragment) as given. `None` for anything else.
fn split_url(url: &str) -> Option<(&str, &str, Option<u16>, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "https" && scheme != "http" {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (inner, after) = v6.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse::<u16>().ok()?),
        };
        (&authority[..inner.len() + 2], port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p.parse::<u16>().ok()?)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    Some((scheme, host, port, tail))
}

/// Whether `host` is a DNS name: labels of letters, digits and inner hyphens, 1–63 bytes
/// each, at most 253 bytes, not an IP address.
pub fn is_domain_name(host: &str) -> bool {
    if host.is_empty() || host.len() > 253 || host.parse::<IpAddr>().is_ok() {
        return false;
    }
    let host = host.strip_prefix('[').unwrap_or(host);
    host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    }) && !host.split('.').next_back().is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `host` is a loopback name on which plain `http` origins are allowed
/// (`localhost` or a subdomain of it).
pub fn is_loopback_name(host: &str) -> bool {
    host == "localhost" || host.ends_with(".localhost")
}

/// Checks a relying party (DESIGN.md 5.1): the RP id is a domain name (lower-cased), each
/// origin is `https://host[:port]`, or `http://` on a loopback name, with no path, whose host
/// is the RP id or ends with `.rp_id`; 1 to [`MAX_ORIGINS`] origins. Returns it normalised
/// (lower case, no trailing slash, duplicates dropped).
///
/// Errors: [`InvalidSetting`] naming the first problem.
pub fn check_relying_party(rp: &RelyingParty) -> Result<RelyingParty, InvalidSetting> {
    let rp_id = rp.rp_id.trim().to_ascii_lowercase();
    if !is_domain_name(&rp_id) {
        return Err(InvalidSetting("rp_id must be a domain name (never an IP address)".into()));
    }
    if rp.origins.is_empty() || rp.origins.len() > MAX_ORIGINS {
        return Err(InvalidSetting(format!("origins must list 1 to {MAX_ORIGINS} origins")));
    }
    let mut origins: Vec<String> = Vec::new();
    for origin in &rp.origins {
        let lower = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        let bad = || InvalidSetting(format!("origin `{origin}` is not an https origin on {rp_id}"));
        if lower.len() > MAX_URL_LEN {
            return Err(bad());
        }
        let (scheme, host, _, tail) = split_url(&lower).ok_or_else(bad)?;
        if !tail.is_empty() || !is_domain_name(host) {
            return Err(bad());
        }
        if scheme == "http" && !is_loopback_name(host) {
            return Err(InvalidSetting(format!("origin `{origin}`: plain http is allowed only on localhost")));
        }
        if host != rp_id && !host.ends_with(&format!(".{rp_id}")) {
            return Err(InvalidSetting(format!("origin `{origin}` is not on the RP id {rp_id}")));
        }
        if !origins.contains(&lower) {
            origins.push(lower);
        }
    }
    Ok(RelyingParty { rp_id, origins })
}

/// Checks a return URL prefix (DESIGN.md 5.7): an absolute `https://` URL (or `http://` on a
/// loopback name), at most [`MAX_URL_LEN`] bytes, with a host, no user info, no fragment, no
/// backslash, no whitespace or control characters.
///
/// Errors: [`InvalidSetting`].
pub fn check_return_url(url: &str) -> Result<String, InvalidSetting> {
    let bad = || InvalidSetting(format!("return URL `{}` must be an absolute https URL", url.trim()));
    let url = url.trim();
    if url.len() > MAX_URL_LEN || url.contains(['\\', '#']) || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad());
    }
    let (scheme, host, _, _) = split_url(url).ok_or_else(bad)?;
    let host_lower = host.to_ascii_lowercase();
    let host_ok = is_domain_name(&host_lower) || host.parse::<IpAddr>().is_ok();
    if !host_ok {
        return Err(bad());
    }
    if scheme == "http" && !is_loopback_name(&host_lower) && host != "127.0.0.1" && host != "[::1]" {
        return Err(bad());
    }
    Ok(url.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rp(id: &str, origins: &[&str]) -> RelyingParty {
        RelyingParty { rp_id: id.into(), origins: origins.iter().map(|s| (*s).to_owned()).collect() }
    }

    #[test]
    fn defaults_follow_the_design() {
        let s = TenantSettings::default();
        assert_eq!(s.recovery_codes, PerRole::all(true));
        assert_eq!(s.remember_device_days, PerRole::all(0));
        assert_eq!(s.enrollment_grace_days, 0);
        assert!(!s.passkey_sign_in && s.notices.security && s.notices.recovery_requests);
        assert_eq!(TenantSettings::from_json("{}"), Some(s.clone()));
        assert_eq!(TenantSettings::from_json(&s.to_json()), Some(s));
    }

    #[test]
    fn changes_merge_per_role_and_respect_bounds() {
        let b = SettingsBounds::default();
        let change: SettingsChange = serde_json::from_str(r#"{"remember_device_days":{"agent":30}}"#).unwrap();
        let s = change.apply(&TenantSettings::default(), &b).unwrap();
        assert_eq!(s.remember_device_days, PerRole { admin: 0, supervisor: 0, agent: 30 });
        let over: SettingsChange = serde_json::from_str(r#"{"remember_device_days":{"agent":91}}"#).unwrap();
        assert!(over.apply(&s, &b).is_err());
        let at_max: SettingsChange = serde_json::from_str(r#"{"remember_device_days":{"admin":90}}"#).unwrap();
        assert!(at_max.apply(&s, &b).is_ok());
        let grace: SettingsChange = serde_json::from_str(r#"{"enrollment_grace_days":366}"#).unwrap();
        assert!(grace.apply(&s, &b).is_err());
        let notices: SettingsChange = serde_json::from_str(r#"{"notices":{"security":false}}"#).unwrap();
        let n = notices.apply(&s, &b).unwrap().notices;
        assert!(!n.security && n.recovery_requests);
        assert!(serde_json::from_str::<SettingsChange>(r#"{"unknown":1}"#).is_err());
        assert!(serde_json::from_str::<SettingsChange>(r#"{"recovery_codes":{"root":true}}"#).is_err());
        assert_eq!(notices.fields(), vec!["notices"]);
    }

    #[test]
    fn relying_parties() {
        let ok = check_relying_party(&rp("App.Localhost", &["http://app.localhost:8080/", "https://x.app.localhost"]));
        assert_eq!(ok.unwrap(), rp("app.localhost", &["http://app.localhost:8080", "https://x.app.localhost"]));
        assert!(check_relying_party(&rp("example.com", &["https://login.example.com"])).is_ok());
        for (id, origins) in [
            ("127.0.0.1", &["http://127.0.0.1:8080"][..]),
            ("example.com", &["http://example.com"][..]),
            ("example.com", &["https://evil.example"][..]),
            ("example.com", &["https://notexample.com"][..]),
            ("example.com", &["https://example.com/path"][..]),
            ("example.com", &["ftp://example.com"][..]),
            ("example.com", &["https://user@example.com"][..]),
            ("example.com", &[][..]),
            ("exa mple.com", &["https://example.com"][..]),
            ("::1", &["https://example.com"][..]),
        ] {
            assert!(check_relying_party(&rp(id, origins)).is_err(), "{id} {origins:?}");
        }
    }

    #[test]
    fn return_urls() {
        for ok in ["https://dash.example.com/callback", "http://localhost:3000/cb", "https://a.b/x?y=1"] {
            assert!(check_return_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "//evil.example",
            "javascript:alert(1)",
            "https://dash.example.com/cb#frag",
            "https://a\\b.example",
            "http://dash.example.com/",
            "https://user@dash.example.com/",
            "https:///path",
            "dash.example.com",
            "https://dash example.com",
        ] {
            assert!(check_return_url(bad).is_err(), "{bad}");
        }
    }
}
