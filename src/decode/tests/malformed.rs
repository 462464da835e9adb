//! Malformed input: truncation, bad lengths, unknown tags and kinds,
//! missing NUL, invalid UTF-8, trailing bytes, huge declared counts.

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
use super::{dec, samples};

#[test]
fn every_truncation_prefix_is_an_error() {
    for (label, msg) in samples() {
        let full = encode(&msg);
        for n in 0..full.len() {
            let err = decode(&full.slice(..n)).expect_err(label);
            assert!(
                matches!(
                    err,
                    DecodeError::Empty | DecodeError::Truncated { .. } | DecodeError::MissingNul { .. }
                ),
                "{label} prefix {n}: {err:?}"
            );
        }
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    for (label, msg) in samples() {
        for extra in [&b"\0"[..], b"xyz"] {
            let mut v = encode(&msg).to_vec();
            v.extend_from_slice(extra);
            let want = DecodeError::TrailingBytes {
                tag: msg.tag(),
                count: extra.len(),
            };
            assert_eq!(dec(&v), Err(want), "{label}");
        }
    }
}

#[test]
fn empty_and_unknown_tags() {
    assert_eq!(decode(&Bytes::new()), Err(DecodeError::Empty));
    for tag in *b"SEcAbPKrpwk\0\xffa" {
        let err = dec(&[tag, 0, 0, 0, 0]).expect_err("unknown tag");
        assert_eq!(err, DecodeError::UnknownTag(tag));
        let text = err.to_string();
        assert!(text.contains("protocol version 2"), "{text}");
    }
    let text = DecodeError::UnknownTag(b'S').to_string();
    assert!(text.contains("0x53 ('S')"), "{text}");
}

#[test]
fn unknown_tuple_kind() {
    let v = Enc::new().u8(b'I').u32(1).u8(b'N').i16(2).u8(b'n').u8(b'x');
    assert_eq!(decode(&v.bytes()), Err(DecodeError::UnknownTupleKind(b'x')));
    let v = b"U\0\0\0\x01K\0\x01N";
    assert_eq!(dec(v), Err(DecodeError::UnknownTupleKind(b'N')));
}

#[test]
fn unknown_replica_identity() {
    let v = Enc::new().u8(b'R').u32(1).cstr("s").cstr("t").u8(b'x').i16(0);
    assert_eq!(decode(&v.bytes()), Err(DecodeError::UnknownReplicaIdentity(b'x')));
}

#[test]
fn unknown_or_misplaced_tuple_markers() {
    // Update: first marker must be K, O or N.
    assert_eq!(dec(b"U\0\0\0\x01X\0\0"), Err(DecodeError::UnknownOldTupleKind(b'X')));
    // Delete: N is not an old tuple.
    assert_eq!(dec(b"D\0\0\0\x01N\0\0"), Err(DecodeError::UnknownOldTupleKind(b'N')));
    // Insert: must be N.
    let err = dec(b"I\0\0\0\x01K\0\0").expect_err("insert with K");
    assert_eq!(
        err,
        DecodeError::UnexpectedTupleMarker {
            tag: b'I',
            expected: b'N',
            found: b'K'
        }
    );
    assert!(err.to_string().contains("Insert (I)"), "{err}");
    // Update: after the old tuple, N must follow.
    assert_eq!(
        dec(b"U\0\0\0\x01K\0\0O\0\0"),
        Err(DecodeError::UnexpectedTupleMarker {
            tag: b'U',
            expected: b'N',
            found: b'O'
        })
    );
}

#[test]
fn negative_lengths() {
    let neg = |v: Enc, what: &'static str, len: i32| {
        assert_eq!(decode(&v.bytes()), Err(DecodeError::NegativeLength { what, len }));
    };
    neg(
        Enc::new().u8(b'I').u32(1).u8(b'N').i16(-1),
        "Insert (I) new tuple column count",
        -1,
    );
    neg(
        Enc::new().u8(b'I').u32(1).u8(b'N').i16(1).u8(b't').i32(-1),
        "Insert (I) new tuple column value length",
        -1,
    );
    neg(
        Enc::new().u8(b'U').u32(1).u8(b'O').i16(1).u8(b'b').i32(i32::MIN),
        "Update (U) old tuple column value length",
        i32::MIN,
    );
    neg(
        Enc::new().u8(b'D').u32(1).u8(b'K').i16(i16::MIN),
        "Delete (D) old key tuple column count",
        i32::from(i16::MIN),
    );
    neg(
        Enc::new().u8(b'R').u32(1).cstr("s").cstr("t").u8(b'd').i16(-2),
        "Relation (R) column count",
        -2,
    );
    neg(Enc::new().u8(b'T').i32(-1).u8(0), "Truncate (T) relation count", -1);
    neg(
        Enc::new().u8(b'M').u8(1).u64(1).cstr("p").i32(-5),
        "logical Message (M) content length",
        -5,
    );
}

#[test]
fn overlong_lengths_are_truncated_errors() {
    let v = Enc::new().u8(b'I').u32(1).u8(b'N').i16(1).u8(b't').i32(100);
    assert_eq!(
        decode(&v.raw(b"abc").bytes()),
        Err(DecodeError::Truncated {
            what: "Insert (I) new tuple column value",
            needed: 100,
            remaining: 3
        })
    );
    let v = Enc::new().u8(b'M').u8(1).u64(1).cstr("p").i32(i32::MAX);
    assert!(matches!(
        decode(&v.bytes()),
        Err(DecodeError::Truncated { needed, remaining: 0, .. }) if needed == i32::MAX as usize
    ));
    // A length that is too short leaves bytes over: trailing, not accepted.
    let v = Enc::new().u8(b'I').u32(1).u8(b'N').i16(1).u8(b't').i32(1);
    assert_eq!(
        decode(&v.raw(b"ab").bytes()),
        Err(DecodeError::TrailingBytes { tag: b'I', count: 1 })
    );
}

#[test]
fn missing_nul() {
    let cases: [(Enc, &str); 4] = [
        (Enc::new().u8(b'O').u64(1).raw(b"name"), "Origin (O) name"),
        (
            Enc::new().u8(b'R').u32(1).cstr("public").raw(b"users"),
            "Relation (R) name",
        ),
        (
            Enc::new()
                .u8(b'R')
                .u32(1)
                .cstr("s")
                .cstr("t")
                .u8(b'd')
                .i16(1)
                .u8(1)
                .raw(b"id"),
            "Relation (R) column name",
        ),
        (
            Enc::new().u8(b'M').u8(1).u64(1).raw(b"prefix"),
            "logical Message (M) prefix",
        ),
    ];
    for (v, what) in cases {
        let err = decode(&v.bytes()).expect_err(what);
        assert_eq!(err, DecodeError::MissingNul { what });
        assert!(err.to_string().contains(what));
    }
}

#[test]
fn invalid_utf8() {
    let cases: [(Enc, &str); 3] = [
        (
            Enc::new().u8(b'R').u32(1).raw(b"\xff\xfe\0").cstr("t"),
            "Relation (R) namespace",
        ),
        (Enc::new().u8(b'Y').u32(1).cstr("s").raw(b"caf\xc3\0"), "Type (Y) name"),
        (
            Enc::new().u8(b'M').u8(0).u64(1).raw(b"\x80\0").i32(0),
            "logical Message (M) prefix",
        ),
    ];
    for (v, what) in cases {
        assert_eq!(decode(&v.bytes()), Err(DecodeError::InvalidUtf8 { what }), "{what}");
    }
    // Valid multi-byte UTF-8 is fine.
    let v = Enc::new().u8(b'Y').u32(1).cstr("sch").cstr("café_ü");
    assert!(decode(&v.bytes()).is_ok());
}

#[test]
fn huge_declared_counts_with_few_bytes() {
    let v = Enc::new().u8(b'I').u32(1).u8(b'N').i16(i16::MAX).u8(b'n');
    assert!(matches!(
        decode(&v.bytes()),
        Err(DecodeError::Truncated { remaining: 0, .. })
    ));
    let v = Enc::new().u8(b'R').u32(1).cstr("s").cstr("t").u8(b'd').i16(i16::MAX);
    assert!(matches!(
        decode(&v.bytes()),
        Err(DecodeError::Truncated { remaining: 0, .. })
    ));
    let v = Enc::new().u8(b'T').i32(i32::MAX).u8(0).u32(1);
    assert_eq!(
        decode(&v.bytes()),
        Err(DecodeError::Truncated {
            what: "Truncate (T) relation oids",
            needed: (i32::MAX as usize).saturating_mul(4),
            remaining: 4
        })
    );
}

#[test]
fn reservations_are_bounded_by_remaining_input() {
    let input = Bytes::from_static(&[0; 25]);
    let mut r = Reader::new(&input);
    assert_eq!(r.capacity_for(usize::MAX, 1), 25);
    assert_eq!(r.capacity_for(usize::MAX, 10), 2);
    assert_eq!(r.capacity_for(3, 4), 3);
    assert_eq!(r.capacity_for(5, 0), 5);
    r.bytes(25, "all").expect("25 bytes");
    assert_eq!(r.capacity_for(i16::MAX as usize, 1), 0);
    assert!(r.is_empty());
}

#[test]
fn error_messages_name_message_and_field() {
    let err = dec(b"B\0\0\0\0").expect_err("short begin");
    let text = err.to_string();
    assert!(text.contains("Begin (B) final_lsn"), "{text}");
    assert!(text.contains("needs 8"), "{text}");
    let err = dec(b"C\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x01").expect_err("trail");
    assert_eq!(
        err.to_string(),
        "1 trailing byte(s) after a complete Commit (C) message"
    );
    let text = DecodeError::UnknownTupleKind(0).to_string();
    assert!(text.contains("0x00") && text.contains("'u'"), "{text}");
}
