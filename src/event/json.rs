//! The default JSON payload, field for field the Go wal-listener's:
//! `{"id","schema","table","action","data","dataOld","commitTime"}`, plus `unchangedToast`
//! when PostgreSQL withheld unchanged TOASTed values, and `prefix`/`content`/`transactional`
//! for logical messages.

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
            m.serialize_entry("content", &MessageContent(&msg.content))?;
        } else {
            m.serialize_entry("data", &RowJson(&self.data))?;
            m.serialize_entry("dataOld", &RowJson(&self.data_old))?;
        }
        m.serialize_entry("commitTime", &self.commit_time_text())?;
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

/// Message content: embedded when it is valid JSON, otherwise a string (invalid UTF-8 is
/// replaced with U+FFFD).
struct MessageContent<'a>(&'a [u8]);

impl Serialize for MessageContent<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if let Ok(text) = std::str::from_utf8(self.0)
            && let Ok(raw) = serde_json::from_str::<&serde_json::value::RawValue>(text)
        {
            return raw.serialize(s);
        }
        s.serialize_str(&String::from_utf8_lossy(self.0))
    }
}
