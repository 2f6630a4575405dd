//! The server key check and key rotation (DESIGN.md 5.8), on both backends.

use latchkey::app::StartError;
use latchkey::keys::{self, KeyError};
use latchkey_core::ServerKey;
use latchkey_core::config::Sensitive;
use latchkey_store::repo::sealed::SealedColumn;
use serde_json::json;

use crate::common::*;

const KEY_A: &str = "11"; // Config::for_test's key, repeated
const KEY_B: &str = "22";
const KEY_C: &str = "33";

fn key(k: &str) -> String {
    k.repeat(32)
}

fn fp(k: &str) -> String {
    ServerKey::parse(&key(k)).unwrap().id().fingerprint()
}

#[actix_web::test]
async fn a_mismatching_key_refuses_to_start_and_the_same_key_starts() {
    for db in backends() {
        let app = TestApp::spawn(db, |_| {}).await;
        assert_eq!(app.keys.current_id().fingerprint(), fp(KEY_A));
        // The same key starts (again), and serves.
        let same = app.twin_with(|_| {}).await.expect("the same key starts");
        let slug = slug("kc");
        same.tenant(&slug).await;
        same.stop().await;

        // Another key refuses, naming both fingerprints and the fix.
        let err = app.twin_with(|c| c.secret_key = Some(Sensitive(key(KEY_B)))).await.err().expect("refused");
        let text = err.to_string();
        assert!(matches!(err, StartError::Key(KeyError::Mismatch { .. })), "{db:?}: {text}");
        assert!(text.contains(&fp(KEY_A)) && text.contains(&fp(KEY_B)), "{text}");
        assert!(text.contains("LATCHKEY_SECRET_KEY") && text.contains("LATCHKEY_PREVIOUS_SECRET_KEYS"), "{text}");
        // ... and changed nothing: the database still answers to the first key.
        assert!(app.twin_with(|_| {}).await.is_ok());

        // A previous key equal to the current one, or one that does not parse: refused,
        // naming the variable.
        let err = app.twin_with(|c| c.previous_secret_keys = Some(Sensitive(key(KEY_A)))).await.err().unwrap();
        assert!(err.to_string().contains("LATCHKEY_PREVIOUS_SECRET_KEYS"), "{err}");
        let err = app.twin_with(|c| c.previous_secret_keys = Some(Sensitive("not-a-key".into()))).await.err().unwrap();
        assert!(err.to_string().contains("LATCHKEY_PREVIOUS_SECRET_KEYS"), "{err}");
        // A previous key that is not the database's does not make a wrong key right.
        let err = app
            .twin_with(|c| {
                c.secret_key = Some(Sensitive(key(KEY_B)));
                c.previous_secret_keys = Some(Sensitive(key(KEY_C)));
            })
            .await
            .err()
            .unwrap();
        assert!(matches!(err, StartError::Key(KeyError::Mismatch { .. })), "{err}");
        app.stop().await;
    }
}

#[actix_web::test]
async fn rotation_moves_every_value_and_previous_keys_open_old_values() {
    for db in backends() {
        let old = TestApp::spawn(db, |_| {}).await;
        let slug = slug("rot");
        old.tenant(&slug).await;
        let admin_token = old.token(&slug, &admin(&slug)).await;
        // Sealed under the old key: the admin's TOTP secret, the notices' payloads, and an
        // agent's pending (unconfirmed) authenticator secret.
        let secret = old.enable_authenticator(&admin_token).await;
        old.next_step();
        let agent = format!("agent@{slug}.test");
        old.user(&admin_token, &agent, "agent").await;
        let ch = old.challenge(&slug, &agent).await;
        assert_eq!(ch["next"], "enroll", "{ch}");
        let setup =
            old.post("/api/v1/auth/2fa/authenticator/setup", json!({"challenge_token": ch["challenge_token"]})).await;
        assert_eq!(setup.status, 200, "{setup:?}");
        let agent_secret = setup.s("secret");
        let before = keys::status(&old.core.store).unwrap();
        let old_fp = Some(fp(KEY_A));
        let sealed_before: i64 = before.counts.get(&old_fp).map_or(0, |c| c.values().sum());
        assert!(sealed_before >= 3, "{before:?}");
        for column in ["enrollments.secret_sealed", "challenges.pending_secret", "deliveries.payload"] {
            assert!(before.counts[&old_fp].contains_key(column), "{column}: {before:?}");
        }
        old.stop().await;

        // The new key, with the old one as previous: starts, and moves the database's check.
        let new = old
            .twin_with(|c| {
                c.secret_key = Some(Sensitive(key(KEY_B)));
                c.previous_secret_keys = Some(Sensitive(key(KEY_A)));
            })
            .await
            .expect("a rotation starts");
        // The old key alone is refused from now on.
        assert!(matches!(old.twin_with(|_| {}).await.err(), Some(StartError::Key(KeyError::Mismatch { .. }))));

        // Before `keys rotate`: the session from before the rotation (keyed hash under the
        // previous key) still works, so do the old TOTP secret and the pending one.
        let me = new.get_as(&admin_token, "/api/v1/me").await;
        assert_eq!(me.status, 200, "{me:?}");
        let confirm = new
            .post(
                "/api/v1/auth/2fa/authenticator/confirm",
                json!({"challenge_token": ch["challenge_token"], "code": new.totp(&agent_secret, 0)}),
            )
            .await;
        assert_eq!(confirm.status, 200, "the pending secret opens under the previous key: {confirm:?}");
        new.next_step();
        let c = new.challenge(&slug, &admin(&slug)).await;
        let v = new.verify(c["challenge_token"].as_str().unwrap(), "authenticator", &new.totp(&secret, 0)).await;
        assert_eq!(v.status, 200, "the TOTP secret opens under the previous key: {v:?}");

        // Rotate, twice (the second run finds nothing left: resumable, idempotent).
        let done = keys::rotate(&new.core.store, &new.keys, 2, |_, _| {}).unwrap();
        assert!(done.resealed >= 2, "{done:?}");
        assert_eq!(done.unreadable, 0, "{done:?}");
        let again = keys::rotate(&new.core.store, &new.keys, 2, |_, _| {}).unwrap();
        assert_eq!(again.resealed, 0, "{again:?}");
        let after = keys::status(&new.core.store).unwrap();
        assert_eq!(after.to_rotate(new.keys.current_id()), 0, "every value moved: {after:?}");
        assert!(!after.counts.contains_key(&old_fp), "{after:?}");
        new.stop().await;

        // The new key alone now opens everything.
        let alone = new.twin_with(|c| c.previous_secret_keys = None).await.expect("the new key alone starts");
        alone.next_step();
        let c = alone.challenge(&slug, &admin(&slug)).await;
        let v = alone.verify(c["challenge_token"].as_str().unwrap(), "authenticator", &alone.totp(&secret, 0)).await;
        assert_eq!(v.status, 200, "{v:?}");
        alone.next_step();
        let c = alone.challenge(&slug, &agent).await;
        let v =
            alone.verify(c["challenge_token"].as_str().unwrap(), "authenticator", &alone.totp(&agent_secret, 0)).await;
        assert_eq!(v.status, 200, "{v:?}");
        // Every sealed value (the mails recorded before the rotation too) opens under the new
        // key alone.
        for column in SealedColumn::ALL {
            let rows = alone.core.store.run_blocking(|c| column.batch(c, None, 1000)).unwrap();
            for row in rows {
                assert!(alone.keys.open(&row.sealed, &column.aad(&row.owner)).is_ok(), "{}", column.name());
            }
        }
        alone.stop().await;
    }
}

#[actix_web::test]
async fn a_sealed_value_of_an_unknown_key_refuses_start_up() {
    for db in backends() {
        let old = TestApp::spawn(db, |_| {}).await;
        let slug = slug("unk");
        old.tenant(&slug).await;
        let admin_token = old.token(&slug, &admin(&slug)).await;
        old.enable_authenticator(&admin_token).await;
        old.stop().await;
        // Rotated to B (check moved), but A's values not re-sealed; then A is dropped from the
        // previous keys too early.
        let b = old
            .twin_with(|c| {
                c.secret_key = Some(Sensitive(key(KEY_B)));
                c.previous_secret_keys = Some(Sensitive(key(KEY_A)));
            })
            .await
            .unwrap();
        b.stop().await;
        let err = b.twin_with(|c| c.previous_secret_keys = None).await.err().expect("refused");
        let text = err.to_string();
        assert!(matches!(err, StartError::Key(KeyError::UnknownKey { .. })), "{text}");
        assert!(text.contains("LATCHKEY_PREVIOUS_SECRET_KEYS") && text.contains(&fp(KEY_A)), "{text}");
    }
}
