//! The binary: configuration errors name the key; `migrate` and `tenant create` work.

use std::process::Command;

fn latchkey(dir: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_latchkey"));
    cmd.args(args)
        .current_dir(dir)
        .env("LATCHKEY_DATA_DIR", dir.join("data"))
        .env("LATCHKEY_ARGON2_MEMORY_KIB", "64")
        .env("LATCHKEY_ARGON2_ITERATIONS", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn configuration_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (key, value, expect) in [
        ("LATCHKEY_DATABASE_URL", "mysql://x", "LATCHKEY_DATABASE_URL"),
        ("LATCHKEY_QUEUE_URL", "amqp://x", "LATCHKEY_QUEUE_URL"),
        ("LATCHKEY_SMTP_URL", "http://x", "LATCHKEY_SMTP_URL"),
        ("LATCHKEY_SECRET_KEY", "too-short", "LATCHKEY_SECRET_KEY"),
        ("LATCHKEY_EMAIL_OTP_TTL_SECS", "soon", "email_otp_ttl_secs"),
        ("LATCHKEY_LISTEN", "not an address", "listen"),
        ("LATCHKEY_TRUSTED_PROXIES", "10.0.0.0/8, nonsense", "trusted_proxies"),
        ("LATCHKEY_OTP_MAX_FAILURES", "0", "LATCHKEY_OTP_MAX_FAILURES"),
        ("LATCHKEY_PURGE_INTERVAL_SECS", "0", "LATCHKEY_PURGE_INTERVAL_SECS"),
        ("LATCHKEY_PURGE_BATCH", "0", "LATCHKEY_PURGE_BATCH"),
        ("LATCHKEY_PURGE_PAUSE_MS", "18446744073709551615", "LATCHKEY_PURGE_PAUSE_MS"),
    ] {
        let out = latchkey(dir.path(), &[(key, value)], &["config"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{key}: {stderr}");
        assert!(stderr.to_lowercase().contains(&expect.to_lowercase()), "{key}: {stderr}");
    }
    let out = latchkey(dir.path(), &[("LATCHKEY_DATA_DIR", "/proc/nope")], &["config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("LATCHKEY_DATA_DIR"));
}

#[test]
fn config_file_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("latchkey.toml"), "email_otp_ttl_secs = 120\nlisten = \"127.0.0.1:9000\"\n")
        .unwrap();
    let out = latchkey(
        dir.path(),
        &[
            ("LATCHKEY_LISTEN", "127.0.0.1:9001"),
            ("LATCHKEY_OPERATOR_TOKEN", "1234567890123456789"),
            ("LATCHKEY_TEST_DATABASE_URL", "ignored"),
        ],
        &["config"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("email_otp_ttl_secs: 120"), "{stdout}");
    assert!(stdout.contains("127.0.0.1:9001"), "the environment wins: {stdout}");
    assert!(!stdout.contains("1234567890123456789"), "secrets are redacted");
    std::fs::write(dir.path().join("latchkey.toml"), "no_such_key = 1\n").unwrap();
    let out = latchkey(dir.path(), &[], &["config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no_such_key"));
}

#[test]
fn migrate_and_tenant_create() {
    let dir = tempfile::tempdir().unwrap();
    let out = latchkey(dir.path(), &[], &["migrate"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = dir.path().join("data/secret.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        let data = dir.path().join("data");
        assert_eq!(
            std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
            0o700,
            "the data directory is private"
        );
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args([
            "tenant",
            "create",
            "--slug",
            "acme",
            "--name",
            "Acme",
            "--admin-email",
            "Ada@Acme.test",
            "--admin-password-stdin",
        ])
        .current_dir(dir.path())
        .env("LATCHKEY_DATA_DIR", dir.path().join("data"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(b"a long enough password\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("created tenant acme") && stdout.contains("ada@acme.test"), "{stdout}");
    assert!(!stdout.contains("a long enough password"));
    let again = latchkey(
        dir.path(),
        &[("LATCHKEY_ADMIN_PASSWORD", "a long enough password")],
        &["tenant", "create", "--slug", "acme", "--name", "Acme", "--admin-email", "b@acme.test"],
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
}

/// Waits up to 30 s for `/readyz` of the service at `base` to answer 2xx.
async fn wait_ready(client: &awc::Client, base: &str) {
    for _ in 0..300 {
        if let Ok(res) = client.get(format!("{base}/readyz")).send().await
            && res.status().is_success()
        {
            return;
        }
        actix_rt::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the service did not become ready");
}

/// Every file under `dir`, recursively, with its mode.
#[cfg(unix)]
fn modes(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let meta = entry.metadata().unwrap();
        out.push((entry.path(), meta.permissions().mode() & 0o7777));
        if meta.is_dir() {
            out.extend(modes(&entry.path()));
        }
    }
    out
}

/// In a data directory that exists before the first start (so its mode protects nothing
/// new), every file the service writes — database, queue, key, their `-wal`/`-shm`
/// companions, outbox messages — is 0600 and every directory it makes 0700.
#[cfg(unix)]
#[actix_rt::test]
async fn every_file_in_a_pre_existing_data_directory_is_private() {
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .arg("serve")
        .current_dir(dir.path())
        .env("LATCHKEY_DATA_DIR", &data)
        .env("LATCHKEY_LISTEN", format!("127.0.0.1:{port}"))
        .env("LATCHKEY_OPERATOR_TOKEN", "operator-token-for-the-mode-test")
        .env("LATCHKEY_ARGON2_MEMORY_KIB", "64")
        .env("LATCHKEY_ARGON2_ITERATIONS", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = awc::Client::builder().timeout(std::time::Duration::from_secs(30)).finish();
    wait_ready(&client, &base).await;
    let password = "a password for the mode test";
    let r = client
        .post(format!("{base}/api/v1/tenants"))
        .insert_header(("Authorization", "Bearer operator-token-for-the-mode-test"))
        .send_json(&json!({"slug": "acme", "name": "Acme", "admin": {"email": "admin@acme.test", "name": "Ada", "password": password}}))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let mut r = client
        .post(format!("{base}/api/v1/auth"))
        .send_json(&json!({"tenant": "acme", "email": "admin@acme.test", "password": password}))
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    let token = body["authentication_token"].as_str().unwrap().to_owned();
    // Enabling 2FA by email mails a code: an `.eml` in the outbox.
    let r = client
        .post(format!("{base}/api/v1/settings/two-factor/enable"))
        .insert_header(("Authorization", format!("Bearer {token}")))
        .send_json(&json!({"password": password, "method": "email"}))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    wait_for_message(dir.path(), &["To: "]).await;
    let all = modes(&data);
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    for name in ["latchkey.db", "latchkey.db-wal", "queue.db", "queue.db-wal", "secret.key", "outbox", "outbox/.tmp"] {
        assert!(all.iter().any(|(p, _)| p.ends_with(name)), "{name} in {all:?}");
    }
    assert!(all.iter().any(|(p, _)| p.extension().is_some_and(|x| x == "eml")), "{all:?}");
    for (path, mode) in &all {
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{} is {mode:o}", path.display());
    }
}

#[cfg(unix)]
#[test]
fn a_data_directory_others_can_write_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    for (mode, who) in [(0o770, "group"), (0o777, "every user"), (0o1777, "every user")] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(mode)).unwrap();
        for command in [&["config"][..], &["migrate"][..]] {
            let out = latchkey(dir.path(), &[], command);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{mode:o} {command:?}: {stderr}");
            assert!(stderr.contains(&*data.to_string_lossy()), "names the directory: {stderr}");
            assert!(stderr.contains(&format!("chmod 700 {}", data.display())), "gives the fix: {stderr}");
            assert!(stderr.contains(who), "{stderr}");
        }
        assert_eq!(std::fs::read_dir(&data).unwrap().count(), 0, "nothing was written into it");
    }
    // Readable by others is allowed (with a warning); private is fine.
    for mode in [0o755, 0o700] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = latchkey(dir.path(), &[], &["migrate"]);
        assert!(out.status.success(), "{mode:o}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn the_docs_switch_is_a_configuration_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = latchkey(dir.path(), &[], &["config"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("docs: true"), "{}", String::from_utf8_lossy(&out.stdout));
    let out = latchkey(dir.path(), &[("LATCHKEY_DOCS", "false")], &["config"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("docs: false"));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("LATCHKEY_DOCS"), "a known key, no warning");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Decodes quoted-printable soft breaks and escapes (enough for our messages).
fn unqp(raw: &str) -> String {
    let joined = raw.replace("=\r\n", "").replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&joined[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn outbox_messages(dir: &std::path::Path) -> Vec<String> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("data/outbox"))
        .map(|rd| {
            rd.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "eml")).collect()
        })
        .unwrap_or_default();
    files.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    files.iter().map(|p| unqp(&std::fs::read_to_string(p).unwrap())).collect()
}

/// The first message in the outbox that contains every one of `needles` (notices to other
/// people land there too), waiting for it up to 10 s.
async fn wait_for_message(dir: &std::path::Path, needles: &[&str]) -> String {
    for _ in 0..200 {
        let msgs = outbox_messages(dir);
        if let Some(m) = msgs.into_iter().find(|m| needles.iter().all(|n| m.contains(n))) {
            return m;
        }
        actix_rt::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no message with {needles:?} in the outbox");
}

fn six_digits(text: &str) -> String {
    let b = text.as_bytes();
    for i in 0..b.len().saturating_sub(5) {
        let run = &b[i..i + 6];
        let before = i == 0 || !b[i - 1].is_ascii_digit();
        let after = i + 6 == b.len() || !b[i + 6].is_ascii_digit();
        if before && after && run.iter().all(u8::is_ascii_digit) {
            return String::from_utf8(run.to_vec()).unwrap();
        }
    }
    panic!("no code in {text}");
}

/// The embedded default end to end with the real binary: SQLite, embedded queue, `.eml`
/// outbox. Then: the logs of the whole flow (at trace level) hold none of the passwords,
/// codes, tokens or secrets the flow saw, and SIGTERM ends the process with 0.
#[actix_rt::test]
async fn the_binary_serves_a_full_flow_logs_no_secret_and_stops_cleanly_on_sigterm() {
    use serde_json::{Value, json};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .arg("serve")
        .current_dir(dir.path())
        .env("LATCHKEY_DATA_DIR", dir.path().join("data"))
        .env("LATCHKEY_LISTEN", format!("127.0.0.1:{port}"))
        .env("LATCHKEY_OPERATOR_TOKEN", "operator-token-for-the-log-test")
        .env("LATCHKEY_ARGON2_MEMORY_KIB", "64")
        .env("LATCHKEY_ARGON2_ITERATIONS", "1")
        .env("LATCHKEY_LOG_FORMAT", "json")
        .env("RUST_LOG", "trace")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let client = awc::Client::builder().timeout(std::time::Duration::from_secs(30)).finish();
    let call = |method: &'static str, path: String, body: Option<Value>, token: Option<String>| {
        let client = client.clone();
        let url = format!("{base}{path}");
        async move {
            let mut req = client.request(actix_web::http::Method::from_bytes(method.as_bytes()).unwrap(), url);
            if let Some(t) = token {
                req = req.insert_header(("Authorization", format!("Bearer {t}")));
            }
            let mut res = match body {
                Some(b) => req.send_json(&b).await.unwrap(),
                None => req.send().await.unwrap(),
            };
            let status = res.status().as_u16();
            let v: Value = res.json().limit(1 << 22).await.unwrap_or(Value::Null);
            (status, v)
        }
    };
    wait_ready(&client, &base).await;
    let mut secrets: Vec<String> = vec!["operator-token-for-the-log-test".into()];
    let admin_pw = "admin password that must not be logged".to_owned();
    let agent_pw = "agent password that must not be logged".to_owned();
    secrets.push(admin_pw.clone());
    secrets.push(agent_pw.clone());
    let (s, _) = call("POST", "/api/v1/tenants".into(), Some(json!({"slug": "acme", "name": "Acme", "admin": {"email": "admin@acme.test", "name": "Ada", "password": admin_pw}})), Some("operator-token-for-the-log-test".into())).await;
    assert_eq!(s, 201);
    let (_, r) = call(
        "POST",
        "/api/v1/auth".into(),
        Some(json!({"tenant": "acme", "email": "admin@acme.test", "password": admin_pw})),
        None,
    )
    .await;
    let admin = r["authentication_token"].as_str().unwrap().to_owned();
    secrets.push(admin.clone());
    let (s, _) = call(
        "POST",
        "/api/v1/agents".into(),
        Some(json!({"email": "agent@acme.test", "name": "Al", "role": "agent", "password": agent_pw})),
        Some(admin.clone()),
    )
    .await;
    assert_eq!(s, 201);
    let (_, r) = call(
        "POST",
        "/api/v1/settings/two-factor/enable".into(),
        Some(json!({"password": admin_pw, "method": "authenticator"})),
        Some(admin.clone()),
    )
    .await;
    let secret = r["secret"].as_str().unwrap().to_owned();
    let setup = r["setup_token"].as_str().unwrap().to_owned();
    secrets.push(secret.clone());
    secrets.push(setup.clone());
    let code = crate::common::totp_secret(&secret).code_at(chrono::Utc::now());
    secrets.push(format!("\"{code}\""));
    let (s, _) = call(
        "POST",
        "/api/v1/settings/two-factor/enable/confirm".into(),
        Some(json!({"setup_token": setup, "code": code})),
        Some(admin.clone()),
    )
    .await;
    assert_eq!(s, 200);
    // The agent enrolls by email.
    let (_, r) = call(
        "POST",
        "/api/v1/auth".into(),
        Some(json!({"tenant": "acme", "email": "agent@acme.test", "password": agent_pw})),
        None,
    )
    .await;
    let challenge = r["two_factor"]["challenge_token"].as_str().unwrap().to_owned();
    secrets.push(challenge.clone());
    let (s, _) =
        call("POST", "/api/v1/auth/2fa/email/send".into(), Some(json!({"challenge_token": challenge})), None).await;
    assert_eq!(s, 202);
    let message = wait_for_message(dir.path(), &["agent@acme.test", "code"]).await;
    assert!(message.contains("agent@acme.test"));
    let email_code = six_digits(&message);
    let (s, r) = call(
        "POST",
        "/api/v1/auth/2fa/verify".into(),
        Some(json!({"challenge_token": challenge, "method": "email", "code": email_code})),
        None,
    )
    .await;
    assert_eq!(s, 200, "{r}");
    secrets.push(r["authentication_token"].as_str().unwrap().to_owned());
    // The admin asks for a reset link and uses it.
    let (_, r) = call(
        "POST",
        "/api/v1/auth".into(),
        Some(json!({"tenant": "acme", "email": "admin@acme.test", "password": admin_pw})),
        None,
    )
    .await;
    let admin_challenge = r["two_factor"]["challenge_token"].as_str().unwrap().to_owned();
    secrets.push(admin_challenge.clone());
    let (s, _) =
        call("POST", "/api/v1/auth/2fa/recovery".into(), Some(json!({"challenge_token": admin_challenge})), None).await;
    assert_eq!(s, 202);
    let link = wait_for_message(dir.path(), &["reset-otp?token="]).await;
    let at = link.find("reset-otp?token=").expect("a reset link") + "reset-otp?token=".len();
    let token: String =
        link[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
    assert_eq!(token.len(), 43, "{link}");
    secrets.push(token.clone());
    let page = client.get(format!("{base}/reset-otp?token={token}")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let (s, _) = call("POST", "/api/v1/auth/2fa/reset".into(), Some(json!({"token": token})), None).await;
    assert_eq!(s, 200);

    // SIGTERM: a clean stop with exit code 0.
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut status = None;
    for _ in 0..200 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        actix_rt::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("the service did not stop within 20 s of SIGTERM");
    });
    assert_eq!(status.code(), Some(0));
    let logs = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(logs.len() > 10_000, "trace logs were written");
    assert!(logs.contains("\"request_id\""), "JSON logs carry request ids");
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "a secret reached the logs: {}…", &secret[..6]);
    }
    // Codes are 6 digits, which can occur by chance inside timestamps and durations
    // (after a dot); a code written by us would stand alone.
    for c in [&email_code, &code] {
        assert!(!stands_alone(&logs, c), "a code reached the logs");
    }
}

fn stands_alone(haystack: &str, needle: &str) -> bool {
    let b = haystack.as_bytes();
    haystack.match_indices(needle).any(|(i, _)| {
        let before = if i == 0 { b' ' } else { b[i - 1] };
        let after = b.get(i + needle.len()).copied().unwrap_or(b' ');
        !before.is_ascii_digit() && before != b'.' && !after.is_ascii_digit() && after != b'.'
    })
}
