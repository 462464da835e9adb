//! What PostgreSQL has for us: the server's settings, the slot and the publication, read once
//! and judged once. The service ([`super::setup`]) refuses to stream on these findings and
//! `check --connect` prints them, so the two can never disagree about what is wrong.

use crate::config::Config;
use crate::error::{Error, Kind, Result};
use crate::lsn::Lsn;

use super::sql::{classify, query_one};

/// The server, as seen by the configured user.
#[derive(Debug, Clone)]
pub(crate) struct Server {
    pub version: String,
    /// `server_version_num`, e.g. 170002.
    pub version_num: i32,
    pub wal_level: String,
    /// Whether this connection uses TLS.
    pub tls: bool,
    /// A standby, or a failover not yet promoted.
    pub in_recovery: bool,
    /// The current WAL end (`None` in recovery).
    pub wal_end: Option<Lsn>,
    pub replication: bool,
    pub superuser: bool,
}

impl Server {
    /// Whether logical decoding is possible at all.
    pub fn logical(&self) -> bool {
        self.wal_level == "logical"
    }
}

pub(crate) async fn server(client: &tokio_postgres::Client) -> Result<Server> {
    let row = query_one(
        client,
        "SELECT current_setting('wal_level'), current_setting('server_version'),
                coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false),
                pg_is_in_recovery(),
                CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,
                coalesce((SELECT rolreplication FROM pg_roles WHERE rolname = current_user), false),
                coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false),
                current_setting('server_version_num')::int4",
        &[],
    )
    .await?;
    Ok(Server {
        wal_level: row.get(0),
        version: row.get(1),
        tls: row.get(2),
        in_recovery: row.get(3),
        wal_end: row.get::<_, Option<String>>(4).and_then(|t| t.parse().ok()),
        replication: row.get(5),
        superuser: row.get(6),
        version_num: row.get(7),
    })
}

/// The replication slot named by `listener.slotName`, as `pg_replication_slots` shows it.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    /// `None` for a physical slot.
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub active: bool,
    pub active_pid: Option<i32>,
    pub confirmed_flush: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// WAL the slot holds: between its `restart_lsn` and the server's WAL end (`None` in
    /// recovery, or when invalidated).
    pub retained_bytes: Option<i64>,
    /// `safe_wal_size`: WAL that can still be written before the slot is invalidated by
    /// `max_slot_wal_keep_size` (`None`: no limit).
    pub safe_wal_size: Option<i64>,
    /// PostgreSQL 17+: why the slot was invalidated (`wal_removed`, `rows_removed`,
    /// `wal_level_insufficient`, PostgreSQL 18's `idle_timeout`).
    pub invalidation_reason: Option<String>,
    /// PostgreSQL 17+: the slot is synchronised to standbys (`None` before 17).
    pub failover: Option<bool>,
    /// PostgreSQL 17+: a copy kept by a standby's slot synchronisation.
    pub synced: Option<bool>,
}

/// Why the service cannot stream from a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SlotProblem {
    /// Another output plugin, or a physical slot (`None`).
    Plugin(Option<String>),
    /// A slot of another database.
    Database(Option<String>),
    /// Invalidated (`wal_status = lost`, or an `invalidation_reason`): changes are missing;
    /// the reason as PostgreSQL names it.
    Invalidated(String),
}

impl Slot {
    /// What makes the slot unusable for `config`, if anything.
    pub fn problem(&self, config: &Config) -> Option<SlotProblem> {
        if self.plugin.as_deref() != Some("pgoutput") {
            return Some(SlotProblem::Plugin(self.plugin.clone()));
        }
        if self.database.as_deref() != Some(config.database.name.as_str()) {
            return Some(SlotProblem::Database(self.database.clone()));
        }
        self.invalidated().map(SlotProblem::Invalidated)
    }

    /// Why the slot is invalidated, if it is.
    pub fn invalidated(&self) -> Option<String> {
        match (&self.invalidation_reason, self.wal_status.as_deref()) {
            (Some(reason), _) => Some(reason.clone()),
            (None, Some("lost")) => Some("wal_removed".into()),
            _ => None,
        }
    }
}

impl SlotProblem {
    /// The operator's message, for the slot `slot`.
    pub fn describe(&self, slot: &str, config: &Config) -> String {
        match self {
            SlotProblem::Plugin(plugin) => format!(
                "slot {slot} uses plugin {}, not pgoutput: choose another listener.slotName or SELECT pg_drop_replication_slot('{slot}')",
                plugin.as_deref().unwrap_or("none (a physical slot)")
            ),
            SlotProblem::Database(database) => format!(
                "slot {slot} belongs to database {}, not {}: choose another listener.slotName",
                database.as_deref().unwrap_or("none"),
                config.database.name
            ),
            SlotProblem::Invalidated(reason) => {
                let (why, prevent) = match reason.as_str() {
                    "wal_removed" => (
                        "WAL it still needed was removed (max_slot_wal_keep_size was exceeded)",
                        "raise max_slot_wal_keep_size, and alert on wal_listener_slot_retained_wal_bytes and wal_listener_slot_safe_wal_size_bytes",
                    ),
                    "idle_timeout" => (
                        "it was inactive for longer than idle_replication_slot_timeout",
                        "raise or disable idle_replication_slot_timeout, and keep wal-listener running (or a standby instance)",
                    ),
                    "rows_removed" => (
                        "catalog rows it needed were removed (on a standby: hot_standby_feedback is off or the standby has no primary_slot_name)",
                        "set hot_standby_feedback = on and primary_slot_name on the standby",
                    ),
                    "wal_level_insufficient" => (
                        "wal_level was lowered below logical on the primary",
                        "keep wal_level = logical",
                    ),
                    _ => ("PostgreSQL invalidated it", "see the PostgreSQL log"),
                };
                format!(
                    "slot {slot} is invalidated (invalidation_reason {reason}): {why}. Changes since its last confirmed position are lost, and wal-listener never recreates a slot by itself. Options: drop it (SELECT pg_drop_replication_slot('{slot}')) and restart wal-listener, which creates a new slot at the current position, then resynchronise consumers for the gap (e.g. from a snapshot); or point listener.slotName at a new slot. To prevent it: {prevent}"
                )
            }
        }
    }
}

/// Columns that only newer servers have are read through `to_jsonb(s)` so that one query
/// works on PostgreSQL 15 to 18.
const SLOT: &str = "SELECT plugin, database, active, active_pid, confirmed_flush_lsn::text, wal_status::text,
        CASE WHEN pg_is_in_recovery() THEN NULL ELSE (pg_current_wal_lsn() - restart_lsn)::int8 END,
        safe_wal_size, to_jsonb(s) ->> 'invalidation_reason',
        (to_jsonb(s) ->> 'failover')::bool, (to_jsonb(s) ->> 'synced')::bool
     FROM pg_replication_slots s WHERE slot_name = $1";

/// The slot named `name`, if it exists.
pub(crate) async fn slot(client: &tokio_postgres::Client, name: &str) -> Result<Option<Slot>> {
    let row = client.query_opt(SLOT, &[&name]).await.map_err(classify)?;
    Ok(row.map(|row| Slot {
        plugin: row.get(0),
        database: row.get(1),
        active: row.get(2),
        active_pid: row.get(3),
        confirmed_flush: row.get::<_, Option<String>>(4).and_then(|t| t.parse().ok()),
        wal_status: row.get(5),
        retained_bytes: row.get(6),
        safe_wal_size: row.get(7),
        invalidation_reason: row.get(8),
        failover: row.get(9),
        synced: row.get(10),
    }))
}

/// What a PostgreSQL failover with a failover slot needs, as this server's settings say
/// (`None` where the server does not have the setting: before 17).
#[derive(Debug, Clone, Default)]
pub(crate) struct FailoverSettings {
    /// On the primary: physical slots of standbys that logical replication waits for.
    pub synchronized_standby_slots: Option<String>,
    /// On a standby: the slot synchronisation worker.
    pub sync_replication_slots: Option<String>,
    pub hot_standby_feedback: Option<String>,
    pub primary_slot_name: Option<String>,
    pub primary_conninfo: Option<String>,
}

pub(crate) async fn failover_settings(client: &tokio_postgres::Client) -> Result<FailoverSettings> {
    let row = query_one(
        client,
        "SELECT current_setting('synchronized_standby_slots', true), current_setting('sync_replication_slots', true),
                current_setting('hot_standby_feedback', true), current_setting('primary_slot_name', true),
                current_setting('primary_conninfo', true)",
        &[],
    )
    .await?;
    Ok(FailoverSettings {
        synchronized_standby_slots: row.get(0),
        sync_replication_slots: row.get(1),
        hot_standby_feedback: row.get(2),
        primary_slot_name: row.get(3),
        primary_conninfo: row.get(4),
    })
}

/// The server's current WAL end (`None` in recovery).
pub(crate) async fn wal_end(client: &tokio_postgres::Client) -> Result<Option<Lsn>> {
    let row = query_one(
        client,
        "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END",
        &[],
    )
    .await?;
    Ok(row.get::<_, Option<String>>(0).and_then(|t| t.parse().ok()))
}

/// The publication named by `listener.publication`.
#[derive(Debug, Clone)]
pub(crate) struct Publication {
    pub all_tables: bool,
    /// The actions it does not publish (`insert`, `update`, `delete`, `truncate`).
    pub unpublished: Vec<&'static str>,
    pub tables: i64,
}

/// The publication named `name`, if it exists.
pub(crate) async fn publication(client: &tokio_postgres::Client, name: &str) -> Result<Option<Publication>> {
    let row = client
        .query_opt(
            "SELECT puballtables, pubinsert, pubupdate, pubdelete, pubtruncate,
                    (SELECT count(*) FROM pg_publication_tables t WHERE t.pubname = p.pubname)
             FROM pg_publication p WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(classify)?;
    Ok(row.map(|row| Publication {
        all_tables: row.get(0),
        unpublished: [(1, "insert"), (2, "update"), (3, "delete"), (4, "truncate")]
            .into_iter()
            .filter(|(i, _)| !row.get::<_, bool>(*i))
            .map(|(_, action)| action)
            .collect(),
        tables: row.get(5),
    }))
}

/// The slot is gone while the service ran — found missing on a reconnect, by the slot watch
/// while streaming, or refused at `START_REPLICATION` when it went in between: one message,
/// wherever it is found.
pub(crate) fn slot_lost(name: &str) -> Error {
    Error::new(
        Kind::SlotLost,
        format!(
            "replication slot {name:?} disappeared while wal-listener was running (dropped by someone, or a failover to a server without a synchronised copy — see listener.failoverSlot): the changes it held since the last confirmed position are lost; restart wal-listener to create a new slot from the current position, and re-sync consumers for the gap"
        ),
    )
}

/// The publication is gone while the service ran (recreating it `FOR ALL TABLES` could publish
/// tables a narrower one left out, so it is not recreated): one message, wherever it is found.
pub(crate) fn publication_lost(publication: &str) -> Error {
    Error::new(
        Kind::SlotLost,
        format!(
            "publication {publication:?} disappeared while wal-listener was running (dropped by someone?): changes are not published without it; recreate it with the tables it should publish (e.g. CREATE PUBLICATION {} FOR ALL TABLES), then restart wal-listener, and re-sync consumers for changes made while it was missing",
            super::sql::quote_ident(publication)
        ),
    )
}
