//! The schema: every key we know, its type, and the Go keys we accept but ignore; the walk
//! that checks a YAML tree against it (case-insensitive keys, did-you-mean, type checks) and
//! the `WAL_*` environment overrides.

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

/// Check a whole file's tree against the schema: canonical key spellings, types, warnings for
/// Go keys that do not apply.
pub(super) fn normalize(map: Mapping, warnings: &mut Warnings) -> Result<Mapping, ConfigError> {
    normalize_section(map, SCHEMA, "", warnings)
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
