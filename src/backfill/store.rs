//! Backfill progress in a JetStream KV bucket, `wal_listener_backfill_<slot>`: one entry per
//! backfill (its id), a JSON [`Backfill`] record. As durable as the stream the events go to,
//! replicated like it, and reachable from any instance that takes the slot over.

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Kind, Result};

use super::{Request, TableName};

/// Where a backfill stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Running,
    Done,
    Cancelled,
    Failed,
}

impl Status {
    pub fn finished(self) -> bool {
        matches!(self, Status::Done | Status::Cancelled | Status::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Done => "done",
            Status::Cancelled => "cancelled",
            Status::Failed => "failed",
        }
    }
}

/// One table's progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TableProgress {
    #[serde(flatten)]
    pub name: TableName,
    pub done: bool,
    /// The key of the last row of the last chunk whose events were all acknowledged, as text.
    #[serde(default)]
    pub last_key: Option<Vec<String>>,
    /// The table's last key when its backfill started: it is read up to there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upto: Option<Vec<String>>,
    /// READ events published (rows changed by the stream during their chunk are not counted).
    pub rows: u64,
    pub chunks: u64,
    /// Rows estimated at the start (`pg_class.reltuples`).
    pub estimate: u64,
    /// Why the table was skipped (a snapshot skips tables without a key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// A backfill's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backfill {
    pub id: String,
    pub status: Status,
    pub tables: Vec<TableProgress>,
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<u32>,
    #[serde(default)]
    pub snapshot: bool,
    /// RFC 3339 times.
    pub requested_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Backfill {
    pub fn from_request(request: &Request) -> Backfill {
        Backfill {
            id: request.id.clone(),
            status: Status::Queued,
            tables: request
                .tables
                .iter()
                .map(|name| TableProgress {
                    name: name.clone(),
                    done: false,
                    last_key: None,
                    upto: None,
                    rows: 0,
                    chunks: 0,
                    estimate: 0,
                    skipped: None,
                })
                .collect(),
            filter: request.filter.clone(),
            chunk_size: request.chunk_size,
            snapshot: request.snapshot,
            requested_at: now(),
            started_at: None,
            finished_at: None,
            error: None,
        }
    }

    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }

    /// Rows estimated still to read (0 when done).
    pub fn rows_left(&self) -> u64 {
        self.tables
            .iter()
            .filter(|t| !t.done)
            .map(|t| t.estimate.saturating_sub(t.rows))
            .sum()
    }
}

/// The current time, RFC 3339 UTC.
pub fn now() -> String {
    crate::pg_time::to_rfc3339(crate::pg_time::now())
}

/// The bucket of one slot's backfills.
#[derive(Clone)]
pub struct Store {
    kv: kv::Store,
}

/// The slot's bucket, opened when first needed: a service that never backfills needs no
/// KV rights on the NATS account, and no bucket is created for it.
pub struct Lazy {
    client: async_nats::Client,
    slot: String,
    replicas: usize,
    store: tokio::sync::OnceCell<Store>,
}

impl Lazy {
    pub fn new(client: async_nats::Client, slot: &str, replicas: usize) -> Lazy {
        Lazy {
            client,
            slot: slot.to_owned(),
            replicas,
            store: tokio::sync::OnceCell::new(),
        }
    }

    /// The bucket, created if missing (to record a request).
    pub async fn get_or_create(&self) -> Result<&Store> {
        self.store
            .get_or_try_init(|| Store::open(&self.client, &self.slot, self.replicas))
            .await
    }

    /// The bucket if it exists (`None`: no backfill was ever requested on this slot).
    pub async fn existing(&self) -> Option<&Store> {
        if let Some(store) = self.store.get() {
            return Some(store);
        }
        let store = Store::existing(&self.client, &self.slot).await?;
        Some(self.store.get_or_init(|| async { store }).await)
    }
}

/// The bucket's name for `slot` (slot names are `[a-z0-9_]`, valid in bucket names).
pub fn bucket(slot: &str) -> String {
    format!("wal_listener_backfill_{slot}")
}

const CANCEL: &str = "cancel.";

fn cancel_key(id: &str) -> String {
    format!("{CANCEL}{id}")
}

fn kv_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(
        Kind::NatsUnavailable,
        format!("backfill progress (JetStream KV): cannot {what}: {e}"),
    )
}

impl Store {
    /// Open the slot's bucket, creating it if missing (`replicas` as `publisher.replicas`).
    pub async fn open(client: &async_nats::Client, slot: &str, replicas: usize) -> Result<Store> {
        let js = jetstream::new(client.clone());
        let name = bucket(slot);
        if let Ok(kv) = js.get_key_value(&name).await {
            return Ok(Store { kv });
        }
        let kv = js
            .create_key_value(kv::Config {
                bucket: name.clone(),
                description: format!("wal-listener backfills of slot {slot}"),
                history: 1,
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas.max(1),
                ..Default::default()
            })
            .await;
        match kv {
            Ok(kv) => Ok(Store { kv }),
            // Two instances starting together: the other one created it.
            Err(create) => match js.get_key_value(&name).await {
                Ok(kv) => Ok(Store { kv }),
                Err(_) => Err(kv_error(&format!("create bucket {name}"), create)),
            },
        }
    }

    /// Open an existing bucket (for `wal-listener backfill --status`); `None` if there is none.
    pub async fn existing(client: &async_nats::Client, slot: &str) -> Option<Store> {
        let js = jetstream::new(client.clone());
        js.get_key_value(bucket(slot)).await.ok().map(|kv| Store { kv })
    }

    pub async fn get(&self, id: &str) -> Result<Option<Backfill>> {
        let entry = self.kv.get(id).await.map_err(|e| kv_error("read", e))?;
        Ok(entry.and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    pub async fn put(&self, backfill: &Backfill) -> Result<()> {
        let json = serde_json::to_vec(backfill).unwrap_or_default();
        self.kv
            .put(&backfill.id, Bytes::from(json))
            .await
            .map_err(|e| kv_error("save progress", e))?;
        Ok(())
    }

    /// Record a request seen in the stream, once: a request replayed after a restart finds
    /// its record (maybe with progress) and leaves it as it is.
    pub async fn record(&self, request: &Request) -> Result<()> {
        if self.get(&request.id).await?.is_some() {
            return Ok(());
        }
        self.put(&Backfill::from_request(request)).await
    }

    /// Ask for a backfill to stop: the runner sees it before its next chunk and marks the
    /// backfill cancelled. A key of its own (`cancel.<id>`), so that the runner saving its
    /// progress cannot overwrite it. `false` when there is no such unfinished backfill.
    pub async fn cancel(&self, id: &str) -> Result<bool> {
        match self.get(id).await? {
            Some(backfill) if !backfill.status.finished() => {
                self.kv
                    .put(cancel_key(id), Bytes::from_static(b"1"))
                    .await
                    .map_err(|e| kv_error("store a cancellation", e))?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Whether a cancellation of `id` was asked for.
    pub async fn cancelled(&self, id: &str) -> Result<bool> {
        let entry = self.kv.get(cancel_key(id)).await.map_err(|e| kv_error("read", e))?;
        Ok(entry.is_some())
    }

    /// Every backfill, oldest request first.
    pub async fn list(&self) -> Result<Vec<Backfill>> {
        let mut keys = self.kv.keys().await.map_err(|e| kv_error("list", e))?;
        let mut ids = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| kv_error("list", e))?;
            if !key.starts_with(CANCEL) {
                ids.push(key);
            }
        }
        let mut all = Vec::new();
        for id in ids {
            if let Some(backfill) = self.get(&id).await? {
                all.push(backfill);
            }
        }
        all.sort_by(|a, b| a.requested_at.cmp(&b.requested_at).then(a.id.cmp(&b.id)));
        Ok(all)
    }
}
