//! Tenant settings: enabling (setup token rules, ending sessions), step-up, disabling.

use serde_json::json;

use crate::common::*;

#[actix_rt::test]
async fn enabling_with_an_authenticator() {
    for db in backends() {
        let app = TestApp::spawn(db, |_| {}).await;
        let t = slug("acme");
        app.tenant(&t).await;
        let a = app.token(&t, &admin(&t)).await;
        let other_admin_session = app.token(&t, &admin(&t)).await;
        let agent = format!("agent@{t}.test");
        app.user(&a, &agent, "agent").await;
        let agent_session = app.token(&t, &agent).await;
        let s = app.get_as(&a, "/api/v1/settings/two-factor").await;
        assert_eq!(s.body["enabled"], json!(false));
        assert_eq!(
            s.body["methods"],
            json!({"admin": ["authenticator", "email"], "supervisor": ["authenticator", "email"], "agent": ["authenticator", "email"]})
        );
        let r = app
            .post_as(
                &a,
                "/api/v1/settings/two-factor/enable",
                json!({"password": "wrong wrong", "method": "authenticator"}),
            )
            .await;
        assert_eq!((r.status, r.code()), (401, "invalid_password"));
        let r = app
            .post_as(&a, "/api/v1/settings/two-factor/enable", json!({"password": PASSWORD, "method": "authenticator"}))
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let (setup, secret) = (r.s("setup_token"), r.s("secret"));
        assert_eq!(secret.len(), 32);
        assert!(!r.s("qr_png").is_empty());
        // The setup token is bound to the session that asked for it.
        let r = app
            .post_as(
                &other_admin_session,
                "/api/v1/settings/two-factor/enable/confirm",
                json!({"setup_token": setup, "code": app.totp(&secret, 0)}),
            )
            .await;
        assert_eq!((r.status, r.code()), (401, "invalid_setup_token"));
        let r = app
            .post_as(
                &a,
                "/api/v1/settings/two-factor/enable/confirm",
                json!({"setup_token": "forged", "code": app.totp(&secret, 0)}),
            )
            .await;
        assert_eq!(r.code(), "invalid_setup_token");
        let r = app
            .post_as(
                &a,
                "/api/v1/settings/two-factor/enable/confirm",
                json!({"setup_token": setup, "code": wrong(&app.totp(&secret, 0))}),
            )
            .await;
        assert_eq!((r.status, r.code(), r.body["attempts_remaining"].as_u64()), (401, "invalid_code", Some(2)));
        let r = app
            .post_as(
                &a,
                "/api/v1/settings/two-factor/enable/confirm",
                json!({"setup_token": setup, "code": app.totp(&secret, 0)}),
            )
            .await;
        assert_eq!((r.status, r.body.clone()), (200, json!({"enabled": true})));
        // Single use.
        let r = app
            .post_as(
                &a,
                "/api/v1/settings/two-factor/enable/confirm",
                json!({"setup_token": setup, "code": app.totp(&secret, 30)}),
            )
            .await;
        assert_eq!(r.code(), "invalid_setup_token");
        // Every other session of the tenant ended; the enabling admin's stays.
        assert_eq!(app.get_as(&a, "/api/v1/me").await.status, 200);
        assert_eq!(app.get_as(&other_admin_session, "/api/v1/me").await.status, 401);
        assert_eq!(app.get_as(&agent_session, "/api/v1/me").await.status, 401);
        let me = app.get_as(&a, "/api/v1/me").await;
        assert_eq!(me.body["two_factor"]["enrolled"], json!(["authenticator"]));
        let r = app
            .post_as(&a, "/api/v1/settings/two-factor/enable", json!({"password": PASSWORD, "method": "email"}))
            .await;
        assert_eq!((r.status, r.code()), (409, "already_enabled"));
        assert_eq!(app.get_as(&a, "/api/v1/settings/two-factor").await.body["enabled"], true);
        let kinds = app.get_as(&a, "/api/v1/audit-events").await.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>();
        assert!(
            kinds.contains(&"two_factor_enabled".to_owned()) && kinds.contains(&"enrolled".to_owned()),
            "{kinds:?}"
        );
        app.stop().await;
    }
}

#[actix_rt::test]
async fn enabling_with_email() {
    let app = TestApp::spawn(Db::Sqlite, |_| {}).await;
    let t = slug("acme");
    app.tenant(&t).await;
    let a = app.token(&t, &admin(&t)).await;
    let r =
        app.post_as(&a, "/api/v1/settings/two-factor/enable", json!({"password": PASSWORD, "method": "email"})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.s("email_masked"), format!("a***@{t}.test"));
    assert!(r.body.get("secret").is_none());
    let code = app.last_code(&admin(&t)).expect("a code was queued");
    let r2 = app
        .post_as(
            &a,
            "/api/v1/settings/two-factor/enable/confirm",
            json!({"setup_token": r.s("setup_token"), "code": code}),
        )
        .await;
    assert_eq!(r2.status, 200, "{r2:?}");
    let ch = app.challenge(&t, &admin(&t)).await;
    assert_eq!((ch["next"].clone(), ch["methods"].clone()), (json!("verify"), json!(["email"])));
}

#[actix_rt::test]
async fn sensitive_actions_need_a_recent_second_factor_and_disabling_keeps_enrollments() {
    for db in backends() {
        let app = TestApp::spawn(db, |_| {}).await;
        let t = slug("acme");
        app.tenant(&t).await;
        let a = app.token(&t, &admin(&t)).await;
        let agent = format!("agent@{t}.test");
        let agent_id = app.user(&a, &agent, "agent").await;
        let secret = app.enable_authenticator(&a).await;
        // Within the step-up time: allowed.
        let r = app
            .call("PUT", "/api/v1/settings/two-factor/methods", Some(json!({"supervisor": ["email"]})), Some(&a))
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body["methods"]["supervisor"], json!(["email"]));
        let r = app.call("PUT", "/api/v1/settings/two-factor/methods", Some(json!({"agent": []})), Some(&a)).await;
        assert_eq!(r.status, 400);
        app.clock.advance_secs(301);
        for (method, path, body) in [
            ("PUT", "/api/v1/settings/two-factor/methods".to_owned(), json!({"agent": ["email"]})),
            ("POST", "/api/v1/settings/two-factor/disable".to_owned(), json!({"password": PASSWORD})),
            (
                "POST",
                "/api/v1/agents".to_owned(),
                json!({"email": "boss2@x.test", "name": "B", "role": "admin", "password": PASSWORD}),
            ),
            ("PATCH", format!("/api/v1/agents/{agent_id}"), json!({"role": "admin"})),
            ("PATCH", format!("/api/v1/agents/{agent_id}"), json!({"email": "new@x.test"})),
            ("PATCH", "/api/v1/me".to_owned(), json!({"email": "me2@x.test", "password": PASSWORD})),
        ] {
            let r = app.call(method, &path, Some(body), Some(&a)).await;
            assert_eq!((r.status, r.code()), (403, "step_up_required"), "{method} {path}");
        }
        // Non-sensitive changes still work.
        assert_eq!(app.patch_as(&a, &format!("/api/v1/agents/{agent_id}"), json!({"name": "Al"})).await.status, 200);
        // A fresh verification gives step-up again.
        let ch = app.challenge(&t, &admin(&t)).await;
        app.next_step();
        let fresh = app
            .verify(ch["challenge_token"].as_str().unwrap(), "authenticator", &app.totp(&secret, 0))
            .await
            .s("authentication_token");
        let r = app.post_as(&fresh, "/api/v1/settings/two-factor/disable", json!({"password": "wrong wrong"})).await;
        assert_eq!((r.status, r.code()), (401, "invalid_password"));
        let pending = app.challenge(&t, &agent).await;
        let r = app.post_as(&fresh, "/api/v1/settings/two-factor/disable", json!({"password": PASSWORD})).await;
        assert_eq!((r.status, r.body.clone()), (200, json!({"enabled": false})));
        // Open challenges are void; users sign in directly; enrollments are kept.
        let r = app
            .post("/api/v1/auth/2fa/authenticator/setup", json!({"challenge_token": pending["challenge_token"]}))
            .await;
        assert_eq!(r.code(), "invalid_challenge");
        let r = app.login(&t, &admin(&t)).await;
        assert!(r.body["two_factor"].is_null() && r.status == 200);
        assert_eq!(r.body["user"]["two_factor"]["enrolled"], json!(["authenticator"]));
        // Re-enabling with the kept authenticator: no new secret, a code from it confirms.
        let admin_token = r.s("authentication_token");
        let e = app
            .post_as(
                &admin_token,
                "/api/v1/settings/two-factor/enable",
                json!({"password": PASSWORD, "method": "authenticator"}),
            )
            .await;
        assert_eq!(e.status, 200, "{e:?}");
        assert!(e.body.get("secret").is_none());
        app.next_step();
        let c = app
            .post_as(
                &admin_token,
                "/api/v1/settings/two-factor/enable/confirm",
                json!({"setup_token": e.s("setup_token"), "code": app.totp(&secret, 0)}),
            )
            .await;
        assert_eq!(c.status, 200, "{c:?}");
        app.stop().await;
    }
}

#[actix_rt::test]
async fn a_policy_change_reaches_another_process_quickly() {
    let app = TestApp::spawn(Db::Sqlite, |c| c.policy_cache_ms = 200).await;
    let twin = app.twin().await;
    let t = slug("acme");
    app.tenant(&t).await;
    let a = app.token(&t, &admin(&t)).await;
    let agent = format!("agent@{t}.test");
    app.user(&a, &agent, "agent").await;
    // The twin has seen the tenant with 2FA off.
    assert!(twin.login(&t, &agent).await.body["two_factor"].is_null());
    app.enable_authenticator(&a).await;
    actix_rt::time::sleep(std::time::Duration::from_millis(300)).await;
    let r = twin.login(&t, &agent).await;
    assert_eq!(r.body["two_factor"]["next"], "enroll", "{r:?}");
}

#[actix_rt::test]
async fn version_two_settings_have_defaults_and_checked_changes() {
    for db in backends() {
        let app = TestApp::spawn(db, |c| c.public_url = Some("http://localhost:9999".into())).await;
        let t = slug("sett");
        app.tenant(&t).await;
        let a = app.token(&t, &admin(&t)).await;
        let s = app.get_as(&a, "/api/v1/settings/two-factor").await;
        assert_eq!(s.body["webauthn"], json!({"rp_id": "localhost", "origins": ["http://localhost:9999"]}));
        assert_eq!(s.body["passkey_sign_in"], json!(false));
        assert_eq!(s.body["recovery_codes"], json!({"admin": true, "supervisor": true, "agent": true}));
        assert_eq!(s.body["remember_device_days"], json!({"admin": 0, "supervisor": 0, "agent": 0}));
        assert_eq!(s.body["enrollment_grace_days"], json!(0));
        assert_eq!(s.body["notices"], json!({"security": true, "recovery_requests": true}));
        assert_eq!(s.body["return_urls"], json!([]));

        // A per-role object may name some roles; the others keep their values.
        let r = app
            .patch_as(
                &a,
                "/api/v1/settings/two-factor",
                json!({"remember_device_days": {"agent": 30}, "notices": {"security": false}}),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body["remember_device_days"], json!({"admin": 0, "supervisor": 0, "agent": 30}));
        assert_eq!(r.body["notices"], json!({"security": false, "recovery_requests": true}));
        for bad in [
            json!({"remember_device_days": {"agent": 91}}),
            json!({"enrollment_grace_days": -1}),
            json!({"unknown": true}),
            json!({"recovery_codes": {"root": true}}),
            json!({"return_urls": ["javascript:alert(1)"]}),
            json!({"webauthn": {"rp_id": "127.0.0.1", "origins": ["http://127.0.0.1:9999"]}}),
        ] {
            let r = app.patch_as(&a, "/api/v1/settings/two-factor", bad.clone()).await;
            assert_eq!((r.status, r.code()), (400, "invalid_request"), "{bad}: {r:?}");
        }
        // A refused change changes nothing.
        let s = app.get_as(&a, "/api/v1/settings/two-factor").await;
        assert_eq!(s.body["remember_device_days"]["agent"], json!(30));
        let r = app
            .call(
                "PUT",
                "/api/v1/settings/two-factor/webauthn",
                Some(json!({"rp_id": "App.Localhost", "origins": ["http://app.localhost:9999/"]})),
                Some(&a),
            )
            .await;
        assert_eq!(
            r.body["webauthn"],
            json!({"rp_id": "app.localhost", "origins": ["http://app.localhost:9999"]}),
            "{r:?}"
        );
        let r = app
            .call(
                "PUT",
                "/api/v1/settings/two-factor/webauthn",
                Some(json!({"rp_id": "example.com", "origins": ["https://evil.example"]})),
                Some(&a),
            )
            .await;
        assert_eq!((r.status, r.code()), (400, "invalid_request"));
        let events = app.get_as(&a, "/api/v1/audit-events?kind=settings_changed").await;
        assert_eq!(events.body["items"].as_array().map(Vec::len), Some(2), "{events:?}");

        // Agents may not; while 2FA is on, a stale second factor may not either.
        let agent = format!("agent@{t}.test");
        app.user(&a, &agent, "agent").await;
        let ag = app.token(&t, &agent).await;
        let r = app.patch_as(&ag, "/api/v1/settings/two-factor", json!({"passkey_sign_in": true})).await;
        assert_eq!((r.status, r.code()), (403, "forbidden"));
        app.enable_authenticator(&a).await;
        let r = app.patch_as(&a, "/api/v1/settings/two-factor", json!({"passkey_sign_in": true})).await;
        assert_eq!((r.status, r.body["passkey_sign_in"].clone()), (200, json!(true)), "{r:?}");
        app.clock.advance(chrono::Duration::seconds(301));
        let r = app.patch_as(&a, "/api/v1/settings/two-factor", json!({"passkey_sign_in": false})).await;
        assert_eq!((r.status, r.code()), (403, "step_up_required"));
    }
}
