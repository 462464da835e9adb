//! Transaction assembly: decoded pgoutput messages in, [`Item`]s out.
//!
//! With protocol version 1 PostgreSQL sends a transaction only once it has committed, as
//! `Begin, (Relation | Type | Origin | change)*, Commit`. Changes are emitted as they arrive —
//! nothing is buffered per transaction — and the Commit becomes an [`Item::TxEnd`] carrying the
//! end LSN that may be confirmed once every message produced before it is acknowledged.
//!
//! Column types are resolved through a [`TypeRegistry`] when a Relation arrives. A Relation
//! (or Type) message that names a user type the registry does not know leaves the type mapped
//! as text for the moment and records the OID: the caller fetches it from the catalog
//! ([`Assembler::missing_types`], [`Assembler::add_types`]) before applying the next message,
//! and every cached relation is re-resolved.
//!
//! ## Old rows and TOAST
//!
//! What PostgreSQL sends depends on the table's replica identity: with DEFAULT (primary key)
//! or USING INDEX, an UPDATE carries an old `K` tuple only when a key column changed and a
//! DELETE carries the old key; with FULL, both carry the whole old row (`O`); with NOTHING,
//! nothing. An unchanged TOASTed column arrives as `u` (no value). We fill it from the old
//! tuple when that tuple holds the column — always with FULL, and for key columns of a `K`
//! tuple — and otherwise leave it out of `data` and list it in `unchanged_toast`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::decode::{Message, OldTuple, ReplicaIdentity, TupleData, TupleValue};
use crate::lsn::Lsn;

use super::types::{FIRST_NORMAL_OID, PgType, TypeRegistry};
use super::value::{TypeMap, convert};
use super::{Action, ChangeEvent, MessageBody, Row, TxText, Value};

/// What the assembler hands on, in WAL order.
// Nearly every item is a change, moved once into the transform's loop: boxing it would add an
// allocation per event to save bytes on the rare TxEnd.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Change(ChangeEvent),
    /// A transaction ended; its end LSN is safe to confirm after everything before it.
    TxEnd(Lsn),
}

/// A stream that does not follow the protocol. Never caused by row contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("pgoutput sent a change for relation {0} before describing it in a Relation message")]
    UnknownRelation(u32),
    #[error("{table}: the change has {got} columns but the Relation message announced {expected}")]
    ColumnCount { table: String, expected: usize, got: usize },
    #[error("{table}.{column}: a binary-format value arrived, but text format was requested")]
    BinaryValue { table: String, column: String },
    #[error("a {0} message arrived outside a transaction")]
    OutsideTransaction(&'static str),
    #[error("a Begin arrived inside an open transaction")]
    NestedBegin,
}

/// A value whose text did not parse as its type: published as text, reported once per column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadValue {
    pub table: String,
    pub column: String,
    pub type_oid: u32,
}

/// The values that did not parse since the last [`Assembler::take_bad_values`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BadValues {
    /// Columns with such a value for the first time (to log once per column).
    pub new_columns: Vec<BadValue>,
    /// Every such value (to count each).
    pub count: u64,
}

#[derive(Clone)]
struct ColumnInfo {
    name: Arc<str>,
    map: TypeMap,
    type_oid: u32,
    is_key: bool,
}

/// Columns a backfill reads ([`Assembler::read_relation`]).
pub struct ReadRelation(RelationInfo);

impl ReadRelation {
    /// The schema and table names, shared by the events made from this relation.
    pub fn names(&self) -> (&Arc<str>, &Arc<str>) {
        (&self.0.schema, &self.0.table)
    }
}

#[derive(Clone)]
struct RelationInfo {
    schema: Arc<str>,
    table: Arc<str>,
    identity: ReplicaIdentity,
    columns: Vec<ColumnInfo>,
}

struct OpenTx {
    commit_lsn: Lsn,
    xid: u32,
    commit_time: i64,
    next_ordinal: u32,
    text: Arc<TxText>,
}

/// Turns decoded messages into events; owns the relation cache.
#[derive(Default)]
pub struct Assembler {
    relations: HashMap<u32, Arc<RelationInfo>>,
    types: TypeRegistry,
    /// User type OIDs named by a Relation or Type message that the registry does not know.
    missing_types: Vec<u32>,
    tx: Option<OpenTx>,
    /// Bad values since the last [`Assembler::take_bad_values`].
    bad_values: BadValues,
    /// `schema.table.column` of every column already reported.
    bad_columns: HashSet<String>,
}

impl Assembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a transaction is open (between Begin and Commit).
    pub fn in_transaction(&self) -> bool {
        self.tx.is_some()
    }

    /// The values that did not parse as their type since the last call (they were published
    /// as their original text): the columns new among them, and how many there were.
    pub fn take_bad_values(&mut self) -> BadValues {
        std::mem::take(&mut self.bad_values)
    }

    /// Replace the type registry (read from the catalog at session start).
    pub fn set_types(&mut self, types: TypeRegistry) {
        self.types = types;
        self.missing_types.clear();
        self.resolve_relations();
    }

    /// User type OIDs that a Relation or Type message named and the registry does not know
    /// yet; empty almost always. Look them up and pass the rows to [`Self::add_types`] before
    /// applying the next message.
    pub fn missing_types(&self) -> &[u32] {
        &self.missing_types
    }

    /// Add catalog rows for types [`Self::missing_types`] listed. Cached relations are
    /// re-resolved, and what they still miss — types not found, or further unknown types they
    /// depend on (an array's element, a domain's base) — becomes the new
    /// [`Self::missing_types`].
    pub fn add_types(&mut self, found: impl IntoIterator<Item = PgType>) {
        for t in found {
            self.types.insert(t);
        }
        self.missing_types.clear();
        self.resolve_relations();
    }

    /// Stop asking for the types still missing (dropped since the WAL was written): they map
    /// to text.
    pub fn give_up_missing_types(&mut self) {
        for oid in std::mem::take(&mut self.missing_types) {
            self.types.insert(PgType {
                oid,
                kind: super::types::TypeKind::Other,
            });
        }
        self.resolve_relations();
    }

    /// Recompute every cached column mapping from the registry and collect what is missing.
    fn resolve_relations(&mut self) {
        let mut missing = Vec::new();
        for rel in self.relations.values_mut() {
            let rel = Arc::make_mut(rel);
            for col in &mut rel.columns {
                col.map = self.types.map(col.type_oid);
                self.types.missing(col.type_oid, &mut missing);
            }
        }
        for oid in missing {
            if !self.missing_types.contains(&oid) {
                self.missing_types.push(oid);
            }
        }
    }

    /// Apply one message, pushing what it produces onto `out`.
    pub fn apply(&mut self, msg: Message, out: &mut Vec<Item>) -> Result<(), EventError> {
        match msg {
            Message::Begin(b) => {
                if self.tx.is_some() {
                    return Err(EventError::NestedBegin);
                }
                self.tx = Some(OpenTx {
                    commit_lsn: Lsn(b.final_lsn),
                    xid: b.xid,
                    commit_time: b.commit_time,
                    next_ordinal: 0,
                    text: TxText::new(Lsn(b.final_lsn), b.xid, b.commit_time),
                });
            }
            Message::Commit(c) => {
                self.tx.take().ok_or(EventError::OutsideTransaction("Commit"))?;
                out.push(Item::TxEnd(Lsn(c.end_lsn)));
            }
            Message::Relation(r) => {
                let mut columns = Vec::with_capacity(r.columns.len());
                for c in r.columns {
                    self.types.missing(c.type_oid, &mut self.missing_types);
                    columns.push(ColumnInfo {
                        name: c.name.into(),
                        map: self.types.map(c.type_oid),
                        type_oid: c.type_oid,
                        is_key: c.is_key,
                    });
                }
                let info = RelationInfo {
                    schema: r.namespace.into(),
                    table: r.name.into(),
                    identity: r.replica_identity,
                    columns,
                };
                self.relations.insert(r.oid, Arc::new(info));
            }
            // pgoutput sends a Type message before the Relation that uses a user type: a type
            // created after the registry was read is fetched before the Relation arrives.
            Message::Type(t) => {
                if t.oid >= FIRST_NORMAL_OID {
                    self.types.missing(t.oid, &mut self.missing_types);
                }
            }
            Message::Origin(_) => {}
            Message::Insert(i) => {
                let rel = self.relation(i.relation_oid)?;
                let data = self.row(&rel, &i.new, None)?;
                self.push_change(&rel, Action::Insert, data, Row::default(), Vec::new(), out)?;
            }
            Message::Update(u) => {
                let rel = self.relation(u.relation_oid)?;
                let mut unchanged = Vec::new();
                let data = self.row(&rel, &u.new, Some((u.old.as_ref(), &mut unchanged)))?;
                let data_old = match &u.old {
                    Some(old) => self.old_row(&rel, old)?,
                    // No old tuple: the key did not change, so the new row's key columns are the
                    // old ones (what REPLICA IDENTITY DEFAULT/INDEX provides).
                    None if rel.identity != ReplicaIdentity::Nothing => Row(data
                        .0
                        .iter()
                        .zip(&rel.columns)
                        .filter(|(_, c)| c.is_key)
                        .map(|(kv, _)| kv.clone())
                        .collect()),
                    None => Row::default(),
                };
                self.push_change(&rel, Action::Update, data, data_old, unchanged, out)?;
            }
            Message::Delete(d) => {
                let rel = self.relation(d.relation_oid)?;
                let data_old = self.old_row(&rel, &d.old)?;
                self.push_change(&rel, Action::Delete, Row::default(), data_old, Vec::new(), out)?;
            }
            Message::Truncate(t) => {
                for oid in t.relation_oids {
                    let rel = self.relation(oid)?;
                    self.push_change(&rel, Action::Truncate, Row::default(), Row::default(), Vec::new(), out)?;
                }
            }
            Message::Message(m) => {
                let body = MessageBody {
                    transactional: m.transactional,
                    prefix: m.prefix,
                    content: m.content,
                };
                let (commit_lsn, xid, commit_time, ordinal, text) = match (&mut self.tx, m.transactional) {
                    (Some(tx), true) => {
                        let ordinal = tx.next_ordinal;
                        tx.next_ordinal += 1;
                        (tx.commit_lsn, tx.xid, tx.commit_time, ordinal, tx.text.clone())
                    }
                    // A non-transactional message stands alone: its own LSN identifies it. It
                    // has no commit, hence no commit time and no xid in protocol version 1:
                    // its time is when it was decoded.
                    _ => {
                        let now = crate::pg_time::now();
                        (Lsn(m.lsn), 0, now, 0, TxText::new(Lsn(m.lsn), 0, now))
                    }
                };
                out.push(Item::Change(ChangeEvent {
                    commit_lsn,
                    ordinal,
                    xid,
                    commit_time,
                    schema: Arc::from(""),
                    table: Arc::from(""),
                    action: Action::Message,
                    data: Row::default(),
                    data_old: Row::default(),
                    unchanged_toast: Vec::new(),
                    message: Some(body),
                    text,
                    backfill: None,
                }));
            }
        }
        Ok(())
    }

    /// Ask for `oids` the registry does not know (columns a backfill is about to read); see
    /// [`Self::missing_types`].
    pub fn need_types(&mut self, oids: &[u32]) {
        for &oid in oids {
            self.types.missing(oid, &mut self.missing_types);
        }
    }

    /// Columns read by a backfill, mapped like those of a Relation message.
    pub fn read_relation(&mut self, schema: &str, table: &str, columns: &[(String, u32)]) -> ReadRelation {
        ReadRelation(RelationInfo {
            schema: schema.into(),
            table: table.into(),
            identity: ReplicaIdentity::Default,
            columns: columns
                .iter()
                .map(|(name, type_oid)| ColumnInfo {
                    name: name.as_str().into(),
                    map: self.types.map(*type_oid),
                    type_oid: *type_oid,
                    is_key: false,
                })
                .collect(),
        })
    }

    /// A row read by a backfill (each value PostgreSQL's text output, as pgoutput sends it),
    /// converted exactly as an INSERT's.
    pub fn read_row(&mut self, rel: &ReadRelation, values: &[Option<String>]) -> Row {
        let rel = &rel.0;
        let mut row = Vec::with_capacity(values.len());
        for (value, col) in values.iter().zip(&rel.columns) {
            let value = match value {
                None => Value::Null,
                Some(text) => {
                    let tuple = TupleValue::Text(bytes::Bytes::copy_from_slice(text.as_bytes()));
                    self.value(rel, col, &tuple).unwrap_or(Value::Null)
                }
            };
            row.push((col.name.clone(), value));
        }
        Row(row)
    }

    fn relation(&self, oid: u32) -> Result<Arc<RelationInfo>, EventError> {
        self.relations
            .get(&oid)
            .cloned()
            .ok_or(EventError::UnknownRelation(oid))
    }

    fn push_change(
        &mut self,
        rel: &RelationInfo,
        action: Action,
        data: Row,
        data_old: Row,
        unchanged_toast: Vec<Arc<str>>,
        out: &mut Vec<Item>,
    ) -> Result<(), EventError> {
        let tx = self
            .tx
            .as_mut()
            .ok_or(EventError::OutsideTransaction(action.as_str()))?;
        let ordinal = tx.next_ordinal;
        tx.next_ordinal += 1;
        out.push(Item::Change(ChangeEvent {
            commit_lsn: tx.commit_lsn,
            ordinal,
            xid: tx.xid,
            commit_time: tx.commit_time,
            schema: rel.schema.clone(),
            table: rel.table.clone(),
            action,
            data,
            data_old,
            unchanged_toast,
            message: None,
            text: tx.text.clone(),
            backfill: None,
        }));
        Ok(())
    }

    /// Convert a new-row tuple. `toast`: the old tuple (if sent) and where to list columns
    /// whose unchanged TOASTed value was withheld.
    fn row(
        &mut self,
        rel: &RelationInfo,
        tuple: &TupleData,
        mut toast: Option<(Option<&OldTuple>, &mut Vec<Arc<str>>)>,
    ) -> Result<Row, EventError> {
        check_width(rel, tuple)?;
        let mut row = Vec::with_capacity(tuple.0.len());
        for (i, (value, col)) in tuple.0.iter().zip(&rel.columns).enumerate() {
            let value = match value {
                TupleValue::UnchangedToast => {
                    // A full old row holds every column; a key tuple only the key columns
                    // (the others are sent as nulls, which must not be taken for values).
                    let from_old = toast.as_ref().and_then(|(old, _)| match old {
                        Some(OldTuple::Full(t)) => t.0.get(i),
                        Some(OldTuple::Key(t)) if col.is_key => t.0.get(i),
                        _ => None,
                    });
                    match from_old {
                        Some(old @ (TupleValue::Text(_) | TupleValue::Null)) => self.value(rel, col, old)?,
                        _ => {
                            if let Some((_, names)) = toast.as_mut() {
                                names.push(col.name.clone());
                            }
                            continue;
                        }
                    }
                }
                other => self.value(rel, col, other)?,
            };
            row.push((col.name.clone(), value));
        }
        Ok(Row(row))
    }

    fn old_row(&mut self, rel: &RelationInfo, old: &OldTuple) -> Result<Row, EventError> {
        let (tuple, key_only) = match old {
            OldTuple::Key(t) => (t, true),
            OldTuple::Full(t) => (t, false),
        };
        check_width(rel, tuple)?;
        let mut row = Vec::new();
        for (value, col) in tuple.0.iter().zip(&rel.columns) {
            if (key_only && !col.is_key) || matches!(value, TupleValue::UnchangedToast) {
                continue;
            }
            let value = self.value(rel, col, value)?;
            row.push((col.name.clone(), value));
        }
        Ok(Row(row))
    }

    fn value(&mut self, rel: &RelationInfo, col: &ColumnInfo, value: &TupleValue) -> Result<Value, EventError> {
        match value {
            TupleValue::Null | TupleValue::UnchangedToast => Ok(Value::Null),
            TupleValue::Binary(_) => Err(EventError::BinaryValue {
                table: rel.table.to_string(),
                column: col.name.to_string(),
            }),
            TupleValue::Text(bytes) => {
                // Valid UTF-8 is the rule (the session's client_encoding is UTF8); the
                // validating fast path is several times quicker than the lossy one.
                let text = match std::str::from_utf8(bytes) {
                    Ok(text) => std::borrow::Cow::Borrowed(text),
                    Err(_) => String::from_utf8_lossy(bytes),
                };
                convert(col.map, &text).or_else(|kept| {
                    self.bad_values.count += 1;
                    let table = format!("{}.{}", rel.schema, rel.table);
                    if self.bad_columns.insert(format!("{table}.{}", col.name)) {
                        self.bad_values.new_columns.push(BadValue {
                            table,
                            column: col.name.to_string(),
                            type_oid: col.type_oid,
                        });
                    }
                    Ok(kept)
                })
            }
        }
    }
}

fn check_width(rel: &RelationInfo, tuple: &TupleData) -> Result<(), EventError> {
    if tuple.0.len() != rel.columns.len() {
        return Err(EventError::ColumnCount {
            table: format!("{}.{}", rel.schema, rel.table),
            expected: rel.columns.len(),
            got: tuple.0.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
#[path = "assemble_tests.rs"]
mod tests;
