"""Browser tests of the hosted pages (DESIGN.md 5.7): Chromium (Debian package) driven by
Playwright. Starts the release or debug binary on a scratch data directory, builds a tenant
through the API, then acts only in the browser: sign-in, the authenticator enrollment with its
QR code, the code page, the account page, passkeys (Chromium's CDP virtual authenticator:
enrollment at sign-in, sign-in with it, rename, add, remove, passwordless sign-in), CSRF refusal,
the headers, JavaScript off, 360 px.
Screenshots go to docs/screens/ (UPDATE_SCREENS=1) or a temp dir.

    python3 tests/browser/test_pages.py [path/to/latchkey]
"""
import base64, hashlib, hmac, json, os, socket, struct, subprocess, sys, tempfile, time, urllib.parse, urllib.request

from playwright.sync_api import sync_playwright

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "debug", "latchkey")
SHOTS = os.path.join(ROOT, "docs", "screens") if os.environ.get("UPDATE_SCREENS") else tempfile.mkdtemp()
PASSWORD = "correct horse battery staple"
OPERATOR = "browser-test-operator"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
failures = []


def check(name, ok, detail=""):
    print(("PASS " if ok else "FAIL ") + name + ("" if ok else f": {detail}"))
    if not ok:
        failures.append(name)


def totp(secret, at=None):
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    msg = struct.pack(">Q", int((at or time.time()) // 30))
    h = hmac.new(key, msg, hashlib.sha1).digest()
    o = h[-1] & 15
    return f"{(struct.unpack('>I', h[o:o + 4])[0] & 0x7fffffff) % 1000000:06d}"


def api(base, method, path, body=None, token=None):
    req = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def sign_in(page, public, slug, who):
    page.goto(f"{public}/ui/{slug}/sign-in")
    page.get_by_label("Email").fill(who)
    page.get_by_label("Password").fill(PASSWORD)
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in", exact=True).click()


def ceremony(page, button):
    """Clicks the button that runs a WebAuthn ceremony; the script then submits its form."""
    with page.expect_navigation(timeout=15000):
        page.get_by_role("button", name=button).click()
    page.wait_for_load_state()


def passkeys(browser, public, slug, who):
    ctx = browser.new_context()
    page = ctx.new_page()
    cdp = ctx.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    auth = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True, "hasUserVerification": True,
        "isUserVerified": True, "automaticPresenceSimulation": True}})["authenticatorId"]
    creds = lambda: cdp.send("WebAuthn.getCredentials", {"authenticatorId": auth})["credentials"]
    sign_in(page, public, slug, who)
    page.get_by_role("link", name="Passkey or security key").click()
    page.wait_for_load_state()
    check("the passkey page loads its script from the binary",
          page.locator("script[src='/ui/assets/webauthn.js']").count() == 1, page.url)
    page.screenshot(path=os.path.join(SHOTS, "passkey-01-enroll.png"), full_page=True)
    ceremony(page, "Create a passkey")
    check("a passkey enrolled at sign-in is on the authenticator, then the sign-in form comes back",
          len(creds()) == 1 and creds()[0]["rpId"] == "localhost" and page.get_by_label("Password").count() == 1, page.url)
    page.get_by_label("Email").fill(who)
    page.get_by_label("Password").fill(PASSWORD)
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in", exact=True).click()
    if page.get_by_role("button", name="Sign in with a passkey").count() == 0:
        page.get_by_role("link", name="Passkey").click()
        page.wait_for_load_state()
    ceremony(page, "Sign in with a passkey")
    body = page.inner_text("body")
    check("the passkey signs in to the account page, which lists Passkey 1",
          page.url.endswith("/account") and "Passkey 1" in body, page.url)
    page.get_by_label("New name for Passkey 1").fill("Work laptop")
    with page.expect_navigation():
        page.get_by_role("button", name="Rename Passkey 1").click()
    check("the account page renames the passkey", "Work laptop" in page.inner_text("body"), page.inner_text("body")[:300])
    # A second passkey on another authenticator (the first one holds this account already and
    # would refuse, as excludeCredentials asks).
    cdp.send("WebAuthn.removeVirtualAuthenticator", {"authenticatorId": auth})
    auth = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "usb", "hasResidentKey": True, "hasUserVerification": True,
        "isUserVerified": True, "automaticPresenceSimulation": True}})["authenticatorId"]
    with page.expect_navigation():
        page.get_by_role("button", name="Add a passkey").click()
    ceremony(page, "Create a passkey")
    body = page.inner_text("body")
    check("the account page adds a second passkey", len(creds()) == 1 and "Passkey 2" in body, body[:300])
    page.screenshot(path=os.path.join(SHOTS, "passkey-02-account.png"), full_page=True)
    with page.expect_navigation():
        page.get_by_role("button", name="Remove Work laptop").click()
    body = page.inner_text("body")
    check("the account page removes a passkey", "Work laptop" not in body and "Passkey 2" in body, body[:300])
    bad = page.request.post(f"{public}/ui/{slug}/account/passkeys/rename", max_redirects=0,
                            form={"csrf_token": page.locator("input[name=csrf_token]").first.get_attribute("value"),
                                  "id": "nope", "name": "x"})
    check("renaming an unknown passkey is a 404 page, not a change", bad.status == 404 and "html" in bad.headers.get("content-type", ""),
          bad.status)
    with page.expect_navigation():
        page.get_by_role("button", name="Sign out").click()
    page.get_by_role("link", name="Sign in with a passkey").click()
    page.wait_for_load_state()
    ceremony(page, "Sign in with a passkey")
    check("passwordless: the passkey alone signs in", page.url.endswith("/account") and who in page.inner_text("body"), page.url)
    ctx.close()


def main():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    data = tempfile.mkdtemp()
    env = dict(os.environ, LATCHKEY_LISTEN=f"127.0.0.1:{port}", LATCHKEY_DATA_DIR=data, LATCHKEY_OPERATOR_TOKEN=OPERATOR,
               LATCHKEY_PUBLIC_URL=f"http://localhost:{port}", RUST_LOG="warn")
    env.pop("LATCHKEY_DATABASE_URL", None); env.pop("LATCHKEY_QUEUE_URL", None); env.pop("LATCHKEY_SMTP_URL", None)
    proc = subprocess.Popen([BIN, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base, public = f"http://127.0.0.1:{port}", f"http://localhost:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(base + "/healthz"); break
            except Exception:
                time.sleep(0.1)
        slug = "bt" + os.urandom(3).hex()
        admin = f"admin@{slug}.test"
        api(base, "POST", "/api/v1/tenants", {"slug": slug, "name": "Browser Test Co", "admin": {"email": admin, "name": "Ada", "password": PASSWORD}}, OPERATOR)
        _, r = api(base, "POST", "/api/v1/auth", {"tenant": slug, "email": admin, "password": PASSWORD})
        tok = r["authentication_token"]
        agent = f"agent@{slug}.test"
        api(base, "POST", "/api/v1/agents", {"email": agent, "name": "Agnes", "role": "agent", "password": PASSWORD}, tok)
        pat = f"pat@{slug}.test"
        api(base, "POST", "/api/v1/agents", {"email": pat, "name": "Pat", "role": "agent", "password": PASSWORD}, tok)
        st, _ = api(base, "PUT", "/api/v1/settings/two-factor/methods", {"agent": ["authenticator", "email", "webauthn"]}, tok)
        check("the API allows passkeys for agents (setup)", st == 200, st)
        st, _ = api(base, "PUT", "/api/v1/settings/two-factor/webauthn", {"rp_id": "localhost", "origins": [public]}, tok)
        check("the API sets the relying party localhost (setup)", st in (200, 204), st)
        st, _ = api(base, "PATCH", "/api/v1/settings/two-factor", {"passkey_sign_in": True}, tok)
        check("the API turns passwordless passkey sign-in on (setup)", st == 200, st)
        _, en = api(base, "POST", "/api/v1/settings/two-factor/enable", {"password": PASSWORD, "method": "authenticator"}, tok)
        api(base, "POST", "/api/v1/settings/two-factor/enable/confirm", {"setup_token": en["setup_token"], "code": totp(en["secret"])}, tok)

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"])
            page = browser.new_context().new_page()
            resp = page.goto(f"{public}/ui/{slug}/sign-in")
            h = resp.all_headers()
            check("the sign-in page answers the CSP of 5.7", h.get("content-security-policy") == CSP, h.get("content-security-policy"))
            check("Referrer-Policy no-referrer", h.get("referrer-policy") == "no-referrer")
            check("lang is set", page.evaluate("document.documentElement.lang") == "en")
            page.screenshot(path=os.path.join(SHOTS, "sign-in.png"), full_page=True)
            page.get_by_label("Email").fill(agent)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_load_state()
            page.get_by_role("link", name="Authenticator app").click()
            page.wait_for_load_state()
            src = page.locator("img.qr").get_attribute("src") or ""
            check("the enrollment shows a QR code image", src.startswith("data:image/png;base64,"))
            key = page.locator("#setup-key").inner_text().replace(" ", "")
            check("the setup key is shown in groups", len(key) >= 32, key)
            page.screenshot(path=os.path.join(SHOTS, "enroll-authenticator.png"), full_page=True)
            page.get_by_label("code").fill(totp(key))
            page.get_by_role("button", name="Confirm").click()
            page.wait_for_load_state()
            check("after enrolling, the sign-in form comes back", page.get_by_label("Password").count() == 1, page.url)
            time.sleep(max(0.0, 30 - time.time() % 30 + 0.5))  # the next time step
            page.get_by_label("Email").fill(agent)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_load_state()
            page.screenshot(path=os.path.join(SHOTS, "code-entry.png"), full_page=True)
            page.get_by_label("code").fill(totp(key))
            page.get_by_role("button", name="Verify").click()
            page.wait_for_load_state()
            check("the code signs in to the account page", page.url.endswith("/account") and agent in page.inner_text("body"), page.url)
            page.screenshot(path=os.path.join(SHOTS, "account.png"), full_page=True)
            cookies = [c for c in page.context.cookies() if c["name"] == "lk_session"]
            check("the session cookie is HttpOnly, SameSite=Strict, path /ui",
                  bool(cookies) and all(c["httpOnly"] and c["sameSite"] == "Strict" and c["path"] == "/ui" for c in cookies), cookies)
            r = page.request.post(f"{public}/ui/{slug}/account/password", form={"current_password": PASSWORD, "new_password": "x" * 20},
                                  max_redirects=0)
            check("a POST without its CSRF token is refused with 403", r.status == 403, r.status)
            token = page.locator("input[name=csrf_token]").first.get_attribute("value")
            r = page.request.post(f"{public}/ui/{slug}/sign-out", form={"csrf_token": token}, headers={"Origin": "http://evil.example"},
                                  max_redirects=0)
            check("a POST from another origin is refused with 403", r.status == 403, r.status)

            passkeys(browser, public, slug, pat)

            nojs = browser.new_context(java_script_enabled=False, viewport={"width": 360, "height": 740}).new_page()
            nojs.goto(f"{public}/ui/{slug}/sign-in")
            check("at 360 px the sign-in page has no horizontal scroll", nojs.evaluate("document.documentElement.scrollWidth") <= 360)
            nojs.get_by_label("Email").fill(admin)
            nojs.get_by_label("Password").fill(PASSWORD)
            with nojs.expect_navigation():
                nojs.get_by_label("Password").press("Enter")
            check("with JavaScript off the password leads to the code page", nojs.get_by_label("code").count() == 1, nojs.url)
            nojs.screenshot(path=os.path.join(SHOTS, "code-page-360px-no-js.png"), full_page=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"{len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
