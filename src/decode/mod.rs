//! Pure decoder for `pgoutput`, PostgreSQL's built-in logical replication
//! output plugin.
//!
//! During logical replication (`START_REPLICATION SLOT ... LOGICAL ...
//! (proto_version '1', publication_names '...', messages 'true')`) the server
//! sends `XLogData` (`w`) copy-data frames; the payload of each frame is
//! exactly one pgoutput message: a one-byte tag (`B`egin, `C`ommit,
//! `O`rigin, `R`elation, t`Y`pe, `I`nsert, `U`pdate, `D`elete, `T`runcate,
//! logical `M`essage) followed by big-endian fields. [`decode`] turns one
//! such payload into a [`Message`]. The formats are described at
//! <https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html>.
//!
//! Only protocol version 1 (plus logical messages) is supported: the
//! streaming (`S`, `E`, `c`, `A`) and two-phase (`b`, `P`, `K`, `r`, `p`)
//! messages of version 2+ are never requested, and are rejected as
//! [`DecodeError::UnknownTag`].
//!
//! Guarantees, for any input bytes:
//! - never panics (no `unwrap`, no unchecked indexing, no unchecked casts);
//! - malformed input (truncated, negative lengths, unknown tags or kinds,
//!   missing NUL, invalid UTF-8, trailing bytes) is a typed [`DecodeError`];
//! - allocations are bounded by the input length: declared counts are never
//!   trusted beyond what the remaining bytes could hold;
//! - column values and logical-message content are zero-copy
//!   [`Bytes::slice`]s of the input.
//!
//! No I/O happens here; the caller owns the replication connection.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unreachable,
    clippy::todo,
    clippy::unimplemented,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::arithmetic_side_effects
)]

use bytes::Bytes;

mod error;
mod message;
mod parse;
mod reader;
mod tuple;

#[cfg(test)]
pub(crate) mod encode;
#[cfg(test)]
mod tests;

pub use error::DecodeError;
pub use message::{
    BEGIN, Begin, COLUMN_KEY, COMMIT, Column, Commit, DELETE, Delete, INSERT, Insert, LogicalMessage, MESSAGE,
    MESSAGE_TRANSACTIONAL, Message, ORIGIN, Origin, RELATION, Relation, ReplicaIdentity, TRUNCATE, TRUNCATE_CASCADE,
    TRUNCATE_RESTART_IDENTITY, TYPE, Truncate, TypeMsg, UPDATE, Update,
};
pub use reader::Reader;
pub use tuple::{
    OldTuple, TUPLE_BINARY, TUPLE_KEY, TUPLE_NEW, TUPLE_NULL, TUPLE_OLD, TUPLE_TEXT, TUPLE_UNCHANGED_TOAST, TupleData,
    TupleValue,
};

/// Decodes one pgoutput message (the payload of one `XLogData` frame).
///
/// The whole payload must be consumed: extra bytes after a complete message
/// are [`DecodeError::TrailingBytes`].
pub fn decode(data: &Bytes) -> Result<Message, DecodeError> {
    if data.is_empty() {
        return Err(DecodeError::Empty);
    }
    let mut r = Reader::new(data);
    let tag = r.u8("message tag")?;
    let msg = match tag {
        BEGIN => Message::Begin(parse::begin(&mut r)?),
        COMMIT => Message::Commit(parse::commit(&mut r)?),
        ORIGIN => Message::Origin(parse::origin(&mut r)?),
        RELATION => Message::Relation(parse::relation(&mut r)?),
        TYPE => Message::Type(parse::type_msg(&mut r)?),
        INSERT => Message::Insert(parse::insert(&mut r)?),
        UPDATE => Message::Update(parse::update(&mut r)?),
        DELETE => Message::Delete(parse::delete(&mut r)?),
        TRUNCATE => Message::Truncate(parse::truncate(&mut r)?),
        MESSAGE => Message::Message(parse::logical_message(&mut r)?),
        other => return Err(DecodeError::UnknownTag(other)),
    };
    r.finish(tag)?;
    Ok(msg)
}
