//! Before streaming: judge the server, the publication and the slot ([`super::inspect`]),
//! create the publication (`FOR ALL TABLES`) and the pgoutput slot if they are missing, and
//! read where the slot stands.

use crate::config::Config;
use crate::error::{Error, Kind, Result};
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
}

/// Check the server, create what is missing, and return the slot's state. `slot_seen`: this
/// process has set up before, so a missing slot or publication was dropped by someone — the
/// changes the slot held are gone, and a publication recreated FOR ALL TABLES might publish
/// more than the dropped one did; neither may pass silently.
pub async fn prepare(config: &Config, slot_seen: bool) -> Result<SlotState> {
    let client = sql::connect(config).await?;
    let server = inspect::server(&client).await?;
    // Logged once per process: standbys and retries call this every few seconds.
    static LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::info!(version = %server.version, host = %config.database.host, tls = server.tls, "connected to PostgreSQL");
    }
    if !server.logical() {
        return Err(Error::new(
            Kind::PgSetup,
            format!(
                "PostgreSQL has wal_level={}; logical decoding needs wal_level=logical (set it in postgresql.conf or with ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL)",
                server.wal_level
            ),
        ));
    }
    if server.in_recovery {
        // A standby, or a failover not yet promoted. Logical slots live on the primary; wait
        // for this server to become one.
        return Err(Error::new(
            Kind::PgInRecovery,
            format!(
                "PostgreSQL at {} is in recovery (a standby, or a failover not yet promoted): logical replication needs the primary; retrying until it is promoted (if this is a replica, point database.host at the primary)",
                config.database.host
            ),
        ));
    }
    ensure_publication(config, &client, slot_seen).await?;

    let name = &config.listener.slot_name;
    let slot = match inspect::slot(&client, name).await? {
        Some(slot) => slot,
        None if slot_seen => {
            return Err(Error::new(
                Kind::SlotLost,
                format!(
                    "replication slot {name:?} disappeared while wal-listener was running (dropped by someone?): the changes it held since the last confirmed position are lost; restart wal-listener to create a new slot from the current position, and re-sync consumers for the gap"
                ),
            ));
        }
        None => create_slot(&client, name).await?,
    };
    if let Some(problem) = slot.problem(config) {
        let kind = match problem {
            SlotProblem::Lost => Kind::SlotLost,
            _ => Kind::PgSetup,
        };
        return Err(Error::new(
            kind,
            format!("replication {}", problem.describe(name, config)),
        ));
    }
    Ok(SlotState {
        confirmed_flush: slot.confirmed_flush.unwrap_or(Lsn::ZERO),
        active: slot.active,
        server_wal_end: server.wal_end,
    })
}

/// The publication exists afterwards, or the error says why not.
async fn ensure_publication(config: &Config, client: &tokio_postgres::Client, slot_seen: bool) -> Result<()> {
    let publication = &config.listener.publication;
    if inspect::publication(client, publication).await?.is_some() {
        return Ok(());
    }
    if slot_seen {
        // Recreating it FOR ALL TABLES could publish tables a narrower publication left out.
        return Err(Error::new(
            Kind::SlotLost,
            format!(
                "publication {publication:?} disappeared while wal-listener was running (dropped by someone?): recreate it with the tables it should publish (e.g. CREATE PUBLICATION {} FOR ALL TABLES), then restart wal-listener",
                quote_ident(publication)
            ),
        ));
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

/// Create the pgoutput slot `name` (or find the one another instance just created).
async fn create_slot(client: &tokio_postgres::Client, name: &str) -> Result<inspect::Slot> {
    let created = client
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&name],
        )
        .await;
    match created {
        Ok(_) => tracing::info!(slot = %name, "created logical replication slot (pgoutput)"),
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
