//! What `route(event)` may return, and how it becomes messages (SPEC §5):
//!
//! - `nil` (or `false`, or nothing): drop the event;
//! - `subject`: publish the default payload there;
//! - `subject, payload[, headers]`: payload a table (JSON-encoded), a string (sent as is), the
//!   event itself or nil (default payload); headers a table of name → string;
//! - a list of `{subject=…, payload=…, headers=…}` tables: fan-out, published in list order.

use mlua::{Lua, MultiValue, Table, Value as LuaValue};

use super::RouteError;
use super::handoff::EventData;

/// One message a script asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub subject: String,
    pub payload: Payload,
    /// Extra headers from the script, in the order given.
    pub headers: Vec<(String, String)>,
}

/// A message body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// The default JSON payload of the event (SPEC §3), serialized by the publisher.
    Event,
    /// JSON the script built.
    Json(Vec<u8>),
    /// Bytes sent as they are.
    Raw(Vec<u8>),
}

/// Headers wal-listener sets itself; a script may not replace them.
const RESERVED_HEADERS: &[&str] = &[
    "nats-msg-id",
    "wal-lsn",
    "wal-xid",
    "wal-schema",
    "wal-table",
    "wal-action",
    "wal-error",
];

pub(super) fn interpret(_lua: &Lua, returned: MultiValue) -> Result<Vec<Routed>, RouteError> {
    let mut values = returned.into_iter();
    let first = values.next().unwrap_or(LuaValue::Nil);
    match first {
        LuaValue::Nil | LuaValue::Boolean(false) => Ok(Vec::new()),
        LuaValue::String(subject) => {
            let subject = subject_text(&LuaValue::String(subject))?;
            let payload = payload(values.next().unwrap_or(LuaValue::Nil))?;
            let headers = headers(values.next().unwrap_or(LuaValue::Nil))?;
            Ok(vec![Routed {
                subject,
                payload,
                headers,
            }])
        }
        LuaValue::Table(list) => {
            if list.contains_key("subject").unwrap_or(false) {
                return Ok(vec![message_table(&list)?]);
            }
            let mut out = Vec::new();
            for item in list.sequence_values::<LuaValue>() {
                match item.map_err(runtime)? {
                    LuaValue::Table(t) => out.push(message_table(&t)?),
                    other => return Err(invalid(format!("a list containing {}", describe(&other)))),
                }
            }
            Ok(out)
        }
        other => Err(invalid(describe(&other))),
    }
}

fn message_table(t: &Table) -> Result<Routed, RouteError> {
    let subject = t.get::<LuaValue>("subject").map_err(runtime)?;
    if subject.is_nil() {
        return Err(invalid("a message table without a subject".into()));
    }
    Ok(Routed {
        subject: subject_text(&subject)?,
        payload: payload(t.get("payload").map_err(runtime)?)?,
        headers: headers(t.get("headers").map_err(runtime)?)?,
    })
}

fn subject_text(value: &LuaValue) -> Result<String, RouteError> {
    let LuaValue::String(s) = value else {
        return Err(invalid(format!("a subject that is {}", describe(value))));
    };
    let subject = s
        .to_str()
        .map_err(|_| RouteError::Runtime("route returned a subject that is not UTF-8".into()))?
        .to_string();
    validate_subject(&subject).map_err(RouteError::Runtime)?;
    Ok(subject)
}

/// A subject NATS will accept for publishing: dot-separated non-empty tokens, no whitespace or
/// control characters, no wildcards.
pub fn validate_subject(subject: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "route returned the subject {subject:?}, which NATS cannot publish to: {why}"
        ))
    };
    if subject.is_empty() {
        return bad("it is empty");
    }
    // ASCII subjects (nearly all) are checked byte by byte; the char test covers the rest.
    let clean = if subject.is_ascii() {
        !subject.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    } else {
        !subject.chars().any(|c| c.is_whitespace() || c.is_control())
    };
    if !clean {
        return bad("it contains whitespace or control characters");
    }
    for token in subject.split('.') {
        if token.is_empty() {
            return bad("it has an empty token (leading, trailing or doubled '.')");
        }
        if token == "*" || token == ">" {
            return bad("wildcards are for subscribing, not publishing");
        }
    }
    Ok(())
}

fn payload(value: LuaValue) -> Result<Payload, RouteError> {
    match value {
        LuaValue::Nil => Ok(Payload::Event),
        // The event of this call (one a script kept from an earlier call is empty by now).
        LuaValue::UserData(ud) if ud.borrow::<EventData>().is_ok_and(|e| e.event.is_some()) => Ok(Payload::Event),
        LuaValue::String(s) => Ok(Payload::Raw(s.as_bytes().to_vec())),
        v @ LuaValue::Table(_) => serde_json::to_vec(&v).map(Payload::Json).map_err(|e| {
            RouteError::Runtime(format!(
                "route returned a payload table that is not JSON-encodable: {e}"
            ))
        }),
        other => Err(invalid(format!("a payload that is {}", describe(&other)))),
    }
}

fn headers(value: LuaValue) -> Result<Vec<(String, String)>, RouteError> {
    let table = match value {
        LuaValue::Nil => return Ok(Vec::new()),
        LuaValue::Table(t) => t,
        other => return Err(invalid(format!("headers that are {}", describe(&other)))),
    };
    // One protected traversal (`for_each`) instead of one protected call per pair.
    let mut out = Vec::new();
    let mut failure = None;
    let walked = table.for_each::<LuaValue, LuaValue>(|k, v| match header(k, v) {
        Ok(pair) => {
            out.push(pair);
            Ok(())
        }
        Err(e) => {
            failure = Some(e);
            Err(mlua::Error::RuntimeError(String::new()))
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    walked.map_err(runtime)?;
    out.sort();
    Ok(out)
}

/// One header a script returned, checked.
fn header(k: LuaValue, v: LuaValue) -> Result<(String, String), RouteError> {
    let LuaValue::String(name) = k else {
        return Err(invalid(format!("a header name that is {}", describe(&k))));
    };
    let name = name.to_string_lossy();
    let value = match v {
        LuaValue::String(s) => s.to_string_lossy(),
        LuaValue::Integer(i) => itoa::Buffer::new().format(i).to_string(),
        LuaValue::Number(n) => n.to_string(),
        LuaValue::Boolean(b) => b.to_string(),
        other => {
            return Err(invalid(format!(
                "a value for header {name} that is {}",
                describe(&other)
            )));
        }
    };
    // NATS header names are printable ASCII without ':' (async-nats panics on others).
    if name.is_empty() || name.chars().any(|c| c == ':' || !c.is_ascii_graphic()) {
        return Err(RouteError::Runtime(format!(
            "route returned an invalid header name {name:?}: use printable ASCII without spaces or ':'"
        )));
    }
    if value.contains(['\r', '\n']) {
        return Err(RouteError::Runtime(format!(
            "header {name} has a line break in its value"
        )));
    }
    if RESERVED_HEADERS.iter().any(|r| r.eq_ignore_ascii_case(&name)) {
        return Err(RouteError::Runtime(format!(
            "header {name} is set by wal-listener and cannot be replaced by a script"
        )));
    }
    Ok((name, value))
}

fn describe(value: &LuaValue) -> String {
    match value {
        LuaValue::String(s) => format!("the string {:?}", s.to_string_lossy()),
        LuaValue::Integer(i) => format!("the number {i}"),
        LuaValue::Number(n) => format!("the number {n}"),
        LuaValue::Boolean(b) => format!("the boolean {b}"),
        other => format!("a {}", other.type_name()),
    }
}

fn invalid(got: String) -> RouteError {
    RouteError::InvalidReturn { got }
}

fn runtime(e: mlua::Error) -> RouteError {
    RouteError::Runtime(e.to_string())
}
