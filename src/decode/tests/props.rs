//! Property tests: no input panics, and valid messages round trip.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;

use super::super::encode::encode;
use super::super::*;

/// UTF-8 strings without NUL (pgoutput strings are C strings).
fn c_string() -> impl Strategy<Value = String> {
    any::<String>().prop_map(|s| s.replace('\0', ""))
}

fn payload() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn tuple_value() -> impl Strategy<Value = TupleValue> {
    prop_oneof![
        Just(TupleValue::Null),
        Just(TupleValue::UnchangedToast),
        payload().prop_map(TupleValue::Text),
        payload().prop_map(TupleValue::Binary),
    ]
}

fn tuple_data() -> impl Strategy<Value = TupleData> {
    vec(tuple_value(), 0..6).prop_map(TupleData)
}

fn old_tuple() -> impl Strategy<Value = OldTuple> {
    prop_oneof![
        tuple_data().prop_map(OldTuple::Key),
        tuple_data().prop_map(OldTuple::Full),
    ]
}

fn replica_identity() -> impl Strategy<Value = ReplicaIdentity> {
    prop_oneof![
        Just(ReplicaIdentity::Default),
        Just(ReplicaIdentity::Nothing),
        Just(ReplicaIdentity::Full),
        Just(ReplicaIdentity::Index),
    ]
}

fn column() -> impl Strategy<Value = Column> {
    (any::<bool>(), c_string(), any::<u32>(), any::<i32>()).prop_map(|(is_key, name, type_oid, type_modifier)| Column {
        is_key,
        name,
        type_oid,
        type_modifier,
    })
}

/// Any valid protocol-v1 message.
pub(crate) fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u64>(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, commit_time, xid)| {
            Message::Begin(Begin {
                final_lsn,
                commit_time,
                xid,
            })
        }),
        (any::<u8>(), any::<u64>(), any::<u64>(), any::<i64>()).prop_map(
            |(flags, commit_lsn, end_lsn, commit_time)| Message::Commit(Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_time,
            })
        ),
        (any::<u64>(), c_string()).prop_map(|(commit_lsn, name)| Message::Origin(Origin { commit_lsn, name })),
        (
            any::<u32>(),
            c_string(),
            c_string(),
            replica_identity(),
            vec(column(), 0..6)
        )
            .prop_map(|(oid, namespace, name, replica_identity, columns)| {
                Message::Relation(Relation {
                    oid,
                    namespace,
                    name,
                    replica_identity,
                    columns,
                })
            }),
        (any::<u32>(), c_string(), c_string())
            .prop_map(|(oid, namespace, name)| { Message::Type(TypeMsg { oid, namespace, name }) }),
        (any::<u32>(), tuple_data()).prop_map(|(relation_oid, new)| Message::Insert(Insert { relation_oid, new })),
        (any::<u32>(), proptest::option::of(old_tuple()), tuple_data())
            .prop_map(|(relation_oid, old, new)| Message::Update(Update { relation_oid, old, new })),
        (any::<u32>(), old_tuple()).prop_map(|(relation_oid, old)| Message::Delete(Delete { relation_oid, old })),
        (any::<bool>(), any::<bool>(), vec(any::<u32>(), 0..8)).prop_map(
            |(cascade, restart_identity, relation_oids)| Message::Truncate(Truncate {
                cascade,
                restart_identity,
                relation_oids,
            })
        ),
        (any::<bool>(), any::<u64>(), c_string(), payload()).prop_map(|(transactional, lsn, prefix, content)| {
            Message::Message(LogicalMessage {
                transactional,
                lsn,
                prefix,
                content,
            })
        }),
    ]
}

/// A byte-level edit of a valid vector.
#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Set { at: usize, value: u8 },
    Insert { at: usize, value: u8 },
    Delete { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::Set { at, value }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::Insert { at, value }),
        any::<usize>().prop_map(|at| Mutation::Delete { at }),
    ]
}

fn apply(v: &mut Vec<u8>, m: &Mutation) {
    let len = v.len();
    match *m {
        Mutation::Flip { at, bit } if len > 0 => v[at % len] ^= 1 << bit,
        Mutation::Set { at, value } if len > 0 => v[at % len] = value,
        Mutation::Insert { at, value } => v.insert(at % (len + 1), value),
        Mutation::Delete { at } if len > 0 => {
            v.remove(at % len);
        }
        _ => {}
    }
}

/// Whatever decodes must re-encode to something that decodes to the same
/// message (decoding normalises ignored flag bits, nothing else).
fn check_consistent(input: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(msg) = decode(&Bytes::copy_from_slice(input)) {
        let again = encode(&msg);
        prop_assert_eq!(decode(&again), Ok(msg));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(input in vec(any::<u8>(), 0..256)) {
        check_consistent(&input)?;
    }

    #[test]
    fn arbitrary_bodies_after_valid_tags_never_panic(
        tag in proptest::sample::select(b"BCORYIUDTM".to_vec()),
        body in vec(any::<u8>(), 0..128),
    ) {
        let mut input = vec![tag];
        input.extend_from_slice(&body);
        check_consistent(&input)?;
    }

    #[test]
    fn valid_messages_round_trip(msg in message()) {
        let bytes = encode(&msg);
        let got = decode(&bytes);
        prop_assert_eq!(got.as_ref(), Ok(&msg));
        if let Ok(got) = got {
            prop_assert_eq!(encode(&got), bytes);
        }
    }

    #[test]
    fn strict_prefixes_and_extensions_are_errors(
        msg in message(),
        extra in vec(any::<u8>(), 1..8),
    ) {
        let bytes = encode(&msg);
        for n in 0..bytes.len() {
            prop_assert!(decode(&bytes.slice(..n)).is_err(), "prefix {} decoded", n);
        }
        let mut longer = bytes.to_vec();
        longer.extend_from_slice(&extra);
        prop_assert_eq!(
            decode(&Bytes::from(longer)),
            Err(DecodeError::TrailingBytes { tag: msg.tag(), count: extra.len() })
        );
    }

    #[test]
    fn mutated_valid_messages_never_panic(
        msg in message(),
        mutations in vec(mutation(), 1..6),
    ) {
        let mut v = encode(&msg).to_vec();
        for m in &mutations {
            apply(&mut v, m);
            check_consistent(&v)?;
        }
    }
}
