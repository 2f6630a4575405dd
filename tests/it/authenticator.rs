//! Authenticator-app 2FA: enrollment at sign-in, TOTP verification, replay, lockout.

use serde_json::json;

use crate::common::*;

/// A tenant with 2FA on (admin enrolled with an authenticator) and an agent; returns
/// (slug, admin token, admin secret, agent email).
async fn tenant_with_2fa(app: &TestApp) -> (String, String, String, String) {
    let t = slug("acme");
    app.tenant(&t).await;
    let admin_token = app.token(&t, &admin(&t)).await;
    let agent = format!("agent@{t}.test");
    app.user(&admin_token, &agent, "agent").await;
    let secret = app.enable_authenticator(&admin_token).await;
    (t, admin_token, secret, agent)
}

#[actix_rt::test]
async fn enrollment_then_verification_with_the_window_and_replays() {
    for db in backends() {
        let app = TestApp::spawn(db, |_| {}).await;
        let (t, _, _, agent) = tenant_with_2fa(&app).await;
        let ch = app.challenge(&t, &agent).await;
        assert_eq!(ch["next"], "enroll");
        assert_eq!(ch["methods"], json!(["authenticator", "email"]));
        let token = ch["challenge_token"].as_str().unwrap().to_owned();
        assert_eq!(app.get_as(&token, "/api/v1/me").await.status, 401, "a challenge token is not a bearer token");
        // Confirm before setup.
        let r = app
            .post("/api/v1/auth/2fa/authenticator/confirm", json!({"challenge_token": token, "code": "123456"}))
            .await;
        assert_eq!((r.status, r.code()), (409, "setup_required"));
        // Verify with the authenticator on an enrollment challenge is not allowed.
        assert_eq!(app.verify(&token, "authenticator", "123456").await.code(), "method_not_allowed");
        let setup = app.post("/api/v1/auth/2fa/authenticator/setup", json!({"challenge_token": token})).await;
        let first = setup.s("secret");
        let setup = app.post("/api/v1/auth/2fa/authenticator/setup", json!({"challenge_token": token})).await;
        let secret = setup.s("secret");
        assert_ne!(first, secret, "a second setup replaces the secret");
        assert!(setup.s("otpauth_uri").starts_with(&format!("otpauth://totp/{t}%20Support:agent%40{t}.test?secret={secret}&issuer={t}%20Support&algorithm=SHA1&digits=6&period=30")), "{}", setup.s("otpauth_uri"));
        let old = app
            .post(
                "/api/v1/auth/2fa/authenticator/confirm",
                json!({"challenge_token": token, "code": app.totp(&first, 0)}),
            )
            .await;
        assert_eq!(old.code(), "invalid_code", "the replaced secret no longer works");
        let ok = app
            .post(
                "/api/v1/auth/2fa/authenticator/confirm",
                json!({"challenge_token": token, "code": app.totp(&secret, 0)}),
            )
            .await;
        assert_eq!(ok.status, 200, "{ok:?}");
        assert_eq!(ok.body, json!({"enrolled": "authenticator", "authentication_token": null, "next": "login"}));
        assert_eq!(app.verify(&token, "authenticator", &app.totp(&secret, 30)).await.code(), "invalid_challenge");
        // Sign in again: verify.
        let ch = app.challenge(&t, &agent).await;
        assert_eq!((ch["next"].clone(), ch["methods"].clone()), (json!("verify"), json!(["authenticator"])));
        let token = ch["challenge_token"].as_str().unwrap().to_owned();
        // The enrollment's step is used up: a replay, refused but not counted (the
        // successful confirmation reset the earlier wrong code).
        let replay = app.verify(&token, "authenticator", &app.totp(&secret, 0)).await;
        assert_eq!(
            (replay.status, replay.code(), replay.body["attempts_remaining"].as_u64()),
            (401, "invalid_code", Some(3)),
            "{replay:?}"
        );
        // Two steps ahead or behind: wrong (counted).
        let far = app.verify(&token, "authenticator", &app.totp(&secret, 60)).await;
        assert_eq!(far.body["attempts_remaining"], 2, "{far:?}");
        // The next step is within ±1.
        let r = app.verify(&token, "authenticator", &app.totp(&secret, 30)).await;
        assert_eq!(r.status, 200, "{r:?}");
        let session = r.s("authentication_token");
        assert_eq!(r.body["user"]["two_factor"], json!({"enrolled": ["authenticator"], "preferred": "authenticator"}));
        assert_eq!(app.get_as(&session, "/api/v1/me").await.status, 200);
        // That step is used now; after it the previous step is a replay too.
        let ch2 = app.challenge(&t, &agent).await;
        let t2 = ch2["challenge_token"].as_str().unwrap();
        assert_eq!(
            app.verify(t2, "authenticator", &app.totp(&secret, 30)).await.body["attempts_remaining"],
            3,
            "success reset the count; replay not counted"
        );
        app.next_step();
        app.next_step();
        let r = app.verify(t2, "authenticator", &app.totp(&secret, -30)).await;
        assert_eq!(r.code(), "invalid_code", "the step used is not accepted again even as `previous`");
        let r = app.verify(t2, "authenticator", &app.totp(&secret, 0)).await;
        assert_eq!(r.status, 200, "{r:?}");
        app.stop().await;
    }
}

#[actix_rt::test]
async fn three_wrong_codes_block_the_user_for_five_minutes() {
    for db in backends() {
        let app = TestApp::spawn(db, |_| {}).await;
        let (t, _, secret, _) = tenant_with_2fa(&app).await;
        app.next_step();
        let ch = app.challenge(&t, &admin(&t)).await;
        let token = ch["challenge_token"].as_str().unwrap().to_owned();
        let right = app.totp(&secret, 0);
        let bad = wrong(&right);
        let r1 = app.verify(&token, "authenticator", &bad).await;
        let r2 = app.verify(&token, "authenticator", &bad).await;
        assert_eq!(
            (r1.body["attempts_remaining"].as_u64(), r2.body["attempts_remaining"].as_u64()),
            (Some(2), Some(1))
        );
        // Signing in again does not reset the counter.
        let token2 = app.challenge(&t, &admin(&t)).await["challenge_token"].as_str().unwrap().to_owned();
        let r3 = app.verify(&token2, "authenticator", &bad).await;
        assert_eq!(
            (r3.status, r3.code(), r3.body["attempts_remaining"].as_u64(), r3.body["retry_after_seconds"].as_u64()),
            (401, "invalid_code", Some(0), Some(300)),
            "{r3:?}"
        );
        let r = app.verify(&token, "authenticator", &right).await;
        assert_eq!((r.status, r.code()), (423, "otp_blocked"), "even the right code");
        assert_eq!(r.header("retry-after").as_deref(), Some("300"));
        app.clock.advance_secs(299);
        assert_eq!(app.verify(&token2, "authenticator", &app.totp(&secret, 0)).await.status, 423);
        app.clock.advance_secs(1);
        let token3 = app.challenge(&t, &admin(&t)).await["challenge_token"].as_str().unwrap().to_owned();
        let r = app.verify(&token3, "authenticator", &app.totp(&secret, 0)).await;
        assert_eq!(r.status, 200, "after the block {r:?}");
        let audit = app.get_as(&r.s("authentication_token"), "/api/v1/audit-events?kind=otp_blocked").await;
        assert_eq!(audit.body["items"].as_array().unwrap().len(), 1);
        let metrics = app.call("GET", "/metrics", None, None).await.body.as_str().unwrap_or_default().to_owned();
        assert!(metrics.contains("latchkey_otp_blocks_total 1"), "{metrics}");
        app.stop().await;
    }
}

#[actix_rt::test]
async fn parallel_wrong_codes_are_evaluated_at_most_three_times_across_two_processes() {
    for db in backends() {
        let app = TestApp::spawn(db, |_| {}).await;
        let twin = app.twin().await;
        let (t, _, secret, _) = tenant_with_2fa(&app).await;
        app.next_step();
        let token = app.challenge(&t, &admin(&t)).await["challenge_token"].as_str().unwrap().to_owned();
        let bad = wrong(&app.totp(&secret, 0));
        let calls = (0..40).map(|i| {
            let target = if i % 2 == 0 { &app } else { &twin };
            target.verify(&token, "authenticator", &bad)
        });
        let results = futures::future::join_all(calls).await;
        let evaluated = results.iter().filter(|r| r.code() == "invalid_code").count();
        let blocked = results.iter().filter(|r| r.code() == "otp_blocked").count();
        assert_eq!((evaluated, blocked), (3, 37), "{db:?}");
        let zero = results.iter().filter(|r| r.body["attempts_remaining"] == 0).count();
        assert_eq!(zero, 1, "exactly one answer started the block");
        twin.stop().await;
        app.stop().await;
    }
}

#[actix_rt::test]
async fn a_code_with_a_leading_zero_works() {
    let app = TestApp::spawn(Db::Sqlite, |_| {}).await;
    let (t, _, secret, _) = tenant_with_2fa(&app).await;
    // Find a step whose code starts with 0.
    let s = totp_secret(&secret);
    let mut found = false;
    for _ in 0..400 {
        app.next_step();
        if s.code_at(app.clock.now_utc()).starts_with('0') {
            found = true;
            break;
        }
    }
    assert!(found, "a leading-zero code within 400 steps");
    let token = app.challenge(&t, &admin(&t)).await["challenge_token"].as_str().unwrap().to_owned();
    let code = app.totp(&secret, 0);
    assert!(code.starts_with('0') && code.len() == 6);
    assert_eq!(app.verify(&token, "authenticator", &code).await.status, 200);
}

#[actix_rt::test]
async fn challenges_expire_and_do_only_what_they_offer() {
    let app = TestApp::spawn(Db::Sqlite, |_| {}).await;
    let (t, admin_token, secret, agent) = tenant_with_2fa(&app).await;
    // Agents may only use email.
    let r = app
        .call("PUT", "/api/v1/settings/two-factor/methods", Some(json!({"agent": ["email"]})), Some(&admin_token))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    app.clock.advance_secs(2);
    let ch = app.challenge(&t, &agent).await;
    assert_eq!(ch["methods"], json!(["email"]));
    let token = ch["challenge_token"].as_str().unwrap();
    let r = app.post("/api/v1/auth/2fa/authenticator/setup", json!({"challenge_token": token})).await;
    assert_eq!((r.status, r.code()), (409, "already_enrolled"), "not offered: {r:?}");
    // The admin's verify challenge offers the authenticator only; enrolling is refused.
    let admin_ch = app.challenge(&t, &admin(&t)).await;
    let admin_token_ch = admin_ch["challenge_token"].as_str().unwrap();
    let r = app.post("/api/v1/auth/2fa/authenticator/setup", json!({"challenge_token": admin_token_ch})).await;
    assert_eq!(r.code(), "already_enrolled");
    let r = app.post("/api/v1/auth/2fa/email/send", json!({"challenge_token": admin_token_ch})).await;
    assert_eq!((r.status, r.code()), (403, "method_not_allowed"));
    assert_eq!(app.verify(admin_token_ch, "email", "123456").await.code(), "method_not_allowed");
    // Lifetime: 10 minutes.
    app.clock.advance_secs(600);
    let r = app.verify(admin_token_ch, "authenticator", &app.totp(&secret, 0)).await;
    assert_eq!((r.status, r.code()), (401, "invalid_challenge"));
}

/// Issue 17: a completed sign-in writes one audit row, `signed_in`, naming the method; no
/// `verified` row (on Postgres the one-statement TOTP path, on SQLite the portable one).
#[actix_rt::test]
async fn a_sign_in_writes_one_signed_in_row_naming_the_method() {
    for db in backends() {
        let app = TestApp::spawn(db, |_| {}).await;
        let (t, _, secret, _) = tenant_with_2fa(&app).await;
        app.next_step();
        let ch = app.challenge(&t, &admin(&t)).await;
        let r = app.verify(ch["challenge_token"].as_str().unwrap(), "authenticator", &app.totp(&secret, 0)).await;
        assert_eq!(r.status, 200, "{r:?}");
        let token = r.s("authentication_token");
        let user = r.body["user"]["id"].as_str().unwrap().to_owned();
        let events = app.get_as(&token, &format!("/api/v1/audit-events?subject_id={user}&limit=100")).await;
        let kinds: Vec<(String, serde_json::Value)> = events.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["kind"].as_str().unwrap().to_owned(), e["detail"].clone()))
            .collect();
        let newest = &kinds[0];
        assert_eq!(newest.0, "signed_in", "{db:?} {kinds:?}");
        assert_eq!(newest.1, json!({"second_factor": true, "method": "authenticator"}), "{db:?}");
        assert_ne!(kinds.get(1).map(|k| k.0.as_str()), Some("verified"), "{db:?}: no verified row beside it {kinds:?}");
        app.stop().await;
    }
}
