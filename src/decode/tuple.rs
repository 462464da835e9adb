//! TupleData: the row images carried by Insert, Update and Delete.

use bytes::Bytes;

use super::error::DecodeError;
use super::reader::Reader;

/// TupleData column kind: SQL NULL.
pub const TUPLE_NULL: u8 = b'n';
/// TupleData column kind: unchanged TOASTed value (not sent).
pub const TUPLE_UNCHANGED_TOAST: u8 = b'u';
/// TupleData column kind: text-format value.
pub const TUPLE_TEXT: u8 = b't';
/// TupleData column kind: binary-format value.
pub const TUPLE_BINARY: u8 = b'b';

/// Tuple marker: new row follows.
pub const TUPLE_NEW: u8 = b'N';
/// Tuple marker: old replica-identity key follows.
pub const TUPLE_KEY: u8 = b'K';
/// Tuple marker: old full row follows (`REPLICA IDENTITY FULL`).
pub const TUPLE_OLD: u8 = b'O';

/// A row image: one value per published column, in [`super::Relation`] order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct TupleData(pub Vec<TupleValue>);

/// One column value of a [`TupleData`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TupleValue {
    /// `n`: SQL NULL.
    Null,
    /// `u`: unchanged TOASTed value; the actual value is not sent.
    UnchangedToast,
    /// `t`: value in text format (zero-copy slice of the input).
    Text(Bytes),
    /// `b`: value in binary format (zero-copy slice of the input).
    Binary(Bytes),
}

impl TupleValue {
    /// The raw value bytes of a `Text` or `Binary` value.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            TupleValue::Text(b) | TupleValue::Binary(b) => Some(b),
            TupleValue::Null | TupleValue::UnchangedToast => None,
        }
    }
}

/// The old row image of an Update or Delete.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OldTuple {
    /// `K`: replica identity key columns only (others are null).
    Key(TupleData),
    /// `O`: the full old row (`REPLICA IDENTITY FULL`).
    Full(TupleData),
}

impl OldTuple {
    /// The row image, whichever kind it is.
    pub fn tuple(&self) -> &TupleData {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }

    /// The wire marker (`K` or `O`).
    pub fn marker(&self) -> u8 {
        match self {
            OldTuple::Key(_) => TUPLE_KEY,
            OldTuple::Full(_) => TUPLE_OLD,
        }
    }
}

/// Field names used in errors while reading one TupleData.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TupleWhat {
    ncols: &'static str,
    kind: &'static str,
    len: &'static str,
    value: &'static str,
}

macro_rules! tuple_what {
    ($name:ident, $prefix:literal) => {
        pub(crate) const $name: TupleWhat = TupleWhat {
            ncols: concat!($prefix, " column count"),
            kind: concat!($prefix, " column kind"),
            len: concat!($prefix, " column value length"),
            value: concat!($prefix, " column value"),
        };
    };
}

tuple_what!(INSERT_NEW, "Insert (I) new tuple");
tuple_what!(UPDATE_KEY, "Update (U) old key tuple");
tuple_what!(UPDATE_OLD, "Update (U) old tuple");
tuple_what!(UPDATE_NEW, "Update (U) new tuple");
tuple_what!(DELETE_KEY, "Delete (D) old key tuple");
tuple_what!(DELETE_OLD, "Delete (D) old tuple");

/// Reads `ncols i16` then one kind byte (plus `i32` length and value for
/// `t`/`b`) per column.
pub(crate) fn read_tuple(r: &mut Reader<'_>, what: TupleWhat) -> Result<TupleData, DecodeError> {
    let ncols = r.count_i16(what.ncols)?;
    // Every column takes at least its kind byte: never reserve more than
    // the input could hold.
    let mut values = Vec::with_capacity(r.capacity_for(ncols, 1));
    for _ in 0..ncols {
        let kind = r.u8(what.kind)?;
        let value = match kind {
            TUPLE_NULL => TupleValue::Null,
            TUPLE_UNCHANGED_TOAST => TupleValue::UnchangedToast,
            TUPLE_TEXT => {
                let len = r.len_i32(what.len)?;
                TupleValue::Text(r.bytes(len, what.value)?)
            }
            TUPLE_BINARY => {
                let len = r.len_i32(what.len)?;
                TupleValue::Binary(r.bytes(len, what.value)?)
            }
            other => return Err(DecodeError::UnknownTupleKind(other)),
        };
        values.push(value);
    }
    Ok(TupleData(values))
}

/// Reads a `K`/`O` marker followed by a TupleData.
pub(crate) fn read_old_tuple(
    r: &mut Reader<'_>,
    marker: u8,
    key: TupleWhat,
    old: TupleWhat,
) -> Result<OldTuple, DecodeError> {
    match marker {
        TUPLE_KEY => Ok(OldTuple::Key(read_tuple(r, key)?)),
        TUPLE_OLD => Ok(OldTuple::Full(read_tuple(r, old)?)),
        other => Err(DecodeError::UnknownOldTupleKind(other)),
    }
}
