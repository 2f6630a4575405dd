//! Bad input: problem+json, never a panic or a 500.

use serde_json::json;

use crate::common::*;

#[actix_rt::test]
async fn malformed_bodies_are_problems() {
    let app = TestApp::spawn(Db::Sqlite, |_| {}).await;
    let r = app.raw("POST", "/api/v1/auth", "application/json", b"{not json".to_vec()).await;
    assert_eq!((r.status, r.code()), (400, "invalid_request"));
    assert_eq!(r.header("content-type").as_deref(), Some("application/problem+json"));
    for body in [json!({"tenant": "x"}), json!({"tenant": 1, "email": "a", "password": "b"}), json!([]), json!(null)] {
        let r = app.post("/api/v1/auth", body).await;
        assert_eq!((r.status, r.code()), (400, "invalid_request"), "{r:?}");
    }
    let r = app.raw("POST", "/api/v1/auth", "text/plain", b"{}".to_vec()).await;
    assert_eq!((r.status, r.code()), (415, "unsupported_media_type"));
    let big = format!("{{\"tenant\":\"{}\"}}", "a".repeat(2 << 20));
    let r = app.raw("POST", "/api/v1/auth", "application/json", big.into_bytes()).await;
    assert_eq!((r.status, r.code()), (413, "payload_too_large"));
    let form = format!("token={}", "a".repeat(2 << 20));
    let r = app.raw("POST", "/reset-otp", "application/x-www-form-urlencoded", form.into_bytes()).await;
    assert_eq!(r.status, 413);
    let r = app.call("DELETE", "/healthz", None, None).await;
    assert_eq!((r.status, r.code()), (405, "http_method_not_allowed"));
    let r = app.call("PUT", "/api/v1/agents/01a22bec-dac0-70ac-b2a2-feb2b3520ba1", None, None).await;
    assert_eq!(r.status, 405);
    let r = app.call("GET", "/api/v1/nothing-here", None, None).await;
    assert_eq!((r.status, r.code()), (404, "not_found"));
    assert_eq!(r.header("content-type").as_deref(), Some("application/problem+json"));
    for code in [json!("12345"), json!("1234567"), json!("12a456"), json!(123456), json!(" 123456")] {
        let r =
            app.post("/api/v1/auth/2fa/verify", json!({"challenge_token": "x", "method": "email", "code": code})).await;
        assert_eq!((r.status, r.code()), (400, "invalid_request"), "{code}");
    }
    let r =
        app.post("/api/v1/auth/2fa/verify", json!({"challenge_token": "x", "method": "sms", "code": "123456"})).await;
    assert_eq!(r.status, 400);
    let r = app
        .post(
            "/api/v1/auth/2fa/verify",
            json!({"challenge_token": "x".repeat(64), "method": "email", "code": "123456"}),
        )
        .await;
    assert_eq!((r.status, r.code()), (401, "invalid_challenge"));
    let r = app.post("/api/v1/auth", json!({"tenant": "x", "email": "' OR 1=1 --", "password": "x"})).await;
    assert_eq!(r.status, 401);
    let r = app.post("/api/v1/auth", json!({"tenant": "x", "email": "a@b.co", "password": "p".repeat(100_000)})).await;
    assert_eq!(r.status, 401);
    assert_eq!(app.call("GET", "/readyz", None, None).await.status, 200);
}

#[actix_rt::test]
async fn the_openapi_document_covers_the_contract() {
    let app = TestApp::spawn(Db::Sqlite, |_| {}).await;
    let r = app.call("GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(r.status, 200);
    assert!(r.s("openapi").starts_with("3.1"), "{}", r.s("openapi"));
    let paths = r.body["paths"].as_object().unwrap();
    for (method, path) in [
        ("post", "/api/v1/tenants"),
        ("post", "/api/v1/tenants/{slug}/users/{id}/reset-2fa"),
        ("post", "/api/v1/auth"),
        ("post", "/api/v1/auth/2fa/authenticator/setup"),
        ("post", "/api/v1/auth/2fa/authenticator/confirm"),
        ("post", "/api/v1/auth/2fa/email/send"),
        ("post", "/api/v1/auth/2fa/verify"),
        ("post", "/api/v1/auth/2fa/recovery"),
        ("post", "/api/v1/auth/2fa/reset"),
        ("get", "/reset-otp"),
        ("post", "/api/v1/auth/logout"),
        ("get", "/api/v1/me"),
        ("patch", "/api/v1/me"),
        ("post", "/api/v1/me/password"),
        ("get", "/api/v1/settings/two-factor"),
        ("post", "/api/v1/settings/two-factor/enable"),
        ("post", "/api/v1/settings/two-factor/enable/confirm"),
        ("post", "/api/v1/settings/two-factor/disable"),
        ("put", "/api/v1/settings/two-factor/methods"),
        ("get", "/api/v1/agents"),
        ("post", "/api/v1/agents"),
        ("patch", "/api/v1/agents/{id}"),
        ("delete", "/api/v1/agents/{id}"),
        ("get", "/api/v1/recovery-requests"),
        ("post", "/api/v1/recovery-requests/{id}/approve"),
        ("post", "/api/v1/recovery-requests/{id}/dismiss"),
        ("get", "/api/v1/audit-events"),
        ("get", "/metrics"),
        ("get", "/healthz"),
        ("get", "/readyz"),
    ] {
        assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} is documented");
    }
    let text = r.body.to_string();
    for (code, _) in latchkey_api::error::CODES {
        // Transport-level answers any route may give are not repeated on every path.
        if ["http_method_not_allowed", "internal", "payload_too_large", "unsupported_media_type", "request_timeout"]
            .contains(code)
        {
            continue;
        }
        assert!(text.contains(&format!("`{code}`")), "problem code {code} is documented");
    }
    let docs = app.call("GET", "/docs/", None, None).await;
    assert_eq!(docs.status, 200);
    let html = docs.body.as_str().unwrap_or_default();
    assert!(!html.contains("https://"), "the docs page loads nothing from the internet");
}

#[actix_rt::test]
async fn every_documented_route_is_served() {
    // The document is generated from the registered handlers; every path answers something
    // other than the router's 404.
    let doc = latchkey_api::openapi();
    let app = TestApp::spawn(Db::Sqlite, |_| {}).await;
    for (path, item) in doc.paths.paths.iter() {
        let concrete = path.replace("{slug}", "nope").replace("{id}", "01a22bec-dac0-70ac-b2a2-feb2b3520ba1");
        let methods = serde_json::to_value(item).unwrap();
        for method in ["get", "post", "put", "patch", "delete"] {
            if methods.get(method).is_none() {
                continue;
            }
            let r = app.call(&method.to_uppercase(), &concrete, None, None).await;
            assert!(
                !(r.status == 404 && r.body.get("detail").and_then(|d| d.as_str()) == Some("no such resource")),
                "{method} {path}"
            );
        }
    }
}
