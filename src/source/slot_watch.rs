//! Watching the slot while a session streams: every `listener.heartbeatInterval`, one look at
//! `pg_replication_slots` and the server's WAL end on the ordinary SQL connection.
//!
//! - The slot's safety becomes metrics ([`crate::metrics::slot`]): the WAL it holds
//!   (`restart_lsn` → current WAL end), `wal_status`, `safe_wal_size` — what an operator alerts
//!   on before `max_slot_wal_keep_size` (or PostgreSQL 18's `idle_replication_slot_timeout`)
//!   invalidates it, or before a slot nobody watches fills the disk.
//! - A dropped publication ends the process as on PostgreSQL 15–17 (PostgreSQL 18's pgoutput
//!   skips a missing publication with a warning and streams on, publishing nothing).
//! - An invalidated slot (`wal_status = lost`, an `invalidation_reason`) ends the process with
//!   the operator's options ([`Kind::SlotInvalidated`]): streaming on would silently skip the
//!   changes PostgreSQL threw away, and recreating the slot would hide the gap.
//! - Progress ([`crate::health::Progress`]): the slot's confirmed position against the
//!   server's WAL end; no movement for `listener.stallTimeout` while WAL grows turns `/healthz`
//!   unhealthy, with the reason in the body and the log.
//!
//! The position judged is the server's `confirmed_flush_lsn`, not the one this process
//! thinks it sent: a confirmation that never arrives counts as none.

use std::time::Instant;

use crate::config::Config;
use crate::error::{Error, Kind, Result};
use crate::health::{self, Progress, Verdict};
use crate::metrics;

use super::inspect;

/// Poll until the slot is invalidated or dropped, or the connection fails (never `Ok`).
/// `config` is pinned to the server the session streams from.
pub(crate) async fn run(config: Config) -> Result<()> {
    let client = super::sql::connect(&config).await?;
    let name = &config.listener.slot_name;
    let mut ticks = tokio::time::interval(config.listener.heartbeat_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    static PROGRESS: std::sync::Mutex<Option<Progress>> = std::sync::Mutex::new(None);
    loop {
        ticks.tick().await;
        let Some(slot) = inspect::slot(&client, name).await? else {
            return Err(Error::new(
                Kind::SlotLost,
                format!(
                    "replication slot {name:?} disappeared while wal-listener was streaming (dropped by someone?): the changes it held since the last confirmed position are lost; restart wal-listener to create a new slot from the current position, and re-sync consumers for the gap"
                ),
            ));
        };
        metrics::slot(slot.retained_bytes, slot.safe_wal_size, slot.wal_status.as_deref());
        let publication = &config.listener.publication;
        if inspect::publication(&client, publication).await?.is_none() {
            // PostgreSQL 18's pgoutput streams on without a dropped publication (with a
            // warning in the server log) where older versions end the stream with an error.
            return Err(Error::new(
                Kind::SlotLost,
                format!(
                    "publication {publication:?} does not exist any more (dropped while wal-listener ran?): changes are not published without it; recreate it with the tables it should publish (e.g. CREATE PUBLICATION {} FOR ALL TABLES), then restart wal-listener, and re-sync consumers for changes made while it was missing",
                    super::sql::quote_ident(publication)
                ),
            ));
        }
        if let Some(reason) = slot.invalidated() {
            return Err(Error::new(
                Kind::SlotInvalidated,
                format!(
                    "replication {}",
                    inspect::SlotProblem::Invalidated(reason).describe(name, &config)
                ),
            ));
        }
        let (Some(confirmed), Some(wal_end)) = (slot.confirmed_flush, inspect::wal_end(&client).await?) else {
            continue;
        };
        metrics::server_wal_end(wal_end);
        let now = Instant::now();
        let verdict = {
            let mut progress = PROGRESS.lock().unwrap_or_else(|e| e.into_inner());
            progress
                .get_or_insert_with(|| Progress::new(confirmed, wal_end, now))
                .observe(confirmed, wal_end, now, config.listener.stall_timeout)
        };
        match verdict {
            Verdict::Fine => {
                metrics::slot_stalled(std::time::Duration::ZERO);
                health::stalled(None);
            }
            Verdict::Pending(waited) => {
                metrics::slot_stalled(waited);
                health::stalled(None);
            }
            Verdict::Stalled(waited, why) => {
                metrics::slot_stalled(waited);
                health::stalled(Some(why));
            }
        }
    }
}
