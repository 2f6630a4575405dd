//! `latchkey`: the multi-tenant two-factor authentication service.
//!
//! - `latchkey serve` runs the HTTP API and the mail worker in one process (embedded
//!   defaults: SQLite, embedded queue, `.eml` outbox; `--no-worker` for the API alone);
//! - `latchkey worker` runs the mail worker alone;
//! - `latchkey migrate` runs the database migrations;
//! - `latchkey tenant create` creates a tenant and its first admin;
//! - `latchkey keys status` / `latchkey keys rotate`: sealed values per server key, and
//!   re-sealing them with the current key (DESIGN.md 5.8);
//! - `latchkey config` prints the effective configuration (secrets redacted).

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use actix::Arbiter;
use clap::{Parser, Subcommand};
use latchkey::app::{Core, StartError};
use latchkey::{config, logging};
use latchkey_core::{Config, SystemClock};
use latchkey_tenant::{MemoryOutbox, NewUser, RequestCtx};

#[derive(Parser)]
#[command(name = "latchkey", version, about = "Multi-tenant two-factor authentication service")]
struct Cli {
    /// A TOML file with the same keys as the environment variables (default: ./latchkey.toml
    /// if present). The environment wins.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API and, unless --no-worker, the mail worker.
    Serve {
        /// Run the API only (mail is delivered by `latchkey worker` processes).
        #[arg(long)]
        no_worker: bool,
        /// HTTP worker threads (default: one per core).
        #[arg(long, default_value_t = 0)]
        http_workers: usize,
    },
    /// Run the mail worker only.
    Worker,
    /// Run the database migrations and exit.
    Migrate,
    /// Manage tenants.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Print the effective configuration (secrets redacted).
    Config,
    /// The server key: its check, and rotation to a new key.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print the fingerprints of the configured keys and of the database's key, and how many
    /// sealed values each key sealed.
    Status,
    /// Re-seal every sealed value with LATCHKEY_SECRET_KEY (values sealed by the keys of
    /// LATCHKEY_PREVIOUS_SECRET_KEYS). Resumable, in batches, safe while serving.
    Rotate {
        /// Rows read per batch.
        #[arg(long, default_value_t = 500)]
        batch: i64,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant and its first admin. The password comes from standard input with
    /// --admin-password-stdin, else from LATCHKEY_ADMIN_PASSWORD; it is never echoed.
    Create {
        /// Slug users type at sign-in.
        #[arg(long)]
        slug: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// Email of the first admin.
        #[arg(long)]
        admin_email: String,
        /// Display name of the first admin.
        #[arg(long, default_value = "Admin")]
        admin_name: String,
        /// Read the admin password from standard input (one line).
        #[arg(long)]
        admin_password_stdin: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("latchkey: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init(config.log_format);
    for unknown in config::unknown_variables() {
        tracing::warn!(variable = %unknown, "ignoring an environment variable that is not a configuration key");
    }
    let result = actix_rt::System::new().block_on(run(cli.command, config));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "latchkey stopped");
            eprintln!("latchkey: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One-shot commands use a single connection: the pool then never opens connections in the
/// background, which could still be handshaking (libpq + OpenSSL) when the process exits.
fn one_connection(mut config: Config) -> Config {
    config.db_pool_size = 1;
    config
}

async fn run(command: Command, config: Config) -> Result<(), StartError> {
    match command {
        Command::Config => {
            // A closed pipe (`latchkey config | head`) is not an error.
            let _ = writeln!(std::io::stdout(), "{:#?}", config.effective());
            Ok(())
        }
        Command::Migrate => {
            Core::open(one_connection(config), Arc::new(SystemClock))?;
            let _ = writeln!(std::io::stdout(), "migrations are up to date");
            Ok(())
        }
        Command::Tenant {
            command: TenantCommand::Create { slug, name, admin_email, admin_name, admin_password_stdin },
        } => {
            let password = zeroize::Zeroizing::new(if admin_password_stdin {
                let mut line = String::new();
                std::io::stdin().read_to_string(&mut line).map_err(|e| StartError::Other(format!("stdin: {e}")))?;
                line.trim_end_matches(['\r', '\n']).to_owned()
            } else {
                std::env::var("LATCHKEY_ADMIN_PASSWORD").map_err(|_| {
                    StartError::Other("give the password with --admin-password-stdin or LATCHKEY_ADMIN_PASSWORD".into())
                })?
            });
            let core = Core::open(one_connection(config), Arc::new(SystemClock))?;
            let service = core.service(Arc::new(MemoryOutbox::default()), Arbiter::current())?;
            let ctx = RequestCtx::at(core.clock.now());
            let admin = NewUser {
                email: admin_email,
                name: admin_name,
                role: latchkey_core::Role::Admin,
                password: password.to_string(),
            };
            let (tenant, user) =
                service.create_tenant(&ctx, &slug, &name, admin).await.map_err(|e| StartError::Other(e.to_string()))?;
            let _ = writeln!(
                std::io::stdout(),
                "created tenant {} ({}) with admin {} ({})",
                tenant.slug,
                tenant.id,
                user.email,
                user.id
            );
            Ok(())
        }
        Command::Keys { command } => {
            let core = Core::open(one_connection(config), Arc::new(SystemClock))?;
            let mut out = std::io::stdout();
            let show = |out: &mut std::io::Stdout, core: &Core| -> Result<(), StartError> {
                let st = latchkey::keys::status(&core.store)?;
                let current = core.keys.current_id();
                let _ = writeln!(out, "current key (LATCHKEY_SECRET_KEY): {current}");
                for id in core.keys.previous_ids() {
                    let _ = writeln!(out, "previous key (LATCHKEY_PREVIOUS_SECRET_KEYS): {id}");
                }
                let _ = writeln!(out, "sealed values per key:");
                if st.counts.is_empty() {
                    let _ = writeln!(out, "  (none)");
                }
                for (key, cols) in &st.counts {
                    let name = match key {
                        Some(k) if *k == current.fingerprint() => format!("{k} (current)"),
                        Some(k) => format!("{k} (previous)"),
                        None => "no key recorded (sealed before key ids; re-sealed by rotate)".to_owned(),
                    };
                    let total: i64 = cols.values().sum();
                    let detail: Vec<String> = cols.iter().map(|(c, n)| format!("{c} {n}")).collect();
                    let _ = writeln!(out, "  {name}: {total} ({})", detail.join(", "));
                }
                let _ = writeln!(out, "to re-seal with the current key: {}", st.to_rotate(current));
                Ok(())
            };
            match command {
                KeysCommand::Status => show(&mut out, &core),
                KeysCommand::Rotate { batch } => {
                    let store = core.store.clone();
                    let keys = core.keys.clone();
                    let done = tokio::task::spawn_blocking(move || {
                        latchkey::keys::rotate(&store, &keys, batch, |column, so_far| {
                            let _ = writeln!(
                                std::io::stdout(),
                                "{}: re-sealed {} so far ({} already current, {} changed meanwhile, {} unreadable)",
                                column.name(),
                                so_far.resealed,
                                so_far.current,
                                so_far.skipped,
                                so_far.unreadable
                            );
                        })
                    })
                    .await
                    .map_err(|e| StartError::Other(e.to_string()))??;
                    let _ = writeln!(
                        out,
                        "rotation done: {} re-sealed, {} already current, {} changed meanwhile, {} unreadable",
                        done.resealed, done.current, done.skipped, done.unreadable
                    );
                    show(&mut out, &core)?;
                    if done.unreadable > 0 {
                        return Err(StartError::Other(format!(
                            "{} sealed value(s) could not be opened with any configured key",
                            done.unreadable
                        )));
                    }
                    Ok(())
                }
            }
        }
        Command::Serve { no_worker, http_workers } => serve(config, !no_worker, http_workers).await,
        Command::Worker => worker(config).await,
    }
}

/// The API, and the mail worker unless `with_worker` is false. On SIGTERM/SIGINT the
/// server stops accepting, finishes in-flight requests (within the shutdown timeout), then
/// the worker finishes its in-flight jobs; queued jobs stay queued; the exit code is 0.
async fn serve(config: Config, with_worker: bool, http_workers: usize) -> Result<(), StartError> {
    let listen = config.listen;
    let core = Core::open(config, Arc::new(SystemClock))?;
    let (queue, mail) = core.open_mail().await?;
    let actors = Arbiter::new();
    let service = core.service(Arc::new(queue.clone()), actors.handle())?;
    let listener = TcpListener::bind(listen)
        .map_err(|e| StartError::Other(format!("LATCHKEY_LISTEN: cannot listen on {listen}: {e}")))?;
    core.spawn_housekeeping(service.clone());
    let server = core.serve_http(service, listener, http_workers)?;
    let handle = server.handle();
    let (stop_worker, worker_stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = with_worker.then(|| {
        let core = core.clone();
        let queue = queue.clone();
        tokio::spawn(async move {
            core.run_worker(queue, mail, async move {
                let _ = worker_stopped.await;
            })
            .await
        })
    });
    let draining = core.draining.clone();
    actix_rt::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: draining connections");
        // Answers from now on close their connections; then stop accepting and wait for the
        // open connections to end (within LATCHKEY_SHUTDOWN_TIMEOUT_SECS).
        draining.store(true, std::sync::atomic::Ordering::Relaxed);
        handle.stop(true).await;
    });
    tracing::info!(%listen, worker = with_worker, queue = queue.backend_name(), "latchkey is serving");
    let served = server.await.map_err(|e| StartError::Other(e.to_string()));
    let _ = stop_worker.send(());
    if let Some(worker) = worker {
        match worker.await {
            Ok(result) => result?,
            Err(e) => return Err(StartError::Other(format!("mail worker: {e}"))),
        }
    }
    queue.close().await;
    actors.stop();
    served
}

/// The mail worker alone, with `/metrics`, `/healthz` and `/readyz` on `LATCHKEY_LISTEN`.
async fn worker(config: Config) -> Result<(), StartError> {
    let listen = config.listen;
    let core = Core::open(config, Arc::new(SystemClock))?;
    let (queue, mail) = core.open_mail().await?;
    let listener = TcpListener::bind(listen)
        .map_err(|e| StartError::Other(format!("LATCHKEY_LISTEN: cannot listen on {listen}: {e}")))?;
    let server = core.serve_worker_http(queue.clone(), listener)?;
    let handle = server.handle();
    actix_rt::spawn(server);
    tracing::info!(%listen, queue = queue.backend_name(), "latchkey worker is running");
    let result = core.run_worker(queue.clone(), mail, shutdown_signal()).await;
    handle.stop(true).await;
    queue.close().await;
    result
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
