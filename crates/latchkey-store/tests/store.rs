//! Store tests on SQLite, and on Postgres when `LATCHKEY_TEST_DATABASE_URL` is set.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use chrono::{DateTime, Utc};
use latchkey_core::otp::OtpLockout;
use latchkey_core::{Method, Role, TenantId, UserId};
use latchkey_store::model::{Enrollment, Tenant, TwoFactorPolicy, User};
use latchkey_store::repo::{enrollments, tenants, users};
use latchkey_store::testing::ScratchDb;
use latchkey_store::{Backend, Store, StoreError, write_tx};

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_780_000_000, 0).unwrap()
}

/// One store per backend: SQLite always, Postgres when configured (each its own database).
struct Scratch {
    store: Store,
    url: String,
    _pg: Option<ScratchDb>,
    _dir: tempfile::TempDir,
}

fn stores() -> Vec<Scratch> {
    let mut out = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    out.push(Scratch { store: Store::open(&url, 8).unwrap(), url, _pg: None, _dir: dir });
    if let Ok(admin) = std::env::var("LATCHKEY_TEST_DATABASE_URL") {
        let pg = latchkey_store::testing::scratch_postgres(&admin).expect("Postgres from LATCHKEY_TEST_DATABASE_URL");
        let url = pg.url.clone();
        out.push(Scratch {
            store: Store::open(&url, 8).unwrap(),
            url,
            _pg: Some(pg),
            _dir: tempfile::tempdir().unwrap(),
        });
    }
    out
}

fn seed(store: &Store) -> (TenantId, UserId) {
    let tenant = Tenant {
        id: TenantId::new(),
        slug: "acme".into(),
        name: "Acme".into(),
        policy: TwoFactorPolicy::default(),
        created_at: now(),
    };
    let user = User {
        id: UserId::new(),
        tenant_id: tenant.id,
        email: "a@acme.test".into(),
        name: "A".into(),
        role: Role::Admin,
        password_hash: "x".into(),
        preferred: None,
        lockout: OtpLockout::default(),
        created_at: now(),
    };
    store
        .run_blocking(|c| {
            tenants::insert(c, &tenant)?;
            users::insert(c, &user)
        })
        .unwrap();
    (tenant.id, user.id)
}

#[test]
fn backends_come_from_the_url_scheme() {
    assert_eq!(Backend::of("postgres://u@h/db").unwrap().0, Backend::Postgres);
    assert_eq!(Backend::of("postgresql://u@h/db").unwrap().0, Backend::Postgres);
    assert_eq!(Backend::of("sqlite://./data/x.db").unwrap(), (Backend::Sqlite, "./data/x.db".to_owned()));
    assert_eq!(Backend::of("data.db").unwrap().0, Backend::Sqlite);
    for bad in ["mysql://x", "sqlite://", "", "http://x"] {
        assert!(matches!(Backend::of(bad), Err(StoreError::BadUrl(_))), "{bad}");
    }
}

#[test]
fn migrations_are_idempotent_and_constraints_hold() {
    for Scratch { store, url, .. } in stores() {
        let (tenant, _) = seed(&store);
        // A second open runs no migration again and keeps the data.
        let again = Store::open(&url, 2).unwrap();
        assert!(again.run_blocking(|c| tenants::by_slug(c, "acme")).unwrap().is_some());
        let dup = Tenant {
            id: TenantId::new(),
            slug: "acme".into(),
            name: "Other".into(),
            policy: TwoFactorPolicy::default(),
            created_at: now(),
        };
        assert!(store.run_blocking(|c| tenants::insert(c, &dup)).unwrap_err().is_conflict());
        let dup_user = User {
            id: UserId::new(),
            tenant_id: tenant,
            email: "a@acme.test".into(),
            name: "B".into(),
            role: Role::Agent,
            password_hash: "x".into(),
            preferred: None,
            lockout: OtpLockout::default(),
            created_at: now(),
        };
        assert!(store.run_blocking(|c| users::insert(c, &dup_user)).unwrap_err().is_conflict());
    }
}

/// Read-modify-write of one user's counter inside `write_tx` from many threads (and
/// connections) at once: no update is lost, on either backend.
#[test]
fn write_transactions_serialise_one_users_counter() {
    for Scratch { store, .. } in stores() {
        let (tenant, user) = seed(&store);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for _ in 0..10 {
                        store
                            .run_blocking(|c| {
                                write_tx(c, |c| {
                                    users::lock(c, user)?;
                                    let u = users::by_id(c, tenant, user)?.unwrap();
                                    let next = OtpLockout { failures: u.lockout.failures + 1, blocked_until: None };
                                    users::set_lockout(c, user, next)
                                })
                            })
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let u = store.run_blocking(|c| users::by_id(c, tenant, user)).unwrap().unwrap();
        assert_eq!(u.lockout.failures, 80, "{:?}", store.backend());
    }
}

#[test]
fn a_failed_write_transaction_rolls_back() {
    for Scratch { store, .. } in stores() {
        let (tenant, user) = seed(&store);
        let result: Result<(), StoreError> = store.run_blocking(|c| {
            write_tx(c, |c| {
                users::set_lockout(c, user, OtpLockout { failures: 2, blocked_until: None })?;
                Err(StoreError::Corrupt("boom"))
            })
        });
        assert!(result.is_err());
        let u = store.run_blocking(|c| users::by_id(c, tenant, user)).unwrap().unwrap();
        assert_eq!(u.lockout.failures, 0);
    }
}

#[test]
fn the_last_totp_step_only_moves_forward() {
    for Scratch { store, .. } in stores() {
        let (tenant, user) = seed(&store);
        let en = Enrollment {
            user_id: user,
            method: Method::Authenticator,
            secret_sealed: Some(vec![1, 2, 3]),
            last_step: Some(100),
            created_at: now(),
        };
        store.run_blocking(|c| enrollments::upsert(c, tenant, &en)).unwrap();
        assert!(!store.run_blocking(|c| enrollments::advance_last_step(c, user, 100)).unwrap());
        assert!(!store.run_blocking(|c| enrollments::advance_last_step(c, user, 99)).unwrap());
        assert!(store.run_blocking(|c| enrollments::advance_last_step(c, user, 101)).unwrap());
        let stored = store.run_blocking(|c| enrollments::for_user(c, user)).unwrap();
        assert_eq!(stored[0].last_step, Some(101));
        assert_eq!(stored[0].secret_sealed.as_deref(), Some(&[1u8, 2, 3][..]));
    }
}

/// A database restart (here: every connection of the database killed) costs at most one
/// failed query, answered as unavailable, and the store then works again.
#[test]
fn the_store_recovers_from_lost_connections() {
    let Ok(admin) = std::env::var("LATCHKEY_TEST_DATABASE_URL") else { return };
    let pg = latchkey_store::testing::scratch_postgres(&admin).unwrap();
    let store = Store::open(&pg.url, 4).unwrap();
    let (tenant, user) = seed(&store);
    // Fill the pool with several live connections.
    let held: Vec<_> = (0..3).map(|_| store.clone()).collect();
    std::thread::scope(|s| {
        for st in &held {
            s.spawn(|| st.run_blocking(|c| users::by_id(c, tenant, user)).unwrap());
        }
    });
    let name = pg.url.rsplit('/').next().unwrap().split('?').next().unwrap().to_owned();
    let mut killer = <diesel::PgConnection as diesel::Connection>::establish(&admin).unwrap();
    diesel::RunQueryDsl::execute(
        diesel::sql_query(format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")),
        &mut killer,
    )
    .unwrap();
    // The first query meets a dead connection: answered as unavailable, not as a bug.
    let first = store.run_blocking(|c| users::by_id(c, tenant, user));
    assert!(first.as_ref().is_err_and(StoreError::is_unavailable), "{first:?}");
    for _ in 0..10 {
        assert!(store.run_blocking(|c| users::by_id(c, tenant, user)).unwrap().is_some());
    }
}
