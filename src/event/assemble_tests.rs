use super::*;
use crate::decode::{Begin, Column, Commit, Delete, Insert, LogicalMessage, Relation, Truncate, Update};
use bytes::Bytes;

fn text(s: &str) -> TupleValue {
    TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn relation(identity: ReplicaIdentity) -> Message {
    let col = |name: &str, type_oid, is_key| Column {
        is_key,
        name: name.into(),
        type_oid,
        type_modifier: -1,
    };
    Message::Relation(Relation {
        oid: 16384,
        namespace: "public".into(),
        name: "users".into(),
        replica_identity: identity,
        columns: vec![col("id", 20, true), col("email", 25, false), col("bio", 25, false)],
    })
}

fn begin() -> Message {
    Message::Begin(Begin {
        final_lsn: 0x1000,
        commit_time: 0,
        xid: 7,
    })
}

fn commit() -> Message {
    Message::Commit(Commit {
        flags: 0,
        commit_lsn: 0x1000,
        end_lsn: 0x1010,
        commit_time: 0,
    })
}

fn run(identity: ReplicaIdentity, change: Message) -> Vec<Item> {
    let mut a = Assembler::new();
    let mut out = Vec::new();
    for m in [relation(identity), begin(), change, commit()] {
        a.apply(m, &mut out).expect("valid stream");
    }
    out
}

fn change(items: &[Item]) -> &ChangeEvent {
    match items.first() {
        Some(Item::Change(e)) => e,
        other => panic!("expected a change, got {other:?}"),
    }
}

fn json(e: &ChangeEvent) -> serde_json::Value {
    serde_json::from_slice(&crate::event::json::payload(e)).expect("payload is JSON")
}

#[test]
fn insert_becomes_an_event_and_the_commit_a_tx_end() {
    let items = run(
        ReplicaIdentity::Default,
        Message::Insert(Insert {
            relation_oid: 16384,
            new: TupleData(vec![text("42"), text("a@b.c"), TupleValue::Null]),
        }),
    );
    assert_eq!(items.len(), 2);
    assert_eq!(items[1], Item::TxEnd(Lsn(0x1010)));
    let e = change(&items);
    assert_eq!(
        (e.commit_lsn, e.ordinal, e.xid, e.action),
        (Lsn(0x1000), 0, 7, Action::Insert)
    );
    let j = json(e);
    assert_eq!(j["data"], serde_json::json!({"id": 42, "email": "a@b.c", "bio": null}));
    assert_eq!(j["dataOld"], serde_json::json!({}));
    assert_eq!(j["schema"], "public");
    assert_eq!(j["action"], "INSERT");
    assert_eq!(j["commitTime"], "2000-01-01T00:00:00.000000Z");
    assert!(j.get("unchangedToast").is_none());
    let keys: Vec<&String> = j.as_object().map(|o| o.keys().collect()).unwrap_or_default();
    assert_eq!(
        keys,
        ["id", "schema", "table", "action", "data", "dataOld", "commitTime"]
    );
}

#[test]
fn update_without_old_tuple_keeps_the_key_in_data_old() {
    let items = run(
        ReplicaIdentity::Default,
        Message::Update(Update {
            relation_oid: 16384,
            old: None,
            new: TupleData(vec![text("42"), text("new@b.c"), text("x")]),
        }),
    );
    assert_eq!(json(change(&items))["dataOld"], serde_json::json!({"id": 42}));
}

#[test]
fn unchanged_toast_is_listed_not_faked() {
    let items = run(
        ReplicaIdentity::Default,
        Message::Update(Update {
            relation_oid: 16384,
            old: None,
            new: TupleData(vec![text("42"), text("e"), TupleValue::UnchangedToast]),
        }),
    );
    let j = json(change(&items));
    assert_eq!(j["data"], serde_json::json!({"id": 42, "email": "e"}));
    assert_eq!(j["unchangedToast"], serde_json::json!(["bio"]));
}

#[test]
fn unchanged_toast_is_copied_from_a_full_old_row() {
    let old = OldTuple::Full(TupleData(vec![text("42"), text("old"), text("long bio")]));
    let items = run(
        ReplicaIdentity::Full,
        Message::Update(Update {
            relation_oid: 16384,
            old: Some(old),
            new: TupleData(vec![text("42"), text("new"), TupleValue::UnchangedToast]),
        }),
    );
    let j = json(change(&items));
    assert_eq!(
        j["data"],
        serde_json::json!({"id": 42, "email": "new", "bio": "long bio"})
    );
    assert_eq!(
        j["dataOld"],
        serde_json::json!({"id": 42, "email": "old", "bio": "long bio"})
    );
    assert!(j.get("unchangedToast").is_none());
}

#[test]
fn delete_with_key_identity_has_only_key_columns() {
    let old = OldTuple::Key(TupleData(vec![text("42"), TupleValue::Null, TupleValue::Null]));
    let items = run(
        ReplicaIdentity::Default,
        Message::Delete(Delete {
            relation_oid: 16384,
            old,
        }),
    );
    let j = json(change(&items));
    assert_eq!(j["data"], serde_json::json!({}));
    assert_eq!(j["dataOld"], serde_json::json!({"id": 42}));
}

#[test]
fn truncate_yields_one_event_per_table_with_distinct_ordinals() {
    let mut a = Assembler::new();
    let mut out = Vec::new();
    a.apply(relation(ReplicaIdentity::Default), &mut out).expect("relation");
    let mut other = relation(ReplicaIdentity::Default);
    if let Message::Relation(r) = &mut other {
        r.oid = 16390;
        r.name = "orders".into();
    }
    a.apply(other, &mut out).expect("relation");
    a.apply(begin(), &mut out).expect("begin");
    a.apply(
        Message::Truncate(Truncate {
            cascade: false,
            restart_identity: false,
            relation_oids: vec![16384, 16390],
        }),
        &mut out,
    )
    .expect("truncate");
    let tables: Vec<(String, u32)> = out
        .iter()
        .filter_map(|i| match i {
            Item::Change(e) => Some((e.table.to_string(), e.ordinal)),
            _ => None,
        })
        .collect();
    assert_eq!(tables, [("users".to_string(), 0), ("orders".to_string(), 1)]);
}

#[test]
fn transactional_messages_take_the_transactions_identity() {
    let mut a = Assembler::new();
    let mut out = Vec::new();
    a.apply(begin(), &mut out).expect("begin");
    a.apply(
        Message::Message(LogicalMessage {
            transactional: true,
            lsn: 0x0F00,
            prefix: "outbox".into(),
            content: Bytes::from_static(br#"{"k":1}"#),
        }),
        &mut out,
    )
    .expect("message");
    let e = change(&out);
    assert_eq!((e.commit_lsn, e.ordinal, e.action), (Lsn(0x1000), 0, Action::Message));
    let j = json(e);
    assert_eq!(j["content"], serde_json::json!({"k": 1}));
    assert_eq!(j["prefix"], "outbox");
}

#[test]
fn protocol_violations_are_errors() {
    let mut a = Assembler::new();
    let mut out = Vec::new();
    let insert = || {
        Message::Insert(Insert {
            relation_oid: 16384,
            new: TupleData(vec![text("1")]),
        })
    };
    assert_eq!(a.apply(insert(), &mut out), Err(EventError::UnknownRelation(16384)));
    a.apply(relation(ReplicaIdentity::Default), &mut out).expect("relation");
    assert!(matches!(
        a.apply(insert(), &mut out),
        Err(EventError::ColumnCount { .. })
    ));
    assert_eq!(
        a.apply(commit(), &mut out),
        Err(EventError::OutsideTransaction("Commit"))
    );
    a.apply(begin(), &mut out).expect("begin");
    assert_eq!(a.apply(begin(), &mut out), Err(EventError::NestedBegin));
    let binary = Message::Insert(Insert {
        relation_oid: 16384,
        new: TupleData(vec![
            TupleValue::Binary(Bytes::from_static(b"\0")),
            TupleValue::Null,
            TupleValue::Null,
        ]),
    });
    assert!(matches!(a.apply(binary, &mut out), Err(EventError::BinaryValue { .. })));
}

#[test]
fn bad_values_are_kept_as_text_and_reported() {
    let mut a = Assembler::new();
    let mut out = Vec::new();
    a.apply(relation(ReplicaIdentity::Default), &mut out).expect("relation");
    a.apply(begin(), &mut out).expect("begin");
    a.apply(
        Message::Insert(Insert {
            relation_oid: 16384,
            new: TupleData(vec![text("not a number"), TupleValue::Null, TupleValue::Null]),
        }),
        &mut out,
    )
    .expect("insert");
    assert_eq!(json(change(&out))["data"]["id"], "not a number");
    let bad = a.take_bad_values().new_columns;
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].column, "id");
}

#[test]
fn bad_values_are_logged_once_per_column_and_all_counted() {
    let mut a = Assembler::new();
    let mut out = Vec::new();
    a.apply(relation(ReplicaIdentity::Default), &mut out).expect("relation");
    a.apply(begin(), &mut out).expect("begin");
    for _ in 0..3 {
        a.apply(
            Message::Insert(Insert {
                relation_oid: 16384,
                new: TupleData(vec![text("x"), TupleValue::Null, TupleValue::Null]),
            }),
            &mut out,
        )
        .expect("insert");
    }
    assert_eq!(
        a.take_bad_values(),
        BadValues {
            new_columns: vec![BadValue {
                table: "public.users".into(),
                column: "id".into(),
                type_oid: 20
            }],
            count: 3
        }
    );
    a.apply(
        Message::Insert(Insert {
            relation_oid: 16384,
            new: TupleData(vec![text("y"), TupleValue::Null, TupleValue::Null]),
        }),
        &mut out,
    )
    .expect("insert");
    let bad = a.take_bad_values();
    assert!(bad.new_columns.is_empty(), "already reported");
    assert_eq!(bad.count, 1, "but counted");
}

#[test]
fn unchanged_toast_key_columns_come_from_an_old_key_tuple() {
    // A composite key (id, bio) where id changed and the big bio did not: PostgreSQL sends
    // the old key with bio's value and 'u' for bio in the new row.
    let mut a = Assembler::new();
    let mut out = Vec::new();
    let mut rel = relation(ReplicaIdentity::Index);
    if let Message::Relation(r) = &mut rel {
        r.columns[2].is_key = true;
    }
    a.apply(rel, &mut out).expect("relation");
    a.apply(begin(), &mut out).expect("begin");
    a.apply(
        Message::Update(Update {
            relation_oid: 16384,
            old: Some(OldTuple::Key(TupleData(vec![text("1"), TupleValue::Null, text("big")]))),
            new: TupleData(vec![text("2"), TupleValue::UnchangedToast, TupleValue::UnchangedToast]),
        }),
        &mut out,
    )
    .expect("update");
    let j = json(change(&out));
    assert_eq!(j["data"], serde_json::json!({"id": 2, "bio": "big"}));
    assert_eq!(j["dataOld"], serde_json::json!({"id": 1, "bio": "big"}));
    // email is not a key column: the key tuple's null for it is not its value.
    assert_eq!(j["unchangedToast"], serde_json::json!(["email"]));
}

#[test]
fn unknown_user_types_are_asked_for_and_relations_re_resolved() {
    use crate::event::{PgType, TypeKind};
    let mut a = Assembler::new();
    let mut out = Vec::new();
    let col = |name: &str, type_oid| Column {
        is_key: false,
        name: name.into(),
        type_oid,
        type_modifier: -1,
    };
    a.apply(
        Message::Type(crate::decode::TypeMsg {
            oid: 30_000,
            namespace: "public".into(),
            name: "big".into(),
        }),
        &mut out,
    )
    .expect("type");
    assert_eq!(a.missing_types(), [30_000]);
    a.apply(
        Message::Relation(Relation {
            oid: 1,
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![col("n", 30_000), col("ns", 30_001), col("mood", 30_002)],
        }),
        &mut out,
    )
    .expect("relation");
    assert_eq!(a.missing_types(), [30_000, 30_001, 30_002]);
    // Round 1: 30000 is a domain over int8, 30001 an array of 30003 (not known yet), 30002
    // was dropped meanwhile (not found).
    a.add_types([
        PgType {
            oid: 30_000,
            kind: TypeKind::Domain { base: 20 },
        },
        PgType {
            oid: 30_001,
            kind: TypeKind::Array {
                elem: 30_003,
                delimiter: b',',
            },
        },
    ]);
    let mut missing = a.missing_types().to_vec();
    missing.sort_unstable();
    assert_eq!(missing, [30_002, 30_003]);
    // Round 2: the element is a domain over the first domain; 30002 is still not there.
    a.add_types([PgType {
        oid: 30_003,
        kind: TypeKind::Domain { base: 30_000 },
    }]);
    assert_eq!(a.missing_types(), [30_002]);
    a.give_up_missing_types();
    assert!(a.missing_types().is_empty());
    a.apply(begin(), &mut out).expect("begin");
    a.apply(
        Message::Insert(Insert {
            relation_oid: 1,
            new: TupleData(vec![text("9007199254740993"), text("{1,NULL,-2}"), text("happy")]),
        }),
        &mut out,
    )
    .expect("insert");
    let j = json(change(&out));
    assert_eq!(
        j["data"],
        serde_json::json!({"n": 9007199254740993u64, "ns": [1, null, -2], "mood": "happy"})
    );
    assert_eq!(a.take_bad_values(), BadValues::default());
}

#[test]
fn non_transactional_messages_stand_alone() {
    let mut a = Assembler::new();
    let mut out = Vec::new();
    a.apply(
        Message::Message(LogicalMessage {
            transactional: false,
            lsn: 0x0F00,
            prefix: "audit".into(),
            content: Bytes::from_static(b"plain text"),
        }),
        &mut out,
    )
    .expect("message outside a transaction");
    let e = change(&out);
    assert_eq!((e.commit_lsn, e.ordinal, e.xid), (Lsn(0x0F00), 0, 0));
    assert!(e.commit_time > 0, "stamped with the time it was decoded");
    let j = json(e);
    assert_eq!(j["content"], "plain text");
    assert_eq!(j["transactional"], false);
}

#[test]
fn binary_message_content_is_hex_not_mangled() {
    let mut a = Assembler::new();
    let mut out = Vec::new();
    a.apply(
        Message::Message(LogicalMessage {
            transactional: false,
            lsn: 1,
            prefix: "bin".into(),
            content: Bytes::from_static(b"\x00\xff\x10"),
        }),
        &mut out,
    )
    .expect("message");
    let j = json(change(&out));
    assert_eq!(j["content"], "\\x00ff10");
    assert_eq!(j["binary"], true);
}
