//! What PostgreSQL has for us: the server's settings, the slot and the publication, read once
//! and judged once. The service ([`super::setup`]) refuses to stream on these findings and
//! `check --connect` prints them, so the two can never disagree about what is wrong.

use crate::config::Config;
use crate::error::Result;
use crate::lsn::Lsn;

use super::sql::{classify, query_one};

/// The server, as seen by the configured user.
#[derive(Debug, Clone)]
pub(crate) struct Server {
    pub version: String,
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
                coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false)",
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
    /// WAL between the confirmed position and the server's WAL end (`None` in recovery).
    pub retained_bytes: Option<i64>,
}

/// Why the service cannot stream from a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SlotProblem {
    /// Another output plugin, or a physical slot (`None`).
    Plugin(Option<String>),
    /// A slot of another database.
    Database(Option<String>),
    /// `wal_status = lost`: WAL it needed was removed; changes are missing.
    Lost,
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
        if self.wal_status.as_deref() == Some("lost") {
            return Some(SlotProblem::Lost);
        }
        None
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
            SlotProblem::Lost => format!(
                "slot {slot} has lost required WAL (wal_status=lost; max_slot_wal_keep_size was exceeded): changes are missing; drop and recreate it (SELECT pg_drop_replication_slot('{slot}')), then resynchronise consumers"
            ),
        }
    }
}

const SLOT: &str = "SELECT plugin, database, active, active_pid, confirmed_flush_lsn::text, wal_status::text,
        CASE WHEN pg_is_in_recovery() THEN NULL ELSE (pg_current_wal_lsn() - restart_lsn)::int8 END
     FROM pg_replication_slots WHERE slot_name = $1";

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
    }))
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
