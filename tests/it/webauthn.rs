//! Issue 12: passkeys and security keys (DESIGN.md 5.1, 5.3), with the software authenticator
//! of `softauthn.rs`, on every backend.

use futures::future::join_all;
use serde_json::{Value, json};

use crate::common::*;
use crate::softauthn::{Forge, SoftAuthenticator, b64, unb64};

const ORIGIN: &str = "http://localhost:8080";
const ALL3: [&str; 3] = ["authenticator", "email", "webauthn"];

fn relying_party(c: &mut latchkey_core::Config) {
    c.webauthn_rp_id = Some("localhost".into());
    c.webauthn_origins = vec![ORIGIN.into()];
}

/// A tenant whose agents may use webauthn, with 2FA on: (slug, admin token, agent email).
async fn world(app: &TestApp) -> (String, String, String) {
    let t = slug("wa");
    app.tenant(&t).await;
    let admin_token = app.token(&t, &admin(&t)).await;
    let agent = format!("agent@{t}.test");
    app.user(&admin_token, &agent, "agent").await;
    let r =
        app.call("PUT", "/api/v1/settings/two-factor/methods", Some(json!({"agent": ALL3})), Some(&admin_token)).await;
    assert_eq!(r.status, 200, "{r:?}");
    app.enable_authenticator(&admin_token).await;
    (t, admin_token, agent)
}

fn token_of(ch: &Value) -> String {
    ch["challenge_token"].as_str().unwrap().to_owned()
}

/// Enrolls `auth` for `who` at sign-in.
async fn enroll(app: &TestApp, t: &str, who: &str, auth: &mut SoftAuthenticator) {
    let ch = token_of(&app.challenge(t, who).await);
    let s = app.post("/api/v1/auth/2fa/webauthn/register/start", json!({"challenge_token": ch})).await;
    assert_eq!(s.status, 200, "{s:?}");
    let cred = auth.create(&s.body["options"]);
    let r =
        app.post("/api/v1/auth/2fa/webauthn/register/finish", json!({"challenge_token": ch, "credential": cred})).await;
    assert_eq!(r.status, 200, "{r:?}");
}

/// authenticate/start on `ch`, then verify with an assertion forged as `f`.
async fn attempt(app: &TestApp, ch: &str, auth: &mut SoftAuthenticator, f: &Forge) -> Res {
    let s = app.post("/api/v1/auth/2fa/webauthn/authenticate/start", json!({"challenge_token": ch})).await;
    assert_eq!(s.status, 200, "{s:?}");
    let cred = auth.get_forged(&s.body["options"], f, None);
    app.post("/api/v1/auth/2fa/verify", json!({"challenge_token": ch, "method": "webauthn", "credential": cred})).await
}

async fn sign_in(app: &TestApp, t: &str, who: &str, auth: &mut SoftAuthenticator) -> Res {
    let ch = token_of(&app.challenge(t, who).await);
    attempt(app, &ch, auth, &Forge::default()).await
}

fn kinds(app_events: &Res) -> Vec<String> {
    app_events.body["items"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap().to_owned()).collect()
}

#[actix_web::test]
async fn enrollment_options_and_refused_registrations() {
    for db in backends() {
        let app = TestApp::spawn(db, relying_party).await;
        let (t, _, agent) = world(&app).await;
        let ch = app.challenge(&t, &agent).await;
        assert_eq!(ch["next"], "enroll");
        assert!(ch["methods"].as_array().unwrap().contains(&json!("webauthn")), "{ch}");
        let ct = token_of(&ch);
        let s = app.post("/api/v1/auth/2fa/webauthn/register/start", json!({"challenge_token": ct})).await;
        assert_eq!(s.status, 200, "{s:?}");
        let pk = &s.body["options"]["publicKey"];
        assert_eq!(pk["rp"]["id"], "localhost");
        assert_eq!(pk["attestation"], "none");
        assert_eq!(pk["authenticatorSelection"]["residentKey"], "preferred");
        assert_eq!(pk["authenticatorSelection"]["userVerification"], "preferred");
        let algs: Vec<i64> =
            pk["pubKeyCredParams"].as_array().unwrap().iter().map(|p| p["alg"].as_i64().unwrap()).collect();
        assert!(algs.contains(&-7) && algs.contains(&-257), "{algs:?}");
        let handle = unb64(pk["user"]["id"].as_str().unwrap());
        let email = agent.as_bytes();
        assert!(!handle.is_empty() && handle.len() <= 64 && !handle.windows(email.len()).any(|w| w == email));
        assert!(unb64(pk["challenge"].as_str().unwrap()).len() >= 16);

        let mut auth = SoftAuthenticator::new(ORIGIN);
        for f in [
            Forge { origin: Some("https://evil.example".into()), ..Forge::default() },
            Forge { rp_id: Some("evil.example".into()), ..Forge::default() },
            Forge { challenge: Some(vec![7; 32]), ..Forge::default() },
            Forge { no_up: true, ..Forge::default() },
            Forge { type_: Some("webauthn.get".into()), ..Forge::default() },
        ] {
            let s = app.post("/api/v1/auth/2fa/webauthn/register/start", json!({"challenge_token": ct})).await;
            let cred = auth.create_forged(&s.body["options"], &f, false);
            let r = app
                .post("/api/v1/auth/2fa/webauthn/register/finish", json!({"challenge_token": ct, "credential": cred}))
                .await;
            assert_eq!((r.status, r.code()), (400, "invalid_credential"), "{r:?}");
        }
        // Not a PublicKeyCredential, bad base64url: 400 invalid_request, nothing stored.
        for bad in [
            json!({"id": "AAAA", "type": "public-key"}),
            json!({"id": "x", "rawId": "%%%", "type": "public-key", "response": {}}),
        ] {
            let r = app
                .post("/api/v1/auth/2fa/webauthn/register/finish", json!({"challenge_token": ct, "credential": bad}))
                .await;
            assert_eq!((r.status, r.code()), (400, "invalid_request"), "{r:?}");
        }
        // A finish whose ceremony was used up by a refusal is refused too.
        let s = app.post("/api/v1/auth/2fa/webauthn/register/start", json!({"challenge_token": ct})).await;
        let cred = auth.create(&s.body["options"]);
        let r = app
            .post(
                "/api/v1/auth/2fa/webauthn/register/finish",
                json!({"challenge_token": ct, "credential": cred, "name": "Desk key"}),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!((r.body["enrolled"].clone(), r.body["next"].clone()), (json!("webauthn"), json!("login")));
        assert!(r.body["authentication_token"].is_null());
        let again = app.post("/api/v1/auth/2fa/webauthn/register/start", json!({"challenge_token": ct})).await;
        assert_eq!(again.code(), "invalid_challenge", "{again:?}");

        let ch = app.challenge(&t, &agent).await;
        assert_eq!((ch["next"].clone(), ch["methods"].clone()), (json!("verify"), json!(["webauthn"])));
        let r = attempt(&app, &token_of(&ch), &mut auth, &Forge::default()).await;
        assert_eq!(r.status, 200, "{r:?}");
        let tok = r.s("authentication_token");
        let me = app.get_as(&tok, "/api/v1/me/two-factor").await;
        let creds = me.body["webauthn"].as_array().unwrap();
        assert_eq!(creds.len(), 1, "{me:?}");
        assert_eq!(creds[0]["name"], "Desk key");
        assert_eq!(creds[0]["id"], json!(auth.keys[0].id_b64()));
        assert!(creds[0]["last_used_at"].is_string() && creds[0]["backup_eligible"] == json!(false));
        app.stop().await;
    }
}

#[actix_web::test]
async fn refused_assertions_count_block_and_the_counter_rule() {
    for db in backends() {
        let app = TestApp::spawn(db, relying_party).await;
        let (t, admin_token, agent) = world(&app).await;
        let mut auth = SoftAuthenticator::new(ORIGIN);
        enroll(&app, &t, &agent, &mut auth).await;
        let other = format!("other@{t}.test");
        app.user(&admin_token, &other, "agent").await;
        let mut stranger = SoftAuthenticator::new(ORIGIN);
        enroll(&app, &t, &other, &mut stranger).await;
        assert_eq!(sign_in(&app, &t, &agent, &mut auth).await.status, 200);
        let accepted = auth.keys[0].count;

        let ch = token_of(&app.challenge(&t, &agent).await);
        let r = app.post("/api/v1/auth/2fa/verify", json!({"challenge_token": ch, "method": "webauthn"})).await;
        assert_eq!((r.status, r.code()), (400, "invalid_request"), "not counted: {r:?}");
        let r = attempt(&app, &ch, &mut auth, &Forge { bad_signature: true, ..Forge::default() }).await;
        assert_eq!((r.status, r.body["attempts_remaining"].clone()), (401, json!(2)), "{r:?}");
        // Another user's credential, presented on this user's ceremony.
        let s = app.post("/api/v1/auth/2fa/webauthn/authenticate/start", json!({"challenge_token": ch})).await;
        let cred = stranger.get(&s.body["options"]);
        let r = app
            .post("/api/v1/auth/2fa/verify", json!({"challenge_token": ch, "method": "webauthn", "credential": cred}))
            .await;
        assert_eq!((r.status, r.body["attempts_remaining"].clone()), (401, json!(1)), "{r:?}");
        // A counter that does not grow: refused, counted (the block starts), audited.
        let r = attempt(&app, &ch, &mut auth, &Forge { counter: Some(accepted), ..Forge::default() }).await;
        assert_eq!((r.status, r.body["attempts_remaining"].clone()), (401, json!(0)), "{r:?}");
        assert!(r.body["retry_after_seconds"].as_u64().unwrap() > 0);
        let events = app.get_as(&admin_token, "/api/v1/audit-events?kind=webauthn_counter_regressed").await;
        assert_eq!(kinds(&events), vec!["webauthn_counter_regressed"], "{events:?}");
        let r = attempt(&app, &ch, &mut auth, &Forge::default()).await;
        assert_eq!((r.status, r.code()), (423, "otp_blocked"), "{r:?}");
        app.clock.advance_secs(301);
        let r = sign_in(&app, &t, &agent, &mut auth).await;
        assert_eq!(r.status, 200, "after the block: {r:?}");
        // An earlier ceremony's assertion on a new sign-in: counted.
        let ch = token_of(&app.challenge(&t, &agent).await);
        let s = app.post("/api/v1/auth/2fa/webauthn/authenticate/start", json!({"challenge_token": ch})).await;
        let old =
            auth.get_forged(&s.body["options"], &Forge { challenge: Some(vec![1; 32]), ..Forge::default() }, None);
        let r = app
            .post("/api/v1/auth/2fa/verify", json!({"challenge_token": ch, "method": "webauthn", "credential": old}))
            .await;
        assert_eq!((r.status, r.code()), (401, "invalid_code"), "{r:?}");
        app.stop().await;
    }
}

#[actix_web::test]
async fn twenty_parallel_verifies_of_one_assertion_make_one_session() {
    for db in backends() {
        let app = TestApp::spawn(db, relying_party).await;
        let (t, _, agent) = world(&app).await;
        let mut auth = SoftAuthenticator::new(ORIGIN);
        enroll(&app, &t, &agent, &mut auth).await;
        let ch = token_of(&app.challenge(&t, &agent).await);
        let s = app.post("/api/v1/auth/2fa/webauthn/authenticate/start", json!({"challenge_token": ch})).await;
        let body = json!({"challenge_token": ch, "method": "webauthn", "credential": auth.get(&s.body["options"])});
        let answers = join_all((0..20).map(|_| app.post("/api/v1/auth/2fa/verify", body.clone()))).await;
        let ok = answers.iter().filter(|r| r.status == 200).count();
        assert_eq!(ok, 1, "{answers:?}");
        assert!(answers.iter().all(|r| r.status == 200 || r.status == 401), "{answers:?}");
        app.stop().await;
    }
}

#[actix_web::test]
async fn a_tenant_relying_party_is_the_one_ceremonies_use() {
    let app = TestApp::spawn(Db::Sqlite, relying_party).await;
    let t = slug("warp");
    app.tenant(&t).await;
    let admin_token = app.token(&t, &admin(&t)).await;
    let agent = format!("agent@{t}.test");
    app.user(&admin_token, &agent, "agent").await;
    app.call("PUT", "/api/v1/settings/two-factor/methods", Some(json!({"agent": ALL3})), Some(&admin_token)).await;
    let own = "http://app.localhost:8080";
    let r = app
        .call(
            "PUT",
            "/api/v1/settings/two-factor/webauthn",
            Some(json!({"rp_id": "app.localhost", "origins": [own]})),
            Some(&admin_token),
        )
        .await;
    assert!(r.status == 200 || r.status == 204, "{r:?}");
    app.enable_authenticator(&admin_token).await;
    let ct = token_of(&app.challenge(&t, &agent).await);
    let s = app.post("/api/v1/auth/2fa/webauthn/register/start", json!({"challenge_token": ct})).await;
    assert_eq!(s.body["options"]["publicKey"]["rp"]["id"], "app.localhost");
    let cred = SoftAuthenticator::new(ORIGIN).create(&s.body["options"]);
    let r =
        app.post("/api/v1/auth/2fa/webauthn/register/finish", json!({"challenge_token": ct, "credential": cred})).await;
    assert_eq!((r.status, r.code()), (400, "invalid_credential"), "the default origin: {r:?}");
    let mut auth = SoftAuthenticator::new(own);
    let s = app.post("/api/v1/auth/2fa/webauthn/register/start", json!({"challenge_token": ct})).await;
    let cred = auth.create(&s.body["options"]);
    let r =
        app.post("/api/v1/auth/2fa/webauthn/register/finish", json!({"challenge_token": ct, "credential": cred})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = sign_in(&app, &t, &agent, &mut auth).await;
    assert_eq!(r.status, 200, "{r:?}");
    app.stop().await;
}

#[actix_web::test]
async fn passwordless_sign_in() {
    for db in backends() {
        let app = TestApp::spawn(db, relying_party).await;
        let (t, admin_token, agent) = world(&app).await;
        let mut auth = SoftAuthenticator::new(ORIGIN);
        enroll(&app, &t, &agent, &mut auth).await;
        let finish = |s: &Res, auth: &mut SoftAuthenticator, f: Forge| json!({"passkey_token": s.s("passkey_token"), "credential": auth.get_forged(&s.body["options"], &f, None)});
        let s = app.post("/api/v1/auth/passkey/start", json!({"tenant": t})).await;
        assert_eq!(s.status, 200, "{s:?}");
        let r = app.post("/api/v1/auth/passkey/finish", finish(&s, &mut auth, Forge::default())).await;
        assert_eq!((r.status, r.code()), (401, "invalid_credentials"), "off by default: {r:?}");

        let fresh = {
            // PATCH needs a fresh second factor while 2FA is on: the enabling session has one.
            admin_token.clone()
        };
        let r = app.patch_as(&fresh, "/api/v1/settings/two-factor", json!({"passkey_sign_in": true})).await;
        assert_eq!((r.status, r.body["passkey_sign_in"].clone()), (200, json!(true)), "{r:?}");
        let s = app.post("/api/v1/auth/passkey/start", json!({"tenant": t})).await;
        let pk = &s.body["options"]["publicKey"];
        assert_eq!(pk["userVerification"], "required");
        assert!(pk["allowCredentials"].as_array().is_none_or(Vec::is_empty), "{pk}");
        let body = finish(&s, &mut auth, Forge::default());
        let r = app.post("/api/v1/auth/passkey/finish", body.clone()).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body["user"]["email"], json!(agent));
        let tok = r.s("authentication_token");
        assert_eq!(app.post_as(&tok, "/api/v1/me/two-factor/webauthn/register/start", json!({})).await.status, 200);
        let again = app.post("/api/v1/auth/passkey/finish", body).await;
        assert_eq!((again.status, again.code()), (401, "invalid_credentials"), "single-use: {again:?}");
        let events = app.get_as(&admin_token, "/api/v1/audit-events?kind=signed_in").await;
        assert!(events.body["items"].as_array().unwrap().iter().any(|e| e["detail"]["passkey"] == json!(true)));

        for f in [
            Forge { uv: Some(false), ..Forge::default() },
            Forge { origin: Some("https://evil.example".into()), ..Forge::default() },
            Forge { bad_signature: true, ..Forge::default() },
            Forge { user_handle: Some(vec![9; 16]), ..Forge::default() },
        ] {
            let s = app.post("/api/v1/auth/passkey/start", json!({"tenant": t})).await;
            let r = app.post("/api/v1/auth/passkey/finish", finish(&s, &mut auth, f)).await;
            assert_eq!((r.status, r.code()), (401, "invalid_credentials"), "{r:?}");
        }
        let known = app.post("/api/v1/auth/passkey/start", json!({"tenant": t})).await;
        let unknown = app.post("/api/v1/auth/passkey/start", json!({"tenant": slug("nobody")})).await;
        assert_eq!(unknown.status, 200);
        let keys = |r: &Res| r.body["options"]["publicKey"].as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&known), keys(&unknown));
        let r = app.post("/api/v1/auth/passkey/finish", finish(&unknown, &mut auth, Forge::default())).await;
        assert_eq!((r.status, r.code()), (401, "invalid_credentials"));
        app.stop().await;
    }
}

#[actix_web::test]
async fn self_service_passkeys_and_resets() {
    for db in backends() {
        let app = TestApp::spawn(db, relying_party).await;
        let (t, _, agent) = world(&app).await;
        let mut desk = SoftAuthenticator::new(ORIGIN);
        enroll(&app, &t, &agent, &mut desk).await;
        let tok = sign_in(&app, &t, &agent, &mut desk).await.s("authentication_token");
        let mut phone = SoftAuthenticator::new(ORIGIN);
        phone.be = true;
        let s = app.post_as(&tok, "/api/v1/me/two-factor/webauthn/register/start", json!({})).await;
        assert_eq!(s.status, 200, "{s:?}");
        let excluded: Vec<Value> = s.body["options"]["publicKey"]["excludeCredentials"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].clone())
            .collect();
        assert_eq!(excluded, vec![json!(desk.keys[0].id_b64())]);
        let cred = phone.create(&s.body["options"]);
        let body = json!({"setup_token": s.s("setup_token"), "credential": cred});
        let r = app.post_as(&tok, "/api/v1/me/two-factor/webauthn/register/finish", body.clone()).await;
        assert_eq!(r.status, 201, "{r:?}");
        assert_eq!((r.body["name"].clone(), r.body["backup_eligible"].clone()), (json!("Passkey 2"), json!(true)));
        let r2 = app.post_as(&tok, "/api/v1/me/two-factor/webauthn/register/finish", body).await;
        assert_eq!(r2.code(), "invalid_setup_token");
        let id = phone.keys[0].id_b64();
        let r = app.patch_as(&tok, &format!("/api/v1/me/two-factor/webauthn/{id}"), json!({"name": "Phone"})).await;
        assert_eq!((r.status, r.body["name"].clone()), (200, json!("Phone")), "{r:?}");
        // Step-up with a passkey.
        let s = app.post_as(&tok, "/api/v1/me/step-up/webauthn", json!({})).await;
        assert_eq!(s.status, 200, "{s:?}");
        let r = app
            .post_as(
                &tok,
                "/api/v1/me/step-up",
                json!({"method": "webauthn", "credential": phone.get(&s.body["options"])}),
            )
            .await;
        assert!(r.status == 200 && r.body["verified_at"].is_string(), "{r:?}");
        assert_eq!(
            app.call("DELETE", &format!("/api/v1/me/two-factor/webauthn/{id}"), None, Some(&tok)).await.status,
            204
        );
        let desk_id = desk.keys[0].id_b64();
        let r = app.call("DELETE", &format!("/api/v1/me/two-factor/webauthn/{desk_id}"), None, Some(&tok)).await;
        assert_eq!((r.status, r.code()), (409, "last_method"), "{r:?}");
        let r =
            app.call("DELETE", &format!("/api/v1/me/two-factor/webauthn/{}", b64(&[3; 32])), None, Some(&tok)).await;
        assert_eq!(r.status, 404);
        // At most 10.
        for n in 2..=10 {
            let s = app.post_as(&tok, "/api/v1/me/two-factor/webauthn/register/start", json!({})).await;
            let cred = SoftAuthenticator::new(ORIGIN).create(&s.body["options"]);
            let r = app
                .post_as(
                    &tok,
                    "/api/v1/me/two-factor/webauthn/register/finish",
                    json!({"setup_token": s.s("setup_token"), "credential": cred}),
                )
                .await;
            assert_eq!(r.status, 201, "passkey {n}: {r:?}");
        }
        let s = app.post_as(&tok, "/api/v1/me/two-factor/webauthn/register/start", json!({})).await;
        assert_eq!((s.status, s.code()), (400, "invalid_request"), "{s:?}");
        // The operator's reset deletes them with the other enrollments.
        let agent_id = app.get_as(&tok, "/api/v1/me").await.s("id");
        let r =
            app.call("POST", &format!("/api/v1/tenants/{t}/users/{agent_id}/reset-2fa"), None, Some(OPERATOR)).await;
        assert_eq!(r.status, 200, "{r:?}");
        let uid: latchkey_core::UserId = agent_id.parse().unwrap();
        let left = app.core.store.run_blocking(move |c| latchkey_store::repo::webauthn::for_user(c, uid)).unwrap();
        assert!(left.is_empty());
        assert_eq!(app.challenge(&t, &agent).await["next"], "enroll");
        app.stop().await;
    }
}
