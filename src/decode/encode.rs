//! Test-only pgoutput encoder: the inverse of [`super::decode`], plus a raw
//! byte builder for hand-made (and deliberately malformed) vectors.

#![allow(clippy::expect_used, clippy::panic, clippy::arithmetic_side_effects)]

use bytes::Bytes;

use super::{
    Message, OldTuple, TUPLE_BINARY, TUPLE_NEW, TUPLE_NULL, TUPLE_TEXT, TUPLE_UNCHANGED_TOAST, TupleData, TupleValue,
};

/// Big-endian byte builder.
#[derive(Debug, Default, Clone)]
pub(crate) struct Enc(pub(crate) Vec<u8>);

impl Enc {
    pub(crate) fn new() -> Self {
        Enc(Vec::new())
    }
    pub(crate) fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    pub(crate) fn i16(mut self, v: i16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn i32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn i64(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// Raw bytes, no length, no terminator.
    pub(crate) fn raw(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
    /// NUL-terminated string.
    pub(crate) fn cstr(self, s: &str) -> Self {
        assert!(!s.contains('\0'), "test string contains NUL");
        self.raw(s.as_bytes()).u8(0)
    }
    /// Int32 length followed by the bytes.
    pub(crate) fn lenbytes(self, v: &[u8]) -> Self {
        let len = i32::try_from(v.len()).expect("test value too long");
        self.i32(len).raw(v)
    }
    pub(crate) fn tuple(mut self, t: &TupleData) -> Self {
        let n = i16::try_from(t.0.len()).expect("too many test columns");
        self = self.i16(n);
        for v in &t.0 {
            self = match v {
                TupleValue::Null => self.u8(TUPLE_NULL),
                TupleValue::UnchangedToast => self.u8(TUPLE_UNCHANGED_TOAST),
                TupleValue::Text(b) => self.u8(TUPLE_TEXT).lenbytes(b),
                TupleValue::Binary(b) => self.u8(TUPLE_BINARY).lenbytes(b),
            };
        }
        self
    }
    pub(crate) fn old_tuple(self, t: &OldTuple) -> Self {
        self.u8(t.marker()).tuple(t.tuple())
    }
    pub(crate) fn bytes(self) -> Bytes {
        Bytes::from(self.0)
    }
}

/// Encodes a message exactly as pgoutput protocol version 1 would.
pub(crate) fn encode(msg: &Message) -> Bytes {
    let e = Enc::new().u8(msg.tag());
    let e = match msg {
        Message::Begin(m) => e.u64(m.final_lsn).i64(m.commit_time).u32(m.xid),
        Message::Commit(m) => e.u8(m.flags).u64(m.commit_lsn).u64(m.end_lsn).i64(m.commit_time),
        Message::Origin(m) => e.u64(m.commit_lsn).cstr(&m.name),
        Message::Relation(m) => {
            let n = i16::try_from(m.columns.len()).expect("too many test columns");
            let mut e = e
                .u32(m.oid)
                .cstr(&m.namespace)
                .cstr(&m.name)
                .u8(m.replica_identity.as_byte())
                .i16(n);
            for c in &m.columns {
                e = e
                    .u8(u8::from(c.is_key))
                    .cstr(&c.name)
                    .u32(c.type_oid)
                    .i32(c.type_modifier);
            }
            e
        }
        Message::Type(m) => e.u32(m.oid).cstr(&m.namespace).cstr(&m.name),
        Message::Insert(m) => e.u32(m.relation_oid).u8(TUPLE_NEW).tuple(&m.new),
        Message::Update(m) => {
            let mut e = e.u32(m.relation_oid);
            if let Some(old) = &m.old {
                e = e.old_tuple(old);
            }
            e.u8(TUPLE_NEW).tuple(&m.new)
        }
        Message::Delete(m) => e.u32(m.relation_oid).old_tuple(&m.old),
        Message::Truncate(m) => {
            let n = i32::try_from(m.relation_oids.len()).expect("too many test oids");
            let options = u8::from(m.cascade) | (u8::from(m.restart_identity) << 1);
            let mut e = e.i32(n).u8(options);
            for oid in &m.relation_oids {
                e = e.u32(*oid);
            }
            e
        }
        Message::Message(m) => e
            .u8(u8::from(m.transactional))
            .u64(m.lsn)
            .cstr(&m.prefix)
            .lenbytes(&m.content),
    };
    e.bytes()
}
