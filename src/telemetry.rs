//! Logging setup (`tracing`): `logger.level` and `logger.fmt` (json | text), to stderr.
//!
//! One line per significant event (start, slot created, reconnect, reload, error); never one
//! line per published event at `info`. `RUST_LOG`, when set, overrides `logger.level`.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogLevel, Logger};

/// Install the global subscriber. Safe to call once; later calls are ignored.
pub fn init(logger: &Logger) {
    let level = match logger.level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    };
    // Library chatter stays at warn unless asked for. lapin logs every connection failure at
    // error level — a login refused, a broker restart — each of which the service reports
    // itself, once, with the setting to change: its lines would only repeat ours.
    let default = format!("warn,lapin=off,wal_listener={level}");
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only on a terminal: a log file or a container log must stay plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match logger.fmt {
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
