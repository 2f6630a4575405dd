//! End-to-end tests of the queue and the worker: jobs are pushed as the API pushes them (rows
//! written through the store's repositories, code sealed with the delivery as AAD) and
//! delivered to an SMTP server of the tests' own or to an outbox directory.
//!
//! Every test has its own temporary directory (diesel store, queue file, outbox) and its own
//! SMTP port. `#[tokio::test]` runs on a current-thread runtime, like an actix arbiter: the
//! worker needs nothing more. Redis tests run when `LATCHKEY_TEST_REDIS_URL` is set (and then
//! fail, rather than skip, when Redis cannot be reached), each in its own key namespace.

pub(crate) mod mime;
mod smtp;
mod sweep;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use latchkey_core::config::Sensitive;
use latchkey_core::crypto::TokenPurpose;
use latchkey_core::metrics::Metrics;
use latchkey_core::{
    ChallengeId, Clock, DeliveryId, EmailCodeId, Keys, ManualClock, ResetTokenId, Role, SecretToken, ServerKey,
    TenantId, UserId,
};
use latchkey_store::Store;
use latchkey_store::model::{EmailCode, ResetToken, Tenant, TwoFactorPolicy, User};
use latchkey_store::repo::deliveries::{self, Attempt, DeliveryKind, DeliveryState, NewMail};
use latchkey_store::repo::{email_codes, reset_tokens, tenants, users};
use latchkey_tenant::outbox::{DeliveryJob, MailPayload, Outbox, seal_payload};
use tempfile::TempDir;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use self::mime::{parse, reset_token, six_digit_runs};
use self::smtp::{SmtpServer, reserve_port};
use crate::deliver::{Deliverer, Outcome};
use crate::{MailConfig, MailError, MailQueue, TransportConfig, run_worker};

/// One test's world: a temp dir, a store with one tenant and user, keys, metrics, a clock.
struct World {
    dir: TempDir,
    store: Store,
    keys: Keys,
    metrics: Metrics,
    clock: ManualClock,
    tenant: TenantId,
    user: UserId,
    _pg: Option<latchkey_store::testing::ScratchDb>,
}

/// The store backends of a run: SQLite, and Postgres when `LATCHKEY_TEST_DATABASE_URL` is set.
fn backends() -> Vec<latchkey_store::Backend> {
    let mut v = vec![latchkey_store::Backend::Sqlite];
    if std::env::var("LATCHKEY_TEST_DATABASE_URL").is_ok_and(|u| !u.is_empty()) {
        v.push(latchkey_store::Backend::Postgres);
    }
    v
}

impl World {
    fn new(tenant_name: &str) -> Self {
        Self::on(latchkey_store::Backend::Sqlite, tenant_name)
    }

    /// A world whose store is on `backend` (Postgres: a scratch database of its own).
    fn on(backend: latchkey_store::Backend, tenant_name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pg = match backend {
            latchkey_store::Backend::Sqlite => None,
            latchkey_store::Backend::Postgres => Some(
                latchkey_store::testing::scratch_postgres(&std::env::var("LATCHKEY_TEST_DATABASE_URL").unwrap())
                    .expect("Postgres from LATCHKEY_TEST_DATABASE_URL"),
            ),
        };
        let url = match &pg {
            Some(db) => db.url.clone(),
            None => format!("sqlite://{}", dir.path().join("t.db").display()),
        };
        let store = Store::open(&url, 4).unwrap();
        let clock = ManualClock::new(Utc::now());
        let now = clock.now();
        let tenant = TenantId::new();
        let user = UserId::new();
        let name = tenant_name.to_owned();
        store
            .run_blocking(move |c| {
                tenants::insert(
                    c,
                    &Tenant {
                        id: tenant,
                        slug: format!("t-{}", tenant.0.simple()),
                        name,
                        policy: TwoFactorPolicy::default(),
                        settings: Default::default(),
                        created_at: now,
                    },
                )?;
                users::insert(
                    c,
                    &User {
                        id: user,
                        tenant_id: tenant,
                        email: "agent@example.com".to_owned(),
                        name: "Agent".to_owned(),
                        role: Role::Admin,
                        password_hash: "x".to_owned(),
                        preferred: None,
                        lockout: Default::default(),
                        created_at: now,
                        enroll_asked_at: None,
                        preferred_chosen: false,
                    },
                )
            })
            .unwrap();
        let keys = Keys::new(&ServerKey::parse(&"42".repeat(32)).unwrap());
        Self { dir, store, keys, metrics: Metrics::new().unwrap(), clock, tenant, user, _pg: pg }
    }

    fn clock(&self) -> Arc<dyn Clock> {
        Arc::new(self.clock.clone())
    }

    /// Records a mail delivery of `payload` as the use-cases do (sealed, in flight for a
    /// second because the caller pushes it), sealed for `sealed_for` (its own id when `None`).
    fn record(
        &self,
        kind: DeliveryKind,
        payload: &MailPayload,
        expires_at: Option<chrono::DateTime<Utc>>,
        sealed_for: Option<DeliveryId>,
    ) -> DeliveryJob {
        let now = self.clock.now();
        let id = DeliveryId::new();
        let sealed = seal_payload(&self.keys, sealed_for.unwrap_or(id), payload).unwrap();
        let tenant = self.tenant;
        self.store
            .run_blocking(move |c| {
                deliveries::insert_mail(
                    c,
                    &NewMail {
                        id,
                        tenant_id: tenant,
                        kind,
                        payload: &sealed,
                        expires_at,
                        lease_until: now + chrono::Duration::seconds(1),
                        now,
                    },
                )
            })
            .unwrap();
        DeliveryJob { delivery_id: id }
    }

    /// What `send_email_code` does: a code row and a delivery row with the code sealed in it.
    fn otp_job(&self, tenant_name: &str, code: &str, ttl_secs: i64) -> DeliveryJob {
        self.otp_job_sealed_for(tenant_name, code, ttl_secs, None)
    }

    fn otp_job_sealed_for(
        &self,
        tenant_name: &str,
        code: &str,
        ttl_secs: i64,
        sealed_for: Option<DeliveryId>,
    ) -> DeliveryJob {
        let now = self.clock.now();
        let code_id = EmailCodeId::new();
        let tenant = self.tenant;
        let row = EmailCode {
            id: code_id,
            user_id: self.user,
            challenge_id: ChallengeId::new(),
            code_hash: self.keys.code_hash(&code_id.to_string(), code).to_vec(),
            created_at: now,
            expires_at: now + chrono::Duration::seconds(ttl_secs),
            used_at: None,
            voided_at: None,
        };
        self.store.run_blocking(move |c| email_codes::insert(c, tenant, &row)).unwrap();
        let payload = MailPayload::Otp {
            code_id,
            to: "agent@example.com".to_owned(),
            tenant_name: tenant_name.to_owned(),
            code: code.to_owned(),
        };
        self.record(DeliveryKind::Otp, &payload, Some(now + chrono::Duration::seconds(ttl_secs)), sealed_for)
    }

    /// What `send_reset_link` does: a token row and a delivery row with the token sealed in it.
    fn reset_job(&self, tenant_name: &str) -> (DeliveryJob, SecretToken) {
        let now = self.clock.now();
        let token = SecretToken::generate();
        let row = ResetToken {
            id: ResetTokenId::new(),
            tenant_id: self.tenant,
            user_id: self.user,
            created_at: now,
            expires_at: now + chrono::Duration::hours(1),
            used_at: None,
            voided_at: None,
        };
        let hash = self.keys.token_hash(TokenPurpose::Reset, token.expose());
        let token_id = row.id;
        self.store.run_blocking(move |c| reset_tokens::insert(c, &row, &hash)).unwrap();
        let payload = MailPayload::ResetLink {
            token_id,
            to: "admin@example.com".to_owned(),
            tenant_name: tenant_name.to_owned(),
            token: token.expose().to_owned(),
        };
        (self.record(DeliveryKind::ResetLink, &payload, Some(now + chrono::Duration::hours(1)), None), token)
    }

    fn delivery(&self, id: DeliveryId) -> (DeliveryState, i32) {
        let d = self.store.run_blocking(move |c| deliveries::get(c, id)).unwrap().unwrap();
        (d.state, d.attempts)
    }

    fn jobs(&self, kind: &str, outcome: &str) -> u64 {
        self.metrics.email_jobs.with_label_values(&[kind, outcome]).get()
    }

    async fn sqlite_queue(&self) -> MailQueue {
        MailQueue::open(None, self.dir.path()).await.unwrap()
    }

    fn deliverer(&self, config: &MailConfig) -> Deliverer {
        Deliverer::new(self.store.clone(), self.keys.clone(), self.metrics.clone(), self.clock(), config).unwrap()
    }

    /// Starts the worker; stop it with [`Running::stop`].
    fn start(&self, queue: &MailQueue, config: MailConfig) -> Running {
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(run_worker(
            queue.clone(),
            self.store.clone(),
            self.keys.clone(),
            self.metrics.clone(),
            self.clock(),
            config,
            async move {
                let _ = rx.await;
            },
        ));
        Running { stop: Some(tx), handle }
    }
}

struct Running {
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), MailError>>,
}

impl Running {
    /// Asks for shutdown and waits for the worker to return; returns how long it took.
    async fn stop(mut self) -> Duration {
        let started = std::time::Instant::now();
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.handle)
            .await
            .expect("the worker stops when asked")
            .expect("the worker task does not panic")
            .expect("the worker ends without error");
        started.elapsed()
    }
}

fn smtp(server: &SmtpServer) -> MailConfig {
    MailConfig::for_test(TransportConfig::Smtp(Sensitive(server.url())))
}

/// Waits (up to 10 s) until `cond` holds.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// --- delivery through the embedded queue ------------------------------------------------

#[tokio::test]
async fn an_otp_job_is_delivered_with_its_code() {
    let w = World::new("Acme Support");
    let server = SmtpServer::start().await;
    let queue = w.sqlite_queue().await;
    let job = w.otp_job("Acme Support", "042917", 300);
    let delivery = job.delivery_id;
    queue.enqueue(job).await.unwrap();
    let running = w.start(&queue, smtp(&server));

    wait_for("the message", || server.messages().len() == 1).await;
    let m = parse(&server.messages()[0]);
    assert_eq!(m.header("Subject"), Some("Your Acme Support sign-in code"));
    assert_eq!(m.header("From"), Some("Latchkey <no-reply@localhost>"));
    assert_eq!(m.header("To"), Some("agent@example.com"));
    let text = m.part("text/plain");
    let html = m.part("text/html");
    assert_eq!(six_digit_runs(text), vec!["042917"], "{text}");
    assert_eq!(six_digit_runs(html), vec!["042917"], "{html}");
    assert!(text.contains("valid for 5 minutes"), "{text}");
    // Nothing but the code is six digits in a row, headers included.
    assert!(six_digit_runs(&server.messages()[0]).iter().all(|c| c == "042917"));

    wait_for("the delivery to be recorded", || w.jobs("otp", "sent") == 1).await;
    assert_eq!(w.delivery(delivery), (DeliveryState::Sent, 1));
    assert_eq!(w.jobs("otp", "retried"), 0);
    assert_eq!(w.metrics.email_delivery.with_label_values(&["otp"]).get_sample_count(), 1);
    assert!(running.stop().await < Duration::from_secs(5));
}

/// After the queue has been idle (empty fetches), a new job is still picked up within a few
/// poll intervals, not at the next heartbeat (seconds later): a short-lived code must not
/// wait in the queue.
#[tokio::test]
async fn an_idle_worker_picks_up_a_new_job_promptly() {
    let w = World::new("Acme");
    let server = SmtpServer::start().await;
    let queue = w.sqlite_queue().await;
    let mut config = smtp(&server);
    config.poll_interval = Duration::from_millis(25);
    let running = w.start(&queue, config);
    let mut slowest = Duration::ZERO;
    for i in 0..12 {
        tokio::time::sleep(Duration::from_millis(150)).await; // idle: empty fetches
        let started = std::time::Instant::now();
        queue.enqueue(w.otp_job("Acme", &format!("{:06}", 100_000 + i), 300)).await.unwrap();
        let deadline = started + Duration::from_secs(3);
        while server.messages().len() <= i as usize {
            assert!(std::time::Instant::now() < deadline, "job {i} waited more than 3 s in an idle queue");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        slowest = slowest.max(started.elapsed());
    }
    running.stop().await;
    println!("slowest pickup: {slowest:?}");
}

#[tokio::test]
async fn a_reset_link_job_is_delivered_with_a_working_link() {
    let w = World::new("Acme");
    let server = SmtpServer::start().await;
    let queue = w.sqlite_queue().await;
    let (job, token) = w.reset_job("Acme");
    queue.enqueue(job).await.unwrap();
    let running = w.start(&queue, smtp(&server));

    wait_for("the message", || server.messages().len() == 1).await;
    let m = parse(&server.messages()[0]);
    assert_eq!(m.header("To"), Some("admin@example.com"));
    assert_eq!(m.header("Subject"), Some("Reset your Acme two-factor sign-in"));
    for part in ["text/plain", "text/html"] {
        let body = m.part(part);
        assert_eq!(reset_token(body).as_deref(), Some(token.expose()), "{body}");
        assert!(body.contains(&format!("http://latchkey.test/reset-otp?token={}", token.expose())));
        assert!(body.contains("valid for 1 hour"));
    }
    wait_for("the count", || w.jobs("reset_link", "sent") == 1).await;
    running.stop().await;
}

#[tokio::test]
async fn a_hostile_tenant_name_is_escaped_in_the_html_part() {
    let name = "<img src=x onerror=alert(1)> & \"Evil\" Co";
    let w = World::new(name);
    let server = SmtpServer::start().await;
    let queue = w.sqlite_queue().await;
    queue.enqueue(w.otp_job(name, "123456", 300)).await.unwrap();
    let running = w.start(&queue, smtp(&server));

    wait_for("the message", || server.messages().len() == 1).await;
    let m = parse(&server.messages()[0]);
    // Wrapping may put line breaks between words: compare with whitespace normalised.
    let html = m.part("text/html").split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(!html.contains("<img"), "{html}");
    assert!(html.contains("&lt;img src=x onerror=alert(1)&gt; &amp; \"Evil\" Co"), "{html}");
    let text = m.part("text/plain").split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(text.contains(name), "{text}");
    running.stop().await;
}

#[tokio::test]
async fn the_file_outbox_gets_one_eml_per_message() {
    let w = World::new("Acme");
    let outbox = w.dir.path().join("outbox");
    let queue = w.sqlite_queue().await;
    let job = w.otp_job("Acme", "555019", 300);
    let delivery = job.delivery_id;
    queue.enqueue(job).await.unwrap();
    let running = w.start(&queue, MailConfig::for_test(TransportConfig::Outbox(outbox.clone())));

    wait_for("the delivery", || w.jobs("otp", "sent") == 1).await;
    let files: Vec<_> = std::fs::read_dir(&outbox)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let m = parse(&std::fs::read_to_string(&files[0]).unwrap());
    assert_eq!(six_digit_runs(m.part("text/plain")), vec!["555019"]);
    assert_eq!(w.delivery(delivery).0, DeliveryState::Sent);
    // The staging directory is left empty: no half-written file is ever visible.
    assert_eq!(std::fs::read_dir(outbox.join(".tmp")).unwrap().count(), 0);
    // The message (a code) is private, and so are the directories.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&files[0]), 0o600);
        assert_eq!(mode(&outbox), 0o700);
        assert_eq!(mode(&outbox.join(".tmp")), 0o700);
    }
    running.stop().await;
}

#[tokio::test]
async fn the_outbox_check_tells_whether_messages_can_be_written() {
    let w = World::new("Acme");
    let outbox = w.dir.path().join("checked-outbox");
    crate::check_outbox(&outbox).unwrap();
    assert!(outbox.join(".tmp").is_dir(), "created when missing");
    assert_eq!(std::fs::read_dir(&outbox).unwrap().count(), 1, "no probe left behind");
    assert_eq!(std::fs::read_dir(outbox.join(".tmp")).unwrap().count(), 0);
    // A file where the outbox should be (refused even to root, unlike a read-only mode).
    let blocked = w.dir.path().join("blocked-outbox");
    std::fs::write(&blocked, b"not a directory").unwrap();
    assert!(matches!(crate::check_outbox(&blocked), Err(MailError::Outbox(..))));
}

/// `latchkey serve` runs the worker inside its `#[actix_web::main]` system: an actix-rt
/// (current-thread tokio + `LocalSet`) runtime. Spawned from there, it delivers as anywhere.
#[actix_rt::test]
async fn the_worker_runs_inside_an_actix_system() {
    let w = World::new("Acme");
    let queue = w.sqlite_queue().await;
    actix_round_trip(&w, &queue).await;
}

#[actix_rt::test]
async fn the_worker_runs_inside_an_actix_system_on_redis() {
    let Some(url) = redis_url() else { return };
    let ns = namespace("actix");
    let w = World::new("Acme");
    let queue = MailQueue::open_redis(&url, &ns).await.expect("Redis must be reachable");
    actix_round_trip(&w, &queue).await;
    drop_namespace(&url, &ns).await;
}

/// Runs the worker spawned on the actix system and pushes one job from the system and one
/// from another arbiter (like an API handler on a server worker thread).
async fn actix_round_trip(w: &World, queue: &MailQueue) {
    let server = SmtpServer::start().await;
    queue.enqueue(w.otp_job("Acme", "123789", 300)).await.unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let worker = actix_rt::spawn(run_worker(
        queue.clone(),
        w.store.clone(),
        w.keys.clone(),
        w.metrics.clone(),
        w.clock(),
        smtp(&server),
        async move {
            let _ = rx.await;
        },
    ));
    wait_for("the message", || server.messages().len() == 1).await;
    let arbiter = actix_rt::Arbiter::new();
    let (done_tx, done_rx) = oneshot::channel();
    let (q, job) = (queue.clone(), w.otp_job("Acme", "456012", 300));
    assert!(arbiter.spawn(async move {
        let _ = done_tx.send(q.enqueue(job).await);
    }));
    done_rx.await.unwrap().unwrap();
    wait_for("the second message", || server.messages().len() == 2).await;
    arbiter.stop();
    tx.send(()).unwrap();
    worker.await.unwrap().unwrap();
}

// --- retries and expiry ------------------------------------------------------------------

#[tokio::test]
async fn smtp_down_then_up_delivers_exactly_once() {
    let w = World::new("Acme");
    let addr = reserve_port(); // nothing listens yet: connections are refused
    let queue = w.sqlite_queue().await;
    let job = w.otp_job("Acme", "700123", 300);
    let delivery = job.delivery_id;
    queue.enqueue(job).await.unwrap();
    let config = MailConfig::for_test(TransportConfig::Smtp(Sensitive(format!("smtp://{addr}"))));
    let running = w.start(&queue, config);

    wait_for("a few failed attempts", || w.jobs("otp", "retried") >= 3).await;
    assert_eq!(w.delivery(delivery).0, DeliveryState::Pending, "a failed attempt releases the claim");

    let server = SmtpServer::start_on(addr).await;
    wait_for("the message", || server.messages().len() == 1).await;
    wait_for("the count", || w.jobs("otp", "sent") == 1).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(server.messages().len(), 1, "exactly one message");
    assert_eq!(six_digit_runs(parse(&server.messages()[0]).part("text/plain")), vec!["700123"]);
    let (state, attempts) = w.delivery(delivery);
    assert_eq!(state, DeliveryState::Sent);
    assert!(attempts >= 4, "{attempts}");
    assert_eq!(w.jobs("otp", "dropped_expired"), 0);
    running.stop().await;
}

#[tokio::test]
async fn a_connection_dropped_by_the_server_is_retried() {
    let w = World::new("Acme");
    let server = SmtpServer::start().await;
    server.set_down(true);
    let queue = w.sqlite_queue().await;
    queue.enqueue(w.otp_job("Acme", "310987", 300)).await.unwrap();
    let running = w.start(&queue, smtp(&server));
    wait_for("failed attempts", || w.jobs("otp", "retried") >= 2).await;
    assert!(server.connections() >= 2);
    server.set_down(false);
    wait_for("the message", || server.messages().len() == 1).await;
    running.stop().await;
    assert_eq!(server.messages().len(), 1);
}

#[tokio::test]
async fn a_permanent_refusal_fails_without_retry() {
    let w = World::new("Acme");
    let server = SmtpServer::start().await;
    server.set_reject_recipients(true);
    let queue = w.sqlite_queue().await;
    let job = w.otp_job("Acme", "310988", 300);
    let delivery = job.delivery_id;
    queue.enqueue(job).await.unwrap();
    let running = w.start(&queue, smtp(&server));
    wait_for("the failure", || w.jobs("otp", "failed") == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.jobs("otp", "retried"), 0, "a 5xx answer is not retried");
    assert_eq!(server.connections(), 1);
    assert!(server.messages().is_empty());
    assert_eq!(w.delivery(delivery).0, DeliveryState::Failed);
    running.stop().await;
}

#[tokio::test]
async fn an_expired_job_is_dropped_and_never_sent() {
    let w = World::new("Acme");
    let server = SmtpServer::start().await;
    let queue = w.sqlite_queue().await;
    let job = w.otp_job("Acme", "246801", 300);
    let delivery = job.delivery_id;
    queue.enqueue(job).await.unwrap();
    w.clock.advance_secs(301); // the worker comes too late

    let running = w.start(&queue, smtp(&server));
    wait_for("the drop", || w.jobs("otp", "dropped_expired") == 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(server.messages().is_empty());
    assert_eq!(server.connections(), 0);
    assert_eq!(w.delivery(delivery).0, DeliveryState::Dropped);
    assert_eq!(w.jobs("otp", "sent"), 0);
    running.stop().await;
}

#[tokio::test]
async fn a_code_expiring_while_smtp_is_down_is_never_sent_late() {
    let w = World::new("Acme");
    let addr = reserve_port();
    let queue = w.sqlite_queue().await;
    let job = w.otp_job("Acme", "864200", 300);
    let delivery = job.delivery_id;
    queue.enqueue(job).await.unwrap();
    let config = MailConfig::for_test(TransportConfig::Smtp(Sensitive(format!("smtp://{addr}"))));
    let running = w.start(&queue, config);

    wait_for("failed attempts", || w.jobs("otp", "retried") >= 2).await;
    w.clock.advance_secs(300);
    wait_for("the drop", || w.jobs("otp", "dropped_expired") == 1).await;
    let server = SmtpServer::start_on(addr).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(server.messages().is_empty(), "never sent late");
    assert_eq!(w.delivery(delivery).0, DeliveryState::Dropped);
    running.stop().await;
}

#[tokio::test]
async fn a_voided_code_is_dropped() {
    let w = World::new("Acme");
    let server = SmtpServer::start().await;
    let queue = w.sqlite_queue().await;
    let job = w.otp_job("Acme", "135790", 300);
    let delivery = job.delivery_id;
    let (user, now) = (w.user, w.clock.now());
    // A newer code (or a reset) voided it before the worker got to it.
    w.store.run_blocking(move |c| email_codes::void_for_user(c, user, now)).unwrap();
    queue.enqueue(job).await.unwrap();
    let running = w.start(&queue, smtp(&server));
    wait_for("the drop", || w.jobs("otp", "dropped_expired") == 1).await;
    assert!(server.messages().is_empty());
    assert_eq!(w.delivery(delivery).0, DeliveryState::Dropped);
    running.stop().await;
}

// --- at most one message per job ---------------------------------------------------------

#[tokio::test]
async fn a_job_retried_after_a_confirmed_send_does_not_send_again() {
    let w = World::new("Acme");
    let server = SmtpServer::start().await;
    let config = smtp(&server);
    let deliverer = w.deliverer(&config);
    let job = w.otp_job("Acme", "902468", 300);
    let (_tx, mut stop) = watch::channel(false);

    assert_eq!(deliverer.deliver(job.delivery_id, &mut stop).await, Outcome::Sent);
    // The same job again (an apalis retry, or a redelivery after a lost acknowledgement).
    assert_eq!(deliverer.deliver(job.delivery_id, &mut stop).await, Outcome::AlreadyHandled);
    assert_eq!(server.messages().len(), 1);
    assert_eq!(w.jobs("otp", "sent"), 1);

    // Through the queue: the same job pushed twice still makes one message.
    let queue = w.sqlite_queue().await;
    let job = w.otp_job("Acme", "902470", 300);
    queue.enqueue(job).await.unwrap();
    queue.enqueue(job).await.unwrap();
    let running = w.start(&queue, config);
    wait_for("the message", || server.messages().len() == 2).await;
    while queue.depth().await.unwrap() != 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.messages().len(), 2);
    running.stop().await;
}

#[tokio::test]
async fn a_delivery_claimed_elsewhere_is_not_sent_twice() {
    let w = World::new("Acme");
    let server = SmtpServer::start().await;
    let deliverer = w.deliverer(&smtp(&server));
    let job = w.otp_job("Acme", "111222", 300);
    let id = job.delivery_id;
    let now = w.clock.now();
    // Another worker holds a fresh claim on it and is sending.
    assert!(w.store.run_blocking(move |c| deliveries::claim(c, id, now, chrono::Duration::seconds(60))).unwrap());
    let (_tx, mut stop) = watch::channel(false);
    assert_eq!(deliverer.deliver(id, &mut stop).await, Outcome::AlreadyHandled);
    assert!(server.messages().is_empty());
    // Finished elsewhere: a late copy stops too.
    w.store.run_blocking(move |c| deliveries::finish(c, id, DeliveryState::Sent, &Attempt::default(), now)).unwrap();
    assert_eq!(deliverer.deliver(id, &mut stop).await, Outcome::AlreadyHandled);
    assert!(server.messages().is_empty());
}

// --- permanent failures ------------------------------------------------------------------

#[tokio::test]
async fn a_job_that_cannot_be_unsealed_fails_without_retry() {
    let w = World::new("Acme");
    let server = SmtpServer::start().await;
    let queue = w.sqlite_queue().await;
    // Sealed for another delivery: the AAD does not match.
    let job = w.otp_job_sealed_for("Acme", "123123", 300, Some(DeliveryId::new()));
    let delivery = job.delivery_id;
    queue.enqueue(job).await.unwrap();
    let running = w.start(&queue, smtp(&server));
    wait_for("the failure", || w.jobs("otp", "failed") == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.jobs("otp", "failed"), 1, "not retried");
    assert_eq!(w.jobs("otp", "retried"), 0);
    assert!(server.messages().is_empty());
    assert_eq!(w.delivery(delivery).0, DeliveryState::Failed);
    running.stop().await;
}

/// DESIGN.md 5.8: a worker started with another key (or before a rotation reached it) never
/// drops a mail it cannot open: it counts it, logs it, and leaves it for a worker that can.
#[tokio::test]
async fn a_job_sealed_under_a_key_the_worker_lacks_is_left_for_one_that_has_it() {
    let mut w = World::new("Acme");
    let server = SmtpServer::start().await;
    let queue = w.sqlite_queue().await;
    let job = w.otp_job("Acme", "135791", 300);
    let delivery = job.delivery_id;
    let other = ServerKey::parse(&"43".repeat(32)).unwrap();
    w.keys = Keys::new(&other);
    queue.enqueue(job).await.unwrap();
    let running = w.start(&queue, smtp(&server));
    let refused = || w.metrics.sealed_open_failures.with_label_values(&["otp"]).get();
    wait_for("the refusal", || refused() >= 1).await;
    running.stop().await;
    assert!(server.messages().is_empty());
    assert_eq!(w.jobs("otp", "failed"), 0, "not failed");
    assert_eq!(w.delivery(delivery).0, DeliveryState::Pending, "left for retry");
    // A worker that has the key (here as a previous key, after a rotation) sends it, once
    // the job's in-flight lease has run out and the sweep queued it again.
    w.keys = Keys::with_previous(&other, &[ServerKey::parse(&"42".repeat(32)).unwrap()]);
    w.clock.advance_secs(10);
    let running = w.start(&queue, smtp(&server));
    wait_for("the message", || server.messages().len() == 1).await;
    assert_eq!(six_digit_runs(parse(&server.messages()[0]).part("text/plain")), vec!["135791"]);
    wait_for("the sent mark", || w.delivery(delivery).0 == DeliveryState::Sent).await;
    running.stop().await;
}

#[tokio::test]
async fn unknown_deliveries_and_undecodable_jobs_do_not_jam_the_queue() {
    let w = World::new("Acme");
    let server = SmtpServer::start().await;
    let queue = w.sqlite_queue().await;
    queue.push_value(serde_json::json!({"type": "carrier_pigeon", "sealed": "x"})).await.unwrap();
    queue.enqueue(DeliveryJob { delivery_id: DeliveryId::new() }).await.unwrap(); // no such row
    queue.enqueue(w.otp_job("Acme", "424242", 300)).await.unwrap();
    let running = w.start(&queue, smtp(&server));
    wait_for("the good message", || server.messages().len() == 1).await;
    assert_eq!(w.jobs("otp", "failed"), 0, "a job without a row is ignored, not counted");
    assert_eq!(six_digit_runs(parse(&server.messages()[0]).part("text/plain")), vec!["424242"]);
    running.stop().await;
}

// --- durability and shutdown -------------------------------------------------------------

#[tokio::test]
async fn the_embedded_queue_survives_reopening() {
    let w = World::new("Acme");
    let server = SmtpServer::start().await;
    {
        let queue = w.sqlite_queue().await;
        queue.enqueue(w.otp_job("Acme", "314159", 300)).await.unwrap();
        assert_eq!(queue.depth().await.unwrap(), 1);
        queue.close().await;
    }
    assert!(w.dir.path().join("queue.db").exists(), "its own file, beside the diesel database");

    let queue = w.sqlite_queue().await;
    assert_eq!(queue.depth().await.unwrap(), 1);
    let running = w.start(&queue, smtp(&server));
    wait_for("the message", || server.messages().len() == 1).await;
    assert_eq!(six_digit_runs(parse(&server.messages()[0]).part("text/plain")), vec!["314159"]);
    running.stop().await;
    // Housekeeping: the finished job is purged (once its acknowledgement is written).
    let mut purged = 0;
    for _ in 0..200 {
        purged += queue.vacuum(Duration::ZERO).await.unwrap();
        if purged > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(purged, 1);
}

#[tokio::test]
async fn shutdown_during_a_wait_leaves_the_delivery_to_the_next_process() {
    let w = World::new("Acme");
    let addr = reserve_port();
    let queue = w.sqlite_queue().await;
    let job = w.otp_job("Acme", "271828", 300);
    let delivery = job.delivery_id;
    queue.enqueue(job).await.unwrap();
    let mut config = MailConfig::for_test(TransportConfig::Smtp(Sensitive(format!("smtp://{addr}"))));
    config.retry_initial = Duration::from_secs(5); // the worker sits waiting when shutdown comes
    config.retry_max = Duration::from_secs(5);
    config.sweep_interval = Duration::from_secs(10); // a wait this long is held by the worker
    let running = w.start(&queue, config.clone());
    wait_for("a failed attempt", || w.jobs("otp", "retried") == 1).await;
    let took = running.stop().await;
    assert!(took < Duration::from_secs(2), "the wait is interrupted: {took:?}");
    assert_eq!(w.delivery(delivery).0, DeliveryState::Pending);
    queue.close().await;

    // Next start (a new process, its queue lost): the sweep finds the released delivery once
    // its retry is due, and it goes out once SMTP is back.
    for file in ["queue.db", "queue.db-wal", "queue.db-shm"] {
        let _ = std::fs::remove_file(w.dir.path().join(file));
    }
    let queue = w.sqlite_queue().await;
    assert_eq!(queue.depth().await.unwrap(), 0);
    let server = SmtpServer::start_on(addr).await;
    config.sweep_interval = Duration::from_millis(50);
    let running = w.start(&queue, config);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(server.messages().is_empty(), "not before the retry is due");
    w.clock.advance_secs(5);
    wait_for("the message", || server.messages().len() == 1).await;
    wait_for("the count", || w.jobs("otp", "sent") == 1).await;
    assert_eq!(w.delivery(delivery).0, DeliveryState::Sent);
    running.stop().await;
}

#[tokio::test]
async fn two_processes_may_open_a_fresh_embedded_queue_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data").join("queue.db");
    let (a, b) = tokio::join!(MailQueue::open_sqlite(&path), MailQueue::open_sqlite(&path));
    a.unwrap().check().await.unwrap();
    b.unwrap().check().await.unwrap();
}

#[tokio::test]
async fn ping_depth_and_debug() {
    let w = World::new("Acme");
    let queue = w.sqlite_queue().await;
    queue.ping().await.unwrap();
    assert_eq!(queue.backend_name(), "sqlite");
    assert_eq!(queue.depth().await.unwrap(), 0);
    let job = w.otp_job("Acme", "808080", 300);
    queue.enqueue(job).await.unwrap();
    queue.enqueue(job).await.unwrap();
    assert_eq!(queue.depth().await.unwrap(), 2);
    assert!(!format!("{queue:?}").contains("808080"));
    assert!(MailQueue::open(Some("amqp://x"), w.dir.path()).await.is_err());
    let config = MailConfig::for_test(TransportConfig::Smtp(Sensitive("smtp://u:s3cret@h:25".into())));
    assert!(!format!("{config:?}").contains("s3cret"));
    let d = w.deliverer(&config);
    assert!(!format!("{d:?}").contains("s3cret"));
}

#[tokio::test]
async fn bad_settings_are_refused_at_start() {
    let w = World::new("Acme");
    let outbox = w.dir.path().join("new-outbox");
    MailConfig::for_test(TransportConfig::Outbox(outbox.clone())).check().unwrap();
    assert!(outbox.is_dir());
    assert!(matches!(
        MailConfig::for_test(TransportConfig::Smtp(Sensitive("smtp://h?tls=sometimes".into()))).check(),
        Err(MailError::Transport(_))
    ));
    let mut config = MailConfig::for_test(TransportConfig::Smtp(Sensitive("gopher://h".into())));
    assert!(matches!(
        Deliverer::new(w.store.clone(), w.keys.clone(), w.metrics.clone(), w.clock(), &config),
        Err(MailError::Transport(_))
    ));
    config.transport = TransportConfig::Smtp(Sensitive("smtp://h:25".into()));
    config.from = "not an address".into();
    assert!(matches!(
        Deliverer::new(w.store.clone(), w.keys.clone(), w.metrics.clone(), w.clock(), &config),
        Err(MailError::From(_))
    ));
    for url in ["smtp://h:2525", "smtp://h:587?tls=required", "smtps://h:465", "smtp://user:pass@h"] {
        config.transport = TransportConfig::Smtp(Sensitive(url.into()));
        config.from = "Latchkey <no-reply@localhost>".into();
        assert!(
            Deliverer::new(w.store.clone(), w.keys.clone(), w.metrics.clone(), w.clock(), &config).is_ok(),
            "{url}"
        );
    }
}

// --- Redis ---------------------------------------------------------------------------------

/// The Redis URL of the test environment, if any.
fn redis_url() -> Option<String> {
    std::env::var("LATCHKEY_TEST_REDIS_URL").ok().filter(|u| !u.trim().is_empty())
}

/// A namespace of its own for one test.
fn namespace(test: &str) -> String {
    format!("latchkey-test-{test}-{}", DeliveryId::new().0.simple())
}

/// Deletes every key of `namespace`.
async fn drop_namespace(url: &str, namespace: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{namespace}:*")).query_async(&mut conn).await.unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query_async(&mut conn).await.unwrap();
    }
}

#[tokio::test]
async fn redis_queue_end_to_end() {
    let Some(url) = redis_url() else { return };
    let ns = namespace("e2e");
    let queue = MailQueue::open(Some(&format!("{url}?namespace={ns}")), std::path::Path::new("/nonexistent"))
        .await
        .expect("LATCHKEY_TEST_REDIS_URL is set, so Redis must be reachable");
    assert_eq!(queue.backend_name(), "redis");
    queue.ping().await.unwrap();

    let w = World::new("Acme");
    let server = SmtpServer::start().await;
    let job = w.otp_job("Acme", "606060", 300);
    let delivery = job.delivery_id;
    queue.enqueue(job).await.unwrap();
    let (reset, token) = w.reset_job("Acme");
    queue.enqueue(reset).await.unwrap();
    assert_eq!(queue.depth().await.unwrap(), 2);

    let running = w.start(&queue, smtp(&server));
    wait_for("both messages", || server.messages().len() == 2).await;
    let all: Vec<_> = server.messages().iter().map(|m| parse(m).all_text()).collect();
    assert!(all.iter().any(|t| six_digit_runs(t).contains(&"606060".to_owned())));
    assert!(all.iter().any(|t| reset_token(t).as_deref() == Some(token.expose())));
    wait_for("the counts", || w.jobs("otp", "sent") == 1 && w.jobs("reset_link", "sent") == 1).await;
    assert_eq!(w.delivery(delivery).0, DeliveryState::Sent);
    running.stop().await;
    assert_eq!(queue.vacuum(Duration::ZERO).await.unwrap(), 2, "finished jobs are purged");
    drop_namespace(&url, &ns).await;
}

#[tokio::test]
async fn redis_queue_keeps_jobs_for_a_later_worker_and_namespaces_are_isolated() {
    let Some(url) = redis_url() else { return };
    let (ns, other_ns) = (namespace("keep"), namespace("other"));
    let w = World::new("Acme");
    let server = SmtpServer::start().await;
    {
        let queue = MailQueue::open_redis(&url, &ns).await.expect("Redis must be reachable");
        queue.enqueue(w.otp_job("Acme", "717171", 300)).await.unwrap();
    }
    // A worker on another namespace does not see the job.
    let other = MailQueue::open_redis(&url, &other_ns).await.expect("Redis must be reachable");
    let running = w.start(&other, smtp(&server));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(server.messages().is_empty());
    running.stop().await;

    let queue = MailQueue::open_redis(&url, &ns).await.expect("Redis must be reachable");
    assert_eq!(queue.depth().await.unwrap(), 1);
    let running = w.start(&queue, smtp(&server));
    wait_for("the message", || server.messages().len() == 1).await;
    running.stop().await;
    drop_namespace(&url, &ns).await;
    drop_namespace(&url, &other_ns).await;
}

#[tokio::test]
async fn redis_shutdown_hands_a_waiting_job_back() {
    let Some(url) = redis_url() else { return };
    let ns = namespace("shutdown");
    let w = World::new("Acme");
    let addr = reserve_port();
    let queue = MailQueue::open_redis(&url, &ns).await.expect("Redis must be reachable");
    let job = w.otp_job("Acme", "818181", 300);
    let delivery = job.delivery_id;
    queue.enqueue(job).await.unwrap();
    let mut config = MailConfig::for_test(TransportConfig::Smtp(Sensitive(format!("smtp://{addr}"))));
    config.retry_initial = Duration::from_secs(5);
    config.retry_max = Duration::from_secs(5);
    let running = w.start(&queue, config.clone());
    wait_for("a failed attempt", || w.jobs("otp", "retried") == 1).await;
    assert!(running.stop().await < Duration::from_secs(2));
    assert_eq!(w.delivery(delivery).0, DeliveryState::Pending);

    // The retry was left to the sweep: once it is due, the next worker sends it.
    let server = SmtpServer::start_on(addr).await;
    w.clock.advance_secs(5);
    let running = w.start(&queue, config);
    wait_for("the message", || server.messages().len() == 1).await;
    running.stop().await;
    drop_namespace(&url, &ns).await;
}

#[tokio::test]
async fn a_worker_whose_backend_fails_is_restarted() {
    let Some(url) = redis_url() else { return };
    let ns = namespace("restart");
    let w = World::new("Acme");
    let server = SmtpServer::start().await;
    let queue = MailQueue::open_redis(&url, &ns).await.expect("Redis must be reachable");
    let running = w.start(&queue, smtp(&server));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Forget the worker's registration: its next fetch fails ("worker not registered").
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("DEL").arg(format!("{ns}:mail:workers")).query_async(&mut conn).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    queue.enqueue(w.otp_job("Acme", "515151", 300)).await.unwrap();
    wait_for("the message from the restarted worker", || server.messages().len() == 1).await;
    let workers: Vec<String> =
        redis::cmd("ZRANGE").arg(format!("{ns}:mail:workers")).arg(0).arg(-1).query_async(&mut conn).await.unwrap();
    let pid = std::process::id();
    assert!(
        workers.len() == 1 && workers[0].starts_with(&format!("latchkey-mail-{pid}-2-")),
        "a second instance took over: {workers:?}"
    );
    running.stop().await;
    drop_namespace(&url, &ns).await;
}

#[test]
fn the_redis_test_fails_when_redis_is_configured_but_down() {
    // `MailQueue::open_redis` on a closed port is an error (the Redis tests `expect` it).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let addr = reserve_port();
    let r = rt.block_on(MailQueue::open_redis(&format!("redis://{addr}"), "x"));
    assert!(matches!(r, Err(MailError::Redis(_))), "{r:?}");
}
