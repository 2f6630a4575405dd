//! Store tests on SQLite, and on Postgres when `LATCHKEY_TEST_DATABASE_URL` is set.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use chrono::{DateTime, Utc};
use latchkey_core::otp::OtpLockout;
use latchkey_core::{Method, Role, TenantId, UserId};
use latchkey_store::model::{Enrollment, Tenant, TwoFactorPolicy, User};
use latchkey_store::repo::{enrollments, tenants, users};
use latchkey_store::testing::ScratchDb;
use latchkey_store::{Backend, DbConn, Store, StoreError, write_tx};

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
        settings: Default::default(),
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
        enroll_asked_at: None,
        preferred_chosen: false,
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
            settings: Default::default(),
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
            enroll_asked_at: None,
            preferred_chosen: false,
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
            last_used_at: None,
        };
        store.run_blocking(|c| enrollments::upsert(c, tenant, &en)).unwrap();
        assert!(!store.run_blocking(|c| enrollments::advance_last_step(c, user, 100, now())).unwrap());
        assert!(!store.run_blocking(|c| enrollments::advance_last_step(c, user, 99, now())).unwrap());
        assert!(store.run_blocking(|c| enrollments::advance_last_step(c, user, 101, now())).unwrap());
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

/// Helpers of the one-statement TOTP sign-in tests.
mod totp {
    use latchkey_core::{AuditEventId, AuditKind, ChallengeId, Method, MethodSet, SessionId, TenantId, UserId};
    use latchkey_store::Store;
    use latchkey_store::model::{AuditEvent, Challenge, ChallengePurpose, Enrollment, NextAction, Session};
    use latchkey_store::repo::sign_in_at_once::{self, Factor, SignInAtOnce, SignInOutcome};
    use latchkey_store::repo::{challenges, enrollments};

    use super::now;

    pub fn sample_session(tenant: TenantId, user: UserId) -> Session {
        Session {
            id: SessionId::new(),
            tenant_id: tenant,
            user_id: user,
            created_at: now(),
            expires_at: now() + chrono::Duration::hours(8),
            second_factor_at: Some(now()),
        }
    }
    pub fn attempt(store: &Store, tenant: TenantId, user: UserId, challenge: ChallengeId, step: i64) -> SignInOutcome {
        let session = sample_session(tenant, user);
        let audit = [AuditKind::Verified, AuditKind::SignedIn].map(|kind| AuditEvent {
            id: AuditEventId::new(),
            tenant_id: tenant,
            at: now(),
            actor_id: Some(user.to_string()),
            subject_id: Some(user.to_string()),
            kind,
            ip: Some("192.0.2.1".into()),
            user_agent: None,
            detail: serde_json::json!({"method": "authenticator"}),
        });
        let hash = session.id.to_string().into_bytes();
        let s = SignInAtOnce {
            user,
            challenge,
            factor: Factor::Totp { step },
            method: Some(Method::Authenticator),
            session: &session,
            session_token_hash: &hash,
            audit: &audit,
            notice: None,
        };
        store.run_blocking(|c| sign_in_at_once::commit(c, &s)).unwrap().0
    }
    pub fn open_challenge(store: &Store, tenant: TenantId, user: UserId) -> ChallengeId {
        let ch = Challenge {
            id: ChallengeId::new(),
            tenant_id: tenant,
            user_id: user,
            purpose: ChallengePurpose::SignIn,
            next: NextAction::Verify,
            methods: MethodSet::from_iter([Method::Authenticator]),
            session_id: None,
            pending_secret: None,
            created_at: now(),
            expires_at: now() + chrono::Duration::minutes(10),
            ended_at: None,
        };
        store.run_blocking(|c| challenges::insert(c, &ch, ch.id.to_string().as_bytes())).unwrap();
        ch.id
    }

    /// Enrolls an authenticator for `user` whose last accepted step is `last_step`.
    pub fn enroll(store: &Store, tenant: TenantId, user: UserId, last_step: i64) {
        let en = Enrollment {
            user_id: user,
            method: Method::Authenticator,
            secret_sealed: Some(vec![1]),
            last_step: Some(last_step),
            created_at: now(),
            last_used_at: None,
        };
        store.run_blocking(|c| enrollments::upsert(c, tenant, &en)).unwrap();
    }
}

/// The one-statement TOTP sign-in on Postgres: every write or none. A refused statement
/// (replayed step, blocked user, ended challenge) leaves the step, the challenge, the
/// counters, the sessions and the audit log as they were; two codes of different steps on
/// one challenge in parallel sign in once. SQLite answers `Unsupported`.
#[test]
fn a_totp_sign_in_commits_every_write_or_none() {
    use latchkey_core::ChallengeId;
    use latchkey_store::repo::audit::{self, AuditFilter};
    use latchkey_store::repo::sign_in_at_once::{self, Factor, SignInAtOnce, SignInOutcome};
    use latchkey_store::repo::{Page, challenges, sessions};
    use totp::{attempt, open_challenge, sample_session};

    fn audit_count(store: &Store, tenant: TenantId) -> usize {
        let page = Page { after: None, limit: 100 };
        store.run_blocking(|c| audit::list(c, tenant, &AuditFilter::default(), page)).unwrap().len()
    }
    fn last_step(store: &Store, user: UserId) -> Option<i64> {
        store.run_blocking(|c| enrollments::for_user(c, user)).unwrap()[0].last_step
    }

    for Scratch { store, .. } in stores() {
        let (tenant, user) = seed(&store);
        totp::enroll(&store, tenant, user, 100);
        let challenge = open_challenge(&store, tenant, user);
        if store.backend() == Backend::Sqlite {
            assert_eq!(attempt(&store, tenant, user, challenge, 101), SignInOutcome::Unsupported);
            continue;
        }
        let failures = OtpLockout { failures: 3, blocked_until: None };
        store.run_blocking(|c| users::set_lockout(c, user, failures)).unwrap();

        // A replayed step: nothing written.
        assert_eq!(attempt(&store, tenant, user, challenge, 100), SignInOutcome::Refused);
        let u = store.run_blocking(|c| users::by_id(c, tenant, user)).unwrap().unwrap();
        assert_eq!((u.lockout.failures, u.preferred), (3, None));
        assert!(store.run_blocking(|c| challenges::by_id(c, challenge)).unwrap().unwrap().ended_at.is_none());
        assert_eq!(audit_count(&store, tenant), 0);

        // A blocked user: nothing written, the step is not used up.
        let blocked = OtpLockout { failures: 0, blocked_until: Some(now() + chrono::Duration::minutes(5)) };
        store.run_blocking(|c| users::set_lockout(c, user, blocked)).unwrap();
        assert_eq!(attempt(&store, tenant, user, challenge, 101), SignInOutcome::Refused);
        assert_eq!(last_step(&store, user), Some(100));
        store.run_blocking(|c| users::set_lockout(c, user, failures)).unwrap();

        // Accepted: the step moves, the challenge ends, the counter clears, the session and
        // both audit events exist.
        assert_eq!(attempt(&store, tenant, user, challenge, 101), SignInOutcome::Committed);
        assert_eq!(last_step(&store, user), Some(101));
        let u = store.run_blocking(|c| users::by_id(c, tenant, user)).unwrap().unwrap();
        assert_eq!((u.lockout, u.preferred), (OtpLockout::default(), Some(Method::Authenticator)));
        assert_eq!(store.run_blocking(|c| challenges::by_id(c, challenge)).unwrap().unwrap().ended_at, Some(now()));
        assert_eq!(audit_count(&store, tenant), 2);

        // The challenge is used up: a later step on it writes nothing.
        assert_eq!(attempt(&store, tenant, user, challenge, 102), SignInOutcome::Refused);
        assert_eq!(last_step(&store, user), Some(101));
        assert_eq!(audit_count(&store, tenant), 2);

        // Parallel codes of different steps on one new challenge: one sign-in.
        for round in 0..5_i64 {
            let challenge = open_challenge(&store, tenant, user);
            let threads: Vec<_> = (0..4_i64)
                .map(|i| {
                    let store = store.clone();
                    std::thread::spawn(move || attempt(&store, tenant, user, challenge, 200 + round * 10 + i))
                })
                .collect();
            let outcomes: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            let committed = outcomes.iter().filter(|o| **o == SignInOutcome::Committed).count();
            assert_eq!(committed, 1, "{outcomes:?}");
        }
        let sessions_left = store.run_blocking(|c| sessions::delete_for_user(c, user, None)).unwrap();
        assert_eq!(sessions_left, 1 + 5);

        // Prepared once per connection (parsed and planned once), not sent as new SQL each time.
        let prepared = store
            .run_blocking(|c| {
                let s = SignInAtOnce {
                    user,
                    challenge: ChallengeId::new(),
                    factor: Factor::Totp { step: 1 },
                    method: Some(Method::Authenticator),
                    session: &sample_session(tenant, user),
                    session_token_hash: b"x",
                    audit: &[],
                    notice: None,
                };
                for _ in 0..3 {
                    assert_eq!(sign_in_at_once::commit(c, &s)?.0, SignInOutcome::Refused);
                }
                prepared_statements(c, "'WITH p AS (SELECT%'")
            })
            .unwrap();
        assert_eq!(prepared, 1);
    }
}

/// How many statements this Postgres connection has prepared whose text is `LIKE` the
/// pattern (an SQL string literal; more `AND statement LIKE …` may follow).
fn prepared_statements(c: &mut DbConn, like: &str) -> Result<i64, StoreError> {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let q = format!("SELECT count(*) AS n FROM pg_prepared_statements WHERE statement LIKE {like}");
    let DbConn::Pg(pg) = c else { unreachable!() };
    Ok(diesel::sql_query(q).get_result::<Count>(pg)?.n)
}

/// Enrolls the passkey `cred-1` (transport `usb`) for `user`, with signature counter `sign_count`.
fn enroll_passkey(store: &Store, tenant: TenantId, user: UserId, sign_count: i64) {
    use latchkey_store::model::WebauthnCredential;
    use latchkey_store::repo::webauthn;
    let cred = WebauthnCredential {
        tenant_id: tenant,
        credential_id: "cred-1".into(),
        user_id: user,
        name: "Passkey 1".into(),
        credential: "{}".into(),
        sign_count,
        transports: vec!["usb".into()],
        backup_eligible: false,
        created_at: now(),
        last_used_at: None,
    };
    let en = Enrollment {
        user_id: user,
        method: Method::Webauthn,
        secret_sealed: None,
        last_step: None,
        created_at: now(),
        last_used_at: None,
    };
    store
        .run_blocking(|c| {
            webauthn::insert(c, &cred)?;
            enrollments::upsert(c, tenant, &en)
        })
        .unwrap();
}

/// One attempt of a one-statement sign-in by `factor`, with two audit events and, when
/// `notice`, a notice mail; the outcome.
fn at_once(
    store: &Store,
    tenant: TenantId,
    user: UserId,
    challenge: latchkey_core::ChallengeId,
    factor: latchkey_store::repo::sign_in_at_once::Factor,
    notice: Option<latchkey_core::DeliveryId>,
) -> latchkey_store::repo::sign_in_at_once::SignInOutcome {
    use latchkey_core::{AuditEventId, AuditKind};
    use latchkey_store::model::AuditEvent;
    use latchkey_store::repo::deliveries::{DeliveryKind, NewMail};
    use latchkey_store::repo::sign_in_at_once::{self, SignInAtOnce};
    let session = totp::sample_session(tenant, user);
    let audit = [AuditKind::RecoveryCodeUsed, AuditKind::SignedIn].map(|kind| AuditEvent {
        id: AuditEventId::new(),
        tenant_id: tenant,
        at: now(),
        actor_id: Some(user.to_string()),
        subject_id: Some(user.to_string()),
        kind,
        ip: None,
        user_agent: None,
        detail: serde_json::json!({}),
    });
    let hash = session.id.to_string().into_bytes();
    let notice = notice.map(|id| NewMail {
        id,
        tenant_id: tenant,
        kind: DeliveryKind::Notice,
        payload: b"sealed",
        expires_at: None,
        lease_until: now(),
        now: now(),
    });
    let s = SignInAtOnce {
        user,
        challenge,
        factor,
        method: None,
        session: &session,
        session_token_hash: &hash,
        audit: &audit,
        notice,
    };
    store.run_blocking(|c| sign_in_at_once::commit(c, &s)).unwrap().0
}

/// The one-statement recovery-code sign-in on Postgres: a code is spent once however many
/// requests race, the statement refuses (writing nothing) a code that is not the user's, and
/// a count of unused codes that is no longer true (another code spent meanwhile, so the
/// audit detail and the notice would be wrong); accepted, it spends the code, ends the
/// challenge, clears the counter, leaves the preferred method, and records the session, the
/// audit events and the notice.
#[test]
fn a_recovery_code_sign_in_commits_every_write_or_none() {
    use latchkey_core::DeliveryId;
    use latchkey_store::repo::deliveries::{self, DeliveryKind};
    use latchkey_store::repo::sign_in_at_once::{Factor, SignInOutcome};
    use latchkey_store::repo::{challenges, recovery_codes, sessions};

    fn code(n: u8) -> [u8; 32] {
        [n; 32]
    }
    fn factor(n: u8, unused: i64) -> Factor {
        Factor::RecoveryCode { code_hashes: vec![code(n).to_vec()], unused }
    }
    for Scratch { store, .. } in stores() {
        let (tenant, user) = seed(&store);
        store.run_blocking(|c| recovery_codes::replace(c, tenant, user, &[code(1), code(2), code(3)], now())).unwrap();
        let remaining = || store.run_blocking(|c| recovery_codes::set_of(c, user)).unwrap().unwrap().remaining;
        let challenge = totp::open_challenge(&store, tenant, user);
        if store.backend() == Backend::Sqlite {
            assert_eq!(at_once(&store, tenant, user, challenge, factor(1, 3), None), SignInOutcome::Unsupported);
            continue;
        }
        let failures = OtpLockout { failures: 3, blocked_until: None };
        store.run_blocking(|c| users::set_lockout(c, user, failures)).unwrap();

        // Not one of the user's codes; the right code with a stale count: nothing written.
        assert_eq!(at_once(&store, tenant, user, challenge, factor(9, 3), None), SignInOutcome::Refused);
        assert_eq!(at_once(&store, tenant, user, challenge, factor(1, 2), None), SignInOutcome::Refused);
        assert_eq!(remaining(), 3);
        let u = store.run_blocking(|c| users::by_id(c, tenant, user)).unwrap().unwrap();
        assert_eq!(u.lockout.failures, 3);
        assert!(store.run_blocking(|c| challenges::by_id(c, challenge)).unwrap().unwrap().ended_at.is_none());

        // Accepted, with its notice.
        let notice = DeliveryId::new();
        assert_eq!(at_once(&store, tenant, user, challenge, factor(1, 3), Some(notice)), SignInOutcome::Committed);
        assert_eq!(remaining(), 2);
        let u = store.run_blocking(|c| users::by_id(c, tenant, user)).unwrap().unwrap();
        assert_eq!((u.lockout, u.preferred), (OtpLockout::default(), None));
        assert_eq!(store.run_blocking(|c| challenges::by_id(c, challenge)).unwrap().unwrap().ended_at, Some(now()));
        let mail = store.run_blocking(|c| deliveries::get(c, notice)).unwrap().unwrap();
        assert_eq!(mail.kind, DeliveryKind::Notice);
        let notices = store.run_blocking(|c| deliveries::of_tenant(c, tenant, DeliveryKind::Notice)).unwrap();
        assert_eq!(notices.len(), 1);

        // A spent code on a new challenge: refused.
        let again = totp::open_challenge(&store, tenant, user);
        assert_eq!(at_once(&store, tenant, user, again, factor(1, 2), None), SignInOutcome::Refused);

        // One code raced on four challenges: one sign-in. Then the two codes left raced: the
        // first spends its code, the other's count is no longer true.
        let race = |codes: [u8; 4], unused: i64| {
            let threads: Vec<_> = codes
                .into_iter()
                .map(|n| {
                    let store = store.clone();
                    std::thread::spawn(move || {
                        let challenge = totp::open_challenge(&store, tenant, user);
                        at_once(&store, tenant, user, challenge, factor(n, unused), None)
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).filter(|o| *o == SignInOutcome::Committed).count()
        };
        assert_eq!(race([2, 2, 2, 2], 2), 1);
        assert_eq!(remaining(), 1);
        store.run_blocking(|c| recovery_codes::replace(c, tenant, user, &[code(4), code(5)], now())).unwrap();
        assert_eq!(race([4, 5, 4, 5], 2), 1);
        assert_eq!(remaining(), 1);
        let sessions = store.run_blocking(|c| sessions::delete_for_user(c, user, None)).unwrap();
        assert_eq!(sessions, 3);
    }
}

/// The one-statement passkey sign-in on Postgres: refused, with nothing written, when the
/// challenge no longer holds the ceremony the assertion was checked against or the
/// credential's counter moved since it was read; accepted, it stores the new counter and
/// record, uses the ceremony up, ends the challenge and marks the enrollment used.
#[test]
fn a_passkey_sign_in_commits_every_write_or_none() {
    use latchkey_store::repo::challenges;
    use latchkey_store::repo::sign_in_at_once::{Factor, SignInOutcome};
    use latchkey_store::repo::webauthn;

    let assertion = |ceremony: &[u8], seen: i64| Factor::Assertion {
        ceremony: ceremony.to_vec(),
        credential_id: "cred-1".into(),
        seen,
        sign_count: seen + 1,
        record: format!("{{\"counter\":{}}}", seen + 1),
    };
    for Scratch { store, .. } in stores() {
        let (tenant, user) = seed(&store);
        enroll_passkey(&store, tenant, user, 5);
        let challenge = totp::open_challenge(&store, tenant, user);
        store.run_blocking(|c| challenges::set_ceremony(c, challenge, b"ceremony-a")).unwrap();
        if store.backend() == Backend::Sqlite {
            let outcome = at_once(&store, tenant, user, challenge, assertion(b"ceremony-a", 5), None);
            assert_eq!(outcome, SignInOutcome::Unsupported);
            continue;
        }
        let stored = || store.run_blocking(|c| webauthn::by_id(c, tenant, "cred-1")).unwrap().unwrap();

        // Another ceremony; a counter that moved: nothing written.
        let outcome = at_once(&store, tenant, user, challenge, assertion(b"ceremony-b", 5), None);
        assert_eq!(outcome, SignInOutcome::Refused);
        let outcome = at_once(&store, tenant, user, challenge, assertion(b"ceremony-a", 4), None);
        assert_eq!(outcome, SignInOutcome::Refused);
        assert_eq!((stored().sign_count, stored().last_used_at), (5, None));
        let ceremony = store.run_blocking(|c| challenges::ceremony_of(c, challenge)).unwrap();
        assert_eq!(ceremony.as_deref(), Some(&b"ceremony-a"[..]));

        // Accepted.
        let outcome = at_once(&store, tenant, user, challenge, assertion(b"ceremony-a", 5), None);
        assert_eq!(outcome, SignInOutcome::Committed);
        assert_eq!((stored().sign_count, stored().credential.as_str()), (6, r#"{"counter":6}"#));
        assert_eq!(stored().last_used_at, Some(now()));
        assert_eq!(store.run_blocking(|c| challenges::ceremony_of(c, challenge)).unwrap(), None);
        assert_eq!(store.run_blocking(|c| challenges::by_id(c, challenge)).unwrap().unwrap().ended_at, Some(now()));
        let en = store.run_blocking(|c| enrollments::for_user(c, user)).unwrap();
        assert_eq!(en[0].last_used_at, Some(now()));

        // The same assertion again: the ceremony is used up.
        let outcome = at_once(&store, tenant, user, challenge, assertion(b"ceremony-a", 6), None);
        assert_eq!(outcome, SignInOutcome::Refused);
    }
}

/// The one-statement TOTP sign-in waits for the user's lock before it touches the challenge,
/// like every other writer of a user's challenges: while another transaction holds the user
/// (here a reset ending the user's challenges), the challenge stays free, the reset
/// completes without a deadlock and the sign-in is then refused with nothing written.
#[test]
fn a_totp_sign_in_locks_the_user_before_the_challenge() {
    use diesel::connection::SimpleConnection;
    use diesel::prelude::*;
    use latchkey_store::repo::challenges;
    use latchkey_store::repo::sign_in_at_once::SignInOutcome;

    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }

    let Some(Scratch { store, _pg, .. }) = stores().into_iter().find(|s| s.store.backend() == Backend::Postgres) else {
        return;
    };
    let (tenant, user) = seed(&store);
    totp::enroll(&store, tenant, user, 100);
    let challenge = totp::open_challenge(&store, tenant, user);

    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let reset = {
        let store = store.clone();
        std::thread::spawn(move || {
            store.run_blocking(|c| {
                write_tx(c, |c| {
                    users::lock(c, user)?;
                    locked_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                    challenges::end_for_user(c, user, None, now())
                })
            })
        })
    };
    locked_rx.recv().unwrap();
    let sign_in = {
        let store = store.clone();
        std::thread::spawn(move || totp::attempt(&store, tenant, user, challenge, 101))
    };
    // Wait (a condition, not a time) until the sign-in statement is blocked on a lock.
    let waiting =
        "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'WITH p AS%'";
    let mut blocked = false;
    for _ in 0..1000 {
        let n = store
            .run_blocking(|c| {
                let DbConn::Pg(pg) = c else { unreachable!() };
                Ok(diesel::sql_query(waiting).get_result::<Count>(pg)?.n)
            })
            .unwrap();
        if n == 1 {
            blocked = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(blocked, "the sign-in statement never waited for the user's lock");
    // The challenge is not held by the waiting statement.
    let free = store.run_blocking(|c| {
        c.batch_execute(&format!("SELECT id FROM challenges WHERE id = '{challenge}' FOR UPDATE NOWAIT"))
            .map_err(StoreError::from)
    });
    assert!(free.is_ok(), "the waiting sign-in holds the challenge: {free:?}");
    release_tx.send(()).unwrap();
    assert_eq!(reset.join().unwrap().unwrap(), 1, "the reset ends the challenge");
    assert_eq!(sign_in.join().unwrap(), SignInOutcome::Refused);
    assert_eq!(store.run_blocking(|c| enrollments::for_user(c, user)).unwrap()[0].last_step, Some(100));
}

#[derive(diesel::QueryableByName)]
struct IndexDef {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    def: String,
}

/// The named (non-constraint) indexes of `table`, with their definitions.
fn indexes(conn: &mut DbConn, table: &str) -> Vec<(String, String)> {
    use diesel::RunQueryDsl;
    let rows: Vec<IndexDef> = match conn {
        DbConn::Pg(pg) => diesel::sql_query(
            "SELECT indexname AS name, indexdef AS def FROM pg_indexes WHERE tablename = $1 \
             AND indexname NOT LIKE '%_pkey' AND indexname NOT LIKE '%_key'",
        )
        .bind::<diesel::sql_types::Text, _>(table)
        .load(pg)
        .unwrap(),
        DbConn::Sqlite(lite) => diesel::sql_query(
            "SELECT name, sql AS def FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
        )
        .bind::<diesel::sql_types::Text, _>(table)
        .load(lite)
        .unwrap(),
    };
    let mut out: Vec<_> = rows.into_iter().map(|r| (r.name, r.def)).collect();
    out.sort();
    out
}

/// Issue 17: ending a challenge must be a HOT update on Postgres, so no index of `challenges`
/// holds `ended_at`; sessions keep only the indexes their queries need (token hash by its
/// unique constraint, user for "end every session", expiry for the purge).
#[test]
fn challenges_and_sessions_keep_only_the_indexes_their_queries_need() {
    for Scratch { store, url, .. } in stores() {
        let (challenge_idx, session_idx) =
            store.run_blocking(|c| Ok((indexes(c, "challenges"), indexes(c, "sessions")))).unwrap();
        assert!(!challenge_idx.is_empty(), "{url}: the challenge indexes are read");
        for (name, def) in &challenge_idx {
            assert!(!def.contains("ended_at"), "{url}: index {name} holds ended_at: {def}");
        }
        let names: Vec<&str> = session_idx.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["sessions_expiry", "sessions_user"], "{url}");
    }
}

/// The challenge read of a TOTP or recovery-code verification brings every enrollment of the
/// user with the open challenge (none, one, two: one joined row each), and nothing once it
/// has ended or for a hash that is not its token's.
#[test]
fn an_open_challenge_is_read_with_its_user_and_every_enrollment() {
    use latchkey_store::repo::challenges;
    for s in stores() {
        let store = &s.store;
        let (tenant, user) = seed(store);
        let ch = totp::open_challenge(store, tenant, user);
        let hash = ch.to_string().into_bytes();
        let read = |h: &[u8]| {
            let h = h.to_vec();
            store.run_blocking(move |c| challenges::open_with_user_and_enrollments_by_token_hash(c, &h, now())).unwrap()
        };
        let (found, who, none) = read(&hash).unwrap();
        assert_eq!((found.id, who.id, none.len()), (ch, user, 0), "{}", s.url);
        totp::enroll(store, tenant, user, 7);
        let email = Enrollment {
            user_id: user,
            method: Method::Email,
            secret_sealed: None,
            last_step: None,
            created_at: now(),
            last_used_at: None,
        };
        store.run_blocking(|c| enrollments::upsert(c, tenant, &email)).unwrap();
        let (_, _, both) = read(&hash).unwrap();
        let mut methods: Vec<(Method, Option<i64>)> = both.iter().map(|e| (e.method, e.last_step)).collect();
        methods.sort_by_key(|(m, _)| m.as_str());
        assert_eq!(methods, vec![(Method::Authenticator, Some(7)), (Method::Email, None)], "{}", s.url);
        assert!(read(b"another token").is_none());
        store.run_blocking(|c| challenges::end(c, ch, now())).unwrap();
        assert!(read(&hash).is_none(), "an ended challenge is not found ({})", s.url);
    }
}

/// The challenge read of a passkey verification brings, with the user and his enrollments,
/// the challenge's ceremony and the user's credential the assertion names (not another id);
/// nothing once the challenge has ended. Prepared once per connection, like every query.
#[test]
fn an_open_challenge_is_read_with_the_assertions_ceremony_and_credential() {
    use latchkey_store::repo::challenges;
    for s in stores() {
        let store = &s.store;
        let (tenant, user) = seed(store);
        let ch = totp::open_challenge(store, tenant, user);
        let hash = ch.to_string().into_bytes();
        let read = |credential: &str| {
            let (h, credential) = (hash.clone(), credential.to_owned());
            store
                .run_blocking(move |c| challenges::open_for_assertion_by_token_hash(c, &h, now(), &credential))
                .unwrap()
        };
        let open = read("cred-1").unwrap();
        assert_eq!((open.challenge.id, open.user.id, open.enrollments.len()), (ch, user, 0), "{}", s.url);
        assert_eq!((open.ceremony, open.credential.is_none()), (None, true));

        enroll_passkey(store, tenant, user, 3);
        store.run_blocking(|c| challenges::set_ceremony(c, ch, b"sealed")).unwrap();
        totp::enroll(store, tenant, user, 7);
        let open = read("cred-1").unwrap();
        assert_eq!(open.enrollments.len(), 2, "{}", s.url);
        assert_eq!(open.ceremony.as_deref(), Some(&b"sealed"[..]));
        let found = open.credential.unwrap();
        assert_eq!(
            (found.credential_id.as_str(), found.sign_count, found.transports),
            ("cred-1", 3, vec!["usb".into()])
        );
        assert!(read("cred-2").unwrap().credential.is_none());
        if store.backend() == Backend::Postgres {
            let prepared = store
                .run_blocking(|c| {
                    for _ in 0..3 {
                        challenges::open_for_assertion_by_token_hash(c, &hash, now(), "cred-1")?;
                    }
                    prepared_statements(c, "'%\"ceremony\"%' AND statement LIKE '%webauthn_credentials%'")
                })
                .unwrap();
            assert_eq!(prepared, 1);
        }
        store.run_blocking(|c| challenges::end(c, ch, now())).unwrap();
        assert!(read("cred-1").is_none(), "an ended challenge is not found ({})", s.url);
    }
}
