//! The processes under test: the `latchkey` binary (built here in release mode and run with
//! a clean environment) and the bare actix-web hello-world of limit L2 (this binary again,
//! `latchkey-bench hello`).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::BenchResult;
use crate::http::{Conn, get};

/// The workspace root (this crate lives in `crates/latchkey-bench`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The directory of this executable (`target/release`), where cargo puts `latchkey` too.
pub fn bin_dir() -> BenchResult<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.parent().ok_or("the executable has no directory")?.to_path_buf())
}

/// Builds the `latchkey` binary in release mode (`cargo build --release -p latchkey`) and
/// returns its path.
pub fn build_latchkey() -> BenchResult<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "-p", "latchkey", "--bin", "latchkey"])
        .current_dir(workspace_root())
        .status()?;
    if !status.success() {
        return Err(format!("cargo build of latchkey failed: {status}").into());
    }
    let bin = bin_dir()?.join("latchkey");
    if !bin.exists() {
        return Err(format!("{} not found after the build", bin.display()).into());
    }
    Ok(bin)
}

/// A free port on 127.0.0.1.
pub fn free_addr() -> BenchResult<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A running child process with an HTTP address.
#[derive(Debug)]
pub struct Process {
    child: Child,
    /// Its address.
    pub addr: SocketAddr,
    /// What it is, for messages.
    pub name: String,
}

impl Process {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `GET path` answers 200 (at most `within`).
    pub async fn wait_ready(&mut self, path: &str, within: Duration) -> BenchResult<()> {
        let until = Instant::now() + within;
        let request = get(&self.addr.to_string(), path, None);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(format!("{} exited during start-up: {status}", self.name).into());
            }
            if let Ok(mut c) = Conn::connect(self.addr).await
                && let Ok(r) = c.send(&request).await
                && r.status == 200
            {
                return Ok(());
            }
            if Instant::now() > until {
                return Err(format!("{} did not become ready within {within:?}", self.name).into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Resident memory (`VmRSS`) in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Stops the process: SIGTERM, then SIGKILL after 15 s.
    pub fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How to run `latchkey`.
#[derive(Debug, Clone)]
pub struct LatchkeyEnv {
    /// The binary.
    pub bin: PathBuf,
    /// `LATCHKEY_*` variables (and `RUST_LOG`).
    pub vars: Vec<(String, String)>,
    /// Where its output goes.
    pub log: PathBuf,
}

impl LatchkeyEnv {
    fn command(&self) -> BenchResult<Command> {
        let mut cmd = Command::new(&self.bin);
        cmd.env_clear();
        for keep in ["PATH", "HOME", "LANG"] {
            if let Ok(v) = std::env::var(keep) {
                cmd.env(keep, v);
            }
        }
        cmd.envs(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        cmd.stdout(Stdio::from(log.try_clone()?)).stderr(Stdio::from(log)).stdin(Stdio::null());
        Ok(cmd)
    }

    /// `latchkey migrate`.
    pub fn migrate(&self) -> BenchResult<()> {
        let status = self.command()?.arg("migrate").status()?;
        if !status.success() {
            return Err(format!("latchkey migrate failed ({status}); see {}", self.log.display()).into());
        }
        Ok(())
    }

    /// `latchkey serve --http-workers N` on `addr`, ready.
    pub async fn serve(&self, addr: SocketAddr, workers: usize) -> BenchResult<Process> {
        let child = self
            .command()?
            .env("LATCHKEY_LISTEN", addr.to_string())
            .args(["serve", "--http-workers", &workers.to_string()])
            .spawn()?;
        let mut p = Process { child, addr, name: "latchkey serve".into() };
        if let Err(e) = p.wait_ready("/readyz", Duration::from_secs(60)).await {
            p.stop();
            return Err(format!("{e}; see {}", self.log.display()).into());
        }
        Ok(p)
    }
}

/// Starts the hello-world server of L2 (this executable, `hello ADDR WORKERS`).
pub async fn hello(workers: usize) -> BenchResult<Process> {
    let addr = free_addr()?;
    let child = Command::new(std::env::current_exe()?)
        .args(["hello", &addr.to_string(), &workers.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut p = Process { child, addr, name: "hello-world".into() };
    p.wait_ready("/", Duration::from_secs(20)).await?;
    Ok(p)
}

/// Runs the hello-world server (the `hello` subcommand): `GET /` answers `hello world`,
/// on actix-web with its defaults and `workers` threads. Runs until killed.
pub fn run_hello(addr: &str, workers: usize) -> std::io::Result<()> {
    use actix_web::{App, HttpResponse, HttpServer, web};
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(|| App::new().route("/", web::get().to(|| async { HttpResponse::Ok().body("hello world") })))
            .workers(workers.max(1))
            .bind(addr)?
            .run()
            .await
    })
}

/// The value of the Prometheus sample `name` (first match, labels included in `name`).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        (key == name).then(|| value.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_samples() {
        let text = "# HELP x\nlatchkey_tenant_actors 42\nfoo{a=\"b\"} 1.5\n";
        assert_eq!(metric(text, "latchkey_tenant_actors"), Some(42.0));
        assert_eq!(metric(text, "foo{a=\"b\"}"), Some(1.5));
        assert_eq!(metric(text, "bar"), None);
    }
}
