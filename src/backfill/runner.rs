//! The runner: one task per session that reads backfills a chunk at a time, one table at a
//! time, oldest request first, and keeps their progress in the KV bucket.
//!
//! It has its own SQL connection, so a chunk's `SELECT` never holds up the replication
//! stream; the stream only waits at a high watermark whose rows are already handed over. Its
//! failures (PostgreSQL or the KV bucket away) are retried here after a pause; they do not end
//! the session. A failure of the backfill itself (a table dropped, a `--where` that no longer
//! parses) marks it failed, with the reason, and the runner goes on with the next one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};

use crate::config::Config;
use crate::error::{Error, Kind, Result};
use crate::metrics;
use crate::source::sql;

use super::merge::{ChunkEnd, Expected, Handoff};
use super::store::{Backfill, Lazy, Status, Store, now};
use super::{Control, PREFIX, table};

/// How long the runner waits after a failure, and between looks at the bucket when idle.
const PAUSE: Duration = Duration::from_secs(5);

pub(crate) struct Runner {
    /// Pinned to the primary.
    config: Config,
    stores: Arc<Lazy>,
    /// The bucket, once it exists.
    store: Option<Store>,
    handoff: Handoff,
    wake: Arc<Notify>,
    /// Makes chunk ids unique to this runner: watermarks of earlier sessions replayed from
    /// the WAL match nothing.
    nonce: String,
    chunks: u64,
}

/// A chunk read and handed over to the transform.
struct Read {
    chunk: String,
    /// Rows read (fewer than the chunk size: the table's end).
    read: usize,
    /// The key of its last row.
    last: Option<Vec<String>>,
    ended: oneshot::Receiver<ChunkEnd>,
}

impl Runner {
    pub fn new(config: Config, stores: Arc<Lazy>, handoff: Handoff, wake: Arc<Notify>) -> Runner {
        Runner {
            config,
            stores,
            store: None,
            handoff,
            wake,
            nonce: super::new_id(),
            chunks: 0,
        }
    }

    /// Run backfills as they come, until the session ends (the task is aborted).
    pub async fn run(mut self) {
        loop {
            let wake = self.wake.clone();
            let notified = wake.notified();
            match self.next().await {
                Ok(true) => continue,
                Ok(false) => {
                    metrics::backfill_running(false, 0);
                    let _ = tokio::time::timeout(PAUSE * 6, notified).await;
                }
                Err(e) => {
                    self.handoff.clear();
                    tracing::warn!(error = %e, retry_in = ?PAUSE, "backfill interrupted; retrying");
                    tokio::time::sleep(PAUSE).await;
                }
            }
        }
    }

    /// Run the oldest unfinished backfill; `false` when there is none.
    async fn next(&mut self) -> Result<bool> {
        if self.store.is_none() {
            self.store = self.stores.existing().await.cloned();
        }
        let Some(store) = &self.store else {
            return Ok(false);
        };
        let Some(backfill) = store.list().await?.into_iter().find(|b| !b.status.finished()) else {
            return Ok(false);
        };
        let client = sql::connect(&self.config).await?;
        // Key literals are written with standard-conforming strings.
        client
            .simple_query("SET standard_conforming_strings = on; SET application_name = 'wal-listener backfill'")
            .await
            .map_err(sql::classify)?;
        self.backfill(&client, backfill).await?;
        Ok(true)
    }

    async fn backfill(&mut self, client: &tokio_postgres::Client, mut b: Backfill) -> Result<()> {
        let started = Instant::now();
        if b.status == Status::Queued {
            b.status = Status::Running;
            b.started_at = Some(now());
            self.store()?.put(&b).await?;
            let tables: Vec<String> = b.tables.iter().map(|t| t.name.to_string()).collect();
            tracing::info!(backfill = %b.id, tables = ?tables, r#where = b.filter.as_deref().unwrap_or(""), "backfill started");
        } else {
            tracing::info!(backfill = %b.id, rows = b.rows(), "backfill resumed");
        }
        self.tables(client, &mut b).await?;
        match b.status {
            Status::Cancelled => {
                tracing::info!(backfill = %b.id, rows = b.rows(), "backfill cancelled");
            }
            Status::Failed => {}
            _ => {
                b.status = Status::Done;
                b.finished_at = Some(now());
                self.store()?.put(&b).await?;
                tracing::info!(backfill = %b.id, rows = b.rows(), took = ?started.elapsed(), "backfill done");
            }
        }
        metrics::backfill_running(false, 0);
        Ok(())
    }

    /// Read the tables still to do; returns early when the backfill stops (its status says why).
    async fn tables(&mut self, client: &tokio_postgres::Client, b: &mut Backfill) -> Result<()> {
        let chunk_size = b.chunk_size.unwrap_or(self.config.listener.backfill_chunk_size).max(1);
        for index in 0..b.tables.len() {
            if b.tables[index].done {
                continue;
            }
            let name = b.tables[index].name.clone();
            let plan = match table::plan(client, &self.config.listener.publication, &name).await {
                Ok(plan) => Arc::new(plan),
                Err(reason) if b.snapshot => {
                    tracing::warn!(backfill = %b.id, table = %name, "{reason}; the snapshot skips it");
                    let t = &mut b.tables[index];
                    t.done = true;
                    t.skipped = Some(reason);
                    self.store()?.put(b).await?;
                    continue;
                }
                Err(reason) => return self.fail(b, reason).await,
            };
            if b.tables[index].chunks == 0 {
                b.tables[index].estimate = plan.estimate;
            }
            if b.tables[index].upto.is_none() {
                match plan.last_key(client, b.filter.as_deref()).await {
                    Ok(Some(last)) => b.tables[index].upto = Some(last),
                    Ok(None) => {
                        // Nothing to read: every row it will have arrives as an INSERT.
                        b.tables[index].done = true;
                        self.store()?.put(b).await?;
                        tracing::info!(backfill = %b.id, table = %name, "table backfilled: no rows");
                        continue;
                    }
                    Err(e) if e.as_db_error().is_some() => {
                        let reason = format!("reading {name} failed: {}", sql::db_error_text(&e));
                        return self.fail(b, reason).await;
                    }
                    Err(e) => return Err(sql::classify(e)),
                }
                self.store()?.put(b).await?;
            }
            let upto = b.tables[index].upto.clone();
            let started = Instant::now();
            // While one chunk's events are published, the next chunk is read (its SELECT done,
            // its high watermark not yet written): the stream is not kept waiting for reads,
            // and after a crash at most the one unsaved chunk is published again.
            let mut next: Option<Read> = None;
            let mut after = b.tables[index].last_key.clone();
            loop {
                let current = match next.take() {
                    Some(read) => read,
                    None => match self
                        .read(client, b, &plan, after.as_deref(), upto.as_deref(), chunk_size)
                        .await?
                    {
                        Some(read) => read,
                        None => return Ok(()),
                    },
                };
                emit(
                    client,
                    &Control::High {
                        chunk: current.chunk.clone(),
                    },
                )
                .await?;
                if current.read == chunk_size as usize {
                    next = match self
                        .read(client, b, &plan, current.last.as_deref(), upto.as_deref(), chunk_size)
                        .await?
                    {
                        Some(read) => Some(read),
                        None => return Ok(()),
                    };
                }
                let end = current.ended.await.map_err(|_| {
                    Error::new(
                        Kind::PgUnavailable,
                        "the stream ended before the chunk's high watermark",
                    )
                })?;
                let t = &mut b.tables[index];
                match end {
                    ChunkEnd::Retry => {
                        // Read it again; the one read after it assumed it was done.
                        tracing::debug!(backfill = %b.id, table = %name, "chunk read again: a transaction was finishing when it was read");
                        if next.take().is_some() {
                            self.handoff.clear();
                        }
                        after = t.last_key.clone();
                        continue;
                    }
                    ChunkEnd::Published { rows } => {
                        t.rows += rows as u64;
                        t.chunks += 1;
                        if let Some(last) = current.last {
                            t.last_key = Some(last);
                        }
                        t.done = current.read < chunk_size as usize;
                        after = t.last_key.clone();
                        metrics::backfill_chunk(&name.to_string(), rows);
                    }
                }
                let (done, rows, chunks) = (t.done, t.rows, t.chunks);
                // Saved only now that the chunk's events are acknowledged: a crash before
                // this reads the chunk again (same event ids), never skips it.
                self.store()?.put(b).await?;
                tracing::debug!(backfill = %b.id, table = %name, rows, chunks, "backfill chunk done");
                if done {
                    tracing::info!(backfill = %b.id, table = %name, rows, chunks, took = ?started.elapsed(), "table backfilled");
                    break;
                }
            }
        }
        Ok(())
    }

    /// Read the chunk after `after` behind its low watermark and hand it to the transform
    /// (the caller writes its high watermark). `None`: the backfill stopped — cancelled, or
    /// failed for good — as recorded in its status.
    async fn read(
        &mut self,
        client: &tokio_postgres::Client,
        b: &mut Backfill,
        plan: &Arc<table::Plan>,
        after: Option<&[String]>,
        upto: Option<&[String]>,
        chunk_size: u32,
    ) -> Result<Option<Read>> {
        if self.store()?.cancelled(&b.id).await? {
            b.status = Status::Cancelled;
            b.finished_at = Some(now());
            self.store()?.put(b).await?;
            return Ok(None);
        }
        metrics::backfill_running(true, b.rows_left());
        self.chunks += 1;
        let chunk = format!("{}-{}", self.nonce, self.chunks);
        let (done, ended) = oneshot::channel();
        self.handoff.register(Expected {
            chunk: chunk.clone(),
            backfill: Arc::from(b.id.as_str()),
            plan: plan.clone(),
            done,
        });
        emit(client, &Control::Low { chunk: chunk.clone() }).await?;
        let rows = match plan.read(client, b.filter.as_deref(), after, upto, chunk_size).await {
            Ok(rows) => rows,
            Err(e) if e.as_db_error().is_some() => {
                self.handoff.clear();
                let reason = format!("reading {} failed: {}", plan.name, sql::db_error_text(&e));
                self.fail(b, reason).await?;
                return Ok(None);
            }
            Err(e) => return Err(sql::classify(e)),
        };
        let read = rows.rows.len();
        let width = plan.columns.len();
        let last: Option<Vec<String>> = rows
            .rows
            .last()
            .map(|row| row.iter().skip(width).map(|v| v.clone().unwrap_or_default()).collect());
        self.handoff.fill(&chunk, rows);
        Ok(Some(Read {
            chunk,
            read,
            last,
            ended,
        }))
    }

    fn store(&self) -> Result<&Store> {
        self.store
            .as_ref()
            .ok_or_else(|| Error::new(Kind::NatsUnavailable, "the backfill bucket is not open"))
    }

    async fn fail(&self, b: &mut Backfill, reason: String) -> Result<()> {
        tracing::error!(backfill = %b.id, "backfill failed: {reason}");
        b.status = Status::Failed;
        b.error = Some(reason);
        b.finished_at = Some(now());
        self.store()?.put(b).await?;
        Ok(())
    }
}

/// Write a control message into the WAL (its own transaction, committed — and so flushed —
/// before this returns).
pub(crate) async fn emit(client: &tokio_postgres::Client, control: &Control) -> Result<()> {
    client
        .execute(
            "SELECT pg_logical_emit_message(true, $1::text, $2::text)",
            &[&PREFIX, &control.to_json()],
        )
        .await
        .map_err(sql::classify)?;
    Ok(())
}
