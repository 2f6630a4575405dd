//! Email OTP through the queue: send rules, expiry, voiding, single use, lockout, methods.

use serde_json::json;

use crate::common::*;

/// A tenant with 2FA on and a supervisor; returns (slug, admin token, supervisor email).
async fn setup(app: &TestApp) -> (String, String, String) {
    let t = slug("acme");
    app.tenant(&t).await;
    let a = app.token(&t, &admin(&t)).await;
    let sup = format!("sup@{t}.test");
    app.user(&a, &sup, "supervisor").await;
    app.enable_authenticator(&a).await;
    (t, a, sup)
}

fn token_of(ch: &serde_json::Value) -> String {
    ch["challenge_token"].as_str().unwrap().to_owned()
}

#[actix_rt::test]
async fn an_emailed_code_enrolls_and_signs_in() {
    for db in backends() {
        let app = TestApp::spawn(db, |_| {}).await;
        let (t, _, sup) = setup(&app).await;
        let ch = token_of(&app.challenge(&t, &sup).await);
        let (r, code) = app.send_code(&ch, &sup).await;
        assert_eq!(r.status, 202, "{r:?}");
        assert_eq!(r.s("email_masked"), format!("s***@{t}.test"));
        assert_eq!(r.body["sends_remaining"], 2);
        let now = app.clock.now_utc();
        assert_eq!(
            r.s("expires_at"),
            (now + chrono::Duration::seconds(300)).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        );
        assert_eq!(
            r.s("resend_available_at"),
            (now + chrono::Duration::seconds(60)).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        );
        let code = code.unwrap();
        assert!(code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()));
        // The queued job carries no plaintext code.
        let job = format!("{:?}", app.jobs().last().unwrap());
        assert!(!job.contains(&code), "{job}");
        let r = app.verify(&ch, "email", &code).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body["user"]["two_factor"]["enrolled"], json!(["email"]));
        let again = app.challenge(&t, &sup).await;
        assert_eq!((again["next"].clone(), again["methods"].clone()), (json!("verify"), json!(["email"])));
        // Single use.
        let r = app.verify(&token_of(&again), "email", &code).await;
        assert_eq!((r.status, r.code()), (401, "invalid_code"));
        app.stop().await;
    }
}

#[actix_rt::test]
async fn cooldown_sliding_window_expiry_and_voiding() {
    for db in backends() {
        let app = TestApp::spawn(db, |_| {}).await;
        let (t, _, sup) = setup(&app).await;
        let ch = token_of(&app.challenge(&t, &sup).await);
        let (_, first) = app.send_code(&ch, &sup).await;
        let (r, none) = app.send_code(&ch, &sup).await;
        assert_eq!((r.status, r.code(), r.body["retry_after_seconds"].as_u64()), (429, "resend_too_soon", Some(60)));
        assert_eq!(r.header("retry-after").as_deref(), Some("60"));
        assert!(none.is_none(), "nothing queued");
        app.clock.advance_secs(60);
        let (r, second) = app.send_code(&ch, &sup).await;
        assert_eq!(r.body["sends_remaining"], 1);
        // The first code was voided by the second: 410, and it counts.
        let r = app.verify(&ch, "email", &first.unwrap()).await;
        assert_eq!((r.status, r.code(), r.body["attempts_remaining"].as_u64()), (410, "code_expired", Some(2)));
        app.clock.advance_secs(60);
        let (r, third) = app.send_code(&ch, &sup).await;
        assert_eq!(r.body["sends_remaining"], 0);
        app.clock.advance_secs(60);
        let (r, _) = app.send_code(&ch, &sup).await;
        // First send at t0; window 300 s: the next send is allowed at t0+300 (now t0+180).
        assert_eq!(
            (r.status, r.code(), r.body["retry_after_seconds"].as_u64()),
            (429, "send_limit_reached", Some(120))
        );
        assert!(second.is_some() && third.is_some());
        // Past the third code's lifetime (sent at t0+120): 410.
        app.clock.advance_secs(240);
        let r = app.verify(&ch, "email", third.as_ref().unwrap()).await;
        assert_eq!((r.status, r.code()), (410, "code_expired"));
        // t0+420: the sends at t0+60 and t0+120 have left... t0+120+300 = 420: both gone.
        let (r, fourth) = app.send_code(&ch, &sup).await;
        assert_eq!((r.status, r.body["sends_remaining"].as_u64()), (202, Some(2)), "{r:?}");
        let r = app.verify(&ch, "email", &fourth.unwrap()).await;
        assert_eq!(r.status, 200, "{r:?}");
        app.stop().await;
    }
}

#[actix_rt::test]
async fn the_window_slides_with_earlier_sends_still_counting() {
    let app = TestApp::spawn(Db::Sqlite, |_| {}).await;
    let (t, _, sup) = setup(&app).await;
    let ch = token_of(&app.challenge(&t, &sup).await);
    for _ in 0..3 {
        assert_eq!(app.send_code(&ch, &sup).await.0.status, 202);
        app.clock.advance_secs(60);
    }
    // Now t0+180; at t0+300 the first send leaves the window, the other two still count.
    app.clock.advance_secs(120);
    let (r, _) = app.send_code(&ch, &sup).await;
    assert_eq!((r.status, r.body["sends_remaining"].as_u64()), (202, Some(0)), "{r:?}");
}

#[actix_rt::test]
async fn a_code_belongs_to_its_challenge_and_wrong_codes_block_sending_too() {
    for db in backends() {
        let app = TestApp::spawn(db, |_| {}).await;
        let (t, _, sup) = setup(&app).await;
        let ch1 = token_of(&app.challenge(&t, &sup).await);
        let ch2 = token_of(&app.challenge(&t, &sup).await);
        let (_, code) = app.send_code(&ch1, &sup).await;
        let code = code.unwrap();
        // The code on another challenge: refused and counted.
        let r = app.verify(&ch2, "email", &code).await;
        assert_eq!((r.code(), r.body["attempts_remaining"].as_u64()), ("invalid_code", Some(2)));
        let r = app.verify(&ch1, "email", &wrong(&code)).await;
        assert_eq!(r.body["attempts_remaining"], 1);
        let r = app.verify(&ch1, "email", &wrong(&code)).await;
        assert_eq!(
            (r.status, r.body["attempts_remaining"].as_u64(), r.body["retry_after_seconds"].as_u64()),
            (401, Some(0), Some(300))
        );
        let r = app.verify(&ch1, "email", &code).await;
        assert_eq!((r.status, r.code()), (423, "otp_blocked"));
        app.clock.advance_secs(60);
        let (r, _) = app.send_code(&ch2, &sup).await;
        assert_eq!((r.status, r.code()), (423, "otp_blocked"), "sending is refused during the block");
        assert!(r.header("retry-after").is_some());
        app.clock.advance_secs(240);
        let (r, fresh) = app.send_code(&ch2, &sup).await;
        assert_eq!(r.status, 202, "{r:?}");
        assert_eq!(app.verify(&ch2, "email", &fresh.unwrap()).await.status, 200);
        app.stop().await;
    }
}

#[actix_rt::test]
async fn parallel_sends_cannot_exceed_the_limits() {
    for db in backends() {
        let app = TestApp::spawn(db, |_| {}).await;
        let (t, _, sup) = setup(&app).await;
        let ch = token_of(&app.challenge(&t, &sup).await);
        let sends = (0..12).map(|_| app.post("/api/v1/auth/2fa/email/send", json!({"challenge_token": ch})));
        let results = futures::future::join_all(sends).await;
        let accepted = results.iter().filter(|r| r.status == 202).count();
        let refused = results.iter().filter(|r| r.code() == "resend_too_soon").count();
        assert_eq!((accepted, refused), (1, 11), "{db:?}");
        let codes = app
            .jobs()
            .iter()
            .filter(|j| matches!(app.payload(j), Some(latchkey_tenant::outbox::MailPayload::Otp { .. })))
            .count();
        assert_eq!(codes, 1, "one code mail queued");
        app.stop().await;
    }
}

#[actix_rt::test]
async fn methods_per_role_are_honoured_on_send_and_verify() {
    let app = TestApp::spawn(Db::Sqlite, |_| {}).await;
    let (t, a, sup) = setup(&app).await;
    let ch = token_of(&app.challenge(&t, &sup).await);
    let (_, code) = app.send_code(&ch, &sup).await;
    // The admin then allows supervisors the authenticator only.
    let r = app
        .call("PUT", "/api/v1/settings/two-factor/methods", Some(json!({"supervisor": ["authenticator"]})), Some(&a))
        .await;
    assert_eq!(r.status, 200);
    app.clock.advance_secs(2);
    let r = app.verify(&ch, "email", &code.unwrap()).await;
    assert_eq!((r.status, r.code()), (403, "method_not_allowed"));
    app.clock.advance_secs(60);
    let (r, _) = app.send_code(&ch, &sup).await;
    assert_eq!((r.status, r.code()), (403, "method_not_allowed"));
    let fresh = app.challenge(&t, &sup).await;
    assert_eq!((fresh["next"].clone(), fresh["methods"].clone()), (json!("enroll"), json!(["authenticator"])));
}

#[actix_rt::test]
async fn a_refused_queue_does_not_count_the_send() {
    let app = TestApp::spawn(Db::Sqlite, |_| {}).await;
    let (t, _, sup) = setup(&app).await;
    let ch = token_of(&app.challenge(&t, &sup).await);
    app.outbox.set_failing(true);
    let (r, _) = app.send_code(&ch, &sup).await;
    assert_eq!((r.status, r.code()), (503, "unavailable"));
    let ready = app.call("GET", "/readyz", None, None).await;
    assert_eq!((ready.status, ready.code()), (503, "unavailable"));
    assert!(ready.s("detail").contains("queue"), "{ready:?}");
    app.outbox.set_failing(false);
    let (r, code) = app.send_code(&ch, &sup).await;
    assert_eq!((r.status, r.body["sends_remaining"].as_u64()), (202, Some(2)), "{r:?}");
    assert_eq!(app.verify(&ch, "email", &code.unwrap()).await.status, 200);
}
