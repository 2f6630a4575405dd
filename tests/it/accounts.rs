//! User management, the signed-in user, passwords.

use serde_json::json;

use crate::common::*;

#[actix_rt::test]
async fn admins_create_list_and_change_users() {
    for db in backends() {
        let app = TestApp::spawn(db, |_| {}).await;
        let t = slug("acme");
        app.tenant(&t).await;
        let admin_token = app.token(&t, &admin(&t)).await;
        let agent = app.user(&admin_token, &format!("Agent@{t}.test"), "agent").await;
        app.user(&admin_token, &format!("sup@{t}.test"), "supervisor").await;
        let dup = app
            .post_as(
                &admin_token,
                "/api/v1/agents",
                json!({"email": format!("AGENT@{t}.TEST"), "name": "x", "role": "agent", "password": PASSWORD}),
            )
            .await;
        assert_eq!((dup.status, dup.code()), (409, "email_taken"));
        let list = app.get_as(&admin_token, "/api/v1/agents").await;
        assert_eq!(list.status, 200);
        let emails: Vec<&str> =
            list.body["items"].as_array().unwrap().iter().map(|u| u["email"].as_str().unwrap()).collect();
        assert_eq!(emails, vec![admin(&t), format!("agent@{t}.test"), format!("sup@{t}.test")]);
        assert!(list.body["next_cursor"].is_null());
        // Pagination.
        let p1 = app.get_as(&admin_token, "/api/v1/agents?limit=2").await;
        assert_eq!(p1.body["items"].as_array().unwrap().len(), 2);
        let cursor = p1.s("next_cursor");
        let p2 = app.get_as(&admin_token, &format!("/api/v1/agents?limit=2&cursor={cursor}")).await;
        assert_eq!(p2.body["items"].as_array().unwrap().len(), 1);
        assert!(p2.body["next_cursor"].is_null());
        assert_eq!(app.get_as(&admin_token, "/api/v1/agents?limit=0").await.status, 400);
        assert_eq!(app.get_as(&admin_token, "/api/v1/agents?limit=abc").await.code(), "invalid_request");
        // Rename and promote.
        let r = app
            .patch_as(&admin_token, &format!("/api/v1/agents/{agent}"), json!({"name": "Agnes", "role": "supervisor"}))
            .await;
        assert_eq!((r.status, r.s("name"), r.s("role")), (200, "Agnes".into(), "supervisor".into()), "{r:?}");
        assert_eq!(app.patch_as(&admin_token, "/api/v1/agents/not-a-uuid", json!({"name": "x"})).await.status, 404);
        app.stop().await;
    }
}

#[actix_rt::test]
async fn agents_and_supervisors_cannot_administer() {
    let app = TestApp::spawn(Db::Sqlite, |_| {}).await;
    let t = slug("acme");
    app.tenant(&t).await;
    let admin_token = app.token(&t, &admin(&t)).await;
    let agent_email = format!("agent@{t}.test");
    let agent = app.user(&admin_token, &agent_email, "agent").await;
    let agent_token = app.token(&t, &agent_email).await;
    for (method, path) in [
        ("GET", "/api/v1/agents".to_owned()),
        ("GET", "/api/v1/settings/two-factor".to_owned()),
        ("GET", "/api/v1/recovery-requests".to_owned()),
        ("GET", "/api/v1/audit-events".to_owned()),
        ("DELETE", format!("/api/v1/agents/{agent}")),
    ] {
        let r = app.call(method, &path, None, Some(&agent_token)).await;
        assert_eq!((r.status, r.code()), (403, "forbidden"), "{method} {path}");
    }
    let r = app
        .post_as(
            &agent_token,
            "/api/v1/agents",
            json!({"email": "x@y.test", "name": "x", "role": "agent", "password": PASSWORD}),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = app
        .post_as(&agent_token, "/api/v1/settings/two-factor/enable", json!({"password": PASSWORD, "method": "email"}))
        .await;
    assert_eq!(r.status, 403);
}

#[actix_rt::test]
async fn a_tenant_keeps_its_last_admin() {
    for db in backends() {
        let app = TestApp::spawn(db, |_| {}).await;
        let t = slug("acme");
        let admin_id = app.tenant(&t).await;
        let admin_token = app.token(&t, &admin(&t)).await;
        let r = app.patch_as(&admin_token, &format!("/api/v1/agents/{admin_id}"), json!({"role": "agent"})).await;
        assert_eq!((r.status, r.code()), (409, "last_admin"));
        let r = app.call("DELETE", &format!("/api/v1/agents/{admin_id}"), None, Some(&admin_token)).await;
        assert_eq!((r.status, r.code()), (409, "last_admin"));
        let second = app.user(&admin_token, &format!("second@{t}.test"), "admin").await;
        let r = app.patch_as(&admin_token, &format!("/api/v1/agents/{second}"), json!({"role": "agent"})).await;
        assert_eq!(r.status, 200);
        let r = app.patch_as(&admin_token, &format!("/api/v1/agents/{second}"), json!({"role": "admin"})).await;
        assert_eq!(r.status, 200);
        assert_eq!(app.call("DELETE", &format!("/api/v1/agents/{second}"), None, Some(&admin_token)).await.status, 204);
        app.stop().await;
    }
}

#[actix_rt::test]
async fn deleting_a_user_ends_sessions_and_sign_ins() {
    for db in backends() {
        let app = TestApp::spawn(db, |_| {}).await;
        let t = slug("acme");
        app.tenant(&t).await;
        let admin_token = app.token(&t, &admin(&t)).await;
        let email = format!("agent@{t}.test");
        let id = app.user(&admin_token, &email, "agent").await;
        let token = app.token(&t, &email).await;
        assert_eq!(app.call("DELETE", &format!("/api/v1/agents/{id}"), None, Some(&admin_token)).await.status, 204);
        assert_eq!(app.get_as(&token, "/api/v1/me").await.status, 401);
        assert_eq!(app.login(&t, &email).await.code(), "invalid_credentials");
        assert_eq!(app.call("DELETE", &format!("/api/v1/agents/{id}"), None, Some(&admin_token)).await.status, 404);
        let kinds: Vec<String> =
            app.get_as(&admin_token, "/api/v1/audit-events?kind=agent_deleted").await.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["subject_id"].as_str().unwrap_or_default().to_owned())
                .collect();
        assert_eq!(kinds, vec![id]);
        app.stop().await;
    }
}

#[actix_rt::test]
async fn changing_the_password_ends_other_sessions() {
    let app = TestApp::spawn(Db::Sqlite, |_| {}).await;
    let t = slug("acme");
    app.tenant(&t).await;
    let a = app.token(&t, &admin(&t)).await;
    let b = app.token(&t, &admin(&t)).await;
    let r = app
        .post_as(
            &a,
            "/api/v1/me/password",
            json!({"current_password": "wrong wrong", "new_password": "a new long password"}),
        )
        .await;
    assert_eq!((r.status, r.code()), (401, "invalid_password"));
    assert_eq!(app.get_as(&a, "/api/v1/me").await.status, 200, "a wrong password does not end the session");
    let r =
        app.post_as(&a, "/api/v1/me/password", json!({"current_password": PASSWORD, "new_password": "short"})).await;
    assert_eq!(r.status, 400);
    let r = app
        .post_as(
            &a,
            "/api/v1/me/password",
            json!({"current_password": PASSWORD, "new_password": "a new long password"}),
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(app.get_as(&a, "/api/v1/me").await.status, 200);
    assert_eq!(app.get_as(&b, "/api/v1/me").await.status, 401);
    let r = app.post("/api/v1/auth", json!({"tenant": t, "email": admin(&t), "password": "a new long password"})).await;
    assert_eq!(r.status, 200);
}

#[actix_rt::test]
async fn names_and_own_email() {
    let app = TestApp::spawn(Db::Sqlite, |_| {}).await;
    let t = slug("acme");
    app.tenant(&t).await;
    let a = app.token(&t, &admin(&t)).await;
    let other = app.token(&t, &admin(&t)).await;
    let sup_email = format!("sup@{t}.test");
    app.user(&a, &sup_email, "supervisor").await;
    let sup = app.token(&t, &sup_email).await;
    let r = app.patch_as(&sup, "/api/v1/me", json!({"name": "  Sue  "})).await;
    assert_eq!((r.status, r.s("name")), (200, "Sue".into()));
    let r = app.patch_as(&sup, "/api/v1/me", json!({"email": "mine@x.test", "password": PASSWORD})).await;
    assert_eq!((r.status, r.code()), (403, "email_change_forbidden"));
    // An admin changes his own email with the password; his other sessions end.
    let r = app.patch_as(&a, "/api/v1/me", json!({"email": "boss@x.test"})).await;
    assert_eq!(r.status, 400, "password required");
    let r = app.patch_as(&a, "/api/v1/me", json!({"email": "boss@x.test", "password": "wrong wrong"})).await;
    assert_eq!(r.code(), "invalid_password");
    let r = app.patch_as(&a, "/api/v1/me", json!({"email": sup_email, "password": PASSWORD})).await;
    assert_eq!((r.status, r.code()), (409, "email_taken"));
    let r = app.patch_as(&a, "/api/v1/me", json!({"email": "Boss@X.test", "password": PASSWORD})).await;
    assert_eq!((r.status, r.s("email")), (200, "boss@x.test".into()), "{r:?}");
    assert_eq!(app.get_as(&a, "/api/v1/me").await.status, 200);
    assert_eq!(app.get_as(&other, "/api/v1/me").await.status, 401);
    assert_eq!(app.login(&t, "boss@x.test").await.status, 200);
}

#[actix_rt::test]
async fn an_admin_changing_their_own_email_through_agents_gives_the_password() {
    let app = TestApp::spawn(Db::Sqlite, |_| {}).await;
    let t = slug("acme");
    let me = app.tenant(&t).await;
    let a = app.token(&t, &admin(&t)).await;
    let r = app.patch_as(&a, &format!("/api/v1/agents/{me}"), json!({"email": "boss@x.test"})).await;
    assert_eq!((r.status, r.code()), (400, "invalid_request"), "{r:?}");
    let r = app
        .patch_as(&a, &format!("/api/v1/agents/{me}"), json!({"email": "boss@x.test", "password": "wrong wrong"}))
        .await;
    assert_eq!(r.code(), "invalid_password");
    let r =
        app.patch_as(&a, &format!("/api/v1/agents/{me}"), json!({"email": "boss@x.test", "password": PASSWORD})).await;
    assert_eq!((r.status, r.s("email")), (200, "boss@x.test".into()));
    // Renaming oneself needs nothing more.
    assert_eq!(app.patch_as(&a, &format!("/api/v1/agents/{me}"), json!({"name": "Boss"})).await.status, 200);
}
