//! Byte-vector tests of valid messages of every kind and tuple kind.

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

use bytes::Bytes;

use super::super::encode::{Enc, encode};
use super::super::*;
use super::{dec, samples, text, tup, users_relation};

#[test]
fn begin_hand_vector() {
    let v = Enc::new()
        .u8(b'B')
        .raw(&[0, 0, 0, 1, 0x6B, 0x37, 0x4D, 0x48])
        .i64(767_000_000_123_456)
        .raw(&[0, 0, 2, 0xDF])
        .bytes();
    let want = Begin {
        final_lsn: 0x1_6B37_4D48,
        commit_time: 767_000_000_123_456,
        xid: 735,
    };
    assert_eq!(decode(&v), Ok(Message::Begin(want)));
}

#[test]
fn commit_hand_vector() {
    let v = Enc::new().u8(b'C').u8(0).u64(10).u64(20).i64(-5).bytes();
    let want = Commit {
        flags: 0,
        commit_lsn: 10,
        end_lsn: 20,
        commit_time: -5,
    };
    assert_eq!(decode(&v), Ok(Message::Commit(want)));
}

#[test]
fn origin_hand_vector() {
    let v = Enc::new().u8(b'O').u64(99).cstr("upstream").bytes();
    let want = Origin {
        commit_lsn: 99,
        name: "upstream".into(),
    };
    assert_eq!(decode(&v), Ok(Message::Origin(want)));
}

#[test]
fn relation_users_hand_vector() {
    let mut v = vec![b'R', 0, 0, 0x40, 0x01];
    v.extend_from_slice(b"public\0users\0d\0\x02");
    v.extend_from_slice(b"\x01id\0\0\0\0\x14\xff\xff\xff\xff");
    v.extend_from_slice(b"\x00email\0\0\0\0\x19\xff\xff\xff\xff");
    assert_eq!(dec(&v), Ok(Message::Relation(users_relation())));
    assert_eq!(encode(&Message::Relation(users_relation())), v);
}

#[test]
fn relation_every_replica_identity_and_flag_bits() {
    for (b, ri) in [
        (b'd', ReplicaIdentity::Default),
        (b'n', ReplicaIdentity::Nothing),
        (b'f', ReplicaIdentity::Full),
        (b'i', ReplicaIdentity::Index),
    ] {
        assert_eq!(ReplicaIdentity::from_byte(b), Some(ri));
        assert_eq!(ri.as_byte(), b);
        let v = Enc::new()
            .u8(b'R')
            .u32(5)
            .cstr("s")
            .cstr("t")
            .u8(b)
            .i16(1)
            .u8(0xff) // unknown flag bits are ignored, bit 0 is the key flag
            .cstr("c")
            .u32(23)
            .i32(4)
            .bytes();
        let Ok(Message::Relation(r)) = decode(&v) else {
            panic!("relation did not decode")
        };
        assert_eq!(r.replica_identity, ri);
        assert!(r.columns[0].is_key);
        assert_eq!(r.columns[0].type_modifier, 4);
    }
}

#[test]
fn type_hand_vector() {
    let v = Enc::new().u8(b'Y').u32(16_400).cstr("public").cstr("mood");
    let want = TypeMsg {
        oid: 16_400,
        namespace: "public".into(),
        name: "mood".into(),
    };
    assert_eq!(decode(&v.bytes()), Ok(Message::Type(want)));
}

#[test]
fn insert_every_tuple_kind_hand_vector() {
    let mut v = vec![b'I', 0, 0, 0x40, 0x01, b'N', 0, 4];
    v.extend_from_slice(b"t\0\0\0\x0242");
    v.extend_from_slice(b"n");
    v.extend_from_slice(b"u");
    v.extend_from_slice(b"b\0\0\0\x03\x00\x01\xff");
    let want = Insert {
        relation_oid: 16_385,
        new: tup(vec![
            text("42"),
            TupleValue::Null,
            TupleValue::UnchangedToast,
            TupleValue::Binary(Bytes::from_static(&[0, 1, 0xff])),
        ]),
    };
    assert_eq!(dec(&v), Ok(Message::Insert(want)));
}

#[test]
fn update_old_full_with_unchanged_toast_hand_vector() {
    let mut v = vec![b'U', 0, 0, 0x40, 0x01];
    v.extend_from_slice(b"O\0\x02t\0\0\0\x017u");
    v.extend_from_slice(b"N\0\x02t\0\0\0\x017t\0\0\0\x03x@y");
    let want = Update {
        relation_oid: 16_385,
        old: Some(OldTuple::Full(tup(vec![text("7"), TupleValue::UnchangedToast]))),
        new: tup(vec![text("7"), text("x@y")]),
    };
    assert_eq!(dec(&v), Ok(Message::Update(want)));
}

#[test]
fn delete_and_truncate_hand_vectors() {
    let v = b"D\0\0\0\x05K\0\x01t\0\0\0\x019";
    let want = Delete {
        relation_oid: 5,
        old: OldTuple::Key(tup(vec![text("9")])),
    };
    assert_eq!(dec(v), Ok(Message::Delete(want)));

    for (options, cascade, restart) in [(0, false, false), (1, true, false), (2, false, true)] {
        let v = Enc::new().u8(b'T').i32(2).u8(options).u32(1).u32(2);
        let want = Truncate {
            cascade,
            restart_identity: restart,
            relation_oids: vec![1, 2],
        };
        assert_eq!(decode(&v.bytes()), Ok(Message::Truncate(want)));
    }
    let v = Enc::new().u8(b'T').i32(0).u8(3).bytes();
    let Ok(Message::Truncate(t)) = decode(&v) else {
        panic!("empty truncate")
    };
    assert!(t.cascade && t.restart_identity && t.relation_oids.is_empty());
}

#[test]
fn logical_message_hand_vector() {
    let v = b"M\x01\0\0\0\0\0\0\0\x10pfx\0\0\0\0\x03a\0b";
    let want = LogicalMessage {
        transactional: true,
        lsn: 16,
        prefix: "pfx".into(),
        content: Bytes::from_static(b"a\0b"),
    };
    assert_eq!(dec(v), Ok(Message::Message(want)));
}

#[test]
fn values_are_zero_copy_slices_of_input() {
    let input = Enc::new()
        .u8(b'I')
        .u32(1)
        .u8(b'N')
        .i16(2)
        .u8(b't')
        .lenbytes(b"hello")
        .u8(b'b')
        .lenbytes(b"\x01\x02")
        .bytes();
    let range = input.as_ptr() as usize..input.as_ptr() as usize + input.len();
    let Ok(Message::Insert(ins)) = decode(&input) else {
        panic!("insert did not decode")
    };
    for v in &ins.new.0 {
        let b = v.as_bytes().expect("text or binary");
        assert!(range.contains(&(b.as_ptr() as usize)), "value was copied");
    }
    let m = Enc::new().u8(b'M').u8(0).u64(1).cstr("p").lenbytes(b"xyz");
    let input = m.bytes();
    let range = input.as_ptr() as usize..input.as_ptr() as usize + input.len();
    let Ok(Message::Message(lm)) = decode(&input) else {
        panic!("message did not decode")
    };
    assert!(range.contains(&(lm.content.as_ptr() as usize)));
}

#[test]
fn every_sample_round_trips() {
    for (label, msg) in samples() {
        let bytes = encode(&msg);
        assert_eq!(bytes.first(), Some(&msg.tag()), "{label}");
        let got = decode(&bytes).unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(got, msg, "{label}");
        assert_eq!(encode(&got), bytes, "{label}");
    }
}

#[test]
fn helpers() {
    let old = OldTuple::Full(tup(vec![TupleValue::Null]));
    assert_eq!(old.marker(), b'O');
    assert_eq!(old.tuple().0, vec![TupleValue::Null]);
    assert_eq!(TupleValue::UnchangedToast.as_bytes(), None);
}
