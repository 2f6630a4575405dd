//! Webhook deliveries (DESIGN.md 5.6): one `deliveries` row per (audit event, endpoint),
//! delivered by the worker like mail — the row is the record, the job a wake-up call.
//!
//! ```text
//!  claim ──lost──▶ done (another worker holds it, it is finished, or not due yet)
//!   │ won
//!   ▼
//!  endpoint and event still there, endpoint enabled, secret opens? ──no──▶ failed
//!   │
//!   ▼
//!  SSRF guard: URL rules, then the host resolved and every address checked ──refused──▶ failed
//!   │                                              (no address: retried)
//!   ▼
//!  POST to the checked address (no redirects, 10 s for the answer's head)
//!   │ 2xx ──▶ sent (`delivered`)
//!   │ other status, timeout, refused connection ──▶ `retried`: backoff (initial, doubling,
//!   │                                              capped), or `failed` after max attempts
//!   └── the retry is due within a sweep interval: wait here, holding the row; later: the sweep
//! ```
//!
//! Each attempt carries the Standard Webhooks headers: `webhook-id` (the delivery's id, the
//! same on every attempt), `webhook-timestamp` (Unix seconds of the attempt) and
//! `webhook-signature` (`v1,` + base64 HMAC-SHA256 of `id.timestamp.body`, keyed with the
//! endpoint's current secret). The body is `{id, type, timestamp, tenant, data}`, built from
//! the audit event, so it is the same on every attempt.
//!
//! **HTTP client.** awc (actix's client, already in the tree, rustls with the webpki roots)
//! is not `Send`, and job handlers must be: it runs on a thread of its own with a
//! single-threaded actix runtime, and jobs hand it requests over a channel. Every attempt
//! gets a fresh client, so its connection goes to the address that was checked for it —
//! never a pooled connection, never a name resolved again behind the guard's back (DNS
//! rebinding). The answer's body is never read: a slow, huge or garbled answer changes only
//! that delivery's record.

use std::net::SocketAddr;
use std::time::Duration;

use latchkey_core::webhook::{self, UrlPolicy};
use latchkey_store::repo::deliveries::{Attempt, Delivery, DeliveryState};
use latchkey_store::repo::webhooks::{self as repo, secret_aad};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::WebhookConfig;
use crate::deliver::{Deliverer, Outcome, backoff};

/// The `User-Agent` of deliveries.
const USER_AGENT: &str = concat!("Latchkey-Webhooks/", env!("CARGO_PKG_VERSION"));

/// One HTTP attempt for the client thread.
struct HttpRequest {
    /// The checked address to connect to.
    addr: SocketAddr,
    /// The endpoint's URL (its host names the `Host` header and the TLS server name).
    url: String,
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    headers: [(&'static str, String); 3],
    body: Vec<u8>,
    timeout: Duration,
    reply: oneshot::Sender<Result<u16, String>>,
}

/// The handle of the HTTP client thread; the thread ends when the handle is dropped.
struct HttpClient {
    tx: Option<mpsc::UnboundedSender<HttpRequest>>,
}

impl HttpClient {
    fn start() -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<HttpRequest>();
        let spawned = std::thread::Builder::new().name("latchkey-webhooks".into()).spawn(move || {
            let rt = match actix_rt::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the webhook HTTP client");
                    return;
                }
            };
            rt.block_on(async move {
                while let Some(req) = rx.recv().await {
                    actix_rt::spawn(post(req));
                }
            });
        });
        match spawned {
            Ok(_) => Self { tx: Some(tx) },
            Err(e) => {
                tracing::error!(error = %e, "cannot start the webhook HTTP client thread");
                Self { tx: None }
            }
        }
    }

    /// Sends one attempt: the HTTP status, or why there is none.
    async fn send(&self, mut req: HttpRequest) -> Result<u16, String> {
        let (reply, answer) = oneshot::channel();
        req.reply = reply;
        let Some(tx) = &self.tx else { return Err("the webhook HTTP client is not running".into()) };
        tx.send(req).map_err(|_| "the webhook HTTP client has stopped".to_owned())?;
        answer.await.map_err(|_| "the webhook HTTP client failed".to_owned())?
    }
}

/// Makes one attempt on the client thread.
async fn post(req: HttpRequest) {
    let connector = awc::Connector::new().timeout(req.timeout).handshake_timeout(req.timeout).limit(1);
    let client = awc::Client::builder()
        .connector(connector)
        .disable_redirects()
        .timeout(req.timeout)
        .add_default_header((awc::http::header::USER_AGENT, USER_AGENT))
        .finish();
    let mut r =
        client.post(&req.url).address(req.addr).insert_header((awc::http::header::CONTENT_TYPE, "application/json"));
    for (name, value) in &req.headers {
        r = r.insert_header((*name, value.as_str()));
    }
    let answer = match r.send_body(req.body).await {
        Ok(response) => Ok(response.status().as_u16()),
        Err(e) => Err(describe(&e)),
    };
    let _ = req.reply.send(answer);
}

/// A transport error as the delivery record shows it (no secret is ever in it: the request
/// carries only the URL the admin gave and the signature's headers, which are not quoted).
fn describe(e: &awc::error::SendRequestError) -> String {
    use awc::error::SendRequestError as E;
    match e {
        E::Timeout => "timed out".to_owned(),
        E::Connect(c) => format!("cannot connect: {c}"),
        E::Send(io) => format!("cannot send: {io}"),
        E::Response(p) => format!("invalid answer: {p}"),
        other => other.to_string(),
    }
}

/// What one attempt came to.
enum Step {
    /// 2xx.
    Delivered(i32),
    /// Never worth retrying: refused by the guard, the endpoint gone or disabled.
    Permanent(Attempt),
    /// A status other than 2xx, a timeout, a refused connection, no address.
    Retry(Attempt),
}

fn error(why: impl Into<String>) -> Attempt {
    Attempt { status: None, error: Some(why.into()) }
}

/// Sends webhook deliveries.
pub(crate) struct Webhooks {
    config: WebhookConfig,
    http: HttpClient,
}

impl Webhooks {
    pub(crate) fn new(config: &WebhookConfig) -> Self {
        Self { config: config.clone(), http: HttpClient::start() }
    }

    fn count(d: &Deliverer, outcome: &str) {
        d.metrics.webhook_deliveries.with_label_values(&[outcome]).inc();
    }

    /// Delivers a webhook row (see the module doc).
    pub(crate) async fn deliver(&self, d: &Deliverer, row: Delivery, stop: &mut watch::Receiver<bool>) -> Outcome {
        let id = row.id;
        let max = i32::try_from(self.config.max_attempts).unwrap_or(i32::MAX);
        let mut held = false;
        let mut attempts = row.attempts;
        loop {
            let now = d.clock.now();
            match d.claim(id, now, held).await {
                Ok(true) => attempts += 1,
                Ok(false) => {
                    tracing::debug!(delivery = %id, "webhook delivery held elsewhere, finished or not due");
                    return Outcome::AlreadyHandled;
                }
                Err(e) => {
                    tracing::warn!(delivery = %id, error = %e, "cannot claim the webhook delivery; the sweep will retry it");
                    return Outcome::AlreadyHandled;
                }
            }
            let failure = match self.attempt(d, &row).await {
                Step::Delivered(status) => {
                    d.finish(id, DeliveryState::Sent, Attempt { status: Some(status), error: None }).await;
                    Self::count(d, "delivered");
                    tracing::info!(delivery = %id, status, attempts, "webhook delivered");
                    return Outcome::Sent;
                }
                Step::Permanent(attempt) => {
                    tracing::warn!(delivery = %id, error = ?attempt.error, "webhook delivery refused for good");
                    d.finish(id, DeliveryState::Failed, attempt).await;
                    Self::count(d, "failed");
                    return Outcome::Failed("webhook delivery refused");
                }
                Step::Retry(attempt) => attempt,
            };
            if attempts >= max {
                tracing::warn!(delivery = %id, attempts, error = ?failure.error, status = ?failure.status, "webhook delivery out of attempts: failed");
                d.finish(id, DeliveryState::Failed, failure).await;
                Self::count(d, "failed");
                return Outcome::Failed("webhook delivery out of attempts");
            }
            Self::count(d, "retried");
            let delay = backoff(self.config.retry_initial, self.config.retry_max, attempts);
            tracing::info!(delivery = %id, attempts, error = ?failure.error, status = ?failure.status, retry_in_ms = delay.as_millis(), "webhook attempt failed; will retry");
            let Some(wait) = d.reschedule(id, delay, failure).await else { return Outcome::Deferred };
            if !d.wait(id, wait, stop).await {
                return Outcome::Interrupted;
            }
            held = true;
        }
    }

    /// One attempt of a claimed row.
    async fn attempt(&self, d: &Deliverer, row: &Delivery) -> Step {
        let r = row.clone();
        let target = match d.store.run(move |c| repo::target(c, &r)).await {
            Ok(Some(t)) => t,
            Ok(None) => return Step::Permanent(error("the endpoint or the event no longer exists")),
            Err(e) => return Step::Retry(error(format!("cannot read the delivery: {e}"))),
        };
        let (hook, tenant, event) = target;
        if !hook.enabled {
            return Step::Permanent(error("the endpoint is disabled"));
        }
        let Ok(secret) = d.keys.open(&hook.secret_sealed, &secret_aad(hook.id)) else {
            return Step::Permanent(error("the endpoint's secret cannot be opened with the server key"));
        };
        let addr = match checked_address(&hook.url, self.config.policy).await {
            Ok(addr) => addr,
            Err(step) => return step,
        };
        let body = json!({
            "id": event.id.to_string(),
            "type": event.kind.as_str(),
            "timestamp": event.at,
            "tenant": tenant,
            "data": event.api_json(),
        });
        let body = match serde_json::to_vec(&body) {
            Ok(b) => b,
            Err(e) => return Step::Permanent(error(format!("cannot encode the event: {e}"))),
        };
        let msg_id = row.id.to_string();
        let timestamp = d.clock.now().timestamp();
        let signature = webhook::sign(&secret, &msg_id, timestamp, &body);
        drop(secret);
        let (reply, _) = oneshot::channel();
        let req = HttpRequest {
            addr,
            url: hook.url.clone(),
            headers: [
                ("webhook-id", msg_id),
                ("webhook-timestamp", timestamp.to_string()),
                ("webhook-signature", signature),
            ],
            body,
            timeout: self.config.timeout,
            reply,
        };
        match self.http.send(req).await {
            Ok(status) if (200..300).contains(&status) => Step::Delivered(i32::from(status)),
            Ok(status) => Step::Retry(Attempt {
                status: Some(i32::from(status)),
                error: Some(format!("the endpoint answered {status}")),
            }),
            Err(e) => Step::Retry(error(e)),
        }
    }
}

/// The SSRF guard at delivery time: the URL's rules, then the host resolved now and every
/// address checked; the address to connect to.
///
/// Errors: `Permanent` for a refused URL or a forbidden address, `Retry` for a host that does
/// not resolve (DNS may be down).
async fn checked_address(url: &str, policy: UrlPolicy) -> Result<SocketAddr, Step> {
    let target = webhook::check_url(url, policy).map_err(|r| Step::Permanent(error(r.0)))?;
    let addrs = latchkey_tenant::resolve_webhook_host(&target).await.map_err(|r| Step::Retry(error(r.0)))?;
    webhook::check_addresses(&addrs, policy).map_err(|r| Step::Permanent(error(r.0)))?;
    let ip = addrs.first().copied().ok_or_else(|| Step::Retry(error("the host does not resolve")))?;
    Ok(SocketAddr::new(ip, target.port))
}
