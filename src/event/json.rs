//! The default JSON payload, field for field the Go wal-listener's:
//! `{"id","schema","table","action","data","dataOld","commitTime"}`, plus `unchangedToast`
//! when PostgreSQL withheld unchanged TOASTed values, and `prefix`/`content`/`transactional`
//! for logical messages (`content` embedded when it is JSON, else a string; content that is
//! not UTF-8 is PostgreSQL's bytea hex text `\x…` with `"binary": true`, so no byte is lost).
//!
//! The `Serialize` implementation is the definition. Row changes — every event but logical
//! messages — are written by [`payload`] directly into one buffer sized up front, byte for
//! byte what serde_json writes (a test compares them), with strings scanned eight bytes at a
//! time for the few bytes JSON escapes: serde_json's byte-at-a-time escaping and the growing
//! buffer were a third of the publish side's instructions in the drain profile, and most of
//! them for large text values.

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

use super::{Action, ChangeEvent, Row, Value};

/// Serialize an event as the default payload.
pub fn payload(event: &ChangeEvent) -> Vec<u8> {
    if event.action == Action::Message {
        // Serializing our own types into a Vec cannot fail: every map key is a string and
        // every float is finite (non-finite ones are carried as text).
        return serde_json::to_vec(event).unwrap_or_default();
    }
    let mut out = Vec::with_capacity(size_hint(event));
    let mut id = uuid::Uuid::encode_buffer();
    out.extend_from_slice(b"{\"id\":\"");
    out.extend_from_slice(event.id().hyphenated().encode_lower(&mut id).as_bytes());
    out.extend_from_slice(b"\",\"schema\":");
    write_str(&mut out, &event.schema);
    out.extend_from_slice(b",\"table\":");
    write_str(&mut out, &event.table);
    out.extend_from_slice(b",\"action\":\"");
    out.extend_from_slice(event.action.as_str().as_bytes());
    out.extend_from_slice(b"\",\"data\":");
    write_row(&mut out, &event.data);
    out.extend_from_slice(b",\"dataOld\":");
    write_row(&mut out, &event.data_old);
    out.extend_from_slice(b",\"commitTime\":");
    write_str(&mut out, event.commit_time_text());
    if !event.unchanged_toast.is_empty() {
        out.extend_from_slice(b",\"unchangedToast\":[");
        for (i, name) in event.unchanged_toast.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(&mut out, name);
        }
        out.push(b']');
    }
    out.push(b'}');
    out
}

/// Bytes the payload takes, about (exact for rows without escapes, arrays or floats).
fn size_hint(event: &ChangeEvent) -> usize {
    let row = |row: &Row| {
        row.0
            .iter()
            .map(|(name, value)| name.len() + 4 + value_size(value))
            .sum::<usize>()
            + 2
    };
    128 + event.schema.len()
        + event.table.len()
        + row(&event.data)
        + row(&event.data_old)
        + event.unchanged_toast.iter().map(|n| n.len() + 3).sum::<usize>()
}

fn value_size(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(_) => 5,
        Value::Int(_) | Value::Float(_) => 20,
        Value::Text(t) => t.len() + 2,
        Value::Json(raw) => raw.get().len(),
        Value::Array(items) => 2 + items.iter().map(|v| value_size(v) + 1).sum::<usize>(),
    }
}

fn write_row(out: &mut Vec<u8>, row: &Row) {
    out.push(b'{');
    for (i, (name, value)) in row.0.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, name);
        out.push(b':');
        write_value(out, value);
    }
    out.push(b'}');
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes()),
        // serde_json's own float formatting (finite floats only, see Value::Float).
        Value::Float(f) => {
            let _ = serde_json::to_writer(&mut *out, f);
        }
        Value::Text(t) => write_str(out, t),
        Value::Json(raw) => out.extend_from_slice(raw.get().as_bytes()),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
    }
}

/// Whether any of the eight bytes of `w` is below 0x20, a `"` or a `\` (the bytes JSON
/// escapes). Exact as a whole: borrows can only set flags above a byte that is already flagged.
fn needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGH;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    (below(w, 0x20) | zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\')))) != 0
}

/// A JSON string, escaped exactly as serde_json does.
fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(word) = bytes.get(i..i + 8).and_then(|w| <[u8; 8]>::try_from(w).ok())
            && !needs_escape(u64::from_le_bytes(word))
        {
            i += 8;
            continue;
        }
        let b = bytes[i];
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x09 => b't',
            0x0a => b'n',
            0x0c => b'f',
            0x0d => b'r',
            0x00..=0x1f => b'u',
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[start..i]);
        out.push(b'\\');
        out.push(short);
        if short == b'u' {
            out.extend_from_slice(b"00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0x0f)]);
        }
        i += 1;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

impl Serialize for ChangeEvent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", &self.id().hyphenated().to_string())?;
        m.serialize_entry("schema", &*self.schema)?;
        m.serialize_entry("table", &*self.table)?;
        m.serialize_entry("action", self.action.as_str())?;
        if let (Action::Message, Some(msg)) = (self.action, &self.message) {
            m.serialize_entry("prefix", &msg.prefix)?;
            m.serialize_entry("transactional", &msg.transactional)?;
            match std::str::from_utf8(&msg.content) {
                Ok(text) => m.serialize_entry("content", &MessageContent(text))?,
                Err(_) => {
                    m.serialize_entry("content", &hex_text(&msg.content))?;
                    m.serialize_entry("binary", &true)?;
                }
            }
        } else {
            m.serialize_entry("data", &RowJson(&self.data))?;
            m.serialize_entry("dataOld", &RowJson(&self.data_old))?;
        }
        m.serialize_entry("commitTime", self.commit_time_text())?;
        if !self.unchanged_toast.is_empty() {
            let names: Vec<&str> = self.unchanged_toast.iter().map(|n| &**n).collect();
            m.serialize_entry("unchangedToast", &names)?;
        }
        m.end()
    }
}

/// A row as a JSON object in column order.
pub struct RowJson<'a>(pub &'a Row);

impl Serialize for RowJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.0.len()))?;
        for (name, value) in &self.0.0 {
            m.serialize_entry(&**name, &ValueJson(value))?;
        }
        m.end()
    }
}

/// A column value as JSON (SPEC §3).
pub struct ValueJson<'a>(pub &'a Value);

impl Serialize for ValueJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Float(f) => s.serialize_f64(*f),
            Value::Text(t) => s.serialize_str(t),
            Value::Json(raw) => raw.serialize(s),
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&ValueJson(item))?;
                }
                seq.end()
            }
        }
    }
}

/// Message content that is UTF-8: embedded when it is valid JSON, otherwise a string.
struct MessageContent<'a>(&'a str);

impl Serialize for MessageContent<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match serde_json::from_str::<&serde_json::value::RawValue>(self.0) {
            Ok(raw) => raw.serialize(s),
            Err(_) => s.serialize_str(self.0),
        }
    }
}

/// Bytes as PostgreSQL's bytea hex text: `\x` and two lower-case hex digits per byte.
fn hex_text(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 + 2 * bytes.len());
    out.push_str("\\x");
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::event::from_json;

    /// The direct writer and the `Serialize` definition agree byte for byte.
    #[test]
    fn the_fast_payload_is_what_serde_writes() {
        let mut every_byte = String::new();
        for c in (0u8..=0x7f).map(char::from).chain(['é', '✓', '\u{2028}', '😀']) {
            every_byte.push(c);
        }
        let texts = [
            String::new(),
            "plain".into(),
            "exactly8".into(),
            "quote\" and backslash\\ and\nnewline".into(),
            every_byte.clone(),
            every_byte.repeat(9),
            "x".repeat(10_000) + "\u{1}",
        ];
        for text in &texts {
            let json = serde_json::json!({
                "schema": text, "table": format!("t{text}"), "action": "UPDATE",
                "data": {"id": -42, "big": 9_007_199_254_740_993_i64, "note": text, "f": 1.5e-7, "flag": false,
                         "nothing": null, "j": {"k": [1, "two", null]}},
                "dataOld": {"id": 41},
            });
            let mut event = from_json(&json, 3).expect("event");
            event.unchanged_toast = vec![Arc::from(text.as_str()), Arc::from("b")];
            event.data.0.push((
                Arc::from("arr"),
                Value::Array(vec![
                    Value::Int(1),
                    Value::Null,
                    Value::Text(text.clone()),
                    Value::Array(vec![Value::Float(-0.5), Value::Bool(true)]),
                ]),
            ));
            event
                .data
                .0
                .push((Arc::from(text.as_str()), Value::Float(123_456_789.125)));
            let expected = serde_json::to_vec(&event).expect("serde");
            assert_eq!(
                String::from_utf8_lossy(&payload(&event)),
                String::from_utf8_lossy(&expected)
            );
        }
        for action in ["INSERT", "DELETE", "TRUNCATE"] {
            let event =
                from_json(&serde_json::json!({"schema": "s", "table": "t", "action": action}), 0).expect("event");
            assert_eq!(payload(&event), serde_json::to_vec(&event).expect("serde"));
        }
    }
}
