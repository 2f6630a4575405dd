//! The hosted sign-in page (issue 17, DESIGN.md 5.7): `GET /ui/{tenant}/sign-in` for one
//! existing tenant ([`SLUG`], bulk-loaded), closed loop at `--connections` for
//! `--limit-secs`, each answer 200 with the HTML form. Every request is a first visit (no
//! cookie), so each answer also mints the pre-sign-in binding and its CSRF token, as a
//! browser's first load does. Compared with L2, the bare actix-web hello world.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::db::TenantRow;
use crate::http::get;
use crate::service::Process;
use crate::{Bench, BenchResult, expect_status, load, scenario};

/// The slug of the tenant whose page is fetched.
pub const SLUG: &str = "bench-page";

/// Bulk-inserts the tenant [`SLUG`] (2FA off, authenticator and email) when the phase runs.
pub(crate) fn load_tenant(bench: &Bench, conn: &mut diesel::PgConnection, now: i64) -> BenchResult<()> {
    if !bench.opts.runs("page") {
        return Ok(());
    }
    let tenant = TenantRow { id: uuid::Uuid::now_v7().to_string(), slug: SLUG.into(), two_factor: false, methods: 3 };
    crate::db::insert_tenants(conn, std::slice::from_ref(&tenant), now)?;
    Ok(())
}

impl Bench {
    /// The sign-in page under load: requests per second and latency of the 200 HTML answers
    /// (`results.page`: the load outcome and the page's size in bytes).
    pub(crate) async fn page(&mut self, svc: &Process) -> BenchResult<()> {
        eprintln!("hosted sign-in page: {} s…", self.opts.limit_secs);
        let host = Self::addr_host(svc);
        let req = get(&host, &format!("/ui/{SLUG}/sign-in"), None);
        let size = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = std::sync::Arc::clone(&size);
        let profiler = self.profile("page", svc);
        let deadline = Instant::now() + Duration::from_secs(self.opts.limit_secs);
        let out = load::closed(
            svc.addr,
            self.opts.connections,
            scenario(
                move |_| Some(req.clone()),
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
        self.results.insert("page".into(), json!({"tenant": SLUG, "bytes": bytes, "get": out.json()}));
        Ok(())
    }
}
