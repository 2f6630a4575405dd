//! Tenants, password sign-in, sessions, throttling.

use serde_json::json;

use crate::common::*;

#[actix_rt::test]
async fn tenants_are_created_by_the_operator_only() {
    for db in backends() {
        let app = TestApp::spawn(db, |_| {}).await;
        let body = json!({"slug": "acme", "name": "Acme", "admin": {"email": "a@acme.test", "name": "A", "password": PASSWORD}});
        let r = app.call("POST", "/api/v1/tenants", Some(body.clone()), None).await;
        assert_eq!((r.status, r.code()), (401, "unauthenticated"), "{db:?}");
        let r = app.call("POST", "/api/v1/tenants", Some(body.clone()), Some("wrong-operator-token")).await;
        assert_eq!((r.status, r.code()), (401, "unauthenticated"));
        let r = app.call("POST", "/api/v1/tenants", Some(body.clone()), Some(OPERATOR)).await;
        assert_eq!(r.status, 201, "{r:?}");
        assert_eq!(r.body["slug"], "acme");
        assert_eq!(r.body["admin"]["role"], "admin");
        assert_eq!(r.body["admin"]["two_factor"], json!({"enrolled": [], "preferred": null}));
        let r = app.call("POST", "/api/v1/tenants", Some(body), Some(OPERATOR)).await;
        assert_eq!((r.status, r.code()), (409, "tenant_exists"));
        for bad in ["", "UPPER", "-dash", "has space", &"x".repeat(64)] {
            let b =
                json!({"slug": bad, "name": "X", "admin": {"email": "a@x.test", "name": "A", "password": PASSWORD}});
            let r = app.call("POST", "/api/v1/tenants", Some(b), Some(OPERATOR)).await;
            assert_eq!((r.status, r.code()), (400, "invalid_request"), "slug {bad:?}");
        }
        let weak =
            json!({"slug": "weak", "name": "X", "admin": {"email": "a@x.test", "name": "A", "password": "short"}});
        assert_eq!(app.call("POST", "/api/v1/tenants", Some(weak), Some(OPERATOR)).await.status, 400);
        app.stop().await;
    }
}

#[actix_rt::test]
async fn operator_endpoints_are_off_without_a_token() {
    let app = TestApp::spawn(Db::Sqlite, |c| c.operator_token = None).await;
    let body =
        json!({"slug": "acme", "name": "Acme", "admin": {"email": "a@acme.test", "name": "A", "password": PASSWORD}});
    let r = app.call("POST", "/api/v1/tenants", Some(body), Some(OPERATOR)).await;
    assert_eq!((r.status, r.code()), (403, "forbidden"));
}

#[actix_rt::test]
async fn wrong_password_unknown_email_and_unknown_tenant_answer_alike() {
    for db in backends() {
        let app = TestApp::spawn(db, |_| {}).await;
        let t = slug("acme");
        app.tenant(&t).await;
        let wrong_pw =
            app.post("/api/v1/auth", json!({"tenant": t, "email": admin(&t), "password": "nope nope"})).await;
        let unknown_email =
            app.post("/api/v1/auth", json!({"tenant": t, "email": "ghost@x.test", "password": PASSWORD})).await;
        let unknown_tenant =
            app.post("/api/v1/auth", json!({"tenant": "no-such", "email": admin(&t), "password": PASSWORD})).await;
        for r in [&wrong_pw, &unknown_email, &unknown_tenant] {
            assert_eq!(r.status, 401);
            assert_eq!(r.body, wrong_pw.body, "identical bodies");
            assert_eq!(r.header("content-type").as_deref(), Some("application/problem+json"));
        }
        assert_eq!(wrong_pw.code(), "invalid_credentials");
        // An unknown tenant starts no actor.
        assert_eq!(app.core.metrics.tenant_actors.get(), 1, "only the real tenant's actor runs");
        app.stop().await;
    }
}

#[actix_rt::test]
async fn emails_are_case_insensitive_and_sessions_work_until_they_expire() {
    for db in backends() {
        let app = TestApp::spawn(db, |_| {}).await;
        let t = slug("acme");
        app.tenant(&t).await;
        let r = app
            .post(
                "/api/v1/auth",
                json!({"tenant": t, "email": format!("  ADMIN@{}.TEST ", t.to_uppercase()), "password": PASSWORD}),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.body["two_factor"].is_null());
        let token = r.s("authentication_token");
        assert_eq!(token.len(), 43);
        let me = app.get_as(&token, "/api/v1/me").await;
        assert_eq!((me.status, me.s("email")), (200, admin(&t)));
        // 12 h lifetime: valid just before, gone at the end.
        app.clock.advance_secs(43_200 - 1);
        assert_eq!(app.get_as(&token, "/api/v1/me").await.status, 200);
        app.clock.advance_secs(1);
        let gone = app.get_as(&token, "/api/v1/me").await;
        assert_eq!((gone.status, gone.code()), (401, "unauthenticated"));
        app.stop().await;
    }
}

#[actix_rt::test]
async fn logout_ends_the_session() {
    let app = TestApp::spawn(Db::Sqlite, |_| {}).await;
    let t = slug("acme");
    app.tenant(&t).await;
    let token = app.token(&t, &admin(&t)).await;
    assert_eq!(app.call("POST", "/api/v1/auth/logout", None, Some(&token)).await.status, 204);
    assert_eq!(app.get_as(&token, "/api/v1/me").await.status, 401);
    assert_eq!(app.call("POST", "/api/v1/auth/logout", None, Some(&token)).await.status, 401);
    assert_eq!(app.call("GET", "/api/v1/me", None, None).await.code(), "unauthenticated");
}

#[actix_rt::test]
async fn too_many_wrong_passwords_refuse_even_the_right_one_until_the_window_passes() {
    for db in backends() {
        let app = TestApp::spawn(db, |_| {}).await;
        let t = slug("acme");
        app.tenant(&t).await;
        for _ in 0..10 {
            let r = app.post("/api/v1/auth", json!({"tenant": t, "email": admin(&t), "password": "wrong wrong"})).await;
            assert_eq!(r.code(), "invalid_credentials");
        }
        let r = app.login(&t, &admin(&t)).await;
        assert_eq!((r.status, r.code()), (429, "rate_limited"), "{r:?}");
        assert_eq!(r.header("retry-after").as_deref(), Some("900"));
        // The same for an unknown address of the tenant (counted under tenant + address).
        for _ in 0..10 {
            app.post("/api/v1/auth", json!({"tenant": t, "email": "ghost@x.test", "password": "wrong wrong"})).await;
        }
        let r = app.post("/api/v1/auth", json!({"tenant": t, "email": "GHOST@x.test", "password": "x"})).await;
        assert_eq!(r.status, 429);
        // And for a tenant that does not exist: the same answers, so a 429 reveals nothing.
        for _ in 0..10 {
            let r = app
                .post("/api/v1/auth", json!({"tenant": "no-such-tenant", "email": "a@x.test", "password": "x"}))
                .await;
            assert_eq!(r.code(), "invalid_credentials");
        }
        let r =
            app.post("/api/v1/auth", json!({"tenant": "no-such-tenant", "email": "A@x.test", "password": "x"})).await;
        assert_eq!((r.status, r.header("retry-after").as_deref()), (429, Some("900")));
        app.clock.advance_secs(900);
        assert_eq!(app.login(&t, &admin(&t)).await.status, 200);
        app.stop().await;
    }
}

#[actix_rt::test]
async fn parallel_wrong_passwords_never_exceed_the_limit() {
    for db in backends() {
        let app = TestApp::spawn(db, |_| {}).await;
        let t = slug("acme");
        app.tenant(&t).await;
        let attempts = (0..30)
            .map(|_| app.post("/api/v1/auth", json!({"tenant": t, "email": admin(&t), "password": "wrong wrong"})));
        let results = futures::future::join_all(attempts).await;
        let evaluated = results.iter().filter(|r| r.code() == "invalid_credentials").count();
        let limited = results.iter().filter(|r| r.code() == "rate_limited").count();
        assert_eq!((evaluated, limited), (10, 20), "{db:?}");
        app.stop().await;
    }
}

#[actix_rt::test]
async fn the_per_ip_limiter_runs_before_any_tenant_lookup() {
    let app = TestApp::spawn(Db::Sqlite, |c| c.signin_per_ip_per_minute = 3).await;
    for _ in 0..3 {
        let r = app.post("/api/v1/auth", json!({"tenant": "nope", "email": "a@b.co", "password": "x"})).await;
        assert_eq!(r.status, 401);
    }
    let r = app.post("/api/v1/auth", json!({"tenant": "nope", "email": "a@b.co", "password": "x"})).await;
    assert_eq!((r.status, r.code()), (429, "rate_limited"));
    assert!(r.header("retry-after").is_some());
    assert_eq!(app.core.metrics.tenant_actors.get(), 0);
    // Signed-in endpoints are not behind it (a bad session is their own 401).
    assert_eq!(app.get_as("not-a-session", "/api/v1/me").await.status, 401);
}

#[actix_rt::test]
async fn a_tenant_actor_stops_when_idle() {
    let app = TestApp::spawn(Db::Sqlite, |c| c.tenant_idle_secs = 1).await;
    let t = slug("acme");
    app.tenant(&t).await;
    app.token(&t, &admin(&t)).await;
    assert_eq!(app.core.metrics.tenant_actors.get(), 1);
    let mut stopped = false;
    for _ in 0..40 {
        actix_rt::time::sleep(std::time::Duration::from_millis(100)).await;
        if app.core.metrics.tenant_actors.get() == 0 {
            stopped = true;
            break;
        }
    }
    assert!(stopped, "the idle actor stopped");
    // And comes back on demand.
    app.token(&t, &admin(&t)).await;
    assert_eq!(app.core.metrics.tenant_actors.get(), 1);
}

/// Housekeeping deletes only what nothing can use, in batches of `LATCHKEY_PURGE_BATCH`
/// rows, round after round until less than a batch is left: seven expired sessions with a
/// batch of two all go (four rounds), the young one stays, on both backends.
#[actix_rt::test]
async fn housekeeping_purges_in_batches_until_nothing_expired_is_left() {
    for db in backends() {
        let app = TestApp::spawn(db, |c| {
            c.purge_batch = 2;
            c.purge_pause_ms = 0;
        })
        .await;
        let t = slug("acme");
        app.tenant(&t).await;
        let mut old = Vec::new();
        for _ in 0..7 {
            old.push(app.token(&t, &admin(&t)).await);
        }
        app.clock.advance_secs(43_200 - 10);
        let young = app.token(&t, &admin(&t)).await;
        app.clock.advance_secs(10);
        let svc = app
            .core
            .service(std::sync::Arc::new(latchkey_tenant::MemoryOutbox::default()), actix::Arbiter::current())
            .unwrap();
        let purged = svc.purge(app.clock.now_utc()).await.unwrap();
        assert_eq!(purged.sessions, 7, "{db:?}");
        assert_eq!(svc.purge(app.clock.now_utc()).await.unwrap().sessions, 0, "{db:?}");
        assert_eq!(app.get_as(&young, "/api/v1/me").await.status, 200);
        for token in &old {
            assert_eq!(app.get_as(token, "/api/v1/me").await.status, 401);
        }
        app.stop().await;
    }
}

#[actix_rt::test]
async fn client_ips_come_from_x_forwarded_for_only_behind_trusted_proxies() {
    for trusted in [false, true] {
        let app = TestApp::spawn(Db::Sqlite, |c| {
            c.signin_per_ip_per_minute = 2;
            if trusted {
                c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap(), "10.0.0.0/8".parse().unwrap()];
            }
        })
        .await;
        let body = || Some(json!({"tenant": "nope", "email": "a@b.co", "password": "x"}));
        let from = |ip: &'static str| [("X-Forwarded-For", ip)];
        // The nearest untrusted entry is the client: 203.0.113.7 (10.1.2.3 is a trusted hop).
        let chain = "198.51.100.1, 203.0.113.7, 10.1.2.3";
        for _ in 0..2 {
            assert_eq!(app.call_with("POST", "/api/v1/auth", body(), None, &from(chain)).await.status, 401);
        }
        let third = app.call_with("POST", "/api/v1/auth", body(), None, &from(chain)).await;
        assert_eq!(third.status, 429, "trusted={trusted}");
        let other = app.call_with("POST", "/api/v1/auth", body(), None, &from("198.51.100.99")).await;
        // Behind a trusted proxy another client has its own budget; otherwise the header is
        // ignored and every request is the socket peer's.
        assert_eq!(other.status, if trusted { 401 } else { 429 }, "trusted={trusted}");
        app.stop().await;
    }
}

#[actix_rt::test]
async fn recovery_requests_record_the_forwarded_client() {
    let app = TestApp::spawn(Db::Sqlite, |c| c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await;
    let t = slug("acme");
    app.tenant(&t).await;
    let a = app.token(&t, &admin(&t)).await;
    let agent = format!("agent@{t}.test");
    app.user(&a, &agent, "agent").await;
    app.enable_authenticator(&a).await;
    let ch = app.challenge(&t, &agent).await;
    let r = app
        .call_with(
            "POST",
            "/api/v1/auth/2fa/recovery",
            Some(json!({"challenge_token": ch["challenge_token"]})),
            None,
            &[("X-Forwarded-For", "203.0.113.7"), ("User-Agent", "Agent Browser/1.0")],
        )
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(r.body["request"]["ip"], "203.0.113.7");
    assert_eq!(r.body["request"]["user_agent"], "Agent Browser/1.0");
}

#[actix_rt::test]
async fn the_per_ip_limiter_sees_through_percent_encoding_and_covers_operator_endpoints() {
    let app = TestApp::spawn(Db::Sqlite, |c| c.signin_per_ip_per_minute = 2).await;
    let body = || Some(json!({"tenant": "nope", "email": "a@b.co", "password": "x"}));
    assert_eq!(app.call("POST", "/api/v1/auth", body(), None).await.status, 401);
    assert_eq!(app.call("POST", "/api/v1/%61uth", body(), None).await.status, 401, "routes like /api/v1/auth");
    let r = app.call("POST", "/api/v1/%61uth", body(), None).await;
    assert_eq!((r.status, r.code()), (429, "rate_limited"));
    let r = app.call("POST", "/api/v1/tenants", Some(json!({})), Some("wrong-operator-token")).await;
    assert_eq!(r.status, 429, "operator endpoints share the budget");
}

#[actix_rt::test]
async fn a_request_that_withholds_its_body_times_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn(Db::Sqlite, |c| c.request_timeout_secs = 1).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST /api/v1/auth HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(head.contains("request_timeout"), "{head}");
}
