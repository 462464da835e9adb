//! The default JSON payload, field for field the Go wal-listener's:
//! `{"id","schema","table","action","data","dataOld","commitTime"}`, plus `unchangedToast`
//! when PostgreSQL withheld unchanged TOASTed values, and `prefix`/`content`/`transactional`
//! for logical messages (`content` embedded when it is JSON, else a string; content that is
//! not UTF-8 is PostgreSQL's bytea hex text `\x…` with `"binary": true`, so no byte is lost).

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

use super::{Action, ChangeEvent, Row, Value};

/// Serialize an event as the default payload.
pub fn payload(event: &ChangeEvent) -> Vec<u8> {
    // Serializing our own types into a Vec cannot fail: every map key is a string and every
    // float is finite (non-finite ones are carried as text).
    serde_json::to_vec(event).unwrap_or_default()
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
