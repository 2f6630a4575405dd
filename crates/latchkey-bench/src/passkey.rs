//! Passkey verify (issue 17): users whose second factor is a WebAuthn credential (ES256, `none`
//! attestation, from the tests' software authenticator `tests/it/softauthn.rs`) verify a
//! sign-in with an assertion: `POST /api/v1/auth/2fa/verify {challenge_token, method:
//! "webauthn", credential}` → 200 with a session, once per user, closed loop at
//! `--connections`, as the TOTP `verify` phase does with codes. Only those requests are
//! measured.
//!
//! Setup (not measured): `--passkey-users` agents are bulk-loaded (cheap password hash) over
//! `--verify-tenants` tenants `bench-passkey-{k}` with 2FA on and `webauthn` their only method,
//! with the server's relying party ([`RP_ID`], [`ORIGIN`]); each then enrolls a passkey through
//! the API at sign-in (the `enroll` challenge, `register/start`, `register/finish`), so the
//! stored credential is exactly what the service makes of a browser's; the enrollment notices
//! are let drain into the SMTP sink; each signs in again and gets the assertion options
//! (`authenticate/start`), and the assertions are signed before the measured loop starts, so
//! the client's ECDSA does not take CPU from the service while it is measured.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::db::{TenantRow, UserRow};
use crate::http::post_json;
use crate::service::Process;
use crate::{Bench, BenchResult, expect_session, expect_status, load, scenario, sign_in_body};

// The tests' software authenticator, shared rather than copied: test code, which unwraps (the
// calls below hand it only options whose fields were checked first).
#[allow(clippy::unwrap_used, clippy::expect_used)]
#[path = "../../../tests/it/softauthn.rs"]
mod softauthn;

use softauthn::SoftAuthenticator;

/// The relying party id the service is started with (`LATCHKEY_WEBAUTHN_RP_ID`).
pub const RP_ID: &str = "localhost";
/// The origin the software authenticator's browser claims (`LATCHKEY_WEBAUTHN_ORIGINS`).
pub const ORIGIN: &str = "http://localhost:8080";

/// The `webauthn` bit of a tenant's methods (`MethodSet`: 1 authenticator, 2 email, 4 webauthn).
const WEBAUTHN: i32 = 4;

const REGISTER_START: &str = "/api/v1/auth/2fa/webauthn/register/start";
const REGISTER_FINISH: &str = "/api/v1/auth/2fa/webauthn/register/finish";
const AUTHENTICATE_START: &str = "/api/v1/auth/2fa/webauthn/authenticate/start";

/// The users of the passkey phase: their sign-in bodies (JSON text), by user.
#[derive(Default)]
pub struct PasskeyUsers {
    signin: Vec<String>,
}

/// Whether `v` is base64url text (no padding), as every binary field of the options is.
fn b64(v: &Value) -> bool {
    v.as_str().is_some_and(|s| URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).is_ok())
}

/// Whether `options` (`{"publicKey": {…}}`) carry what the authenticator's `create` reads.
fn creation_options(options: &Value) -> bool {
    let pk = &options["publicKey"];
    pk["rp"]["id"].is_string() && b64(&pk["challenge"]) && b64(&pk["user"]["id"])
}

/// Whether `options` carry what the authenticator's `get` reads.
fn request_options(options: &Value) -> bool {
    b64(&options["publicKey"]["challenge"])
}

/// Setup errors, by step.
#[derive(Default)]
struct SetupErrors {
    errors: usize,
    first: Option<String>,
}

impl SetupErrors {
    fn add(&mut self, step: &str, out: &load::Outcome) {
        self.errors += out.errors;
        if self.first.is_none() {
            self.first = out.first_error.as_ref().map(|e| format!("{step}: {e}"));
        }
    }
}

impl Bench {
    /// `--passkey-users` agents without a second factor over `--verify-tenants` tenants
    /// `bench-passkey-{k}` (2FA on, `webauthn` the only method), bulk-inserted with `hash`.
    /// Empty unless the phase runs.
    pub(crate) fn load_passkey_users(
        &self,
        conn: &mut diesel::PgConnection,
        hash: &str,
        now: i64,
    ) -> BenchResult<PasskeyUsers> {
        if !self.opts.runs("passkey") {
            return Ok(PasskeyUsers::default());
        }
        let tenants: Vec<TenantRow> = (0..self.opts.verify_tenants)
            .map(|k| TenantRow {
                id: uuid::Uuid::now_v7().to_string(),
                slug: format!("bench-passkey-{k}"),
                two_factor: true,
                methods: WEBAUTHN,
            })
            .collect();
        crate::db::insert_tenants(conn, &tenants, now)?;
        let mut users = Vec::with_capacity(self.opts.passkey_users);
        let mut out = PasskeyUsers::default();
        for i in 0..self.opts.passkey_users {
            let tenant = &tenants[i % tenants.len()];
            let email = format!("{i}@passkey.bench.test");
            out.signin.push(sign_in_body(&tenant.slug, &email));
            users.push(UserRow {
                id: uuid::Uuid::now_v7().to_string(),
                tenant_id: tenant.id.clone(),
                email,
                role: "agent",
            });
        }
        crate::db::insert_users(conn, &users, hash, now)?;
        Ok(out)
    }

    /// Posts `bodies[i]` to `path` for every user that has one (closed loop): the answers that
    /// are 200 and pass `check`, by user.
    async fn round(
        &self,
        svc: &Process,
        path: &'static str,
        bodies: Vec<Option<String>>,
        check: fn(&Value) -> bool,
    ) -> (load::Outcome, Vec<Option<Value>>) {
        let host = Self::addr_host(svc);
        let ready: Vec<usize> = (0..bodies.len()).filter(|&i| bodies[i].is_some()).collect();
        let answers: Arc<Vec<OnceLock<Value>>> = Arc::new((0..bodies.len()).map(|_| OnceLock::new()).collect());
        let keep = Arc::clone(&answers);
        let of = ready.clone();
        let out = load::closed(
            svc.addr,
            self.opts.connections,
            scenario(
                move |i| {
                    let body = bodies.get(*ready.get(i)?)?.as_deref()?;
                    Some(post_json(&host, path, body))
                },
                move |i, r| {
                    expect_status(r, 200)?;
                    let v = r.json();
                    if !check(&v) {
                        return Err(format!(
                            "unexpected answer: {}",
                            v.to_string().chars().take(200).collect::<String>()
                        ));
                    }
                    if let Some(&user) = of.get(i) {
                        let _ = keep[user].set(v);
                    }
                    Ok(())
                },
            ),
            None,
        )
        .await;
        (out, answers.iter().map(|a| a.get().cloned()).collect())
    }

    /// Waits (at most 60 s) until the SMTP sink has had no new message for a second, then
    /// empties it: the notices of the earlier phases or of the setup (enrollments, recovery
    /// codes used) are delivered before a measured loop, which would otherwise queue behind them.
    pub(crate) async fn drain_notices(&self) {
        let until = Instant::now() + Duration::from_secs(60);
        let mut seen = self.sink.count();
        let mut quiet_since = Instant::now();
        while Instant::now() < until && quiet_since.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.sink.count();
            if now != seen {
                seen = now;
                quiet_since = Instant::now();
            }
        }
        self.sink.take();
    }

    /// Passkey verify: every user enrolls a passkey at sign-in, signs in again and gets the
    /// assertion options (setup), then verifies once with his assertion (`method:
    /// "webauthn"`); the verify requests are measured. Every answer must be 200 with a
    /// session; setup errors count as errors too.
    pub(crate) async fn passkey(&mut self, svc: &Process, users: PasskeyUsers) -> BenchResult<()> {
        let n = users.signin.len();
        let mut setup = SetupErrors::default();
        eprintln!("passkey verify: {n} users sign in and enroll a passkey…");
        let (enroll_signin, tokens) = self.collect_challenges(svc, users.signin.clone()).await;
        setup.add("enrollment sign-in", &enroll_signin);
        let tokens: Vec<Option<String>> = tokens.iter().map(|t| t.get().cloned()).collect();
        let with_token = |tokens: &[Option<String>]| -> Vec<Option<String>> {
            tokens.iter().map(|t| t.as_ref().map(|t| json!({"challenge_token": t}).to_string())).collect()
        };
        let (register_start, options) =
            self.round(svc, REGISTER_START, with_token(&tokens), |v| creation_options(&v["options"])).await;
        setup.add("register/start", &register_start);
        let mut authenticators: Vec<SoftAuthenticator> = (0..n).map(|_| SoftAuthenticator::new(ORIGIN)).collect();
        let finish: Vec<Option<String>> = (0..n)
            .map(|i| {
                let (token, options) = (tokens[i].as_ref()?, options[i].as_ref()?);
                let credential = authenticators[i].create(&options["options"]);
                Some(json!({"challenge_token": token, "credential": credential}).to_string())
            })
            .collect();
        let (register_finish, enrolled) =
            self.round(svc, REGISTER_FINISH, finish, |v| v["enrolled"] == "webauthn").await;
        setup.add("register/finish", &register_finish);
        let enrolled_count = enrolled.iter().flatten().count();
        self.drain_notices().await;

        eprintln!("passkey verify: {enrolled_count} passkeys enrolled; signing in again…");
        let again: Vec<usize> = (0..n).filter(|&i| enrolled[i].is_some()).collect();
        let (signed, signed_tokens) =
            self.collect_challenges(svc, again.iter().map(|&i| users.signin[i].clone()).collect()).await;
        setup.add("sign-in", &signed);
        let mut tokens: Vec<Option<String>> = vec![None; n];
        for (j, &i) in again.iter().enumerate() {
            tokens[i] = signed_tokens[j].get().cloned();
        }
        let (authenticate_start, options) =
            self.round(svc, AUTHENTICATE_START, with_token(&tokens), |v| request_options(&v["options"])).await;
        setup.add("authenticate/start", &authenticate_start);
        let assertions: Vec<String> = (0..n)
            .filter_map(|i| {
                let (token, options) = (tokens[i].as_ref()?, options[i].as_ref()?);
                let credential = authenticators[i].get(&options["options"]);
                let body = json!({"challenge_token": token, "method": "webauthn", "credential": credential});
                Some(body.to_string())
            })
            .collect();
        drop(authenticators);

        eprintln!("passkey verify: {} assertions, verifying…", assertions.len());
        let host = Self::addr_host(svc);
        let profiler = self.profile("passkey", svc);
        let out = load::closed(
            svc.addr,
            self.opts.connections,
            scenario(
                move |i| assertions.get(i).map(|body| post_json(&host, "/api/v1/auth/2fa/verify", body)),
                |_, r| expect_session(r),
            ),
            None,
        )
        .await;
        if let Some(p) = profiler {
            p.stop();
        }
        let errors = out.errors + setup.errors;
        if errors > 0 {
            self.correct = false;
            eprintln!("passkey verify: {errors} errors: setup {:?}, verify {:?}", setup.first, out.first_error);
        }
        self.results.insert(
            "passkey".into(),
            json!({
                "users": n,
                "tenants": self.opts.verify_tenants,
                "enrolled": enrolled_count,
                "setup_errors": setup.errors,
                "enrollment": {
                    "signin": enroll_signin.json(),
                    "register_start": register_start.json(),
                    "register_finish": register_finish.json(),
                },
                "signin_setup": signed.json(),
                "authenticate_start": authenticate_start.json(),
                "verify": out.json(),
            }),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_checks() {
        let create = json!({"publicKey": {"rp": {"id": "localhost"}, "challenge": "AAEC", "user": {"id": "AQ"}}});
        assert!(creation_options(&create));
        assert!(!creation_options(&json!({"publicKey": {"rp": {"id": "localhost"}, "challenge": "%%"}})));
        assert!(request_options(&json!({"publicKey": {"challenge": "AAEC"}})));
        assert!(!request_options(&Value::Null));
    }

    #[test]
    fn the_shared_authenticator_signs_what_it_was_asked() {
        let mut auth = SoftAuthenticator::new(ORIGIN);
        let create = json!({"publicKey": {"rp": {"id": RP_ID}, "challenge": "AAEC", "user": {"id": "AQ"}}});
        let cred = auth.create(&create);
        assert_eq!(cred["type"], "public-key");
        let assertion = auth.get(&json!({"publicKey": {"challenge": "AAEC", "rpId": RP_ID}}));
        assert_eq!(assertion["id"], cred["id"]);
        assert!(b64(&assertion["response"]["signature"]));
    }
}
