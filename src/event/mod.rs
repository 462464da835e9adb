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
//! drops the duplicate.

mod assemble;
mod from_json;
pub mod json;
pub mod types;
pub mod value;

use std::sync::Arc;

pub use assemble::{Assembler, BadValue, BadValues, EventError, Item};
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
            commit_time: pg_time_to_rfc3339(commit_time),
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
}

impl ChangeEvent {
    /// The deterministic event id (a version-8 UUID carrying the commit LSN and the ordinal).
    pub fn id(&self) -> uuid::Uuid {
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

/// PostgreSQL timestamps count microseconds from 2000-01-01; Unix time from 1970-01-01.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800 * 1_000_000;

/// Render a PostgreSQL-epoch microsecond timestamp as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn pg_time_to_rfc3339(pg_micros: i64) -> String {
    let unix = i128::from(pg_micros) + i128::from(PG_EPOCH_UNIX_MICROS);
    let micros = unix.rem_euclid(1_000_000);
    let secs = unix.div_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        return format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            sod / 3600,
            (sod % 3600) / 60,
            sod % 60
        );
    }
    // Written digit by digit: this runs for every event, and `format!` showed in profiles.
    let mut out = [0u8; 27];
    let mut put = |at: usize, width: usize, mut value: i128| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, y);
    put(5, 2, m);
    put(8, 2, d);
    put(11, 2, sod / 3600);
    put(14, 2, (sod % 3600) / 60);
    put(17, 2, sod % 60);
    put(20, 6, micros);
    for (at, sep) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (26, b'Z'),
    ] {
        out[at] = sep;
    }
    out.iter().map(|&b| char::from(b)).collect()
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i128) -> (i128, i128, i128) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
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

    #[test]
    fn commit_time_renders_rfc3339() {
        assert_eq!(pg_time_to_rfc3339(0), "2000-01-01T00:00:00.000000Z");
        assert_eq!(pg_time_to_rfc3339(-1), "1999-12-31T23:59:59.999999Z");
        // 2026-11-26T10:20:30.123456Z
        let unix = 1_795_688_430i64 * 1_000_000 + 123_456;
        assert_eq!(
            pg_time_to_rfc3339(unix - PG_EPOCH_UNIX_MICROS),
            "2026-11-26T10:20:30.123456Z"
        );
        // Outside years 0–9999 the slow path renders what it can.
        assert_eq!(
            pg_time_to_rfc3339(-63_200_000_000_000_000),
            "-003-04-09T12:26:40.000000Z"
        );
        let _ = pg_time_to_rfc3339(i64::MAX);
        let _ = pg_time_to_rfc3339(i64::MIN);
    }
}
