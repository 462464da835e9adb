//! The ordinary SQL connection (tokio-postgres): setup, inspection, the type catalog and
//! `check --connect` use it. Its errors are named here — tokio-postgres' own `Display` says
//! only "invalid configuration" or "error connecting to server" — with the cause and the
//! setting to change, and a [`Kind`] that [`crate::error`] classifies.

use tokio_postgres::NoTls;
use tokio_postgres::config::SslMode as PgSslMode;

use crate::config::{Config, SslMode};
use crate::error::{Error, Kind, Result};

use super::tls;

/// Connect with tokio-postgres (the connection ends when the client drops). With a list in
/// `database.host`, the first server that answers ([`super::setup::prepare`] picks the
/// primary among them itself).
pub async fn connect(config: &Config) -> Result<tokio_postgres::Client> {
    let db = &config.database;
    let mut pg = tokio_postgres::Config::new();
    let servers = db.servers().map_err(|e| Error::new(Kind::PgRefused, e))?;
    for (host, port) in servers {
        pg.host(&host).port(port);
    }
    pg.user(&db.user)
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
async fn spawn_connection<T>(config: &Config, pg: &tokio_postgres::Config, tls: T) -> Result<tokio_postgres::Client>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = match pg.connect(tls).await {
        Ok(connected) => connected,
        Err(e) if missing_password(&e) => return Err(no_password(config).await),
        Err(e) => return Err(classify_connect(config, e)),
    };
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "setup connection closed");
        }
    });
    Ok(client)
}

pub(crate) async fn query_one(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<tokio_postgres::Row> {
    client.query_one(sql, params).await.map_err(classify)
}

/// Double-quote an identifier for SQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The error with its causes (`error connecting to server: Connection refused (os error 111)`):
/// tokio-postgres' own `Display` names only the kind.
pub(crate) fn db_error_text(e: &tokio_postgres::Error) -> String {
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
async fn no_password(config: &Config) -> Error {
    let db = &config.database;
    let method = super::auth::password_method(config)
        .await
        .map(|m| format!(" ({m} authentication)"))
        .unwrap_or_default();
    Error::new(
        Kind::PgRefused,
        format!(
            "PostgreSQL at {} asks for a password{method} for user {:?}, and none is configured: set database.password, database.passwordFile or WAL_DATABASE_PASSWORD (or allow the user without one in pg_hba.conf)",
            db.address(),
            db.user
        ),
    )
}

/// A failed connection attempt, with what to check; [`classify`] for everything the server
/// said.
fn classify_connect(config: &Config, e: tokio_postgres::Error) -> Error {
    if e.as_db_error().is_some() {
        return classify(e);
    }
    let db = &config.database;
    let text = db_error_text(&e);
    let kind = e.to_string();
    if kind == "authentication error" {
        // An authentication method tokio-postgres does not speak (GSSAPI, SSPI, Kerberos), or
        // channel binding the server did not offer.
        return Error::caused_by(
            Kind::PgRefused,
            format!(
                "PostgreSQL at {} wants an authentication method wal-listener cannot use for user {:?}: {text} (allow password, md5 or scram-sha-256 for this user in pg_hba.conf)",
                db.address(),
                db.user
            ),
            e,
        );
    }
    if kind == "invalid configuration" {
        return Error::caused_by(
            Kind::PgRefused,
            format!(
                "the PostgreSQL connection settings are not usable: {text} (check database.host, database.port, database.user and database.name)"
            ),
            e,
        );
    }
    if kind == "error connecting to server" || kind == "timeout waiting for server" {
        let what = if text.contains("lookup address") || text.contains("Name or service not known") {
            format!("cannot resolve database.host {:?}", db.host)
        } else {
            format!("cannot connect to PostgreSQL at {}", db.address())
        };
        return Error::caused_by(
            Kind::PgUnavailable,
            format!("{what}: {text} (is PostgreSQL running there? check database.host and database.port); retrying"),
            e,
        );
    }
    classify(e)
}

/// Name a failed statement or connection by what the server said: authentication and
/// privilege problems need an operator; everything else (refused connections, restarts,
/// recovery) is worth retrying.
pub(crate) fn classify(e: tokio_postgres::Error) -> Error {
    use tokio_postgres::error::SqlState;
    let text = db_error_text(&e);
    let (kind, message) = match e.code() {
        Some(code)
            if *code == SqlState::INVALID_PASSWORD
                || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                || *code == SqlState::INSUFFICIENT_PRIVILEGE
                || *code == SqlState::INVALID_CATALOG_NAME =>
        {
            (
                Kind::PgRefused,
                format!(
                    "PostgreSQL refused the connection: {text} (check database.user, database.password, database.name and pg_hba.conf)"
                ),
            )
        }
        // Certificate and TLS negotiation failures need an operator, not a retry.
        _ if text.contains("TLS") => (
            Kind::PgTls,
            format!("TLS to PostgreSQL failed: {text} (check database.sslMode, sslRootCert and sslCert/sslKey)"),
        ),
        _ => (Kind::PgUnavailable, format!("PostgreSQL: {text}")),
    };
    Error::caused_by(kind, message, e)
}
