//! Per-tenant actors: one [`TenantActor`] per active tenant, started on first use by the
//! [`Registry`] and stopped after an idle period.
//!
//! The actor caches the tenant and its 2FA policy (re-read from the store once the cache is
//! older than `policy_cache_ms`, so a change made by another process is seen within that
//! time) and owns the tenant's request budget (a governor limiter), so one tenant's storm
//! cannot starve the others. Messages to one tenant are handled in order; a policy reload
//! holds the mailbox until it is done. No blocking work runs inside a handler: the reload
//! goes to the store's blocking pool. Security counters (wrong passwords, wrong codes, send
//! windows) are not here: they live in the store, so limits hold across processes.
//!
//! With the policy the actor keeps the tenant's WebAuthn verifier (DESIGN.md 5.1): built once
//! from the tenant's relying party (its own, or the server's default) and rebuilt only when a
//! reload brings another relying party or tenant name.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use actix::prelude::*;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use latchkey_core::TenantId;
use latchkey_core::metrics::Metrics;
use latchkey_core::settings::RelyingParty;
use latchkey_store::Store;
use latchkey_store::model::Tenant;
use latchkey_store::repo::tenants;

use crate::error::{Error, Result};

/// Settings of the tenant actors.
#[derive(Debug, Clone, Copy)]
pub struct ActorSettings {
    /// Idle time after which an actor stops.
    pub idle: Duration,
    /// Age after which the cached policy is re-read.
    pub policy_ttl: Duration,
    /// Requests per second (and burst) of one tenant.
    pub requests_per_second: u32,
    /// The `timeout` WebAuthn ceremonies announce to the browser (the challenge lifetime).
    pub ceremony_timeout: Duration,
}

/// A tenant's WebAuthn verifier: webauthn-rs's relying party for its RP id and origins.
pub type Verifier = webauthn_rs_core::WebauthnCore;

/// The verifier of relying party `rp` named `name` (the tenant's name), announcing `timeout`.
///
/// Errors: `Internal` for an origin that is not a URL (tenant settings are checked when set;
/// the server's default comes from `LATCHKEY_PUBLIC_URL` or `LATCHKEY_WEBAUTHN_ORIGINS`).
pub fn build_verifier(rp: &RelyingParty, name: &str, timeout: Duration) -> Result<Verifier> {
    let origins = rp
        .origins
        .iter()
        .map(|o| url::Url::parse(o).map_err(|e| Error::Internal(format!("WebAuthn origin {o:?}: {e}"))))
        .collect::<Result<Vec<_>>>()?;
    let name = if name.trim().is_empty() { "Latchkey" } else { name };
    Ok(webauthn_rs_core::WebauthnCore::new_unsafe_experts_only(
        name,
        &rp.rp_id,
        origins,
        timeout,
        Some(false),
        Some(false),
    ))
}

/// The tenant with its verifier.
#[derive(Clone)]
pub struct TenantWithVerifier {
    /// The tenant, policy included.
    pub tenant: Tenant,
    /// The verifier of the tenant's relying party.
    pub verifier: Arc<Verifier>,
}

impl std::fmt::Debug for TenantWithVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantWithVerifier").field("tenant", &self.tenant.id).finish_non_exhaustive()
    }
}

/// Ask the actor for the tenant (policy included), spending one request of its budget; with
/// `verifier`, its WebAuthn verifier too.
#[derive(Message)]
#[rtype(result = "Result<(Tenant, Option<Arc<Verifier>>)>")]
struct Enter {
    verifier: bool,
}

/// Drop the cached policy (after a change made in this process).
#[derive(Message)]
#[rtype(result = "()")]
struct Invalidate;

/// The actor of one tenant.
pub struct TenantActor {
    tenant: Tenant,
    loaded_at: Instant,
    stale: bool,
    last_used: Instant,
    limiter: DefaultDirectRateLimiter,
    registry: Weak<Inner>,
    store: Store,
    settings: ActorSettings,
    /// The server's default relying party (for tenants without their own).
    default_rp: RelyingParty,
    /// The verifier, with the relying party and name it was built for.
    verifier: Option<(RelyingParty, String, Arc<Verifier>)>,
}

impl TenantActor {
    /// The answer to `Enter`: the cached tenant, and its verifier when asked (built when
    /// missing or when the relying party or name changed).
    fn entered(&mut self, with_verifier: bool) -> Result<(Tenant, Option<Arc<Verifier>>)> {
        if !with_verifier {
            return Ok((self.tenant.clone(), None));
        }
        let rp = self.tenant.settings.webauthn.clone().unwrap_or_else(|| self.default_rp.clone());
        let verifier = match &self.verifier {
            Some((built_rp, name, v)) if *built_rp == rp && *name == self.tenant.name => v.clone(),
            _ => {
                let v = Arc::new(build_verifier(&rp, &self.tenant.name, self.settings.ceremony_timeout)?);
                self.verifier = Some((rp, self.tenant.name.clone(), v.clone()));
                v
            }
        };
        Ok((self.tenant.clone(), Some(verifier)))
    }
}

impl Actor for TenantActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
        if let Some(reg) = self.registry.upgrade() {
            reg.metrics.tenant_actors.inc();
        }
        let every = (self.settings.idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(60));
        ctx.run_interval(every, |act, ctx| {
            if act.last_used.elapsed() >= act.settings.idle {
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        if let Some(reg) = self.registry.upgrade() {
            reg.metrics.tenant_actors.dec();
            reg.remove_if_same(self.tenant.id, &ctx.address());
        }
    }
}

impl Handler<Enter> for TenantActor {
    type Result = AtomicResponse<Self, Result<(Tenant, Option<Arc<Verifier>>)>>;

    fn handle(&mut self, msg: Enter, _ctx: &mut Self::Context) -> Self::Result {
        self.last_used = Instant::now();
        if let Err(not_until) = self.limiter.check() {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let retry_after = wait.as_secs().max(1);
            return AtomicResponse::new(Box::pin(fut::ready(Err(Error::RateLimited { retry_after }))));
        }
        if !self.stale && self.loaded_at.elapsed() < self.settings.policy_ttl {
            return AtomicResponse::new(Box::pin(fut::ready(self.entered(msg.verifier))));
        }
        let store = self.store.clone();
        let id = self.tenant.id;
        let with_verifier = msg.verifier;
        AtomicResponse::new(Box::pin(
            async move { store.run(move |c| tenants::by_id(c, id)).await }.into_actor(self).map(
                move |loaded, act, _| match loaded {
                    Ok(Some(tenant)) => {
                        act.tenant = tenant;
                        act.loaded_at = Instant::now();
                        act.stale = false;
                        act.entered(with_verifier)
                    }
                    Ok(None) => Err(Error::NotFound),
                    Err(e) => Err(e.into()),
                },
            ),
        ))
    }
}

impl Handler<Invalidate> for TenantActor {
    type Result = ();

    fn handle(&mut self, _: Invalidate, _ctx: &mut Self::Context) {
        self.stale = true;
    }
}

/// Starts, finds and stops tenant actors. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    arbiter: ArbiterHandle,
    actors: Mutex<HashMap<TenantId, Addr<TenantActor>>>,
    slugs: Mutex<HashMap<String, TenantId>>,
    store: Store,
    settings: ActorSettings,
    metrics: Metrics,
    default_rp: RelyingParty,
}

impl Inner {
    fn remove_if_same(&self, id: TenantId, addr: &Addr<TenantActor>) {
        let mut actors = self.actors.lock().unwrap_or_else(PoisonError::into_inner);
        if actors.get(&id).is_some_and(|a| a == addr) {
            actors.remove(&id);
        }
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("settings", &self.inner.settings).finish_non_exhaustive()
    }
}

impl Registry {
    /// A registry whose actors run on `arbiter` (a dedicated one in production); `default_rp`
    /// is the server's WebAuthn relying party, for tenants without their own.
    pub fn new(
        arbiter: ArbiterHandle,
        store: Store,
        settings: ActorSettings,
        metrics: Metrics,
        default_rp: RelyingParty,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                arbiter,
                actors: Mutex::new(HashMap::new()),
                slugs: Mutex::new(HashMap::new()),
                store,
                settings,
                metrics,
                default_rp,
            }),
        }
    }

    /// Number of running actors.
    pub fn running(&self) -> usize {
        self.inner.actors.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    fn spawn(&self, tenant: Tenant) -> Addr<TenantActor> {
        let mut actors = self.inner.actors.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(addr) = actors.get(&tenant.id).filter(|a| a.connected()) {
            return addr.clone();
        }
        let id = tenant.id;
        let settings = self.inner.settings;
        let burst = NonZeroU32::new(settings.requests_per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        let registry = Arc::downgrade(&self.inner);
        let store = self.inner.store.clone();
        let default_rp = self.inner.default_rp.clone();
        let addr = TenantActor::start_in_arbiter(&self.inner.arbiter, move |_| TenantActor {
            tenant,
            loaded_at: Instant::now(),
            stale: false,
            last_used: Instant::now(),
            limiter: RateLimiter::direct(Quota::per_second(burst)),
            registry,
            store,
            settings,
            default_rp,
            verifier: None,
        });
        actors.insert(id, addr.clone());
        addr
    }

    fn running_addr(&self, id: TenantId) -> Option<Addr<TenantActor>> {
        self.inner.actors.lock().unwrap_or_else(PoisonError::into_inner).get(&id).cloned()
    }

    /// The tenant `id` with its current policy, through its actor (started if needed).
    ///
    /// Errors: `NotFound` for an unknown tenant, `RateLimited` past the tenant's budget.
    pub async fn enter(&self, id: TenantId) -> Result<Tenant> {
        Ok(self.enter_as(id, false).await?.0)
    }

    /// The tenant `id` with its WebAuthn verifier, like [`Registry::enter`].
    ///
    /// Errors: those of [`Registry::enter`], and `Internal` for a relying party whose origins
    /// are not URLs.
    pub async fn enter_with_verifier(&self, id: TenantId) -> Result<TenantWithVerifier> {
        match self.enter_as(id, true).await? {
            (tenant, Some(verifier)) => Ok(TenantWithVerifier { tenant, verifier }),
            (_, None) => Err(Error::Internal("tenant actor gave no verifier".into())),
        }
    }

    /// The server's default relying party.
    pub fn default_relying_party(&self) -> &RelyingParty {
        &self.inner.default_rp
    }

    /// The settings of the actors.
    pub fn settings(&self) -> ActorSettings {
        self.inner.settings
    }

    async fn enter_as(&self, id: TenantId, verifier: bool) -> Result<(Tenant, Option<Arc<Verifier>>)> {
        for _ in 0..3 {
            let addr = match self.running_addr(id) {
                Some(addr) => addr,
                None => {
                    let store = self.inner.store.clone();
                    let tenant = store.run(move |c| tenants::by_id(c, id)).await?.ok_or(Error::NotFound)?;
                    self.spawn(tenant)
                }
            };
            match addr.send(Enter { verifier }).await {
                Ok(result) => return result,
                // The actor stopped (idle) between lookup and send: start a new one.
                Err(_) => self.inner.remove_if_same(id, &addr),
            }
        }
        Err(Error::Internal("tenant actor unavailable".into()))
    }

    /// The tenant with `slug`, like [`Registry::enter`]; `None` for an unknown slug, which
    /// starts no actor.
    pub async fn enter_slug(&self, slug: &str) -> Result<Option<Tenant>> {
        let known = self.inner.slugs.lock().unwrap_or_else(PoisonError::into_inner).get(slug).copied();
        let id = match known {
            Some(id) => id,
            None => {
                let store = self.inner.store.clone();
                let owned = slug.to_owned();
                let Some(tenant) = store.run(move |c| tenants::by_slug(c, &owned)).await? else {
                    return Ok(None);
                };
                let id = tenant.id;
                self.inner.slugs.lock().unwrap_or_else(PoisonError::into_inner).insert(slug.to_owned(), id);
                if self.running_addr(id).is_none() {
                    self.spawn(tenant);
                }
                id
            }
        };
        self.enter(id).await.map(Some)
    }

    /// Makes the tenant's actor re-read its policy on the next request.
    pub fn invalidate(&self, id: TenantId) {
        if let Some(addr) = self.running_addr(id) {
            addr.do_send(Invalidate);
        }
    }
}
