//! Logs: `tracing` to stderr, human-readable or JSON (`LATCHKEY_LOG_FORMAT`), filtered by
//! `RUST_LOG` (default `info`). Nothing logs a code, token, secret or password.

use latchkey_core::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber (once; later calls are ignored).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A log line that cannot be written (a closed pipe, a full disk) is lost, never a panic:
    // the service must keep answering and keep obeying SIGTERM.
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).log_internal_errors(false);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
