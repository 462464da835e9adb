//! What a table's backfill reads, and reading it a chunk at a time.
//!
//! [`plan`] checks that the table is in the publication and has a key to page by, and lists
//! the columns the publication sends (a column list is honoured) with their types. A chunk is
//! one `SELECT … WHERE (<where>) AND (k1, k2) > ('…'::t1, '…'::t2) ORDER BY k1, k2 LIMIT n`
//! in a short `REPEATABLE READ` transaction that also returns its snapshot (whose in-progress
//! list the merge checks). It is sent as a simple query, so every value comes back as
//! PostgreSQL's text output — exactly what pgoutput sends for an INSERT, so a READ event maps
//! values exactly as an INSERT does. Keys go back in as that text cast to the column's type,
//! so PostgreSQL compares them in its own order for any type (collations, enums, composites).

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::source::sql::quote_ident;

use super::TableName;

/// A column a READ event carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    /// `format_type(type, typmod)`: what a key literal is cast to.
    pub type_name: String,
}

/// How to read one table.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: TableName,
    /// The published columns, in table order.
    pub columns: Vec<Column>,
    /// The key's columns, in key order.
    pub key: Vec<Column>,
    /// `pg_class.reltuples` (an estimate; 0 when never analysed).
    pub estimate: u64,
}

/// One chunk: rows (published columns, then key columns, as text) and the snapshot's
/// in-progress transaction ids.
pub struct Chunk {
    pub rows: Vec<Vec<Option<String>>>,
    pub in_progress: Vec<u32>,
}

/// The tables a snapshot reads: the published ones the filter selects for inserts (or
/// reads), every published one without a filter.
pub async fn selected(
    config: &crate::config::Config,
    client: &Client,
) -> Result<Vec<TableName>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1, 2",
            &[&config.listener.publication],
        )
        .await?;
    let filter = &config.listener.filter.tables;
    let selected = |t: &TableName| {
        filter.is_empty()
            || [t.to_string(), t.table.clone()].iter().any(|name| {
                filter.get(name).is_some_and(|actions| {
                    actions
                        .iter()
                        .any(|a| a.eq_ignore_ascii_case("insert") || a.eq_ignore_ascii_case("read"))
                })
            })
    };
    Ok(rows
        .iter()
        .map(|r| TableName {
            schema: r.get(0),
            table: r.get(1),
        })
        .filter(selected)
        .collect())
}

/// Resolve `name` (`schema.table`, or a bare name on the search path) to a table.
pub async fn resolve(client: &Client, name: &str) -> Result<TableName, String> {
    let row = client
        .query_opt(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = to_regclass($1)",
            &[&name],
        )
        .await
        .map_err(|e| {
            format!(
                "cannot look up table {name:?}: {}",
                crate::source::sql::db_error_text(&e)
            )
        })?;
    match row {
        Some(row) => Ok(TableName {
            schema: row.get(0),
            table: row.get(1),
        }),
        None => Err(format!(
            "table {name:?} does not exist (write it as schema.table; quote mixed-case names as in SQL, e.g. 'public.\"Users\"')"
        )),
    }
}

/// Check that `name` can be backfilled through `publication`, and how.
pub async fn plan(client: &Client, publication: &str, name: &TableName) -> Result<Plan, String> {
    let sql_err =
        |e: tokio_postgres::Error| format!("cannot inspect table {name}: {}", crate::source::sql::db_error_text(&e));
    let published = client
        .query_opt(
            "SELECT attnames::text[] FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
            &[&publication, &name.schema, &name.table],
        )
        .await
        .map_err(sql_err)?;
    let Some(published) = published else {
        return Err(format!(
            "table {name} is not in publication {publication:?} (listener.publication), so its changes are not streamed and it cannot be backfilled: add it (ALTER PUBLICATION {} ADD TABLE {}.{}) or backfill another table",
            quote_ident(publication),
            quote_ident(&name.schema),
            quote_ident(&name.table)
        ));
    };
    let attnames: Option<Vec<String>> = published.get(0);
    let rows = client
        .query(
            "SELECT a.attname::text, a.atttypid::oid, format_type(a.atttypid, a.atttypmod), c.reltuples::float8 \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&name.schema, &name.table],
        )
        .await
        .map_err(sql_err)?;
    let mut estimate = 0.0f64;
    let all: Vec<Column> = rows
        .iter()
        .map(|r| {
            estimate = r.get(3);
            Column {
                name: r.get(0),
                type_oid: r.get(1),
                type_name: r.get(2),
            }
        })
        .collect();
    let columns: Vec<Column> = match &attnames {
        Some(names) => all.iter().filter(|c| names.contains(&c.name)).cloned().collect(),
        None => all.clone(),
    };
    // The key: the replica identity index (the primary key by default), so that the old-row
    // data of UPDATEs and DELETEs carries it; else any unique index on NOT NULL columns
    // (REPLICA IDENTITY FULL sends whole old rows). Never partial or on expressions.
    let keys = client
        .query(
            "SELECT (SELECT array_agg(a.attname::text ORDER BY k.ord) FROM unnest(i.indkey) WITH ORDINALITY k(attnum, ord) \
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum) AS cols, \
                    c.relreplident::text, i.indisreplident, i.indisprimary, \
                    bool_and(a2.attnotnull) AS notnull \
             FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a2 ON a2.attrelid = i.indrelid AND a2.attnum = ANY(i.indkey) \
             WHERE n.nspname = $1 AND c.relname = $2 AND i.indisunique AND i.indisvalid AND i.indpred IS NULL \
               AND i.indexprs IS NULL AND NOT (0 = ANY(i.indkey::int2[])) \
             GROUP BY i.indexrelid, i.indkey, i.indrelid, c.relreplident, i.indisreplident, i.indisprimary \
             ORDER BY i.indisreplident DESC, i.indisprimary DESC, array_length(i.indkey::int2[], 1), i.indexrelid",
            &[&name.schema, &name.table],
        )
        .await
        .map_err(sql_err)?;
    let mut chosen: Option<Vec<String>> = None;
    for row in &keys {
        let cols: Option<Vec<String>> = row.get(0);
        let identity: String = row.get(1);
        let is_identity: bool = row.get(2);
        let is_primary: bool = row.get(3);
        let not_null: Option<bool> = row.get(4);
        if not_null != Some(true) {
            continue;
        }
        // With DEFAULT identity the old row carries the primary key; with USING INDEX, that
        // index's columns. FULL and NOTHING: any unique key will do.
        let usable = match identity.as_str() {
            "d" => is_primary,
            "i" => is_identity,
            _ => true,
        };
        if usable && let Some(cols) = cols {
            chosen = Some(cols);
            break;
        }
    }
    let Some(key_names) = chosen else {
        return Err(format!(
            "table {name} has no primary key (nor a unique index on NOT NULL columns matching its replica identity), so a backfill cannot page through it in key order: add a primary key (REPLICA IDENTITY FULL is not enough)"
        ));
    };
    let key = key_names
        .iter()
        .filter_map(|k| all.iter().find(|c| &c.name == k).cloned())
        .collect::<Vec<_>>();
    if key.len() != key_names.len() {
        return Err(format!(
            "table {name}: its key columns changed while it was inspected; try again"
        ));
    }
    Ok(Plan {
        name: name.clone(),
        columns,
        key,
        estimate: if estimate > 0.0 { estimate as u64 } else { 0 },
    })
}

impl Plan {
    /// The chunk query after `after` (the last key read, as text) and up to `upto` (the
    /// table's last key when its backfill started), at most `limit` rows.
    pub fn chunk_sql(
        &self,
        filter: Option<&str>,
        after: Option<&[String]>,
        upto: Option<&[String]>,
        limit: u32,
    ) -> String {
        let table = format!("{}.{}", quote_ident(&self.name.schema), quote_ident(&self.name.table));
        let select = self
            .columns
            .iter()
            .chain(&self.key)
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let key_cols = self
            .key
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let mut conditions = Vec::new();
        if let Some(filter) = filter {
            conditions.push(format!("({filter})"));
        }
        for (bound, op) in [(after, ">"), (upto, "<=")] {
            if let Some(bound) = bound {
                conditions.push(format!("({key_cols}) {op} ({})", self.key_literals(bound)));
            }
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        format!("SELECT {select} FROM {table}{filter} ORDER BY {key_cols} LIMIT {limit}")
    }

    /// A key as literals cast to the key columns' types.
    fn key_literals(&self, key: &[String]) -> String {
        self.key
            .iter()
            .zip(key)
            .map(|(c, v)| format!("{}::{}", literal(v), c.type_name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The last key (in key order) of the rows meeting `filter`, as text; `None`: no rows. A
    /// backfill reads up to here: rows inserted after it started reach the stream as INSERTs,
    /// so a table that grows at its end does not keep the backfill chasing it.
    pub async fn last_key(
        &self,
        client: &Client,
        filter: Option<&str>,
    ) -> Result<Option<Vec<String>>, tokio_postgres::Error> {
        let keys = self.key.iter().map(|c| quote_ident(&c.name)).collect::<Vec<_>>();
        let order = keys.iter().map(|k| format!("{k} DESC")).collect::<Vec<_>>().join(", ");
        let filter = filter.map(|f| format!(" WHERE ({f})")).unwrap_or_default();
        let sql = format!(
            "SELECT {} FROM {}.{}{filter} ORDER BY {order} LIMIT 1",
            keys.join(", "),
            quote_ident(&self.name.schema),
            quote_ident(&self.name.table)
        );
        for message in client.simple_query(&sql).await? {
            if let SimpleQueryMessage::Row(row) = message {
                return Ok(Some(
                    (0..row.len())
                        .map(|i| row.get(i).unwrap_or_default().to_owned())
                        .collect(),
                ));
            }
        }
        Ok(None)
    }

    /// Read one chunk in a short REPEATABLE READ transaction, with its snapshot.
    pub async fn read(
        &self,
        client: &Client,
        filter: Option<&str>,
        after: Option<&[String]>,
        upto: Option<&[String]>,
        limit: u32,
    ) -> Result<Chunk, tokio_postgres::Error> {
        let sql = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT pg_current_snapshot()::text; {}; COMMIT",
            self.chunk_sql(filter, after, upto, limit)
        );
        // Statements complete in order: BEGIN, the snapshot, the chunk, COMMIT.
        let mut completed = 0;
        let mut rows = Vec::new();
        let mut snapshot = None;
        for message in client.simple_query(&sql).await? {
            match message {
                SimpleQueryMessage::CommandComplete(_) => completed += 1,
                SimpleQueryMessage::Row(row) if completed == 1 => snapshot = row.get(0).map(str::to_owned),
                SimpleQueryMessage::Row(row) if completed == 2 => {
                    rows.push((0..row.len()).map(|i| row.get(i).map(str::to_owned)).collect());
                }
                _ => {}
            }
        }
        Ok(Chunk {
            rows,
            in_progress: snapshot.as_deref().map(in_progress).unwrap_or_default(),
        })
    }
}

/// The in-progress transaction ids of a snapshot's text `xmin:xmax:xip,…` (as 32-bit xids,
/// as pgoutput reports them).
fn in_progress(snapshot: &str) -> Vec<u32> {
    snapshot
        .splitn(3, ':')
        .nth(2)
        .unwrap_or_default()
        .split(',')
        .filter_map(|x| x.trim().parse::<u64>().ok())
        .map(|x| (x & 0xFFFF_FFFF) as u32)
        .collect()
}

/// A string literal (standard_conforming_strings, on since PostgreSQL 9.1, is set by the
/// runner for its session).
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str) -> Column {
        Column {
            name: name.into(),
            type_oid: 25,
            type_name: ty.into(),
        }
    }

    #[test]
    fn chunk_queries_page_by_the_key_in_postgres() {
        let plan = Plan {
            name: TableName {
                schema: "public".into(),
                table: "Odd \"name\"".into(),
            },
            columns: vec![col("a", "text"), col("b", "integer"), col("v", "jsonb")],
            key: vec![col("a", "text"), col("b", "integer")],
            estimate: 0,
        };
        assert_eq!(
            plan.chunk_sql(None, None, None, 10),
            r#"SELECT "a", "b", "v", "a", "b" FROM "public"."Odd ""name""" ORDER BY "a", "b" LIMIT 10"#
        );
        assert_eq!(
            plan.chunk_sql(
                Some("b > 2"),
                Some(&["it's".into(), "7".into()]),
                Some(&["z".into(), "1".into()]),
                5
            ),
            r#"SELECT "a", "b", "v", "a", "b" FROM "public"."Odd ""name""" WHERE (b > 2) AND ("a", "b") > ('it''s'::text, '7'::integer) AND ("a", "b") <= ('z'::text, '1'::integer) ORDER BY "a", "b" LIMIT 5"#
        );
    }

    #[test]
    fn snapshot_text_gives_the_in_progress_xids() {
        assert_eq!(in_progress("100:104:100,102"), vec![100, 102]);
        assert_eq!(in_progress("100:100:"), Vec::<u32>::new());
        assert_eq!(
            in_progress(&format!("{}:{}:{}", 1u64 << 32 | 5, 1u64 << 32 | 9, 1u64 << 32 | 7)),
            vec![7]
        );
    }
}
