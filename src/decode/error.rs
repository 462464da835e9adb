//! The typed error returned for malformed pgoutput input.

use std::fmt;

/// Why a pgoutput payload could not be decoded.
///
/// Every `what` names the message (with its wire tag) and the field that was
/// being read, e.g. `"Relation (R) column name"`, so the `Display` text can be
/// logged as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload was zero bytes long (no message tag at all).
    #[error("empty pgoutput message (no tag byte)")]
    Empty,

    /// The input ended before a field was complete.
    #[error("truncated pgoutput message: {what} needs {needed} byte(s) but only {remaining} remain")]
    Truncated {
        /// Message and field being read.
        what: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes that were left in the input.
        remaining: usize,
    },

    /// The first byte is not a protocol-v1 message tag.
    #[error(
        "unknown pgoutput message tag {}; streaming (S/E/c/A) and two-phase (b/P/K/r/p) messages \
         of protocol version 2+ are not requested by this decoder (proto_version 1)",
        ByteDisplay(*.0)
    )]
    UnknownTag(u8),

    /// A TupleData column kind other than `n`, `u`, `t`, `b`.
    #[error(
        "unknown TupleData column kind {}; expected 'n' (null), 'u' (unchanged TOAST), \
         't' (text) or 'b' (binary)",
        ByteDisplay(*.0)
    )]
    UnknownTupleKind(u8),

    /// A Relation replica identity other than `d`, `n`, `f`, `i`.
    #[error(
        "unknown replica identity {} in Relation (R) message; expected 'd', 'n', 'f' or 'i'",
        ByteDisplay(*.0)
    )]
    UnknownReplicaIdentity(u8),

    /// An Update/Delete old-tuple marker other than `K` / `O` (or `N` for Update).
    #[error(
        "unknown old-tuple marker {} in Update (U) / Delete (D) message; expected 'K' \
         (replica identity key) or 'O' (full old row), or 'N' (new tuple) in an Update",
        ByteDisplay(*.0)
    )]
    UnknownOldTupleKind(u8),

    /// A tuple marker where a specific one was required (`N` before a new tuple).
    #[error(
        "{} message: expected tuple marker {}, found {}",
        tag_name(*tag),
        ByteDisplay(*expected),
        ByteDisplay(*found)
    )]
    UnexpectedTupleMarker {
        /// Tag of the message being decoded.
        tag: u8,
        /// Marker the format requires here.
        expected: u8,
        /// Byte actually found.
        found: u8,
    },

    /// A length or count field was negative.
    #[error("negative length {len} for {what}")]
    NegativeLength {
        /// Message and field being read.
        what: &'static str,
        /// The declared (negative) value.
        len: i32,
    },

    /// A string field ran to the end of the input without a NUL terminator.
    #[error("missing NUL terminator for string {what}")]
    MissingNul {
        /// Message and field being read.
        what: &'static str,
    },

    /// A string field is not valid UTF-8.
    #[error("invalid UTF-8 in string {what}")]
    InvalidUtf8 {
        /// Message and field being read.
        what: &'static str,
    },

    /// A complete message was followed by extra bytes.
    #[error("{count} trailing byte(s) after a complete {} message", tag_name(*tag))]
    TrailingBytes {
        /// Tag of the message that was decoded.
        tag: u8,
        /// How many bytes were left over.
        count: usize,
    },
}

/// Human name of a message tag, e.g. `"Insert (I)"`.
pub(crate) fn tag_name(tag: u8) -> &'static str {
    match tag {
        b'B' => "Begin (B)",
        b'C' => "Commit (C)",
        b'O' => "Origin (O)",
        b'R' => "Relation (R)",
        b'Y' => "Type (Y)",
        b'I' => "Insert (I)",
        b'U' => "Update (U)",
        b'D' => "Delete (D)",
        b'T' => "Truncate (T)",
        b'M' => "logical Message (M)",
        _ => "unknown",
    }
}

/// Shows a wire byte as `0x49 ('I')`, or just `0x00` when not printable.
struct ByteDisplay(u8);

impl fmt::Display for ByteDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "0x{:02x} ('{}')", self.0, char::from(self.0))
        } else {
            write!(f, "0x{:02x}", self.0)
        }
    }
}
