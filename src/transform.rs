//! The transform stage: decode → event → script, as plain function calls.
//!
//! Each replication frame is decoded (`crate::decode`), assembled into change events with the
//! relation cache (`crate::event`), and each event routed by the script version in effect
//! (`crate::script`). What comes out — routed events, script failures, and the positions that
//! become confirmable once everything before them is acknowledged — goes to the publish stage
//! as [`Outbound`] items, in commit order. These steps take microseconds, so they are function
//! calls in one task: a channel hop between them would cost more than the work.
//!
//! A new script version takes effect between two transactions, so every transaction is routed
//! by exactly one version. The transform knows nothing of NATS: building messages, and what
//! `scripts.onError` makes of a failure, is the publish stage's (`crate::publish::stage`).

use std::sync::Arc;

use tokio::sync::watch;

use crate::backfill::merge::Merge;
use crate::backfill::store::Lazy;
use crate::backfill::{self, Control};
use crate::config::{Config, PublisherKind};
use crate::decode;
use crate::error::{Error, Kind, Result};
use crate::event::{Action, Assembler, ChangeEvent, Item, PgType, TypeRegistry};
use crate::lsn::Lsn;
use crate::metrics;
use crate::script::{Routed, ScriptVersion, reload};
use crate::source::Frame;

/// What the transform hands to the publish stage, in commit order.
pub(crate) enum Outbound {
    /// A routed event; the publish stage builds its messages.
    Route {
        event: Arc<ChangeEvent>,
        routed: Vec<Routed>,
    },
    /// The script failed on this event: `scripts.onError` decides.
    Failed { event: Arc<ChangeEvent>, error: String },
    /// The script version that routed the events that follow.
    Script(ScriptVersion),
    /// Confirmable once everything before it is acknowledged.
    Checkpoint(Lsn),
    /// A record that must be stored before any position after it is confirmed (a backfill
    /// request seen in the stream): it holds the window like a message until it resolves;
    /// an error ends the session, which replays from before it.
    Durable(futures::future::BoxFuture<'static, Result<()>>),
    /// Called once everything before it is acknowledged (a backfill chunk's events).
    Settled(Box<dyn FnOnce() + Send>),
}

/// decode → event → script.
pub(crate) struct Transform {
    /// The script version in use, and where new ones arrive (swapped between transactions).
    version: Arc<reload::Version>,
    versions: watch::Receiver<Arc<reload::Version>>,
    assembler: Assembler,
    events: Vec<Item>,
    /// The newest LSN handed on as a checkpoint (checkpoints only move forward).
    checkpoint: Lsn,
    /// Whether positions are confirmed at all (not for a stdout dry run, unless asked).
    confirm: bool,
    /// Backfills: watermarks and requests in the stream (`crate::backfill`).
    backfill: Backfills,
}

/// The transform's part in backfills.
pub(crate) struct Backfills {
    /// This service's slot: requests for other slots are someone else's.
    pub slot: String,
    /// `None`: the publisher has nowhere to keep progress (not JetStream).
    pub hooks: Option<BackfillHooks>,
}

/// What a session streaming into JetStream gives the transform for backfills.
pub(crate) struct BackfillHooks {
    pub merge: Merge,
    pub store: Arc<Lazy>,
    /// Wakes the runner when a request or cancellation is stored.
    pub wake: Arc<tokio::sync::Notify>,
}

impl Transform {
    /// Start at `start` (the slot's confirmed LSN) with the script version in effect, which
    /// is announced as the first item `out` gets.
    pub fn new(
        config: &Config,
        mut versions: watch::Receiver<Arc<reload::Version>>,
        start: Lsn,
        types: TypeRegistry,
        backfill: Backfills,
        out: &mut Vec<Outbound>,
    ) -> Self {
        let version = versions.borrow_and_update().clone();
        out.push(Outbound::Script(version.script_version()));
        let mut assembler = Assembler::new();
        assembler.set_types(types);
        Transform {
            version,
            versions,
            assembler,
            events: Vec::new(),
            checkpoint: start,
            confirm: config.publisher.kind != PublisherKind::Stdout || config.publisher.confirm_stdout,
            backfill,
        }
    }

    /// User types named by the stream that the registry does not know yet.
    pub fn missing_types(&self) -> &[u32] {
        self.assembler.missing_types()
    }

    /// Types found in the catalog for [`Transform::missing_types`]; `None`: they are gone, map
    /// their values as text.
    pub fn found_types(&mut self, found: Option<Vec<PgType>>) {
        match found {
            Some(types) => self.assembler.add_types(types),
            None => self.assembler.give_up_missing_types(),
        }
    }

    /// Decode, assemble and route one frame.
    pub fn frame(&mut self, frame: Frame, out: &mut Vec<Outbound>) -> Result<()> {
        if !self.assembler.in_transaction() && self.versions.has_changed().unwrap_or(false) {
            // Between transactions: a new script version takes over here.
            self.version = self.versions.borrow_and_update().clone();
            out.push(Outbound::Script(self.version.script_version()));
            tracing::info!(version = self.version.number, script = %self.version.router.name(), "new script version in effect");
        }
        let message = match frame {
            Frame::KeepAlive(wal_end) => {
                // Idle: nothing of an open transaction is pending, so the server's WAL end
                // may be confirmed once earlier acks are in — the slot does not hold WAL back.
                if !self.assembler.in_transaction() {
                    self.checkpoint(wal_end, out);
                }
                return Ok(());
            }
            Frame::Decoded(message) => message,
            Frame::Data { bytes, .. } => decode::decode(&bytes).map_err(|e| {
                Error::caused_by(
                    Kind::Protocol,
                    format!("cannot decode a pgoutput message: {e}; please report this with the PostgreSQL version"),
                    e,
                )
            })?,
        };
        self.assembler
            .apply(message, &mut self.events)
            .map_err(|e| Error::caused_by(Kind::Protocol, format!("replication stream out of protocol: {e}"), e))?;
        let bad = self.assembler.take_bad_values();
        for column in bad.new_columns {
            tracing::warn!(table = %column.table, column = %column.column, type_oid = column.type_oid, "value does not parse as its type; published as text (logged once per column)");
        }
        metrics::problems("value", bad.count);
        for item in std::mem::take(&mut self.events) {
            match item {
                Item::Change(event) => {
                    if event.action == Action::Message
                        && event.message.as_ref().is_some_and(|m| m.prefix == backfill::PREFIX)
                    {
                        self.control(&event, out);
                        continue;
                    }
                    if let Some(hooks) = &mut self.backfill.hooks {
                        hooks.merge.observe(&event);
                    }
                    self.route(Arc::new(event), out)
                }
                Item::TxEnd(end_lsn) => self.checkpoint(end_lsn, out),
            }
        }
        Ok(())
    }

    fn route(&mut self, event: Arc<ChangeEvent>, out: &mut Vec<Outbound>) {
        match self.version.router.route(&event) {
            Ok(routed) if routed.is_empty() => metrics::filtered(&event.table),
            Ok(routed) => out.push(Outbound::Route { event, routed }),
            Err(error) => out.push(Outbound::Failed {
                event,
                error: error.to_string(),
            }),
        }
    }

    /// A backfill control message (never published): a watermark of this session's runner,
    /// or a request or cancellation, stored before the stream is confirmed past it.
    fn control(&mut self, event: &ChangeEvent, out: &mut Vec<Outbound>) {
        let Some(control) = event.message.as_ref().and_then(|m| Control::parse(&m.content)) else {
            tracing::warn!(lsn = %event.commit_lsn, "a {} message that is not a backfill control message; ignored", backfill::PREFIX);
            return;
        };
        let slot = self.backfill.slot.clone();
        let Some(hooks) = &mut self.backfill.hooks else {
            if let Control::Request(request) = control
                && request.slot == slot
            {
                tracing::warn!(backfill = %request.id, "a backfill was requested, but backfills keep their progress in JetStream and publisher.type is not nats; ignored");
            }
            return;
        };
        match control {
            Control::Low { chunk } => {
                let types = hooks.merge.low(&chunk);
                self.assembler.need_types(&types);
            }
            Control::High { chunk } => {
                let now = crate::pg_time::now();
                if let Some(ready) = hooks.merge.high(&chunk, &mut self.assembler, event.commit_lsn, now) {
                    for read in ready.events {
                        self.route(Arc::new(read), out);
                    }
                    let (done, end) = (ready.done, ready.end);
                    out.push(Outbound::Settled(Box::new(move || {
                        let _ = done.send(end);
                    })));
                }
            }
            Control::Request(request) if request.slot == slot => {
                tracing::info!(backfill = %request.id, tables = request.tables.len(), "backfill requested");
                let (store, wake) = (hooks.store.clone(), hooks.wake.clone());
                out.push(Outbound::Durable(Box::pin(async move {
                    store.get_or_create().await?.record(&request).await?;
                    wake.notify_one();
                    Ok(())
                })));
            }
            Control::Cancel { slot: to, id } if to == slot => {
                let (store, wake) = (hooks.store.clone(), hooks.wake.clone());
                out.push(Outbound::Durable(Box::pin(async move {
                    // No bucket: nothing was ever requested here, so there is nothing to cancel.
                    let cancelled = match store.existing().await {
                        Some(store) => store.cancel(&id).await?,
                        None => false,
                    };
                    if cancelled {
                        tracing::info!(backfill = %id, "backfill cancellation stored");
                    }
                    wake.notify_one();
                    Ok(())
                })));
            }
            Control::Request(_) | Control::Cancel { .. } => {}
        }
    }

    /// Hand on a position that becomes confirmable after everything before it.
    fn checkpoint(&mut self, lsn: Lsn, out: &mut Vec<Outbound>) {
        if lsn > self.checkpoint {
            self.checkpoint = lsn;
            if self.confirm {
                out.push(Outbound::Checkpoint(lsn));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use bytes::Bytes;

    use super::*;
    use crate::decode::{Begin, Column, Commit, Insert, Message, Relation, ReplicaIdentity, TupleData, TupleValue};
    use crate::script::Router;

    fn transform(out: &mut Vec<Outbound>) -> Transform {
        let config = Config::from_yaml("", &[], PathBuf::new()).expect("config").0;
        let router = Router::from_config(&config).expect("default script");
        let (_tx, versions) = watch::channel(Arc::new(reload::Version { router, number: 1 }));
        let backfill = Backfills {
            slot: "s".into(),
            hooks: None,
        };
        Transform::new(&config, versions, Lsn(0), TypeRegistry::new(), backfill, out)
    }

    fn insert(text: &str) -> Frame {
        Frame::Decoded(Message::Insert(Insert {
            relation_oid: 1,
            new: TupleData(vec![TupleValue::Text(Bytes::copy_from_slice(text.as_bytes()))]),
        }))
    }

    fn value_problems() -> f64 {
        let text = metrics::render(false, false);
        text.lines()
            .find(|l| l.starts_with("problematic_events_total") && l.contains("kind=\"value\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// Every value that does not parse is counted, not only the first of its column.
    #[test]
    fn every_bad_value_is_counted() {
        let mut out = Vec::new();
        let mut t = transform(&mut out);
        let before = value_problems();
        let frames = [
            Frame::Decoded(Message::Relation(Relation {
                oid: 1,
                namespace: "public".into(),
                name: "t".into(),
                replica_identity: ReplicaIdentity::Default,
                columns: vec![Column {
                    is_key: true,
                    name: "id".into(),
                    type_oid: 20,
                    type_modifier: -1,
                }],
            })),
            Frame::Decoded(Message::Begin(Begin {
                final_lsn: 100,
                commit_time: 0,
                xid: 7,
            })),
            insert("not a number"),
            insert("nor this"),
            Frame::Decoded(Message::Commit(Commit {
                flags: 0,
                commit_lsn: 100,
                end_lsn: 120,
                commit_time: 0,
            })),
        ];
        for frame in frames {
            t.frame(frame, &mut out).expect("frame");
        }
        assert_eq!(value_problems() - before, 2.0);
        let routed = out.iter().filter(|o| matches!(o, Outbound::Route { .. })).count();
        assert_eq!(routed, 2, "both events are still published, as text");
        assert!(matches!(out.last(), Some(Outbound::Checkpoint(Lsn(120)))));
    }
}
