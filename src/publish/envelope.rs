//! Subject, headers and payload of each published message (SPEC §4).
//!
//! Headers: `Nats-Msg-Id` (the event id, `-N` appended for the N-th extra message of a
//! fan-out), `Wal-Lsn` (commit LSN), `Wal-Xid`, `Wal-Schema`, `Wal-Table`, `Wal-Action`,
//! `Content-Type: application/json` for JSON payloads, then the script's own headers.
//!
//! The `Wal-*` headers are the same for every change of one relation and action in one
//! transaction, so [`Envelopes`] builds that header map once and clones it for the next
//! messages. async-nats' `HeaderMap` is a SipHash map with a `Vec` and a `String` per header:
//! inserting eight headers one by one, growing the map twice, was a fifth of wal-listener's
//! instructions per event in the drain profile; a clone of a map that already has room for the
//! rest allocates but hashes only the few headers added to it.

use std::sync::Arc;

use async_nats::{HeaderMap, HeaderName};
use bytes::Bytes;

use crate::event::{Action, ChangeEvent, TxText, json};
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

/// Builds messages, keeping the headers shared by the changes of one relation and action
/// (`Wal-Schema`, `Wal-Table`, `Wal-Action`) and, on top of those, the transaction's
/// (`Wal-Lsn`, `Wal-Xid`).
#[derive(Default)]
pub struct Envelopes {
    /// The last relation and action (names kept, so that their addresses are not reused for
    /// other names) and their headers, in a map with room to spare.
    relation: Option<(Arc<str>, Arc<str>, Action, HeaderMap)>,
    /// The last transaction and the relation headers plus its own.
    transaction: Option<(Arc<TxText>, HeaderMap)>,
}

impl Envelopes {
    /// Build the message for the `index`-th output (from 0) a script produced for `event`.
    /// `default_payload` caches the event's JSON when several outputs use it.
    pub fn envelope(
        &mut self,
        event: &ChangeEvent,
        routed: Routed,
        index: usize,
        default_payload: &mut Option<Bytes>,
    ) -> OutMessage {
        let mut buf = uuid::Uuid::encode_buffer();
        let id = event.id().hyphenated().encode_lower(&mut buf);
        let msg_id = if index == 0 {
            id.to_string()
        } else {
            format!("{id}-{index}")
        };
        let mut headers = self.headers(event);
        headers.insert(NATS_MSG_ID, msg_id);
        if let Some(read) = &event.backfill {
            headers.insert(WAL_BACKFILL, &*read.id);
        }
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

    /// `Wal-Lsn`, `Wal-Xid`, `Wal-Schema`, `Wal-Table` and `Wal-Action` of `event`.
    fn headers(&mut self, event: &ChangeEvent) -> HeaderMap {
        let same_relation = matches!(&self.relation, Some((schema, table, action, _))
            if Arc::ptr_eq(schema, &event.schema) && Arc::ptr_eq(table, &event.table) && *action == event.action);
        if !same_relation {
            self.relation = Some((
                event.schema.clone(),
                event.table.clone(),
                event.action,
                relation_headers(event),
            ));
            self.transaction = None;
        }
        if let Some((text, headers)) = &self.transaction
            && Arc::ptr_eq(text, &event.text)
        {
            return headers.clone();
        }
        let mut headers = match &self.relation {
            Some((.., headers)) => headers.clone(),
            None => relation_headers(event),
        };
        headers.insert(WAL_LSN, event.text.lsn.as_str());
        headers.insert(WAL_XID, event.text.xid.as_str());
        self.transaction = Some((event.text.clone(), headers.clone()));
        headers
    }
}

/// Room, in the relation's header map, for the headers added to every clone: `Wal-Lsn`,
/// `Wal-Xid`, `Nats-Msg-Id`, `Wal-Backfill` (READ events), `Content-Type` and the script's.
const ROOM: usize = 11;

/// `Wal-Schema`, `Wal-Table` and `Wal-Action` in a map with room for [`ROOM`] more headers.
///
/// A std `HashMap` grows (and rehashes every key, with SipHash) when an insert finds it full,
/// even when the key is already there, and a clone has the capacity of its original. But
/// `HeaderMap` offers neither `with_capacity` nor `remove`: its `Deserialize` does size the
/// map by the number of entries it is given, duplicates included, so the three headers are
/// given four times. (Should that ever change, the map is still right, only smaller.)
fn relation_headers(event: &ChangeEvent) -> HeaderMap {
    let schema = flat(&event.schema);
    let table = flat(&event.table);
    let entries = [
        (WAL_SCHEMA, &*schema),
        (WAL_TABLE, &*table),
        (WAL_ACTION, event.action.as_str()),
    ];
    roomy(&entries).unwrap_or_else(|| {
        let mut headers = HeaderMap::new();
        for (name, value) in entries {
            headers.insert(name, value);
        }
        headers
    })
}

/// `entries` as a header map sized for [`ROOM`] more, by way of its `Deserialize`.
fn roomy(entries: &[(HeaderName, &str)]) -> Option<HeaderMap> {
    let mut text = String::from("{");
    for round in 0..(entries.len() + ROOM).div_ceil(entries.len().max(1)) {
        for (i, (name, value)) in entries.iter().enumerate() {
            if round + i > 0 {
                text.push(',');
            }
            let name: &str = name.as_ref();
            text.push_str(&serde_json::Value::from(name).to_string());
            text.push_str(":[");
            text.push_str(&serde_json::Value::from(*value).to_string());
            text.push(']');
        }
    }
    text.push('}');
    serde_json::from_str::<HeaderMap>(&text).ok()
}

/// [`Envelopes::envelope`] without kept headers (one event at a time, as `wal-listener route`).
pub fn envelope(event: &ChangeEvent, routed: Routed, index: usize, default_payload: &mut Option<Bytes>) -> OutMessage {
    Envelopes::default().envelope(event, routed, index, default_payload)
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

    /// What a message was built as before headers were kept: every header inserted anew.
    fn reference(event: &ChangeEvent, routed: Routed, index: usize) -> OutMessage {
        let id = event.id().hyphenated().to_string();
        let msg_id = if index == 0 { id } else { format!("{id}-{index}") };
        let mut headers = base_headers(event, msg_id);
        let payload = match routed.payload {
            Payload::Event => {
                headers.insert(CONTENT_TYPE, "application/json");
                Bytes::from(json::payload(event))
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

    #[test]
    fn the_relation_map_is_built_with_room() {
        let map = roomy(&[(WAL_SCHEMA, "s"), (WAL_TABLE, "t\"x"), (WAL_ACTION, "INSERT")]).expect("deserializes");
        assert_eq!(map.len(), 3);
        assert_eq!(map.get(WAL_TABLE).map(|v| v.as_str()), Some("t\"x"));
    }

    /// Kept headers give every message exactly the headers building them anew gives, across
    /// transactions, relations, actions, payload kinds, fan-outs and script headers.
    #[test]
    fn kept_headers_are_the_headers() {
        let mut envelopes = Envelopes::default();
        let mut events = Vec::new();
        for (lsn, schema, table, action) in [
            (100, "public", "a", "INSERT"),
            (100, "public", "a", "INSERT"),
            (100, "public", "b", "INSERT"),
            (100, "public", "a", "UPDATE"),
            (200, "public", "a", "UPDATE"),
            (200, "we\nird", "a\"b", "DELETE"),
            (300, "public", "a", "INSERT"),
        ] {
            let json = serde_json::json!({"schema": schema, "table": table, "action": action, "lsn": format!("0/{lsn:X}"), "xid": lsn / 10});
            let event = from_json(&json, 0).expect("event");
            events.push(event);
        }
        // READ events of a backfill carry Wal-Backfill.
        let mut read = events[events.len() - 1].clone();
        read.action = Action::Read;
        read.backfill = Some(crate::event::Backfilled::new(Arc::from("bf1"), "public", "a", &["1"]));
        events.push(read.clone());
        events.push(read);
        // Changes of one transaction share its text, and of one relation its names.
        for i in 1..events.len() {
            let (before, after) = events.split_at_mut(i);
            let (prev, event) = (&before[i - 1], &mut after[0]);
            if prev.commit_lsn == event.commit_lsn {
                event.text = prev.text.clone();
            }
            if *prev.table == *event.table && *prev.schema == *event.schema {
                event.schema = prev.schema.clone();
                event.table = prev.table.clone();
            }
        }
        let many: Vec<(String, String)> = (0..12).map(|i| (format!("H{i}"), format!("v{i}"))).collect();
        for event in &events {
            for (index, (payload, headers)) in [
                (Payload::Event, Vec::new()),
                (
                    Payload::Json(b"{}".to_vec()),
                    vec![("Shard".to_string(), "3".to_string())],
                ),
                (
                    Payload::Raw(b"raw".to_vec()),
                    vec![("Content-Type".to_string(), "text/plain".to_string())],
                ),
                (Payload::Event, many.clone()),
            ]
            .into_iter()
            .enumerate()
            {
                let routed = Routed {
                    subject: "t.x".into(),
                    payload,
                    headers,
                };
                let kept = envelopes.envelope(event, routed.clone(), index, &mut None);
                assert_eq!(kept.to_json(), reference(event, routed, index).to_json());
            }
        }
    }

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
