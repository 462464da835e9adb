//! Per-message body decoders (everything after the tag byte).

use super::error::DecodeError;
use super::message::{
    Begin, COLUMN_KEY, Column, Commit, Delete, INSERT, Insert, LogicalMessage, MESSAGE_TRANSACTIONAL, Origin, Relation,
    ReplicaIdentity, TRUNCATE_CASCADE, TRUNCATE_RESTART_IDENTITY, Truncate, TypeMsg, UPDATE, Update,
};
use super::reader::Reader;
use super::tuple::{self, TUPLE_KEY, TUPLE_NEW, TUPLE_OLD, read_old_tuple, read_tuple};

/// Smallest encoding of one Relation column: flags, empty name (NUL),
/// type oid, typmod.
const MIN_COLUMN_LEN: usize = 1 + 1 + 4 + 4;

/// Size of one OID in a Truncate message.
const OID_LEN: usize = 4;

pub(crate) fn begin(r: &mut Reader<'_>) -> Result<Begin, DecodeError> {
    Ok(Begin {
        final_lsn: r.u64("Begin (B) final_lsn")?,
        commit_time: r.i64("Begin (B) commit_time")?,
        xid: r.u32("Begin (B) xid")?,
    })
}

pub(crate) fn commit(r: &mut Reader<'_>) -> Result<Commit, DecodeError> {
    Ok(Commit {
        flags: r.u8("Commit (C) flags")?,
        commit_lsn: r.u64("Commit (C) commit_lsn")?,
        end_lsn: r.u64("Commit (C) end_lsn")?,
        commit_time: r.i64("Commit (C) commit_time")?,
    })
}

pub(crate) fn origin(r: &mut Reader<'_>) -> Result<Origin, DecodeError> {
    Ok(Origin {
        commit_lsn: r.u64("Origin (O) commit_lsn")?,
        name: r.cstr("Origin (O) name")?,
    })
}

pub(crate) fn relation(r: &mut Reader<'_>) -> Result<Relation, DecodeError> {
    let oid = r.u32("Relation (R) oid")?;
    let namespace = r.cstr("Relation (R) namespace")?;
    let name = r.cstr("Relation (R) name")?;
    let ri = r.u8("Relation (R) replica identity")?;
    let replica_identity = ReplicaIdentity::from_byte(ri).ok_or(DecodeError::UnknownReplicaIdentity(ri))?;
    let ncols = r.count_i16("Relation (R) column count")?;
    let mut columns = Vec::with_capacity(r.capacity_for(ncols, MIN_COLUMN_LEN));
    for _ in 0..ncols {
        let flags = r.u8("Relation (R) column flags")?;
        columns.push(Column {
            is_key: flags & COLUMN_KEY != 0,
            name: r.cstr("Relation (R) column name")?,
            type_oid: r.u32("Relation (R) column type oid")?,
            type_modifier: r.i32("Relation (R) column type modifier")?,
        });
    }
    Ok(Relation {
        oid,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

pub(crate) fn type_msg(r: &mut Reader<'_>) -> Result<TypeMsg, DecodeError> {
    Ok(TypeMsg {
        oid: r.u32("Type (Y) oid")?,
        namespace: r.cstr("Type (Y) namespace")?,
        name: r.cstr("Type (Y) name")?,
    })
}

/// Reads a marker byte that must be `N`.
fn expect_new_marker(r: &mut Reader<'_>, tag: u8, what: &'static str) -> Result<(), DecodeError> {
    match r.u8(what)? {
        TUPLE_NEW => Ok(()),
        found => Err(DecodeError::UnexpectedTupleMarker {
            tag,
            expected: TUPLE_NEW,
            found,
        }),
    }
}

pub(crate) fn insert(r: &mut Reader<'_>) -> Result<Insert, DecodeError> {
    let relation_oid = r.u32("Insert (I) relation oid")?;
    expect_new_marker(r, INSERT, "Insert (I) new tuple marker")?;
    Ok(Insert {
        relation_oid,
        new: read_tuple(r, tuple::INSERT_NEW)?,
    })
}

pub(crate) fn update(r: &mut Reader<'_>) -> Result<Update, DecodeError> {
    let relation_oid = r.u32("Update (U) relation oid")?;
    let marker = r.u8("Update (U) tuple marker")?;
    let old = match marker {
        TUPLE_NEW => None,
        TUPLE_KEY | TUPLE_OLD => {
            let old = read_old_tuple(r, marker, tuple::UPDATE_KEY, tuple::UPDATE_OLD)?;
            expect_new_marker(r, UPDATE, "Update (U) new tuple marker")?;
            Some(old)
        }
        other => return Err(DecodeError::UnknownOldTupleKind(other)),
    };
    Ok(Update {
        relation_oid,
        old,
        new: read_tuple(r, tuple::UPDATE_NEW)?,
    })
}

pub(crate) fn delete(r: &mut Reader<'_>) -> Result<Delete, DecodeError> {
    let relation_oid = r.u32("Delete (D) relation oid")?;
    let marker = r.u8("Delete (D) old tuple marker")?;
    Ok(Delete {
        relation_oid,
        old: read_old_tuple(r, marker, tuple::DELETE_KEY, tuple::DELETE_OLD)?,
    })
}

pub(crate) fn truncate(r: &mut Reader<'_>) -> Result<Truncate, DecodeError> {
    const WHAT: &str = "Truncate (T) relation oids";
    let nrels = r.len_i32("Truncate (T) relation count")?;
    let options = r.u8("Truncate (T) options")?;
    // Check the whole oid array up front so the allocation below is bounded
    // by the input.
    let needed = nrels.saturating_mul(OID_LEN);
    if needed > r.remaining() {
        return Err(DecodeError::Truncated {
            what: WHAT,
            needed,
            remaining: r.remaining(),
        });
    }
    let mut relation_oids = Vec::with_capacity(r.capacity_for(nrels, OID_LEN));
    for _ in 0..nrels {
        relation_oids.push(r.u32(WHAT)?);
    }
    Ok(Truncate {
        cascade: options & TRUNCATE_CASCADE != 0,
        restart_identity: options & TRUNCATE_RESTART_IDENTITY != 0,
        relation_oids,
    })
}

pub(crate) fn logical_message(r: &mut Reader<'_>) -> Result<LogicalMessage, DecodeError> {
    let flags = r.u8("logical Message (M) flags")?;
    let lsn = r.u64("logical Message (M) lsn")?;
    let prefix = r.cstr("logical Message (M) prefix")?;
    let len = r.len_i32("logical Message (M) content length")?;
    let content = r.bytes(len, "logical Message (M) content")?;
    Ok(LogicalMessage {
        transactional: flags & MESSAGE_TRANSACTIONAL != 0,
        lsn,
        prefix,
        content,
    })
}
