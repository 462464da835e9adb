//! The replication connection: slot and publication setup, `START_REPLICATION`, keepalives and
//! standby status feedback. It knows bytes and LSNs, not rows.
//!
//! Two connections are used. Ordinary SQL (checks, creating the publication and the slot,
//! reading `confirmed_flush_lsn`) goes through tokio-postgres ([`setup`]); the streaming
//! connection goes through the `pgwire-replication` crate behind the small [`Replication`]
//! trait, so the transport can be swapped. That crate already parses Begin, Commit and logical
//! Message frames; everything else arrives as raw pgoutput bytes for our own decoder.
//!
//! ## Progress
//!
//! The only LSN we ever report as flushed is the one [`Replication::confirm`] is given, which
//! the ack stage computes: the end LSN of the newest transaction whose every message JetStream
//! has acknowledged, or a keepalive's WAL end once everything before it is acknowledged. After
//! a restart the server resends every transaction that committed after the confirmed LSN, and
//! the deterministic event ids let JetStream drop what it already stored.

mod auth;
mod catalog;
pub(crate) mod inspect;
mod pgwire;
pub mod setup;
pub(crate) mod slot_watch;
pub(crate) mod sql;
pub mod tls;

use bytes::Bytes;

use crate::decode;
use crate::lsn::Lsn;

pub(crate) use catalog::Catalog;
pub use pgwire::PgwireReplication;

/// One frame from the replication stream.
#[derive(Debug)]
pub enum Frame {
    /// A message the transport already parsed (Begin, Commit, logical Message). The crate
    /// drops Commit's flags byte, which PostgreSQL always sends as 0: it is 0 here too.
    Decoded(decode::Message),
    /// A pgoutput message for our decoder, and the server's WAL end when it was sent.
    Data { bytes: Bytes, wal_end: Lsn },
    /// The server's WAL end, sent while idle.
    KeepAlive(Lsn),
}

impl Frame {
    /// The server's WAL end, where the frame tells it.
    pub fn wal_end(&self) -> Option<Lsn> {
        match self {
            Frame::Data { wal_end, .. } | Frame::KeepAlive(wal_end) => Some(*wal_end),
            Frame::Decoded(_) => None,
        }
    }
}

/// A logical replication stream.
pub trait Replication: Send {
    /// The next frame; `Ok(None)` when the stream ended.
    fn recv(&mut self) -> impl std::future::Future<Output = crate::error::Result<Option<Frame>>> + Send;
    /// Report everything up to `lsn` as flushed (sent with the next standby status update).
    fn confirm(&self, lsn: Lsn);
    /// Wait (at most `deadline`) until the last confirmed LSN has been sent to the server.
    fn flush_confirmation(&self, deadline: std::time::Duration) -> impl std::future::Future<Output = ()> + Send;
}

/// Session settings pinned on the replication connection so that text output is stable.
pub const SESSION_OPTIONS: &str =
    "-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=postgres -c extra_float_digits=3 -c bytea_output=hex";
