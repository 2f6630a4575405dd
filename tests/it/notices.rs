//! Notices (DESIGN.md 5.6): which events record one, for whom, with what, and the tenant's
//! `notices` setting. The worker's rendering is tested in the mail crate; here the recorded
//! (sealed) deliveries are opened and read.

use latchkey_tenant::NoticeEvent;
use serde_json::json;

use crate::common::*;

/// A tenant with 2FA on, a second admin and an enrolled agent; returns (slug, admin token,
/// agent email, agent session, second admin email).
async fn setup(app: &TestApp) -> (String, String, String, String, String) {
    let t = slug("ntc");
    app.tenant(&t).await;
    let a = app.token(&t, &admin(&t)).await;
    let agent = format!("agent@{t}.test");
    app.user(&a, &agent, "agent").await;
    let admin2 = format!("admin2@{t}.test");
    app.user(&a, &admin2, "admin").await;
    app.enable_authenticator(&a).await;
    let ch = app.challenge(&t, &agent).await;
    let secret = app.enroll_authenticator(ch["challenge_token"].as_str().unwrap()).await;
    app.next_step();
    let ch = app.challenge(&t, &agent).await;
    let session = app
        .verify(ch["challenge_token"].as_str().unwrap(), "authenticator", &app.totp(&secret, 0))
        .await
        .s("authentication_token");
    (t, a, agent, session, admin2)
}

#[actix_rt::test]
async fn security_events_record_a_notice_to_the_user() {
    for db in backends() {
        let app = TestApp::spawn(db, |_| {}).await;
        let (t, a, agent, session, _) = setup(&app).await;
        let enrolled = app.notices(&t);
        // The admin's enrollment at enablement and the agent's at sign-in.
        let kinds: Vec<(&str, &NoticeEvent)> = enrolled.iter().map(|n| (n.to.as_str(), &n.what)).collect();
        assert_eq!(
            kinds,
            vec![
                (admin(&t).as_str(), &NoticeEvent::MethodEnrolled { method: latchkey_core::Method::Authenticator }),
                (agent.as_str(), &NoticeEvent::MethodEnrolled { method: latchkey_core::Method::Authenticator }),
            ],
            "{db:?}"
        );
        assert_eq!(enrolled[0].tenant_name, format!("{t} Support"));

        let r = app
            .post_as(
                &session,
                "/api/v1/me/password",
                json!({"current_password": PASSWORD, "new_password": "a brand new long password"}),
            )
            .await;
        assert_eq!(r.status, 204, "{r:?}");
        let n = app.notices(&t).pop().unwrap();
        assert_eq!((n.to.as_str(), &n.what), (agent.as_str(), &NoticeEvent::PasswordChanged));
        assert_eq!((n.ip.as_deref(), n.at), (Some("127.0.0.1"), app.clock.now_utc()));

        // An email change goes to the old address.
        let id = app.get_as(&a, "/api/v1/agents").await.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["email"] == agent.as_str())
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let new = format!("agent.new@{t}.test");
        let r = app.patch_as(&a, &format!("/api/v1/agents/{id}"), json!({"email": new})).await;
        assert_eq!(r.status, 200, "{r:?}");
        let n = app.notices(&t).pop().unwrap();
        assert_eq!(n.to, agent, "the old address is told");
        assert!(
            matches!(&n.what, NoticeEvent::EmailChanged { new_email_masked } if new_email_masked.starts_with("a***@"))
        );
        app.stop().await;
    }
}

#[actix_rt::test]
async fn recovery_requests_tell_the_other_admins_and_decisions_tell_the_requester() {
    for db in backends() {
        let app = TestApp::spawn(db, |_| {}).await;
        let (t, a, agent, _, admin2) = setup(&app).await;
        let before = app.notices(&t).len();
        let ch = app.challenge(&t, &agent).await;
        let token = ch["challenge_token"].as_str().unwrap();
        let r = app
            .call_with(
                "POST",
                "/api/v1/auth/2fa/recovery",
                Some(json!({"challenge_token": token})),
                None,
                &[("user-agent", "NoticeProbe")],
            )
            .await;
        assert_eq!(r.status, 202, "{r:?}");
        let id = r.body["request"]["id"].as_str().unwrap().to_owned();
        let new: Vec<_> = app.notices(&t).split_off(before);
        let mut to: Vec<&str> = new.iter().map(|n| n.to.as_str()).collect();
        to.sort_unstable();
        let mut admins = vec![admin(&t), admin2.clone()];
        admins.sort();
        assert_eq!(to, admins, "every admin, once ({db:?})");
        for n in &new {
            assert_eq!(n.user_agent.as_deref(), Some("NoticeProbe"));
            match &n.what {
                NoticeEvent::RecoveryRequested { requester_email, review_url, .. } => {
                    assert_eq!(requester_email, &agent);
                    assert_eq!(review_url, &format!("{}/ui/{t}/agents?tab=requested", app.core.config.public_url()));
                }
                other => panic!("{other:?}"),
            }
        }
        // Asking again returns the pending request: no new notice.
        app.post("/api/v1/auth/2fa/recovery", json!({"challenge_token": token})).await;
        assert_eq!(app.notices(&t).len(), before + 2);

        let r = app.post_as(&a, &format!("/api/v1/recovery-requests/{id}/dismiss"), json!({})).await;
        assert_eq!(r.status, 200);
        let n = app.notices(&t).pop().unwrap();
        assert_eq!((n.to.as_str(), &n.what), (agent.as_str(), &NoticeEvent::RecoveryDismissed));

        let ch = app.challenge(&t, &agent).await;
        let r = app.post("/api/v1/auth/2fa/recovery", json!({"challenge_token": ch["challenge_token"]})).await;
        let id = r.body["request"]["id"].as_str().unwrap().to_owned();
        let r = app.post_as(&a, &format!("/api/v1/recovery-requests/{id}/approve"), json!({})).await;
        assert_eq!(r.status, 200);
        let n = app.notices(&t).pop().unwrap();
        assert_eq!((n.to.as_str(), &n.what), (agent.as_str(), &NoticeEvent::RecoveryApproved));

        // An admin's own reset link: no recovery-request notice; its use tells him.
        let count = app.notices(&t).len();
        let ch = app.challenge(&t, &admin2).await;
        let r = app.post("/api/v1/auth/2fa/recovery", json!({"challenge_token": ch["challenge_token"]})).await;
        assert_eq!(r.s("kind"), "email_link", "{r:?}");
        assert_eq!(app.notices(&t).len(), count, "a reset link is not a recovery request");
        let link = app.last_reset_token(&admin2).unwrap();
        assert_eq!(app.post("/api/v1/auth/2fa/reset", json!({"token": link})).await.status, 200);
        let n = app.notices(&t).pop().unwrap();
        assert_eq!((n.to.as_str(), &n.what), (admin2.as_str(), &NoticeEvent::ResetLinkUsed));
        app.stop().await;
    }
}

#[actix_rt::test]
async fn the_notices_setting_turns_each_group_off() {
    for db in backends() {
        let app = TestApp::spawn(db, |_| {}).await;
        let (t, a, agent, session, _) = setup(&app).await;
        let r = app.patch_as(&a, "/api/v1/settings/two-factor", json!({"notices": {"security": false}})).await;
        assert_eq!((r.status, r.body["notices"].clone()), (200, json!({"security": false, "recovery_requests": true})));
        let before = app.notices(&t).len();
        let r = app
            .post_as(
                &session,
                "/api/v1/me/password",
                json!({"current_password": PASSWORD, "new_password": "a brand new long password"}),
            )
            .await;
        assert_eq!(r.status, 204);
        assert_eq!(app.notices(&t).len(), before, "no security notice ({db:?})");
        let ch = app.challenge_with(&t, &agent, "a brand new long password").await;
        app.post("/api/v1/auth/2fa/recovery", json!({"challenge_token": ch["challenge_token"]})).await;
        assert_eq!(app.notices(&t).len(), before + 2, "recovery requests still reach both admins");

        let r = app.patch_as(&a, "/api/v1/settings/two-factor", json!({"notices": {"recovery_requests": false}})).await;
        assert_eq!(r.body["notices"], json!({"security": false, "recovery_requests": false}));
        let pending = app.get_as(&a, "/api/v1/recovery-requests?status=pending").await;
        let id = pending.body["items"][0]["id"].as_str().unwrap().to_owned();
        app.post_as(&a, &format!("/api/v1/recovery-requests/{id}/dismiss"), json!({})).await;
        let ch = app.challenge_with(&t, &agent, "a brand new long password").await;
        let r = app.post("/api/v1/auth/2fa/recovery", json!({"challenge_token": ch["challenge_token"]})).await;
        assert_eq!(r.status, 202);
        assert_eq!(app.notices(&t).len(), before + 2, "nothing at all");
        app.stop().await;
    }
}
