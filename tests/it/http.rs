//! The HTTP layer (DESIGN.md section 3, issue 11): bounded metric labels, the per-IP limiter
//! in front of everything but signed-in API calls, `X-Forwarded-For` entries of every form,
//! `HEAD` wherever `GET` is, `Allow` on every 405, the headers and the switch of `/docs/`, and
//! a `/readyz` that knows when the outbox cannot be written.

use latchkey_api::routes::RouteTable;
use serde_json::json;

use crate::common::*;

/// The routes of the app: the OpenAPI document's plus the two the binary adds.
fn route_table() -> RouteTable {
    let mut routes = RouteTable::from_openapi(&latchkey_api::openapi());
    routes.add(latchkey_api::OPENAPI_PATH, actix_web::http::Method::GET, false);
    routes.add(latchkey_api::DOCS_PATTERN, actix_web::http::Method::GET, false);
    routes
}

/// A concrete path of a route pattern (`{id}` → a well-formed id that does not exist).
fn concrete(pattern: &str) -> String {
    if pattern == latchkey_api::DOCS_PATTERN {
        return "/docs/".to_owned();
    }
    pattern
        .split('/')
        .map(|seg| if seg.starts_with('{') { "0190c8a0-0000-7000-8000-000000000000" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

/// The labelled series of one metric family in a `/metrics` page.
fn series<'a>(page: &'a str, family: &str) -> Vec<&'a str> {
    page.lines().filter(|l| l.starts_with(family) && l[family.len()..].starts_with('{')).collect()
}

fn label<'a>(line: &'a str, name: &str) -> &'a str {
    let key = format!("{name}=\"");
    let at = line.find(&key).map(|i| i + key.len()).unwrap_or(line.len());
    let rest = &line[at..];
    &rest[..rest.find('"').unwrap_or(rest.len())]
}

#[actix_rt::test]
async fn thousands_of_made_up_methods_and_paths_leave_the_metric_series_bounded() {
    let app = TestApp::spawn(Db::Sqlite, |_| {}).await;
    let requests: Vec<(String, String)> = (0..3000)
        .map(|i| {
            let method = format!("M{i:04}X");
            let path = match i % 4 {
                0 => format!("/no/such/path/{i}"),
                1 => format!("/api/v1/agents/{i}"),
                2 => "/healthz".to_owned(),
                _ => format!("/api/v1/{i}?q={i}"),
            };
            (method, path)
        })
        .collect();
    for chunk in requests.chunks(100) {
        let answers = futures::future::join_all(chunk.iter().map(|(m, p)| app.call(m, p, None, None))).await;
        for r in answers {
            assert!(matches!(r.status, 404 | 405), "{r:?}");
        }
    }
    let page = app.call("GET", "/metrics", None, None).await.body.as_str().unwrap_or_default().to_owned();
    let counters = series(&page, "latchkey_http_requests_total");
    let buckets = series(&page, "latchkey_http_request_duration_seconds_bucket");
    assert!(!counters.is_empty() && !buckets.is_empty(), "{page}");
    assert!(counters.len() <= 10, "{} counter series: {counters:#?}", counters.len());
    assert!(buckets.len() <= 10 * 12, "{} histogram buckets", buckets.len());
    let routes = route_table();
    let patterns: Vec<&str> = routes.iter().map(|(p, _)| p).collect();
    for line in counters.iter().chain(&buckets) {
        let method = label(line, "method");
        assert!(latchkey_api::metrics::KNOWN_METHODS.contains(&method) || method == "other", "{line}");
        let route = label(line, "route");
        assert!(route == "unmatched" || patterns.contains(&route), "{line}");
    }
    assert!(
        counters.iter().any(|l| label(l, "method") == "other" && label(l, "route") == "unmatched"),
        "{counters:#?}"
    );
    assert!(counters.iter().any(|l| label(l, "route") == "/api/v1/agents/{id}" && label(l, "status") == "405"));
}

#[actix_rt::test]
async fn every_request_but_signed_in_api_calls_is_behind_the_per_ip_limiter() {
    let app = TestApp::spawn(Db::Sqlite, |c| c.signin_per_ip_per_minute = 3).await;
    let t = slug("acme");
    app.tenant(&t).await; // 1
    let token = app.token(&t, &admin(&t)).await; // 2
    assert_eq!(app.call("GET", "/healthz", None, None).await.status, 200); // 3: the last one
    for (method, path) in [
        ("GET", "/healthz"),
        ("HEAD", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/docs/"),
        ("GET", "/api/v1/openapi.json"),
        ("GET", "/reset-otp?token=x"),
        ("GET", "/no/such/path"),
        ("GET", "/api/v1/no-such-endpoint"),
        ("BREW", "/api/v1/me"),
        ("DELETE", "/api/v1/me"),
        ("POST", "/api/v1/auth/2fa/verify"),
        ("POST", "/api/v1/tenants"),
    ] {
        let r = app.call(method, path, None, None).await;
        assert_eq!(r.status, 429, "{method} {path}: {r:?}");
        if method != "HEAD" {
            assert_eq!(r.code(), "rate_limited", "{method} {path}");
        }
        assert!(r.header("retry-after").is_some(), "{method} {path}");
    }
    // Signed-in API calls stay outside it.
    assert_eq!(app.get_as(&token, "/api/v1/me").await.status, 200);
    assert_eq!(app.call("HEAD", "/api/v1/me", None, Some(&token)).await.status, 200);
    assert_eq!(app.get_as(&token, "/api/v1/agents").await.status, 200);
    assert_eq!(app.get_as("not-a-session", "/api/v1/me").await.status, 401);
    assert_eq!(app.call("POST", "/api/v1/auth/logout", None, Some(&token)).await.status, 204);
}

#[actix_rt::test]
async fn forwarded_entries_with_ports_parse_and_an_unparsable_one_ends_the_walk() {
    let app = TestApp::spawn(Db::Sqlite, |c| {
        c.signin_per_ip_per_minute = 2;
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap(), "10.0.0.0/8".parse().unwrap()];
    })
    .await;
    let body = || Some(json!({"tenant": "nope", "email": "a@b.co", "password": "x"}));
    let status = |xff: &'static str| {
        let app = &app;
        async move { app.call_with("POST", "/api/v1/auth", body(), None, &[("X-Forwarded-For", xff)]).await.status }
    };
    // `ip:port` is the ip: both count against 203.0.113.7.
    assert_eq!(status("203.0.113.7:4711, 10.1.2.3:80").await, 401);
    assert_eq!(status("203.0.113.7:4712").await, 401);
    assert_eq!(status("203.0.113.7").await, 429);
    // `[v6]:port` is the v6 address.
    assert_eq!(status("[2001:db8::7]:443").await, 401);
    assert_eq!(status("[2001:db8::7]:444, 10.9.9.9").await, 401);
    assert_eq!(status("2001:db8::7").await, 429);
    // Behind an entry that does not parse, the client-written entries are not believed: the
    // request counts against the proxy that forwarded it (10.1.2.3), whatever is further left.
    assert_eq!(status("198.51.100.1, unknown, 10.1.2.3").await, 401);
    assert_eq!(status("198.51.100.2, garbage, 10.1.2.3").await, 401);
    assert_eq!(status("198.51.100.3, unknown, 10.1.2.3").await, 429);
    // With no trusted hop before it, that is the socket peer (127.0.0.1).
    assert_eq!(status("198.51.100.4, unknown").await, 401);
    assert_eq!(status("198.51.100.5, _hidden").await, 401);
    assert_eq!(status("198.51.100.6, unknown").await, 429);
    // Another client still has its own budget.
    assert_eq!(status("198.51.100.7:1234").await, 401);
}

#[actix_rt::test]
async fn head_answers_wherever_get_does_with_the_same_headers_and_no_body() {
    let app = TestApp::spawn(Db::Sqlite, |_| {}).await;
    let t = slug("acme");
    app.tenant(&t).await;
    let token = app.token(&t, &admin(&t)).await;
    let mut checked = 0;
    for (pattern, methods) in route_table().iter() {
        if !methods.contains(&actix_web::http::Method::GET) {
            continue;
        }
        for auth in [Some(token.as_str()), None] {
            let path = concrete(pattern);
            let get = app.call("GET", &path, None, auth).await;
            let head = app.call("HEAD", &path, None, auth).await;
            assert_eq!(head.status, get.status, "HEAD {path} (session: {})", auth.is_some());
            assert!(head.body.is_null(), "HEAD {path} has a body: {:?}", head.body);
            for name in ["content-type", "cache-control", "x-content-type-options", "x-frame-options", "allow"] {
                assert_eq!(head.header(name), get.header(name), "{name} of HEAD {path}");
            }
            // The length of the GET (the metrics page changes between two requests).
            if pattern != "/metrics" {
                assert!(get.header("content-length").is_some_and(|l| l != "0"), "GET {path}: {get:?}");
                assert_eq!(head.header("content-length"), get.header("content-length"), "HEAD {path}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 2 * 10, "{checked}");
    // Where GET is not served, neither is HEAD.
    let r = app.call("HEAD", "/api/v1/auth", None, None).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow").as_deref(), Some("POST"));
}

#[actix_rt::test]
async fn every_405_names_the_methods_of_its_path_in_allow() {
    let app = TestApp::spawn(Db::Sqlite, |_| {}).await;
    let routes = route_table();
    let mut checked = 0;
    for (pattern, methods) in routes.iter() {
        let path = concrete(pattern);
        let expected = routes.allow(pattern).unwrap();
        let wrong: Vec<&str> = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "BREW"]
            .into_iter()
            .filter(|m| !methods.iter().any(|x| x.as_str() == *m))
            .collect();
        for m in wrong {
            let r = app.call(m, &path, None, None).await;
            assert_eq!((r.status, r.code()), (405, "http_method_not_allowed"), "{m} {path}: {r:?}");
            assert_eq!(r.header("allow").as_deref(), Some(expected.as_str()), "{m} {path}");
            checked += 1;
        }
        // The table agrees with the router: its own methods are not 405.
        for m in methods {
            let r = app.call(m.as_str(), &path, None, None).await;
            assert_ne!(r.status, 405, "{m} {path}");
        }
    }
    assert!(checked > 50, "{checked}");
    let r = app.call("GET", "/no/such/path", None, None).await;
    assert_eq!((r.status, r.header("allow")), (404, None));
}

#[actix_rt::test]
async fn the_docs_page_cannot_be_framed_and_can_be_turned_off() {
    let app = TestApp::spawn(Db::Sqlite, |_| {}).await;
    for path in ["/docs/", "/docs/swagger-ui.css", "/docs/swagger-initializer.js", "/api/v1/openapi.json", "/healthz"] {
        let r = app.call("GET", path, None, None).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("x-frame-options").as_deref(), Some("DENY"), "{path}");
        assert!(r.header("content-security-policy").is_some_and(|v| v.contains("frame-ancestors 'none'")), "{path}");
        assert_eq!(r.header("x-content-type-options").as_deref(), Some("nosniff"), "{path}");
    }
    let init = app.call("GET", "/docs/swagger-initializer.js", None, None).await;
    assert!(init.body.as_str().is_some_and(|js| js.contains("/api/v1/openapi.json")), "{init:?}");
    // The reset page keeps its own, stricter policy.
    let page = app.call("GET", "/reset-otp?token=x", None, None).await;
    assert!(page.header("content-security-policy").is_some_and(|v| v.contains("default-src 'none'")));

    let off = TestApp::spawn(Db::Sqlite, |c| c.docs = false).await;
    for path in ["/docs/", "/docs/swagger-ui.css", "/docs/index.html"] {
        let r = off.call("GET", path, None, None).await;
        assert_eq!((r.status, r.code()), (404, "not_found"), "{path}");
    }
    let doc = off.call("GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(doc.status, 200);
    assert!(doc.body["paths"]["/api/v1/auth"].is_object());
}

#[actix_rt::test]
async fn readyz_is_503_while_the_outbox_cannot_be_written() {
    let app = TestApp::spawn(Db::Sqlite, |_| {}).await;
    let outbox = app.core.config.data_dir.join("outbox");
    let r = app.call("GET", "/readyz", None, None).await;
    assert_eq!((r.status, r.s("outbox")), (200, "ok".to_owned()), "{r:?}");
    // A file where the directory should be: refused even to root (unlike a read-only mode).
    std::fs::remove_dir_all(&outbox).unwrap();
    std::fs::write(&outbox, b"in the way").unwrap();
    let r = app.call("GET", "/readyz", None, None).await;
    assert_eq!((r.status, r.code()), (503, "unavailable"), "{r:?}");
    assert!(r.s("detail").contains("outbox"), "{r:?}");
    assert!(!r.s("detail").contains(&*outbox.to_string_lossy()), "no path in a public answer: {r:?}");
    let head = app.call("HEAD", "/readyz", None, None).await;
    assert_eq!(head.status, 503);
    std::fs::remove_file(&outbox).unwrap();
    assert_eq!(app.call("GET", "/readyz", None, None).await.status, 200, "ready again once it can be written");

    // With SMTP the outbox is not used, so not checked.
    let smtp = TestApp::spawn(Db::Sqlite, |c| c.smtp_url = Some("smtp://127.0.0.1:2525".into())).await;
    std::fs::write(smtp.core.config.data_dir.join("outbox"), b"in the way").unwrap();
    let r = smtp.call("GET", "/readyz", None, None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.get("outbox").is_none(), "{r:?}");
}

#[actix_rt::test]
async fn the_worker_endpoints_answer_head_and_check_the_outbox() {
    let app = TestApp::spawn(Db::Sqlite, |_| {}).await;
    let (queue, _) = app.core.open_mail().await.unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = app.core.serve_worker_http(queue, listener).unwrap();
    let handle = server.handle();
    actix_rt::spawn(server);
    let client = awc::Client::default();
    for path in ["/healthz", "/metrics", "/readyz"] {
        let get = client.get(format!("{base}{path}")).send().await.unwrap();
        let head = client.head(format!("{base}{path}")).send().await.unwrap();
        assert_eq!((get.status().as_u16(), head.status().as_u16()), (200, 200), "{path}");
    }
    let mut r = client.get(format!("{base}/readyz")).send().await.unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["outbox"], "ok", "{body}");
    let outbox = app.core.config.data_dir.join("outbox");
    std::fs::remove_dir_all(&outbox).unwrap();
    std::fs::write(&outbox, b"in the way").unwrap();
    let mut r = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["outbox"], "down", "{body}");
    handle.stop(false).await;
}

/// At shutdown (draining), every answer closes its connection, so keep-alive connections end
/// between requests rather than being cut under one, and `/readyz` answers 503.
#[actix_web::test]
async fn draining_closes_connections_after_each_answer() {
    let app = TestApp::spawn(Db::Sqlite, |_| {}).await;
    let before = app.call("GET", "/healthz", None, None).await;
    assert_eq!(before.status, 200);
    assert_ne!(before.header("connection").as_deref(), Some("close"), "{before:?}");
    app.core.draining.store(true, std::sync::atomic::Ordering::Relaxed);
    let during = app.call("GET", "/healthz", None, None).await;
    assert_eq!(during.status, 200);
    assert_eq!(during.header("connection").as_deref(), Some("close"), "{during:?}");
    let ready = app.call("GET", "/readyz", None, None).await;
    assert_eq!((ready.status, ready.code()), (503, "unavailable"), "{ready:?}");
    app.stop().await;
}
