//! The schema: every key we know, its type, and the Go keys we accept but ignore or read under
//! their v2 name; the walk that checks a YAML tree against it (case-insensitive keys,
//! did-you-mean, type checks, every problem of a file reported at once), the Go settings whose
//! meaning spans keys (`database.enableTLS`), and the `WAL_*` environment overrides.

use serde_yaml_ng::{Mapping, Value};

use super::{ConfigError, Warnings, invalid, parse_duration};

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
    /// A Go v1 key whose setting lives elsewhere since v2: read there, with a warning.
    Moved(&'static Move),
    /// A Go v1 section whose keys are all moved or ignored; never written back.
    Legacy(&'static [(&'static str, Kind)]),
}

/// Where a v1 key's value goes, and why.
#[derive(Debug)]
struct Move {
    /// The v2 key (dotted path).
    to: &'static str,
    /// What the value must be, checked where the user wrote it.
    kind: Kind,
    /// The value in the v2 key's terms.
    convert: fn(Value) -> Value,
    /// The warning's explanation of what changed.
    why: &'static str,
}

fn same(v: Value) -> Value {
    v
}

/// `logger.humanReadable: true` was logrus' text formatter.
fn human_readable(v: Value) -> Value {
    Value::String(if v.as_bool() == Some(true) { "text" } else { "json" }.into())
}

const FILTER: &[(&str, Kind)] = &[("tables", ListMap), ("messages", StrList)];

const DATABASE_FILTER: Move = Move {
    to: "listener.filter",
    kind: Section(FILTER),
    convert: same,
    why: "the Go version moved the table filter from database: to listener: in v2",
};

const DATABASES_FILTER: Move = Move {
    to: "listener.filter",
    kind: Section(FILTER),
    convert: same,
    why: "`databases:` is a misspelling of `database:` in the Go v1 README; the Go version ignored it and published nothing, here the filter applies as intended",
};

const NATS_ADDRESS: Move = Move {
    to: "publisher.address",
    kind: Str,
    convert: same,
    why: "v2 names the destination publisher:",
};

const NATS_TOPIC_PREFIX: Move = Move {
    to: "publisher.topicPrefix",
    kind: Str,
    convert: same,
    why: "v2 names the destination publisher:",
};

const HUMAN_READABLE: Move = Move {
    to: "logger.fmt",
    kind: Bool,
    convert: human_readable,
    why: "humanReadable: true is logger.fmt: text, false is logger.fmt: json",
};

/// The Go v2.11 example file's snake_case TLS keys: its loader never read them (its keys are
/// `enableTLS`, `clientCert`, `clientKey`, `caCert`, for Kafka), so they must not turn anything on.
const SNAKE_TLS: &str = "the Go example file has this snake_case key, but the Go version never read it (its loader knows enableTLS, clientCert, clientKey and caCert, used for Kafka only), so it changed nothing there and changes nothing here: delete it. TLS to NATS is set with publisher.enableTLS, tlsCaFile, tlsCertFile and tlsKeyFile";

const NATS_STREAMING: &str = "a NATS Streaming setting; NATS Streaming (end-of-life) is replaced by JetStream, which needs no cluster or client id: delete it";

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
            ("stallTimeout", Duration),
            ("failoverSlot", Bool),
            ("snapshot", Choice(&["never", "initial"])),
            ("backfillChunkSize", Int),
            ("filter", Section(FILTER)),
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
            // Go's meaning: false = no TLS whatever sslMode says; resolved by `go_database_tls`.
            ("enableTLS", Bool),
            ("debug", Ignored("use logger.level: debug")),
            ("filter", Moved(&DATABASE_FILTER)),
        ]),
    ),
    (
        "publisher",
        Section(&[
            ("type", Choice(&["nats", "nats-core", "rabbitmq", "stdout"])),
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
            ("replicas", Int),
            ("confirmStdout", Bool),
            // The Go version's TLS keys (used there for Kafka) mean the same for NATS here.
            ("enableTLS", Bool),
            ("caCert", Alias("tlsCaFile")),
            ("clientCert", Alias("tlsCertFile")),
            ("clientKey", Alias("tlsKeyFile")),
            (
                "pubSubProjectId",
                Ignored("Google Pub/Sub is not supported (NATS and RabbitMQ are)"),
            ),
            (
                "messageKeyFrom",
                Ignored(
                    "it sets the Kafka message key and NATS messages have no key; to carry a column in a subject or header, use a script (wal.default_route, headers)",
                ),
            ),
            // RabbitMQ (type: rabbitmq); warned about with another type (`Config::from_yaml`).
            ("exchangeKind", Choice(&["topic", "direct", "fanout", "headers"])),
            ("unroutable", Choice(&["fail", "drop"])),
            ("enable_tls", Ignored(SNAKE_TLS)),
            ("client_cert", Ignored(SNAKE_TLS)),
            ("client_key", Ignored(SNAKE_TLS)),
            ("ca_cert", Ignored(SNAKE_TLS)),
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
            ("caller", Ignored("log lines carry no source location: delete it")),
            ("humanReadable", Moved(&HUMAN_READABLE)),
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
    // Go v1 (NATS Streaming): publisher: was nats:.
    (
        "nats",
        Legacy(&[
            ("address", Moved(&NATS_ADDRESS)),
            ("topicPrefix", Moved(&NATS_TOPIC_PREFIX)),
            ("clusterID", Ignored(NATS_STREAMING)),
            ("clientID", Ignored(NATS_STREAMING)),
        ]),
    ),
    // The Go v1 README's filter example, copied by users.
    ("databases", Legacy(&[("filter", Moved(&DATABASES_FILTER))])),
];

/// The sections a v2 file has, in the order they are printed.
pub(super) fn sections() -> impl Iterator<Item = &'static str> {
    SCHEMA.iter().filter(|(_, k)| matches!(k, Section(_))).map(|(k, _)| *k)
}

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

/// What a walk over a file found besides the canonical tree.
#[derive(Default)]
struct Walk {
    warnings: Warnings,
    /// Every problem of the file, so one run reports them all.
    errors: Vec<String>,
    /// v1 keys to move: (where they were written, where they go, the converted value).
    moves: Vec<(String, &'static Move, Value)>,
    /// v1 sections the file has.
    legacy: Vec<&'static str>,
}

/// Check a whole file's tree against the schema: canonical key spellings, types, warnings for
/// Go keys that do not apply, v1 keys moved to their v2 place. Every problem in the file is
/// reported in one error.
pub(super) fn normalize(map: Mapping, warnings: &mut Warnings) -> Result<Mapping, ConfigError> {
    let mut walk = Walk::default();
    let mut tree = normalize_section(map, SCHEMA, "", &mut walk);
    let mut moved_to: Vec<(&str, String)> = Vec::new();
    for (from, mv, value) in std::mem::take(&mut walk.moves) {
        if let Some((_, other)) = moved_to.iter().find(|(to, _)| *to == mv.to) {
            walk.errors.push(format!(
                "{other} and {from} are both set and both mean {}: keep one, written as {}",
                mv.to, mv.to
            ));
            continue;
        }
        if get_path(&tree, mv.to).is_some() {
            walk.errors.push(format!(
                "{from} and {} are both set: {from} is the Go v1 place of {}; keep only {}",
                mv.to, mv.to, mv.to
            ));
            continue;
        }
        let value = (mv.convert)(value);
        let shown = match &value {
            Value::String(s) => format!("{}: {s}", mv.to),
            _ => mv.to.to_string(),
        };
        walk.warnings.push(format!(
            "{from} is read as {shown} ({}); write {shown} instead (`wal-listener check --print-config` prints the whole file in v2 form)",
            mv.why
        ));
        insert_path(&mut tree, mv.to, value);
        moved_to.push((mv.to, from));
    }
    if walk.legacy.contains(&"nats") {
        v1_nats(&mut tree, &mut walk.warnings);
    }
    warnings.append(&mut walk.warnings);
    match walk.errors.len() {
        0 => Ok(tree),
        1 => Err(invalid(walk.errors.remove(0))),
        n => Err(invalid(format!("{n} problems:\n  {}", walk.errors.join("\n  ")))),
    }
}

/// A v1 `nats:` section: `publisher.type: nats` (JetStream) is implied, and subjects change.
fn v1_nats(tree: &mut Mapping, warnings: &mut Warnings) {
    if get_path(tree, "publisher.type").is_none() {
        insert_path(tree, "publisher.type", Value::String("nats".into()));
    }
    let text = |path: &str, default: &str| match get_path(tree, path) {
        Some(Value::String(s)) => s.clone(),
        _ => default.to_string(),
    };
    let topic = text("publisher.topic", "wal_listener");
    let prefix = text("publisher.topicPrefix", "");
    warnings.push(format!(
        "nats: is the Go v1 section for NATS Streaming (end-of-life); it is read as publisher: with type: nats, which is JetStream. Subjects change: v1 published each change to the channel <topicPrefix><schema>_<table> ({prefix}public_users for public.users); now it goes to <topic>.<topicPrefix><schema>_<table> ({topic}.{prefix}public_users) in the JetStream stream {topic}, so consumers must move to that stream. Write publisher: with type: nats and the keys above; to keep v1 names in the last subject token use listener.topicsMap or a script (README: Migrating from the Go wal-listener)"
    ));
}

/// The value at a dotted path.
fn get_path<'a>(tree: &'a Mapping, path: &str) -> Option<&'a Value> {
    let mut node = tree;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let value = node.get(part)?;
        if parts.peek().is_none() {
            return Some(value);
        }
        node = value.as_mapping()?;
    }
    None
}

/// Set the value at a dotted path, creating sections on the way.
fn insert_path(tree: &mut Mapping, path: &str, value: Value) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let Some(leaf) = parts.pop() else { return };
    let mut node = tree;
    for part in parts {
        let key = Value::String(part.to_string());
        if !matches!(node.get(&key), Some(Value::Mapping(_))) {
            node.insert(key.clone(), Value::Mapping(Mapping::new()));
        }
        match node.get_mut(&key) {
            Some(Value::Mapping(m)) => node = m,
            _ => return,
        }
    }
    node.insert(Value::String(leaf.to_string()), value);
}

/// Go's `database.enableTLS`, resolved into `database.sslMode` (after the environment is
/// applied, so `WAL_DATABASE_ENABLETLS` counts): `false` means no TLS whatever `sslMode` says
/// (Go applied `sslMode` only with `enableTLS: true`); `true` means `sslMode` applies, `require`
/// when it is not set (Go's default).
pub(super) fn go_database_tls(tree: &mut Mapping, warnings: &mut Warnings) {
    let Some(Value::Mapping(db)) = tree.get_mut("database") else {
        return;
    };
    let Some(Value::Bool(enable)) = db.remove("enableTLS") else {
        return;
    };
    let mode = db.get("sslMode").and_then(Value::as_str).map(str::to_string);
    let mut set = |mode: &str| db.insert(Value::String("sslMode".into()), Value::String(mode.into()));
    let text = match (enable, mode) {
        (false, Some(mode)) if mode != "disable" => {
            set("disable");
            format!(
                "database.enableTLS is false and database.sslMode is {mode}: as in the Go wal-listener, TLS to PostgreSQL is off (Go applied sslMode only with enableTLS: true), so sslMode {mode} is not used. To keep TLS off, write sslMode: disable and delete enableTLS; to use TLS, delete enableTLS and sslMode {mode} applies"
            )
        }
        (false, _) => {
            set("disable");
            "database.enableTLS: false is read as database.sslMode: disable (the Go version used no TLS); write sslMode: disable instead".into()
        }
        (true, Some(mode)) => format!(
            "database.enableTLS: true is the Go version's switch for database.sslMode, which applies ({mode}); delete enableTLS"
        ),
        (true, None) => {
            set("require");
            "database.enableTLS: true without sslMode is read as database.sslMode: require (the Go version's default); write sslMode: require instead".into()
        }
    };
    warnings.push(text);
}

/// The message for a key the schema does not know.
fn unknown_key(prefix: &str, key: &str, schema: &'static [(&'static str, Kind)]) -> String {
    let path = join(prefix, key);
    let suggestable = schema
        .iter()
        .filter(|(_, k)| !matches!(k, Ignored(_) | Moved(_) | Legacy(_)))
        .map(|(k, _)| *k);
    let hint = if prefix == "databases" {
        // The v1 README's misspelt section: only its filter is read.
        format!(" (only databases.filter is read, as listener.filter; did you mean database.{key}?)")
    } else {
        did_you_mean(key, suggestable.clone())
            .map(|s| format!(" (did you mean {}?)", join(prefix, s)))
            .unwrap_or_default()
    };
    let known: Vec<&str> = suggestable
        .filter(|k| !schema.iter().any(|(name, kind)| name == k && matches!(kind, Alias(_))))
        .collect();
    format!("unknown key {path}{hint}; known keys here: {}", known.join(", "))
}

/// Check a section against its schema, canonicalizing key spelling and checking value types.
/// Problems are collected in `walk`; the keys that passed are returned.
fn normalize_section(map: Mapping, schema: &'static [(&'static str, Kind)], prefix: &str, walk: &mut Walk) -> Mapping {
    let mut out = Mapping::new();
    for (key, value) in map {
        let Some(key) = key_text(&key) else {
            walk.errors.push(format!("{}: keys must be strings", join(prefix, "?")));
            continue;
        };
        let Some((canonical, kind)) = schema.iter().find(|(k, _)| k.eq_ignore_ascii_case(&key)) else {
            walk.errors.push(unknown_key(prefix, &key, schema));
            continue;
        };
        let (canonical, kind) = match kind {
            Alias(target) => match schema.iter().find(|(k, _)| k == target) {
                Some((k, target_kind)) => (k, target_kind),
                None => (canonical, kind),
            },
            _ => (canonical, kind),
        };
        let path = join(prefix, canonical);
        match kind {
            Ignored(why) => {
                walk.warnings.push(format!(
                    "{path} is accepted for compatibility with the Go wal-listener but ignored: {why}"
                ));
                continue;
            }
            Moved(mv) => {
                match check_value(value, mv.kind, &path, walk) {
                    Ok(value) => walk.moves.push((path, mv, value)),
                    Err(e) => walk.errors.push(message(e)),
                }
                continue;
            }
            Legacy(inner) => {
                walk.legacy.push(canonical);
                match value {
                    Value::Mapping(m) => {
                        normalize_section(m, inner, &path, walk);
                    }
                    Value::Null => {}
                    other => walk.errors.push(message(type_error(&path, "a mapping", &other))),
                }
                continue;
            }
            _ => {}
        }
        if out.contains_key(*canonical) {
            walk.errors.push(format!(
                "{path} is given twice (keys are case-insensitive; caCert, clientCert and clientKey are other names for tlsCaFile, tlsCertFile and tlsKeyFile)"
            ));
            continue;
        }
        match check_value(value, *kind, &path, walk) {
            Ok(value) => {
                out.insert(Value::String((*canonical).to_string()), value);
            }
            Err(e) => walk.errors.push(message(e)),
        }
    }
    out
}

/// An error's text without the `config: ` its Display adds.
fn message(e: ConfigError) -> String {
    match e {
        ConfigError::Invalid(text) => text,
        other => other.to_string(),
    }
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

fn check_value(value: Value, kind: Kind, path: &str, walk: &mut Walk) -> Result<Value, ConfigError> {
    match (kind, value) {
        (Section(schema), Value::Mapping(m)) => Ok(Value::Mapping(normalize_section(m, schema, path, walk))),
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
                let v = check_value(v, Str, &format!("{path}.{k}"), walk)?;
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
                        .map(|item| check_value(item, Str, &item_path, walk))
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
                .map(|item| check_value(item, Str, path, walk))
                .collect::<Result<Vec<_>, _>>()?,
        )),
        (StrList, Value::Null) => Ok(Value::Null),
        (StrList, other) => Err(type_error(path, "a list such as [outbox, audit]", &other)),
        (Ignored(_) | Alias(_) | Legacy(_), v) => Ok(v),
        (Moved(mv), v) => check_value(v, mv.kind, path, walk),
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
                Ignored(_) | Moved(_) | Legacy(_) => {}
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
pub(super) fn apply_env(tree: &mut Mapping, name: &str, raw: &str) -> Result<(), ConfigError> {
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
            Ok(list @ Value::Sequence(_)) => check_value(list, *kind, name, &mut Walk::default())?,
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
            check_value(parsed, *kind, name, &mut Walk::default())?
        }
        Section(_) | Ignored(_) | Alias(_) | Moved(_) | Legacy(_) => return Ok(()),
    };
    insert_path(tree, &path, value);
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
