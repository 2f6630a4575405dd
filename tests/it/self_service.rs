//! Issue 13: recovery codes, step-up, one's own methods, trusted devices, the enrollment grace
//! period and the admin reset (DESIGN.md 5.2-5.5, 5.8), over HTTP with the manual clock, on
//! every backend.

use futures::future::join_all;
use serde_json::{Value, json};

use crate::common::*;

/// A tenant with 2FA on (the admin's authenticator) and an agent enrolled by email and signed
/// in: (tenant, admin token, admin secret, agent email, agent id, agent token).
struct World {
    t: String,
    admin: String,
    admin_secret: String,
    agent: String,
    agent_id: String,
    agent_token: String,
}

/// These tests sign in by email many times: the send window is not what they test.
fn roomy(c: &mut latchkey_core::Config) {
    c.email_otp_max_sends = 1000;
}

/// A fresh admin session (signs the admin in again with his authenticator).
async fn fresh_admin(app: &TestApp, w: &World) -> String {
    app.next_step();
    let ch = app.challenge(&w.t, &admin(&w.t)).await;
    let r = app.verify(ch["challenge_token"].as_str().unwrap(), "authenticator", &app.totp(&w.admin_secret, 0)).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.s("authentication_token")
}

async fn world(app: &TestApp) -> World {
    let t = slug("ss");
    app.tenant(&t).await;
    let admin_token = app.token(&t, &admin(&t)).await;
    let agent = format!("agent@{t}.test");
    let agent_id = app.user(&admin_token, &agent, "agent").await;
    let admin_secret = app.enable_authenticator(&admin_token).await;
    let agent_token = email_sign_in(app, &t, &agent, json!({})).await.s("authentication_token");
    assert!(!agent_token.is_empty());
    World { t, admin: admin_token, admin_secret, agent, agent_id, agent_token }
}

/// Signs in by email (enrolling email on an enroll challenge); `extra` goes into the verify.
async fn email_sign_in(app: &TestApp, t: &str, who: &str, extra: Value) -> Res {
    let ch = app.challenge(t, who).await;
    let ct = ch["challenge_token"].as_str().unwrap().to_owned();
    let (r, code) = app.send_code(&ct, who).await;
    assert_eq!(r.status, 202, "{r:?}");
    let mut body = json!({"challenge_token": ct, "method": "email", "code": code.unwrap()});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    // The next send must wait for the cooldown.
    app.clock.advance_secs(61);
    app.post("/api/v1/auth/2fa/verify", body).await
}

fn codes_of(r: &Res) -> Vec<String> {
    r.body["codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect()
}

#[actix_rt::test]
async fn recovery_codes_sign_in_once_and_count_like_codes() {
    for db in backends() {
        let app = TestApp::spawn(db, roomy).await;
        let w = world(&app).await;
        let r = app.post_as(&w.agent_token, "/api/v1/me/recovery-codes", json!({})).await;
        assert_eq!(r.status, 201, "{r:?}");
        let codes = codes_of(&r);
        assert_eq!(codes.len(), 10);
        assert!(codes.iter().all(|c| c.len() == 11 && &c[5..6] == "-"));
        let me = app.get_as(&w.agent_token, "/api/v1/me/two-factor").await;
        assert_eq!(me.body["recovery_codes"]["remaining"], 10);
        // Nothing stored in the clear.
        let stored: Vec<Vec<u8>> = app
            .core
            .store
            .run_blocking(|c| {
                use diesel::prelude::*;
                use latchkey_store::schema::recovery_codes as rc;
                Ok(rc::table.select(rc::code_hash).load::<Vec<u8>>(c)?)
            })
            .unwrap();
        assert_eq!(stored.len(), 10);
        assert!(
            stored.iter().all(|h| !codes.iter().any(|c| h.windows(10).any(|w| w == c.replace('-', "").as_bytes())))
        );

        let ch = app.challenge(&w.t, &w.agent).await;
        assert_eq!(ch["recovery_code"], true, "{ch}");
        assert!(!ch["methods"].as_array().unwrap().contains(&json!("recovery_code")));
        let ct = ch["challenge_token"].as_str().unwrap().to_owned();
        // Shapes are not counted.
        for bad in [json!("abc"), json!(1234567890), json!("abcde-1234u")] {
            let r = app
                .post("/api/v1/auth/2fa/verify", json!({"challenge_token": ct, "method": "recovery_code", "code": bad}))
                .await;
            assert_eq!((r.status, r.code()), (400, "invalid_request"), "{bad}: {r:?}");
        }
        let typed = codes[0].replace('-', "").to_uppercase();
        let r = app
            .post("/api/v1/auth/2fa/verify", json!({"challenge_token": ct, "method": "recovery_code", "code": typed}))
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let rc_session = r.s("authentication_token");
        // The session counts as verified: the user may enroll a new factor at once.
        let r = app.post_as(&rc_session, "/api/v1/me/two-factor/authenticator", json!({})).await;
        assert_eq!(r.status, 200, "{r:?}");
        // Spent: refused and counted, with the attempts the untouched counter had.
        let ct = app.challenge(&w.t, &w.agent).await["challenge_token"].as_str().unwrap().to_owned();
        let r = app
            .post(
                "/api/v1/auth/2fa/verify",
                json!({"challenge_token": ct, "method": "recovery_code", "code": codes[0]}),
            )
            .await;
        assert_eq!(
            (r.status, r.code(), r.body["attempts_remaining"].clone()),
            (401, "invalid_code", json!(2)),
            "{r:?}"
        );
        assert_eq!(app.get_as(&w.agent_token, "/api/v1/me/two-factor").await.body["recovery_codes"]["remaining"], 9);
        let kinds = audit_kinds(&app, &w.admin).await;
        assert!(
            kinds.contains(&"recovery_code_used".to_owned()) && kinds.contains(&"recovery_codes_generated".to_owned())
        );

        // One code raced on 20 challenges signs in exactly once.
        let mut chs = Vec::new();
        for _ in 0..20 {
            chs.push(app.challenge(&w.t, &w.agent).await["challenge_token"].as_str().unwrap().to_owned());
        }
        let answers = join_all(chs.iter().map(|c| {
            app.post(
                "/api/v1/auth/2fa/verify",
                json!({"challenge_token": c, "method": "recovery_code", "code": codes[1]}),
            )
        }))
        .await;
        assert_eq!(
            answers.iter().filter(|a| a.status == 200).count(),
            1,
            "{:?}",
            answers.iter().map(|a| a.status).collect::<Vec<_>>()
        );
        assert!(answers.iter().all(|a| [200, 401, 423].contains(&a.status)));
        assert_eq!(app.get_as(&w.agent_token, "/api/v1/me/two-factor").await.body["recovery_codes"]["remaining"], 8);
        // Each use told the user, and audited, with the codes left (on Postgres the sign-in
        // is one statement based on the count it read, rechecked under the locks).
        let told: Vec<(String, u32)> = app
            .notices(&w.t)
            .into_iter()
            .filter_map(|n| match n.what {
                latchkey_tenant::NoticeEvent::RecoveryCodeUsed { remaining } => Some((n.to, remaining)),
                _ => None,
            })
            .collect();
        assert_eq!(told, vec![(w.agent.clone(), 9), (w.agent.clone(), 8)], "{db:?}");
        let details: Vec<Value> =
            app.get_as(&w.admin, "/api/v1/audit-events?kind=recovery_code_used").await.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["detail"]["remaining"].clone())
                .collect();
        let mut details = details;
        details.sort_by_key(|d| d.as_u64());
        assert_eq!(details, vec![json!(8), json!(9)], "{db:?}");
        app.clock.advance_secs(301);

        // A new set voids the old one.
        app.clock.advance_secs(1);
        let fresh = email_sign_in(&app, &w.t, &w.agent, json!({})).await.s("authentication_token");
        let new = codes_of(&app.post_as(&fresh, "/api/v1/me/recovery-codes", json!({})).await);
        let ct = app.challenge(&w.t, &w.agent).await["challenge_token"].as_str().unwrap().to_owned();
        let r = app
            .post(
                "/api/v1/auth/2fa/verify",
                json!({"challenge_token": ct, "method": "recovery_code", "code": codes[2]}),
            )
            .await;
        assert_eq!(r.code(), "invalid_code");
        let r = app
            .post("/api/v1/auth/2fa/verify", json!({"challenge_token": ct, "method": "recovery_code", "code": new[0]}))
            .await;
        assert_eq!(r.status, 200, "{r:?}");

        // Off for the role: the flag is false, verifying and generating are 403.
        let admin_now = fresh_admin(&app, &w).await;
        let r =
            app.patch_as(&admin_now, "/api/v1/settings/two-factor", json!({"recovery_codes": {"agent": false}})).await;
        assert_eq!(r.status, 200, "{r:?}");
        let ch = app.challenge(&w.t, &w.agent).await;
        assert_eq!(ch["recovery_code"], false);
        let r = app
            .post(
                "/api/v1/auth/2fa/verify",
                json!({"challenge_token": ch["challenge_token"], "method": "recovery_code", "code": new[1]}),
            )
            .await;
        assert_eq!((r.status, r.code()), (403, "method_not_allowed"));
        let r = app.post_as(&fresh, "/api/v1/me/recovery-codes", json!({})).await;
        assert_eq!((r.status, r.code()), (403, "method_not_allowed"));
        app.stop().await;
    }
}

async fn audit_kinds(app: &TestApp, admin_token: &str) -> Vec<String> {
    app.get_as(admin_token, "/api/v1/audit-events?limit=200").await.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

#[actix_rt::test]
async fn step_up_refreshes_the_session_and_counts_wrong_codes() {
    for db in backends() {
        let app = TestApp::spawn(db, roomy).await;
        let w = world(&app).await;
        // The enablement verified the admin's session; five minutes later it is stale.
        app.clock.advance_secs(301);
        let r = app.patch_as(&w.admin, "/api/v1/settings/two-factor", json!({"passkey_sign_in": true})).await;
        assert_eq!(r.code(), "step_up_required");
        app.next_step();
        let r = app
            .post_as(
                &w.admin,
                "/api/v1/me/step-up",
                json!({"method": "authenticator", "code": wrong(&app.totp(&w.admin_secret, 0))}),
            )
            .await;
        assert_eq!((r.status, r.code(), r.body["attempts_remaining"].clone()), (401, "invalid_code", json!(2)));
        let r = app.post_as(&w.admin, "/api/v1/me/step-up", json!({"method": "authenticator", "code": "12345"})).await;
        assert_eq!(r.status, 400, "not counted");
        let code = app.totp(&w.admin_secret, 0);
        let r = app.post_as(&w.admin, "/api/v1/me/step-up", json!({"method": "authenticator", "code": code})).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.body["verified_at"].is_string());
        // The same step again is a replay: refused, not counted.
        let r = app.post_as(&w.admin, "/api/v1/me/step-up", json!({"method": "authenticator", "code": code})).await;
        assert_eq!((r.status, r.body["attempts_remaining"].clone()), (401, json!(3)));
        let r = app.patch_as(&w.admin, "/api/v1/settings/two-factor", json!({"passkey_sign_in": true})).await;
        assert_eq!(r.status, 200, "{r:?}");
        // Email step-up: a code bound to this session; a recovery code does not step up.
        app.clock.advance_secs(301);
        let before = app.jobs().len();
        let r = app.post_as(&w.agent_token, "/api/v1/me/step-up/email", json!({})).await;
        assert_eq!(r.status, 202, "{r:?}");
        assert_eq!(app.jobs().len(), before + 1);
        let again = app.post_as(&w.agent_token, "/api/v1/me/step-up/email", json!({})).await;
        assert_eq!(again.code(), "resend_too_soon");
        let code = app.last_code(&w.agent).unwrap();
        let r =
            app.post_as(&w.agent_token, "/api/v1/me/step-up", json!({"method": "email", "code": wrong(&code)})).await;
        assert_eq!(r.body["attempts_remaining"], 2);
        let r = app.post_as(&w.agent_token, "/api/v1/me/step-up", json!({"method": "email", "code": code})).await;
        assert_eq!(r.status, 200, "{r:?}");
        let r = app
            .post_as(&w.agent_token, "/api/v1/me/step-up", json!({"method": "recovery_code", "code": "abcde-12345"}))
            .await;
        assert_eq!(r.status, 400);
        // The agent has no authenticator: 403.
        let r = app
            .post_as(&w.agent_token, "/api/v1/me/step-up", json!({"method": "authenticator", "code": "123456"}))
            .await;
        assert_eq!((r.status, r.code()), (403, "method_not_allowed"));
        assert!(audit_kinds(&app, &w.admin).await.contains(&"step_up".to_owned()));
        app.stop().await;
    }
}

#[actix_rt::test]
async fn users_add_replace_remove_and_prefer_their_methods() {
    for db in backends() {
        let app = TestApp::spawn(db, roomy).await;
        let w = world(&app).await;
        let open = app.challenge(&w.t, &w.agent).await["challenge_token"].as_str().unwrap().to_owned();
        // Add an authenticator: the setup token is bound to this session.
        let r = app.post_as(&w.agent_token, "/api/v1/me/two-factor/authenticator", json!({})).await;
        assert_eq!(r.status, 200, "{r:?}");
        let (setup, secret) = (r.s("setup_token"), r.s("secret"));
        let other_session = email_sign_in(&app, &w.t, &w.agent, json!({})).await.s("authentication_token");
        let r = app
            .post_as(
                &other_session,
                "/api/v1/me/two-factor/authenticator/confirm",
                json!({"setup_token": setup, "code": app.totp(&secret, 0)}),
            )
            .await;
        assert_eq!(r.code(), "invalid_setup_token");
        let code = app.totp(&secret, 0);
        let r = app
            .post_as(
                &w.agent_token,
                "/api/v1/me/two-factor/authenticator/confirm",
                json!({"setup_token": setup, "code": code}),
            )
            .await;
        assert_eq!((r.status, r.body.clone()), (200, json!({"enrolled": "authenticator"})), "{r:?}");
        // The change voided the challenge opened before it.
        let r = app.verify(&open, "email", "000000").await;
        assert_eq!(r.code(), "invalid_challenge");
        let me = app.get_as(&w.agent_token, "/api/v1/me/two-factor").await;
        assert_eq!(me.body["enrolled"], json!(["authenticator", "email"]));
        assert!(me.body["authenticator"]["created_at"].is_string() && me.body["email"]["created_at"].is_string());
        // Replace it (new phone): the old secret works until the new one is confirmed, and the
        // last accepted step never moves back.
        app.next_step();
        let r = app.post_as(&w.agent_token, "/api/v1/me/two-factor/authenticator", json!({})).await;
        let (setup2, secret2) = (r.s("setup_token"), r.s("secret"));
        assert_ne!(secret2, secret);
        let ch = app.challenge(&w.t, &w.agent).await["challenge_token"].as_str().unwrap().to_owned();
        assert_eq!(app.verify(&ch, "authenticator", &app.totp(&secret, 0)).await.status, 200, "old secret still works");
        let r = app
            .post_as(
                &w.agent_token,
                "/api/v1/me/two-factor/authenticator/confirm",
                json!({"setup_token": setup2, "code": app.totp(&secret2, -30)}),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let agent_id = w.agent_id.clone();
        let last_step: Option<i64> = app
            .core
            .store
            .run_blocking(move |c| {
                use diesel::prelude::*;
                use latchkey_store::schema::enrollments as e;
                Ok(e::table
                    .filter(e::method.eq("authenticator"))
                    .filter(e::user_id.eq(agent_id))
                    .select(e::last_step)
                    .first(c)?)
            })
            .unwrap();
        assert_eq!(last_step, Some(app.clock.now_utc().timestamp() / 30), "the step never moved back");
        app.next_step();
        let ch = app.challenge(&w.t, &w.agent).await["challenge_token"].as_str().unwrap().to_owned();
        assert_eq!(app.verify(&ch, "authenticator", &app.totp(&secret, 0)).await.code(), "invalid_code");
        let ch = app.challenge(&w.t, &w.agent).await["challenge_token"].as_str().unwrap().to_owned();
        assert_eq!(app.verify(&ch, "authenticator", &app.totp(&secret2, 0)).await.status, 200);
        // Preferred method: listed first, and kept after a verification with another one.
        let r = app
            .call("PUT", "/api/v1/me/two-factor/preferred", Some(json!({"method": "email"})), Some(&w.agent_token))
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(app.challenge(&w.t, &w.agent).await["methods"], json!(["email", "authenticator"]));
        app.next_step();
        let ch = app.challenge(&w.t, &w.agent).await["challenge_token"].as_str().unwrap().to_owned();
        assert_eq!(
            app.verify(&ch, "authenticator", &app.totp(&secret2, 0)).await.body["user"]["two_factor"]["preferred"],
            "email"
        );
        // Remove email, then the last method is refused.
        let r = app.call("DELETE", "/api/v1/me/two-factor/email", None, Some(&w.agent_token)).await;
        assert_eq!(r.status, 204, "{r:?}");
        let r = app.call("DELETE", "/api/v1/me/two-factor/authenticator", None, Some(&w.agent_token)).await;
        assert_eq!((r.status, r.code()), (409, "last_method"));
        let r = app.call("DELETE", "/api/v1/me/two-factor/email", None, Some(&w.agent_token)).await;
        assert_eq!(r.status, 404);
        assert_eq!(
            app.get_as(&w.agent_token, "/api/v1/me/two-factor").await.body["enrolled"],
            json!(["authenticator"])
        );
        // Stale second factor: step-up required; a method the role does not allow: 403.
        app.clock.advance_secs(301);
        let r = app.post_as(&w.agent_token, "/api/v1/me/two-factor/email", json!({})).await;
        assert_eq!(r.code(), "step_up_required");
        app.next_step();
        let r = app
            .post_as(
                &w.agent_token,
                "/api/v1/me/step-up",
                json!({"method": "authenticator", "code": app.totp(&secret2, 0)}),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        app.clock.advance_secs(1);
        let r = app
            .call(
                "PUT",
                "/api/v1/settings/two-factor/methods",
                Some(json!({"agent": ["authenticator"]})),
                Some(&w.admin),
            )
            .await;
        assert_eq!(r.status, 403, "the admin's own session is stale: {r:?}");
        let kinds = audit_kinds(&app, &w.admin).await;
        assert!(kinds.contains(&"factor_removed".to_owned()));
        app.stop().await;
    }
}

#[actix_rt::test]
async fn trusted_devices_stand_in_until_they_expire_or_are_revoked() {
    for db in backends() {
        let app = TestApp::spawn(db, roomy).await;
        let w = world(&app).await;
        let remember = |who: String| {
            let (app, t) = (&app, w.t.clone());
            async move { email_sign_in(app, &t, &who, json!({"remember_device": true})).await }
        };
        // Off by default: the flag is ignored.
        let r = remember(w.agent.clone()).await;
        assert_eq!((r.status, r.body.get("device_token")), (200, None), "{r:?}");
        let r =
            app.patch_as(&w.admin, "/api/v1/settings/two-factor", json!({"remember_device_days": {"agent": 91}})).await;
        assert_eq!(r.status, 400);
        let r =
            app.patch_as(&w.admin, "/api/v1/settings/two-factor", json!({"remember_device_days": {"agent": 30}})).await;
        assert_eq!(r.status, 200);
        let r = remember(w.agent.clone()).await;
        let device = r.s("device_token");
        assert!(!device.is_empty(), "{r:?}");
        let signed = |device: String, password: &'static str| {
            let (app, t, agent) = (&app, w.t.clone(), w.agent.clone());
            async move {
                app.post(
                    "/api/v1/auth",
                    json!({"tenant": t, "email": agent, "password": password, "device_token": device}),
                )
                .await
            }
        };
        let r = signed(device.clone(), PASSWORD).await;
        assert_eq!(
            (r.body["trusted_device"].clone(), r.body["two_factor"].clone()),
            (json!(true), Value::Null),
            "{r:?}"
        );
        let trusted_session = r.s("authentication_token");
        // A trusted-device session never satisfies step-up.
        let r = app.post_as(&trusted_session, "/api/v1/me/recovery-codes", json!({})).await;
        assert_eq!(r.code(), "step_up_required");
        let r = signed(device.clone(), "wrong password").await;
        assert_eq!(r.code(), "invalid_credentials");
        let list = app.get_as(&trusted_session, "/api/v1/me/trusted-devices").await;
        assert_eq!(list.body["items"].as_array().map(Vec::len), Some(1), "{list:?}");
        // Blocked: not honoured; after the block: honoured again.
        let ch = app.challenge(&w.t, &w.agent).await["challenge_token"].as_str().unwrap().to_owned();
        for _ in 0..3 {
            app.verify(&ch, "email", "000000").await;
        }
        assert!(signed(device.clone(), PASSWORD).await.body["two_factor"].is_object());
        app.clock.advance_secs(301);
        assert_eq!(signed(device.clone(), PASSWORD).await.body["trusted_device"], true);
        // Expiry after 30 days.
        app.clock.advance_secs(30 * 86_400);
        assert!(signed(device.clone(), PASSWORD).await.body["two_factor"].is_object());
        // Revocations: by the user, by a password change, by lowering the days to 0 (for good).
        let d2 = remember(w.agent.clone()).await.s("device_token");
        let s2 = signed(d2.clone(), PASSWORD).await.s("authentication_token");
        let id =
            app.get_as(&s2, "/api/v1/me/trusted-devices").await.body["items"][0]["id"].as_str().unwrap().to_owned();
        assert_eq!(app.call("DELETE", &format!("/api/v1/me/trusted-devices/{id}"), None, Some(&s2)).await.status, 204);
        assert_eq!(app.call("DELETE", &format!("/api/v1/me/trusted-devices/{id}"), None, Some(&s2)).await.status, 404);
        assert!(signed(d2, PASSWORD).await.body["two_factor"].is_object());
        let d3 = remember(w.agent.clone()).await.s("device_token");
        let admin_now = fresh_admin(&app, &w).await;
        let r = app
            .patch_as(&admin_now, "/api/v1/settings/two-factor", json!({"remember_device_days": {"agent": 0}}))
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let r = app
            .patch_as(&admin_now, "/api/v1/settings/two-factor", json!({"remember_device_days": {"agent": 30}}))
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(signed(d3, PASSWORD).await.body["two_factor"].is_object(), "stays revoked");
        let d4 = remember(w.agent.clone()).await.s("device_token");
        let s4 = signed(d4.clone(), PASSWORD).await.s("authentication_token");
        let r = app
            .post_as(
                &s4,
                "/api/v1/me/password",
                json!({"current_password": PASSWORD, "new_password": "another long password"}),
            )
            .await;
        assert_eq!(r.status, 204);
        assert!(signed(d4, "another long password").await.body["two_factor"].is_object());
        let kinds = audit_kinds(&app, &admin_now).await;
        assert!(
            kinds.contains(&"trusted_device_created".to_owned())
                && kinds.contains(&"trusted_device_revoked".to_owned())
        );
        app.stop().await;
    }
}

#[actix_rt::test]
async fn a_device_token_raced_against_its_revocation_never_signs_in_after_it() {
    for db in backends() {
        let app = TestApp::spawn(db, |c| {
            roomy(c);
            c.signin_max_failures = 10_000;
        })
        .await;
        let w = world(&app).await;
        app.patch_as(&w.admin, "/api/v1/settings/two-factor", json!({"remember_device_days": {"agent": 30}})).await;
        let device = email_sign_in(&app, &w.t, &w.agent, json!({"remember_device": true})).await.s("device_token");
        let body = json!({"tenant": w.t, "email": w.agent, "password": PASSWORD, "device_token": device});
        let storm = join_all((0..16).map(|_| app.post("/api/v1/auth", body.clone())));
        let revoke = async {
            actix_rt::time::sleep(std::time::Duration::from_millis(10)).await;
            let r = app.call("DELETE", "/api/v1/me/trusted-devices", None, Some(&w.agent_token)).await;
            assert_eq!(r.status, 204);
        };
        let (answers, ()) = futures::join!(storm, revoke);
        // Sessions minted before the revocation are fine; none after it.
        assert!(answers.iter().all(|a| a.status == 200));
        for _ in 0..4 {
            assert!(app.post("/api/v1/auth", body.clone()).await.body["two_factor"].is_object());
        }
        app.stop().await;
    }
}

#[actix_rt::test]
async fn a_grace_period_lets_agents_skip_enrollment_until_its_end() {
    for db in backends() {
        let app = TestApp::spawn(db, roomy).await;
        let t = slug("grace");
        app.tenant(&t).await;
        let a = app.token(&t, &admin(&t)).await;
        let admin2 = format!("second@{t}.test");
        app.user(&a, &admin2, "admin").await;
        let agent = format!("agent@{t}.test");
        app.user(&a, &agent, "agent").await;
        app.enable_authenticator(&a).await;
        let ch = app.challenge(&t, &agent).await;
        assert_eq!(ch["skippable"], false);
        let r = app.post("/api/v1/auth/2fa/skip", json!({"challenge_token": ch["challenge_token"]})).await;
        assert_eq!((r.status, r.code()), (403, "enrollment_required"));
        let r = app.patch_as(&a, "/api/v1/settings/two-factor", json!({"enrollment_grace_days": 7})).await;
        assert_eq!(r.status, 200);
        // The grace period runs from the first time the agent was asked (above).
        let first = app.clock.now_utc();
        app.clock.advance_secs(3600);
        let ch = app.challenge(&t, &agent).await;
        assert_eq!(ch["skippable"], true);
        let by: chrono::DateTime<chrono::Utc> = ch["enroll_by"].as_str().unwrap().parse().unwrap();
        assert!((by - (first + chrono::Duration::days(7))).num_seconds().abs() <= 1, "{by} vs {first}");
        let r = app.post("/api/v1/auth/2fa/skip", json!({"challenge_token": ch["challenge_token"]})).await;
        assert_eq!(r.status, 200, "{r:?}");
        let skipped = r.s("authentication_token");
        assert_eq!(app.get_as(&skipped, "/api/v1/me").await.status, 200);
        // The challenge is used up; a skipped session never satisfies step-up.
        let r = app.post("/api/v1/auth/2fa/skip", json!({"challenge_token": ch["challenge_token"]})).await;
        assert_eq!(r.code(), "invalid_challenge");
        let r = app.post_as(&skipped, "/api/v1/me/recovery-codes", json!({})).await;
        assert_eq!(r.code(), "enrollment_required");
        let r = app.post_as(&skipped, "/api/v1/me/step-up", json!({"method": "email", "code": "123456"})).await;
        assert_eq!(r.status, 403);
        // Admins never skip.
        let ch = app.challenge(&t, &admin2).await;
        assert_eq!(ch["skippable"], false);
        let r = app.post("/api/v1/auth/2fa/skip", json!({"challenge_token": ch["challenge_token"]})).await;
        assert_eq!(r.code(), "enrollment_required");
        assert!(audit_kinds(&app, &a).await.contains(&"enrollment_skipped".to_owned()));
        // Past the deadline: no more.
        app.clock.set(first + chrono::Duration::days(7));
        let ch = app.challenge(&t, &agent).await;
        assert_eq!(ch["skippable"], false);
        let r = app.post("/api/v1/auth/2fa/skip", json!({"challenge_token": ch["challenge_token"]})).await;
        assert_eq!(r.code(), "enrollment_required");
        app.stop().await;
    }
}

#[actix_rt::test]
async fn admins_reset_a_users_second_factor_but_not_their_own() {
    for db in backends() {
        let app = TestApp::spawn(db, roomy).await;
        let w = world(&app).await;
        let other = slug("other");
        app.tenant(&other).await;
        let other_admin = app.token(&other, &admin(&other)).await;
        let r = app.post_as(&other_admin, &format!("/api/v1/agents/{}/reset-2fa", w.agent_id), json!({})).await;
        assert_eq!(r.status, 404);
        let r = app.post_as(&w.agent_token, &format!("/api/v1/agents/{}/reset-2fa", w.agent_id), json!({})).await;
        assert_eq!((r.status, r.code()), (403, "forbidden"));
        let admin_id = app.get_as(&w.admin, "/api/v1/me").await.s("id");
        let r = app.post_as(&w.admin, &format!("/api/v1/agents/{admin_id}/reset-2fa"), json!({})).await;
        assert_eq!((r.status, r.code()), (403, "forbidden"));
        let r = app.post_as(&w.admin, &format!("/api/v1/agents/{}/reset-2fa", w.agent_id), json!({})).await;
        assert_eq!((r.status, r.body["two_factor"]["enrolled"].clone()), (200, json!([])), "{r:?}");
        assert_eq!(app.get_as(&w.agent_token, "/api/v1/me").await.code(), "unauthenticated");
        assert_eq!(app.challenge(&w.t, &w.agent).await["next"], "enroll");
        assert!(audit_kinds(&app, &w.admin).await.contains(&"admin_reset".to_owned()));
        // Stale: step-up required.
        app.clock.advance_secs(301);
        let r = app.post_as(&w.admin, &format!("/api/v1/agents/{}/reset-2fa", w.agent_id), json!({})).await;
        assert_eq!(r.code(), "step_up_required");
        app.stop().await;
    }
}
