//! The hosted sign-in page (issue 17, DESIGN.md 5.7): `GET /ui/{tenant}/sign-in` for existing
//! tenants (`bench-page-{k}`, [`TENANTS`] of them, bulk-loaded, taken round robin), closed loop
//! at `--connections` for `--limit-secs`, each answer 200 with the HTML form. Every request is
//! a first visit (no cookie), so each answer also mints the pre-sign-in binding and its CSRF
//! token, as a browser's first load does. Compared with L2, the bare actix-web hello world.
//!
//! Several tenants, because one tenant may make 2,000 requests per second by default
//! (`LATCHKEY_TENANT_REQUESTS_PER_SECOND`, answered 429 beyond): on one tenant the phase would
//! measure that budget, not the page.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::db::TenantRow;
use crate::http::get;
use crate::service::Process;
use crate::{Bench, BenchResult, expect_status, load, scenario};

/// How many tenants' pages are fetched: enough that their request budgets (2,000/s each by
/// default) stay far above what the page can be served at.
pub const TENANTS: usize = 64;

fn slug(k: usize) -> String {
    format!("bench-page-{k}")
}

/// Bulk-inserts the [`TENANTS`] tenants (2FA off, authenticator and email) when the phase runs.
pub(crate) fn load_tenant(bench: &Bench, conn: &mut diesel::PgConnection, now: i64) -> BenchResult<()> {
    if !bench.opts.runs("page") {
        return Ok(());
    }
    let tenants: Vec<TenantRow> = (0..TENANTS)
        .map(|k| TenantRow { id: uuid::Uuid::now_v7().to_string(), slug: slug(k), two_factor: false, methods: 3 })
        .collect();
    crate::db::insert_tenants(conn, &tenants, now)?;
    Ok(())
}

impl Bench {
    /// The sign-in page under load: requests per second and latency of the 200 HTML answers
    /// (`results.page`: the load outcome, the tenants and the page's size in bytes).
    pub(crate) async fn page(&mut self, svc: &Process) -> BenchResult<()> {
        eprintln!("hosted sign-in page: {} s…", self.opts.limit_secs);
        let host = Self::addr_host(svc);
        let requests: Vec<Vec<u8>> =
            (0..TENANTS).map(|k| get(&host, &format!("/ui/{}/sign-in", slug(k)), None)).collect();
        let size = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = std::sync::Arc::clone(&size);
        let profiler = self.profile("page", svc);
        let deadline = Instant::now() + Duration::from_secs(self.opts.limit_secs);
        let out = load::closed(
            svc.addr,
            self.opts.connections,
            scenario(
                move |i| Some(requests[i % TENANTS].clone()),
                move |_, r| {
                    expect_status(r, 200)?;
                    let head = String::from_utf8_lossy(&r.body[..r.body.len().min(64)]).to_ascii_lowercase();
                    if !head.starts_with("<!doctype html") || !r.body.windows(5).any(|w| w == b"<form") {
                        return Err("not the HTML sign-in form".into());
                    }
                    seen.store(r.body.len(), std::sync::atomic::Ordering::Relaxed);
                    Ok(())
                },
            ),
            Some(deadline),
        )
        .await;
        if let Some(p) = profiler {
            p.stop();
        }
        if out.errors > 0 {
            self.correct = false;
            eprintln!("hosted sign-in page: {} errors: {:?}", out.errors, out.first_error);
        }
        let bytes = size.load(std::sync::atomic::Ordering::Relaxed);
        self.results.insert("page".into(), json!({"tenants": TENANTS, "bytes": bytes, "get": out.json()}));
        Ok(())
    }
}
