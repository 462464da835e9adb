//! Before streaming: judge the server, the publication and the slot ([`super::inspect`]),
//! create the publication (`FOR ALL TABLES`) and the pgoutput slot if they are missing, and
//! read where the slot stands.

use crate::backfill::{self, Control, Request};
use crate::config::{Config, Snapshot};
use crate::error::{Disposition, Error, Kind, Result};
use crate::lsn::Lsn;

use super::inspect::{self, SlotProblem};
use super::sql::{self, db_error_text, quote_ident};

/// Where the slot stands before streaming starts.
#[derive(Debug, Clone)]
pub struct SlotState {
    /// Everything before this is confirmed; streaming resumes here.
    pub confirmed_flush: Lsn,
    /// Whether another connection is streaming from the slot right now.
    pub active: bool,
    /// The server's current WAL end.
    pub server_wal_end: Option<Lsn>,
    /// `listener.failoverSlot` is on and the slot is not a failover slot yet: the replication
    /// session switches it (`ALTER_REPLICATION_SLOT … (FAILOVER true)`) before streaming.
    pub make_failover: bool,
}

/// A session's PostgreSQL side, ready to stream: the slot, and the config pinned to the one
/// server chosen from `database.host` (the primary).
#[derive(Debug, Clone)]
pub struct Prepared {
    pub slot: SlotState,
    pub config: Config,
}

/// The first PostgreSQL version with failover slots.
const FAILOVER_SLOTS: i32 = 170_000;

/// Check the server, create what is missing, and return the slot's state. `slot_seen`: this
/// process has set up before, so a missing slot or publication was dropped by someone — the
/// changes the slot held are gone, and a publication recreated FOR ALL TABLES might publish
/// more than the dropped one did; neither may pass silently.
pub async fn prepare(config: &Config, slot_seen: bool) -> Result<Prepared> {
    let (client, server, pinned) = primary(config).await?;
    if config.listener.failover_slot && server.version_num < FAILOVER_SLOTS {
        return Err(Error::new(
            Kind::PgSetup,
            format!(
                "listener.failoverSlot is on, but PostgreSQL {} at {} has no failover slots (they came with PostgreSQL 17): set listener.failoverSlot: false, or upgrade PostgreSQL",
                server.version,
                pinned.database.address()
            ),
        ));
    }
    ensure_publication(config, &client, slot_seen).await?;

    let name = &config.listener.slot_name;
    let slot = match inspect::slot(&client, name).await? {
        Some(slot) => slot,
        None if slot_seen => return Err(inspect::slot_lost(name)),
        None => {
            let slot = create_slot(&client, name, config.listener.failover_slot).await?;
            if config.listener.snapshot == Snapshot::Initial
                && let Err(e) = request_snapshot(config, &client).await
            {
                // Without its snapshot the new slot would start with a gap: drop it, so the
                // next try creates both again.
                let _ = client.execute("SELECT pg_drop_replication_slot($1)", &[name]).await;
                return Err(e);
            }
            slot
        }
    };
    if let Some(problem) = slot.problem(config) {
        let kind = match problem {
            SlotProblem::Invalidated(_) => Kind::SlotInvalidated,
            _ => Kind::PgSetup,
        };
        return Err(Error::new(
            kind,
            format!("replication {}", problem.describe(name, config)),
        ));
    }
    Ok(Prepared {
        slot: SlotState {
            confirmed_flush: slot.confirmed_flush.unwrap_or(Lsn::ZERO),
            active: slot.active,
            server_wal_end: server.wal_end,
            make_failover: config.listener.failover_slot && slot.failover == Some(false),
        },
        config: pinned,
    })
}

/// Connect to the primary: the configured server, or the first of `database.host`'s list
/// that answers and is not in recovery. Returns the config pinned to it.
async fn primary(config: &Config) -> Result<(tokio_postgres::Client, inspect::Server, Config)> {
    let servers = config.database.servers().map_err(|e| Error::new(Kind::PgSetup, e))?;
    let mut last = None;
    for (host, port) in servers {
        let mut pinned = config.clone();
        pinned.database.host = host;
        pinned.database.port = port;
        let found = async {
            let client = sql::connect(&pinned).await?;
            let server = inspect::server(&client).await?;
            Ok::<_, Error>((client, server))
        }
        .await;
        let (client, server) = match found {
            Ok(found) => found,
            // The next server in the list may answer.
            Err(e) if config.database.is_list() && e.disposition() == Disposition::Transient => {
                tracing::debug!(server = %pinned.database.address(), error = %e, "PostgreSQL server not usable; trying the next");
                last = Some(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        if !server.logical() {
            return Err(Error::new(
                Kind::PgSetup,
                format!(
                    "PostgreSQL at {} has wal_level={}; logical decoding needs wal_level=logical (set it in postgresql.conf or with ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL)",
                    pinned.database.address(),
                    server.wal_level
                ),
            ));
        }
        if server.in_recovery {
            // A standby, or a failover not yet promoted. Logical slots are streamed from the
            // primary; wait for this server to become one, or try the next.
            last = Some(Error::new(
                Kind::PgInRecovery,
                format!(
                    "PostgreSQL at {} is in recovery (a standby, or a failover not yet promoted): logical replication needs the primary; retrying until one of database.host is promoted (if this is a replica, point database.host at the primary)",
                    pinned.database.address()
                ),
            ));
            continue;
        }
        log_primary(&pinned, &server);
        return Ok((client, server, pinned));
    }
    Err(last.unwrap_or_else(|| Error::new(Kind::PgSetup, "database.host names no server")))
}

/// One line when the server streamed from changes (at start, and after a failover); standbys
/// and retries call [`prepare`] every few seconds.
fn log_primary(pinned: &Config, server: &inspect::Server) {
    static LAST: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());
    let address = pinned.database.address();
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if *last != address {
        if last.is_empty() {
            tracing::info!(version = %server.version, server = %address, tls = server.tls, "connected to PostgreSQL");
        } else {
            tracing::warn!(version = %server.version, server = %address, previous = %*last, "PostgreSQL primary changed (failover)");
        }
        *last = address;
    }
}

/// The publication exists afterwards, or the error says why not.
async fn ensure_publication(config: &Config, client: &tokio_postgres::Client, slot_seen: bool) -> Result<()> {
    let publication = &config.listener.publication;
    if inspect::publication(client, publication).await?.is_some() {
        return Ok(());
    }
    if slot_seen {
        // Recreating it FOR ALL TABLES could publish tables a narrower publication left out.
        return Err(inspect::publication_lost(publication));
    }
    let sql = format!("CREATE PUBLICATION {} FOR ALL TABLES", quote_ident(publication));
    match client.batch_execute(&sql).await {
        Ok(()) => {
            tracing::info!(publication = %publication, "created publication FOR ALL TABLES");
            Ok(())
        }
        // Two instances starting together: the other one created it first.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => Ok(()),
        Err(e) => Err(Error::new(
            Kind::PgSetup,
            format!(
                "publication {publication:?} does not exist and creating it failed: {} (create it yourself, e.g. CREATE PUBLICATION {} FOR ALL TABLES, or grant the user the right to)",
                db_error_text(&e),
                quote_ident(publication)
            ),
        )),
    }
}

/// Create the pgoutput slot `name` (or find the one another instance just created); with
/// `failover`, as a failover slot (PostgreSQL 17+, checked before).
async fn create_slot(client: &tokio_postgres::Client, name: &str, failover: bool) -> Result<inspect::Slot> {
    let sql = if failover {
        "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)"
    } else {
        "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')"
    };
    let created = client.query_one(sql, &[&name]).await;
    match created {
        Ok(_) => tracing::info!(slot = %name, failover, "created logical replication slot (pgoutput)"),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {}
        Err(e) => {
            return Err(Error::new(
                Kind::PgSetup,
                format!(
                    "replication slot {name:?} does not exist and creating it failed: {} (the user needs the REPLICATION attribute; check max_replication_slots)",
                    db_error_text(&e)
                ),
            ));
        }
    }
    inspect::slot(client, name).await?.ok_or_else(|| {
        Error::new(
            Kind::PgUnavailable,
            format!("replication slot {name:?} was created but is not listed (dropped at once?); retrying"),
        )
    })
}

/// `listener.snapshot: initial` on a new slot: request a backfill of every table the filter
/// selects for inserts (every published table without a filter), through the WAL right after
/// the slot's start, so it comes before every change the slot streams.
async fn request_snapshot(config: &Config, client: &tokio_postgres::Client) -> Result<()> {
    let tables = backfill::table::selected(config, client).await.map_err(sql::classify)?;
    if tables.is_empty() {
        tracing::info!("listener.snapshot: initial, but no published table is selected; nothing to backfill");
        return Ok(());
    }
    let request = Request {
        slot: config.listener.slot_name.clone(),
        id: backfill::new_id(),
        tables,
        filter: None,
        chunk_size: None,
        snapshot: true,
    };
    tracing::info!(backfill = %request.id, tables = request.tables.len(), "listener.snapshot: initial: backfill of the existing rows requested");
    backfill::runner::emit(client, &Control::Request(request)).await
}
