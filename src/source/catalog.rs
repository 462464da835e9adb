//! The type catalog: `pg_type` rows for the event module's [`TypeRegistry`].
//!
//! pgoutput describes a column only by its type OID. Domains, arrays and user-defined types
//! need the catalog to be mapped (see [`crate::event::types`]), so each session opens one
//! ordinary SQL connection next to the replication stream and
//!
//! 1. reads every domain, every array type and every user type (a few hundred rows) before
//!    streaming starts, and
//! 2. when a Relation or Type message names a user type the registry does not know (created
//!    while we ran), looks that type up ([`Catalog::find`]) — and then its element or base
//!    type, if that is unknown too — before the transform decodes the next message. The
//!    session loop asks the transform what is missing and hands it what was found.
//!
//! Lookups are rare (once per new type) and small; a failed one ends the session like any
//! other lost connection, and the next session reads the catalog afresh. A type the stream
//! names but the catalog does not show is asked for again for a few seconds (its creating
//! transaction may not be visible yet), then mapped to text with a warning.

use std::time::{Duration, Instant};

use tokio_postgres::Row;

use crate::config::Config;
use crate::error::{Error, Kind, Result};
use crate::event::{PgType, TypeKind, TypeRegistry};

use super::sql::{self, classify};

/// How long a type named by the stream may stay invisible in pg_type before it is taken as
/// dropped (see [`Catalog::find`]).
const VISIBILITY_WAIT: Duration = Duration::from_secs(3);

const COLUMNS: &str = "SELECT t.oid, t.typtype, t.typbasetype, t.typelem, \
     coalesce(e.typdelim, ','::\"char\") AS delimiter, coalesce(e.typarray = t.oid, false) AS is_array \
     FROM pg_type t LEFT JOIN pg_type e ON e.oid = t.typelem";

/// A SQL connection for reading `pg_type`.
pub(crate) struct Catalog {
    client: tokio_postgres::Client,
}

impl Catalog {
    /// Connect with the configured credentials.
    pub async fn connect(config: &Config) -> Result<Catalog> {
        Ok(Catalog {
            client: sql::connect(config).await?,
        })
    }

    /// Every domain, array type and user type.
    pub async fn registry(&self) -> Result<TypeRegistry> {
        let sql = format!("{COLUMNS} WHERE t.typtype = 'd' OR e.typarray = t.oid OR t.oid >= 16384");
        let rows = self.client.query(&sql, &[]).await.map_err(classify)?;
        let mut registry = TypeRegistry::new();
        for row in &rows {
            registry.insert(pg_type(row)?);
        }
        tracing::debug!(types = registry.len(), "type catalog read");
        Ok(registry)
    }

    /// The rows of the given type OIDs (those that still exist).
    async fn lookup(&self, oids: &[u32]) -> Result<Vec<PgType>> {
        let sql = format!("{COLUMNS} WHERE t.oid = ANY($1)");
        let oids: Vec<u32> = oids.to_vec();
        let rows = self.client.query(&sql, &[&oids]).await.map_err(classify)?;
        rows.iter().map(pg_type).collect()
    }

    /// The `pg_type` rows of `oids`: `Some` with what was found (at least one), or `None` when
    /// none became visible within [`VISIBILITY_WAIT`] — dropped since: map them to text.
    ///
    /// A type created in the same transaction as the change can be decoded a moment before
    /// that commit is visible to other sessions (the walsender sees the commit record before
    /// the committing backend leaves the proc array), so a type not found is asked for again
    /// with a short backoff.
    pub async fn find(&self, oids: &[u32]) -> Result<Option<Vec<PgType>>> {
        let deadline = Instant::now() + VISIBILITY_WAIT;
        let mut pause = Duration::from_millis(5);
        loop {
            let found = self.lookup(oids).await?;
            tracing::debug!(asked = ?oids, found = found.len(), "looked up new user types");
            if !found.is_empty() {
                return Ok(Some(found));
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    types = ?oids,
                    "types named by the replication stream are not in pg_type (dropped since?); their values are published as PostgreSQL's text"
                );
                return Ok(None);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }
}

fn pg_type(row: &Row) -> Result<PgType> {
    let get = |e: tokio_postgres::Error| Error::caused_by(Kind::PgUnavailable, format!("reading pg_type: {e}"), e);
    let oid: u32 = row.try_get("oid").map_err(get)?;
    let typtype: i8 = row.try_get("typtype").map_err(get)?;
    let base: u32 = row.try_get("typbasetype").map_err(get)?;
    let elem: u32 = row.try_get("typelem").map_err(get)?;
    let delimiter: i8 = row.try_get("delimiter").map_err(get)?;
    let is_array: bool = row.try_get("is_array").map_err(get)?;
    let kind = if typtype == b'd' as i8 {
        TypeKind::Domain { base }
    } else if is_array {
        TypeKind::Array {
            elem,
            delimiter: u8::from_ne_bytes(delimiter.to_ne_bytes()),
        }
    } else {
        TypeKind::Other
    };
    Ok(PgType { oid, kind })
}
