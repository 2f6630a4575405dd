//! `latchkey-bench`: runs Latchkey in Postgres + Redis mode on this machine and measures it
//! against the machine's own limits, side by side in one run (issue 7; `docs/performance.md`).
//!
//! ```text
//! cargo run --release -p latchkey-bench [-- --help]
//! ```
//!
//! One run: builds `latchkey` (release), creates its own Postgres database and Redis key
//! namespace, starts an SMTP sink and the service, then measures
//! 1. the limits: L1 pgbench (one-row conditional `UPDATE` per transaction), L2 a bare
//!    actix-web hello-world under the same load generator and connection count, L3 argon2id
//!    verifications per second on every core;
//! 2. TOTP verify: thousands of users bulk-loaded into the database, each signing in and
//!    verifying once in the current time step with a correct code;
//! 3. password sign-in at full CPU, and the latency of `/healthz` meanwhile;
//! 4. email OTP sends at a fixed rate into the SMTP sink: the `202` and the time to the
//!    server's acceptance, with lost and duplicated messages counted;
//! 5. tenant actors: resident memory per idle actor after touching many tenants, and the cost
//!    of starting one;
//! 6. scale (`scale.rs`): sign-in and verify on small tables, then on a million users, ten
//!    million audit events and a million sessions bulk-loaded; the audit log's first page and
//!    page 100; the purge of expired rows during 1,000 verifications per second, its lock waits;
//! 7. webhook fan-out: TOTP sign-ins at a fixed rate, each `signed_in` event delivered to a
//!    local receiver: event → receiver latency, lost, doubled, badly signed (`webhooks.rs`);
//! 8. passkey verify: users enrolled (through the API) with a software ES256 authenticator
//!    verify a sign-in once each with an assertion (`passkey.rs`);
//! 9. the hosted sign-in page `GET /ui/{tenant}/sign-in` under full load (`page.rs`);
//!
//! then prints a table with the ratios and targets and writes the figures as JSON to
//! `target/bench/`. The load generator is this crate's own (`load.rs`): a closed loop over a
//! fixed number of keep-alive connections, or an open loop at a fixed rate.

mod db;
mod http;
mod limits;
mod load;
mod page;
mod passkey;
mod receiver;
mod report;
mod scale;
mod service;
mod smtp;
mod stats;
mod webhooks;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use latchkey_core::crypto::TokenPurpose;
use latchkey_core::password::{PasswordHasher, PasswordParams};
use latchkey_core::totp::TotpSecret;
use latchkey_core::{Keys, SecretToken, ServerKey};
use serde_json::{Value, json};

use crate::db::{EnrollmentRow, Scratch, SessionRow, TenantRow, UserRow};
use crate::http::{Response, get, post_json};
use crate::load::Scenario;
use crate::service::{LatchkeyEnv, Process};

/// Errors of the harness (all fatal: the run stops and cleans up).
pub type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The password of every benchmark user.
const PASSWORD: &str = "benchmark password 1";

const HELP: &str = "latchkey-bench: measures Latchkey (Postgres + Redis) against this machine's limits.

usage: cargo run --release -p latchkey-bench -- [options]

  --postgres URL        server to create the scratch database on [postgres://postgres@127.0.0.1:5432]
  --redis URL           Redis for the queue (own key namespace)   [redis://127.0.0.1:6379/0]
  --connections N       load generator connections (service and L2) [16]
  --http-workers N      HTTP worker threads of the service and of L2 [cores]
  --limit-secs S        duration of L1 and L2                       [10]
  --argon2-secs S       duration of L3                              [6]
  --verify-users N      enrolled users of the TOTP phase            [20000]
  --verify-tenants N    tenants they are spread over                [8]
  --recovery-users N    users of the recovery-code phase (one code each) [5000]
  --passkey-users N     users of the passkey phase (one ES256 passkey each) [5000]
  --signin-secs S       duration of the sign-in phase               [20]
  --signin-users N      users signing in, round robin               [512]
  --probe-rate R        /healthz requests per second meanwhile      [50]
  --email-rate R        email sends per second                      [200]
  --email-secs S        duration of the email phase                 [30]
  --webhook-rate R      sign-ins (webhook events) per second        [500]
  --webhook-secs S      duration of the webhook phase               [10]
  --tenants N           tenants touched in the actor phase          [100000]
  --scale-users N       scale phase: bulk-loaded users              [1000000]
  --scale-tenants N     scale phase: tenants they are spread over   [10000]
  --scale-audit N       scale phase: bulk-loaded audit events       [10000000]
  --scale-sessions N    scale phase: bulk-loaded open sessions      [1000000]
  --scale-expired N     scale phase: expired sessions (and challenges) to purge [1000000]
  --scale-probe-users N scale phase: users whose sign-in and verify are measured [20000]
  --scale-purge-rate R  scale phase: verifications per second during the purge [1000]
  --scale-purge-secs S  scale phase: duration of that open loop     [20]
  --scale-audit-requests N  scale phase: requests of audit page 1, and of page 100 [500]
  --phases LIST         comma-separated subset of l1,l2,l3,verify,signin,email,recovery,
                        webhooks,passkey,page,actors,scale [all]
  --rust-log FILTER     RUST_LOG of the service                     [info]
  --env KEY=VALUE       an extra variable for the service (repeatable), e.g. LATCHKEY_DB_POOL_SIZE=8
  --profile PHASE       record `perf` (system-wide) during that phase into target/bench/
  --profile-service     with --profile: only the service, with DWARF call graphs
  --no-build            use the latchkey binary already built next to this one
  --latchkey PATH       use this latchkey binary (no build), e.g. an older build for an A/B run
  --keep                keep the scratch database and Redis keys
";

/// The options.
#[derive(Debug, Clone)]
struct Opts {
    postgres: String,
    redis: String,
    connections: usize,
    http_workers: usize,
    limit_secs: u64,
    argon2_secs: u64,
    verify_users: usize,
    verify_tenants: usize,
    recovery_users: usize,
    passkey_users: usize,
    signin_secs: u64,
    signin_users: usize,
    probe_rate: f64,
    email_rate: f64,
    email_secs: u64,
    webhook_rate: f64,
    webhook_secs: u64,
    tenants: usize,
    scale: scale::Sizes,
    phases: Vec<String>,
    rust_log: String,
    env: Vec<(String, String)>,
    profile: Option<String>,
    profile_service: bool,
    build: bool,
    latchkey: Option<PathBuf>,
    keep: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            postgres: "postgres://postgres@127.0.0.1:5432".into(),
            redis: "redis://127.0.0.1:6379/0".into(),
            connections: 16,
            http_workers: cores(),
            limit_secs: 10,
            argon2_secs: 6,
            verify_users: 20_000,
            verify_tenants: 8,
            recovery_users: 5_000,
            passkey_users: 5_000,
            signin_secs: 20,
            signin_users: 512,
            probe_rate: 50.0,
            email_rate: 200.0,
            email_secs: 30,
            webhook_rate: 500.0,
            webhook_secs: 10,
            tenants: 100_000,
            scale: scale::Sizes::default(),
            phases: [
                "l1", "l2", "l3", "verify", "signin", "email", "recovery", "webhooks", "passkey", "page", "actors",
                "scale",
            ]
            .map(String::from)
            .to_vec(),
            rust_log: "info".into(),
            env: Vec::new(),
            profile: None,
            profile_service: false,
            build: true,
            latchkey: None,
            keep: false,
        }
    }
}

impl Opts {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut o = Opts::default();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().cloned().ok_or_else(|| format!("{flag} needs a value"));
            fn num<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String> {
                v.parse().map_err(|_| format!("{flag}: `{v}` is not a number"))
            }
            match flag.as_str() {
                "--postgres" => o.postgres = value()?,
                "--redis" => o.redis = value()?,
                "--connections" => o.connections = num(flag, value()?)?,
                "--http-workers" => o.http_workers = num(flag, value()?)?,
                "--limit-secs" => o.limit_secs = num(flag, value()?)?,
                "--argon2-secs" => o.argon2_secs = num(flag, value()?)?,
                "--verify-users" => o.verify_users = num(flag, value()?)?,
                "--verify-tenants" => o.verify_tenants = num::<usize>(flag, value()?)?.max(1),
                "--recovery-users" => o.recovery_users = num::<usize>(flag, value()?)?.max(1),
                "--passkey-users" => o.passkey_users = num::<usize>(flag, value()?)?.max(1),
                "--signin-secs" => o.signin_secs = num(flag, value()?)?,
                "--signin-users" => o.signin_users = num::<usize>(flag, value()?)?.max(1),
                "--probe-rate" => o.probe_rate = num(flag, value()?)?,
                "--email-rate" => o.email_rate = num(flag, value()?)?,
                "--email-secs" => o.email_secs = num(flag, value()?)?,
                "--webhook-rate" => o.webhook_rate = num::<f64>(flag, value()?)?.max(1.0),
                "--webhook-secs" => o.webhook_secs = num(flag, value()?)?,
                "--tenants" => o.tenants = num::<usize>(flag, value()?)?.max(2),
                f if f.starts_with("--scale-") => o.scale.set(f, &value()?)?,
                "--phases" => o.phases = value()?.split(',').map(|s| s.trim().to_owned()).collect(),
                "--rust-log" => o.rust_log = value()?,
                "--env" => {
                    let kv = value()?;
                    let (k, v) = kv.split_once('=').ok_or_else(|| format!("--env {kv}: expected KEY=VALUE"))?;
                    o.env.push((k.to_owned(), v.to_owned()));
                }
                "--profile" => o.profile = Some(value()?),
                "--profile-service" => o.profile_service = true,
                "--no-build" => o.build = false,
                "--latchkey" => {
                    o.latchkey = Some(PathBuf::from(value()?));
                    o.build = false;
                }
                "--keep" => o.keep = true,
                other => return Err(format!("unknown option {other}\n\n{HELP}")),
            }
        }
        Ok(o)
    }

    fn runs(&self, phase: &str) -> bool {
        self.phases.iter().any(|p| p == phase)
    }

    fn json(&self) -> Value {
        json!({
            "connections": self.connections,
            "http_workers": self.http_workers,
            "limit_secs": self.limit_secs,
            "argon2_secs": self.argon2_secs,
            "verify_users": self.verify_users,
            "verify_tenants": self.verify_tenants,
            "recovery_users": self.recovery_users,
            "passkey_users": self.passkey_users,
            "signin_secs": self.signin_secs,
            "signin_users": self.signin_users,
            "probe_rate": self.probe_rate,
            "email_rate": self.email_rate,
            "email_secs": self.email_secs,
            "webhook_rate": self.webhook_rate,
            "webhook_secs": self.webhook_secs,
            "tenants": self.tenants,
            "scale": self.scale.json(),
            "phases": self.phases,
            "rust_log": self.rust_log,
            "latchkey": self.latchkey.as_ref().map(|p| p.display().to_string()),
            "env": self.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        })
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn current_step() -> i64 {
    unix_ms().div_euclid(30_000)
}

/// A [`Scenario`] from two closures.
struct FnScenario<R, C> {
    request: R,
    check: C,
}

impl<R, C> Scenario for FnScenario<R, C>
where
    R: Fn(usize) -> Option<Vec<u8>> + Send + Sync + 'static,
    C: Fn(usize, &Response) -> Result<(), String> + Send + Sync + 'static,
{
    fn request(&self, i: usize) -> Option<Vec<u8>> {
        (self.request)(i)
    }
    fn check(&self, i: usize, response: &Response) -> Result<(), String> {
        (self.check)(i, response)
    }
}

fn scenario<R, C>(request: R, check: C) -> Arc<dyn Scenario>
where
    R: Fn(usize) -> Option<Vec<u8>> + Send + Sync + 'static,
    C: Fn(usize, &Response) -> Result<(), String> + Send + Sync + 'static,
{
    Arc::new(FnScenario { request, check })
}

fn expect_status(response: &Response, status: u16) -> Result<(), String> {
    if response.status == status {
        Ok(())
    } else {
        let body = String::from_utf8_lossy(&response.body);
        Err(body.chars().take(200).collect())
    }
}

/// An answer that completed a sign-in: 200 with a session.
fn expect_session(response: &Response) -> Result<(), String> {
    expect_status(response, 200)?;
    if response.json()["authentication_token"].is_string() { Ok(()) } else { Err("no session".into()) }
}

/// `POST /api/v1/auth/2fa/verify` of challenge `token` with the code of `secret` in the
/// current time step.
fn totp_verify_request(host: &str, token: &str, secret: &TotpSecret) -> Vec<u8> {
    let code = secret.code_at_step(current_step());
    let body = format!(r#"{{"challenge_token":"{token}","method":"authenticator","code":"{code}"}}"#);
    post_json(host, "/api/v1/auth/2fa/verify", &body)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("hello") {
        let addr = args.get(1).cloned().unwrap_or_else(|| "127.0.0.1:8081".into());
        let workers = args.get(2).and_then(|w| w.parse().ok()).unwrap_or_else(cores);
        return match service::run_hello(&addr, workers) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hello: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{HELP}");
        return ExitCode::SUCCESS;
    }
    let opts = match Opts::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("latchkey-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(cores()).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("latchkey-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(opts)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("latchkey-bench: correctness errors (see above): the figures do not count");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("latchkey-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Everything a run shares.
struct Bench {
    opts: Opts,
    dir: PathBuf,
    keys: Keys,
    env: LatchkeyEnv,
    scratch: Scratch,
    sink: smtp::Sink,
    namespace: String,
    results: serde_json::Map<String, Value>,
    /// Correctness holds (no errors where there must be none).
    correct: bool,
}

async fn run(opts: Opts) -> BenchResult<bool> {
    let root = service::bin_dir()?.parent().ok_or("no target directory")?.join("bench");
    let stamp = format!("{}", unix_ms() / 1000);
    let dir = root.join(format!("run-{stamp}"));
    std::fs::create_dir_all(dir.join("data"))?;
    eprintln!("latchkey-bench: run directory {}", dir.display());

    let bin = match &opts.latchkey {
        Some(path) => path.clone(),
        None if opts.build => {
            eprintln!("building latchkey (release)…");
            service::build_latchkey()?
        }
        None => service::bin_dir()?.join("latchkey"),
    };
    check_tools()?;
    let redis_client = redis::Client::open(opts.redis.as_str())?;
    let _: String = redis::cmd("PING").query(&mut redis_client.get_connection()?)?;

    let server_key = ServerKey::generate();
    let keys = Keys::new(&server_key);
    let scratch = Scratch::create(&opts.postgres)?;
    let namespace = format!("latchkey-bench-{stamp}");
    let sink = smtp::Sink::start().await?;
    let queue_url = if opts.redis.contains('?') {
        format!("{}&namespace={namespace}", opts.redis)
    } else {
        format!("{}?namespace={namespace}", opts.redis)
    };
    let vars: Vec<(String, String)> = vec![
        ("LATCHKEY_DATABASE_URL".into(), scratch.url.clone()),
        ("LATCHKEY_QUEUE_URL".into(), queue_url),
        ("LATCHKEY_SMTP_URL".into(), format!("smtp://{}", sink.addr)),
        ("LATCHKEY_SECRET_KEY".into(), server_key.to_base64().to_string()),
        ("LATCHKEY_DATA_DIR".into(), dir.join("data").display().to_string()),
        // Every request of the benchmark comes from 127.0.0.1: the per-IP limit of
        // unauthenticated requests (600/min by default) would otherwise be the bottleneck.
        ("LATCHKEY_SIGNIN_PER_IP_PER_MINUTE".into(), "100000000".into()),
        // The webhook phase's receiver is http://127.0.0.1 (DESIGN.md 5.6: these only widen
        // what may be registered).
        ("LATCHKEY_WEBHOOK_ALLOW_HTTP".into(), "true".into()),
        ("LATCHKEY_WEBHOOK_ALLOW_PRIVATE".into(), "true".into()),
        // The relying party of the passkey phase (the default, the listen address, is an IP).
        ("LATCHKEY_WEBAUTHN_RP_ID".into(), passkey::RP_ID.into()),
        ("LATCHKEY_WEBAUTHN_ORIGINS".into(), passkey::ORIGIN.into()),
        ("RUST_LOG".into(), opts.rust_log.clone()),
    ];
    let mut vars = vars;
    vars.extend(opts.env.iter().cloned());
    let env = LatchkeyEnv { bin, vars, log: dir.join("service.log") };
    let mut bench =
        Bench { opts, dir, keys, env, scratch, sink, namespace, results: serde_json::Map::new(), correct: true };
    let outcome = bench.phases().await;
    if !bench.opts.keep {
        if let Err(e) = bench.scratch.drop_now() {
            eprintln!("could not drop database {}: {e}", bench.scratch.name);
        }
        if let Err(e) = clean_redis(&redis_client, &bench.namespace) {
            eprintln!("could not delete the Redis keys {}:*: {e}", bench.namespace);
        }
    }
    outcome?;
    let machine = report::machine();
    let doc = report::document(&machine, bench.opts.json(), &bench.results);
    println!("{}", report::table(&machine, &bench.results));
    std::fs::create_dir_all(&root)?;
    let text = serde_json::to_string_pretty(&doc)?;
    let file = root.join(format!("{stamp}.json"));
    std::fs::write(&file, &text)?;
    std::fs::write(root.join("latest.json"), &text)?;
    println!("JSON: {}", file.display());
    Ok(bench.correct)
}

fn check_tools() -> BenchResult<()> {
    for tool in ["pgbench", "psql"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Err(format!("{tool} is missing: apt-get install postgresql-client").into());
        }
    }
    Ok(())
}

fn clean_redis(client: &redis::Client, namespace: &str) -> BenchResult<()> {
    let mut conn = client.get_connection()?;
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{namespace}:*")).query(&mut conn)?;
    for chunk in keys.chunks(500) {
        let _: i64 = redis::cmd("DEL").arg(chunk).query(&mut conn)?;
    }
    Ok(())
}

/// A `perf record` running during one phase.
struct Profiler {
    child: std::process::Child,
    file: PathBuf,
}

impl Profiler {
    fn start(dir: &Path, phase: &str, pid: Option<u32>) -> BenchResult<Self> {
        let file = dir.join(format!("perf-{phase}.data"));
        let mut cmd = Command::new("perf");
        cmd.arg("record").arg("-o").arg(&file);
        match pid {
            Some(pid) => cmd.args(["-F", "499", "--call-graph", "dwarf,16384", "-p", &pid.to_string()]),
            None => cmd.args(["-F", "999", "-a"]),
        };
        let child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn()?;
        std::thread::sleep(Duration::from_millis(300));
        Ok(Self { child, file })
    }

    fn stop(mut self) {
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
        eprintln!("perf data: {} (perf report -i …)", self.file.display());
    }
}

impl Bench {
    fn addr_host(p: &Process) -> String {
        p.addr.to_string()
    }

    fn profile(&self, phase: &str, service: &Process) -> Option<Profiler> {
        if self.opts.profile.as_deref() != Some(phase) {
            return None;
        }
        let pid = self.opts.profile_service.then(|| service.pid());
        match Profiler::start(&self.dir, phase, pid) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("perf: {e}");
                None
            }
        }
    }

    async fn phases(&mut self) -> BenchResult<()> {
        let now = unix_ms();
        self.env.migrate()?;
        let mut conn = self.scratch.connect()?;
        eprintln!("loading users…");
        let t0 = Instant::now();
        let cheap = PasswordHasher::new(PasswordParams::for_test())
            .and_then(|h| h.hash(PASSWORD))
            .map_err(|e| e.to_string())?;
        let real =
            PasswordHasher::new(PasswordParams::default()).and_then(|h| h.hash(PASSWORD)).map_err(|e| e.to_string())?;
        let users = Loaded {
            verify: self.load_verify_users(&mut conn, &cheap, now)?,
            signin: self.load_signin_users(&mut conn, &real, now)?,
            email: self.load_email_users(&mut conn, &cheap, now)?,
            recovery: self.load_recovery_users(&mut conn, &cheap, now)?,
            hooks: self.load_webhook_users(&mut conn, &cheap, now)?,
            passkeys: self.load_passkey_users(&mut conn, &cheap, now)?,
        };
        page::load_tenant(self, &mut conn, now)?;
        limits::prepare_l1(&mut conn)?;
        eprintln!("loaded in {:.1} s", t0.elapsed().as_secs_f64());

        let svc = self.env.serve(service::free_addr()?, self.opts.http_workers).await?;
        let result = self.service_phases(&svc, users).await;
        svc.stop();
        result?;
        if self.opts.runs("actors") {
            self.actors(&mut conn, &cheap).await?;
        }
        if self.opts.runs("scale") {
            self.scale(&mut conn, &cheap).await?;
        }
        Ok(())
    }

    async fn service_phases(&mut self, svc: &Process, users: Loaded) -> BenchResult<()> {
        let Loaded { verify, signin, email, recovery, hooks, passkeys } = users;
        if self.opts.runs("l1") {
            eprintln!("L1: pgbench…");
            let r = limits::pgbench(&self.scratch.url, 16, self.opts.limit_secs, &self.dir, "l1", limits::L1_SCRIPT)?;
            self.results.insert("l1".into(), r.json());
            eprintln!("L1v: pgbench replaying the statements of one verification…");
            let r = limits::pgbench(&self.scratch.url, 16, self.opts.limit_secs, &self.dir, "l1v", limits::L1V_SCRIPT)?;
            self.results.insert("l1v".into(), r.json());
        }
        if self.opts.runs("l2") {
            eprintln!("L2: actix-web hello world…");
            let hello = service::hello(self.opts.http_workers).await?;
            let host = hello.addr.to_string();
            let deadline = Instant::now() + Duration::from_secs(self.opts.limit_secs);
            let req = get(&host, "/", None);
            let out = load::closed(
                hello.addr,
                self.opts.connections,
                scenario(move |_| Some(req.clone()), |_, r| expect_status(r, 200)),
                Some(deadline),
            )
            .await;
            hello.stop();
            self.results.insert("l2".into(), out.json());
        }
        // Next to L2, which it is compared with.
        if self.opts.runs("page") {
            self.page(svc).await?;
        }
        // L3 is measured next to the sign-in phase (just before and just after it), since that
        // is what it is compared with and the machine's speed drifts.
        let mut l3 = Vec::new();
        if self.opts.runs("l3") && !self.opts.runs("signin") {
            l3.push(self.argon2().await?);
        }
        if self.opts.runs("verify") {
            self.verify(svc, verify).await?;
        }
        if self.opts.runs("signin") {
            if self.opts.runs("l3") {
                l3.push(self.argon2().await?);
            }
            self.signin(svc, signin).await?;
            if self.opts.runs("l3") {
                l3.push(self.argon2().await?);
            }
        }
        if !l3.is_empty() {
            #[allow(clippy::cast_precision_loss)]
            let mean = l3.iter().map(|r| r.per_second).sum::<f64>() / l3.len() as f64;
            let params = PasswordParams::default();
            self.results.insert(
                "l3".into(),
                json!({
                    "per_second": stats::round3(mean),
                    "runs_per_second": l3.iter().map(|r| stats::round3(r.per_second)).collect::<Vec<_>>(),
                    "threads": l3[0].threads,
                    "single_ms": stats::round3(l3.iter().map(|r| r.single_ms).sum::<f64>() / l3.len() as f64),
                    "params": {"memory_kib": params.memory_kib, "iterations": params.iterations, "parallelism": params.parallelism},
                }),
            );
        }
        if self.opts.runs("email") {
            self.email(svc, email).await?;
        }
        // After the email phase: its sign-ins send notices, which the email phase would count
        // as strangers.
        if self.opts.runs("recovery") {
            self.recovery(svc, recovery).await?;
        }
        if self.opts.runs("webhooks") {
            self.webhooks(svc, hooks).await?;
        }
        // After the email phase too: each enrollment sends a notice.
        if self.opts.runs("passkey") {
            self.passkey(svc, passkeys).await?;
        }
        Ok(())
    }

    /// L3: argon2id on every core (in this process, the service idle).
    async fn argon2(&self) -> BenchResult<limits::Argon2Rate> {
        eprintln!("L3: argon2id on every core…");
        let secs = self.opts.argon2_secs;
        tokio::task::spawn_blocking(move || limits::argon2(PasswordParams::default(), secs)).await?
    }

    /// `n` agents with an enrolled authenticator (secrets sealed as the service seals them,
    /// under `totp:{user_id}`) over `--verify-tenants` tenants `bench-{phase}-{k}` with 2FA on,
    /// bulk-inserted: per user, his id, his tenant's id, sign-in body and TOTP secret.
    fn load_authenticator_users(
        &self,
        conn: &mut diesel::PgConnection,
        phase: &str,
        n: usize,
        hash: &str,
        now: i64,
    ) -> BenchResult<Vec<(String, String, String, TotpSecret)>> {
        let tenants: Vec<TenantRow> = (0..self.opts.verify_tenants)
            .map(|k| TenantRow {
                id: uuid::Uuid::now_v7().to_string(),
                slug: format!("bench-{phase}-{k}"),
                two_factor: true,
                methods: 1,
            })
            .collect();
        db::insert_tenants(conn, &tenants, now)?;
        let mut users = Vec::with_capacity(n);
        let mut enrollments = Vec::with_capacity(n);
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let tenant = &tenants[i % tenants.len()];
            let id = uuid::Uuid::now_v7().to_string();
            let secret = TotpSecret::generate();
            let sealed = self.keys.seal(secret.as_bytes(), format!("totp:{id}").as_bytes());
            let email = format!("{i}@{phase}.bench.test");
            users.push(UserRow { id: id.clone(), tenant_id: tenant.id.clone(), email: email.clone(), role: "agent" });
            enrollments.push(EnrollmentRow {
                user_id: id.clone(),
                tenant_id: tenant.id.clone(),
                method: "authenticator",
                secret_sealed: Some(sealed),
            });
            out.push((id, tenant.id.clone(), sign_in_body(&tenant.slug, &email), secret));
        }
        db::insert_users(conn, &users, hash, now)?;
        db::insert_enrollments(conn, &enrollments, now)?;
        Ok(out)
    }

    fn load_verify_users(&self, conn: &mut diesel::PgConnection, hash: &str, now: i64) -> BenchResult<VerifyUsers> {
        if !self.opts.runs("verify") {
            return Ok(VerifyUsers::default());
        }
        let mut out = VerifyUsers::default();
        for (_, _, body, secret) in self.load_authenticator_users(conn, "verify", self.opts.verify_users, hash, now)? {
            out.signin.push(body);
            out.secrets.push(secret);
        }
        Ok(out)
    }

    /// One tenant (`slug`, 2FA `two_factor`, `methods` for every role) with `n` agents whose
    /// addresses are `email(i)`, all with `hash`: the tenant and the agents.
    #[allow(clippy::too_many_arguments)]
    fn load_agents(
        conn: &mut diesel::PgConnection,
        slug: &str,
        two_factor: bool,
        methods: i32,
        n: usize,
        email: impl Fn(usize) -> String,
        hash: &str,
        now: i64,
    ) -> BenchResult<(TenantRow, Vec<UserRow>)> {
        let tenant = TenantRow { id: uuid::Uuid::now_v7().to_string(), slug: slug.into(), two_factor, methods };
        db::insert_tenants(conn, std::slice::from_ref(&tenant), now)?;
        let users: Vec<UserRow> = (0..n)
            .map(|i| UserRow {
                id: uuid::Uuid::now_v7().to_string(),
                tenant_id: tenant.id.clone(),
                email: email(i),
                role: "agent",
            })
            .collect();
        db::insert_users(conn, &users, hash, now)?;
        Ok((tenant, users))
    }

    fn load_signin_users(&self, conn: &mut diesel::PgConnection, hash: &str, now: i64) -> BenchResult<Vec<String>> {
        if !self.opts.runs("signin") {
            return Ok(Vec::new());
        }
        let (tenant, users) =
            Self::load_agents(conn, "bench-signin", false, 3, self.opts.signin_users, signin_address, hash, now)?;
        Ok(users.iter().map(|u| sign_in_body(&tenant.slug, &u.email)).collect())
    }

    fn email_count(&self) -> usize {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
        let n = (self.opts.email_rate * self.opts.email_secs as f64).round() as usize;
        n
    }

    fn load_email_users(&self, conn: &mut diesel::PgConnection, hash: &str, now: i64) -> BenchResult<Vec<String>> {
        if !self.opts.runs("email") {
            return Ok(Vec::new());
        }
        let (tenant, users) =
            Self::load_agents(conn, "bench-email", true, 2, self.email_count(), email_address, hash, now)?;
        let enrollments: Vec<EnrollmentRow> = users
            .iter()
            .map(|u| EnrollmentRow {
                user_id: u.id.clone(),
                tenant_id: tenant.id.clone(),
                method: "email",
                secret_sealed: None,
            })
            .collect();
        db::insert_enrollments(conn, &enrollments, now)?;
        Ok(users.iter().map(|u| sign_in_body(&tenant.slug, &u.email)).collect())
    }

    /// Signs every user of `bodies` in (closed loop) and keeps the challenge tokens.
    async fn collect_challenges(
        &self,
        svc: &Process,
        bodies: Vec<String>,
    ) -> (load::Outcome, Arc<Vec<OnceLock<String>>>) {
        let host = Self::addr_host(svc);
        let n = bodies.len();
        let tokens: Arc<Vec<OnceLock<String>>> = Arc::new((0..n).map(|_| OnceLock::new()).collect());
        let keep = Arc::clone(&tokens);
        let out = load::closed(
            svc.addr,
            self.opts.connections,
            scenario(
                move |i| bodies.get(i).map(|b| post_json(&host, "/api/v1/auth", b)),
                move |i, r| {
                    expect_status(r, 200)?;
                    let token = r.json()["two_factor"]["challenge_token"].as_str().map(str::to_owned);
                    let token = token.ok_or("no challenge token")?;
                    let _ = keep[i].set(token);
                    Ok(())
                },
            ),
            None,
        )
        .await;
        (out, tokens)
    }

    async fn verify(&mut self, svc: &Process, users: VerifyUsers) -> BenchResult<()> {
        eprintln!("TOTP verify: {} users sign in…", users.secrets.len());
        let (signed, tokens) = self.collect_challenges(svc, users.signin).await;
        let ready: Vec<usize> = (0..tokens.len()).filter(|&i| tokens[i].get().is_some()).collect();
        eprintln!("TOTP verify: {} challenges, verifying…", ready.len());
        let host = Self::addr_host(svc);
        let secrets = Arc::new(users.secrets);
        let user_count = secrets.len();
        let profiler = self.profile("verify", svc);
        let steps_before = current_step();
        let out = load::closed(
            svc.addr,
            self.opts.connections,
            scenario(
                move |i| {
                    let user = *ready.get(i)?;
                    let token = tokens[user].get()?;
                    Some(totp_verify_request(&host, token, &secrets[user]))
                },
                |_, r| expect_session(r),
            ),
            None,
        )
        .await;
        if let Some(p) = profiler {
            p.stop();
        }
        let errors = out.errors + signed.errors;
        if errors > 0 {
            self.correct = false;
            eprintln!("TOTP verify: {errors} errors: {:?} {:?}", signed.first_error, out.first_error);
        }
        self.results.insert(
            "verify".into(),
            json!({
                "users": user_count,
                "tenants": self.opts.verify_tenants,
                "time_steps_spanned": current_step() - steps_before + 1,
                "signin_setup": signed.json(),
                "verify": out.json(),
            }),
        );
        Ok(())
    }

    /// Users with an authenticator and one recovery code each (stored as the service stores
    /// them: the keyed hash of the normalised code, bound to the user), over
    /// `--verify-tenants` tenants with 2FA on.
    fn load_recovery_users(&self, conn: &mut diesel::PgConnection, hash: &str, now: i64) -> BenchResult<RecoveryUsers> {
        if !self.opts.runs("recovery") {
            return Ok(RecoveryUsers::default());
        }
        let users = self.load_authenticator_users(conn, "recovery", self.opts.recovery_users, hash, now)?;
        let mut codes = Vec::with_capacity(users.len());
        let mut out = RecoveryUsers::default();
        for (id, tenant_id, body, _) in users {
            let code = latchkey_core::recovery_code::generate_set().swap_remove(0);
            let normal = latchkey_core::recovery_code::normalize(&code).ok_or("a generated code does not normalise")?;
            codes.push(db::RecoveryCodeRow {
                tenant_id,
                code_hash: self.keys.recovery_code_hash(&id, &normal).to_vec(),
                user_id: id,
            });
            out.signin.push(body);
            out.codes.push(code.to_string());
        }
        db::insert_recovery_codes(conn, &codes, now)?;
        Ok(out)
    }

    /// Recovery-code verify: every user signs in, then verifies once with his recovery code
    /// (`method: "recovery_code"`); the verify requests are measured. Each sends its notice
    /// ("a recovery code was used") before it answers, as in production.
    async fn recovery(&mut self, svc: &Process, users: RecoveryUsers) -> BenchResult<()> {
        eprintln!("recovery-code verify: {} users sign in…", users.codes.len());
        let (signed, tokens) = self.collect_challenges(svc, users.signin).await;
        let ready: Vec<usize> = (0..tokens.len()).filter(|&i| tokens[i].get().is_some()).collect();
        eprintln!("recovery-code verify: {} challenges, verifying…", ready.len());
        let host = Self::addr_host(svc);
        let codes = Arc::new(users.codes);
        let profiler = self.profile("recovery", svc);
        let out = load::closed(
            svc.addr,
            self.opts.connections,
            scenario(
                move |i| {
                    let user = *ready.get(i)?;
                    let token = tokens[user].get()?;
                    let code = &codes[user];
                    let body = format!(r#"{{"challenge_token":"{token}","method":"recovery_code","code":"{code}"}}"#);
                    Some(post_json(&host, "/api/v1/auth/2fa/verify", &body))
                },
                |_, r| expect_session(r),
            ),
            None,
        )
        .await;
        if let Some(p) = profiler {
            p.stop();
        }
        let errors = out.errors + signed.errors;
        if errors > 0 {
            self.correct = false;
            eprintln!("recovery-code verify: {errors} errors: {:?} {:?}", signed.first_error, out.first_error);
        }
        self.results.insert(
            "recovery".into(),
            json!({"users": self.opts.recovery_users, "signin_setup": signed.json(), "verify": out.json()}),
        );
        Ok(())
    }

    async fn signin(&mut self, svc: &Process, bodies: Vec<String>) -> BenchResult<()> {
        eprintln!("sign-in: {} s at full load, /healthz probed at {}/s…", self.opts.signin_secs, self.opts.probe_rate);
        let host = Self::addr_host(svc);
        let requests: Vec<Vec<u8>> = bodies.iter().map(|b| post_json(&host, "/api/v1/auth", b)).collect();
        let n = requests.len();
        let signin = scenario(move |i| Some(requests[i % n].clone()), |_, r| expect_session(r));
        let probe_req = get(&host, "/healthz", None);
        let probe = scenario(move |_| Some(probe_req.clone()), |_, r| expect_status(r, 200));
        let secs = self.opts.signin_secs;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
        let probes = (self.opts.probe_rate * secs as f64) as usize;
        let profiler = self.profile("signin", svc);
        let deadline = Instant::now() + Duration::from_secs(secs);
        let cpu0 = report::cpu_busy();
        let (out, (probed, _)) = tokio::join!(
            load::closed(svc.addr, self.opts.connections, signin, Some(deadline)),
            load::open(svc.addr, self.opts.probe_rate, probes, probe),
        );
        let cpu = report::cpu_busy_since(cpu0);
        if let Some(p) = profiler {
            p.stop();
        }
        if out.errors > 0 || probed.errors > 0 {
            self.correct = false;
            eprintln!("sign-in: errors: {:?} {:?}", out.first_error, probed.first_error);
        }
        self.results.insert(
            "signin".into(),
            json!({"signin": out.json(), "cheap_endpoint": probed.json(), "cpu_busy": cpu.map(stats::round3)}),
        );
        Ok(())
    }

    async fn email(&mut self, svc: &Process, bodies: Vec<String>) -> BenchResult<()> {
        let count = bodies.len();
        let recipients: Vec<String> = (0..count).map(email_address).collect();
        eprintln!("email: {count} users sign in…");
        let (signed, tokens) = self.collect_challenges(svc, bodies).await;
        eprintln!("email: {count} sends at {}/s…", self.opts.email_rate);
        self.sink.take();
        let host = Self::addr_host(svc);
        let keep = Arc::clone(&tokens);
        let send = scenario(
            move |i| {
                let token = keep.get(i)?.get()?;
                Some(post_json(&host, "/api/v1/auth/2fa/email/send", &format!(r#"{{"challenge_token":"{token}"}}"#)))
            },
            |_, r| expect_status(r, 202),
        );
        let profiler = self.profile("email", svc);
        let (sent, start) = load::open(svc.addr, self.opts.email_rate, count, send).await;
        // Wait for the stragglers (at most 60 s), then a little longer to catch duplicates.
        let until = Instant::now() + Duration::from_secs(60);
        while self.sink.count() < sent.ok && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        if let Some(p) = profiler {
            p.stop();
        }
        let accepted = self.sink.take();
        let index: std::collections::HashMap<&str, usize> =
            recipients.iter().enumerate().map(|(i, r)| (r.as_str(), i)).collect();
        let mut first: Vec<Option<Instant>> = vec![None; count];
        let mut duplicated = 0usize;
        let mut strangers = 0usize;
        for a in &accepted {
            match index.get(a.recipient.as_str()) {
                Some(&i) if first[i].is_none() => first[i] = Some(a.at),
                Some(_) => duplicated += 1,
                None => strangers += 1,
            }
        }
        let delivered = first.iter().filter(|f| f.is_some()).count();
        let lost = sent.ok.saturating_sub(delivered);
        #[allow(clippy::cast_precision_loss)]
        let to_smtp: Vec<Duration> = first
            .iter()
            .enumerate()
            .filter_map(|(i, at)| {
                let scheduled = start + Duration::from_secs_f64(i as f64 / self.opts.email_rate);
                at.map(|at| at.saturating_duration_since(scheduled))
            })
            .collect();
        let delivery = stats::summarize(to_smtp);
        // A stall of the worker at the start shows here (and in the p99), not in the p50.
        let first_delivery_ms =
            first.iter().flatten().min().map(|at| at.saturating_duration_since(start).as_secs_f64() * 1000.0);
        if lost > 0 || duplicated > 0 || strangers > 0 || sent.errors > 0 || signed.errors > 0 {
            self.correct = false;
            eprintln!(
                "email: lost {lost}, duplicated {duplicated}, unexpected {strangers}, send errors {} ({:?}), sign-in errors {}",
                sent.errors, sent.first_error, signed.errors
            );
        }
        self.results.insert(
            "email".into(),
            json!({
                "rate": self.opts.email_rate,
                "secs": self.opts.email_secs,
                "signin_setup": signed.json(),
                "send": sent.json(),
                "accept_to_smtp": delivery.json(),
                "first_delivery_ms": first_delivery_ms.map(stats::round3),
                "expected": sent.ok,
                "delivered": delivered,
                "lost": lost,
                "duplicated": duplicated,
                "unexpected": strangers,
            }),
        );
        Ok(())
    }

    async fn actors(&mut self, conn: &mut diesel::PgConnection, hash: &str) -> BenchResult<()> {
        let n = self.opts.tenants;
        eprintln!("tenant actors: loading {n} tenants…");
        let now = unix_ms();
        let tenants: Vec<TenantRow> = (0..n)
            .map(|i| TenantRow {
                id: uuid::Uuid::now_v7().to_string(),
                slug: format!("bench-a{i}"),
                two_factor: false,
                methods: 3,
            })
            .collect();
        let users: Vec<UserRow> = tenants
            .iter()
            .enumerate()
            .map(|(i, t)| UserRow {
                id: uuid::Uuid::now_v7().to_string(),
                tenant_id: t.id.clone(),
                email: format!("admin@a{i}.bench.test"),
                role: "admin",
            })
            .collect();
        let tokens: Vec<String> = (0..n).map(|_| SecretToken::generate().expose().to_owned()).collect();
        let sessions: Vec<SessionRow> = users
            .iter()
            .zip(&tokens)
            .map(|(u, t)| SessionRow {
                tenant_id: u.tenant_id.clone(),
                user_id: u.id.clone(),
                token_hash: self.keys.token_hash(TokenPurpose::Session, t).to_vec(),
            })
            .collect();
        db::insert_tenants(conn, &tenants, now)?;
        db::insert_users(conn, &users, hash, now)?;
        db::insert_sessions(conn, &sessions, now)?;
        drop((tenants, users, sessions));

        // A fresh process, so the memory freed by the earlier phases does not absorb the actors.
        let svc = self.env.serve(service::free_addr()?, self.opts.http_workers).await?;
        let result = self.touch_tenants(&svc, tokens).await;
        svc.stop();
        result
    }

    async fn touch_tenants(&mut self, svc: &Process, tokens: Vec<String>) -> BenchResult<()> {
        let n = tokens.len();
        let host = Self::addr_host(svc);
        let me = |token: &str| get(&host, "/api/v1/me", Some(token));
        // Warm-up on tenant 0 only (within its request budget): connections, the database pool
        // and the blocking threads.
        let warm = me(&tokens[0]);
        let warm_out = load::closed(
            svc.addr,
            self.opts.connections,
            scenario(move |i| (i < 1500).then(|| warm.clone()), |_, r| expect_status(r, 200)),
            None,
        )
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_before = svc.rss_kib().ok_or("cannot read the service's memory")?;

        // Start cost: one connection, each sampled tenant touched twice in a row.
        let sample = 500.min(n - 1);
        let mut cold = Vec::with_capacity(sample);
        let mut warm = Vec::with_capacity(sample);
        let mut c = http::Conn::connect(svc.addr).await?;
        let mut errors = warm_out.errors;
        for token in &tokens[1..=sample] {
            let req = me(token);
            for lat in [&mut cold, &mut warm] {
                let t0 = Instant::now();
                let r = c.send(&req).await?;
                lat.push(t0.elapsed());
                if r.status != 200 {
                    errors += 1;
                }
            }
        }
        let cold = stats::summarize(cold);
        let warm = stats::summarize(warm);

        eprintln!("tenant actors: touching {} tenants…", n - 1 - sample);
        let rest: Vec<Vec<u8>> = tokens[sample + 1..].iter().map(|t| me(t)).collect();
        let profiler = self.profile("actors", svc);
        let touched = load::closed(
            svc.addr,
            self.opts.connections,
            scenario(move |i| rest.get(i).cloned(), |_, r| expect_status(r, 200)),
            None,
        )
        .await;
        if let Some(p) = profiler {
            p.stop();
        }
        errors += touched.errors;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss_after = svc.rss_kib().ok_or("cannot read the service's memory")?;
        let mut c = http::Conn::connect(svc.addr).await?;
        let metrics = c.send(&get(&host, "/metrics", None)).await?;
        let running = service::metric(&String::from_utf8_lossy(&metrics.body), "latchkey_tenant_actors");
        #[allow(clippy::cast_precision_loss)]
        let actors = running.unwrap_or(n as f64).max(2.0);
        #[allow(clippy::cast_precision_loss)]
        let per_actor_kib = (rss_after.saturating_sub(rss_before)) as f64 / (actors - 1.0);
        if errors > 0 {
            self.correct = false;
            eprintln!("tenant actors: {errors} errors ({:?})", touched.first_error);
        }
        self.results.insert(
            "actors".into(),
            json!({
                "tenants_touched": n,
                "actors_running": running,
                "rss_before_kib": rss_before,
                "rss_after_kib": rss_after,
                "per_actor_kib": stats::round3(per_actor_kib),
                "cold_touch": cold.json(),
                "warm_touch": warm.json(),
                "start_cost_ms": stats::round3(cold.p50_ms - warm.p50_ms),
                "touch": touched.json(),
            }),
        );
        Ok(())
    }
}

/// The users every phase of the one service process loaded (empty for phases that do not run).
struct Loaded {
    verify: VerifyUsers,
    signin: Vec<String>,
    email: Vec<String>,
    recovery: RecoveryUsers,
    hooks: webhooks::WebhookUsers,
    passkeys: passkey::PasskeyUsers,
}

/// The users of the recovery-code phase: their sign-in bodies and recovery codes.
#[derive(Default)]
struct RecoveryUsers {
    signin: Vec<String>,
    codes: Vec<String>,
}

/// The users of the TOTP phase: their sign-in bodies and TOTP secrets.
#[derive(Default)]
struct VerifyUsers {
    signin: Vec<String>,
    secrets: Vec<TotpSecret>,
}

/// The address of the `i`th user of the sign-in phase.
fn signin_address(i: usize) -> String {
    format!("s{i}@signin.bench.test")
}

/// The address of the `i`th user of the email phase (the SMTP sink expects each once).
fn email_address(i: usize) -> String {
    format!("e{i}@email.bench.test")
}

fn sign_in_body(tenant: &str, email: &str) -> String {
    json!({"tenant": tenant, "email": email, "password": PASSWORD}).to_string()
}
