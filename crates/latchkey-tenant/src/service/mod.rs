//! The use-cases. Every method takes a [`RequestCtx`] carrying the instant read once at the
//! edge, plus the client's IP and user agent for the audit log.

mod account;
mod admin;
mod challenge;
mod devices;
mod email_code;
mod enroll;
mod factor;
mod handoff;
mod notices;
mod recovery;
mod recovery_code_flow;
mod reset_link;
mod self_service;
mod settings;
mod signin;
mod step_up;
mod verify;
mod webauthn;
mod webhooks;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use latchkey_core::crypto::TokenPurpose;
use latchkey_core::metrics::Metrics;
use latchkey_core::otp::OtpLockout;
use latchkey_core::password::PasswordHasher;
use latchkey_core::settings::{RelyingParty, SettingsBounds};
use latchkey_core::{
    AuditEventId, AuditKind, ChallengeId, Keys, Limits, Method, MethodSet, Role, SecretToken, SessionId, TenantId,
    UserId,
};
use latchkey_store::model::{AuditEvent, Challenge, ChallengePurpose, NextAction, Session, Tenant, User};
use latchkey_store::repo::{
    challenges, email_codes, enrollments, recovery_codes, reset_tokens, sessions, signin as signin_repo,
    trusted_devices, users,
};
use latchkey_store::{DbConn, Store, StoreResult};
use serde_json::Value;
use zeroize::Zeroizing;

pub use account::{NewUser, UserChanges};
pub use admin::{Purged, RecoveryView, WEBHOOK_HISTORY_DAYS};
pub use email_code::EmailSent;
pub use factor::TotpSetup;
pub use notices::{Notice, NoticeGroup};
pub use recovery::RecoveryStarted;
pub use recovery_code_flow::{RECOVERY_CODE, RecoveryCodes};
pub use self_service::{MethodSetup, TwoFactorOverview};
pub use settings::{EnableSetup, MethodChanges, SettingsView};
pub use signin::{ChallengeView, IssuedDevice, IssuedSession, SignIn};
pub use webauthn::PasskeyStart;
pub use webhooks::{CreatedWebhook, NewWebhook, WebhookChanges, resolve as resolve_webhook_host};

use crate::actor::Registry;
use crate::error::{Error, Result};
use crate::outbox::Outbox;

/// Who is asking, and when: built once per request at the edge.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    /// The instant of the request (the only clock read).
    pub now: DateTime<Utc>,
    /// The client IP (after trusted proxies).
    pub ip: Option<String>,
    /// The client's `User-Agent`.
    pub user_agent: Option<String>,
    /// The notices the request's use-cases recorded, for the edge to deliver before it
    /// answers ([`Service::deliver_notices`]).
    pub notices: PendingNotices,
}

impl RequestCtx {
    /// A context at `now` with no client details (CLI, tests).
    pub fn at(now: DateTime<Utc>) -> Self {
        Self { now, ip: None, user_agent: None, notices: PendingNotices::default() }
    }
}

/// The notice deliveries recorded during one request (shared by the clones of its
/// [`RequestCtx`]): pushed to the queue when the request is done and, for most notices,
/// waited for, so that an answer never comes before the notices of what it did (DESIGN.md
/// 5.6; an email change: the old address hears of it first). Each entry is a delivery and
/// whether the answer waits for it ([`Notice::answer_waits`]). Deliveries of a transaction
/// that rolled back simply do not exist and are skipped.
#[derive(Debug, Clone, Default)]
pub struct PendingNotices(Arc<std::sync::Mutex<Vec<(latchkey_core::DeliveryId, bool)>>>);

impl PendingNotices {
    fn push(&self, ids: impl IntoIterator<Item = latchkey_core::DeliveryId>, wait: bool) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(ids.into_iter().map(|id| (id, wait)));
    }

    fn take(&self) -> Vec<(latchkey_core::DeliveryId, bool)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

/// A signed-in request: the session, its user and the tenant (with its current policy).
#[derive(Debug, Clone)]
pub struct Auth {
    /// The session.
    pub session: Session,
    /// The signed-in user.
    pub user: User,
    /// The user's tenant.
    pub tenant: Tenant,
}

/// A user as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserView {
    /// Id.
    pub id: UserId,
    /// Email address (normalised).
    pub email: String,
    /// Display name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Enrolled methods.
    pub enrolled: Vec<Method>,
    /// The method last verified with.
    pub preferred: Option<Method>,
}

impl UserView {
    fn new(user: &User, enrolled: MethodSet) -> Self {
        Self {
            id: user.id,
            email: user.email.clone(),
            name: user.name.clone(),
            role: user.role,
            enrolled: enrolled.to_vec(),
            preferred: user.preferred.filter(|m| enrolled.contains(*m)),
        }
    }
}

/// Server-wide settings the use-cases need beyond the limits.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// The base of links in mail and of the hosted pages, without a trailing slash
    /// (`LATCHKEY_PUBLIC_URL`).
    pub public_url: String,
    /// The default WebAuthn relying party (`LATCHKEY_WEBAUTHN_RP_ID`, `…_ORIGINS`).
    pub relying_party: RelyingParty,
    /// Bounds on tenant settings (`LATCHKEY_REMEMBER_DEVICE_MAX_DAYS`, …).
    pub bounds: SettingsBounds,
    /// How long a delivery pushed to the queue counts as in flight before the sweep takes it
    /// for lost and queues it again (`LATCHKEY_DELIVERY_REQUEUE_MS`).
    pub delivery_requeue: chrono::Duration,
    /// How long an answer waits for the notices of what it did to go out
    /// (`LATCHKEY_NOTICE_WAIT_MS`).
    pub notice_wait: std::time::Duration,
    /// The webhook URL and address rules (`LATCHKEY_WEBHOOK_ALLOW_HTTP`,
    /// `LATCHKEY_WEBHOOK_ALLOW_PRIVATE`, DESIGN.md 5.6).
    pub webhook_policy: latchkey_core::webhook::UrlPolicy,
    /// Most webhook endpoints one tenant may have (`LATCHKEY_WEBHOOKS_PER_TENANT`).
    pub webhooks_per_tenant: u32,
    /// Most rows of one table one purge statement deletes (`LATCHKEY_PURGE_BATCH`).
    pub purge_batch: u32,
    /// The pause between two purge rounds (`LATCHKEY_PURGE_PAUSE_MS`).
    pub purge_pause: std::time::Duration,
}

impl ServerSettings {
    /// The settings of `config`.
    pub fn from_config(config: &latchkey_core::Config) -> Self {
        Self {
            public_url: config.public_url(),
            relying_party: config.relying_party(),
            bounds: config.settings_bounds(),
            delivery_requeue: config.delivery_requeue(),
            notice_wait: std::time::Duration::from_millis(config.notice_wait_ms),
            webhook_policy: config.webhook_policy(),
            webhooks_per_tenant: config.webhooks_per_tenant,
            purge_batch: config.purge_batch,
            purge_pause: std::time::Duration::from_millis(config.purge_pause_ms),
        }
    }
}

/// Everything the use-cases need. Cheap to clone.
#[derive(Clone)]
pub struct Service {
    store: Store,
    keys: Keys,
    hasher: Arc<PasswordHasher>,
    /// One permit per core: at most that many argon2 computations run at once (see
    /// [`Service::check_password`]).
    hashing: Arc<tokio::sync::Semaphore>,
    limits: Limits,
    server: Arc<ServerSettings>,
    outbox: Arc<dyn Outbox>,
    metrics: Metrics,
    registry: Registry,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("store", &self.store).field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl Service {
    /// Assembles the use-cases.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        keys: Keys,
        hasher: Arc<PasswordHasher>,
        limits: Limits,
        server: ServerSettings,
        outbox: Arc<dyn Outbox>,
        metrics: Metrics,
        registry: Registry,
    ) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let hashing = Arc::new(tokio::sync::Semaphore::new(cores));
        Self { store, keys, hasher, hashing, limits, server: Arc::new(server), outbox, metrics, registry }
    }

    /// The server-wide settings.
    pub fn server(&self) -> &ServerSettings {
        &self.server
    }

    /// The store (for readiness checks and housekeeping).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The outbox (for readiness checks).
    pub fn outbox(&self) -> &Arc<dyn Outbox> {
        &self.outbox
    }

    /// The tenant actors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Resolves a bearer token to its session, user and tenant. A challenge or setup token
    /// never resolves (its keyed hash has another purpose).
    ///
    /// Errors: `Unauthenticated` for an unknown, expired or ended session.
    pub async fn authenticate(&self, ctx: &RequestCtx, bearer: &str) -> Result<Auth> {
        // Current key first, then the previous ones (a session from before a key rotation).
        let hashes = self.keys.token_hashes(TokenPurpose::Session, bearer);
        let now = ctx.now;
        let found = self
            .store
            .run(move |c| {
                let mut session = None;
                for hash in &hashes {
                    session = sessions::by_token_hash(c, hash, now)?;
                    if session.is_some() {
                        break;
                    }
                }
                let Some(session) = session else {
                    return Ok(None);
                };
                let user = users::by_id(c, session.tenant_id, session.user_id)?;
                Ok(user.map(|u| (session, u)))
            })
            .await?;
        let (session, user) = found.ok_or(Error::Unauthenticated)?;
        let tenant = self.registry.enter(session.tenant_id).await.map_err(|e| match e {
            Error::NotFound => Error::Unauthenticated,
            other => other,
        })?;
        Ok(Auth { session, user, tenant })
    }

    /// Waits for one of the per-core argon2 permits.
    async fn hashing_permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>> {
        self.hashing.acquire().await.map_err(|e| Error::Internal(e.to_string()))
    }

    /// Hashes a new password on the blocking pool (one per core at a time, like
    /// [`Service::check_password`]).
    async fn hash_password(&self, password: &str) -> Result<String> {
        let hasher = self.hasher.clone();
        let password = Zeroizing::new(password.to_owned());
        let _permit = self.hashing_permit().await?;
        tokio::task::spawn_blocking(move || hasher.hash(&password))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
            .map_err(|e| Error::Internal(e.to_string()))
    }

    /// Verifies a password on the blocking pool (against the dummy hash when `stored` is
    /// `None`, so unknown users cost the same).
    ///
    /// At most one argon2 computation per core runs at a time; the others wait for a permit
    /// without holding a thread. Unbounded, a burst of sign-ins would start one 19 MiB hash
    /// per request on the blocking pool: they would share the cores (each taking many times
    /// longer, thrashing the caches) and crowd out the event loops, whose cheap requests
    /// would then wait behind them.
    async fn check_password(&self, password: &str, stored: Option<String>) -> Result<bool> {
        let hasher = self.hasher.clone();
        let password = Zeroizing::new(password.to_owned());
        let _permit = self.hashing_permit().await?;
        let timer = self.metrics.password_check.start_timer();
        let ok = tokio::task::spawn_blocking(move || hasher.verify(&password, stored.as_deref()))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        timer.observe_duration();
        Ok(ok)
    }

    /// The key of the attempt log of a user of a tenant.
    fn user_attempts_key(&self, tenant: TenantId, user: UserId) -> Vec<u8> {
        self.keys.label_hash(&format!("signin-user\u{0}{tenant}\u{0}{user}")).into_bytes()
    }

    /// The key of the attempt log of an address unknown in a known tenant.
    fn address_attempts_key(&self, tenant: TenantId, email: &str) -> Vec<u8> {
        self.keys.label_hash(&format!("signin-address\u{0}{tenant}\u{0}{email}")).into_bytes()
    }

    /// The key of the attempt log of an address of a tenant slug that does not exist.
    fn unknown_tenant_attempts_key(&self, slug: &str, email: &str) -> Vec<u8> {
        self.keys.label_hash(&format!("signin-unknown-tenant\u{0}{slug}\u{0}{email}")).into_bytes()
    }

    /// Counts one password attempt under `key` before the password is checked, atomically
    /// (under the lock of the log's own row), so that however many run in parallel, in any
    /// number of processes, no more than the limit are ever evaluated in any window-long span
    /// (DESIGN.md "Accounts"). A success clears the log afterwards ([`Service::clear_attempts`]).
    /// `tenant` is the known tenant of the subject (`None` for an unknown slug, counted the
    /// same way, so that unknown tenants answer exactly like known ones).
    ///
    /// Errors: `RateLimited` once the limit is reached.
    async fn reserve_password_attempt(&self, tenant: Option<TenantId>, key: Vec<u8>, now: DateTime<Utc>) -> Result<()> {
        let limits = self.limits;
        let refused = self
            .store
            .write(move |c| {
                let log = signin_repo::lock(c, &key, tenant, now)?;
                if let Err(until) = log.check(now, &limits) {
                    return Ok(Some(until));
                }
                signin_repo::put(c, &key, &log.fail(now, &limits), now)?;
                Ok(None)
            })
            .await?;
        match refused {
            Some(until) => Err(Error::RateLimited { retry_after: latchkey_core::otp::seconds_until(until, now) }),
            None => Ok(()),
        }
    }

    /// Forgets the attempts under `key` (after the right password).
    async fn clear_attempts(&self, key: Vec<u8>) -> Result<()> {
        self.store.run(move |c| signin_repo::clear(c, &key)).await?;
        Ok(())
    }

    /// Re-checks a signed-in user's password (for sensitive actions), under the same
    /// attempt limit as sign-in.
    ///
    /// Errors: `InvalidPassword`, `RateLimited`.
    async fn confirm_password(&self, ctx: &RequestCtx, user: &User, password: &str) -> Result<()> {
        let key = self.user_attempts_key(user.tenant_id, user.id);
        self.reserve_password_attempt(Some(user.tenant_id), key.clone(), ctx.now).await?;
        if !self.check_password(password, Some(user.password_hash.clone())).await? {
            return Err(Error::InvalidPassword);
        }
        self.clear_attempts(key).await
    }

    /// `StepUpRequired` unless 2FA is off or the session verified its second factor within
    /// `LATCHKEY_STEP_UP_SECS` (DESIGN.md "Step-up").
    fn require_step_up(&self, auth: &Auth, now: DateTime<Utc>) -> Result<()> {
        if !auth.tenant.policy.enabled {
            return Ok(());
        }
        self.require_fresh_factor(auth, now)
    }

    /// `StepUpRequired` unless the session presented a second factor (at sign-in or by a
    /// step-up) within `LATCHKEY_STEP_UP_SECS`; a session from a trusted device or a skipped
    /// enrollment never has (DESIGN.md 5.3).
    fn require_fresh_factor(&self, auth: &Auth, now: DateTime<Utc>) -> Result<()> {
        if latchkey_core::trust::is_fresh(auth.session.second_factor_at, now, self.limits.step_up) {
            Ok(())
        } else {
            Err(Error::StepUpRequired)
        }
    }

    /// `Forbidden` unless the user is an admin.
    fn require_admin(auth: &Auth) -> Result<()> {
        if auth.user.role == Role::Admin { Ok(()) } else { Err(Error::Forbidden) }
    }

    fn user_view(&self, conn: &mut DbConn, user: &User) -> StoreResult<UserView> {
        Ok(UserView::new(user, enrollments::methods_of(conn, user.id)?))
    }

    /// Issues a session for `user`; `second_factor` records a verification now (step-up).
    fn issue_session(
        &self,
        conn: &mut DbConn,
        user: &User,
        second_factor: bool,
        now: DateTime<Utc>,
    ) -> StoreResult<(SecretToken, Session)> {
        let (token, session) = self.new_session(user, second_factor, now);
        sessions::insert(conn, &session, &self.keys.token_hash(TokenPurpose::Session, token.expose()))?;
        Ok((token, session))
    }

    /// A new bearer token and the session it opens (not yet stored).
    fn new_session(&self, user: &User, second_factor: bool, now: DateTime<Utc>) -> (SecretToken, Session) {
        let session = Session {
            id: SessionId::new(),
            tenant_id: user.tenant_id,
            user_id: user.id,
            created_at: now,
            expires_at: now + self.limits.session_ttl,
            second_factor_at: second_factor.then_some(now),
        };
        (SecretToken::generate(), session)
    }

    /// Opens a challenge (or an enablement setup).
    #[allow(clippy::too_many_arguments)]
    fn open_challenge(
        &self,
        conn: &mut DbConn,
        user: &User,
        purpose: ChallengePurpose,
        next: NextAction,
        methods: MethodSet,
        session_id: Option<SessionId>,
        now: DateTime<Utc>,
    ) -> StoreResult<(SecretToken, Challenge)> {
        let token = SecretToken::generate();
        let challenge = Challenge {
            id: ChallengeId::new(),
            tenant_id: user.tenant_id,
            user_id: user.id,
            purpose,
            next,
            methods,
            session_id,
            pending_secret: None,
            created_at: now,
            expires_at: now + self.limits.challenge_ttl,
            ended_at: None,
        };
        challenges::insert(conn, &challenge, &self.keys.token_hash(TokenPurpose::Challenge, token.expose()))?;
        Ok((token, challenge))
    }

    /// Resets a user's second factor (recovery approval, reset link, operator or admin
    /// reset): removes enrollments and recovery codes, the wrong-code counter and block, ends
    /// sessions and challenges, voids codes and reset links, revokes trusted devices. The next
    /// sign-in enrolls again.
    fn reset_second_factor(conn: &mut DbConn, ctx: &RequestCtx, user: &User) -> StoreResult<()> {
        let now = ctx.now;
        enrollments::delete_for_user(conn, user.id)?;
        latchkey_store::repo::webauthn::delete_for_user(conn, user.id)?;
        recovery_codes::delete_for_user(conn, user.id)?;
        users::set_lockout(conn, user.id, OtpLockout::default())?;
        users::set_preferred(conn, user.id, None)?;
        sessions::delete_for_user(conn, user.id, None)?;
        challenges::end_for_user(conn, user.id, None, now)?;
        email_codes::void_for_user(conn, user.id, now)?;
        reset_tokens::void_for_user(conn, user.id, now)?;
        Service::revoke_devices(conn, ctx, user, "reset")
    }

    /// Revokes every trusted device of `user` (DESIGN.md 5.4: resets, password, email or role
    /// changes, factor removals), audited `trusted_device_revoked` when there was one.
    fn revoke_devices(conn: &mut DbConn, ctx: &RequestCtx, user: &User, reason: &str) -> StoreResult<()> {
        let n = trusted_devices::revoke_for_user(conn, user.id, ctx.now)?;
        if n == 0 {
            return Ok(());
        }
        let detail = serde_json::json!({"reason": reason, "count": n});
        Service::audit(conn, ctx, user.tenant_id, None, Some(user.id), AuditKind::TrustedDeviceRevoked, detail)
    }

    /// Appends an audit event (call inside the transaction of the change it records).
    #[allow(clippy::too_many_arguments)]
    fn audit(
        conn: &mut DbConn,
        ctx: &RequestCtx,
        tenant: TenantId,
        actor: Option<String>,
        subject: Option<UserId>,
        kind: AuditKind,
        detail: Value,
    ) -> StoreResult<()> {
        Service::audit_all(conn, ctx, tenant, actor, subject, [(kind, detail)])
    }

    /// Appends several audit events of one actor and subject in one statement (call inside
    /// the transaction of the change they record).
    fn audit_all<const N: usize>(
        conn: &mut DbConn,
        ctx: &RequestCtx,
        tenant: TenantId,
        actor: Option<String>,
        subject: Option<UserId>,
        events: [(AuditKind, Value); N],
    ) -> StoreResult<()> {
        let events = Service::new_audit_events(ctx, tenant, actor, subject, events);
        let hooks = latchkey_store::repo::audit::insert_all(conn, &events)?;
        ctx.notices.push(hooks, false);
        Ok(())
    }

    /// Audit events of one actor and subject at `ctx.now`, not yet stored.
    fn new_audit_events<const N: usize>(
        ctx: &RequestCtx,
        tenant: TenantId,
        actor: Option<String>,
        subject: Option<UserId>,
        events: [(AuditKind, Value); N],
    ) -> [AuditEvent; N] {
        let subject = subject.map(|s| s.to_string());
        events.map(|(kind, detail)| AuditEvent {
            id: AuditEventId::new(),
            tenant_id: tenant,
            at: ctx.now,
            actor_id: actor.clone(),
            subject_id: subject.clone(),
            kind,
            ip: ctx.ip.clone(),
            user_agent: ctx.user_agent.clone(),
            detail,
        })
    }
}

/// Validates and normalises a display name ([`latchkey_core::names::clean`]): trimmed, 1 to 200
/// characters, no control, bidi-override or invisible characters.
pub fn clean_name(name: &str) -> Result<String> {
    latchkey_core::names::clean(name).map_err(|e| Error::InvalidRequest(e.to_owned()))
}

/// Validates and normalises an email address (trimmed, lower-cased).
pub fn clean_email(email: &str) -> Result<String> {
    let email = latchkey_core::email::normalize(email);
    if !latchkey_core::email::is_valid(&email) {
        return Err(Error::InvalidRequest("email is not a valid address".into()));
    }
    Ok(email)
}

/// Checks a new password against the rules.
pub fn check_new_password(password: &str) -> Result<()> {
    latchkey_core::password::check_new_password(password).map_err(|e| Error::InvalidRequest(e.to_string()))
}
