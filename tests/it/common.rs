//! The test harness.

use std::net::TcpListener;
use std::sync::Arc;

use actix::Arbiter;
use actix_web::dev::ServerHandle;
use chrono::{DateTime, Duration, Utc};
use latchkey::app::Core;
use latchkey_core::totp::TotpSecret;
use latchkey_core::{Config, Keys, ManualClock};
use latchkey_store::repo::deliveries;
use latchkey_store::testing::ScratchDb;
use latchkey_tenant::outbox::{DeliveryJob, MailPayload, MemoryOutbox, open_payload};
use serde_json::{Value, json};

pub const PASSWORD: &str = "correct horse battery staple";
pub const OPERATOR: &str = "test-operator-token";

/// Which database a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// SQLite always; Postgres too when `LATCHKEY_TEST_DATABASE_URL` is set.
pub fn backends() -> Vec<Db> {
    let mut v = vec![Db::Sqlite];
    if std::env::var("LATCHKEY_TEST_DATABASE_URL").is_ok_and(|u| !u.is_empty()) {
        v.push(Db::Postgres);
    }
    v
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Res {
    pub status: u16,
    pub body: Value,
    pub headers: actix_web::http::header::HeaderMap,
}

impl Res {
    pub fn code(&self) -> &str {
        self.body.get("code").and_then(Value::as_str).unwrap_or("")
    }
    pub fn s(&self, key: &str) -> String {
        self.body.get(key).and_then(Value::as_str).unwrap_or_default().to_owned()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
    }
}

/// One running app.
pub struct TestApp {
    pub base: String,
    pub clock: ManualClock,
    pub outbox: MemoryOutbox,
    pub keys: Keys,
    pub core: Core,
    pub db: Db,
    handle: ServerHandle,
    client: awc::Client,
    _dir: Arc<tempfile::TempDir>,
    _pg: Option<Arc<ScratchDb>>,
}

/// A fixed, realistic start instant (mid-step so ±1 step tests are exact).
pub fn start_instant() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-02T09:00:10Z").unwrap().with_timezone(&Utc)
}

impl TestApp {
    /// Starts an app on `db` with the test configuration, changed by `tweak`.
    pub async fn spawn(db: Db, tweak: impl FnOnce(&mut Config)) -> TestApp {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let mut config = Config::for_test();
        config.data_dir = dir.path().to_path_buf();
        let pg = match db {
            Db::Sqlite => {
                config.database_url = Some(format!("sqlite://{}", dir.path().join("latchkey.db").display()));
                None
            }
            Db::Postgres => {
                let admin = std::env::var("LATCHKEY_TEST_DATABASE_URL").unwrap();
                let scratch = latchkey_store::testing::scratch_postgres(&admin)
                    .expect("Postgres from LATCHKEY_TEST_DATABASE_URL");
                config.database_url = Some(scratch.url.clone());
                Some(Arc::new(scratch))
            }
        };
        tweak(&mut config);
        Self::spawn_with(db, config, dir, pg, ManualClock::new(start_instant())).await
    }

    /// A second app process on the same database and clock (for cross-process races).
    pub async fn twin(&self) -> TestApp {
        let config = (*self.core.config).clone();
        Self::spawn_with(self.db, config, self._dir.clone(), self._pg.clone(), self.clock.clone()).await
    }

    /// Another app process on the same database and clock, with its configuration changed by
    /// `tweak` (e.g. another server key); the error of its start-up if it refuses.
    pub async fn twin_with(&self, tweak: impl FnOnce(&mut Config)) -> Result<TestApp, latchkey::app::StartError> {
        let mut config = (*self.core.config).clone();
        tweak(&mut config);
        Core::open(config.clone(), Arc::new(self.clock.clone()))?;
        Ok(Self::spawn_with(self.db, config, self._dir.clone(), self._pg.clone(), self.clock.clone()).await)
    }

    async fn spawn_with(
        db: Db,
        config: Config,
        dir: Arc<tempfile::TempDir>,
        pg: Option<Arc<ScratchDb>>,
        clock: ManualClock,
    ) -> TestApp {
        let core = Core::open(config, Arc::new(clock.clone())).unwrap();
        let outbox = MemoryOutbox::default();
        let service = core.service(Arc::new(outbox.clone()), Arbiter::current()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = core.serve_http(service, listener, 2).unwrap();
        let handle = server.handle();
        actix_rt::spawn(server);
        let client = awc::Client::builder().timeout(std::time::Duration::from_secs(60)).finish();
        TestApp { base, clock, outbox, keys: core.keys.clone(), core, db, handle, client, _dir: dir, _pg: pg }
    }

    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>, token: Option<&str>) -> Res {
        self.call_with(method, path, body, token, &[]).await
    }

    pub async fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Res {
        let method = actix_web::http::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.client.request(method, format!("{}{}", self.base, path));
        for (k, v) in headers {
            req = req.insert_header((*k, *v));
        }
        if let Some(t) = token {
            req = req.insert_header(("Authorization", format!("Bearer {t}")));
        }
        let mut res = match body {
            Some(b) => req.send_json(&b).await.unwrap(),
            None => req.send().await.unwrap(),
        };
        let bytes = res.body().limit(10 << 20).await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Res { status: res.status().as_u16(), body, headers: res.headers().clone() }
    }

    pub async fn raw(&self, method: &str, path: &str, content_type: &str, body: Vec<u8>) -> Res {
        let method = actix_web::http::Method::from_bytes(method.as_bytes()).unwrap();
        let mut res = self
            .client
            .request(method, format!("{}{}", self.base, path))
            .insert_header(("Content-Type", content_type))
            .send_body(body)
            .await
            .unwrap();
        let bytes = res.body().limit(10 << 20).await.unwrap();
        let body =
            serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Res { status: res.status().as_u16(), body, headers: res.headers().clone() }
    }

    pub async fn post(&self, path: &str, body: Value) -> Res {
        self.call("POST", path, Some(body), None).await
    }

    pub async fn post_as(&self, token: &str, path: &str, body: Value) -> Res {
        self.call("POST", path, Some(body), Some(token)).await
    }

    pub async fn get_as(&self, token: &str, path: &str) -> Res {
        self.call("GET", path, None, Some(token)).await
    }

    pub async fn patch_as(&self, token: &str, path: &str, body: Value) -> Res {
        self.call("PATCH", path, Some(body), Some(token)).await
    }

    /// Creates tenant `slug` with admin `admin@<slug>.test`; returns the admin's user id.
    pub async fn tenant(&self, slug: &str) -> String {
        let r = self
            .call(
                "POST",
                "/api/v1/tenants",
                Some(json!({"slug": slug, "name": format!("{slug} Support"), "admin": {"email": admin(slug), "name": "Ada", "password": PASSWORD}})),
                Some(OPERATOR),
            )
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        r.body["admin"]["id"].as_str().unwrap().to_owned()
    }

    pub async fn login(&self, slug: &str, email: &str) -> Res {
        self.post("/api/v1/auth", json!({"tenant": slug, "email": email, "password": PASSWORD})).await
    }

    /// Signs in with the password alone (2FA off); returns the token.
    pub async fn token(&self, slug: &str, email: &str) -> String {
        let r = self.login(slug, email).await;
        assert_eq!(r.status, 200, "{r:?}");
        r.s("authentication_token")
    }

    /// Signs in with 2FA on; returns the challenge.
    pub async fn challenge(&self, slug: &str, email: &str) -> Value {
        let r = self.login(slug, email).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.body["authentication_token"].is_null(), "{r:?}");
        r.body["two_factor"].clone()
    }

    /// Signs in with `password` and 2FA on; returns the challenge.
    pub async fn challenge_with(&self, slug: &str, email: &str, password: &str) -> Value {
        let r = self.post("/api/v1/auth", json!({"tenant": slug, "email": email, "password": password})).await;
        assert_eq!(r.status, 200, "{r:?}");
        r.body["two_factor"].clone()
    }

    /// Creates a user of `role` as the admin.
    pub async fn user(&self, admin_token: &str, email: &str, role: &str) -> String {
        let r = self
            .post_as(
                admin_token,
                "/api/v1/agents",
                json!({"email": email, "name": "Someone", "role": role, "password": PASSWORD}),
            )
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        r.s("id")
    }

    /// The code an authenticator with `secret` shows now (offset in seconds).
    pub fn totp(&self, secret: &str, offset_secs: i64) -> String {
        totp_secret(secret).code_at(self.clock.now_utc() + Duration::seconds(offset_secs))
    }

    /// Turns 2FA on for the tenant with the admin's authenticator; returns the secret.
    pub async fn enable_authenticator(&self, admin_token: &str) -> String {
        let r = self
            .post_as(
                admin_token,
                "/api/v1/settings/two-factor/enable",
                json!({"password": PASSWORD, "method": "authenticator"}),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let secret = r.s("secret");
        let code = self.totp(&secret, 0);
        let c = self
            .post_as(
                admin_token,
                "/api/v1/settings/two-factor/enable/confirm",
                json!({"setup_token": r.s("setup_token"), "code": code}),
            )
            .await;
        assert_eq!(c.status, 200, "{c:?}");
        secret
    }

    /// Enrolls an authenticator on an `enroll` challenge; returns the secret.
    pub async fn enroll_authenticator(&self, challenge_token: &str) -> String {
        let r = self.post("/api/v1/auth/2fa/authenticator/setup", json!({"challenge_token": challenge_token})).await;
        assert_eq!(r.status, 200, "{r:?}");
        let secret = r.s("secret");
        let c = self
            .post(
                "/api/v1/auth/2fa/authenticator/confirm",
                json!({"challenge_token": challenge_token, "code": self.totp(&secret, 0)}),
            )
            .await;
        assert_eq!(c.status, 200, "{c:?}");
        secret
    }

    /// Moves the clock to the start of the next TOTP step (+1 s).
    pub fn next_step(&self) {
        let now = self.clock.now_utc().timestamp();
        self.clock.advance_secs(30 - now.rem_euclid(30) + 1);
    }

    /// Queued jobs so far.
    pub fn jobs(&self) -> Vec<DeliveryJob> {
        self.outbox.jobs()
    }

    /// The message of a queued mail delivery, opened from its row.
    pub fn payload(&self, job: &DeliveryJob) -> Option<MailPayload> {
        let id = job.delivery_id;
        let row = self.core.store.run_blocking(move |c| deliveries::get(c, id)).unwrap()?;
        Some(open_payload(&self.keys, id, row.payload.as_deref()?).unwrap())
    }

    /// The notices recorded for the tenant `slug` so far, oldest first, opened.
    pub fn notices(&self, slug: &str) -> Vec<latchkey_tenant::outbox::NoticeMail> {
        let slug = slug.to_owned();
        let keys = self.keys.clone();
        self.core
            .store
            .run_blocking(move |c| {
                let t = latchkey_store::repo::tenants::by_slug(c, &slug)?.expect("tenant");
                let rows = deliveries::of_tenant(c, t.id, deliveries::DeliveryKind::Notice)?;
                Ok(rows
                    .iter()
                    .map(|d| match open_payload(&keys, d.id, d.payload.as_deref().unwrap()).unwrap() {
                        MailPayload::Notice(n) => n,
                        other => panic!("not a notice: {other:?}"),
                    })
                    .collect())
            })
            .unwrap()
    }

    /// The plaintext code of the last queued email code to `to`.
    pub fn last_code(&self, to: &str) -> Option<String> {
        self.jobs().iter().rev().find_map(|j| match self.payload(j)? {
            MailPayload::Otp { to: t, code, .. } if t == to => Some(code),
            _ => None,
        })
    }

    /// The token of the last queued reset link to `to`.
    pub fn last_reset_token(&self, to: &str) -> Option<String> {
        self.jobs().iter().rev().find_map(|j| match self.payload(j)? {
            MailPayload::ResetLink { to: t, token, .. } if t == to => Some(token),
            _ => None,
        })
    }

    /// Emails a code on `challenge_token`; returns (answer, code).
    pub async fn send_code(&self, challenge_token: &str, to: &str) -> (Res, Option<String>) {
        let before = self.jobs().len();
        let r = self.post("/api/v1/auth/2fa/email/send", json!({"challenge_token": challenge_token})).await;
        let code = if self.jobs().len() > before { self.last_code(to) } else { None };
        (r, code)
    }

    pub async fn verify(&self, challenge_token: &str, method: &str, code: &str) -> Res {
        self.post(
            "/api/v1/auth/2fa/verify",
            json!({"challenge_token": challenge_token, "method": method, "code": code}),
        )
        .await
    }
}

pub fn admin(slug: &str) -> String {
    format!("admin@{slug}.test")
}

pub fn totp_secret(base32: &str) -> TotpSecret {
    let bytes = totp_rs::Secret::try_from_base32(base32).unwrap();
    TotpSecret::from_bytes(bytes.as_ref()).unwrap()
}

/// A code that is not `right`.
pub fn wrong(right: &str) -> String {
    let n: u32 = right.parse().unwrap();
    format!("{:06}", (n + 500_000) % 1_000_000)
}

pub trait ClockExt {
    fn now_utc(&self) -> DateTime<Utc>;
}

impl ClockExt for ManualClock {
    fn now_utc(&self) -> DateTime<Utc> {
        latchkey_core::Clock::now(self)
    }
}

/// A unique slug per call.
pub fn slug(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}
