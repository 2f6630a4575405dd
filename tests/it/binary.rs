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
