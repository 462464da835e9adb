//! Ordinary SQL before streaming: check `wal_level`, create the publication (`FOR ALL TABLES`)
//! and the pgoutput slot if they are missing, and read where the slot stands.

use tokio_postgres::NoTls;
use tokio_postgres::config::SslMode as PgSslMode;

use crate::config::{Config, SslMode};
use crate::lsn::Lsn;

use super::{SourceError, tls};

/// Where the slot stands before streaming starts.
#[derive(Debug, Clone)]
pub struct SlotState {
    /// Everything before this is confirmed; streaming resumes here.
    pub confirmed_flush: Lsn,
    /// Whether another connection is streaming from the slot right now.
    pub active: bool,
    pub created: bool,
}

/// Connect with tokio-postgres (used for setup only; the connection ends when the client drops).
pub async fn connect(config: &Config) -> Result<tokio_postgres::Client, SourceError> {
    let db = &config.database;
    let mut pg = tokio_postgres::Config::new();
    pg.host(&db.host)
        .port(db.port)
        .user(&db.user)
        .dbname(&db.name)
        .application_name("wal-listener")
        .connect_timeout(std::time::Duration::from_secs(10));
    if let Some(password) = &db.password {
        pg.password(password.expose());
    }
    match tls::connector(config)? {
        None => spawn_connection(config, pg.ssl_mode(PgSslMode::Disable), NoTls).await,
        Some(tls) => {
            let mode = match tls::effective_mode(db) {
                SslMode::Prefer => PgSslMode::Prefer,
                _ => PgSslMode::Require,
            };
            spawn_connection(config, pg.ssl_mode(mode), tls).await
        }
    }
}

/// Connect and drive the connection in its own task (it ends when the client drops).
async fn spawn_connection<T>(
    config: &Config,
    pg: &tokio_postgres::Config,
    tls: T,
) -> Result<tokio_postgres::Client, SourceError>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = match pg.connect(tls).await {
        Ok(connected) => connected,
        Err(e) if missing_password(&e) => return Err(no_password(config).await),
        Err(e) => return Err(classify_connect(config, &e)),
    };
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "setup connection closed");
        }
    });
    Ok(client)
}

/// Check the server, create what is missing, and return the slot's state. `slot_seen`: this
/// process has set up before, so a missing slot or publication was dropped by someone — the
/// changes the slot held are gone, and a publication recreated FOR ALL TABLES might publish
/// more than the dropped one did; neither may pass silently.
pub async fn prepare(config: &Config, slot_seen: bool) -> Result<SlotState, SourceError> {
    let client = connect(config).await?;
    let server = query_one(
        &client,
        "SELECT current_setting('wal_level'), current_setting('server_version'),
                coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false),
                CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END",
        &[],
    )
    .await?;
    let (wal_level, version, tls): (String, String, bool) = (server.get(0), server.get(1), server.get(2));
    // Logged once per process: standbys and retries call this every few seconds.
    static LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::info!(%version, host = %config.database.host, tls, "connected to PostgreSQL");
    }
    // Keeps the replication-lag metric honest while the stream is down (NATS away, standby).
    if let Some(Ok(wal_end)) = server.get::<_, Option<String>>(3).map(|t| t.parse::<Lsn>()) {
        crate::metrics::server_wal_end(wal_end);
    }
    if wal_level != "logical" {
        return Err(SourceError::Fatal(format!(
            "PostgreSQL has wal_level={wal_level}; logical decoding needs wal_level=logical (set it in postgresql.conf or with ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL)"
        )));
    }
    if server.get::<_, Option<String>>(3).is_none() {
        // pg_is_in_recovery(): a standby, or a failover not yet promoted. Logical slots live on
        // the primary; wait for this server to become one.
        return Err(SourceError::Transient(format!(
            "PostgreSQL at {} is in recovery (a standby, or a failover not yet promoted): logical replication needs the primary; retrying until it is promoted (if this is a replica, point database.host at the primary)",
            config.database.host
        )));
    }
    let publication = &config.listener.publication;
    let exists = client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[publication])
        .await
        .map_err(|e| classify(&e))?
        .is_some();
    if !exists && slot_seen {
        // Recreating it FOR ALL TABLES could publish tables a narrower publication left out.
        return Err(SourceError::Fatal(format!(
            "publication {publication:?} disappeared while wal-listener was running (dropped by someone?): recreate it with the tables it should publish (e.g. CREATE PUBLICATION {} FOR ALL TABLES), then restart wal-listener",
            quote_ident(publication)
        )));
    }
    if !exists {
        let sql = format!("CREATE PUBLICATION {} FOR ALL TABLES", quote_ident(publication));
        match client.batch_execute(&sql).await {
            Ok(()) => tracing::info!(publication = %publication, "created publication FOR ALL TABLES"),
            // Two instances starting together: the other one created it first.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {}
            Err(e) => {
                return Err(SourceError::Fatal(format!(
                    "publication {publication:?} does not exist and creating it failed: {} (create it yourself, e.g. CREATE PUBLICATION {} FOR ALL TABLES, or grant the user the right to)",
                    db_error_text(&e),
                    quote_ident(publication)
                )));
            }
        }
    }

    let slot = &config.listener.slot_name;
    let row = client
        .query_opt(
            "SELECT plugin, database, confirmed_flush_lsn::text, active FROM pg_replication_slots WHERE slot_name = $1",
            &[slot],
        )
        .await
        .map_err(|e| classify(&e))?;
    let (row, created) = match row {
        Some(row) => (row, false),
        None if slot_seen => {
            return Err(SourceError::Fatal(format!(
                "replication slot {slot:?} disappeared while wal-listener was running (dropped by someone?): the changes it held since the last confirmed position are lost; restart wal-listener to create a new slot from the current position, and re-sync consumers for the gap"
            )));
        }
        None => {
            let created = client
                .query_one(
                    "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[slot],
                )
                .await;
            match created {
                Ok(_) => tracing::info!(slot = %slot, "created logical replication slot (pgoutput)"),
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {}
                Err(e) => {
                    return Err(SourceError::Fatal(format!(
                        "replication slot {slot:?} does not exist and creating it failed: {} (the user needs the REPLICATION attribute; check max_replication_slots)",
                        db_error_text(&e)
                    )));
                }
            }
            let row = query_one(
                &client,
                "SELECT plugin, database, confirmed_flush_lsn::text, active FROM pg_replication_slots WHERE slot_name = $1",
                &[slot],
            )
            .await?;
            (row, true)
        }
    };
    let plugin: Option<String> = row.get(0);
    let database: Option<String> = row.get(1);
    if plugin.as_deref() != Some("pgoutput") {
        return Err(SourceError::Fatal(format!(
            "replication slot {slot:?} uses plugin {plugin:?}, not pgoutput: choose another listener.slotName or drop that slot"
        )));
    }
    if database.as_deref() != Some(config.database.name.as_str()) {
        return Err(SourceError::Fatal(format!(
            "replication slot {slot:?} belongs to database {database:?}, not {:?}: choose another listener.slotName",
            config.database.name
        )));
    }
    let confirmed: Option<String> = row.get(2);
    let confirmed_flush = confirmed
        .as_deref()
        .unwrap_or("0/0")
        .parse()
        .map_err(|e| SourceError::Fatal(format!("slot {slot:?}: {e}")))?;
    Ok(SlotState {
        confirmed_flush,
        active: row.get(3),
        created,
    })
}

async fn query_one(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<tokio_postgres::Row, SourceError> {
    client.query_one(sql, params).await.map_err(|e| classify(&e))
}

/// Double-quote an identifier for SQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The error with its causes (`error connecting to server: Connection refused (os error 111)`):
/// tokio-postgres' own `Display` names only the kind.
fn db_error_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let next = c.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = c.source();
    }
    text
}

/// tokio-postgres' answer when the server asks for a password and none is configured.
fn missing_password(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_none()
        && std::error::Error::source(e).is_some_and(|cause| cause.to_string() == "password missing")
}

/// The server wants a password and none is configured: no retry can fix that.
async fn no_password(config: &Config) -> SourceError {
    let db = &config.database;
    let method = super::auth::password_method(config)
        .await
        .map(|m| format!(" ({m} authentication)"))
        .unwrap_or_default();
    SourceError::Fatal(format!(
        "PostgreSQL at {}:{} asks for a password{method} for user {:?}, and none is configured: set database.password, database.passwordFile or WAL_DATABASE_PASSWORD (or allow the user without one in pg_hba.conf)",
        db.host, db.port, db.user
    ))
}

/// A failed connection attempt, with what to check; [`classify`] for everything the server
/// said.
fn classify_connect(config: &Config, e: &tokio_postgres::Error) -> SourceError {
    if e.as_db_error().is_some() {
        return classify(e);
    }
    let db = &config.database;
    let text = db_error_text(e);
    let kind = e.to_string();
    if kind == "authentication error" {
        // An authentication method tokio-postgres does not speak (GSSAPI, SSPI, Kerberos), or
        // channel binding the server did not offer.
        return SourceError::Fatal(format!(
            "PostgreSQL at {}:{} wants an authentication method wal-listener cannot use for user {:?}: {text} (allow password, md5 or scram-sha-256 for this user in pg_hba.conf)",
            db.host, db.port, db.user
        ));
    }
    if kind == "invalid configuration" {
        return SourceError::Fatal(format!(
            "the PostgreSQL connection settings are not usable: {text} (check database.host, database.port, database.user and database.name)"
        ));
    }
    if kind == "error connecting to server" || kind == "timeout waiting for server" {
        let what = if text.contains("lookup address") || text.contains("Name or service not known") {
            format!("cannot resolve database.host {:?}", db.host)
        } else {
            format!("cannot connect to PostgreSQL at {}:{}", db.host, db.port)
        };
        return SourceError::Transient(format!(
            "{what}: {text} (is PostgreSQL running there? check database.host and database.port); retrying"
        ));
    }
    classify(e)
}

/// Authentication and privilege problems are fatal; everything else (refused connections,
/// restarts, recovery) is worth retrying.
pub(crate) fn classify(e: &tokio_postgres::Error) -> SourceError {
    use tokio_postgres::error::SqlState;
    let text = db_error_text(e);
    match e.code() {
        Some(code)
            if *code == SqlState::INVALID_PASSWORD
                || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                || *code == SqlState::INSUFFICIENT_PRIVILEGE
                || *code == SqlState::INVALID_CATALOG_NAME =>
        {
            SourceError::Fatal(format!(
                "PostgreSQL refused the connection: {text} (check database.user, database.password, database.name and pg_hba.conf)"
            ))
        }
        // Certificate and TLS negotiation failures need an operator, not a retry.
        _ if text.contains("TLS") => SourceError::Fatal(format!(
            "TLS to PostgreSQL failed: {text} (check database.sslMode, sslRootCert and sslCert/sslKey)"
        )),
        _ => SourceError::Transient(format!("PostgreSQL: {text}")),
    }
}
