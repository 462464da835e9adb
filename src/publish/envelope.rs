//! Subject, headers and payload of each published message (SPEC §4).
//!
//! Headers: `Nats-Msg-Id` (the event id, `-N` appended for the N-th extra message of a
//! fan-out), `Wal-Lsn` (commit LSN), `Wal-Xid`, `Wal-Schema`, `Wal-Table`, `Wal-Action`,
//! `Content-Type: application/json` for JSON payloads, then the script's own headers.

use async_nats::HeaderMap;
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
    let id = event.id().hyphenated().to_string();
    let msg_id = if index == 0 { id } else { format!("{id}-{index}") };
    let mut headers = base_headers(event, &msg_id);
    let payload = match routed.payload {
        Payload::Event => {
            headers.insert("Content-Type", "application/json");
            default_payload
                .get_or_insert_with(|| Bytes::from(json::payload(event)))
                .clone()
        }
        Payload::Json(bytes) => {
            headers.insert("Content-Type", "application/json");
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
    let mut headers = base_headers(event, &msg_id);
    headers.insert("Content-Type", "application/json");
    // Header values cannot hold line breaks; Lua tracebacks have them.
    let flat: String = error.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    headers.insert("Wal-Error", flat.as_str());
    OutMessage {
        subject: subject.to_string(),
        headers,
        payload: Bytes::from(json::payload(event)),
        commit_time: event.commit_time,
    }
}

fn base_headers(event: &ChangeEvent, msg_id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    headers.insert("Wal-Lsn", event.commit_lsn.to_string().as_str());
    headers.insert("Wal-Xid", event.xid.to_string().as_str());
    headers.insert("Wal-Schema", &*event.schema);
    headers.insert("Wal-Table", &*event.table);
    headers.insert("Wal-Action", event.action.as_str());
    headers
}
