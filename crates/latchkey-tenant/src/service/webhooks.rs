//! Webhook endpoints of a tenant (admin, DESIGN.md 5.6): create (the `whsec_` secret shown
//! once), list, read, change, delete, rotate the secret, list deliveries, retry one.
//!
//! Every URL passes the SSRF guard of [`latchkey_core::webhook`] before it is stored: an
//! absolute `https://` URL (or `http://` when allowed) of at most 2,048 bytes, with a host
//! and no credentials, whose host resolves only to public addresses (unless private ones are
//! allowed). The worker applies the same guard again at every delivery. Creating, changing
//! and rotating need a recent second factor while 2FA is on; each change is audited
//! (`webhook_created`, `webhook_changed`, `webhook_deleted`) in its own transaction.

use std::net::IpAddr;

use latchkey_core::webhook::{self, Events, Refused, Target, UrlPolicy};
use latchkey_core::{AuditEventId, AuditKind, DeliveryId, WebhookId};
use latchkey_store::repo::deliveries::Delivery;
use latchkey_store::repo::users;
use latchkey_store::repo::webhooks::{self as repo, Webhook, secret_aad};
use serde_json::json;
use zeroize::Zeroizing;

use super::{Auth, RequestCtx, Service};
use crate::error::{Error, Result};

/// Longest webhook description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 500;

/// `POST /api/v1/webhooks` as the use-case takes it.
#[derive(Debug, Clone)]
pub struct NewWebhook {
    /// Where deliveries go.
    pub url: String,
    /// Audit kinds, or `["*"]`.
    pub events: Vec<String>,
    /// The admin's note.
    pub description: Option<String>,
}

/// `PATCH /api/v1/webhooks/{id}`: `None` leaves a field as it is; `description:
/// Some(None)` clears the note.
#[derive(Debug, Clone, Default)]
pub struct WebhookChanges {
    /// A new URL.
    pub url: Option<String>,
    /// New events.
    pub events: Option<Vec<String>>,
    /// Switch deliveries on or off.
    pub enabled: Option<bool>,
    /// A new note, or `Some(None)` to clear it.
    pub description: Option<Option<String>>,
}

/// A created endpoint (or one whose secret was rotated) with its secret, shown only here.
pub struct CreatedWebhook {
    /// The endpoint.
    pub webhook: Webhook,
    /// `whsec_` + base64 of the 32 secret bytes.
    pub secret: Zeroizing<String>,
}

impl std::fmt::Debug for CreatedWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedWebhook").field("webhook", &self.webhook).field("secret", &"<redacted>").finish()
    }
}

fn invalid(e: Refused) -> Error {
    Error::InvalidRequest(e.0)
}

/// Checks a description: trimmed, at most [`MAX_DESCRIPTION_CHARS`], no control, bidi or
/// invisible character; empty is none.
fn description(raw: Option<String>) -> Result<Option<String>> {
    let Some(raw) = raw else { return Ok(None) };
    let d = raw.trim();
    if d.is_empty() {
        return Ok(None);
    }
    if d.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(Error::InvalidRequest(format!("description must be at most {MAX_DESCRIPTION_CHARS} characters")));
    }
    if d.chars().any(|c| c.is_control() || latchkey_core::names::is_invisible_or_bidi(c)) {
        return Err(Error::InvalidRequest(
            "description must not contain control, bidirectional-override or invisible characters".into(),
        ));
    }
    Ok(Some(d.to_owned()))
}

/// The addresses `target`'s host resolves to (the literal itself for an IP host).
///
/// Errors: [`Refused`] when the name does not resolve.
pub async fn resolve(target: &Target) -> std::result::Result<Vec<IpAddr>, Refused> {
    if let Some(ip) = target.ip {
        return Ok(vec![ip]);
    }
    match tokio::net::lookup_host((target.host.as_str(), target.port)).await {
        Ok(addrs) => {
            let mut ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
            ips.dedup();
            Ok(ips)
        }
        Err(_) => Err(Refused(format!("the host {} does not resolve", target.host))),
    }
}

/// Checks a URL against the SSRF guard, resolving its host when private addresses are not
/// allowed (with them allowed, nothing is left to check on the addresses).
///
/// Errors: `InvalidRequest` saying why.
async fn check_url(raw: &str, policy: UrlPolicy) -> Result<String> {
    let target = webhook::check_url(raw, policy).map_err(invalid)?;
    if !policy.allow_private {
        let addrs = resolve(&target).await.map_err(invalid)?;
        webhook::check_addresses(&addrs, policy).map_err(invalid)?;
    }
    Ok(target.url.to_string())
}

impl Service {
    /// `POST /api/v1/webhooks` (admin; a recent second factor while 2FA is on): checks the
    /// URL (SSRF guard, with the host resolved), the events and the description, creates the
    /// endpoint with a new secret (sealed at rest) within the per-tenant limit, audited
    /// `webhook_created`.
    ///
    /// Errors: `Forbidden`, `StepUpRequired`, `InvalidRequest` (URL, events, description,
    /// too many endpoints).
    pub async fn create_webhook(&self, ctx: &RequestCtx, auth: &Auth, new: NewWebhook) -> Result<CreatedWebhook> {
        Service::require_admin(auth)?;
        self.require_step_up(auth, ctx.now)?;
        let events = Events::parse(&new.events).map_err(invalid)?;
        let description = description(new.description)?;
        let url = check_url(&new.url, self.server.webhook_policy).await?;
        let id = WebhookId::new();
        let (secret, bytes) = webhook::generate_secret();
        let hook = Webhook {
            id,
            tenant_id: auth.tenant.id,
            url,
            events,
            description,
            enabled: true,
            secret_sealed: self.keys.seal(&bytes, &secret_aad(id)),
            created_at: ctx.now,
        };
        let limit = i64::from(self.server.webhooks_per_tenant);
        let actor = Some(auth.user.id.to_string());
        let ctx2 = ctx.clone();
        let stored = hook.clone();
        self.store
            .write(move |c| {
                // Under the tenant's lock, so that parallel creations keep to the limit.
                users::lock_tenant(c, stored.tenant_id)?;
                if repo::count(c, stored.tenant_id)? >= limit {
                    return Ok(Err(Error::InvalidRequest(format!("a tenant has at most {limit} webhooks"))));
                }
                repo::insert(c, &stored)?;
                let detail = json!({"webhook_id": stored.id.to_string(), "events": stored.events.names()});
                Service::audit(c, &ctx2, stored.tenant_id, actor, None, AuditKind::WebhookCreated, detail)?;
                Ok(Ok(()))
            })
            .await??;
        Ok(CreatedWebhook { webhook: hook, secret })
    }

    /// `GET /api/v1/webhooks` (admin): the tenant's endpoints, oldest first.
    ///
    /// Errors: `Forbidden`.
    pub async fn list_webhooks(&self, auth: &Auth) -> Result<Vec<Webhook>> {
        Service::require_admin(auth)?;
        let tenant = auth.tenant.id;
        Ok(self.store.run(move |c| repo::list(c, tenant)).await?)
    }

    /// `GET /api/v1/webhooks/{id}` (admin).
    ///
    /// Errors: `Forbidden`, `NotFound` (also another tenant's).
    pub async fn get_webhook(&self, auth: &Auth, id: WebhookId) -> Result<Webhook> {
        Service::require_admin(auth)?;
        let tenant = auth.tenant.id;
        self.store.run(move |c| repo::get(c, tenant, id)).await?.ok_or(Error::NotFound)
    }

    /// `PATCH /api/v1/webhooks/{id}` (admin; a recent second factor while 2FA is on): any of
    /// URL (SSRF guard), events, description and the switch; audited `webhook_changed` with
    /// the names of the changed fields. Events already recorded keep their deliveries.
    ///
    /// Errors: `Forbidden`, `StepUpRequired`, `NotFound`, `InvalidRequest`.
    pub async fn update_webhook(
        &self,
        ctx: &RequestCtx,
        auth: &Auth,
        id: WebhookId,
        changes: WebhookChanges,
    ) -> Result<Webhook> {
        Service::require_admin(auth)?;
        self.require_step_up(auth, ctx.now)?;
        let events = changes.events.as_deref().map(Events::parse).transpose().map_err(invalid)?;
        let description = changes.description.map(description).transpose()?;
        let url = match changes.url.as_deref() {
            Some(raw) => Some(check_url(raw, self.server.webhook_policy).await?),
            None => None,
        };
        let enabled = changes.enabled;
        let tenant = auth.tenant.id;
        let actor = Some(auth.user.id.to_string());
        let ctx2 = ctx.clone();
        self.store
            .write(move |c| {
                let Some(mut hook) = repo::get(c, tenant, id)? else { return Ok(Err(Error::NotFound)) };
                let mut changed = Vec::new();
                if let Some(url) = url.filter(|u| *u != hook.url) {
                    hook.url = url;
                    changed.push("url");
                }
                if let Some(events) = events.filter(|e| *e != hook.events) {
                    hook.events = events;
                    changed.push("events");
                }
                if let Some(d) = description.filter(|d| *d != hook.description) {
                    hook.description = d;
                    changed.push("description");
                }
                if let Some(on) = enabled.filter(|on| *on != hook.enabled) {
                    hook.enabled = on;
                    changed.push("enabled");
                }
                if !changed.is_empty() {
                    repo::update(c, &hook, ctx2.now)?;
                    let detail = json!({"webhook_id": id.to_string(), "changed": changed, "enabled": hook.enabled});
                    Service::audit(c, &ctx2, tenant, actor, None, AuditKind::WebhookChanged, detail)?;
                }
                Ok(Ok(hook))
            })
            .await?
    }

    /// `DELETE /api/v1/webhooks/{id}` (admin): the endpoint and its delivery history go;
    /// audited `webhook_deleted`.
    ///
    /// Errors: `Forbidden`, `NotFound`.
    pub async fn delete_webhook(&self, ctx: &RequestCtx, auth: &Auth, id: WebhookId) -> Result<()> {
        Service::require_admin(auth)?;
        let tenant = auth.tenant.id;
        let actor = Some(auth.user.id.to_string());
        let ctx2 = ctx.clone();
        self.store
            .write(move |c| {
                if repo::get(c, tenant, id)?.is_none() {
                    return Ok(Err(Error::NotFound));
                }
                repo::delete(c, id)?;
                let detail = json!({"webhook_id": id.to_string()});
                Service::audit(c, &ctx2, tenant, actor, None, AuditKind::WebhookDeleted, detail)?;
                Ok(Ok(()))
            })
            .await?
    }

    /// `POST /api/v1/webhooks/{id}/rotate-secret` (admin; a recent second factor while 2FA
    /// is on): a new secret, shown once; the old one stops at once (every later attempt,
    /// retries included, is signed with the new one). Audited `webhook_changed`.
    ///
    /// Errors: `Forbidden`, `StepUpRequired`, `NotFound`.
    pub async fn rotate_webhook_secret(&self, ctx: &RequestCtx, auth: &Auth, id: WebhookId) -> Result<CreatedWebhook> {
        Service::require_admin(auth)?;
        self.require_step_up(auth, ctx.now)?;
        let (secret, bytes) = webhook::generate_secret();
        let sealed = self.keys.seal(&bytes, &secret_aad(id));
        let tenant = auth.tenant.id;
        let actor = Some(auth.user.id.to_string());
        let ctx2 = ctx.clone();
        let hook = self
            .store
            .write(move |c| {
                let Some(mut hook) = repo::get(c, tenant, id)? else { return Ok(Err(Error::NotFound)) };
                repo::set_secret(c, id, &sealed, ctx2.now)?;
                hook.secret_sealed = sealed;
                let detail = json!({"webhook_id": id.to_string(), "changed": ["secret"]});
                Service::audit(c, &ctx2, tenant, actor, None, AuditKind::WebhookChanged, detail)?;
                Ok(Ok(hook))
            })
            .await??;
        Ok(CreatedWebhook { webhook: hook, secret })
    }

    /// `GET /api/v1/webhooks/{id}/deliveries` (admin): the endpoint's deliveries, newest event
    /// first, `limit` of them after the cursor (an event id), each with its event's kind.
    ///
    /// Errors: `Forbidden`, `NotFound`.
    pub async fn webhook_deliveries(
        &self,
        auth: &Auth,
        id: WebhookId,
        after: Option<AuditEventId>,
        limit: i64,
    ) -> Result<Vec<(Delivery, Option<String>)>> {
        Service::require_admin(auth)?;
        let tenant = auth.tenant.id;
        self.store
            .run(move |c| {
                if repo::get(c, tenant, id)?.is_none() {
                    return Ok(Err(Error::NotFound));
                }
                Ok(Ok(repo::deliveries(c, id, after, limit)?))
            })
            .await?
    }

    /// `POST /api/v1/webhooks/{id}/deliveries/{delivery_id}/retry` (admin): the delivery is
    /// due again at once with a fresh run of attempts (the sweep queues it); one being
    /// attempted right now is left to finish. Audited `webhook_changed` with the delivery.
    ///
    /// Errors: `Forbidden`, `NotFound` (the endpoint or the delivery).
    pub async fn retry_webhook_delivery(
        &self,
        ctx: &RequestCtx,
        auth: &Auth,
        id: WebhookId,
        delivery: DeliveryId,
    ) -> Result<()> {
        Service::require_admin(auth)?;
        let tenant = auth.tenant.id;
        let actor = Some(auth.user.id.to_string());
        let ctx2 = ctx.clone();
        self.store
            .write(move |c| {
                if repo::get(c, tenant, id)?.is_none() || !repo::retry(c, id, delivery, ctx2.now)? {
                    return Ok(Err(Error::NotFound));
                }
                let detail = json!({"webhook_id": id.to_string(), "retried_delivery": delivery.to_string()});
                Service::audit(c, &ctx2, tenant, actor, None, AuditKind::WebhookChanged, detail)?;
                Ok(Ok(()))
            })
            .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_are_checked() {
        assert_eq!(description(None).unwrap(), None);
        assert_eq!(description(Some("  ".into())).unwrap(), None);
        assert_eq!(description(Some(" CRM sync ".into())).unwrap().as_deref(), Some("CRM sync"));
        assert!(description(Some("a\r\nBcc: x".into())).is_err());
        assert!(description(Some("x\u{202E}y".into())).is_err());
        assert!(description(Some("a".repeat(MAX_DESCRIPTION_CHARS + 1))).is_err());
    }

    #[actix_rt::test]
    async fn urls_resolve_before_they_are_stored() {
        let strict = UrlPolicy { allow_http: false, allow_private: false };
        let open = UrlPolicy { allow_http: true, allow_private: true };
        assert!(check_url("https://127.0.0.1/x", strict).await.is_err());
        assert!(check_url("https://localhost/x", strict).await.is_err(), "localhost resolves to loopback");
        assert!(check_url("https://[::ffff:127.0.0.1]/x", strict).await.is_err());
        assert!(check_url("https://no-such-host.invalid/x", strict).await.is_err());
        assert_eq!(check_url("http://127.0.0.1:9/x", open).await.unwrap(), "http://127.0.0.1:9/x");
    }
}
