//! Property tests of the request parsers: arbitrary bodies, headers and paths never make
//! the service answer 5xx, panic, or answer an error without a problem body.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as PropConfig, TestRunner};
use serde_json::{Value, json};

use crate::common::*;

const BODY_ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/tenants"),
    ("POST", "/api/v1/auth"),
    ("POST", "/api/v1/auth/2fa/authenticator/setup"),
    ("POST", "/api/v1/auth/2fa/authenticator/confirm"),
    ("POST", "/api/v1/auth/2fa/email/send"),
    ("POST", "/api/v1/auth/2fa/verify"),
    ("POST", "/api/v1/auth/2fa/recovery"),
    ("POST", "/api/v1/auth/2fa/reset"),
    ("PATCH", "/api/v1/me"),
    ("POST", "/api/v1/me/password"),
    ("POST", "/api/v1/settings/two-factor/enable"),
    ("POST", "/api/v1/settings/two-factor/enable/confirm"),
    ("POST", "/api/v1/settings/two-factor/disable"),
    ("PUT", "/api/v1/settings/two-factor/methods"),
    ("POST", "/api/v1/agents"),
    ("PATCH", "/api/v1/agents/01a22bec-dac0-70ac-b2a2-feb2b3520ba1"),
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        "[0-9]{6}".prop_map(Value::String),
        prop_oneof![Just("authenticator"), Just("email"), Just("admin"), Just("agent")].prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("tenant".to_owned()),
                    Just("email".to_owned()),
                    Just("password".to_owned()),
                    Just("challenge_token".to_owned()),
                    Just("code".to_owned()),
                    Just("method".to_owned()),
                    Just("setup_token".to_owned()),
                    Just("token".to_owned()),
                    Just("slug".to_owned()),
                    Just("name".to_owned()),
                    Just("role".to_owned()),
                    Just("admin".to_owned()),
                    Just("agent".to_owned()),
                    Just("current_password".to_owned()),
                    Just("new_password".to_owned()),
                    ".{0,12}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn check(r: &Res) -> Result<(), TestCaseError> {
    prop_assert!(r.status < 500, "server error: {r:?}");
    if r.status >= 400 {
        let ct = r.header("content-type").unwrap_or_default();
        prop_assert!(ct.starts_with("application/problem+json") || ct.starts_with("text/html"), "not a problem: {r:?}");
    }
    Ok(())
}

#[actix_rt::test]
async fn arbitrary_json_bodies_never_break_the_service() {
    let app = TestApp::spawn(Db::Sqlite, |_| {}).await;
    let t = slug("acme");
    app.tenant(&t).await;
    let token = app.token(&t, &admin(&t)).await;
    let mut runner = TestRunner::new(PropConfig { cases: 300, failure_persistence: None, ..PropConfig::default() });
    let strategy = (0..BODY_ROUTES.len(), json_value(), any::<bool>());
    // The runner is synchronous; collect cases first, then send them.
    let mut cases = Vec::new();
    for _ in 0..300 {
        cases.push(strategy.new_tree(&mut runner).unwrap().current());
    }
    for (route, body, signed_in) in cases {
        let (method, path) = BODY_ROUTES[route];
        let r = app.call(method, path, Some(body.clone()), signed_in.then_some(token.as_str())).await;
        check(&r).map_err(|e| format!("{method} {path} {body}: {e}")).unwrap();
    }
    assert_eq!(app.call("GET", "/readyz", None, None).await.status, 200);
}

#[actix_rt::test]
async fn arbitrary_bytes_paths_and_queries_never_break_the_service() {
    let app = TestApp::spawn(Db::Sqlite, |_| {}).await;
    let t = slug("acme");
    app.tenant(&t).await;
    let token = app.token(&t, &admin(&t)).await;
    let mut runner = TestRunner::new(PropConfig { cases: 200, failure_persistence: None, ..PropConfig::default() });
    let bytes = prop::collection::vec(any::<u8>(), 0..200);
    let query = "[a-z_=&%0-9.:+-]{0,40}";
    let mut cases = Vec::new();
    for _ in 0..200 {
        let route = (0..BODY_ROUTES.len()).new_tree(&mut runner).unwrap().current();
        cases.push((
            route,
            bytes.new_tree(&mut runner).unwrap().current(),
            query.new_tree(&mut runner).unwrap().current(),
        ));
    }
    for (route, body, q) in cases {
        let (method, path) = BODY_ROUTES[route];
        let r = app.raw(method, path, "application/json", body).await;
        check(&r).unwrap();
        for listing in ["/api/v1/agents", "/api/v1/audit-events", "/api/v1/recovery-requests", "/reset-otp"] {
            let r = app.get_as(&token, &format!("{listing}?{q}")).await;
            check(&r).map_err(|e| format!("{listing}?{q}: {e}")).unwrap();
        }
        let r = app.get_as(&token, &format!("/api/v1/agents/{q}")).await;
        check(&r).unwrap();
    }
}
