//! The load generator: a closed loop over a fixed number of keep-alive connections (each
//! sends its next request as soon as the previous answer arrived), and an open loop at a
//! fixed rate (each request leaves at its scheduled instant whatever the previous ones are
//! doing, and its latency is counted from that instant, so a stalled server cannot hide its
//! stall by slowing the client down — no coordinated omission).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::http::{Conn, Response};
use crate::stats::{Summary, summarize};

/// Longest idle time of a pooled connection of the open loop (actix-web closes idle
/// keep-alive connections after 5 s).
pub const MAX_IDLE: Duration = Duration::from_secs(2);

/// What to send, and what counts as a success.
pub trait Scenario: Send + Sync + 'static {
    /// The `i`-th request, built when it is sent (so time-dependent content, such as a TOTP
    /// code, is current); `None` once there is nothing left to send.
    fn request(&self, i: usize) -> Option<Vec<u8>>;
    /// Checks the answer to the `i`-th request (and may keep what it carries).
    ///
    /// Errors: why the answer is not the expected one.
    fn check(&self, i: usize, response: &Response) -> Result<(), String>;
}

/// What a run measured.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Latency of every answered request (successful or not).
    pub latencies: Vec<Duration>,
    /// Requests whose answer passed the check.
    pub ok: usize,
    /// Requests that failed: wrong answer, or no answer (connection error).
    pub errors: usize,
    /// Answers by status code.
    pub statuses: BTreeMap<u16, usize>,
    /// From the first request to the last answer.
    pub elapsed: Duration,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
}

impl Outcome {
    fn merge(&mut self, other: Outcome) {
        self.latencies.extend(other.latencies);
        self.ok += other.ok;
        self.errors += other.errors;
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn error(&mut self, e: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }

    fn answered(&mut self, latency: Duration, status: u16, checked: Result<(), String>) {
        self.latencies.push(latency);
        *self.statuses.entry(status).or_default() += 1;
        match checked {
            Ok(()) => self.ok += 1,
            Err(e) => self.error(format!("status {status}: {e}")),
        }
    }

    /// Successful requests per second.
    pub fn rate(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let ok = self.ok as f64;
        ok / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The latency summary.
    pub fn summary(&self) -> Summary {
        summarize(self.latencies.clone())
    }

    /// As a JSON object.
    pub fn json(&self) -> Value {
        let statuses: serde_json::Map<String, Value> =
            self.statuses.iter().map(|(s, n)| (s.to_string(), json!(n))).collect();
        json!({
            "ok": self.ok,
            "errors": self.errors,
            "per_second": crate::stats::round3(self.rate()),
            "elapsed_s": crate::stats::round3(self.elapsed.as_secs_f64()),
            "latency": self.summary().json(),
            "statuses": statuses,
            "first_error": self.first_error,
        })
    }
}

/// Runs `scenario` in a closed loop over `connections` connections until it has nothing left
/// to send or `deadline` passes.
pub async fn closed(
    addr: SocketAddr,
    connections: usize,
    scenario: Arc<dyn Scenario>,
    deadline: Option<Instant>,
) -> Outcome {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections.max(1) {
        let next = Arc::clone(&next);
        let scenario = Arc::clone(&scenario);
        tasks.spawn(async move {
            let mut local = Outcome::default();
            let mut conn: Option<Conn> = None;
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(request) = scenario.request(i) else { break };
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match Conn::connect(addr).await {
                        Ok(c) => conn.insert(c),
                        Err(e) => {
                            local.error(format!("connect: {e}"));
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                let t0 = Instant::now();
                match c.send(&request).await {
                    Ok(response) => {
                        local.answered(t0.elapsed(), response.status, scenario.check(i, &response));
                        if c.is_closed() {
                            conn = None;
                        }
                    }
                    Err(e) => {
                        local.error(format!("request: {e}"));
                        conn = None;
                    }
                }
            }
            local
        });
    }
    let mut total = Outcome::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(local) => total.merge(local),
            Err(e) => total.error(format!("load task: {e}")),
        }
    }
    total.elapsed = started.elapsed();
    total
}

/// Sends `count` requests of `scenario` at `rate` per second, whatever the server does, over
/// a pool of connections (opened as needed). Latency is counted from each request's scheduled
/// instant `start + i / rate`; `start` is returned with the outcome.
///
/// A connection idle in the pool for more than [`MAX_IDLE`] is closed rather than reused: the
/// server may be closing it at that moment (keep-alive timeout), and a request lost in that
/// race would count as an error of the server.
pub async fn open(addr: SocketAddr, rate: f64, count: usize, scenario: Arc<dyn Scenario>) -> (Outcome, Instant) {
    let pool: Arc<Mutex<Vec<(Conn, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let results = Arc::new(Mutex::new(Outcome::default()));
    let start = Instant::now() + Duration::from_millis(20);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        #[allow(clippy::cast_precision_loss)]
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        let (pool, results, scenario) = (Arc::clone(&pool), Arc::clone(&results), Arc::clone(&scenario));
        tasks.spawn(async move {
            let Some(request) = scenario.request(i) else { return };
            let pooled = {
                let mut pool = pool.lock().unwrap_or_else(PoisonError::into_inner);
                pool.retain(|(_, idle_since)| idle_since.elapsed() < MAX_IDLE);
                pool.pop()
            };
            let mut conn = match pooled {
                Some((c, _)) => c,
                None => match Conn::connect(addr).await {
                    Ok(c) => c,
                    Err(e) => {
                        results.lock().unwrap_or_else(PoisonError::into_inner).error(format!("connect: {e}"));
                        return;
                    }
                },
            };
            let answer = conn.send(&request).await;
            let latency = at.elapsed();
            match answer {
                Ok(response) => {
                    let checked = scenario.check(i, &response);
                    results.lock().unwrap_or_else(PoisonError::into_inner).answered(latency, response.status, checked);
                    if !conn.is_closed() {
                        pool.lock().unwrap_or_else(PoisonError::into_inner).push((conn, Instant::now()));
                    }
                }
                Err(e) => results.lock().unwrap_or_else(PoisonError::into_inner).error(format!("request: {e}")),
            }
        });
        // Reap finished tasks as we go, so a long run does not keep them all.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let mut outcome = std::mem::take(&mut *results.lock().unwrap_or_else(PoisonError::into_inner));
    outcome.elapsed = start.elapsed();
    (outcome, start)
}
