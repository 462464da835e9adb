//! Events from JSON — the default payload format — for `wal-listener route` and script tests.
//!
//! Accepted fields: `schema`, `table`, `action` (required); `data`, `dataOld`, `commitTime`,
//! `lsn`, `xid`, `unchangedToast`, and for `MESSAGE` events `prefix`, `content`,
//! `transactional` and `binary` (hex content). JSON values map back to column values the way
//! they were produced: integers → integers, other numbers → floats, strings → text, objects →
//! json, arrays → arrays.

use std::sync::Arc;

use serde_json::Value as Json;

use super::{Action, ChangeEvent, MessageBody, Row, Value};
use crate::lsn::Lsn;

/// Build an event from its JSON form; `ordinal` numbers events read from one input.
pub fn from_json(json: &Json, ordinal: u32) -> Result<ChangeEvent, String> {
    let obj = json.as_object().ok_or("an event must be a JSON object")?;
    let text = |key: &str| obj.get(key).and_then(Json::as_str);
    let action = match text("action").map(str::to_ascii_uppercase).as_deref() {
        Some("INSERT") => Action::Insert,
        Some("UPDATE") => Action::Update,
        Some("DELETE") => Action::Delete,
        Some("TRUNCATE") => Action::Truncate,
        Some("MESSAGE") => Action::Message,
        Some("READ") => Action::Read,
        Some(other) => {
            return Err(format!(
                "unknown action {other:?}: use INSERT, UPDATE, DELETE, TRUNCATE or MESSAGE"
            ));
        }
        None => return Err("the event has no \"action\"".into()),
    };
    let (schema, table) = if action == Action::Message {
        (text("schema").unwrap_or(""), text("table").unwrap_or(""))
    } else {
        (
            text("schema").ok_or("the event has no \"schema\"")?,
            text("table").ok_or("the event has no \"table\"")?,
        )
    };
    let commit_lsn = match text("lsn") {
        Some(l) => l.parse::<Lsn>().map_err(|e| e.to_string())?,
        None => Lsn(0x1_0000_0000),
    };
    let commit_time = match text("commitTime") {
        Some(t) => crate::pg_time::parse_rfc3339(t)
            .ok_or_else(|| format!("commitTime {t:?} is not RFC 3339 UTC like 2026-11-26T10:20:30.123456Z"))?,
        None => 0,
    };
    let binary = obj.get("binary").and_then(Json::as_bool) == Some(true);
    let content = match obj.get("content") {
        // Content that was not UTF-8 is published as bytea hex text with "binary": true.
        Some(Json::String(s)) if binary => bytes::Bytes::from(
            from_hex(s).ok_or_else(|| format!("content {s:?} with \"binary\": true must be hex text like \\x00ff"))?,
        ),
        Some(Json::String(s)) => bytes::Bytes::from(s.clone().into_bytes()),
        Some(other) => bytes::Bytes::from(other.to_string().into_bytes()),
        None => bytes::Bytes::new(),
    };
    let message = (action == Action::Message).then(|| MessageBody {
        transactional: obj.get("transactional").and_then(Json::as_bool).unwrap_or(true),
        prefix: text("prefix").unwrap_or_default().to_string(),
        content,
    });
    let unchanged_toast = match obj.get("unchangedToast") {
        Some(Json::Array(names)) => names.iter().filter_map(Json::as_str).map(Arc::from).collect(),
        _ => Vec::new(),
    };
    let xid = obj
        .get("xid")
        .and_then(Json::as_u64)
        .and_then(|x| u32::try_from(x).ok())
        .unwrap_or(0);
    Ok(ChangeEvent {
        commit_lsn,
        ordinal,
        xid,
        commit_time,
        text: super::TxText::new(commit_lsn, xid, commit_time),
        schema: Arc::from(schema),
        table: Arc::from(table),
        action,
        data: row(obj.get("data"), "data")?,
        data_old: row(obj.get("dataOld"), "dataOld")?,
        unchanged_toast,
        message,
        backfill: None,
    })
}

fn row(json: Option<&Json>, field: &str) -> Result<Row, String> {
    match json {
        None | Some(Json::Null) => Ok(Row::default()),
        Some(Json::Object(map)) => Ok(Row(map
            .iter()
            .map(|(k, v)| (Arc::from(k.as_str()), value(v)))
            .collect())),
        Some(_) => Err(format!("\"{field}\" must be an object of column values")),
    }
}

fn value(json: &Json) -> Value {
    match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::Text(s.clone()),
        Json::Array(items) => Value::Array(items.iter().map(value).collect()),
        Json::Object(_) => serde_json::value::to_raw_value(json)
            .map(Value::Json)
            .unwrap_or(Value::Null),
    }
}

/// `\x00ff` (PostgreSQL's bytea hex text) → bytes.
fn from_hex(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("\\x")?.as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    let digit = |b: u8| char::from(b).to_digit(16).and_then(|d| u8::try_from(d).ok());
    hex.chunks(2)
        .map(|pair| match pair {
            [hi, lo] => Some(digit(*hi)? << 4 | digit(*lo)?),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_default_payload() {
        let json = serde_json::json!({
            "schema": "public", "table": "users", "action": "UPDATE",
            "data": {"id": 42, "email": "a@b.c", "tags": ["x", null], "meta": {"k": 1}, "score": 1.5},
            "dataOld": {"id": 42}, "commitTime": "2026-11-26T10:20:30.123456Z", "lsn": "16/B374D848", "xid": 7
        });
        let event = from_json(&json, 3).expect("valid event");
        assert_eq!(event.commit_time_text(), "2026-11-26T10:20:30.123456Z");
        assert_eq!(event.commit_lsn.to_string(), "16/B374D848");
        let payload: serde_json::Value = serde_json::from_slice(&super::super::json::payload(&event)).expect("json");
        assert_eq!(payload["data"], json["data"]);
        assert_eq!(payload["dataOld"], json["dataOld"]);
        assert_eq!(payload["commitTime"], json["commitTime"]);
    }

    #[test]
    fn binary_message_content_round_trips() {
        let json = serde_json::json!({"action": "MESSAGE", "prefix": "bin", "content": "\\x00ff10", "binary": true});
        let event = from_json(&json, 0).expect("valid event");
        assert_eq!(
            event.message.as_ref().map(|m| &m.content[..]),
            Some(&b"\x00\xff\x10"[..])
        );
        let payload: serde_json::Value = serde_json::from_slice(&super::super::json::payload(&event)).expect("json");
        assert_eq!(
            (&payload["content"], &payload["binary"]),
            (&json["content"], &json["binary"])
        );
        let bad = serde_json::json!({"action": "MESSAGE", "content": "\\x0", "binary": true});
        assert!(from_json(&bad, 0).is_err());
    }

    #[test]
    fn rejects_what_is_not_an_event() {
        assert!(from_json(&serde_json::json!([]), 0).is_err());
        assert!(from_json(&serde_json::json!({"action": "UPSERT", "schema": "s", "table": "t"}), 0).is_err());
        assert!(from_json(&serde_json::json!({"action": "INSERT", "table": "t"}), 0).is_err());
        assert!(
            from_json(
                &serde_json::json!({"action": "INSERT", "schema": "s", "table": "t", "data": 1}),
                0
            )
            .is_err()
        );
        assert!(
            from_json(
                &serde_json::json!({"action": "INSERT", "schema": "s", "table": "t", "commitTime": "yesterday"}),
                0
            )
            .is_err()
        );
    }
}
