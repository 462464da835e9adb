//! Subject, headers and payload of each published message (SPEC §4).
//!
//! Headers: `Nats-Msg-Id` (the event id, `-N` appended for the N-th extra message of a
//! fan-out), `Wal-Lsn` (commit LSN), `Wal-Xid`, `Wal-Schema`, `Wal-Table`, `Wal-Action`,
//! `Content-Type: application/json` for JSON payloads, then the script's own headers.

use async_nats::{HeaderMap, HeaderName};
use bytes::Bytes;

use crate::event::{ChangeEvent, json};
use crate::script::{Payload, Routed};

/// A message ready for the sink.
#[derive(Debug, Clone)]
pub struct OutMessage {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
    /// The change's commit time (µs since 2000-01-01 UTC), for the commit → ack latency metric.
    pub commit_time: i64,
}

/// Build the message for the `index`-th output (from 0) a script produced for `event`.
/// `default_payload` caches the event's JSON when several outputs use it.
pub fn envelope(event: &ChangeEvent, routed: Routed, index: usize, default_payload: &mut Option<Bytes>) -> OutMessage {
    let mut buf = uuid::Uuid::encode_buffer();
    let id = event.id().hyphenated().encode_lower(&mut buf);
    let msg_id = if index == 0 {
        id.to_string()
    } else {
        format!("{id}-{index}")
    };
    let mut headers = base_headers(event, msg_id);
    let payload = match routed.payload {
        Payload::Event => {
            headers.insert(CONTENT_TYPE, "application/json");
            default_payload
                .get_or_insert_with(|| Bytes::from(json::payload(event)))
                .clone()
        }
        Payload::Json(bytes) => {
            headers.insert(CONTENT_TYPE, "application/json");
            Bytes::from(bytes)
        }
        Payload::Raw(bytes) => Bytes::from(bytes),
    };
    for (name, value) in routed.headers {
        headers.insert(name.as_str(), value.as_str());
    }
    OutMessage {
        subject: routed.subject,
        headers,
        payload,
        commit_time: event.commit_time,
    }
}

/// The original event, sent to the dead-letter subject with the error in `Wal-Error`.
pub fn dead_letter(event: &ChangeEvent, subject: &str, error: &str) -> OutMessage {
    let msg_id = format!("{}-dlq", event.id().hyphenated());
    let mut headers = base_headers(event, msg_id);
    headers.insert(CONTENT_TYPE, "application/json");
    // Header values cannot hold line breaks; Lua tracebacks have them.
    headers.insert("Wal-Error", &*flat(error));
    OutMessage {
        subject: subject.to_string(),
        headers,
        payload: Bytes::from(json::payload(event)),
        commit_time: event.commit_time,
    }
}

impl OutMessage {
    /// `{"subject":…,"headers":{…},"payload":…}`, headers sorted by name, the payload embedded
    /// when it is JSON: what `route` prints and the `stdout` publisher writes.
    pub fn to_json(&self) -> String {
        let mut headers: Vec<(String, String)> = self
            .headers
            .iter()
            .flat_map(|(name, values)| values.iter().map(move |v| (name.to_string(), v.as_str().to_string())))
            .collect();
        headers.sort();
        let headers: serde_json::Map<String, serde_json::Value> = headers
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        let payload = serde_json::from_slice::<serde_json::Value>(&self.payload)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&self.payload).into_owned()));
        serde_json::json!({"subject": self.subject, "headers": headers, "payload": payload}).to_string()
    }

    /// Bytes the message takes against the server's `max_payload` (payload plus the header
    /// block, `NATS/1.0\r\n` + `Name: value\r\n` lines + `\r\n`).
    pub fn wire_size(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, values)| {
                values
                    .iter()
                    .map(|v| AsRef::<str>::as_ref(name).len() + v.as_str().len() + 4)
                    .sum::<usize>()
            })
            .sum();
        self.payload.len() + headers + 12
    }
}

// Header names built once: parsing a name from text on every message showed up in profiles.
const NATS_MSG_ID: HeaderName = HeaderName::from_static("Nats-Msg-Id");
const WAL_LSN: HeaderName = HeaderName::from_static("Wal-Lsn");
const WAL_XID: HeaderName = HeaderName::from_static("Wal-Xid");
const WAL_SCHEMA: HeaderName = HeaderName::from_static("Wal-Schema");
const WAL_TABLE: HeaderName = HeaderName::from_static("Wal-Table");
const WAL_ACTION: HeaderName = HeaderName::from_static("Wal-Action");
const WAL_BACKFILL: HeaderName = HeaderName::from_static("Wal-Backfill");
pub(super) const CONTENT_TYPE: HeaderName = HeaderName::from_static("Content-Type");

fn base_headers(event: &ChangeEvent, msg_id: String) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(NATS_MSG_ID, msg_id);
    headers.insert(WAL_LSN, event.text.lsn.as_str());
    headers.insert(WAL_XID, event.text.xid.as_str());
    // Schema and table names may contain line breaks, which a header value cannot (the
    // payload keeps the exact names).
    headers.insert(WAL_SCHEMA, &*flat(&event.schema));
    headers.insert(WAL_TABLE, &*flat(&event.table));
    headers.insert(WAL_ACTION, event.action.as_str());
    if let Some(read) = &event.backfill {
        headers.insert(WAL_BACKFILL, &*read.id);
    }
    headers
}

/// `text` with control characters (line breaks above all) replaced by spaces.
fn flat(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(char::is_control) {
        text.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect::<String>()
            .into()
    } else {
        text.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::from_json;

    #[test]
    fn names_with_line_breaks_make_valid_headers() {
        let json = serde_json::json!({"schema": "we\r\nird", "table": "a\nb", "action": "INSERT"});
        let event = from_json(&json, 0).expect("event");
        let routed = Routed {
            subject: "t.x".into(),
            payload: Payload::Event,
            headers: Vec::new(),
        };
        let msg = envelope(&event, routed, 0, &mut None);
        assert_eq!(msg.headers.get("Wal-Schema").map(|v| v.as_str()), Some("we  ird"));
        assert_eq!(msg.headers.get("Wal-Table").map(|v| v.as_str()), Some("a b"));
        let payload: serde_json::Value = serde_json::from_slice(&msg.payload).expect("json");
        assert_eq!(payload["table"], "a\nb", "the payload keeps the exact name");
    }
}
