//! The hosted pages (DESIGN.md 5.7) driven as a browser would with scripts off: forms,
//! cookies, redirects; the CSRF and `Origin` refusals, the headers, bad forms, and the
//! hand-off with PKCE S256 and `POST /api/v1/auth/exchange`.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;

use crate::common::*;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// A browser: a cookie jar over awc, no redirects followed.
struct Browser {
    base: String,
    client: awc::Client,
    jar: BTreeMap<String, String>,
}

struct Page {
    status: u16,
    headers: actix_web::http::header::HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> String {
        self.headers.get("location").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
    }

    fn csrf(&self) -> String {
        let at = self.body.find("name=\"csrf_token\" value=\"").expect("a CSRF field") + 25;
        self.body[at..at + self.body[at..].find('"').unwrap()].to_owned()
    }

    fn set_cookies(&self) -> Vec<String> {
        self.headers.get_all("set-cookie").map(|v| v.to_str().unwrap().to_owned()).collect()
    }
}

impl Browser {
    fn new(app: &TestApp) -> Self {
        let client = awc::Client::builder().disable_redirects().finish();
        Self { base: app.base.clone(), client, jar: BTreeMap::new() }
    }

    fn cookie_header(&self) -> String {
        self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    async fn finish(
        &mut self,
        mut res: awc::ClientResponse<
            impl futures::Stream<Item = Result<actix_web::web::Bytes, awc::error::PayloadError>> + Unpin,
        >,
    ) -> Page {
        let body = String::from_utf8_lossy(&res.body().limit(1 << 22).await.unwrap()).into_owned();
        let page = Page { status: res.status().as_u16(), headers: res.headers().clone(), body };
        for c in page.set_cookies() {
            let first = c.split(';').next().unwrap();
            let (k, v) = first.split_once('=').unwrap();
            if c.contains("Max-Age=0") {
                self.jar.remove(k);
            } else {
                self.jar.insert(k.to_owned(), v.to_owned());
            }
        }
        page
    }

    async fn get(&mut self, path: &str) -> Page {
        let url = if path.starts_with("http") { path.to_owned() } else { format!("{}{path}", self.base) };
        let res = self.client.get(url).insert_header(("Cookie", self.cookie_header())).send().await.unwrap();
        self.finish(res).await
    }

    async fn post(&mut self, path: &str, fields: &[(&str, &str)], origin: Option<&str>) -> Page {
        let mut req = self.client.post(format!("{}{path}", self.base)).insert_header(("Cookie", self.cookie_header()));
        if let Some(o) = origin {
            req = req.insert_header(("Origin", o));
        }
        let res = req.send_form(&fields).await.unwrap();
        self.finish(res).await
    }
}

#[actix_rt::test]
async fn sign_in_page_headers_cookie_and_plain_sign_in() {
    let app = TestApp::spawn(Db::Sqlite, |_| {}).await;
    let t = slug("uiw");
    app.tenant(&t).await;
    let mut b = Browser::new(&app);
    let page = b.get(&format!("/ui/{t}/sign-in")).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<html lang=\"en\">"));
    assert_eq!(page.headers.get("content-security-policy").unwrap(), CSP);
    assert_eq!(page.headers.get("referrer-policy").unwrap(), "no-referrer");
    assert!(page.headers.get("cache-control").unwrap().to_str().unwrap().contains("no-store"));
    let csrf = page.csrf();

    // A wrong password: the form again with a message, never JSON.
    let wrong = b
        .post(&format!("/ui/{t}/sign-in"), &[("csrf_token", &csrf), ("email", &admin(&t)), ("password", "nope")], None)
        .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("The email or password is wrong"));
    assert!(wrong.headers.get("content-type").unwrap().to_str().unwrap().starts_with("text/html"));

    let ok = b
        .post(
            &format!("/ui/{t}/sign-in"),
            &[("csrf_token", &csrf), ("email", &admin(&t)), ("password", PASSWORD)],
            None,
        )
        .await;
    assert_eq!(ok.status, 303);
    assert_eq!(ok.location(), format!("/ui/{t}/account"));
    let session = ok.set_cookies().into_iter().find(|c| c.starts_with("lk_session=")).unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(session.contains(attr), "{session}");
    }
    let account = b.get(&format!("/ui/{t}/account")).await;
    assert_eq!(account.status, 200);
    assert!(account.body.contains(&admin(&t)) && account.body.contains("Sign out"));
    assert!(account.headers.get("cache-control").unwrap().to_str().unwrap().contains("no-store"));
}

#[actix_rt::test]
async fn forms_without_their_token_or_from_another_origin_are_refused_and_change_nothing() {
    let app = TestApp::spawn(Db::Sqlite, |_| {}).await;
    let t = slug("uiw");
    app.tenant(&t).await;
    let mut b = Browser::new(&app);
    let csrf = b.get(&format!("/ui/{t}/sign-in")).await.csrf();
    let ok = b
        .post(
            &format!("/ui/{t}/sign-in"),
            &[("csrf_token", &csrf), ("email", &admin(&t)), ("password", PASSWORD)],
            None,
        )
        .await;
    assert_eq!(ok.status, 303);
    let account = b.get(&format!("/ui/{t}/account")).await;
    let token = account.csrf();
    let path = format!("/ui/{t}/account/password");
    let change = [
        ("current_password", PASSWORD),
        ("new_password", "a new horse battery staple"),
        ("confirm_password", "a new horse battery staple"),
    ];

    let no_token = b.post(&path, &change, None).await;
    assert_eq!(no_token.status, 403);
    assert!(no_token.location().is_empty() && no_token.body.contains("Nothing was changed"));
    let mut with_token = change.to_vec();
    with_token.push(("csrf_token", &token));
    let foreign = b.post(&path, &with_token, Some("http://evil.example")).await;
    assert_eq!(foreign.status, 403);
    let wrong_token = b.post(&path, &[change.as_slice(), &[("csrf_token", "x")]].concat(), None).await;
    assert_eq!(wrong_token.status, 403);
    assert_eq!(app.login(&t, &admin(&t)).await.status, 200, "the password is unchanged");

    // The same form with its token, `Origin: null` (Chromium under no-referrer) does change it.
    let done = b.post(&path, &with_token, Some("null")).await;
    assert_eq!(done.status, 303);
    assert_eq!(app.login(&t, &admin(&t)).await.status, 401);
}

#[actix_rt::test]
async fn bad_forms_answer_pages_with_the_right_status() {
    let app = TestApp::spawn(Db::Sqlite, |_| {}).await;
    let t = slug("uiw");
    app.tenant(&t).await;
    let mut b = Browser::new(&app);
    let csrf = b.get(&format!("/ui/{t}/sign-in")).await.csrf();
    let empty = b.post(&format!("/ui/{t}/sign-in"), &[("csrf_token", &csrf), ("email", "")], None).await;
    assert_eq!(empty.status, 400);
    let long = "a".repeat(5000);
    let too_long =
        b.post(&format!("/ui/{t}/sign-in"), &[("csrf_token", &csrf), ("email", &long), ("password", "x")], None).await;
    assert_eq!(too_long.status, 400);
    assert!(too_long.body.contains("too long"));
    let unknown = b.get("/ui/no-such-tenant/sign-in").await;
    assert_eq!(unknown.status, 404);
    assert!(unknown.headers.get("content-type").unwrap().to_str().unwrap().starts_with("text/html"));
    // Signed-in pages without a session go to the sign-in page.
    let away = b.get(&format!("/ui/{t}/settings")).await;
    assert_eq!((away.status, away.location()), (303, format!("/ui/{t}/sign-in")));
}

fn pkce() -> (String, String) {
    let verifier = URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())
        + &URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes());
    (verifier.clone(), latchkey_core::handoff::s256(&verifier))
}

async fn hand_off(app: &TestApp, t: &str, return_to: &str, challenge: &str) -> (Page, Browser) {
    let mut b = Browser::new(app);
    let q = format!(
        "return_to={}&state=xyz&code_challenge={challenge}&code_challenge_method=S256",
        percent_encoding::utf8_percent_encode(return_to, percent_encoding::NON_ALPHANUMERIC)
    );
    let page = b.get(&format!("/ui/{t}/sign-in?{q}")).await;
    if page.status != 200 {
        return (page, b);
    }
    let csrf = page.csrf();
    let signed = b
        .post(&format!("/ui/{t}/sign-in"), &[("csrf_token", &csrf), ("email", &admin(t)), ("password", PASSWORD)], None)
        .await;
    assert_eq!(signed.location(), format!("/ui/{t}/continue"));
    (b.get(&format!("/ui/{t}/continue")).await, b)
}

fn code_of(page: &Page) -> String {
    let at = page.body.find("code=").expect("a forward with a code") + 5;
    let raw = &page.body[at..at + page.body[at..].find('&').unwrap()];
    percent_encoding::percent_decode_str(raw).decode_utf8().unwrap().into_owned()
}

#[actix_rt::test]
async fn the_hand_off_sends_a_single_use_pkce_code_to_an_allowed_return_url() {
    for db in backends() {
        let app = TestApp::spawn(db, |_| {}).await;
        let t = slug("uiw");
        app.tenant(&t).await;
        let a = app.token(&t, &admin(&t)).await;
        let cb = "http://127.0.0.1:9/cb";
        let r = app.patch_as(&a, "/api/v1/settings/two-factor", json!({"return_urls": [cb]})).await;
        assert_eq!(r.status, 200, "{:?}", r.body);

        // Off the list, or a look-alike: an error page, never a redirect.
        for bad in ["http://evil.example/cb", "http://127.0.0.1:9/cbx", "http://127.0.0.1:9/cb//evil.example"] {
            let (page, _) = hand_off(&app, &t, bad, &pkce().1).await;
            assert_eq!(page.status, 400, "{bad}");
            assert!(page.location().is_empty() && page.body.contains("not allowed"));
        }

        let (verifier, challenge) = pkce();
        let (page, _) = hand_off(&app, &t, cb, &challenge).await;
        assert_eq!(page.status, 200);
        assert!(page.body.contains("http-equiv=\"refresh\"") && page.body.contains("state=xyz"));
        let code = code_of(&page);
        let wrong = app.post("/api/v1/auth/exchange", json!({"code": code, "code_verifier": pkce().0})).await;
        assert_eq!((wrong.status, wrong.code()), (401, "invalid_code"));
        // The attempt used the code up: the right verifier does not rescue it.
        let after = app.post("/api/v1/auth/exchange", json!({"code": code, "code_verifier": verifier})).await;
        assert_eq!(after.status, 401);

        let (verifier, challenge) = pkce();
        let code = code_of(&hand_off(&app, &t, cb, &challenge).await.0);
        let ok = app.post("/api/v1/auth/exchange", json!({"code": code, "code_verifier": verifier})).await;
        assert_eq!(ok.status, 200, "{:?}", ok.body);
        let me = app.get_as(&ok.s("authentication_token"), "/api/v1/me").await;
        assert_eq!(me.s("email"), admin(&t));
        let again = app.post("/api/v1/auth/exchange", json!({"code": code, "code_verifier": verifier})).await;
        assert_eq!((again.status, again.code()), (401, "invalid_code"));

        // K lives 60 s.
        let (verifier, challenge) = pkce();
        let code = code_of(&hand_off(&app, &t, cb, &challenge).await.0);
        app.clock.advance_secs(61);
        let late = app.post("/api/v1/auth/exchange", json!({"code": code, "code_verifier": verifier})).await;
        assert_eq!(late.status, 401);
        let missing = app.post("/api/v1/auth/exchange", json!({"code": "x"})).await;
        assert_eq!(missing.status, 400);
    }
}

/// The JSON of the page's `data-options` attribute (askama escapes it).
fn options_of(page: &Page) -> serde_json::Value {
    let at = page.body.find("data-options=\"").expect("a WebAuthn form") + 14;
    let raw = &page.body[at..at + page.body[at..].find('"').unwrap()];
    let text = raw
        .replace("&#34;", "\"")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#38;", "&")
        .replace("&amp;", "&");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("options JSON: {e}: {text}"))
}

async fn password_step(b: &mut Browser, t: &str, who: &str) {
    let csrf = b.get(&format!("/ui/{t}/sign-in")).await.csrf();
    let r = b
        .post(&format!("/ui/{t}/sign-in"), &[("csrf_token", &csrf), ("email", who), ("password", PASSWORD)], None)
        .await;
    assert_eq!((r.status, r.location()), (303, format!("/ui/{t}/two-factor")), "{}", r.body);
}

#[actix_rt::test]
async fn a_passkey_enrolls_and_signs_in_through_the_pages_and_bad_answers_are_pages() {
    use crate::softauthn::{Forge, SoftAuthenticator};
    const ORIGIN: &str = "http://localhost:8080";
    let app = TestApp::spawn(Db::Sqlite, |c| {
        c.webauthn_rp_id = Some("localhost".into());
        c.webauthn_origins = vec![ORIGIN.into()];
    })
    .await;
    let t = slug("uiwa");
    app.tenant(&t).await;
    let admin_token = app.token(&t, &admin(&t)).await;
    let agent = format!("agent@{t}.test");
    app.user(&admin_token, &agent, "agent").await;
    let methods = json!({"agent": ["authenticator", "email", "webauthn"]});
    let r = app.call("PUT", "/api/v1/settings/two-factor/methods", Some(methods), Some(&admin_token)).await;
    assert_eq!(r.status, 200, "{r:?}");
    app.enable_authenticator(&admin_token).await;

    let mut b = Browser::new(&app);
    password_step(&mut b, &t, &agent).await;
    let choice = b.get(&format!("/ui/{t}/two-factor")).await;
    assert!(choice.body.contains(&format!("/ui/{t}/two-factor?method=webauthn")), "{}", choice.body);
    let page = b.get(&format!("/ui/{t}/two-factor?method=webauthn")).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<script src=\"/ui/assets/webauthn.js\" defer></script>"));
    assert_eq!(options_of(&page)["publicKey"]["rp"]["id"], "localhost");
    let script = b.get("/ui/assets/webauthn.js").await;
    assert_eq!(script.status, 200);
    assert!(script.body.contains("navigator.credentials.create"));

    // No credential, or not one: a page with a message and a new ceremony; nothing enrolled.
    let path = format!("/ui/{t}/enroll/webauthn");
    let csrf = page.csrf();
    let missing = b.post(&path, &[("csrf_token", &csrf)], None).await;
    assert_eq!(missing.status, 400);
    assert!(missing.body.contains("No passkey came with the form"));
    let garbage = b.post(&path, &[("csrf_token", &csrf), ("credential", "{\"id\": 1}")], None).await;
    assert_eq!(garbage.status, 400);
    let huge = "x".repeat(20_000);
    let too_long = b.post(&path, &[("csrf_token", &csrf), ("credential", &huge)], None).await;
    assert_eq!(too_long.status, 400);
    assert!(too_long.body.contains("too long"));
    let mut auth = SoftAuthenticator::new(ORIGIN);
    let forged = auth.create_forged(
        &options_of(&garbage),
        &Forge { origin: Some("https://evil.example".into()), ..Forge::default() },
        false,
    );
    let refused = b.post(&path, &[("csrf_token", &csrf), ("credential", &forged.to_string())], None).await;
    assert_eq!(refused.status, 400);
    assert!(refused.body.contains("could not be registered"), "{}", refused.body);
    let no_token = b.post(&path, &[("credential", "{}")], None).await;
    assert_eq!(no_token.status, 403);

    let cred = auth.create(&options_of(&refused));
    let done =
        b.post(&path, &[("csrf_token", &csrf), ("credential", &cred.to_string()), ("name", "Desk key")], None).await;
    assert_eq!((done.status, done.location()), (303, format!("/ui/{t}/sign-in?done=enrolled")), "{}", done.body);

    // Sign in with it: a refused assertion counts as a wrong code and shows on the page.
    password_step(&mut b, &t, &agent).await;
    let page = b.get(&format!("/ui/{t}/two-factor?method=webauthn")).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Sign in with a passkey"));
    let verify = format!("/ui/{t}/two-factor/verify");
    let csrf = page.csrf();
    let forged = auth.get_forged(
        &options_of(&page),
        &Forge { origin: Some("https://evil.example".into()), ..Forge::default() },
        None,
    );
    let wrong = b
        .post(&verify, &[("csrf_token", &csrf), ("method", "webauthn"), ("credential", &forged.to_string())], None)
        .await;
    assert_eq!(wrong.status, 401);
    assert!(
        wrong.body.contains("That passkey was not accepted") && wrong.body.contains("attempts left"),
        "{}",
        wrong.body
    );
    let assertion = auth.get(&options_of(&wrong));
    let ok = b
        .post(&verify, &[("csrf_token", &csrf), ("method", "webauthn"), ("credential", &assertion.to_string())], None)
        .await;
    assert_eq!((ok.status, ok.location()), (303, format!("/ui/{t}/account")), "{}", ok.body);
    let account = b.get(&format!("/ui/{t}/account")).await;
    assert!(account.body.contains("Desk key") && account.body.contains("Rename Desk key"), "{}", account.body);

    // Rename: an empty name is a 400 page; a good one renames.
    let csrf = account.csrf();
    let id = {
        let at = account.body.find("name=\"id\" value=\"").unwrap() + 17;
        account.body[at..at + account.body[at..].find('"').unwrap()].to_owned()
    };
    let rename = format!("/ui/{t}/account/passkeys/rename");
    let empty = b.post(&rename, &[("csrf_token", &csrf), ("id", &id), ("name", " ")], None).await;
    assert_eq!(empty.status, 400);
    let renamed = b.post(&rename, &[("csrf_token", &csrf), ("id", &id), ("name", "Blue key")], None).await;
    assert_eq!(renamed.status, 303);
    assert!(b.get(&format!("/ui/{t}/account")).await.body.contains("Blue key"));
    // Its last method: removing it is refused with a message.
    let last = b.post(&format!("/ui/{t}/account/passkeys/remove"), &[("csrf_token", &csrf), ("id", &id)], None).await;
    assert_eq!(last.status, 409);
    assert!(last.body.contains("last method"), "{}", last.body);
}
