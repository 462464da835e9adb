//! Backfill: the rows that already exist, as `READ` events, merged into the live stream
//! without a lock, a gap or a row going back in time (the DBLog method, Netflix 2019).
//!
//! ```text
//! runner (own task, own SQL connection)            transform (the stream, in commit order)
//!   register chunk ─────────────────────────────▶ handoff
//!   emit LOW watermark ──WAL──▶ … changes …  LOW: open the window for the chunk's table
//!   SELECT … WHERE key > last ORDER BY key LIMIT n   changes to the table: note their keys
//!   hand the rows over ─────────────────────────▶ handoff
//!   emit HIGH watermark ─WAL──▶ … changes …  HIGH: drop the noted keys from the chunk, emit
//!                                                  the rest as READ events, in key order
//!   ◀── settled (every event up to here acknowledged) ── publish stage
//!   save the last key in the KV bucket; next chunk
//! ```
//!
//! Why it is right: a change committed before the low watermark is in the rows the chunk
//! reads (the SELECT starts after the watermark's commit); a change committed between the
//! watermarks may or may not be, so the stream's version wins and the row is dropped from
//! the chunk; a change committed after the high watermark comes after the chunk in the
//! stream. So for every key the last event is the row's current state, and events for one
//! key never go back in time. One corner is closed explicitly: a transaction whose commit
//! record precedes the low watermark but which was still finishing when the SELECT took its
//! snapshot (it is in the snapshot's in-progress list) would make the chunk older than the
//! stream — the transform sees that at the high watermark and the chunk is read again.
//!
//! Everything is driven through the WAL with `pg_logical_emit_message` under the prefix
//! [`PREFIX`]: requests (`wal-listener backfill`), cancellations and watermarks. A request is
//! therefore durable and ordered, needs no port, and reaches whichever instance streams from
//! the slot — also a standby that takes over. Progress lives in a JetStream KV bucket
//! ([`store`]), as durable as the stream: after a crash the backfill resumes after the last
//! chunk whose events were acknowledged, so at most one chunk is read twice, and its events
//! carry the same ids (deduplicated by `Nats-Msg-Id`).
//!
//! Keys are compared in PostgreSQL (`(a, b) > ('x'::text, '5'::int4)`, values as PostgreSQL
//! printed them), never in Rust, so any key type pages in the index's order.

pub mod cli;
pub(crate) mod merge;
pub(crate) mod runner;
pub mod store;
pub mod table;

use serde::{Deserialize, Serialize};

/// The `pg_logical_emit_message` prefix of every backfill control message. The default
/// script never publishes these (they are not row changes nor user messages).
pub const PREFIX: &str = "wal-listener.backfill";

/// A control message, as JSON in the message content.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Control {
    /// Backfill these tables (`wal-listener backfill`, or `listener.snapshot: initial`).
    Request(Request),
    /// Stop a backfill.
    Cancel { slot: String, id: String },
    /// A chunk's low watermark.
    Low { chunk: String },
    /// A chunk's high watermark.
    High { chunk: String },
}

impl Control {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn parse(content: &[u8]) -> Option<Control> {
        serde_json::from_slice(content).ok()
    }
}

/// A request to backfill tables.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Request {
    /// The slot whose service should run it (several services may share a database).
    pub slot: String,
    pub id: String,
    pub tables: Vec<TableName>,
    /// A condition rows must meet (`--where`), SQL.
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Rows per chunk; `None`: `listener.backfillChunkSize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<u32>,
    /// `listener.snapshot: initial`: a table that cannot be backfilled is skipped with a
    /// warning instead of failing the backfill.
    #[serde(default)]
    pub snapshot: bool,
}

/// `schema.table`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableName {
    pub schema: String,
    pub table: String,
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// A new backfill id: `b` and 12 hex digits, random enough for the few a slot ever has.
pub fn new_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    format!("b{:012x}", h.finish() & 0xFFFF_FFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_round_trip() {
        let request = Control::Request(Request {
            slot: "s".into(),
            id: new_id(),
            tables: vec![TableName {
                schema: "public".into(),
                table: "users".into(),
            }],
            filter: Some("id > 5".into()),
            chunk_size: None,
            snapshot: false,
        });
        let json = request.to_json();
        assert!(json.contains(r#""op":"request""#), "{json}");
        assert!(json.contains(r#""where":"id > 5""#), "{json}");
        assert_eq!(Control::parse(json.as_bytes()), Some(request));
        let low = Control::Low { chunk: "x-1".into() };
        assert_eq!(Control::parse(low.to_json().as_bytes()), Some(low));
        assert_eq!(Control::parse(b"not json"), None);
        assert_eq!(Control::parse(br#"{"op":"nope"}"#), None);
    }

    #[test]
    fn ids_differ() {
        let a = new_id();
        assert_eq!(a.len(), 13);
        assert_ne!(a, new_id());
    }
}
