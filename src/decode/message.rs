//! Decoded pgoutput message types and their wire tags.

use bytes::Bytes;

use super::tuple::{OldTuple, TupleData};

/// Tag of [`Message::Begin`].
pub const BEGIN: u8 = b'B';
/// Tag of [`Message::Commit`].
pub const COMMIT: u8 = b'C';
/// Tag of [`Message::Origin`].
pub const ORIGIN: u8 = b'O';
/// Tag of [`Message::Relation`].
pub const RELATION: u8 = b'R';
/// Tag of [`Message::Type`].
pub const TYPE: u8 = b'Y';
/// Tag of [`Message::Insert`].
pub const INSERT: u8 = b'I';
/// Tag of [`Message::Update`].
pub const UPDATE: u8 = b'U';
/// Tag of [`Message::Delete`].
pub const DELETE: u8 = b'D';
/// Tag of [`Message::Truncate`].
pub const TRUNCATE: u8 = b'T';
/// Tag of [`Message::Message`] (a `pg_logical_emit_message` record).
pub const MESSAGE: u8 = b'M';

/// Truncate option bit: `TRUNCATE ... CASCADE`.
pub const TRUNCATE_CASCADE: u8 = 1;
/// Truncate option bit: `TRUNCATE ... RESTART IDENTITY`.
pub const TRUNCATE_RESTART_IDENTITY: u8 = 2;
/// Logical message flag bit: the message was emitted transactionally.
pub const MESSAGE_TRANSACTIONAL: u8 = 1;
/// Relation column flag bit: the column is part of the replica identity key.
pub const COLUMN_KEY: u8 = 1;

/// One decoded pgoutput message (one `XLogData` payload).
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // `Message::Message` is the agreed API name
pub enum Message {
    /// `B`: start of a transaction.
    Begin(Begin),
    /// `C`: end of a transaction.
    Commit(Commit),
    /// `O`: replication origin of the current transaction.
    Origin(Origin),
    /// `R`: table schema; precedes the first DML on it in a session.
    Relation(Relation),
    /// `Y`: a non-builtin data type used by a following Relation.
    Type(TypeMsg),
    /// `I`: row inserted.
    Insert(Insert),
    /// `U`: row updated.
    Update(Update),
    /// `D`: row deleted.
    Delete(Delete),
    /// `T`: tables truncated.
    Truncate(Truncate),
    /// `M`: logical decoding message (`pg_logical_emit_message`).
    Message(LogicalMessage),
}

impl Message {
    /// The wire tag of this message (`b'B'`, `b'I'`, ...).
    pub fn tag(&self) -> u8 {
        match self {
            Message::Begin(_) => BEGIN,
            Message::Commit(_) => COMMIT,
            Message::Origin(_) => ORIGIN,
            Message::Relation(_) => RELATION,
            Message::Type(_) => TYPE,
            Message::Insert(_) => INSERT,
            Message::Update(_) => UPDATE,
            Message::Delete(_) => DELETE,
            Message::Truncate(_) => TRUNCATE,
            Message::Message(_) => MESSAGE,
        }
    }
}

/// `B` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Begin {
    /// LSN of the transaction's commit record.
    pub final_lsn: u64,
    /// Commit timestamp, µs since 2000-01-01 UTC.
    pub commit_time: i64,
    /// Transaction id.
    pub xid: u32,
}

/// `C` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Commit {
    /// Flags (currently unused by PostgreSQL, always 0).
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: u64,
    /// End LSN of the transaction (the position to confirm).
    pub end_lsn: u64,
    /// Commit timestamp, µs since 2000-01-01 UTC.
    pub commit_time: i64,
}

/// `O` message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// LSN of the commit on the origin server.
    pub commit_lsn: u64,
    /// Origin name.
    pub name: String,
}

/// `R` message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Relation {
    /// Relation OID.
    pub oid: u32,
    /// Schema name (empty string for `pg_catalog`).
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// `REPLICA IDENTITY` setting.
    pub replica_identity: ReplicaIdentity,
    /// Published columns, in tuple order.
    pub columns: Vec<Column>,
}

/// A table's `REPLICA IDENTITY` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// `d`: primary key.
    Default,
    /// `n`: nothing.
    Nothing,
    /// `f`: all columns.
    Full,
    /// `i`: a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    /// Parses the wire byte (`d`, `n`, `f`, `i`).
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'd' => Some(ReplicaIdentity::Default),
            b'n' => Some(ReplicaIdentity::Nothing),
            b'f' => Some(ReplicaIdentity::Full),
            b'i' => Some(ReplicaIdentity::Index),
            _ => None,
        }
    }

    /// The wire byte (`d`, `n`, `f`, `i`).
    pub fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Column {
    /// Part of the replica identity key (`flags & 1`).
    pub is_key: bool,
    /// Column name.
    pub name: String,
    /// Data type OID.
    pub type_oid: u32,
    /// Type modifier (`atttypmod`), -1 when none.
    pub type_modifier: i32,
}

/// `Y` message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TypeMsg {
    /// Type OID.
    pub oid: u32,
    /// Schema name (empty string for `pg_catalog`).
    pub namespace: String,
    /// Type name.
    pub name: String,
}

/// `I` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// OID of the [`Relation`] the row belongs to.
    pub relation_oid: u32,
    /// The inserted row.
    pub new: TupleData,
}

/// `U` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// OID of the [`Relation`] the row belongs to.
    pub relation_oid: u32,
    /// Old key (`K`) or old full row (`O`), when the key changed or
    /// `REPLICA IDENTITY FULL` is set; `None` otherwise.
    pub old: Option<OldTuple>,
    /// The new row (unchanged TOASTed values are [`super::TupleValue::UnchangedToast`]).
    pub new: TupleData,
}

/// `D` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// OID of the [`Relation`] the row belongs to.
    pub relation_oid: u32,
    /// Old key (`K`) or old full row (`O`).
    pub old: OldTuple,
}

/// `T` message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Truncate {
    /// `CASCADE` was given (option bit 1).
    pub cascade: bool,
    /// `RESTART IDENTITY` was given (option bit 2).
    pub restart_identity: bool,
    /// OIDs of the truncated relations.
    pub relation_oids: Vec<u32>,
}

/// `M` message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LogicalMessage {
    /// Emitted transactionally (flag bit 1).
    pub transactional: bool,
    /// LSN of the message.
    pub lsn: u64,
    /// Prefix given to `pg_logical_emit_message`.
    pub prefix: String,
    /// Content, a zero-copy slice of the input.
    pub content: Bytes,
}
