//! Typed, strict configuration.
//!
//! The file is YAML with the Go wal-listener's camelCase keys, so an existing `config.yml` keeps
//! working. Loading happens in four steps, each with errors that name the dotted key:
//!
//! 1. parse the YAML into a generic tree;
//! 2. walk the tree against the schema (`schema.rs`): keys are matched case-insensitively (the Go version
//!    read its file through viper, which ignores case) and renamed to their canonical spelling;
//!    unknown keys are errors with a "did you mean"; keys the Go version knew that do not apply
//!    here are dropped with one warning each; Go v1 keys (`nats:`, `database.filter`,
//!    `logger.humanReadable`) are moved to their v2 place with a warning; every value is
//!    type-checked, and every problem of the file is reported at once;
//! 3. apply `WAL_*` environment overrides — `WAL_` + the upper-cased key path joined by `_` —
//!    for every key in the schema, whether or not the file mentions it; then resolve Go's
//!    `database.enableTLS` into `database.sslMode`;
//! 4. deserialize into the typed structs below, then [`Config::validate`] cross-checks values.
//!
//! Secrets ([`Secret`]) have no `Serialize` and print as `***`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};

mod duration;
mod schema;
#[cfg(test)]
mod tests;

use duration::duration_text;
pub use duration::parse_duration;
use schema::{apply_env, go_database_tls, normalize};

/// Everything the service is configured with.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Config {
    pub listener: Listener,
    pub database: Database,
    pub publisher: Publisher,
    pub scripts: Scripts,
    pub logger: Logger,
    pub monitoring: Monitoring,
    /// Where the file was read from; relative paths in it are resolved against its directory.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// `listener.*`: the replication slot and the YAML routing rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Listener {
    pub slot_name: String,
    pub publication: String,
    /// Interface address for the HTTP endpoint; empty = all interfaces.
    pub server_host: String,
    pub server_port: u16,
    #[serde(with = "duration_text")]
    pub heartbeat_interval: Duration,
    /// `/healthz` turns unhealthy when the slot's confirmed position has not moved for this
    /// long while the server's WAL grew past it; zero turns the check off.
    #[serde(with = "duration_text")]
    pub stall_timeout: Duration,
    /// Create the slot with `FAILOVER` (PostgreSQL 17+), or switch an existing one to it, so
    /// standbys with `sync_replication_slots` keep a copy that survives a failover.
    pub failover_slot: bool,
    /// `initial`: when the slot is created, backfill every table the filter selects (every
    /// published table without a filter) before the changes that follow (`crate::backfill`).
    pub snapshot: Snapshot,
    /// Rows read per backfill chunk (the memory a backfill holds is about one chunk).
    pub backfill_chunk_size: u32,
    pub filter: Filter,
    pub topics_map: BTreeMap<String, String>,
}

impl Default for Listener {
    fn default() -> Self {
        Listener {
            slot_name: "wal_listener".into(),
            publication: "wal-listener".into(),
            server_host: String::new(),
            server_port: 8080,
            heartbeat_interval: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(300),
            failover_slot: false,
            snapshot: Snapshot::Never,
            backfill_chunk_size: 5000,
            filter: Filter::default(),
            topics_map: BTreeMap::new(),
        }
    }
}

/// `listener.snapshot`: whether a new slot starts with a backfill of the existing rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Snapshot {
    #[default]
    Never,
    Initial,
}

/// `listener.filter`: the Go version's table/action filter, applied by the default script.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Filter {
    /// Table (bare = any schema, or `schema.table`) → allowed actions. Empty = every table.
    pub tables: BTreeMap<String, Vec<String>>,
    /// Prefixes of `pg_logical_emit_message` messages to publish; `None` = every message,
    /// an empty list = none.
    pub messages: Option<Vec<String>>,
}

/// `database.*`: where PostgreSQL is and who we are.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Database {
    pub host: String,
    pub port: u16,
    pub name: String,
    pub user: String,
    pub password: Option<Secret>,
    /// File holding the password (a mounted secret); read at start.
    pub password_file: Option<PathBuf>,
    pub ssl_mode: SslMode,
    pub ssl_root_cert: Option<PathBuf>,
    /// Client certificate (PEM) for certificate authentication.
    pub ssl_cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub ssl_key: Option<PathBuf>,
}

impl Default for Database {
    fn default() -> Self {
        Database {
            host: "localhost".into(),
            port: 5432,
            name: "postgres".into(),
            user: "postgres".into(),
            password: None,
            password_file: None,
            ssl_mode: SslMode::Prefer,
            ssl_root_cert: None,
            ssl_cert: None,
            ssl_key: None,
        }
    }
}

impl Database {
    /// The servers `database.host` names, in the order they are tried: one host, or a
    /// libpq-style list `primary:5432,standby:5433` (an entry without a port uses
    /// `database.port`; a Unix socket directory starts with `/`; an IPv6 address with a port
    /// is written `[::1]:5432`).
    pub fn servers(&self) -> Result<Vec<(String, u16)>, String> {
        let mut servers = Vec::new();
        for entry in self.host.split(',') {
            let entry = entry.trim();
            if entry.is_empty() {
                return Err(format!(
                    "database.host {:?} has an empty entry: list servers as host:port,host:port",
                    self.host
                ));
            }
            let server = if entry.starts_with('/') {
                (entry.to_string(), self.port)
            } else if let Some(rest) = entry.strip_prefix('[') {
                let (addr, tail) = rest.split_once(']').ok_or_else(|| {
                    format!("database.host entry {entry:?}: an IPv6 address in brackets lacks its ']'")
                })?;
                let port = match tail.strip_prefix(':') {
                    Some(port) => parse_port(entry, port)?,
                    None if tail.is_empty() => self.port,
                    None => return Err(format!("database.host entry {entry:?}: expected [address]:port")),
                };
                (addr.to_string(), port)
            } else {
                match entry.rsplit_once(':') {
                    // More than one ':' without brackets: a bare IPv6 address.
                    Some((host, port)) if !host.contains(':') => (host.to_string(), parse_port(entry, port)?),
                    _ => (entry.to_string(), self.port),
                }
            };
            servers.push(server);
        }
        Ok(servers)
    }

    /// The server(s) for messages: `host:port`, or the list as configured.
    pub fn address(&self) -> String {
        if self.is_list() {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether `database.host` lists more than one server.
    pub fn is_list(&self) -> bool {
        self.host.contains(',')
    }
}

fn parse_port(entry: &str, port: &str) -> Result<u16, String> {
    port.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("database.host entry {entry:?}: {port:?} is not a port number"))
}

/// `database.sslMode`, libpq's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// libpq's name for the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// `publisher.*`: where events go.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Publisher {
    #[serde(rename = "type")]
    pub kind: PublisherKind,
    pub address: String,
    pub topic: String,
    pub topic_prefix: String,
    pub creds_file: Option<PathBuf>,
    pub nkey_seed_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    pub token: Option<Secret>,
    pub token_file: Option<PathBuf>,
    /// Require TLS to NATS (the Go version's key); implied by `tlsCaFile` or a `tls://` URL.
    #[serde(rename = "enableTLS")]
    pub enable_tls: bool,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// JetStream duplicate window for a stream we create.
    #[serde(with = "duration_text")]
    pub duplicate_window: Duration,
    /// Messages published but not yet acknowledged, at most.
    pub max_in_flight: usize,
    /// Replicas of a stream we create (3 or 5 in a JetStream cluster).
    pub replicas: usize,
    /// With `type: stdout`, confirm printed changes on the slot (off: a dry run leaves the
    /// slot where it was).
    pub confirm_stdout: bool,
    /// RabbitMQ: the kind of the exchange `topic` (required with `type: rabbitmq`).
    pub exchange_kind: Option<ExchangeKind>,
    /// RabbitMQ: what to do with a message no queue is bound for.
    pub unroutable: Unroutable,
}

/// `publisher.exchangeKind` (RabbitMQ).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeKind {
    Topic,
    Direct,
    Fanout,
    Headers,
}

impl ExchangeKind {
    /// RabbitMQ's name for the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Topic => "topic",
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// `publisher.unroutable` (RabbitMQ): a message the exchange routes to no queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unroutable {
    /// Stop with an error; the change stays unconfirmed (the default: nothing is lost).
    Fail,
    /// Count it (`wal_listener_unroutable_dropped_total`) and go on.
    Drop,
}

impl Default for Publisher {
    fn default() -> Self {
        Publisher {
            kind: PublisherKind::Nats,
            address: "nats://localhost:4222".into(),
            topic: "wal_listener".into(),
            topic_prefix: String::new(),
            creds_file: None,
            nkey_seed_file: None,
            user: None,
            password: None,
            password_file: None,
            token: None,
            token_file: None,
            enable_tls: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            duplicate_window: Duration::from_secs(120),
            max_in_flight: 1024,
            replicas: 1,
            confirm_stdout: false,
            exchange_kind: None,
            unroutable: Unroutable::Fail,
        }
    }
}

/// `publisher.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PublisherKind {
    /// JetStream, every message acknowledged before its LSN is confirmed.
    Nats,
    /// Core NATS, no persistence.
    NatsCore,
    /// A RabbitMQ exchange, every message confirmed (publisher confirms) before its LSN is.
    Rabbitmq,
    /// JSON lines on standard output (dry runs).
    Stdout,
}

impl PublisherKind {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            PublisherKind::Nats => "nats",
            PublisherKind::NatsCore => "nats-core",
            PublisherKind::Rabbitmq => "rabbitmq",
            PublisherKind::Stdout => "stdout",
        }
    }
}

/// `scripts.*`: the Lua router.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Scripts {
    /// Entry script; `None` = the built-in default script.
    pub path: Option<PathBuf>,
    pub watch: bool,
    pub on_error: OnError,
    /// Subject for `onError: deadLetter`; default `<topic>.dead_letter`.
    pub dead_letter_subject: Option<String>,
    /// Lua VM instructions one `route` call may run.
    pub instruction_limit: u64,
    /// Memory cap of the Lua state, in bytes.
    pub memory_limit: u64,
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts {
            path: None,
            watch: true,
            on_error: OnError::DeadLetter,
            dead_letter_subject: None,
            instruction_limit: 1_000_000,
            memory_limit: 64 * 1024 * 1024,
        }
    }
}

/// `scripts.onError`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OnError {
    DeadLetter,
    Skip,
    Halt,
}

/// `logger.*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Logger {
    pub level: LogLevel,
    pub fmt: LogFormat,
}

impl Default for Logger {
    fn default() -> Self {
        Logger {
            level: LogLevel::Info,
            fmt: LogFormat::Json,
        }
    }
}

/// `logger.level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// `logger.fmt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

/// `monitoring.*`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Monitoring {
    /// Extra address serving `/metrics` (the Go version's Prometheus listener).
    pub prom_addr: Option<String>,
}

/// A password or token: never printed, never serialized.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for handing to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A configuration problem, naming the key (or file) and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source} (pass another file with -c/--config)")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid YAML: {source}")]
    Yaml {
        path: PathBuf,
        source: serde_yaml_ng::Error,
    },
    #[error("config: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

/// What the loader noticed that is worth one warning line each (ignored or moved Go keys).
pub type Warnings = Vec<String>;

impl Config {
    /// Read, check and resolve the file at `path`, applying `WAL_*` overrides from the process
    /// environment.
    pub fn load(path: &Path) -> Result<(Config, Warnings), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let env: Vec<(String, String)> = std::env::vars().filter(|(k, _)| k.starts_with("WAL_")).collect();
        // Relative paths in the file (scripts.path, certificates) are relative to it; keep the
        // directory absolute so watching it and resolving modules do not depend on the cwd.
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base_dir = parent.canonicalize().unwrap_or_else(|_| parent.to_path_buf());
        Self::from_yaml(&text, &env, base_dir).map_err(|e| match e {
            ConfigError::Yaml { source, .. } => ConfigError::Yaml {
                path: path.to_path_buf(),
                source,
            },
            other => other,
        })
    }

    /// Build a config from YAML text and `WAL_*` variables (the testable core of [`load`]).
    ///
    /// [`load`]: Config::load
    pub fn from_yaml(
        text: &str,
        env: &[(String, String)],
        base_dir: PathBuf,
    ) -> Result<(Config, Warnings), ConfigError> {
        let mut warnings = Vec::new();
        let mut tree = file_tree(text, &mut warnings)?;
        for (name, raw) in env {
            apply_env(&mut tree, name, raw)?;
        }
        go_database_tls(&mut tree, &mut warnings);
        let mut config: Config =
            serde_yaml_ng::from_value(Value::Mapping(tree)).map_err(|e| invalid(format!("{e}")))?;
        config.base_dir = base_dir;
        config.read_secret_files()?;
        config.validate()?;
        config.unused_publisher_keys(&mut warnings);
        Ok((config, warnings))
    }

    /// The file's settings written as a v2 file with canonical keys: Go v1 keys moved to
    /// their v2 place, Go's `database.enableTLS` resolved, ignored keys left out, and the
    /// warnings as comments on top. `WAL_*` variables are not applied. Secrets are not printed:
    /// a comment in their place says where to put them.
    pub fn v2_yaml(text: &str) -> Result<String, ConfigError> {
        let mut warnings = Vec::new();
        let mut tree = file_tree(text, &mut warnings)?;
        go_database_tls(&mut tree, &mut warnings);
        let mut ordered = Mapping::new();
        for section in schema::sections() {
            if let Some(value) = tree.remove(section) {
                ordered.insert(Value::String(section.into()), value);
            }
        }
        for (section, key) in SECRETS {
            if let Some(Value::Mapping(m)) = ordered.get_mut(*section)
                && let Some(value) = m.get_mut(*key)
                && !value.is_null()
            {
                *value = Value::String(format!("{SECRET_PLACEHOLDER}-{section}-{key}"));
            }
        }
        let body = if ordered.is_empty() {
            String::new()
        } else {
            serde_yaml_ng::to_string(&Value::Mapping(ordered)).map_err(|e| invalid(e.to_string()))?
        };
        let mut out = String::from(
            "# wal-listener configuration, printed by `wal-listener check --print-config`.\n# WAL_* environment variables are not included.\n",
        );
        if !warnings.is_empty() {
            out.push_str("# What changed from the old file (delete these lines once read):\n");
        }
        for warning in &warnings {
            out.push_str(&format!("# - {warning}\n"));
        }
        for line in body.lines() {
            let secret = SECRETS
                .iter()
                .find(|(section, key)| line.trim_start() == format!("{key}: {SECRET_PLACEHOLDER}-{section}-{key}"));
            match secret {
                Some((section, key)) => {
                    let indent = line.len() - line.trim_start().len();
                    out.push_str(&format!(
                        "{}# {key}: not printed (a secret): copy it from the old file, or use {key}File or WAL_{}_{}\n",
                        &line[..indent],
                        section.to_ascii_uppercase(),
                        key.to_ascii_uppercase(),
                    ));
                }
                None => {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        Ok(out)
    }

    /// Fill `password`/`token` from their `…File` keys (mounted secrets). The file's content
    /// minus a trailing line break is the secret; it never appears in an error.
    fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        let base = self.base_dir.clone();
        let db = &mut self.database;
        read_secret(
            &base,
            "database.password",
            &mut db.password,
            db.password_file.as_deref(),
        )?;
        let p = &mut self.publisher;
        read_secret(&base, "publisher.password", &mut p.password, p.password_file.as_deref())?;
        read_secret(&base, "publisher.token", &mut p.token, p.token_file.as_deref())?;
        Ok(())
    }

    /// A path from the config resolved against the config file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.base_dir.join(path)
    }

    /// Cross-field checks that the schema cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let slot = &self.listener.slot_name;
        if slot.is_empty()
            || slot.len() > 63
            || !slot
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(invalid(format!(
                "listener.slotName {slot:?} is not a valid replication slot name: use 1 to 63 lower-case letters, digits and underscores"
            )));
        }
        let publication = &self.listener.publication;
        if publication.is_empty() || publication.contains(',') || publication.contains('\0') {
            return Err(invalid(format!(
                "listener.publication {publication:?} is not usable: give a non-empty name without commas"
            )));
        }
        if self.listener.heartbeat_interval.is_zero() {
            return Err(invalid(
                "listener.heartbeatInterval must be greater than zero, e.g. 10s",
            ));
        }
        if self.database.host.trim().is_empty() {
            return Err(invalid(
                "database.host is empty: give a host name, an IP address or a Unix socket directory",
            ));
        }
        let servers = self.database.servers().map_err(invalid)?;
        if self.database.name.is_empty() || self.database.user.is_empty() {
            return Err(invalid("database.name and database.user must be set"));
        }
        let topic = &self.publisher.topic;
        if topic.is_empty() || !topic.bytes().all(is_subject_token_byte) {
            return Err(invalid(format!(
                "publisher.topic {topic:?} must be a single NATS subject token (no spaces, '.', '*', '>'); it names the stream and starts every subject"
            )));
        }
        let prefix = &self.publisher.topic_prefix;
        if prefix
            .bytes()
            .any(|b| b == b' ' || b == b'*' || b == b'>' || b.is_ascii_control())
        {
            return Err(invalid(format!(
                "publisher.topicPrefix {prefix:?} contains characters NATS forbids in subjects"
            )));
        }
        if self.publisher.address.trim().is_empty() {
            return Err(invalid(
                "publisher.address is empty: give a NATS URL such as nats://localhost:4222",
            ));
        }
        if self.publisher.kind == PublisherKind::Rabbitmq {
            self.validate_rabbitmq()?;
        }
        if !(1..=65_536).contains(&self.publisher.max_in_flight) {
            return Err(invalid(
                "publisher.maxInFlight must be between 1 and 65536 (1024 is a good default)",
            ));
        }
        if self.publisher.duplicate_window < Duration::from_secs(1) {
            return Err(invalid(
                "publisher.duplicateWindow must be at least 1s (2m or more recommended)",
            ));
        }
        if self.listener.snapshot == Snapshot::Initial && self.publisher.kind != PublisherKind::Nats {
            return Err(invalid(
                "listener.snapshot: initial needs publisher.type: nats (a backfill keeps its progress in a JetStream KV bucket); set listener.snapshot: never",
            ));
        }
        if !(1..=1_000_000).contains(&self.listener.backfill_chunk_size) {
            return Err(invalid(
                "listener.backfillChunkSize must be between 1 and 1000000 (5000 is a good default)",
            ));
        }
        for (table, actions) in &self.listener.filter.tables {
            for action in actions {
                if !["insert", "update", "delete", "truncate", "read"].contains(&action.to_ascii_lowercase().as_str()) {
                    return Err(invalid(format!(
                        "listener.filter.tables.{table}: unknown action {action:?}; use insert, update, delete, truncate or read"
                    )));
                }
            }
        }
        if self.database.ssl_mode == SslMode::VerifyFull
            && let Some((host, _)) = servers
                .iter()
                .find(|(host, _)| host.parse::<std::net::IpAddr>().is_ok())
        {
            return Err(invalid(format!(
                "database.sslMode verify-full checks the host name, but database.host {host} is an IP address: use the DNS name the certificate was issued for, or sslMode verify-ca"
            )));
        }
        if !(1..=5).contains(&self.publisher.replicas) {
            return Err(invalid(
                "publisher.replicas must be between 1 and 5 (JetStream's limit; 3 in a 3-node cluster)",
            ));
        }
        if self.database.ssl_cert.is_some() != self.database.ssl_key.is_some() {
            return Err(invalid(
                "database.sslCert and database.sslKey go together: give both (client certificate and its key) or neither",
            ));
        }
        let p = &self.publisher;
        if p.tls_cert_file.is_some() != p.tls_key_file.is_some() {
            return Err(invalid(
                "publisher.tlsCertFile and publisher.tlsKeyFile go together: give both (client certificate and its key) or neither",
            ));
        }
        if p.user.is_some() != p.password.is_some() {
            return Err(invalid(
                "publisher.user and publisher.password go together: give both or neither",
            ));
        }
        let methods: Vec<&str> = [
            (p.user.is_some(), "user/password"),
            (p.token.is_some(), "token"),
            (p.nkey_seed_file.is_some(), "nkeySeedFile"),
            (p.creds_file.is_some(), "credsFile"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        if methods.len() > 1 {
            return Err(invalid(format!(
                "publisher: choose one NATS authentication method, not {}",
                methods.join(" and ")
            )));
        }
        if self.scripts.instruction_limit < 1000 {
            return Err(invalid("scripts.instructionLimit must be at least 1000"));
        }
        if self.scripts.memory_limit < 1024 * 1024 {
            return Err(invalid("scripts.memoryLimit must be at least 1048576 (1 MiB)"));
        }
        Ok(())
    }

    /// `publisher.*` with `type: rabbitmq`: an AMQP URI, an exchange kind, no NATS-only keys.
    fn validate_rabbitmq(&self) -> Result<(), ConfigError> {
        let p = &self.publisher;
        let address = p.address.trim();
        let scheme = address.split("://").next().unwrap_or_default().to_ascii_lowercase();
        if address.contains(',') || !(scheme == "amqp" || scheme == "amqps") || !address.contains("://") {
            return Err(invalid(
                "publisher.address must be one AMQP URI with publisher.type: rabbitmq, such as amqp://user:password@host:5672/vhost (or amqps://… for TLS); the Go wal-listener's value works unchanged",
            ));
        }
        if p.exchange_kind.is_none() {
            return Err(invalid(
                "publisher.exchangeKind is required with publisher.type: rabbitmq (as in the Go wal-listener since v2.11): topic, direct, fanout or headers — the kind of the exchange publisher.topic, declared durable with it when missing",
            ));
        }
        for (set, key) in [
            (p.creds_file.is_some(), "credsFile"),
            (p.nkey_seed_file.is_some(), "nkeySeedFile"),
            (p.token.is_some(), "token"),
        ] {
            if set {
                return Err(invalid(format!(
                    "publisher.{key} is a NATS setting and does not apply to publisher.type: rabbitmq: put the RabbitMQ user and password in publisher.address (amqp://user:password@host/vhost) or in publisher.user and publisher.password"
                )));
            }
        }
        if p.tls_cert_file.is_some() {
            return Err(invalid(
                "publisher.tlsCertFile/tlsKeyFile (a client certificate) are not supported with publisher.type: rabbitmq; authenticate with a user and password over amqps:// (publisher.tlsCaFile sets the CA that verifies the server)",
            ));
        }
        Ok(())
    }

    /// Warnings for RabbitMQ keys set with another publisher type.
    fn unused_publisher_keys(&self, warnings: &mut Warnings) {
        let p = &self.publisher;
        if p.kind == PublisherKind::Rabbitmq {
            return;
        }
        if p.exchange_kind.is_some() {
            warnings.push(format!(
                "publisher.exchangeKind is a RabbitMQ setting and is ignored with publisher.type: {}",
                p.kind.as_str()
            ));
        }
        if p.unroutable != Unroutable::Fail {
            warnings.push(format!(
                "publisher.unroutable is a RabbitMQ setting and is ignored with publisher.type: {}",
                p.kind.as_str()
            ));
        }
    }

    /// The entry script's path resolved against the config file's directory.
    pub fn script_path(&self) -> Option<PathBuf> {
        self.scripts.path.as_ref().map(|p| self.base_dir.join(p))
    }

    /// Subject that failed events go to under `onError: deadLetter`.
    pub fn dead_letter_subject(&self) -> String {
        self.scripts
            .dead_letter_subject
            .clone()
            .unwrap_or_else(|| format!("{}.dead_letter", self.publisher.topic))
    }
}

/// The keys holding secrets, as (section, key), in printing order.
const SECRETS: &[(&str, &str)] = &[
    ("database", "password"),
    ("publisher", "password"),
    ("publisher", "token"),
];

/// What a secret's value is replaced with before printing (then the line becomes a comment).
const SECRET_PLACEHOLDER: &str = "wal-listener-secret-not-printed";

/// Parse the file and check it against the schema (steps 1 and 2).
fn file_tree(text: &str, warnings: &mut Warnings) -> Result<Mapping, ConfigError> {
    let parsed: Value = if text.trim().is_empty() {
        Value::Mapping(Mapping::new())
    } else {
        serde_yaml_ng::from_str(text).map_err(|source| ConfigError::Yaml {
            path: PathBuf::new(),
            source,
        })?
    };
    match parsed {
        Value::Null => Ok(Mapping::new()),
        Value::Mapping(m) => normalize(m, warnings),
        _ => Err(invalid(
            "the file must be a YAML mapping of sections (listener, database, publisher, …)",
        )),
    }
}

fn read_secret(base: &Path, key: &str, value: &mut Option<Secret>, file: Option<&Path>) -> Result<(), ConfigError> {
    let Some(file) = file else { return Ok(()) };
    if value.is_some() {
        return Err(invalid(format!("{key} and {key}File are both set: keep one")));
    }
    let text = std::fs::read_to_string(base.join(file))
        .map_err(|e| invalid(format!("{key}File: cannot read {}: {e}", file.display())))?;
    let secret = text.trim_end_matches(['\r', '\n']);
    if secret.is_empty() {
        return Err(invalid(format!("{key}File {} is empty", file.display())));
    }
    *value = Some(Secret(secret.to_string()));
    Ok(())
}

fn is_subject_token_byte(b: u8) -> bool {
    !(b == b'.' || b == b'*' || b == b'>' || b == b' ' || b.is_ascii_control())
}
