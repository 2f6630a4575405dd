//! Webhook fan-out (issue 17): audit events at a fixed rate, each delivered by the service's
//! worker to a local receiver ([`crate::receiver`]); measured: event → receiver latency, and
//! deliveries lost, doubled or badly signed.
//!
//! Setup (not measured): `--webhook-rate × --webhook-secs` agents with an authenticator are
//! bulk-loaded over `--verify-tenants` tenants `bench-webhook-{k}` with 2FA on (as the TOTP
//! phase loads its users), with one admin per tenant and a session of his whose second factor
//! is fresh (so creating a webhook passes the step-up while 2FA is on). Each admin registers
//! one endpoint through the API, `POST /api/v1/webhooks {url: http://127.0.0.1:PORT/hook/{k},
//! events: ["signed_in"]}`, and its `whsec_` secret is kept; every agent signs in with his
//! password (closed loop) and keeps his challenge.
//!
//! Measured: the agents complete their sign-ins with a TOTP code, `POST
//! /api/v1/auth/2fa/verify`, in an open loop at `--webhook-rate` per second; request `i`
//! leaves at `start + i / rate`. Each completed sign-in writes one `signed_in` audit event,
//! hence one delivery to its tenant's endpoint. The receiver answers `204` at once and records
//! the arrival; a delivery is mapped back to its request by the event's `subject_id` (the
//! user), and its latency is arrival − the request's scheduled instant (so it includes the
//! verify request itself). After the last request the phase waits for the stragglers (at most
//! 60 s), then 3 s more for duplicates. Counted: delivered (distinct events), lost (successful
//! verifications with no delivery), duplicated (a second delivery of an event, whatever its
//! `webhook-id`), redelivered ids (a `webhook-id` seen twice), bad signatures (the Standard
//! Webhooks signature does not verify with the endpoint's secret, or its timestamp is more than
//! 5 minutes off), unexpected (a delivery of no request of this phase). Every one of these but
//! `delivered` is a correctness error.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use latchkey_core::SecretToken;
use latchkey_core::crypto::TokenPurpose;
use latchkey_core::totp::TotpSecret;
use serde_json::{Value, json};

use crate::db::{self, UserRow};
use crate::http::{Conn, get};
use crate::receiver::{Arrival, Receiver, secret_bytes, signature_holds};
use crate::service::Process;
use crate::{Bench, BenchResult, expect_session, expect_status, load, scenario, stats, totp_verify_request};

/// Longest wait for deliveries still owed after the last request.
const STRAGGLERS: Duration = Duration::from_secs(60);
/// How long to go on listening once every delivery is in, to catch duplicates.
const DUPLICATES: Duration = Duration::from_secs(3);
/// Largest difference between `webhook-timestamp` and the receiver's clock (Standard
/// Webhooks' tolerance), in seconds.
const TIMESTAMP_TOLERANCE_S: i64 = 300;

/// The users of the webhook phase: per agent his id, sign-in body and TOTP secret; per tenant
/// the bearer token of its admin's session (second factor fresh).
#[derive(Default)]
pub struct WebhookUsers {
    ids: Vec<String>,
    signin: Vec<String>,
    secrets: Vec<TotpSecret>,
    admin_tokens: Vec<String>,
}

/// A `POST` of a JSON body with a bearer token.
fn post_json_bearer(host: &str, path: &str, body: &str, token: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: latchkey-bench\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The receiver's path of tenant `k`'s endpoint.
fn hook_path(k: usize) -> String {
    format!("/hook/{k}")
}

/// What the deliveries came to.
#[derive(Debug, Default)]
struct Tally {
    /// Per request, the arrival of its event's first delivery.
    first: Vec<Option<Instant>>,
    duplicated: usize,
    redelivered_ids: usize,
    bad_signatures: usize,
    unexpected: usize,
    first_error: Option<String>,
}

impl Tally {
    fn error(slot: &mut usize, first: &mut Option<String>, why: String) {
        *slot += 1;
        if first.is_none() {
            *first = Some(why);
        }
    }

    /// Sorts `arrivals` out: `keys` are the endpoints' secret bytes by tenant index, `index`
    /// maps a user id to his request, `now_s` is the receiver's Unix time (seconds).
    fn of(arrivals: &[Arrival], keys: &[Vec<u8>], index: &HashMap<&str, usize>, requests: usize, now_s: i64) -> Self {
        let mut t = Tally { first: vec![None; requests], ..Tally::default() };
        let mut ids = HashSet::new();
        for a in arrivals {
            let key = a.path.strip_prefix("/hook/").and_then(|k| k.parse::<usize>().ok()).and_then(|k| keys.get(k));
            let (Some(key), Some(id), Some(ts), Some(sig)) = (key, &a.id, &a.timestamp, &a.signature) else {
                Tally::error(&mut t.bad_signatures, &mut t.first_error, format!("unsigned delivery to {}", a.path));
                continue;
            };
            let fresh = ts.parse::<i64>().is_ok_and(|ts| (ts - now_s).abs() <= TIMESTAMP_TOLERANCE_S);
            if !fresh || !signature_holds(key, id, ts, &a.body, sig) {
                Tally::error(&mut t.bad_signatures, &mut t.first_error, format!("bad signature on delivery {id}"));
                continue;
            }
            if !ids.insert(id.as_str()) {
                t.redelivered_ids += 1;
            }
            let body: Value = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
            let user = body["data"]["subject_id"].as_str();
            match user.and_then(|u| index.get(u)).copied() {
                Some(i) if body["type"] == "signed_in" => match &mut t.first[i] {
                    Some(_) => t.duplicated += 1,
                    slot @ None => *slot = Some(a.at),
                },
                _ => Tally::error(
                    &mut t.unexpected,
                    &mut t.first_error,
                    format!("unexpected delivery: type {} user {user:?}", body["type"]),
                ),
            }
        }
        t
    }
}

impl Bench {
    /// The requests of the webhook phase: `--webhook-rate × --webhook-secs`.
    fn webhook_count(&self) -> usize {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
        let n = (self.opts.webhook_rate * self.opts.webhook_secs as f64).round() as usize;
        n.max(1)
    }

    /// Bulk-loads the webhook phase's agents (as the TOTP phase's, tenants
    /// `bench-webhook-{k}`), one admin per tenant and his session, valid for a day, whose
    /// second factor was presented now (the step-up of webhook creation).
    pub(crate) fn load_webhook_users(
        &self,
        conn: &mut diesel::PgConnection,
        hash: &str,
        now: i64,
    ) -> BenchResult<WebhookUsers> {
        if !self.opts.runs("webhooks") {
            return Ok(WebhookUsers::default());
        }
        let mut out = WebhookUsers::default();
        let mut tenants: Vec<String> = Vec::new();
        for (id, tenant_id, body, secret) in
            self.load_authenticator_users(conn, "webhook", self.webhook_count(), hash, now)?
        {
            if !tenants.contains(&tenant_id) {
                tenants.push(tenant_id);
            }
            out.ids.push(id);
            out.signin.push(body);
            out.secrets.push(secret);
        }
        let admins: Vec<UserRow> = tenants
            .iter()
            .enumerate()
            .map(|(k, t)| UserRow {
                id: uuid::Uuid::now_v7().to_string(),
                tenant_id: t.clone(),
                email: format!("admin{k}@webhook.bench.test"),
                role: "admin",
            })
            .collect();
        db::insert_users(conn, &admins, hash, now)?;
        out.admin_tokens = admins.iter().map(|_| SecretToken::generate().expose().to_owned()).collect();
        db::insert_rows(
            conn,
            "sessions",
            "id, token_hash, tenant_id, user_id, created_at, expires_at, second_factor_at",
            admins.iter().zip(&out.admin_tokens).map(|(a, token)| {
                format!(
                    "({}, {}, {}, {}, {now}, {}, {now})",
                    db::text(&uuid::Uuid::now_v7().to_string()),
                    db::bytea(&self.keys.token_hash(TokenPurpose::Session, token)),
                    db::text(&a.tenant_id),
                    db::text(&a.id),
                    now + 86_400_000
                )
            }),
        )?;
        Ok(out)
    }

    /// Registers one endpoint per tenant on `receiver` through the API: the secrets' key
    /// bytes, by tenant index.
    async fn register_webhooks(
        &self,
        svc: &Process,
        receiver: &Receiver,
        tokens: &[String],
    ) -> BenchResult<Vec<Vec<u8>>> {
        let host = Self::addr_host(svc);
        let mut c = Conn::connect(svc.addr).await?;
        let mut keys = Vec::with_capacity(tokens.len());
        for (k, token) in tokens.iter().enumerate() {
            let url = format!("http://{}{}", receiver.addr, hook_path(k));
            let body = json!({"url": url, "events": ["signed_in"], "description": "latchkey-bench"}).to_string();
            let r = c.send(&post_json_bearer(&host, "/api/v1/webhooks", &body, token)).await?;
            expect_status(&r, 201).map_err(|e| format!("webhook creation: {} {e}", r.status))?;
            let secret = r.json()["secret"].as_str().map(str::to_owned).ok_or("webhook creation: no secret")?;
            keys.push(secret_bytes(&secret).ok_or("webhook creation: the secret is not whsec_ + base64")?);
        }
        Ok(keys)
    }

    /// The webhook fan-out phase (see the module doc): results under `webhooks`.
    pub(crate) async fn webhooks(&mut self, svc: &Process, users: WebhookUsers) -> BenchResult<()> {
        let rate = self.opts.webhook_rate;
        let receiver = Receiver::start().await?;
        let keys = self.register_webhooks(svc, &receiver, &users.admin_tokens).await?;
        eprintln!("webhooks: {} endpoints; {} users sign in…", keys.len(), users.signin.len());
        let (signed, tokens) = self.collect_challenges(svc, users.signin).await;
        let ready: Vec<usize> = (0..tokens.len()).filter(|&i| tokens[i].get().is_some()).collect();
        // Request i is user ready[i]: the map from a delivery's user to its request.
        let index: HashMap<&str, usize> = ready.iter().enumerate().map(|(i, &u)| (users.ids[u].as_str(), i)).collect();
        // The worker's queue is shared with mail: the notices of earlier phases (the recovery
        // codes used, which their answers no longer wait for) go out first.
        self.drain_notices().await;
        eprintln!("webhooks: {} verifications at {rate}/s…", ready.len());
        // Deliveries of anything before (none are expected: the endpoints take only `signed_in`).
        let before = receiver.take();
        let host = Self::addr_host(svc);
        let secrets = Arc::new(users.secrets);
        let requests = ready.len();
        let order = Arc::new(ready);
        let verify = scenario(
            move |i| {
                let user = *order.get(i)?;
                let token = tokens[user].get()?;
                Some(totp_verify_request(&host, token, &secrets[user]))
            },
            |_, r| expect_session(r),
        );
        let profiler = self.profile("webhooks", svc);
        let (sent, start) = load::open(svc.addr, rate, requests, verify).await;
        let waiting = Instant::now();
        while receiver.count() < sent.ok && waiting.elapsed() < STRAGGLERS {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let waited_s = waiting.elapsed().as_secs_f64();
        tokio::time::sleep(DUPLICATES).await;
        if let Some(p) = profiler {
            p.stop();
        }
        let arrivals = receiver.take();
        let now_s = crate::unix_ms() / 1000;
        let mut tally = Tally::of(&arrivals, &keys, &index, requests, now_s);
        if !before.is_empty() {
            tally.unexpected += before.len();
        }
        let delivered = tally.first.iter().filter(|f| f.is_some()).count();
        let lost = sent.ok.saturating_sub(delivered);
        #[allow(clippy::cast_precision_loss)]
        let latencies: Vec<Duration> = tally
            .first
            .iter()
            .enumerate()
            .filter_map(|(i, at)| {
                let scheduled = start + Duration::from_secs_f64(i as f64 / rate);
                at.map(|at| at.saturating_duration_since(scheduled))
            })
            .collect();
        let latency = stats::summarize(latencies);
        let first_delivery_ms =
            tally.first.iter().flatten().min().map(|at| at.saturating_duration_since(start).as_secs_f64() * 1000.0);
        let metrics = self.delivery_metrics(svc).await;
        let malformed = receiver.malformed();
        let broken =
            lost + tally.duplicated + tally.redelivered_ids + tally.bad_signatures + tally.unexpected + malformed;
        if broken > 0 || sent.errors > 0 || signed.errors > 0 {
            self.correct = false;
            eprintln!(
                "webhooks: lost {lost}, duplicated {}, redelivered ids {}, bad signatures {}, unexpected {}, malformed {malformed} ({:?}); verify errors {} ({:?}), sign-in errors {} ({:?})",
                tally.duplicated,
                tally.redelivered_ids,
                tally.bad_signatures,
                tally.unexpected,
                tally.first_error,
                sent.errors,
                sent.first_error,
                signed.errors,
                signed.first_error
            );
        }
        self.results.insert(
            "webhooks".into(),
            json!({
                "rate": rate,
                "secs": self.opts.webhook_secs,
                "endpoints": keys.len(),
                "signin_setup": signed.json(),
                "verify": sent.json(),
                "event_to_receiver": latency.json(),
                "first_delivery_ms": first_delivery_ms.map(stats::round3),
                "waited_for_stragglers_s": stats::round3(waited_s),
                "expected": sent.ok,
                "received": arrivals.len(),
                "delivered": delivered,
                "lost": lost,
                "duplicated": tally.duplicated,
                "redelivered_ids": tally.redelivered_ids,
                "bad_signatures": tally.bad_signatures,
                "unexpected": tally.unexpected,
                "malformed": malformed,
                "first_error": tally.first_error,
                "service_deliveries": metrics,
            }),
        );
        Ok(())
    }

    /// The service's `latchkey_webhook_deliveries_total` by outcome (`Null` when `/metrics`
    /// cannot be read).
    async fn delivery_metrics(&self, svc: &Process) -> Value {
        let Ok(mut c) = Conn::connect(svc.addr).await else { return Value::Null };
        let Ok(r) = c.send(&get(&Self::addr_host(svc), "/metrics", None)).await else { return Value::Null };
        let text = String::from_utf8_lossy(&r.body);
        let outcome =
            |o: &str| crate::service::metric(&text, &format!("latchkey_webhook_deliveries_total{{outcome=\"{o}\"}}"));
        json!({"delivered": outcome("delivered"), "retried": outcome("retried"), "failed": outcome("failed")})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(path: &str, id: &str, ts: i64, body: &str, key: &[u8]) -> Arrival {
        use base64::Engine as _;
        use hmac::{KeyInit as _, Mac as _};
        let mut mac = <hmac::Hmac<sha2::Sha256>>::new_from_slice(key).unwrap();
        mac.update(format!("{id}.{ts}.{body}").as_bytes());
        let sig = format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()));
        Arrival {
            at: Instant::now(),
            path: path.into(),
            id: Some(id.into()),
            timestamp: Some(ts.to_string()),
            signature: Some(sig),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn deliveries_are_sorted_out() {
        let keys = vec![b"key zero".to_vec(), b"key one".to_vec()];
        let index: HashMap<&str, usize> = [("u0", 0), ("u1", 1), ("u2", 2)].into_iter().collect();
        let ev = |user: &str| format!(r#"{{"type":"signed_in","data":{{"subject_id":"{user}"}}}}"#);
        let now = 1_700_000_000;
        let arrivals = vec![
            arrival("/hook/0", "d0", now, &ev("u0"), &keys[0]),
            arrival("/hook/1", "d1", now, &ev("u1"), &keys[1]),
            // The same delivery again, and another delivery of the same event.
            arrival("/hook/1", "d1", now, &ev("u1"), &keys[1]),
            arrival("/hook/0", "d9", now, &ev("u0"), &keys[0]),
            // Signed with another endpoint's key; too old; a stranger.
            arrival("/hook/0", "d2", now, &ev("u2"), &keys[1]),
            arrival("/hook/1", "d3", now - 301, &ev("u2"), &keys[1]),
            arrival("/hook/1", "d4", now, &ev("nobody"), &keys[1]),
        ];
        let t = Tally::of(&arrivals, &keys, &index, 3, now);
        assert!(t.first[0].is_some() && t.first[1].is_some() && t.first[2].is_none());
        assert_eq!((t.duplicated, t.redelivered_ids, t.bad_signatures, t.unexpected), (2, 1, 2, 1));
    }
}
