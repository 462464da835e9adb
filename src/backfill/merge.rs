//! The transform's side of a backfill: watermarks in the stream, the window between them, and
//! the chunk's rows turned into READ events at the high watermark.
//!
//! The runner registers a chunk in the [`Handoff`] before it writes the low watermark and
//! fills in the rows before it writes the high one, so when the stream reaches a watermark
//! what belongs to it is already there. Between the watermarks the transform notes the key of
//! every change to the chunk's table ([`Merge::observe`]); at the high watermark those keys
//! are dropped from the chunk and the rest become READ events, in key order, before anything
//! after the watermark. The runner hears how the chunk ended through [`ChunkEnd`], sent once
//! every event up to it is acknowledged (`Outbound::Settled`).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::event::json::ValueJson;
use crate::event::{Action, Assembler, Backfilled, ChangeEvent, Row, TxText};

use super::table::{Chunk, Plan};

/// How a chunk ended, for the runner.
#[derive(Debug)]
pub enum ChunkEnd {
    /// Its READ events (`rows` of them; the others were changed by the stream meanwhile) are
    /// acknowledged.
    Published { rows: usize },
    /// It must be read again: a transaction that committed before the low watermark was
    /// still finishing when the chunk's snapshot was taken.
    Retry,
}

/// A chunk the runner is reading.
pub struct Expected {
    pub chunk: String,
    pub backfill: Arc<str>,
    pub plan: Arc<Plan>,
    pub done: oneshot::Sender<ChunkEnd>,
}

struct Pending {
    expected: Expected,
    rows: Option<Chunk>,
}

/// Shared by the runner (registers chunks, hands rows over) and the transform (takes them at
/// the watermarks). The runner keeps at most two chunks here: one whose high watermark the
/// stream has yet to reach, and the next one being read.
#[derive(Clone, Default)]
pub struct Handoff(Arc<Mutex<VecDeque<Pending>>>);

impl Handoff {
    pub fn register(&self, expected: Expected) {
        self.lock().push_back(Pending { expected, rows: None });
    }

    /// The rows of the registered chunk `chunk`.
    pub fn fill(&self, chunk: &str, rows: Chunk) {
        if let Some(pending) = self.lock().iter_mut().find(|p| p.expected.chunk == chunk) {
            pending.rows = Some(rows);
        }
    }

    /// Forget every registered chunk (the runner gave up on them).
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is(&self, chunk: &str) -> Option<(String, String, Vec<String>, Vec<u32>)> {
        let guard = self.lock();
        let pending = guard.iter().find(|p| p.expected.chunk == chunk)?;
        let plan = &pending.expected.plan;
        Some((
            plan.name.schema.clone(),
            plan.name.table.clone(),
            plan.key.iter().map(|c| c.name.clone()).collect(),
            plan.columns.iter().chain(&plan.key).map(|c| c.type_oid).collect(),
        ))
    }

    fn take(&self, chunk: &str) -> Option<Pending> {
        let mut guard = self.lock();
        let index = guard.iter().position(|p| p.expected.chunk == chunk)?;
        guard.remove(index)
    }
}

/// The window between a chunk's watermarks.
struct Window {
    chunk: String,
    schema: String,
    table: String,
    key: Vec<String>,
    /// Keys (as [`key_text`]) changed by the stream inside the window.
    changed: HashSet<String>,
    /// The table was truncated inside the window: no row of the chunk is current.
    truncated: bool,
    /// A change whose key could not be told: the chunk is read again.
    unknown: bool,
    /// [`Merge::seen`] when the low watermark arrived.
    seen_at_low: u64,
}

/// Transactions remembered, for the in-progress check (far more than commit in the moment
/// between a low watermark's commit and the chunk's snapshot).
const RECENT_XIDS: usize = 4096;

/// The transform's backfill state.
#[derive(Default)]
pub struct Merge {
    handoff: Handoff,
    window: Option<Window>,
    /// Recent transactions that changed rows, with their order of arrival.
    recent: VecDeque<(u64, u32)>,
    seen: u64,
}

/// What the transform does at a high watermark.
pub struct Ready {
    pub events: Vec<ChangeEvent>,
    pub end: ChunkEnd,
    pub done: oneshot::Sender<ChunkEnd>,
}

impl Merge {
    pub fn new(handoff: Handoff) -> Merge {
        Merge {
            handoff,
            ..Merge::default()
        }
    }

    /// A row change in the stream (any table).
    pub fn observe(&mut self, event: &ChangeEvent) {
        if self.recent.back().is_none_or(|&(_, xid)| xid != event.xid) {
            self.seen += 1;
            self.recent.push_back((self.seen, event.xid));
            if self.recent.len() > RECENT_XIDS {
                self.recent.pop_front();
            }
        }
        let Some(window) = &mut self.window else {
            return;
        };
        if *event.table != *window.table || *event.schema != *window.schema {
            return;
        }
        match event.action {
            Action::Truncate => window.truncated = true,
            Action::Insert | Action::Update | Action::Delete => {
                let mut any = false;
                for row in [&event.data, &event.data_old] {
                    if row.0.is_empty() {
                        continue;
                    }
                    match key_text(row, &window.key) {
                        Some(key) => {
                            window.changed.insert(key);
                            any = true;
                        }
                        None if event.action == Action::Update && std::ptr::eq(row, &event.data_old) => {}
                        None => window.unknown = true,
                    }
                }
                if !any {
                    window.unknown = true;
                }
            }
            Action::Message | Action::Read => {}
        }
    }

    /// A low watermark: open the window if it is the registered chunk's (else it is another
    /// session's or another instance's, and means nothing here). Returns the type OIDs the
    /// chunk's columns need, for the catalog.
    pub fn low(&mut self, chunk: &str) -> Vec<u32> {
        let Some((schema, table, key, types)) = self.handoff.is(chunk) else {
            return Vec::new();
        };
        self.window = Some(Window {
            chunk: chunk.to_owned(),
            schema,
            table,
            key,
            changed: HashSet::new(),
            truncated: false,
            unknown: false,
            seen_at_low: self.seen,
        });
        types
    }

    /// A high watermark: the chunk's READ events, if it is the open window's chunk.
    /// `lsn`/`now`: the watermark's commit position and the time, for the events' headers.
    pub fn high(&mut self, chunk: &str, assembler: &mut Assembler, lsn: crate::lsn::Lsn, now: i64) -> Option<Ready> {
        if self.window.as_ref().is_none_or(|w| w.chunk != chunk) {
            return None;
        }
        let window = self.window.take()?;
        let pending = self.handoff.take(chunk)?;
        let Expected {
            backfill, plan, done, ..
        } = pending.expected;
        let Some(rows) = pending.rows else {
            // The runner writes the high watermark only after handing the rows over.
            return Some(Ready {
                events: Vec::new(),
                end: ChunkEnd::Retry,
                done,
            });
        };
        let stale = rows.in_progress.iter().any(|xid| {
            self.recent
                .iter()
                .any(|&(seen, recent)| recent == *xid && seen <= window.seen_at_low)
        });
        if stale || window.unknown {
            return Some(Ready {
                events: Vec::new(),
                end: ChunkEnd::Retry,
                done,
            });
        }
        let mut events = Vec::new();
        if !window.truncated {
            let columns: Vec<(String, u32)> = plan.columns.iter().map(|c| (c.name.clone(), c.type_oid)).collect();
            let keys: Vec<(String, u32)> = plan.key.iter().map(|c| (c.name.clone(), c.type_oid)).collect();
            let rel = assembler.read_relation(&plan.name.schema, &plan.name.table, &columns);
            let key_rel = assembler.read_relation(&plan.name.schema, &plan.name.table, &keys);
            let key_names: Vec<String> = plan.key.iter().map(|c| c.name.clone()).collect();
            let text = TxText::new(lsn, 0, now);
            let width = plan.columns.len();
            for (ordinal, row) in rows.rows.iter().enumerate() {
                let (values, key_values) = row.split_at(width.min(row.len()));
                let key_row = assembler.read_row(&key_rel, key_values);
                if key_text(&key_row, &key_names).is_some_and(|k| window.changed.contains(&k)) {
                    continue;
                }
                let key_parts: Vec<&str> = key_values.iter().map(|v| v.as_deref().unwrap_or("")).collect();
                let (schema, table) = rel.names();
                events.push(ChangeEvent {
                    commit_lsn: lsn,
                    ordinal: u32::try_from(ordinal).unwrap_or(u32::MAX),
                    xid: 0,
                    commit_time: now,
                    schema: schema.clone(),
                    table: table.clone(),
                    action: Action::Read,
                    data: assembler.read_row(&rel, values),
                    data_old: Row::default(),
                    unchanged_toast: Vec::new(),
                    message: None,
                    text: text.clone(),
                    backfill: Some(Backfilled::new(
                        backfill.clone(),
                        &plan.name.schema,
                        &plan.name.table,
                        &key_parts,
                    )),
                });
            }
        }
        Some(Ready {
            end: ChunkEnd::Published { rows: events.len() },
            events,
            done,
        })
    }
}

/// A row's key as one string: each key column's value as JSON, so that the same value read
/// by the chunk and sent by the stream (both mapped from PostgreSQL's text) compare equal.
fn key_text(row: &Row, key: &[String]) -> Option<String> {
    let mut text = String::new();
    for name in key {
        let value = row.get(name)?;
        text.push_str(&serde_json::to_string(&ValueJson(value)).ok()?);
        text.push('\u{1f}');
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backfill::TableName;
    use crate::backfill::table::Column;
    use crate::event::Value;
    use crate::lsn::Lsn;

    fn plan() -> Arc<Plan> {
        let int8 = |name: &str| Column {
            name: name.into(),
            type_oid: 20,
            type_name: "bigint".into(),
        };
        let text = Column {
            name: "v".into(),
            type_oid: 25,
            type_name: "text".into(),
        };
        Arc::new(Plan {
            name: TableName {
                schema: "public".into(),
                table: "t".into(),
            },
            columns: vec![int8("id"), text],
            key: vec![int8("id")],
            estimate: 0,
        })
    }

    fn change(action: Action, id: i64, xid: u32) -> ChangeEvent {
        let row = Row(vec![
            (Arc::from("id"), Value::Int(id)),
            (Arc::from("v"), Value::Text("new".into())),
        ]);
        let (data, data_old) = match action {
            Action::Delete => (Row::default(), Row(vec![(Arc::from("id"), Value::Int(id))])),
            _ => (row, Row::default()),
        };
        ChangeEvent {
            commit_lsn: Lsn(1),
            ordinal: 0,
            xid,
            commit_time: 0,
            schema: Arc::from("public"),
            table: Arc::from("t"),
            action,
            data,
            data_old,
            unchanged_toast: Vec::new(),
            message: None,
            text: TxText::new(Lsn(1), xid, 0),
            backfill: None,
        }
    }

    fn chunk(ids: &[i64], in_progress: Vec<u32>) -> Chunk {
        Chunk {
            rows: ids
                .iter()
                .map(|id| vec![Some(id.to_string()), Some("old".into()), Some(id.to_string())])
                .collect(),
            in_progress,
        }
    }

    fn setup(name: &str) -> (Merge, Handoff, oneshot::Receiver<ChunkEnd>) {
        let handoff = Handoff::default();
        let (done, rx) = oneshot::channel();
        handoff.register(Expected {
            chunk: name.into(),
            backfill: Arc::from("b1"),
            plan: plan(),
            done,
        });
        (Merge::new(handoff.clone()), handoff, rx)
    }

    fn ids(events: &[ChangeEvent]) -> Vec<i64> {
        events
            .iter()
            .map(|e| match e.data.get("id") {
                Some(Value::Int(i)) => *i,
                other => panic!("id {other:?}"),
            })
            .collect()
    }

    #[test]
    fn changes_inside_the_window_win_over_the_chunk() {
        let (mut merge, handoff, _rx) = setup("c1");
        let mut assembler = Assembler::new();
        merge.observe(&change(Action::Update, 1, 10)); // before the window: the chunk is newer
        assert_eq!(merge.low("c1"), vec![20, 25, 20]);
        merge.observe(&change(Action::Update, 2, 11));
        merge.observe(&change(Action::Delete, 4, 12));
        handoff.fill("c1", chunk(&[1, 2, 3, 4, 5], vec![]));
        let ready = merge.high("c1", &mut assembler, Lsn(99), 0).expect("ready");
        assert_eq!(ids(&ready.events), vec![1, 3, 5]);
        assert!(matches!(ready.end, ChunkEnd::Published { rows: 3 }));
        let e = &ready.events[0];
        assert_eq!(e.action, Action::Read);
        assert_eq!(e.data.get("v"), Some(&Value::Text("old".into())));
        assert!(e.data_old.0.is_empty());
        assert_eq!(e.backfill.as_ref().map(|b| &*b.id), Some("b1"));
        // Ids depend on the backfill, table and key only.
        assert_eq!(e.id(), Backfilled::new(Arc::from("b1"), "public", "t", &["1"]).event_id);
        assert_ne!(e.id(), ready.events[1].id());
    }

    #[test]
    fn watermarks_of_other_chunks_change_nothing() {
        let (mut merge, handoff, _rx) = setup("c1");
        let mut assembler = Assembler::new();
        assert!(merge.low("other").is_empty());
        handoff.fill("c1", chunk(&[1], vec![]));
        assert!(merge.high("c1", &mut assembler, Lsn(1), 0).is_none(), "no low yet");
        merge.low("c1");
        assert!(merge.high("other", &mut assembler, Lsn(1), 0).is_none());
        assert!(merge.high("c1", &mut assembler, Lsn(1), 0).is_some());
    }

    #[test]
    fn a_truncate_inside_the_window_empties_the_chunk() {
        let (mut merge, handoff, _rx) = setup("c1");
        let mut assembler = Assembler::new();
        merge.low("c1");
        merge.observe(&change(Action::Truncate, 0, 11));
        handoff.fill("c1", chunk(&[1, 2], vec![]));
        let ready = merge.high("c1", &mut assembler, Lsn(1), 0).expect("ready");
        assert!(ready.events.is_empty());
    }

    #[test]
    fn a_transaction_seen_before_the_low_watermark_but_in_progress_for_the_snapshot_rereads() {
        let (mut merge, handoff, _rx) = setup("c1");
        let mut assembler = Assembler::new();
        merge.observe(&change(Action::Update, 7, 42));
        merge.low("c1");
        handoff.fill("c1", chunk(&[7], vec![42]));
        let ready = merge.high("c1", &mut assembler, Lsn(1), 0).expect("ready");
        assert!(matches!(ready.end, ChunkEnd::Retry));
        // In progress but committed after the low watermark: the window handles it.
        let (mut merge, handoff, _rx) = setup("c2");
        merge.low("c2");
        merge.observe(&change(Action::Update, 7, 43));
        handoff.fill("c2", chunk(&[7, 8], vec![43]));
        let ready = merge.high("c2", &mut assembler, Lsn(1), 0).expect("ready");
        assert_eq!(ids(&ready.events), vec![8]);
    }
}
