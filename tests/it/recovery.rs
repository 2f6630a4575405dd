//! Recovery: agent requests, admin reset links, email changes, isolation, audit, operator.

use serde_json::json;

use crate::common::*;

async fn setup(app: &TestApp) -> (String, String, String, String) {
    let t = slug("acme");
    app.tenant(&t).await;
    let a = app.token(&t, &admin(&t)).await;
    let agent = format!("agent@{t}.test");
    app.user(&a, &agent, "agent").await;
    let secret = app.enable_authenticator(&a).await;
    (t, a, secret, agent)
}

#[actix_rt::test]
async fn agent_recovery_requests_are_decided_by_an_admin() {
    for db in backends() {
        let app = TestApp::spawn(db, |_| {}).await;
        let (t, a, _, agent) = setup(&app).await;
        let ch = app.challenge(&t, &agent).await;
        let secret = app.enroll_authenticator(ch["challenge_token"].as_str().unwrap()).await;
        app.next_step();
        let ch = app.challenge(&t, &agent).await;
        let session = app
            .verify(ch["challenge_token"].as_str().unwrap(), "authenticator", &app.totp(&secret, 0))
            .await
            .s("authentication_token");
        let ch = app.challenge(&t, &agent).await;
        let token = ch["challenge_token"].as_str().unwrap();
        let r = app.call("POST", "/api/v1/auth/2fa/recovery", Some(json!({"challenge_token": token})), None).await;
        assert_eq!((r.status, r.s("kind")), (202, "admin_approval".into()), "{r:?}");
        let req = r.body["request"].clone();
        assert_eq!(req["status"], "pending");
        assert_eq!(req["user"]["email"], agent.as_str());
        assert_eq!(req["ip"], "127.0.0.1");
        let again = app.post("/api/v1/auth/2fa/recovery", json!({"challenge_token": token})).await;
        assert_eq!(again.body["request"]["id"], req["id"]);
        let id = req["id"].as_str().unwrap();
        let list = app.get_as(&a, "/api/v1/recovery-requests?status=pending").await;
        assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
        assert_eq!(app.get_as(&a, "/api/v1/recovery-requests?status=weird").await.status, 400);
        let r = app.post_as(&a, &format!("/api/v1/recovery-requests/{id}/approve"), json!({})).await;
        assert_eq!((r.status, r.s("status")), (200, "approved".into()), "{r:?}");
        assert_eq!(r.s("decided_by"), app.get_as(&a, "/api/v1/me").await.s("id"));
        let r = app.post_as(&a, &format!("/api/v1/recovery-requests/{id}/dismiss"), json!({})).await;
        assert_eq!((r.status, r.code()), (409, "request_not_pending"));
        assert_eq!(app.get_as(&session, "/api/v1/me").await.status, 401, "approval ends the agent's sessions");
        assert_eq!(
            app.verify(token, "authenticator", &app.totp(&secret, 30)).await.code(),
            "invalid_challenge",
            "and challenges"
        );
        let ch = app.challenge(&t, &agent).await;
        assert_eq!(ch["next"], "enroll");
        let audit =
            app.get_as(&a, &format!("/api/v1/audit-events?subject_id={}", req["user"]["id"].as_str().unwrap())).await;
        let kinds: Vec<&str> =
            audit.body["items"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds[..2], ["recovery_approved", "recovery_requested"], "newest first: {kinds:?}");
        app.stop().await;
    }
}

#[actix_rt::test]
async fn admin_reset_links_work_once_and_expire() {
    for db in backends() {
        let app = TestApp::spawn(db, |_| {}).await;
        let (t, a, _, _) = setup(&app).await;
        let ch = app.challenge(&t, &admin(&t)).await;
        let token = ch["challenge_token"].as_str().unwrap();
        let r = app.post("/api/v1/auth/2fa/recovery", json!({"challenge_token": token})).await;
        assert_eq!((r.status, r.s("kind"), r.s("email_masked")), (202, "email_link".into(), format!("a***@{t}.test")));
        let first = app.last_reset_token(&admin(&t)).unwrap();
        let r = app.post("/api/v1/auth/2fa/recovery", json!({"challenge_token": token})).await;
        assert_eq!(r.code(), "resend_too_soon", "links follow the send limits");
        app.clock.advance_secs(60);
        assert_eq!(app.post("/api/v1/auth/2fa/recovery", json!({"challenge_token": token})).await.status, 202);
        let second = app.last_reset_token(&admin(&t)).unwrap();
        assert_ne!(first, second);
        let r = app.post("/api/v1/auth/2fa/reset", json!({"token": first})).await;
        assert_eq!((r.status, r.code()), (401, "invalid_token"), "a newer link voids older ones");
        // The page.
        let page = app.call("GET", &format!("/reset-otp?token={second}"), None, None).await;
        assert_eq!(page.status, 200);
        assert!(page.body.as_str().unwrap().contains("Reset OTP"));
        assert_eq!(page.header("referrer-policy").as_deref(), Some("no-referrer"));
        assert_eq!(page.header("cache-control").as_deref(), Some("no-store"));
        let hostile = app.call("GET", "/reset-otp?token=%22%3E%3Cscript%3Ealert(1)%3C/script%3E", None, None).await;
        assert!(!hostile.body.as_str().unwrap().contains("<script>"));
        // Expiry (1 h) on a third link.
        app.clock.advance_secs(60);
        app.post("/api/v1/auth/2fa/recovery", json!({"challenge_token": token})).await;
        let third = app.last_reset_token(&admin(&t)).unwrap();
        let r = app
            .raw("POST", "/reset-otp", "application/x-www-form-urlencoded", format!("token={third}").into_bytes())
            .await;
        assert_eq!(r.status, 200, "the page's form resets: {r:?}");
        assert_eq!(app.post("/api/v1/auth/2fa/reset", json!({"token": third})).await.code(), "invalid_token", "once");
        assert_eq!(app.get_as(&a, "/api/v1/me").await.status, 401, "the admin's sessions ended");
        let ch = app.challenge(&t, &admin(&t)).await;
        assert_eq!(ch["next"], "enroll");
        let fresh = ch["challenge_token"].as_str().unwrap();
        app.clock.advance_secs(60);
        app.post("/api/v1/auth/2fa/recovery", json!({"challenge_token": fresh})).await;
        let fourth = app.last_reset_token(&admin(&t)).unwrap();
        app.clock.advance_secs(3600);
        assert_eq!(
            app.post("/api/v1/auth/2fa/reset", json!({"token": fourth})).await.code(),
            "invalid_token",
            "expired"
        );
        app.stop().await;
    }
}

#[actix_rt::test]
async fn an_email_change_moves_codes_and_ends_sessions() {
    let app = TestApp::spawn(Db::Sqlite, |_| {}).await;
    let (t, a, _, _) = setup(&app).await;
    let sup = format!("sup@{t}.test");
    // Create with 2FA on (the admin's session is fresh from enabling).
    let id = app.user(&a, &sup, "supervisor").await;
    let ch = app.challenge(&t, &sup).await;
    let ch = ch["challenge_token"].as_str().unwrap().to_owned();
    let (_, code) = app.send_code(&ch, &sup).await;
    let session = app.verify(&ch, "email", &code.unwrap()).await.s("authentication_token");
    let r = app.patch_as(&session, "/api/v1/me", json!({"email": "mine@x.test", "password": PASSWORD})).await;
    assert_eq!((r.status, r.code()), (403, "email_change_forbidden"));
    let pending = app.challenge(&t, &sup).await;
    let r = app.patch_as(&a, &format!("/api/v1/agents/{id}"), json!({"email": "New.Sup@X.test"})).await;
    assert_eq!((r.status, r.s("email")), (200, "new.sup@x.test".into()), "{r:?}");
    assert_eq!(app.get_as(&session, "/api/v1/me").await.status, 401);
    assert_eq!(app.get_as(&a, "/api/v1/me").await.status, 200, "the acting admin's session stays");
    let r = app.post("/api/v1/auth/2fa/email/send", json!({"challenge_token": pending["challenge_token"]})).await;
    assert_eq!(r.code(), "invalid_challenge", "open challenges end");
    assert_eq!(app.login(&t, &sup).await.code(), "invalid_credentials");
    app.clock.advance_secs(60);
    let ch = app.challenge(&t, "new.sup@x.test").await;
    let (r, code) = app.send_code(ch["challenge_token"].as_str().unwrap(), "new.sup@x.test").await;
    assert_eq!(r.status, 202);
    assert!(code.is_some(), "the code goes to the new address");
}

#[actix_rt::test]
async fn another_tenants_objects_are_not_found() {
    for db in backends() {
        let app = TestApp::spawn(db, |_| {}).await;
        let (t, a, _, agent) = setup(&app).await;
        let ch = app.challenge(&t, &agent).await;
        let req = app.post("/api/v1/auth/2fa/recovery", json!({"challenge_token": ch["challenge_token"]})).await.body["request"]["id"].as_str().unwrap().to_owned();
        let agent_id = app.get_as(&a, "/api/v1/agents").await.body["items"][1]["id"].as_str().unwrap().to_owned();
        let other = slug("other");
        app.tenant(&other).await;
        let o = app.token(&other, &admin(&other)).await;
        for (method, path, body) in [
            ("PATCH", format!("/api/v1/agents/{agent_id}"), Some(json!({"name": "stolen"}))),
            ("DELETE", format!("/api/v1/agents/{agent_id}"), None),
            ("POST", format!("/api/v1/recovery-requests/{req}/approve"), Some(json!({}))),
            ("POST", format!("/api/v1/recovery-requests/{req}/dismiss"), Some(json!({}))),
        ] {
            let r = app.call(method, &path, body, Some(&o)).await;
            assert_eq!((r.status, r.code()), (404, "not_found"), "{method} {path}");
        }
        for path in ["/api/v1/agents", "/api/v1/recovery-requests", "/api/v1/audit-events"] {
            let body = app.get_as(&o, path).await.body.to_string();
            assert!(!body.contains(&agent_id) && !body.contains(&req), "{path} leaks: {body}");
        }
        assert_eq!(app.login(&other, &agent).await.code(), "invalid_credentials");
        assert_eq!(
            app.get_as(&a, "/api/v1/recovery-requests?status=pending").await.body["items"][0]["status"],
            "pending"
        );
        app.stop().await;
    }
}

#[actix_rt::test]
async fn the_operator_recovers_a_sole_admin() {
    let app = TestApp::spawn(Db::Sqlite, |_| {}).await;
    let (t, a, _, _) = setup(&app).await;
    let admin_id = app.get_as(&a, "/api/v1/me").await.s("id");
    let r = app.call("POST", &format!("/api/v1/tenants/{t}/users/{admin_id}/reset-2fa"), None, None).await;
    assert_eq!(r.status, 401);
    let r = app.call("POST", &format!("/api/v1/tenants/nope/users/{admin_id}/reset-2fa"), None, Some(OPERATOR)).await;
    assert_eq!(r.status, 404);
    let r = app.call("POST", &format!("/api/v1/tenants/{t}/users/{admin_id}/reset-2fa"), None, Some(OPERATOR)).await;
    assert_eq!((r.status, r.body["two_factor"]["enrolled"].clone()), (200, json!([])), "{r:?}");
    assert_eq!(app.get_as(&a, "/api/v1/me").await.status, 401);
    assert_eq!(app.challenge(&t, &admin(&t)).await["next"], "enroll");
}

#[actix_rt::test]
async fn the_audit_log_filters_and_pages() {
    let app = TestApp::spawn(Db::Sqlite, |_| {}).await;
    let (_, a, _, _) = setup(&app).await;
    let all = app.get_as(&a, "/api/v1/audit-events").await;
    let items = all.body["items"].as_array().unwrap().clone();
    assert!(items.len() >= 4, "{all:?}");
    let ids: Vec<&str> = items.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable_by(|x, y| y.cmp(x));
    assert_eq!(ids, sorted, "newest first");
    let p1 = app.get_as(&a, "/api/v1/audit-events?limit=2").await;
    let p2 = app.get_as(&a, &format!("/api/v1/audit-events?limit=2&cursor={}", p1.s("next_cursor"))).await;
    assert_eq!(p1.body["items"][0]["id"], items[0]["id"]);
    assert_eq!(p2.body["items"][0]["id"], items[2]["id"]);
    let kind = app.get_as(&a, "/api/v1/audit-events?kind=signed_in").await;
    assert!(kind.body["items"].as_array().unwrap().iter().all(|e| e["kind"] == "signed_in"));
    assert_eq!(app.get_as(&a, "/api/v1/audit-events?kind=nope").await.status, 400);
    assert_eq!(app.get_as(&a, "/api/v1/audit-events?cursor=zzz").await.code(), "invalid_request");
    assert_eq!(app.get_as(&a, "/api/v1/audit-events?since=yesterday").await.status, 400);
    let later = (app.clock.now_utc() + chrono::Duration::seconds(1)).to_rfc3339();
    let none = app.get_as(&a, &format!("/api/v1/audit-events?since={}", later.replace('+', "%2B"))).await;
    assert_eq!(none.body["items"], json!([]));
}
