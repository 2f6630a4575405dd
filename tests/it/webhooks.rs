//! Webhooks (DESIGN.md 5.6) end to end: the endpoints of the API, and deliveries made by the
//! real worker to a local HTTP receiver — signatures checked with an implementation of the
//! Standard Webhooks scheme written here (not the product's), retries, no redirects, the
//! SSRF guard at creation and at delivery, endpoints independent of each other.

use std::collections::VecDeque;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use latchkey_mail::MailConfig;
use serde_json::{Value, json};

use crate::common::*;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    answered: u16,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Default)]
struct Script {
    got: Vec<Received>,
    /// Statuses for the next requests (then 200).
    next: VecDeque<u16>,
}

/// A local receiver: records every request and answers what the script says; `/redirect`
/// answers 302 to `/elsewhere`.
struct Receiver {
    base: String,
    script: Arc<Mutex<Script>>,
    handle: actix_web::dev::ServerHandle,
}

impl Receiver {
    fn start() -> Self {
        let script = Arc::new(Mutex::new(Script::default()));
        let s = script.clone();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = HttpServer::new(move || {
            let s = s.clone();
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let s = s.clone();
                async move {
                    let mut script = s.lock().unwrap();
                    let status = if req.path() == "/redirect" { 302 } else { script.next.pop_front().unwrap_or(200) };
                    script.got.push(Received {
                        path: req.path().to_owned(),
                        headers: req
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                            .collect(),
                        body: body.to_vec(),
                        answered: status,
                    });
                    let mut r = HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap());
                    if status == 302 {
                        r.insert_header(("Location", "/elsewhere"));
                    }
                    r.body("ok")
                }
            }))
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Receiver { base, script, handle }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn got(&self) -> Vec<Received> {
        self.script.lock().unwrap().got.clone()
    }

    fn fail_next(&self, statuses: &[u16]) {
        self.script.lock().unwrap().next.extend(statuses);
    }

    async fn stop(&self) {
        self.handle.stop(false).await;
    }
}

/// The worker of `app` (its own queue and the real delivery code), until dropped.
struct Worker {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

async fn worker(app: &TestApp, tweak: impl FnOnce(&mut MailConfig)) -> Worker {
    let (queue, mut mail) = app.core.open_mail().await.unwrap();
    mail.sweep_interval = Duration::from_millis(50);
    mail.requeue = Duration::from_millis(1000);
    mail.webhooks.retry_initial = Duration::from_millis(20);
    mail.webhooks.retry_max = Duration::from_millis(40);
    mail.webhooks.timeout = Duration::from_secs(2);
    tweak(&mut mail);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let core = &app.core;
    let run = latchkey_mail::run_worker(
        queue,
        core.store.clone(),
        core.keys.clone(),
        core.metrics.clone(),
        core.clock.clone(),
        mail,
        async move {
            let _ = rx.await;
        },
    );
    actix_rt::spawn(run);
    Worker { stop: Some(tx) }
}

/// Verifies a delivery as a receiver would, with HMAC-SHA256 computed here.
fn verify(secret: &str, r: &Received) -> bool {
    let key = STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let (Some(id), Some(ts), Some(sig)) =
        (r.header("webhook-id"), r.header("webhook-timestamp"), r.header("webhook-signature"))
    else {
        return false;
    };
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&r.body);
    let want = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    sig.split(' ').any(|s| s == want)
}

async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..400 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

fn open(c: &mut latchkey_core::Config) {
    c.webhook_allow_http = true;
    c.webhook_allow_private = true;
}

/// A tenant (2FA off) with an agent; (slug, admin token, agent email, agent id).
async fn tenant(app: &TestApp) -> (String, String, String, String) {
    let t = slug("whk");
    app.tenant(&t).await;
    let a = app.token(&t, &admin(&t)).await;
    let agent = format!("agent@{t}.test");
    let id = app.user(&a, &agent, "agent").await;
    (t, a, agent, id)
}

async fn create(app: &TestApp, token: &str, url: &str, events: Value) -> Res {
    app.post_as(token, "/api/v1/webhooks", json!({"url": url, "events": events})).await
}

async fn deliveries(app: &TestApp, token: &str, hook: &str) -> Vec<Value> {
    let r = app.get_as(token, &format!("/api/v1/webhooks/{hook}/deliveries")).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.body["items"].as_array().cloned().unwrap_or_default()
}

#[actix_rt::test]
async fn deliveries_are_signed_retried_with_one_id_and_recorded() {
    for db in backends() {
        let app = TestApp::spawn(db, open).await;
        let recv = Receiver::start();
        let (t, a, agent, agent_id) = tenant(&app).await;
        let c = create(&app, &a, &recv.url("/hook"), json!(["signed_in"])).await;
        assert_eq!(c.status, 201, "{c:?}");
        let (hook, secret) = (c.s("id"), c.s("secret"));
        assert_eq!(STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap().len(), 32);
        let shown = app.get_as(&a, &format!("/api/v1/webhooks/{hook}")).await;
        assert!(shown.body.get("secret").is_none(), "{shown:?}");
        assert!(!format!("{:?}", app.get_as(&a, "/api/v1/webhooks").await.body).contains(&secret));

        let _w = worker(&app, |_| {}).await;
        recv.fail_next(&[500, 503]);
        app.token(&t, &agent).await;
        wait_until("three attempts", || recv.got().len() == 3).await;
        let got = recv.got();
        assert_eq!(got.iter().map(|r| r.answered).collect::<Vec<_>>(), vec![500, 503, 200], "{db:?}");
        assert!(got.iter().all(|r| verify(&secret, r)), "every attempt verifies: {got:?}");
        let ids: std::collections::BTreeSet<_> = got.iter().map(|r| r.header("webhook-id").unwrap()).collect();
        assert_eq!(ids.len(), 1, "one webhook-id across retries");
        assert!(got.iter().all(|r| r.header("content-type") == Some("application/json")));
        let body = got[2].json();
        assert_eq!(body["type"], "signed_in");
        assert_eq!(body["tenant"], t.as_str());
        assert_eq!(body["data"]["kind"], "signed_in");
        assert_eq!(body["data"]["subject_id"], agent_id.as_str());
        assert_eq!(body["data"]["id"], body["id"]);
        assert!(body["timestamp"].is_string());
        // The audit API shows the same event.
        let audit = app.get_as(&a, &format!("/api/v1/audit-events?kind=signed_in&subject_id={agent_id}")).await;
        assert_eq!(audit.body["items"][0], body["data"], "data is the event as the audit API shows it");

        let mut items = Vec::new();
        for _ in 0..100 {
            items = deliveries(&app, &a, &hook).await;
            if items.first().is_some_and(|i| i["status"] == "delivered") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(items.len(), 1, "{items:?}");
        let i = &items[0];
        assert_eq!(
            (i["status"].as_str(), i["attempts"].as_i64(), i["last_status"].as_i64()),
            (Some("delivered"), Some(3), Some(200))
        );
        assert_eq!(i["id"].as_str(), ids.iter().next().copied(), "the delivery's id is the webhook-id");
        assert_eq!(i["event_type"], "signed_in");
        assert_eq!(i["event_id"], body["id"]);

        // Metrics count each outcome.
        let m = app.core.metrics.render().unwrap();
        assert!(m.contains("latchkey_webhook_deliveries_total{outcome=\"delivered\"} 1"), "{m}");
        assert!(m.contains("latchkey_webhook_deliveries_total{outcome=\"retried\"} 2"), "{m}");

        // Rotation: later deliveries verify with the new secret only.
        let r = app.post_as(&a, &format!("/api/v1/webhooks/{hook}/rotate-secret"), json!({})).await;
        assert_eq!(r.status, 200, "{r:?}");
        let new = r.s("secret");
        assert_ne!(new, secret);
        app.token(&t, &agent).await;
        wait_until("the next delivery", || recv.got().len() == 4).await;
        let last = recv.got().pop().unwrap();
        assert!(verify(&new, &last) && !verify(&secret, &last));

        // Disabled: nothing more is delivered; the record says so.
        let r = app.patch_as(&a, &format!("/api/v1/webhooks/{hook}"), json!({"enabled": false})).await;
        assert_eq!((r.status, r.body["enabled"].as_bool()), (200, Some(false)), "{r:?}");
        app.token(&t, &agent).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(recv.got().len(), 4, "no delivery while disabled");

        let kinds: Vec<String> = app.get_as(&a, "/api/v1/audit-events").await.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_owned())
            .collect();
        assert!(kinds.contains(&"webhook_created".to_owned()) && kinds.contains(&"webhook_changed".to_owned()));
        let r = app.call("DELETE", &format!("/api/v1/webhooks/{hook}"), None, Some(&a)).await;
        assert_eq!(r.status, 204);
        assert_eq!(app.get_as(&a, &format!("/api/v1/webhooks/{hook}")).await.status, 404);
        recv.stop().await;
        app.stop().await;
    }
}

#[actix_rt::test]
async fn redirects_are_not_followed_and_attempts_end_in_failed() {
    for db in backends() {
        let app = TestApp::spawn(db, open).await;
        let recv = Receiver::start();
        let (t, a, agent, _) = tenant(&app).await;
        let c = create(&app, &a, &recv.url("/redirect"), json!(["*"])).await;
        assert_eq!(c.status, 201, "{c:?}");
        let hook = c.s("id");
        // Before the worker starts: the creation's own event and the sign-in are owed.
        app.token(&t, &agent).await;
        let _w = worker(&app, |m| m.webhooks.max_attempts = 3).await;
        wait_until("six attempts", || recv.got().len() >= 6).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let got = recv.got();
        assert_eq!(got.len(), 6, "3 attempts for each of the 2 events: {got:?}");
        assert!(got.iter().all(|r| r.path == "/redirect"), "the Location is never followed");
        let mut items = Vec::new();
        for _ in 0..100 {
            items = deliveries(&app, &a, &hook).await;
            if items.iter().all(|i| i["status"] == "failed") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(items.len(), 2, "{items:?}");
        for i in &items {
            assert_eq!(
                (i["status"].as_str(), i["attempts"].as_i64(), i["last_status"].as_i64()),
                (Some("failed"), Some(3), Some(302)),
                "{i}"
            );
            assert!(i["next_attempt_at"].is_null());
        }
        // The admin's retry: a fresh run of attempts.
        recv.script.lock().unwrap().got.clear();
        let id = items[0]["id"].as_str().unwrap();
        let r = app.post_as(&a, &format!("/api/v1/webhooks/{hook}/deliveries/{id}/retry"), json!({})).await;
        assert_eq!(r.status, 202, "{r:?}");
        wait_until("three more attempts", || recv.got().len() >= 3).await;
        let r = app
            .post_as(&a, &format!("/api/v1/webhooks/{hook}/deliveries/{}/retry", uuid::Uuid::new_v4()), json!({}))
            .await;
        assert_eq!(r.status, 404);
        let m = app.core.metrics.render().unwrap();
        assert!(m.contains("latchkey_webhook_deliveries_total{outcome=\"failed\"} 2"), "{m}");
        recv.stop().await;
        app.stop().await;
    }
}

#[actix_rt::test]
async fn endpoints_are_independent() {
    let app = TestApp::spawn(Db::Sqlite, open).await;
    let down = Receiver::start();
    let up = Receiver::start();
    let (t, a, agent, _) = tenant(&app).await;
    down.fail_next(&[500; 50]);
    assert_eq!(create(&app, &a, &down.url("/down"), json!(["signed_in"])).await.status, 201);
    assert_eq!(create(&app, &a, &up.url("/up"), json!(["signed_in"])).await.status, 201);
    let _w = worker(&app, |m| {
        m.webhooks.retry_initial = Duration::from_millis(200);
        m.webhooks.retry_max = Duration::from_millis(200);
    })
    .await;
    for _ in 0..3 {
        app.token(&t, &agent).await;
    }
    wait_until("the healthy endpoint's deliveries", || up.got().len() == 3).await;
    assert!(up.got().iter().all(|r| r.answered == 200));
    assert!(!down.got().is_empty());
    down.stop().await;
    up.stop().await;
    app.stop().await;
}

#[actix_rt::test]
async fn the_ssrf_guard_refuses_at_creation() {
    let app = TestApp::spawn(Db::Sqlite, |_| {}).await;
    let (_, a, _, _) = tenant(&app).await;
    let long = format!("https://example.com/{}", "a".repeat(2048));
    for url in [
        "http://example.com/hook",
        "file:///etc/passwd",
        "gopher://example.com/x",
        "ftp://example.com/x",
        "https://",
        "https://user:pw@example.com/x",
        "/relative",
        long.as_str(),
        "https://127.0.0.1/x",
        "https://localhost/x",
        "https://10.0.0.8/x",
        "https://172.16.5.4/x",
        "https://192.168.0.1/x",
        "https://169.254.169.254/latest/meta-data",
        "https://224.0.0.1/x",
        "https://0.0.0.0/x",
        "https://[::1]/x",
        "https://[::]/x",
        "https://[fd00::1]/x",
        "https://[fe80::1]/x",
        "https://[ff02::1]/x",
        "https://[::ffff:127.0.0.1]/x",
        "https://[::ffff:10.0.0.1]/x",
        "https://no-such-host.invalid/x",
    ] {
        let r = create(&app, &a, url, json!(["signed_in"])).await;
        assert_eq!((r.status, r.code()), (400, "invalid_request"), "{url}: {r:?}");
    }
    for events in [json!([]), json!(["nope"]), json!(["*", "signed_in"]), json!("signed_in"), json!([1])] {
        let r = create(&app, &a, "https://example.com/x", events.clone()).await;
        assert_eq!((r.status, r.code()), (400, "invalid_request"), "{events}: {r:?}");
    }
    let r = app
        .post_as(
            &a,
            "/api/v1/webhooks",
            json!({"url": "https://example.com/x", "events": ["*"], "description": "a\r\nb"}),
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "invalid_request"), "{r:?}");
    app.stop().await;
}

#[actix_rt::test]
async fn the_ssrf_guard_refuses_again_at_delivery() {
    let app = TestApp::spawn(Db::Sqlite, open).await;
    let recv = Receiver::start();
    let (t, a, agent, _) = tenant(&app).await;
    let c = create(&app, &a, &recv.url("/hook"), json!(["signed_in"])).await;
    assert_eq!(c.status, 201, "{c:?}");
    let hook = c.s("id");
    // A worker whose guard is strict (as after LATCHKEY_WEBHOOK_ALLOW_PRIVATE is turned off).
    let _w = worker(&app, |m| m.webhooks.policy.allow_private = false).await;
    app.token(&t, &agent).await;
    let mut items = Vec::new();
    for _ in 0..200 {
        items = deliveries(&app, &a, &hook).await;
        if items.first().is_some_and(|i| i["status"] == "failed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(items[0]["status"], "failed", "{items:?}");
    assert!(items[0]["last_error"].as_str().unwrap().contains("loopback"), "{items:?}");
    assert!(recv.got().is_empty(), "nothing reached the loopback receiver");
    recv.stop().await;
    app.stop().await;
}

#[actix_rt::test]
async fn webhooks_are_for_admins_of_their_own_tenant() {
    let app = TestApp::spawn(Db::Sqlite, open).await;
    let (t, a, agent, _) = tenant(&app).await;
    let agent_token = app.token(&t, &agent).await;
    let c = create(&app, &a, "http://127.0.0.1:9/x", json!(["*"])).await;
    assert_eq!(c.status, 201, "{c:?}");
    let hook = c.s("id");
    assert_eq!(create(&app, &agent_token, "http://127.0.0.1:9/y", json!(["*"])).await.status, 403);
    assert_eq!(app.get_as(&agent_token, "/api/v1/webhooks").await.status, 403);
    let other = slug("who");
    app.tenant(&other).await;
    let o = app.token(&other, &admin(&other)).await;
    for (m, p) in [
        ("GET", format!("/api/v1/webhooks/{hook}")),
        ("PATCH", format!("/api/v1/webhooks/{hook}")),
        ("DELETE", format!("/api/v1/webhooks/{hook}")),
        ("POST", format!("/api/v1/webhooks/{hook}/rotate-secret")),
        ("GET", format!("/api/v1/webhooks/{hook}/deliveries")),
    ] {
        let body = (m != "GET" && m != "DELETE").then(|| json!({"enabled": false}));
        let r = app.call(m, &p, body, Some(&o)).await;
        assert_eq!(r.status, 404, "{m} {p}: {r:?}");
    }
    assert_eq!(app.get_as(&a, &format!("/api/v1/webhooks/{hook}")).await.body["enabled"], true);
    // PATCH: description cleared with null, events replaced, bad URL refused.
    let r = app.patch_as(&a, &format!("/api/v1/webhooks/{hook}"), json!({"description": "CRM"})).await;
    assert_eq!(r.body["description"], "CRM");
    let r = app
        .patch_as(&a, &format!("/api/v1/webhooks/{hook}"), json!({"description": null, "events": ["signed_in"]}))
        .await;
    assert_eq!((r.body["description"].clone(), r.body["events"].clone()), (Value::Null, json!(["signed_in"])));
    let r = app.patch_as(&a, &format!("/api/v1/webhooks/{hook}"), json!({"url": "ftp://127.0.0.1/x"})).await;
    assert_eq!((r.status, r.code()), (400, "invalid_request"));
    app.stop().await;
}

#[actix_rt::test]
async fn creating_needs_step_up_while_two_factor_is_on() {
    let app = TestApp::spawn(Db::Sqlite, open).await;
    let (_, a, _, _) = tenant(&app).await;
    app.enable_authenticator(&a).await;
    app.clock.advance(chrono::Duration::seconds(i64::try_from(app.core.config.step_up_secs).unwrap() + 1));
    let r = create(&app, &a, "http://127.0.0.1:9/x", json!(["*"])).await;
    assert_eq!((r.status, r.code()), (403, "step_up_required"), "{r:?}");
    app.stop().await;
}

#[actix_rt::test]
async fn two_workers_deliver_each_event_once() {
    for db in backends() {
        let app = TestApp::spawn(db, open).await;
        let recv = Receiver::start();
        let (t, a, agent, _) = tenant(&app).await;
        assert_eq!(create(&app, &a, &recv.url("/hook"), json!(["signed_in"])).await.status, 201);
        // Every other answer fails, so retries and the sweep race the second worker.
        recv.fail_next(&[500, 200, 500, 200, 500]);
        let w1 = worker(&app, |_| {}).await;
        let _w2 = worker(&app, |_| {}).await;
        for _ in 0..5 {
            app.token(&t, &agent).await;
        }
        let delivered = |got: &[Received]| {
            got.iter()
                .filter(|r| r.answered == 200)
                .map(|r| r.header("webhook-id").unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        wait_until("five deliveries", || delivered(&recv.got()).len() >= 5).await;
        drop(w1); // one worker stops: nothing is sent again
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut ids = delivered(&recv.got());
        assert_eq!(ids.len(), 5, "{db:?}: {:?}", recv.got());
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 5, "each delivery once ({db:?})");
        recv.stop().await;
        app.stop().await;
    }
}

/// A request queues the webhook deliveries its audit events created as soon as it is done,
/// without waiting for the worker's sweep (issue 17: the sweep's interval was the latency):
/// a sign-in with 2FA off (the portable audit write) and a TOTP verification (on Postgres the
/// one-statement sign-in) each leave a job for their delivery in the queue, on both backends.
#[actix_rt::test]
async fn a_request_queues_its_webhook_deliveries_at_once() {
    for db in backends() {
        let app = TestApp::spawn(db, open).await;
        let (t, a, agent, _) = tenant(&app).await;
        let c = create(&app, &a, "http://127.0.0.1:9/hook", json!(["signed_in"])).await;
        assert_eq!(c.status, 201, "{c:?}");
        let hook = c.s("id");
        let queued = |app: &TestApp| -> std::collections::BTreeSet<String> {
            app.jobs().iter().map(|j| j.delivery_id.to_string()).collect()
        };
        app.token(&t, &agent).await;
        let items = deliveries(&app, &a, &hook).await;
        assert_eq!(items.len(), 1, "{items:?}");
        assert!(queued(&app).contains(items[0]["id"].as_str().unwrap()), "{db:?}: the sign-in queued its delivery");

        // A TOTP sign-in (the admin's, once 2FA is on).
        let secret = app.enable_authenticator(&a).await;
        app.next_step();
        let ch = app.challenge(&t, &admin(&t)).await;
        let r = app.verify(ch["challenge_token"].as_str().unwrap(), "authenticator", &app.totp(&secret, 0)).await;
        assert_eq!(r.status, 200, "{r:?}");
        let items = deliveries(&app, &a, &hook).await;
        assert_eq!(items.len(), 2, "the agent's sign-in and the admin's TOTP sign-in: {items:?}");
        let queued = queued(&app);
        for i in &items {
            assert!(queued.contains(i["id"].as_str().unwrap()), "{db:?}: {i} was queued");
        }
        app.stop().await;
    }
}
