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
    // Library chatter stays at warn unless asked for.
    let default = format!("warn,wal_listener={level}");
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

/// The start line: versions and the effective settings, without secrets (passwords and tokens
/// are only said to be set; URL credentials are masked).
pub fn log_start(config: &crate::config::Config) {
    let db = &config.database;
    let p = &config.publisher;
    let auth = if p.creds_file.is_some() {
        "credsFile"
    } else if p.nkey_seed_file.is_some() {
        "nkeySeedFile"
    } else if p.user.is_some() {
        "user/password"
    } else if p.token.is_some() {
        "token"
    } else {
        "none"
    };
    let http = match config.listener.server_port {
        0 => "off".to_string(),
        port if config.listener.server_host.is_empty() => format!("*:{port}"),
        port => format!("{}:{port}", config.listener.server_host),
    };
    let script = config
        .scripts
        .path
        .as_ref()
        .map_or_else(|| "built-in default".to_string(), |p| p.display().to_string());
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        slot = %config.listener.slot_name,
        publication = %config.listener.publication,
        database = %format!("{}@{}:{}/{}", db.user, db.host, db.port, db.name),
        ssl_mode = crate::source::tls::effective_mode(db).as_str(),
        database_password = if db.password.is_some() { "set" } else { "none" },
        publisher = ?p.kind,
        nats = %crate::publish::display_address(&p.address),
        nats_auth = auth,
        nats_tls = p.enable_tls || p.tls_ca_file.is_some() || p.address.contains("tls://"),
        topic = %p.topic,
        script = %script,
        on_error = ?config.scripts.on_error,
        http = %http,
        "starting wal-listener"
    );
}
