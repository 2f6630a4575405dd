//! The sweep (DESIGN.md 5.8, queue loss): deliveries the queue never had or lost are sent
//! once; deliveries in flight are not doubled; expired codes are dropped. On every store
//! backend of the run (SQLite; Postgres with `LATCHKEY_TEST_DATABASE_URL`) and every queue
//! (embedded; Redis with `LATCHKEY_TEST_REDIS_URL`), with the manual clock.

use super::*;

/// The queues of a run for `w`: the embedded one, and Redis (a namespace of its own) when
/// configured. The second value names the Redis namespace to drop afterwards.
async fn queues(w: &World, test: &str) -> Vec<(MailQueue, Option<(String, String)>)> {
    let mut v = vec![(w.sqlite_queue().await, None)];
    if let Some(url) = redis_url() {
        let ns = namespace(test);
        let q = MailQueue::open_redis(&url, &ns).await.expect("LATCHKEY_TEST_REDIS_URL is set: Redis must answer");
        v.push((q, Some((url, ns))));
    }
    v
}

async fn cleanup(redis: Option<(String, String)>) {
    if let Some((url, ns)) = redis {
        drop_namespace(&url, &ns).await;
    }
}

/// A notice recorded as `Service::notify` does: sealed, due now, not queued.
fn notice_delivery(w: &World) -> DeliveryId {
    let now = w.clock.now();
    let id = DeliveryId::new();
    let payload = MailPayload::Notice(latchkey_tenant::outbox::NoticeMail {
        to: "agent@example.com".into(),
        recipient_name: "Agent".into(),
        tenant_name: "Acme Support".into(),
        tenant_slug: "acme".into(),
        at: now,
        ip: Some("198.51.100.7".into()),
        user_agent: None,
        what: latchkey_tenant::outbox::NoticeEvent::PasswordChanged,
    });
    let sealed = seal_payload(&w.keys, id, &payload).unwrap();
    let tenant = w.tenant;
    w.store
        .run_blocking(move |c| {
            deliveries::insert_mail(
                c,
                &NewMail {
                    id,
                    tenant_id: tenant,
                    kind: DeliveryKind::Notice,
                    payload: &sealed,
                    expires_at: None,
                    lease_until: now,
                    now,
                },
            )
        })
        .unwrap();
    id
}

#[tokio::test]
async fn a_notice_recorded_by_a_transaction_is_sent_by_the_sweep() {
    for backend in backends() {
        let w = World::on(backend, "Acme Support");
        let all = queues(&w, "notice").await;
        let runs = all.len();
        for (queue, redis) in all {
            let server = SmtpServer::start().await;
            let id = notice_delivery(&w);
            let running = w.start(&queue, smtp(&server));
            wait_for("the notice", || server.messages().len() == 1).await;
            let m = parse(&server.messages()[0]);
            assert_eq!(m.header("Subject"), Some("Acme Support: your password was changed"), "{backend:?}");
            assert!(m.part("text/plain").contains("198.51.100.7"));
            assert!(m.part("text/html").contains("198.51.100.7"));
            wait_for("the count", || w.delivery(id).0 == DeliveryState::Sent).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(server.messages().len(), 1, "exactly once ({backend:?})");
            running.stop().await;
            cleanup(redis).await;
        }
        assert_eq!(w.jobs("notice", "sent"), u64::try_from(runs).unwrap());
    }
}

#[tokio::test]
async fn a_delivery_whose_job_vanished_is_sent_once() {
    for backend in backends() {
        let w = World::on(backend, "Acme");
        for (queue, redis) in queues(&w, "vanished").await {
            let server = SmtpServer::start().await;
            // Recorded and pushed, but the queue lost the job (flushed): nothing in it.
            let lost = w.otp_job("Acme", "357913", 300);
            // Recorded and still queued: the sweep may push it again; it must go out once.
            let kept = w.otp_job("Acme", "468024", 300);
            queue.enqueue(kept).await.unwrap();
            let running = w.start(&queue, smtp(&server));
            wait_for("the queued code", || server.messages().len() == 1).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(server.messages().len(), 1, "the lost one is in flight until its lease runs out");
            w.clock.advance_secs(2);
            wait_for("the lost code", || server.messages().len() == 2).await;
            tokio::time::sleep(Duration::from_millis(400)).await;
            let codes: Vec<Vec<String>> =
                server.messages().iter().map(|m| six_digit_runs(parse(m).part("text/plain"))).collect();
            assert_eq!(codes, vec![vec!["468024".to_owned()], vec!["357913".to_owned()]], "{backend:?}");
            assert_eq!(w.delivery(lost.delivery_id), (DeliveryState::Sent, 1));
            assert_eq!(w.delivery(kept.delivery_id), (DeliveryState::Sent, 1));
            running.stop().await;
            cleanup(redis).await;
        }
    }
}

#[tokio::test]
async fn a_delivery_in_flight_is_not_doubled() {
    for backend in backends() {
        let w = World::on(backend, "Acme");
        for (queue, redis) in queues(&w, "inflight").await {
            let server = SmtpServer::start().await;
            let job = w.otp_job("Acme", "579135", 300);
            let id = job.delivery_id;
            // Another worker claimed it and is sending (its claim's lease is 60 s).
            let now = w.clock.now();
            assert!(
                w.store.run_blocking(move |c| deliveries::claim(c, id, now, chrono::Duration::seconds(60))).unwrap()
            );
            let running = w.start(&queue, smtp(&server));
            w.clock.advance_secs(5); // past the queue lease, within the claim's
            tokio::time::sleep(Duration::from_millis(400)).await;
            assert!(server.messages().is_empty(), "a claimed delivery is left to its worker ({backend:?})");
            assert_eq!(w.delivery(id), (DeliveryState::Sending, 1));
            // That worker died: once its lease has run out, the sweep hands it to another.
            w.clock.advance_secs(60);
            wait_for("the taken-over code", || server.messages().len() == 1).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(server.messages().len(), 1);
            assert_eq!(w.delivery(id), (DeliveryState::Sent, 2));
            running.stop().await;
            cleanup(redis).await;
        }
    }
}

#[tokio::test]
async fn an_expired_code_found_by_the_sweep_is_dropped() {
    for backend in backends() {
        let w = World::on(backend, "Acme");
        for (queue, redis) in queues(&w, "expired").await {
            let server = SmtpServer::start().await;
            let dropped_before = w.jobs("otp", "dropped_expired");
            let job = w.otp_job("Acme", "680246", 5);
            let running = w.start(&queue, smtp(&server));
            w.clock.advance_secs(10); // the queue lost it; the sweep finds it after its expiry
            wait_for("the drop", || w.jobs("otp", "dropped_expired") == dropped_before + 1).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(server.messages().is_empty(), "never a code after its expiry ({backend:?})");
            assert_eq!(w.delivery(job.delivery_id).0, DeliveryState::Dropped);
            running.stop().await;
            cleanup(redis).await;
        }
    }
}

#[tokio::test]
async fn sweeps_of_two_processes_share_the_work_without_doubling_it() {
    for backend in backends() {
        let w = World::on(backend, "Acme");
        let server = SmtpServer::start().await;
        let ids: Vec<DeliveryId> =
            (0..20).map(|i| w.otp_job("Acme", &format!("{:06}", 200_000 + i), 300).delivery_id).collect();
        w.clock.advance_secs(2);
        let now = w.clock.now();
        let requeue = chrono::Duration::seconds(3);
        // Two sweeps at the same instant (two processes): each delivery is taken once.
        let (a, b) = tokio::join!(
            w.store.write(move |c| deliveries::take_due(c, now, requeue, 500)),
            w.store.write(move |c| deliveries::take_due(c, now, requeue, 500)),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.len() + b.len(), ids.len(), "{backend:?}");
        assert!(a.iter().all(|id| !b.contains(id)));
        // Taken deliveries are in flight: a third sweep finds nothing.
        assert!(w.store.write(move |c| deliveries::take_due(c, now, requeue, 500)).await.unwrap().is_empty());
        drop(server);
    }
}
