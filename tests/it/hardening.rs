//! Issue 11, the findings of the red-team pass that live in the use-cases and the store: each
//! test races what an attacker raced (many clients, and on Postgres two app processes on one
//! database) or replays what was accepted, and asserts the rule of DESIGN.md that was broken.

use std::rc::Rc;

use futures::future::join_all;
use serde_json::json;

use crate::common::*;

/// Signs in with the password alone, `rounds` times per client, `clients` clients spread over
/// `apps`; the session tokens handed out (2FA off at the time, as the answer claimed).
async fn sign_in_storm(
    apps: &[&TestApp],
    t: &str,
    email: &str,
    password: &str,
    clients: usize,
    rounds: usize,
) -> Vec<String> {
    let runs = (0..clients).map(|i| {
        let app = apps[i % apps.len()];
        async move {
            let mut tokens = Vec::new();
            for _ in 0..rounds {
                let r = app.post("/api/v1/auth", json!({"tenant": t, "email": email, "password": password})).await;
                assert!(r.status < 500, "a sign-in answered {r:?}");
                if r.status == 200 && r.body["two_factor"].is_null() {
                    tokens.push(r.s("authentication_token"));
                }
            }
            tokens
        }
    });
    join_all(runs).await.into_iter().flatten().collect()
}

/// The tokens among `tokens` that still open a session.
async fn live(app: &TestApp, tokens: &[String]) -> usize {
    let mut n = 0;
    for t in tokens {
        if app.get_as(t, "/api/v1/me").await.status == 200 {
            n += 1;
        }
    }
    n
}

/// Finding 1: no password-only session outlives turning 2FA on, however many sign-ins race
/// the enablement, in this process or in another one with its own cached policy.
#[actix_rt::test]
async fn no_password_only_session_outlives_enabling_2fa() {
    for db in backends() {
        let app = TestApp::spawn(db, |c| c.policy_cache_ms = 60_000).await;
        let twin = app.twin().await;
        let both = [&app, &twin];
        let t = slug("race");
        app.tenant(&t).await;
        let agent = format!("agent@{t}.test");
        let a = app.token(&t, &admin(&t)).await;
        app.user(&a, &agent, "agent").await;
        // Both processes have cached "2FA off".
        assert_eq!(twin.login(&t, &agent).await.status, 200);
        let mut secret = String::new();
        for round in 0..3 {
            let r = app
                .post_as(
                    &a,
                    "/api/v1/settings/two-factor/enable",
                    json!({"password": PASSWORD, "method": "authenticator"}),
                )
                .await;
            assert_eq!(r.status, 200, "{r:?}");
            // From the second round on the admin confirms with the authenticator he has.
            let setup = r.s("setup_token");
            if round == 0 {
                secret = r.s("secret");
            }
            let confirm = async {
                // Let the storm start first.
                actix_rt::time::sleep(std::time::Duration::from_millis(20)).await;
                let c = app
                    .post_as(
                        &a,
                        "/api/v1/settings/two-factor/enable/confirm",
                        json!({"setup_token": setup, "code": app.totp(&secret, 0)}),
                    )
                    .await;
                assert_eq!(c.status, 200, "{c:?}");
            };
            let (tokens, ()) = futures::join!(sign_in_storm(&both, &t, &agent, PASSWORD, 8, 6), confirm);
            assert_eq!(
                live(&app, &tokens).await,
                0,
                "{db:?} round {round}: of {} sessions, some outlived the enablement",
                tokens.len()
            );
            // The storm after the switch gets challenges only, in both processes.
            assert!(sign_in_storm(&both, &t, &agent, PASSWORD, 2, 1).await.is_empty());
            let d = app.post_as(&a, "/api/v1/settings/two-factor/disable", json!({"password": PASSWORD})).await;
            assert_eq!(d.status, 200, "{d:?}");
            app.next_step();
        }
        twin.stop().await;
        app.stop().await;
    }
}

/// Finding 2: no session opened with the old password outlives a password change, and none
/// opened with the old address outlives an email change.
#[actix_rt::test]
async fn no_session_outlives_a_password_or_email_change_it_raced() {
    for db in backends() {
        // The storms make hundreds of attempts with a password that turns wrong.
        let app = TestApp::spawn(db, |c| c.signin_max_failures = 10_000).await;
        let twin = app.twin().await;
        let both = [&app, &twin];
        let t = slug("race");
        app.tenant(&t).await;
        let a = app.token(&t, &admin(&t)).await;
        let agent = format!("agent@{t}.test");
        let agent_id = app.user(&a, &agent, "agent").await;
        let mut password = PASSWORD.to_owned();
        for round in 0..3 {
            let own = app
                .post("/api/v1/auth", json!({"tenant": t, "email": agent, "password": password}))
                .await
                .s("authentication_token");
            let next = format!("{PASSWORD} {round}");
            let change = async {
                actix_rt::time::sleep(std::time::Duration::from_millis(20)).await;
                let r = app
                    .post_as(&own, "/api/v1/me/password", json!({"current_password": password, "new_password": next}))
                    .await;
                assert_eq!(r.status, 204, "{r:?}");
            };
            let (tokens, ()) = futures::join!(sign_in_storm(&both, &t, &agent, &password, 8, 6), change);
            assert_eq!(
                live(&app, &tokens).await,
                0,
                "{db:?}: of {} old-password sessions, some outlived the change",
                tokens.len()
            );
            password = next;
        }
        let mut email = agent.clone();
        for round in 0..3 {
            let next = format!("agent{round}@{t}.test");
            let change = async {
                actix_rt::time::sleep(std::time::Duration::from_millis(20)).await;
                let r = app.patch_as(&a, &format!("/api/v1/agents/{agent_id}"), json!({"email": next})).await;
                assert_eq!(r.status, 200, "{r:?}");
            };
            let (tokens, ()) = futures::join!(sign_in_storm(&both, &t, &email, &password, 8, 6), change);
            assert_eq!(
                live(&app, &tokens).await,
                0,
                "{db:?}: of {} old-address sessions, some outlived the change",
                tokens.len()
            );
            email = next;
        }
        twin.stop().await;
        app.stop().await;
    }
}

/// Finding 4: a sign-in racing the deletion of its user answers `invalid_credentials` (or
/// succeeds before it), never a 500, and nothing it opened survives.
#[actix_rt::test]
async fn a_sign_in_racing_the_deletion_of_its_user_never_fails() {
    for db in backends() {
        let app = TestApp::spawn(db, |c| c.signin_max_failures = 10_000).await;
        let twin = app.twin().await;
        let both = [&app, &twin];
        let t = slug("race");
        app.tenant(&t).await;
        let a = app.token(&t, &admin(&t)).await;
        for round in 0..4 {
            let agent = format!("gone{round}@{t}.test");
            let id = app.user(&a, &agent, "agent").await;
            let delete = async {
                actix_rt::time::sleep(std::time::Duration::from_millis(15)).await;
                let r = app.call("DELETE", &format!("/api/v1/agents/{id}"), None, Some(&a)).await;
                assert_eq!(r.status, 204, "{r:?}");
            };
            let (tokens, ()) = futures::join!(sign_in_storm(&both, &t, &agent, PASSWORD, 8, 5), delete);
            assert_eq!(live(&app, &tokens).await, 0);
            let r = app.login(&t, &agent).await;
            assert_eq!((r.status, r.code()), (401, "invalid_credentials"));
        }
        twin.stop().await;
        app.stop().await;
    }
}

/// Finding 5: the pairs of requests that lock a tenant and one of its users never deadlock
/// (on Postgres a deadlock answers 500): enablement racing profile edits, user management,
/// sign-ins and password changes, through two processes.
#[actix_rt::test]
async fn tenant_and_user_locks_are_taken_in_one_order() {
    for db in backends() {
        let app = TestApp::spawn(db, |_| {}).await;
        let twin = app.twin().await;
        let t = slug("locks");
        let admin_id = app.tenant(&t).await;
        let a = app.token(&t, &admin(&t)).await;
        let agent = format!("agent@{t}.test");
        let agent_id = app.user(&a, &agent, "agent").await;
        let a_twin = Rc::new(a.clone());
        let mut secret = String::new();
        for round in 0..6 {
            let r = app
                .post_as(
                    &a,
                    "/api/v1/settings/two-factor/enable",
                    json!({"password": PASSWORD, "method": "authenticator"}),
                )
                .await;
            assert_eq!(r.status, 200, "{r:?}");
            let setup = r.s("setup_token");
            if round == 0 {
                secret = r.s("secret");
            }
            let code = app.totp(&secret, 0);
            let a2 = a_twin.clone();
            let (admin_path, agent_path, admin_email) =
                (format!("/api/v1/agents/{admin_id}"), format!("/api/v1/agents/{agent_id}"), admin(&t));
            type Call<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Res> + 'a>>;
            let mut calls: Vec<Call<'_>> = vec![Box::pin(app.post_as(
                &a,
                "/api/v1/settings/two-factor/enable/confirm",
                json!({"setup_token": setup, "code": code}),
            ))];
            for i in 0..4 {
                let via = if i % 2 == 0 { &twin } else { &app };
                // The enabling admin's own row, and the tenant row, from both sides.
                calls.push(Box::pin(via.patch_as(&a2, "/api/v1/me", json!({"name": format!("Ada {round}.{i}")}))));
                calls.push(Box::pin(via.patch_as(&a2, &admin_path, json!({"name": format!("Ada {round}.{i}")}))));
            }
            calls.push(Box::pin(twin.patch_as(&a2, &agent_path, json!({"name": format!("Agent {round}")}))));
            calls.push(Box::pin(app.patch_as(&a, &agent_path, json!({"role": "supervisor"}))));
            calls.push(Box::pin(twin.post_as(
                &a2,
                "/api/v1/agents",
                json!({"email": format!("new{round}@{t}.test"), "name": "New", "role": "agent", "password": PASSWORD}),
            )));
            calls.push(Box::pin(twin.login(&t, &admin_email)));
            calls.push(Box::pin(app.login(&t, &agent)));
            let answers = join_all(calls).await;
            for r in &answers {
                assert!(r.status < 500, "{db:?} round {round}: {r:?}");
            }
            assert_eq!(answers[0].status, 200, "{:?}", answers[0]);
            let d = app.post_as(&a, "/api/v1/settings/two-factor/disable", json!({"password": PASSWORD})).await;
            assert_eq!(d.status, 200, "{d:?}");
            let back = app.patch_as(&a, &agent_path, json!({"role": "agent"})).await;
            assert_eq!(back.status, 200, "{back:?}");
            app.next_step();
        }
        twin.stop().await;
        app.stop().await;
    }
}

/// Finding 6: a role change ends the old role's way back in: a demoted admin's emailed link
/// no longer resets anything, and an agent's pending request does not survive promotion.
#[actix_rt::test]
async fn a_role_change_ends_the_old_roles_recovery_path() {
    for db in backends() {
        let app = TestApp::spawn(db, |_| {}).await;
        let t = slug("role");
        app.tenant(&t).await;
        let a = app.token(&t, &admin(&t)).await;
        let admin2 = format!("second@{t}.test");
        let admin2_id = app.user(&a, &admin2, "admin").await;
        let agent = format!("agent@{t}.test");
        let agent_id = app.user(&a, &agent, "agent").await;
        app.enable_authenticator(&a).await;
        // The second admin enrolls, then asks for a reset link.
        let ch = app.challenge(&t, &admin2).await;
        app.enroll_authenticator(ch["challenge_token"].as_str().unwrap()).await;
        let ch = app.challenge(&t, &admin2).await;
        let r = app.post("/api/v1/auth/2fa/recovery", json!({"challenge_token": ch["challenge_token"]})).await;
        assert_eq!((r.status, r.s("kind")), (202, "email_link".to_owned()), "{r:?}");
        let link = app.last_reset_token(&admin2).unwrap();
        // The agent enrolls by email and asks for recovery.
        let ch = app.challenge(&t, &agent).await;
        let ct = ch["challenge_token"].as_str().unwrap().to_owned();
        let (_, code) = app.send_code(&ct, &agent).await;
        assert_eq!(app.verify(&ct, "email", &code.unwrap()).await.status, 200);
        let ch = app.challenge(&t, &agent).await;
        let r = app.post("/api/v1/auth/2fa/recovery", json!({"challenge_token": ch["challenge_token"]})).await;
        let request = r.body["request"]["id"].as_str().unwrap().to_owned();
        // Demote the admin, promote the agent.
        assert_eq!(
            app.patch_as(&a, &format!("/api/v1/agents/{admin2_id}"), json!({"role": "agent"})).await.status,
            200
        );
        assert_eq!(app.patch_as(&a, &format!("/api/v1/agents/{agent_id}"), json!({"role": "admin"})).await.status, 200);
        let r = app.post("/api/v1/auth/2fa/reset", json!({"token": link})).await;
        assert_eq!((r.status, r.code()), (401, "invalid_token"), "{r:?}");
        assert_eq!(app.challenge(&t, &admin2).await["next"], "verify", "the demoted admin is still enrolled");
        let r = app.post_as(&a, &format!("/api/v1/recovery-requests/{request}/approve"), json!({})).await;
        assert_eq!((r.status, r.code()), (409, "request_not_pending"), "{r:?}");
        assert_eq!(app.challenge(&t, &agent).await["next"], "verify", "the promoted agent is still enrolled");
        // A link sent while the user is an admin works (after the code's cooldown).
        app.clock.advance_secs(61);
        let ch = app.challenge(&t, &agent).await;
        let r = app.post("/api/v1/auth/2fa/recovery", json!({"challenge_token": ch["challenge_token"]})).await;
        assert_eq!(r.s("kind"), "email_link", "{r:?}");
        let link = app.last_reset_token(&agent).unwrap();
        assert_eq!(app.post("/api/v1/auth/2fa/reset", json!({"token": link})).await.status, 200);
        app.stop().await;
    }
}

/// Finding 7: a challenge opened with the old password does not sign in after a password
/// change.
#[actix_rt::test]
async fn a_challenge_opened_before_a_password_change_is_void() {
    for db in backends() {
        let app = TestApp::spawn(db, |_| {}).await;
        let t = slug("pw");
        app.tenant(&t).await;
        let a = app.token(&t, &admin(&t)).await;
        let secret = app.enable_authenticator(&a).await;
        app.next_step();
        let ch = app.challenge(&t, &admin(&t)).await;
        let r = app
            .post_as(
                &a,
                "/api/v1/me/password",
                json!({"current_password": PASSWORD, "new_password": "a new long password"}),
            )
            .await;
        assert_eq!(r.status, 204, "{r:?}");
        let v = app.verify(ch["challenge_token"].as_str().unwrap(), "authenticator", &app.totp(&secret, 0)).await;
        assert_eq!((v.status, v.code()), (401, "invalid_challenge"), "{v:?}");
        app.stop().await;
    }
}

/// Finding 8: wrong passwords for a tenant that does not exist are counted in the store, like
/// real ones: across two processes (and restarts), a fake slug answers exactly like a real one.
#[actix_rt::test]
async fn unknown_tenants_answer_like_known_ones_across_processes() {
    for db in backends() {
        let app = TestApp::spawn(db, |_| {}).await;
        let twin = app.twin().await;
        let t = slug("real");
        app.tenant(&t).await;
        let mut answers = Vec::new();
        for (i, tenant) in [t.as_str(), "no-such-tenant"].into_iter().enumerate() {
            let mut codes = Vec::new();
            for n in 0..12 {
                let via = if n % 2 == 0 { &app } else { &twin };
                let r = via
                    .post("/api/v1/auth", json!({"tenant": tenant, "email": admin(&t), "password": "wrong wrong"}))
                    .await;
                codes.push((r.status, r.code().to_owned()));
            }
            answers.push(codes);
            assert_eq!(answers[i][..10].iter().filter(|(s, _)| *s == 401).count(), 10, "{tenant}: {:?}", answers[i]);
            assert_eq!(answers[i][10..], [(429, "rate_limited".to_owned()), (429, "rate_limited".to_owned())]);
        }
        assert_eq!(answers[0], answers[1]);
        twin.stop().await;
        app.stop().await;
    }
}

/// Finding 10 and the names rule: addresses the mailer cannot send to, and names with
/// control, bidi-override or zero-width characters, are refused with 400 and stored nowhere.
#[actix_rt::test]
async fn unmailable_addresses_and_disguised_names_are_refused() {
    let app = TestApp::spawn(Db::Sqlite, |_| {}).await;
    let t = slug("addr");
    app.tenant(&t).await;
    let a = app.token(&t, &admin(&t)).await;
    for email in ["x(y)@b.co", "x@[127.0.0.1]", "a:b@c.co", "..a@b.co", "a\\b@c.co", "\"q\"@b.co"] {
        let r = app
            .post_as(&a, "/api/v1/agents", json!({"email": email, "name": "X", "role": "agent", "password": PASSWORD}))
            .await;
        assert_eq!((r.status, r.code()), (400, "invalid_request"), "{email}: {r:?}");
        let r = app.patch_as(&a, "/api/v1/me", json!({"email": email, "password": PASSWORD})).await;
        assert_eq!((r.status, r.code()), (400, "invalid_request"), "{email}: {r:?}");
    }
    for name in ["evil\u{202E}gnp", "zero\u{200B}width", "a\u{2067}b", "bom\u{FEFF}"] {
        let r = app.patch_as(&a, "/api/v1/me", json!({"name": name})).await;
        assert_eq!((r.status, r.code()), (400, "invalid_request"), "{name:?}: {r:?}");
    }
    assert_eq!(app.get_as(&a, "/api/v1/agents").await.body["items"].as_array().map(Vec::len), Some(1));
    app.stop().await;
}

/// Finding 11: the wrong-password window slides: no 15-minute span lets more than 10 guesses
/// be evaluated, around any edge.
#[actix_rt::test]
async fn the_wrong_password_window_slides() {
    for db in backends() {
        let app = TestApp::spawn(db, |_| {}).await;
        let t = slug("slide");
        app.tenant(&t).await;
        let guess = || app.post("/api/v1/auth", json!({"tenant": t, "email": admin(&t), "password": "wrong wrong"}));
        // One guess a minute for ten minutes.
        for _ in 0..10 {
            assert_eq!(guess().await.code(), "invalid_credentials");
            app.clock.advance_secs(60);
        }
        // At 10:00 the first guess (0:00) is still in the window: refused until 15:00.
        let r = guess().await;
        assert_eq!((r.status, r.header("retry-after").as_deref()), (429, Some("300")), "{r:?}");
        app.clock.advance_secs(299);
        assert_eq!(guess().await.status, 429);
        app.clock.advance_secs(1);
        // 15:00: one place is free (the 0:00 guess left), not ten.
        assert_eq!(guess().await.code(), "invalid_credentials");
        let r = guess().await;
        assert_eq!(r.status, 429, "a fixed window would open ten places here: {r:?}");
        app.clock.advance_secs(60);
        assert_eq!(guess().await.code(), "invalid_credentials");
        assert_eq!(guess().await.status, 429);
        app.stop().await;
    }
}

/// Finding 11: email codes and reset links share one cooldown and one window (every mail a
/// user can make us send).
#[actix_rt::test]
async fn codes_and_reset_links_share_one_send_budget() {
    for db in backends() {
        let app = TestApp::spawn(db, |_| {}).await;
        let t = slug("budget");
        app.tenant(&t).await;
        let a = app.token(&t, &admin(&t)).await;
        let r = app
            .post_as(&a, "/api/v1/settings/two-factor/enable", json!({"password": PASSWORD, "method": "email"}))
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let code = app.last_code(&admin(&t)).unwrap();
        let c = app
            .post_as(
                &a,
                "/api/v1/settings/two-factor/enable/confirm",
                json!({"setup_token": r.s("setup_token"), "code": code}),
            )
            .await;
        assert_eq!(c.status, 200, "{c:?}");
        // The enablement's code leaves the window first.
        app.clock.advance_secs(301);
        let ch = app.challenge(&t, &admin(&t)).await;
        let ct = ch["challenge_token"].as_str().unwrap().to_owned();
        let (r, _) = app.send_code(&ct, &admin(&t)).await;
        assert_eq!(r.status, 202, "{r:?}");
        // A reset link right after a code waits for the same cooldown.
        let r = app.post("/api/v1/auth/2fa/recovery", json!({"challenge_token": ct})).await;
        assert_eq!((r.status, r.code()), (429, "resend_too_soon"), "{r:?}");
        app.clock.advance_secs(60);
        let r = app.post("/api/v1/auth/2fa/recovery", json!({"challenge_token": ct})).await;
        assert_eq!(r.status, 202, "{r:?}");
        app.clock.advance_secs(60);
        let (r, _) = app.send_code(&ct, &admin(&t)).await;
        assert_eq!(r.status, 202, "{r:?}");
        // Three mails in the window (code, link, code): the fourth of either kind waits.
        app.clock.advance_secs(60);
        let r = app.post("/api/v1/auth/2fa/recovery", json!({"challenge_token": ct})).await;
        assert_eq!((r.status, r.code()), (429, "send_limit_reached"), "{r:?}");
        let (r, _) = app.send_code(&ct, &admin(&t)).await;
        assert_eq!((r.status, r.code()), (429, "send_limit_reached"), "{r:?}");
        app.stop().await;
    }
}
