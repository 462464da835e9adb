//! Typed, strict configuration.
//!
//! The file is YAML with the Go wal-listener's camelCase keys, so an existing `config.yml` keeps
//! working. Loading happens in four steps, each with errors that name the dotted key:
//!
//! 1. parse the YAML into a generic tree;
//! 2. walk the tree against [`SCHEMA`]: keys are matched case-insensitively (the Go version
//!    read its file through viper, which ignores case) and renamed to their canonical spelling;
//!    unknown keys are errors with a "did you mean"; keys the Go version knew that do not apply
//!    here are dropped with one warning each; every value is type-checked;
//! 3. apply `WAL_*` environment overrides — `WAL_` + the upper-cased key path joined by `_` —
//!    for every key in the schema, whether or not the file mentions it;
//! 4. deserialize into the typed structs below, then [`Config::validate`] cross-checks values.
//!
//! Secrets ([`Secret`]) have no `Serialize` and print as `***`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};

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
            filter: Filter::default(),
            topics_map: BTreeMap::new(),
        }
    }
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
    /// With `type: stdout`, confirm printed changes on the slot (off: a dry run leaves the
    /// slot where it was).
    pub confirm_stdout: bool,
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
            confirm_stdout: false,
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
    /// JSON lines on standard output (dry runs).
    Stdout,
}

impl PublisherKind {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            PublisherKind::Nats => "nats",
            PublisherKind::NatsCore => "nats-core",
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

/// What the loader noticed that is worth one warning line each (ignored Go keys).
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
        let parsed: Value = if text.trim().is_empty() {
            Value::Mapping(Mapping::new())
        } else {
            serde_yaml_ng::from_str(text).map_err(|source| ConfigError::Yaml {
                path: PathBuf::new(),
                source,
            })?
        };
        let mut warnings = Vec::new();
        let mut tree = match parsed {
            Value::Null => Mapping::new(),
            Value::Mapping(m) => normalize_section(m, SCHEMA, "", &mut warnings)?,
            _ => {
                return Err(invalid(
                    "the file must be a YAML mapping of sections (listener, database, publisher, …)",
                ));
            }
        };
        for (name, raw) in env {
            apply_env(&mut tree, name, raw)?;
        }
        let mut config: Config =
            serde_yaml_ng::from_value(Value::Mapping(tree)).map_err(|e| invalid(format!("{e}")))?;
        config.base_dir = base_dir;
        config.read_secret_files()?;
        config.validate()?;
        Ok((config, warnings))
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
        if self.database.host.is_empty() {
            return Err(invalid(
                "database.host is empty: give a host name, an IP address or a Unix socket directory",
            ));
        }
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
        for (table, actions) in &self.listener.filter.tables {
            for action in actions {
                if !["insert", "update", "delete", "truncate"].contains(&action.to_ascii_lowercase().as_str()) {
                    return Err(invalid(format!(
                        "listener.filter.tables.{table}: unknown action {action:?}; use insert, update, delete or truncate"
                    )));
                }
            }
        }
        if self.database.ssl_mode == SslMode::VerifyFull && self.database.host.parse::<std::net::IpAddr>().is_ok() {
            return Err(invalid(format!(
                "database.sslMode verify-full checks the host name, but database.host {} is an IP address: use the DNS name the certificate was issued for, or sslMode verify-ca",
                self.database.host
            )));
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

// ---------------------------------------------------------------------------------------------
// The schema: every key we know, its type, and the Go keys we accept but ignore.

/// What a key holds.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Section(&'static [(&'static str, Kind)]),
    Str,
    Int,
    Bool,
    Duration,
    /// `map<string, string>` (user-chosen keys).
    StrMap,
    /// `map<string, list<string>>` (user-chosen keys).
    ListMap,
    /// `list<string>`.
    StrList,
    /// A Go wal-listener key that does not apply here: accepted with a warning.
    Ignored(&'static str),
    /// One of these strings.
    Choice(&'static [&'static str]),
    /// Another spelling of the named sibling key (a Go wal-listener name).
    Alias(&'static str),
}

use Kind::*;

const SCHEMA: &[(&str, Kind)] = &[
    (
        "listener",
        Section(&[
            ("slotName", Str),
            ("publication", Str),
            ("serverHost", Str),
            ("serverPort", Int),
            ("heartbeatInterval", Duration),
            ("filter", Section(&[("tables", ListMap), ("messages", StrList)])),
            ("topicsMap", StrMap),
            (
                "ackTimeout",
                Ignored("publishing is pipelined and acknowledged by JetStream"),
            ),
            (
                "refreshConnection",
                Ignored("connections are re-established automatically with backoff"),
            ),
        ]),
    ),
    (
        "database",
        Section(&[
            ("host", Str),
            ("port", Int),
            ("name", Str),
            ("user", Str),
            ("password", Str),
            ("passwordFile", Str),
            (
                "sslMode",
                Choice(&["disable", "prefer", "require", "verify-ca", "verify-full"]),
            ),
            ("sslRootCert", Str),
            ("sslCert", Str),
            ("sslKey", Str),
            ("debug", Ignored("use logger.level: debug")),
        ]),
    ),
    (
        "publisher",
        Section(&[
            ("type", Choice(&["nats", "nats-core", "stdout"])),
            ("address", Str),
            ("topic", Str),
            ("topicPrefix", Str),
            ("credsFile", Str),
            ("nkeySeedFile", Str),
            ("user", Str),
            ("password", Str),
            ("passwordFile", Str),
            ("token", Str),
            ("tokenFile", Str),
            ("tlsCaFile", Str),
            ("tlsCertFile", Str),
            ("tlsKeyFile", Str),
            ("duplicateWindow", Duration),
            ("maxInFlight", Int),
            ("confirmStdout", Bool),
            // The Go version's TLS keys (used there for Kafka) mean the same for NATS here.
            ("enableTLS", Bool),
            ("caCert", Alias("tlsCaFile")),
            ("clientCert", Alias("tlsCertFile")),
            ("clientKey", Alias("tlsKeyFile")),
            ("pubSubProjectId", Ignored("only NATS is supported")),
        ]),
    ),
    (
        "scripts",
        Section(&[
            ("path", Str),
            ("watch", Bool),
            ("onError", Choice(&["deadLetter", "skip", "halt"])),
            ("deadLetterSubject", Str),
            ("instructionLimit", Int),
            ("memoryLimit", Int),
        ]),
    ),
    (
        "logger",
        Section(&[
            ("level", Choice(&["debug", "info", "warn", "error"])),
            ("fmt", Choice(&["json", "text"])),
            ("caller", Ignored("not supported")),
        ]),
    ),
    (
        "monitoring",
        Section(&[
            ("promAddr", Str),
            (
                "sentryDSN",
                Ignored("Sentry is not supported; errors go to the log and metrics"),
            ),
        ]),
    ),
];

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn key_text(key: &Value) -> Option<String> {
    match key {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Check a section against its schema, canonicalizing key spelling and checking value types.
fn normalize_section(
    map: Mapping,
    schema: &'static [(&'static str, Kind)],
    prefix: &str,
    warnings: &mut Warnings,
) -> Result<Mapping, ConfigError> {
    let mut out = Mapping::new();
    for (key, value) in map {
        let key = key_text(&key).ok_or_else(|| invalid(format!("{}: keys must be strings", join(prefix, "?"))))?;
        let Some((canonical, kind)) = schema.iter().find(|(k, _)| k.eq_ignore_ascii_case(&key)) else {
            let path = join(prefix, &key);
            let hint = did_you_mean(&key, schema.iter().map(|(k, _)| *k))
                .map(|s| format!(" (did you mean {}?)", join(prefix, s)))
                .unwrap_or_default();
            let known: Vec<&str> = schema
                .iter()
                .filter(|(_, k)| !matches!(k, Ignored(_) | Alias(_)))
                .map(|(k, _)| *k)
                .collect();
            return Err(invalid(format!(
                "unknown key {path}{hint}; known keys here: {}",
                known.join(", ")
            )));
        };
        let (canonical, kind) = match kind {
            Alias(target) => match schema.iter().find(|(k, _)| k == target) {
                Some((k, target_kind)) => (k, target_kind),
                None => (canonical, kind),
            },
            _ => (canonical, kind),
        };
        let path = join(prefix, canonical);
        if let Ignored(why) = kind {
            warnings.push(format!(
                "{path} is accepted for compatibility with the Go wal-listener but ignored: {why}"
            ));
            continue;
        }
        if out.contains_key(*canonical) {
            return Err(invalid(format!(
                "{path} is given twice (keys are case-insensitive; caCert, clientCert and clientKey are other names for tlsCaFile, tlsCertFile and tlsKeyFile)"
            )));
        }
        let value = check_value(value, *kind, &path, warnings)?;
        out.insert(Value::String((*canonical).to_string()), value);
    }
    Ok(out)
}

fn type_error(path: &str, expected: &str, got: &Value) -> ConfigError {
    let got = match got {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    };
    invalid(format!("{path} must be {expected}, found {got}"))
}

fn check_value(value: Value, kind: Kind, path: &str, warnings: &mut Warnings) -> Result<Value, ConfigError> {
    match (kind, value) {
        (Section(schema), Value::Mapping(m)) => Ok(Value::Mapping(normalize_section(m, schema, path, warnings)?)),
        (Section(_), Value::Null) => Ok(Value::Mapping(Mapping::new())),
        (Section(_), other) => Err(type_error(path, "a mapping", &other)),
        (Str, v @ Value::String(_)) => Ok(v),
        // YAML reads `password: 1234` as a number; a string field takes its text.
        (Str, Value::Number(n)) => Ok(Value::String(n.to_string())),
        (Str, Value::Bool(b)) => Ok(Value::String(b.to_string())),
        (Str, Value::Null) => Ok(Value::Null),
        (Choice(options), Value::String(s)) => choice(path, options, s),
        (Choice(_), other) => Err(type_error(path, "a string", &other)),
        (Str, other) => Err(type_error(path, "a string", &other)),
        (Int, Value::Number(n)) if n.is_u64() => Ok(Value::Number(n)),
        (Int, Value::String(s)) => parse_int(&s, path),
        (Int, other) => Err(type_error(path, "a non-negative whole number", &other)),
        (Bool, v @ Value::Bool(_)) => Ok(v),
        (Bool, Value::String(s)) => parse_bool(&s, path),
        (Bool, other) => Err(type_error(path, "true or false", &other)),
        (Duration, Value::String(s)) => {
            parse_duration(&s).map_err(|e| invalid(format!("{path}: {e}")))?;
            Ok(Value::String(s))
        }
        (Duration, other) => Err(type_error(path, "a duration such as 500ms, 10s or 2m", &other)),
        (StrMap, Value::Mapping(m)) => {
            let mut out = Mapping::new();
            for (k, v) in m {
                let k = key_text(&k).ok_or_else(|| invalid(format!("{path}: keys must be strings")))?;
                let v = check_value(v, Str, &format!("{path}.{k}"), warnings)?;
                out.insert(Value::String(k), v);
            }
            Ok(Value::Mapping(out))
        }
        (StrMap | ListMap, Value::Null) => Ok(Value::Mapping(Mapping::new())),
        (StrMap, other) => Err(type_error(path, "a mapping of names to strings", &other)),
        (ListMap, Value::Mapping(m)) => {
            let mut out = Mapping::new();
            for (k, v) in m {
                let k = key_text(&k).ok_or_else(|| invalid(format!("{path}: keys must be strings")))?;
                let item_path = format!("{path}.{k}");
                let list = match v {
                    Value::Sequence(items) => items
                        .into_iter()
                        .map(|item| check_value(item, Str, &item_path, warnings))
                        .collect::<Result<Vec<_>, _>>()?,
                    Value::Null => Vec::new(),
                    other => return Err(type_error(&item_path, "a list such as [insert, update]", &other)),
                };
                out.insert(Value::String(k), Value::Sequence(list));
            }
            Ok(Value::Mapping(out))
        }
        (ListMap, other) => Err(type_error(path, "a mapping of table names to action lists", &other)),
        (StrList, Value::Sequence(items)) => Ok(Value::Sequence(
            items
                .into_iter()
                .map(|item| check_value(item, Str, path, warnings))
                .collect::<Result<Vec<_>, _>>()?,
        )),
        (StrList, Value::Null) => Ok(Value::Null),
        (StrList, other) => Err(type_error(path, "a list such as [outbox, audit]", &other)),
        (Ignored(_) | Alias(_), v) => Ok(v),
    }
}

/// A value from a fixed set, named with the key and the set when it is not one of them.
fn choice(path: &str, options: &[&str], value: String) -> Result<Value, ConfigError> {
    if options.contains(&value.as_str()) {
        Ok(Value::String(value))
    } else {
        Err(invalid(format!(
            "{path} is {value:?}; use one of: {}",
            options.join(", ")
        )))
    }
}

fn parse_int(s: &str, path: &str) -> Result<Value, ConfigError> {
    s.trim()
        .parse::<u64>()
        .map(|n| Value::Number(n.into()))
        .map_err(|_| invalid(format!("{path} must be a non-negative whole number, found {s:?}")))
}

fn parse_bool(s: &str, path: &str) -> Result<Value, ConfigError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(Value::Bool(true)),
        "false" | "0" | "no" | "off" => Ok(Value::Bool(false)),
        _ => Err(invalid(format!("{path} must be true or false, found {s:?}"))),
    }
}

/// The environment variable that overrides a dotted key path.
fn env_name(path: &str) -> String {
    format!("WAL_{}", path.replace('.', "_").to_ascii_uppercase())
}

/// Every leaf key of the schema with its kind, as (dotted path, kind).
fn leaf_keys() -> Vec<(String, Kind)> {
    fn walk(schema: &'static [(&'static str, Kind)], prefix: &str, out: &mut Vec<(String, Kind)>) {
        for (key, kind) in schema {
            let path = join(prefix, key);
            match kind {
                Section(inner) => walk(inner, &path, out),
                Ignored(_) => {}
                _ => out.push((path, *kind)),
            }
        }
    }
    let mut out = Vec::new();
    walk(SCHEMA, "", &mut out);
    out
}

/// Apply one `WAL_*` variable; variables that name no key are left alone (the environment is
/// shared with other software).
fn apply_env(tree: &mut Mapping, name: &str, raw: &str) -> Result<(), ConfigError> {
    let leaves = leaf_keys();
    let Some((mut path, mut kind)) = leaves.iter().find(|(path, _)| env_name(path) == name).cloned() else {
        return Ok(());
    };
    if let Alias(target) = kind {
        let canonical = match path.rsplit_once('.') {
            Some((parent, _)) => join(parent, target),
            None => target.to_string(),
        };
        match leaves.iter().find(|(p, _)| *p == canonical) {
            Some((p, k)) => (path, kind) = (p.clone(), *k),
            None => return Ok(()),
        }
    }
    let kind = &kind;
    let value = match kind {
        Str => Value::String(raw.to_string()),
        Choice(options) => choice(name, options, raw.to_string())?,
        Int => parse_int(raw, name)?,
        Bool => parse_bool(raw, name)?,
        Duration => {
            parse_duration(raw).map_err(|e| invalid(format!("{name}: {e}")))?;
            Value::String(raw.to_string())
        }
        // A list: YAML/JSON text (`[outbox, audit]`) or plain comma-separated names.
        StrList => match serde_yaml_ng::from_str::<Value>(raw) {
            Ok(list @ Value::Sequence(_)) => check_value(list, *kind, name, &mut Vec::new())?,
            _ => Value::Sequence(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.to_string()))
                    .collect(),
            ),
        },
        StrMap | ListMap => {
            // Structured values come as YAML/JSON text: WAL_LISTENER_TOPICSMAP='{"public_users": "users"}'.
            let parsed: Value = serde_yaml_ng::from_str(raw)
                .map_err(|e| invalid(format!("{name} must hold a YAML or JSON mapping: {e}")))?;
            check_value(parsed, *kind, name, &mut Vec::new())?
        }
        Section(_) | Ignored(_) | Alias(_) => return Ok(()),
    };
    let mut parts: Vec<&str> = path.split('.').collect();
    let Some(leaf) = parts.pop() else { return Ok(()) };
    let mut node = tree;
    for part in parts {
        let key = Value::String(part.to_string());
        if !matches!(node.get(&key), Some(Value::Mapping(_))) {
            node.insert(key.clone(), Value::Mapping(Mapping::new()));
        }
        match node.get_mut(&key) {
            Some(Value::Mapping(m)) => node = m,
            _ => return Ok(()),
        }
    }
    node.insert(Value::String(leaf.to_string()), value);
    Ok(())
}

/// The closest known key, if it is close enough to be a typo.
fn did_you_mean<'a>(key: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let key = key.to_ascii_lowercase();
    candidates
        .map(|c| (strsim::levenshtein(&key, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Parse `500ms`, `10s`, `2m`, `1h`, or combinations like `1m30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    let bad = || format!("{text:?} is not a duration: write a number with a unit, like 500ms, 10s, 2m or 1h");
    if s.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let seconds = match unit {
            "ns" => number / 1e9,
            "us" | "µs" => number / 1e6,
            "ms" => number / 1e3,
            "s" => number,
            "m" => number * 60.0,
            "h" => number * 3600.0,
            _ => return Err(bad()),
        };
        total += Duration::try_from_secs_f64(seconds).map_err(|_| bad())?;
    }
    Ok(total)
}

/// Serde adapter for duration text.
mod duration_text {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
