//! The machine, the table with the ratios and targets, and the JSON document.

use std::fmt::Write as _;
use std::process::Command;

use serde_json::{Map, Value, json};

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn command(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// What the run ran on.
pub fn machine() -> Value {
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split(':').nth(1)))
        .map(|s| s.trim().to_owned());
    let mem_kib: Option<u64> = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
    let commit = command("git", &["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "--short", "HEAD"]);
    let dirty =
        command("git", &["-C", env!("CARGO_MANIFEST_DIR"), "status", "--porcelain"]).is_some_and(|s| !s.is_empty());
    let pg = command(
        "psql",
        &[
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-Atc",
            "SELECT version() || ' | fsync=' || current_setting('fsync') || ' synchronous_commit=' || current_setting('synchronous_commit')",
        ],
    );
    json!({
        "nproc": std::thread::available_parallelism().map_or(0, usize::from),
        "cpu": model,
        "mem_total_kib": mem_kib,
        "kernel": command("uname", &["-sr"]),
        "commit": commit.map(|c| if dirty { format!("{c}+changes") } else { c }),
        "postgres": pg,
        "redis": command("redis-cli", &["-h", "127.0.0.1", "INFO", "server"]).and_then(|s| s.lines().find_map(|l| l.strip_prefix("redis_version:").map(|v| v.trim().to_owned()))),
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    })
}

/// Busy and total jiffies of all CPUs (`/proc/stat`).
pub fn cpu_busy() -> Option<(u64, u64)> {
    let stat = read("/proc/stat");
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).unwrap_or(&0);
    Some((total - idle, total))
}

/// The fraction of CPU time busy since `before`.
pub fn cpu_busy_since(before: Option<(u64, u64)>) -> Option<f64> {
    let (b0, t0) = before?;
    let (b1, t1) = cpu_busy()?;
    #[allow(clippy::cast_precision_loss)]
    let f = (b1 - b0) as f64 / (t1 - t0).max(1) as f64;
    Some(f)
}

fn f(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_f64()
}

/// One target of the issue.
struct Target {
    name: &'static str,
    value: Option<f64>,
    unit: &'static str,
    goal: &'static str,
    holds: Option<bool>,
}

fn targets(r: &Map<String, Value>) -> Vec<Target> {
    let r = Value::Object(r.clone());
    let l1 = f(&r, &["l1", "tps"]);
    let l1v = f(&r, &["l1v", "tps"]);
    let l2 = f(&r, &["l2", "per_second"]);
    let l3 = f(&r, &["l3", "per_second"]);
    let verify = f(&r, &["verify", "verify", "per_second"]);
    let verify_p99 = f(&r, &["verify", "verify", "latency", "p99_ms"]);
    let signin = f(&r, &["signin", "signin", "per_second"]);
    let cheap = f(&r, &["signin", "cheap_endpoint", "latency", "p99_ms"]);
    let smtp_p99 = f(&r, &["email", "accept_to_smtp", "p99_ms"]);
    let actor = f(&r, &["actors", "per_actor_kib"]);
    let hook_p99 = f(&r, &["webhooks", "event_to_receiver", "p99_ms"]);
    // Judged at the rate only (a smaller run is reported, not judged); any delivery
    // lost, doubled or badly signed misses it whatever the latency.
    let hook_holds = hook_p99.and_then(|p99| {
        let rate = f(&r, &["webhooks", "rate"])?;
        let broken: f64 = ["lost", "duplicated", "redelivered_ids", "bad_signatures", "unexpected"]
            .iter()
            .map(|k| f(&r, &["webhooks", k]).unwrap_or(0.0))
            .sum();
        if broken > 0.0 { Some(false) } else { (rate >= 500.0).then_some(p99 < 250.0) }
    });
    let ratio = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
    let verify_l1 = ratio(verify, l1);
    let recovery = ratio(f(&r, &["recovery", "verify", "per_second"]), verify);
    let passkey = ratio(f(&r, &["passkey", "verify", "per_second"]), verify);
    let page_l2 = ratio(f(&r, &["page", "get", "per_second"]), l2);
    let l1v_l1 = ratio(l1v, l1);
    let signin_l3 = ratio(signin, l3);
    let scale = |p: &[&str]| {
        let mut path = vec!["scale"];
        path.extend_from_slice(p);
        f(&r, &path)
    };
    let (scale_signin, scale_verify) = (scale(&["signin_ratio"]), scale(&["verify_ratio"]));
    let (audit_first, audit_deep) =
        (scale(&["audit", "first_page", "p99_ms"]), scale(&["audit", "deep_page", "p99_ms"]));
    let purge_ratio = ratio(scale(&["purge", "purge_rows_per_second"]), scale(&["purge", "creation_rows_per_second"]));
    let keeps_up = r["scale"]["purge"]["keeps_up"].as_bool();
    let blocked = scale(&["purge", "sampler", "blocked_by_delete"]);
    let reached = ratio(scale(&["purge", "reached_per_second"]), scale(&["purge", "rate"]));
    vec![
        Target {
            name: "verify / L1",
            value: verify_l1,
            unit: "",
            goal: ">= 0.25",
            holds: verify_l1.map(|x| x >= 0.25),
        },
        Target {
            name: "verify p99",
            value: verify_p99,
            unit: "ms",
            goal: "< 20 ms",
            holds: verify_p99.map(|x| x < 20.0),
        },
        Target { name: "verify / L2", value: ratio(verify, l2), unit: "", goal: "(reported)", holds: None },
        Target {
            name: "verify / L1v (service overhead)",
            value: ratio(verify, l1v),
            unit: "",
            goal: "(reported)",
            holds: None,
        },
        Target {
            name: "recovery-code verify / TOTP verify",
            value: recovery,
            unit: "",
            goal: ">= 0.8",
            holds: recovery.map(|x| x >= 0.8),
        },
        Target {
            name: "passkey verify / TOTP verify",
            value: passkey,
            unit: "",
            goal: ">= 0.8",
            holds: passkey.map(|x| x >= 0.8),
        },
        Target {
            name: "hosted sign-in page / L2",
            value: page_l2,
            unit: "",
            goal: ">= 0.5",
            holds: page_l2.map(|x| x >= 0.5),
        },
        Target {
            name: "L1v / L1 (statement-shape bound)",
            value: l1v_l1,
            unit: "",
            goal: ">= 0.4",
            holds: l1v_l1.map(|x| x >= 0.4),
        },
        Target { name: "sign-in / L3", value: signin_l3, unit: "", goal: ">= 0.8", holds: signin_l3.map(|x| x >= 0.8) },
        Target {
            name: "cheap endpoint p99 during sign-in",
            value: cheap,
            unit: "ms",
            goal: "< 20 ms",
            holds: cheap.map(|x| x < 20.0),
        },
        Target {
            name: "email accept-to-SMTP p99",
            value: smtp_p99,
            unit: "ms",
            goal: "< 100 ms",
            holds: smtp_p99.map(|x| x < 100.0),
        },
        Target {
            name: "webhook event → receiver p99",
            value: hook_p99,
            unit: "ms",
            goal: "< 250 ms at 500/s, none lost or doubled",
            holds: hook_holds,
        },
        Target {
            name: "memory per idle tenant actor",
            value: actor,
            unit: "KiB",
            goal: "< 4 KiB",
            holds: actor.map(|x| x < 4.0),
        },
        Target {
            name: "scale: sign-in big / small tables",
            value: scale_signin,
            unit: "",
            goal: ">= 0.8",
            holds: scale_signin.map(|x| x >= 0.8),
        },
        Target {
            name: "scale: TOTP verify big / small tables",
            value: scale_verify,
            unit: "",
            goal: ">= 0.8",
            holds: scale_verify.map(|x| x >= 0.8),
        },
        Target {
            name: "scale: audit-events page 1 p99",
            value: audit_first,
            unit: "ms",
            goal: "< 20 ms",
            holds: audit_first.map(|x| x < 20.0),
        },
        Target {
            name: "scale: audit-events page 100 p99",
            value: audit_deep,
            unit: "ms",
            goal: "< 20 ms",
            holds: audit_deep.map(|x| x < 20.0),
        },
        Target {
            name: "scale: purged rows/s / rows created/s",
            value: purge_ratio,
            unit: "",
            goal: ">= 1, none left",
            holds: purge_ratio.and(keeps_up),
        },
        Target {
            name: "scale: sign-ins waiting on the purge",
            value: blocked,
            unit: "",
            goal: "= 0",
            holds: blocked.map(|x| x == 0.0),
        },
        Target {
            name: "scale: verify p99 during purge / before",
            value: ratio(scale(&["purge", "during_purge", "p99_ms"]), scale(&["purge", "before_purge", "p99_ms"])),
            unit: "",
            goal: "(reported)",
            holds: None,
        },
        Target {
            name: "scale: open-loop rate reached / asked",
            value: reached,
            unit: "",
            goal: ">= 0.95",
            holds: reached.map(|x| x >= 0.95),
        },
    ]
}

/// The JSON document of a run.
pub fn document(machine: &Value, config: Value, results: &Map<String, Value>) -> Value {
    let targets: Vec<Value> = targets(results)
        .iter()
        .map(|t| json!({"name": t.name, "value": t.value.map(crate::stats::round3), "unit": t.unit, "target": t.goal, "holds": t.holds}))
        .collect();
    json!({"machine": machine, "config": config, "results": results, "targets": targets})
}

fn num(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{x:.decimals$}"))
}

/// The table printed at the end of a run.
pub fn table(machine: &Value, r: &Map<String, Value>) -> String {
    let v = Value::Object(r.clone());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nLatchkey benchmark — {} × {}, {:.1} GiB, commit {}",
        machine["nproc"],
        machine["cpu"].as_str().unwrap_or("?"),
        machine["mem_total_kib"].as_f64().unwrap_or(0.0) / 1048576.0,
        machine["commit"].as_str().unwrap_or("?")
    );
    let mut row = |name: &str, value: String| {
        let _ = writeln!(out, "  {name:<38} {value}");
    };
    let lat = |p: &[&str]| {
        let mut base: Vec<&str> = p.to_vec();
        base.push("latency");
        let mut p50 = base.clone();
        p50.push("p50_ms");
        let mut p99 = base;
        p99.push("p99_ms");
        format!("p50 {} ms  p99 {} ms", num(f(&v, &p50), 2), num(f(&v, &p99), 2))
    };
    if r.contains_key("l1") {
        row(
            "L1 pgbench 1-row conditional UPDATE",
            format!("{} tx/s (16 clients, synchronous_commit=on)", num(f(&v, &["l1", "tps"]), 0)),
        );
    }
    if r.contains_key("l1v") {
        row(
            "L1v pgbench replay of verify's SQL",
            format!("{} tx/s (its 3 round trips, no service)", num(f(&v, &["l1v", "tps"]), 0)),
        );
    }
    if r.contains_key("l2") {
        row("L2 actix-web hello world", format!("{} req/s  {}", num(f(&v, &["l2", "per_second"]), 0), lat(&["l2"])));
    }
    if r.contains_key("l3") {
        row(
            "L3 argon2id m=19456 t=2 p=1",
            format!(
                "{} hashes/s on {} threads ({} ms each; runs {})",
                num(f(&v, &["l3", "per_second"]), 1),
                v["l3"]["threads"],
                num(f(&v, &["l3", "single_ms"]), 1),
                v["l3"]["runs_per_second"]
            ),
        );
    }
    if r.contains_key("verify") {
        row(
            "TOTP sign-in (setup, cheap hash)",
            format!(
                "{} req/s  {}",
                num(f(&v, &["verify", "signin_setup", "per_second"]), 0),
                lat(&["verify", "signin_setup"])
            ),
        );
        row(
            &format!("TOTP verify ({} users)", v["verify"]["users"]),
            format!(
                "{} req/s  {}  errors {}",
                num(f(&v, &["verify", "verify", "per_second"]), 0),
                lat(&["verify", "verify"]),
                v["verify"]["verify"]["errors"]
            ),
        );
    }
    if r.contains_key("recovery") {
        row(
            &format!("recovery-code verify ({} users)", v["recovery"]["users"]),
            format!(
                "{} req/s  {}  errors {}",
                num(f(&v, &["recovery", "verify", "per_second"]), 0),
                lat(&["recovery", "verify"]),
                v["recovery"]["verify"]["errors"]
            ),
        );
    }
    if r.contains_key("passkey") {
        row(
            &format!("passkey verify ({} users, ES256)", v["passkey"]["users"]),
            format!(
                "{} req/s  {}  errors {} (setup {})",
                num(f(&v, &["passkey", "verify", "per_second"]), 0),
                lat(&["passkey", "verify"]),
                v["passkey"]["verify"]["errors"],
                v["passkey"]["setup_errors"]
            ),
        );
    }
    if r.contains_key("page") {
        row(
            "GET /ui/{tenant}/sign-in (HTML)",
            format!(
                "{} req/s  {}  errors {}  {} bytes",
                num(f(&v, &["page", "get", "per_second"]), 0),
                lat(&["page", "get"]),
                v["page"]["get"]["errors"],
                v["page"]["bytes"]
            ),
        );
    }
    if r.contains_key("signin") {
        row(
            "password sign-in (argon2id)",
            format!(
                "{} /s  {}  CPU busy {}%",
                num(f(&v, &["signin", "signin", "per_second"]), 1),
                lat(&["signin", "signin"]),
                num(f(&v, &["signin", "cpu_busy"]).map(|x| x * 100.0), 0)
            ),
        );
        row("  /healthz meanwhile (open loop)", lat(&["signin", "cheap_endpoint"]));
    }
    if r.contains_key("email") {
        row(
            &format!("email OTP send at {}/s", v["email"]["rate"]),
            format!("202 {}  errors {}", lat(&["email", "send"]), v["email"]["send"]["errors"]),
        );
        row(
            "  request to SMTP accept",
            format!(
                "p50 {} ms  p99 {} ms  first after {} ms  delivered {}/{}  lost {}  duplicated {}",
                num(f(&v, &["email", "accept_to_smtp", "p50_ms"]), 1),
                num(f(&v, &["email", "accept_to_smtp", "p99_ms"]), 1),
                num(f(&v, &["email", "first_delivery_ms"]), 0),
                v["email"]["delivered"],
                v["email"]["expected"],
                v["email"]["lost"],
                v["email"]["duplicated"]
            ),
        );
    }
    if r.contains_key("webhooks") {
        let w = &v["webhooks"];
        row(
            &format!("webhook fan-out: verify at {}/s", num(f(&v, &["webhooks", "rate"]), 0)),
            format!(
                "{}  errors {}  ({} endpoints)",
                lat(&["webhooks", "verify"]),
                w["verify"]["errors"],
                w["endpoints"]
            ),
        );
        row(
            "  event to receiver",
            format!(
                "p50 {} ms  p99 {} ms  max {} ms  first after {} ms",
                num(f(&v, &["webhooks", "event_to_receiver", "p50_ms"]), 1),
                num(f(&v, &["webhooks", "event_to_receiver", "p99_ms"]), 1),
                num(f(&v, &["webhooks", "event_to_receiver", "max_ms"]), 1),
                num(f(&v, &["webhooks", "first_delivery_ms"]), 0),
            ),
        );
        row(
            "  deliveries",
            format!(
                "delivered {}/{}  lost {}  duplicated {}  redelivered ids {}  bad signatures {}  unexpected {}",
                w["delivered"],
                w["expected"],
                w["lost"],
                w["duplicated"],
                w["redelivered_ids"],
                w["bad_signatures"],
                w["unexpected"]
            ),
        );
    }
    if r.contains_key("actors") {
        row(
            &format!("tenant actors ({} running)", v["actors"]["actors_running"]),
            format!(
                "{} KiB RSS per idle actor ({} → {} KiB)",
                num(f(&v, &["actors", "per_actor_kib"]), 2),
                v["actors"]["rss_before_kib"],
                v["actors"]["rss_after_kib"]
            ),
        );
        row(
            "  actor start (cold − warm p50)",
            format!(
                "{} ms  (cold p50 {} ms, warm p50 {} ms)",
                num(f(&v, &["actors", "start_cost_ms"]), 3),
                num(f(&v, &["actors", "cold_touch", "p50_ms"]), 3),
                num(f(&v, &["actors", "warm_touch", "p50_ms"]), 3)
            ),
        );
    }
    scale_rows(&mut row, &v);
    let _ = writeln!(out, "\n  {:<38} {:>10}  {:<12} holds", "target", "value", "goal");
    for t in targets(r) {
        let value = match t.value {
            Some(x) if t.unit.is_empty() => format!("{x:.3}"),
            Some(x) => format!("{x:.2} {}", t.unit),
            None => "-".into(),
        };
        // No value: a phase it needs did not run (or the target is only reported).
        let holds = match t.holds {
            Some(true) => "yes",
            Some(false) => "NO",
            // No value: its phase did not run.
            None if t.value.is_none() => "skipped",
            None => "",
        };
        let _ = writeln!(out, "  {:<38} {:>10}  {:<12} {holds}", t.name, value, t.goal);
    }
    out
}

/// The rows of the scale phase (`results["scale"]`), or one row saying it was skipped.
fn scale_rows(row: &mut impl FnMut(&str, String), v: &Value) {
    let s = &v["scale"];
    if s.is_null() {
        row("scale (big tables)", "skipped".into());
        return;
    }
    let g = |p: &[&str]| {
        let mut path = vec!["scale"];
        path.extend_from_slice(p);
        f(v, &path)
    };
    let z = &s["sizes"];
    row(
        "scale: bulk load",
        format!(
            "{} users / {} tenants / {} audit events / {} sessions in {} s, database {} GiB",
            z["users"],
            z["tenants"],
            z["audit"],
            z["sessions"],
            num(g(&["load", "secs"]), 1),
            num(g(&["load", "disk", "database_bytes"]).map(|b| b / 1_073_741_824.0), 2)
        ),
    );
    for (name, key) in [("sign-in (cheap hash)", "signin"), ("TOTP verify", "verify")] {
        row(
            &format!("scale: {name}, small → big"),
            format!(
                "{} → {} req/s  p99 {} → {} ms  ({} users)",
                num(g(&["small", key, "per_second"]), 0),
                num(g(&["big", key, "per_second"]), 0),
                num(g(&["small", key, "latency", "p99_ms"]), 2),
                num(g(&["big", key, "latency", "p99_ms"]), 2),
                z["probe_users"]
            ),
        );
    }
    for (name, key) in [("page 1", "first_page"), ("page 100 (cursor)", "deep_page")] {
        row(
            &format!("scale: GET audit-events {name}"),
            format!(
                "p50 {} ms  p99 {} ms  (sequential, {} per page)",
                num(g(&["audit", key, "p50_ms"]), 2),
                num(g(&["audit", key, "p99_ms"]), 2),
                s["audit"]["page_size"]
            ),
        );
    }
    // A purge seen in one sample only lasted at most one sample interval.
    let bound = if g(&["purge", "purge_secs"]).is_some_and(|x| x <= 0.051) { "<=" } else { "" };
    row(
        "scale: purge during verify open loop",
        format!(
            "{} rows in {}{} s ({}{} rows/s); asked {}/s, reached {}/s; left {} sessions, {} challenges",
            s["purge"]["purged"],
            bound,
            num(g(&["purge", "purge_secs"]), 2),
            if bound.is_empty() { "" } else { ">" },
            num(g(&["purge", "purge_rows_per_second"]), 0),
            s["purge"]["rate"],
            num(g(&["purge", "reached_per_second"]), 0),
            s["purge"]["expired_after"]["sessions"],
            s["purge"]["expired_after"]["challenges"]
        ),
    );
    row(
        "  verify during purge / before it",
        format!(
            "p99 {} / {} ms  (n {} / {})  errors {}",
            num(g(&["purge", "during_purge", "p99_ms"]), 2),
            num(g(&["purge", "before_purge", "p99_ms"]), 2),
            s["purge"]["during_purge"]["count"],
            s["purge"]["before_purge"]["count"],
            s["purge"]["verify"]["errors"]
        ),
    );
    row(
        "  lock waits (pg_stat_activity / 50 ms)",
        format!(
            "max {} waiting; {} of {} samples with a waiter; {} blocked by the purge",
            s["purge"]["sampler"]["max_lock_waiters"],
            s["purge"]["sampler"]["samples_with_lock_waiter"],
            s["purge"]["sampler"]["samples"],
            s["purge"]["sampler"]["blocked_by_delete"]
        ),
    );
}
