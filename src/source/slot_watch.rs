//! Watching the slot while a session streams: every `listener.heartbeatInterval` the session
//! loop ([`crate::app`]) takes one look at `pg_replication_slots`, the publication and the
//! server's WAL end on the ordinary SQL connection ([`SlotWatch::poll`]).
//!
//! - The slot's safety becomes metrics (`crate::metrics::slot`): the WAL it holds
//!   (`restart_lsn` → current WAL end), `wal_status`, `safe_wal_size` — what an operator alerts
//!   on before `max_slot_wal_keep_size` (or PostgreSQL 18's `idle_replication_slot_timeout`)
//!   invalidates it, or before a slot nobody watches fills the disk.
//! - A dropped publication ends the process as on PostgreSQL 15–17 (PostgreSQL 18's pgoutput
//!   skips a missing publication with a warning and streams on, publishing nothing).
//! - An invalidated slot (`wal_status = lost`, an `invalidation_reason`) ends the process with
//!   the operator's options ([`Kind::SlotInvalidated`]): streaming on would silently skip the
//!   changes PostgreSQL threw away, and recreating the slot would hide the gap.
//! - Progress (`crate::health::Progress`): the slot's confirmed position against the
//!   server's WAL end; no movement for `listener.stallTimeout` while WAL grows turns `/healthz`
//!   unhealthy, with the reason in the body and the log.
//!
//! The position judged is the server's `confirmed_flush_lsn`, not the one this process
//! thinks it sent: a confirmation that never arrives counts as none.

use crate::config::Config;
use crate::error::{Error, Kind, Result};
use crate::lsn::Lsn;

use super::inspect;

/// What one look at the slot found (an invalidated or missing slot is an error instead).
#[derive(Debug, Clone)]
pub(crate) struct SlotReport {
    /// WAL the slot holds: `restart_lsn` to the current WAL end.
    pub retained_bytes: Option<i64>,
    /// `safe_wal_size` (`None`: no `max_slot_wal_keep_size`).
    pub safe_wal_size: Option<i64>,
    pub wal_status: Option<String>,
    /// The slot's `confirmed_flush_lsn`, as the server has it.
    pub confirmed: Option<Lsn>,
    /// The server's current WAL end.
    pub wal_end: Option<Lsn>,
}

/// The SQL connection the slot is watched on, pinned to the server the session streams from.
pub(crate) struct SlotWatch {
    client: tokio_postgres::Client,
    config: Config,
}

impl SlotWatch {
    pub async fn connect(config: Config) -> Result<SlotWatch> {
        Ok(SlotWatch {
            client: super::sql::connect(&config).await?,
            config,
        })
    }

    /// The config the watch is pinned to.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// One look: the slot's state, or why streaming cannot go on (an invalidated or dropped
    /// slot, a dropped publication).
    pub async fn poll(&self) -> Result<SlotReport> {
        let (client, config) = (&self.client, &self.config);
        let name = &config.listener.slot_name;
        let Some(slot) = inspect::slot(client, name).await? else {
            return Err(inspect::slot_lost(name));
        };
        let publication = &config.listener.publication;
        if inspect::publication(client, publication).await?.is_none() {
            // PostgreSQL 18's pgoutput streams on without a dropped publication (with a
            // warning in the server log) where older versions end the stream with an error.
            return Err(inspect::publication_lost(publication));
        }
        if let Some(reason) = slot.invalidated() {
            return Err(Error::new(
                Kind::SlotInvalidated,
                format!(
                    "replication {}",
                    inspect::SlotProblem::Invalidated(reason).describe(name, config)
                ),
            ));
        }
        Ok(SlotReport {
            retained_bytes: slot.retained_bytes,
            safe_wal_size: slot.safe_wal_size,
            wal_status: slot.wal_status,
            confirmed: slot.confirmed_flush,
            wal_end: inspect::wal_end(client).await?,
        })
    }
}
