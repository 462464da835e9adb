//! Tests of the decoder: shared sample messages, byte-vector tests of valid
//! and malformed input, and property tests.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod malformed;
mod props;
mod valid;

use bytes::Bytes;

use super::*;

pub(super) fn text(s: &str) -> TupleValue {
    TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
}

pub(super) fn tup(v: Vec<TupleValue>) -> TupleData {
    TupleData(v)
}

/// `public.users(id int8 key, email text)` with `REPLICA IDENTITY DEFAULT`.
pub(super) fn users_relation() -> Relation {
    Relation {
        oid: 16_385,
        namespace: "public".into(),
        name: "users".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![
            Column {
                is_key: true,
                name: "id".into(),
                type_oid: 20,
                type_modifier: -1,
            },
            Column {
                is_key: false,
                name: "email".into(),
                type_oid: 25,
                type_modifier: -1,
            },
        ],
    }
}

/// One valid message of every kind and every tuple kind, with a label.
pub(super) fn samples() -> Vec<(&'static str, Message)> {
    vec![
        (
            "begin",
            Message::Begin(Begin {
                final_lsn: 0x0000_0001_6B37_4D48,
                commit_time: 767_000_000_123_456,
                xid: 735,
            }),
        ),
        (
            "commit",
            Message::Commit(Commit {
                flags: 0,
                commit_lsn: 0x0000_0001_6B37_4D48,
                end_lsn: 0x0000_0001_6B37_4D78,
                commit_time: 767_000_000_123_456,
            }),
        ),
        (
            "origin",
            Message::Origin(Origin {
                commit_lsn: 42,
                name: "pg_16390".into(),
            }),
        ),
        ("relation users", Message::Relation(users_relation())),
        (
            "relation empty, identity full",
            Message::Relation(Relation {
                oid: 1,
                namespace: String::new(),
                name: "t".into(),
                replica_identity: ReplicaIdentity::Full,
                columns: vec![],
            }),
        ),
        (
            "type",
            Message::Type(TypeMsg {
                oid: 16_400,
                namespace: "public".into(),
                name: "mood".into(),
            }),
        ),
        (
            "insert all kinds",
            Message::Insert(Insert {
                relation_oid: 16_385,
                new: tup(vec![
                    text("1"),
                    TupleValue::Null,
                    TupleValue::UnchangedToast,
                    TupleValue::Binary(Bytes::from_static(&[0, 1, 0xff])),
                    text(""),
                ]),
            }),
        ),
        (
            "insert zero columns",
            Message::Insert(Insert {
                relation_oid: 7,
                new: tup(vec![]),
            }),
        ),
        (
            "update no old",
            Message::Update(Update {
                relation_oid: 16_385,
                old: None,
                new: tup(vec![text("1"), text("a@example.com")]),
            }),
        ),
        (
            "update old key",
            Message::Update(Update {
                relation_oid: 16_385,
                old: Some(OldTuple::Key(tup(vec![text("1"), TupleValue::Null]))),
                new: tup(vec![text("2"), text("a@example.com")]),
            }),
        ),
        (
            "update old full with unchanged toast",
            Message::Update(Update {
                relation_oid: 16_385,
                old: Some(OldTuple::Full(tup(vec![text("1"), TupleValue::UnchangedToast]))),
                new: tup(vec![text("1"), TupleValue::UnchangedToast]),
            }),
        ),
        (
            "delete key",
            Message::Delete(Delete {
                relation_oid: 16_385,
                old: OldTuple::Key(tup(vec![text("1"), TupleValue::Null])),
            }),
        ),
        (
            "delete full",
            Message::Delete(Delete {
                relation_oid: 16_385,
                old: OldTuple::Full(tup(vec![text("1"), text("a@example.com")])),
            }),
        ),
        (
            "truncate cascade restart",
            Message::Truncate(Truncate {
                cascade: true,
                restart_identity: true,
                relation_oids: vec![16_385, 16_390],
            }),
        ),
        (
            "truncate plain",
            Message::Truncate(Truncate {
                cascade: false,
                restart_identity: false,
                relation_oids: vec![16_385],
            }),
        ),
        (
            "message transactional",
            Message::Message(LogicalMessage {
                transactional: true,
                lsn: 0x16B3_7000,
                prefix: "wal-listener".into(),
                content: Bytes::from_static(b"{\"hello\":1}"),
            }),
        ),
        (
            "message non-transactional empty",
            Message::Message(LogicalMessage {
                transactional: false,
                lsn: 1,
                prefix: String::new(),
                content: Bytes::new(),
            }),
        ),
    ]
}

pub(super) fn dec(v: &[u8]) -> Result<Message, DecodeError> {
    decode(&Bytes::copy_from_slice(v))
}
