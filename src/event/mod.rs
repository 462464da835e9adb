//! The domain model: one [`ChangeEvent`] per row change, in commit order.
//!
//! [`Assembler`] turns decoded pgoutput messages into events. It keeps the relation cache
//! (replaced on every Relation message, which PostgreSQL sends before the first change of a
//! relation in a session and after every schema change) and the open transaction's identity:
//! commit LSN, xid, commit time, and the ordinal of the next change.
//!
//! An event's `id` is a UUID derived from (commit LSN, ordinal in the transaction). The row's
//! own WAL position would not do: a multi-row `COPY` logs several inserts at one LSN. The pair
//! is stable across restarts, so a replayed change carries the same `Nats-Msg-Id` and JetStream
//! drops the duplicate. A READ event's (a row read by a backfill) is derived from the
//! backfill, the table and the row's key instead ([`Backfilled`]).

mod assemble;
mod from_json;
pub mod json;
pub mod types;
pub mod value;

use std::sync::Arc;

pub use assemble::{Assembler, BadValue, BadValues, EventError, Item, ReadRelation};
pub use from_json::from_json;
pub use types::{PgType, TypeKind, TypeRegistry};
pub use value::Value;

use crate::lsn::Lsn;

/// What happened to the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Insert,
    Update,
    Delete,
    Truncate,
    /// A `pg_logical_emit_message` message.
    Message,
    /// A row read by a backfill (`crate::backfill`): the row as it is, like an INSERT.
    Read,
}

impl Action {
    /// The upper-case name used in the payload and the `Wal-Action` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Insert => "INSERT",
            Action::Update => "UPDATE",
            Action::Delete => "DELETE",
            Action::Truncate => "TRUNCATE",
            Action::Message => "MESSAGE",
            Action::Read => "READ",
        }
    }
}

/// Column name → value, in the table's column order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row(pub Vec<(Arc<str>, Value)>);

impl Row {
    /// The value of a column, if present.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(n, _)| &**n == name).map(|(_, v)| v)
    }
}

/// A logical decoding message's own fields.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageBody {
    pub transactional: bool,
    pub prefix: String,
    pub content: bytes::Bytes,
}

/// What is the same for every event of a transaction, as text: formatted once per
/// transaction (at Begin) and shared, instead of once per event and header.
#[derive(Debug, PartialEq, Eq)]
pub struct TxText {
    /// The commit LSN, `X/Y` (`Wal-Lsn`, Lua's `event.lsn`).
    pub lsn: String,
    /// The transaction id (`Wal-Xid`).
    pub xid: String,
    /// `commitTime`, RFC 3339 UTC with microseconds.
    pub commit_time: String,
}

impl TxText {
    pub fn new(commit_lsn: Lsn, xid: u32, commit_time: i64) -> Arc<TxText> {
        Arc::new(TxText {
            lsn: commit_lsn.to_string(),
            xid: xid.to_string(),
            commit_time: crate::pg_time::to_rfc3339(commit_time),
        })
    }
}

/// One change, as scripts and consumers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    /// The transaction's commit LSN (a non-transactional message's own LSN).
    pub commit_lsn: Lsn,
    /// Position of the change in its transaction, from 0.
    pub ordinal: u32,
    pub xid: u32,
    /// Commit time, microseconds since 2000-01-01 00:00:00 UTC (PostgreSQL's epoch).
    pub commit_time: i64,
    pub schema: Arc<str>,
    pub table: Arc<str>,
    pub action: Action,
    pub data: Row,
    pub data_old: Row,
    /// Columns whose unchanged TOASTed value PostgreSQL did not send (left out of `data`).
    pub unchanged_toast: Vec<Arc<str>>,
    /// Set for [`Action::Message`].
    pub message: Option<MessageBody>,
    /// `commit_lsn`, `xid` and `commit_time` as text, shared by the transaction's events.
    pub text: Arc<TxText>,
    /// Set for [`Action::Read`]: which backfill read the row, and the event's id.
    pub backfill: Option<Box<Backfilled>>,
}

/// Where a READ event comes from. Its id is derived from the backfill, the table and the key,
/// so a chunk read again after a crash carries the same ids (and `Nats-Msg-Id`s).
#[derive(Debug, Clone, PartialEq)]
pub struct Backfilled {
    /// The backfill's id (`Wal-Backfill`).
    pub id: Arc<str>,
    pub event_id: uuid::Uuid,
}

impl Backfilled {
    /// The READ event of `key` (the key columns' text, in key order) of `schema.table`.
    pub fn new(id: Arc<str>, schema: &str, table: &str, key: &[&str]) -> Box<Backfilled> {
        let mut name = Vec::with_capacity(64);
        for part in [&*id, schema, table].into_iter().chain(key.iter().copied()) {
            // Length-prefixed, so that no two different keys make the same bytes.
            name.extend_from_slice(&(part.len() as u64).to_be_bytes());
            name.extend_from_slice(part.as_bytes());
        }
        Box::new(Backfilled {
            event_id: uuid::Uuid::new_v5(&READ_NAMESPACE, &name),
            id,
        })
    }
}

/// The UUID namespace of READ event ids (a fixed random UUID).
const READ_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f1c_2a5e_9b3d_4e07_a1c8_5d2f_7e90_b364);

impl ChangeEvent {
    /// The deterministic event id (a version-8 UUID carrying the commit LSN and the ordinal).
    pub fn id(&self) -> uuid::Uuid {
        if let Some(read) = &self.backfill {
            return read.event_id;
        }
        event_id(self.commit_lsn, self.ordinal)
    }

    /// `commitTime` as RFC 3339 UTC with microseconds.
    pub fn commit_time_text(&self) -> &str {
        &self.text.commit_time
    }
}

/// Pack (commit LSN, ordinal) into a version-8 UUID. The LSN's 64 bits are spread around the
/// version and variant bits; the ordinal fills the last 32 bits. Reversible, so an id read off
/// a message tells where in the WAL it came from.
pub fn event_id(commit_lsn: Lsn, ordinal: u32) -> uuid::Uuid {
    let l = commit_lsn.0;
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&(l >> 16).to_be_bytes()[2..8]);
    b[6] = 0x80 | ((l >> 12) & 0x0F) as u8; // version 8
    b[7] = ((l >> 4) & 0xFF) as u8;
    b[8] = 0x80 | (l & 0x0F) as u8; // RFC 4122 variant
    b[12..16].copy_from_slice(&ordinal.to_be_bytes());
    uuid::Uuid::from_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_distinct() {
        let a = event_id(Lsn(0x16_B374_D848), 0);
        assert_eq!(a, event_id(Lsn(0x16_B374_D848), 0));
        assert_ne!(a, event_id(Lsn(0x16_B374_D848), 1));
        assert_ne!(a, event_id(Lsn(0x16_B374_D849), 0));
        assert_ne!(event_id(Lsn(0x1000), 0), event_id(Lsn(0x1), 0));
        assert_eq!(a.get_version_num(), 8);
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
        // Every LSN bit lands somewhere: flipping any one changes the id.
        for bit in 0..64 {
            assert_ne!(event_id(Lsn(0), 7), event_id(Lsn(1 << bit), 7), "bit {bit}");
        }
    }
}
