//! The mail worker: an apalis worker over the [`MailQueue`] whose handler is the
//! [`Deliverer`](crate::deliver), supervised so that a backend failure (Redis gone, SQLite
//! locked) restarts it instead of ending mail delivery, and stopped gracefully on shutdown.
//!
//! **Runtime.** Everything runs on the caller's tokio runtime, which may be current-thread:
//! job handlers are driven inside the worker future itself (no `parallelize`), apalis' timers
//! are `futures-timer` (its own thread), diesel work goes to `spawn_blocking`, sqlx-sqlite has
//! its own connection threads, and the Redis and SMTP connections are tokio tasks. So
//! `latchkey serve` can simply `tokio::spawn` (or `actix_rt::spawn`) [`run_worker`] from its
//! `#[actix_web::main]` system — actix-rt *is* tokio, and the future is `Send`. Create the
//! [`MailQueue`] on that same (main) system runtime: the Redis connection's driver task lives
//! on the runtime that opened it.
//!
//! **Shutdown.** When the `shutdown` future resolves, the worker fetches no more jobs, jobs
//! waiting between two SMTP attempts give up at once and go back to the queue as retryable,
//! a send in progress is allowed to finish, and the backend records the results; all within
//! `shutdown_timeout`, after which what is still running is abandoned (the backend re-queues
//! it once this worker's heartbeat is 60 s old). Jobs not yet fetched simply stay queued.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::{
    AbortError, BackendExt, BoxDynError, Data, Event, PollSnapshot, PollStrategy, WorkerBuilder, WorkerBuilderExt,
    WorkerContext, WorkerError,
};
use futures::future::{Fuse, FusedFuture, FutureExt};
use futures::{Stream, StreamExt};
use latchkey_core::metrics::Metrics;
use latchkey_core::{Clock, DeliveryId, Keys};
use latchkey_store::Store;
use latchkey_tenant::outbox::DeliveryJob;
use serde_json::Value;
use tokio::sync::watch;

use crate::config::MailConfig;
use crate::deliver::{Deliverer, Outcome};
use crate::error::MailError;
use crate::queue::{MailQueue, Storage};

/// What every job handler of one worker instance shares.
#[derive(Clone)]
struct JobState {
    deliverer: Arc<Deliverer>,
    /// Turns `true` when the instance stops: interrupts waits between attempts.
    stop: watch::Receiver<bool>,
}

/// The apalis handler: decodes the job and delivers its row.
///
/// `Ok` whenever the row is the record of what is left to do (sent, dropped, handled
/// elsewhere, deferred to the sweep, released at shutdown); an [`AbortError`] for permanent
/// failures and undecodable jobs (the backend kills the job: no retry).
async fn handle_job(job: Value, state: Data<JobState>) -> Result<(), BoxDynError> {
    let job: DeliveryJob = match serde_json::from_value(job) {
        Ok(job) => job,
        Err(e) => {
            // Only the position and category: the error text could quote the job.
            tracing::error!(category = ?e.classify(), line = e.line(), column = e.column(), "undecodable email job: killed");
            return Err(Box::new(AbortError::new("undecodable email job")));
        }
    };
    let mut stop = state.stop.clone();
    // A panic ends this job, not the worker. (apalis' `catch_panic()` layer would do the
    // same, but its handler's fn-pointer type makes the worker future not provably `Send`.)
    let delivery = std::panic::AssertUnwindSafe(state.deliverer.deliver(job.delivery_id, &mut stop)).catch_unwind();
    match delivery.await {
        Ok(Outcome::Sent | Outcome::Dropped | Outcome::AlreadyHandled | Outcome::Deferred | Outcome::Interrupted) => {
            Ok(())
        }
        Ok(Outcome::Failed(reason)) => Err(Box::new(AbortError::new(reason))),
        Err(_) => {
            tracing::error!("email job panicked: killed");
            Err(Box::new(AbortError::new("the email job panicked")))
        }
    }
}

/// How one worker instance ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Shutdown was asked for.
    Shutdown,
    /// The backend failed (or the stream ended by itself): restart.
    Failed,
}

/// A worker name unique to this process and instance: apalis refuses to register a name
/// seen alive recently, and a restarted worker must not be taken for its predecessor.
fn worker_name(instance: u32) -> String {
    let random = DeliveryId::new().0.simple().to_string();
    let tail = random.get(random.len().saturating_sub(10)..).unwrap_or(&random);
    format!("latchkey-mail-{}-{instance}-{tail}", std::process::id())
}

/// The pause before restarting a worker instance that failed; doubles while instances fail
/// at once (the backend is down), up to 30 s.
const RESTART_FIRST: Duration = Duration::from_millis(250);
/// An instance that ran this long was healthy: its failure restarts after [`RESTART_FIRST`].
const RESTART_HEALTHY: Duration = Duration::from_secs(1);

/// Runs the mail worker until `shutdown` resolves, then stops gracefully (see the module
/// doc) and returns.
///
/// Backend failures are logged and the worker restarted after a pause (250 ms, doubling up
/// to 30 s while instances fail at once; back to 250 ms after an instance ran for a second);
/// they never end this function. Alongside, the sweep queues every delivery that is due and
/// not in flight, every `sweep_interval` ([`sweep`]); the `email_queue_depth` gauge
/// is refreshed every 10 s; finished jobs and finished deliveries are purged every hour.
///
/// Errors (at start only): an invalid `From` address or SMTP URL, or an outbox directory
/// that cannot be created.
pub async fn run_worker<F>(
    queue: MailQueue,
    store: Store,
    keys: Keys,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
    config: MailConfig,
    shutdown: F,
) -> Result<(), MailError>
where
    F: Future<Output = ()> + Send,
{
    let deliverer = Arc::new(Deliverer::new(store.clone(), keys, metrics.clone(), Arc::clone(&clock), &config)?);
    tracing::info!(queue = queue.backend_name(), transport = ?deliverer, concurrency = config.concurrency, "mail worker starting");
    let mut shutdown = pin!(shutdown.fuse());
    let background = futures::future::join(
        housekeeping(queue.clone(), store.clone(), metrics, Arc::clone(&clock)),
        sweep(queue.clone(), store, clock, config.sweep_interval, config.requeue),
    );
    let mut housekeeping = pin!(background.fuse());
    let mut restart_delay = RESTART_FIRST;
    let mut instance = 0u32;
    loop {
        instance = instance.wrapping_add(1);
        let name = worker_name(instance);
        let started = std::time::Instant::now();
        let end = {
            let mut run = pin!(run_instance(&queue, &deliverer, &config, &name, shutdown.as_mut()).fuse());
            futures::select_biased! {
                end = run => end,
                _ = housekeeping => End::Failed, // never ends
            }
        };
        if end == End::Shutdown || shutdown.is_terminated() {
            tracing::info!("mail worker stopped");
            return Ok(());
        }
        if started.elapsed() >= RESTART_HEALTHY {
            // It had been running fine: a fresh failure (a flushed queue drops the worker's
            // registration, and owed codes must not wait out a long pause).
            restart_delay = RESTART_FIRST;
        }
        tracing::warn!(worker = %name, restart_in_ms = restart_delay.as_millis(), "mail worker instance ended; restarting");
        tokio::select! {
            () = tokio::time::sleep(restart_delay) => {}
            () = &mut shutdown => {
                tracing::info!("mail worker stopped");
                return Ok(());
            }
        }
        restart_delay = (restart_delay * 2).min(Duration::from_secs(30));
    }
}

/// Refreshes the queue depth gauge every 10 s; every hour, purges finished jobs from the queue
/// and finished mail deliveries, both older than a day (far beyond any job's lifetime: a copy
/// of a job arriving later finds no delivery and stops, never sends), and webhook deliveries
/// older than their history's retention. Never ends.
async fn housekeeping(queue: MailQueue, store: Store, metrics: Metrics, clock: Arc<dyn Clock>) {
    const RETENTION: Duration = Duration::from_secs(86_400);
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u64;
    loop {
        tick.tick().await;
        match queue.depth().await {
            Ok(depth) => metrics.email_queue_depth.set(depth),
            Err(e) => tracing::debug!(error = %e, "cannot read the mail queue depth"),
        }
        if ticks % 360 == 359 {
            match queue.vacuum(RETENTION).await {
                Ok(n) => tracing::debug!(purged = n, "finished email jobs purged"),
                Err(e) => tracing::warn!(error = %e, "cannot purge finished email jobs"),
            }
            let now = clock.now();
            let (mail, hooks) = (
                now - chrono::Duration::days(1),
                now - chrono::Duration::days(latchkey_tenant::service::WEBHOOK_HISTORY_DAYS),
            );
            // In batches, as the service's housekeeping does (`Service::purge`).
            let mut purged = 0usize;
            loop {
                match store
                    .run(move |c| latchkey_store::repo::deliveries::purge_before(c, mail, hooks, PURGE_BATCH))
                    .await
                {
                    Ok(n) => {
                        purged += n;
                        if i64::try_from(n).unwrap_or(i64::MAX) < PURGE_BATCH {
                            tracing::debug!(purged, "finished deliveries purged");
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot purge finished deliveries");
                        break;
                    }
                }
            }
        }
        ticks = ticks.wrapping_add(1);
    }
}

/// Most finished deliveries one purge statement of the worker deletes (it goes on while
/// there are more).
const PURGE_BATCH: i64 = 5000;

/// Most deliveries one sweep takes at once (it goes on at once while there are more).
const SWEEP_BATCH: i64 = 500;

/// The sweep (DESIGN.md 5.8): every `interval`, takes the deliveries that are due and not in
/// flight — recorded by a transaction and never queued, lost by the queue, left for a retry,
/// or claimed by a worker that died — leases them for `requeue` and queues them. Sweeps of
/// several processes share the work (`FOR UPDATE SKIP LOCKED` on Postgres; SQLite has one
/// writer). A failed push is retried by a later sweep once the lease has run out. Never ends.
pub(crate) async fn sweep(
    queue: MailQueue,
    store: Store,
    clock: Arc<dyn Clock>,
    interval: Duration,
    requeue: Duration,
) {
    let requeue = chrono::Duration::from_std(requeue).unwrap_or(chrono::Duration::seconds(3));
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        loop {
            let now = clock.now();
            let due =
                store.write(move |c| latchkey_store::repo::deliveries::take_due(c, now, requeue, SWEEP_BATCH)).await;
            let ids = match due {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::warn!(error = %e, "the delivery sweep cannot read the deliveries");
                    break;
                }
            };
            let full = i64::try_from(ids.len()).unwrap_or(i64::MAX) >= SWEEP_BATCH;
            if !ids.is_empty() {
                tracing::debug!(count = ids.len(), "sweep: deliveries queued");
            }
            for id in ids {
                if let Err(e) = queue.push(DeliveryJob { delivery_id: id }).await {
                    tracing::warn!(delivery = %id, error = %e, "the sweep cannot queue a delivery; a later sweep will");
                }
            }
            if !full {
                break;
            }
        }
    }
}

/// Builds one apalis worker over `queue` and drives it until it ends.
async fn run_instance<F>(
    queue: &MailQueue,
    deliverer: &Arc<Deliverer>,
    config: &MailConfig,
    name: &str,
    shutdown: Pin<&mut Fuse<F>>,
) -> End
where
    F: Future<Output = ()>,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = JobState { deliverer: Arc::clone(deliverer), stop: stop_rx };
    let ctx = WorkerContext::new(name);
    // The two backends have different types, hence the two arms; the rest is shared.
    match &queue.storage {
        Storage::Sqlite { storage, .. } => {
            let worker = WorkerBuilder::new(&ctx)
                .backend(storage.clone().poll_with_strategy(Tick::new(config.poll_interval)))
                .data(state)
                .concurrency(config.concurrency)
                .build(handle_job);
            drive(worker.stream(), &ctx, &stop_tx, shutdown, config.shutdown_timeout).await
        }
        Storage::Redis { storage, .. } => {
            let worker = WorkerBuilder::new(&ctx)
                .backend(storage.clone().poll_with_strategy(Tick::new(config.poll_interval)))
                .data(state)
                .concurrency(config.concurrency)
                .build(handle_job);
            drive(worker.stream(), &ctx, &stop_tx, shutdown, config.shutdown_timeout).await
        }
    }
}

/// Polls the worker's event stream until it ends; on shutdown or backend error, stops the
/// worker gracefully with `grace` as the deadline.
async fn drive<S, F>(
    stream: S,
    ctx: &WorkerContext,
    stop_tx: &watch::Sender<bool>,
    mut shutdown: Pin<&mut Fuse<F>>,
    grace: Duration,
) -> End
where
    S: Stream<Item = Result<Event, WorkerError>>,
    F: Future<Output = ()>,
{
    let mut stream = pin!(stream);
    let mut stopping: Option<End> = None;
    let deadline = tokio::time::sleep(Duration::from_secs(86_400 * 365));
    let mut deadline = pin!(deadline);
    let start_stopping = || {
        stop_tx.send_replace(true);
        // Fails only when the worker has not started yet: then there is nothing to drain.
        ctx.stop().is_ok()
    };
    loop {
        tokio::select! {
            // A panic inside apalis ends this instance (the supervisor starts a new one), not
            // the process.
            event = std::panic::AssertUnwindSafe(stream.next()).catch_unwind() => match event {
                Ok(None) => break,
                Ok(Some(Ok(Event::Error(e)))) => tracing::debug!(error = %e, "email job ended with an error"),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => {
                    tracing::error!(worker = ctx.name(), error = %e, "mail queue backend error");
                    // Once stopping, an error comes from closing the backend: polling it again
                    // would resume a finished future, so leave now.
                    if stopping.is_some() || !start_stopping() {
                        stopping.get_or_insert(End::Failed);
                        break;
                    }
                    stopping = Some(End::Failed);
                    deadline.as_mut().reset(tokio::time::Instant::now() + grace);
                }
                Err(_) => {
                    tracing::error!(worker = ctx.name(), "the mail worker panicked");
                    stopping.get_or_insert(End::Failed);
                    break;
                }
            },
            () = &mut shutdown, if !shutdown.is_terminated() => {
                tracing::info!(worker = ctx.name(), "mail worker shutting down");
                let was_stopping = stopping.is_some();
                stopping = Some(End::Shutdown);
                if !start_stopping() {
                    break;
                }
                if !was_stopping {
                    deadline.as_mut().reset(tokio::time::Instant::now() + grace);
                }
            }
            () = &mut deadline, if stopping.is_some() => {
                tracing::warn!(worker = ctx.name(), "in-flight email jobs did not finish in time: abandoned (the queue retries them)");
                break;
            }
        }
    }
    if shutdown.is_terminated() { End::Shutdown } else { stopping.unwrap_or(End::Failed) }
}

/// Wakes the worker every `interval` so that it looks for new jobs.
///
/// apalis' own `IntervalStrategy` replaces its timer when it fires without polling the new
/// one, so no wake-up is armed: after an empty fetch the worker then sleeps until its next
/// heartbeat (seconds), and a short-lived code can expire in the queue. This one arms the
/// next timer at once.
struct Tick {
    interval: Duration,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Tick {
    fn new(interval: Duration) -> Self {
        Self { interval: interval.max(Duration::from_millis(1)), timer: None }
    }
}

impl PollStrategy for Tick {
    fn poll_drive(&mut self, cx: &mut std::task::Context<'_>, _: &PollSnapshot) -> std::task::Poll<Option<()>> {
        let interval = self.interval;
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(interval)));
        match timer.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => {
                let mut next = Box::pin(tokio::time::sleep(interval));
                // Register the waker with the next timer now (it is pending).
                let _ = next.as_mut().poll(cx);
                self.timer = Some(next);
                std::task::Poll::Ready(Some(()))
            }
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}
