//! # wal-listener
//!
//! Streams PostgreSQL row changes (logical decoding with the built-in `pgoutput` plugin) into
//! NATS JetStream. A Lua script decides, per event, whether it is published, on which subject,
//! with which payload and headers; without one, the built-in default script applies the Go
//! wal-listener's YAML table/action filter.
//!
//! ```text
//! PostgreSQL walsender ──XLogData──▶ source ──bytes──▶ decode ──messages──▶ event ──ChangeEvent──▶ script ──messages──▶ publish ──PubAck──▶ ack
//!         ▲                                                                                                                              │
//!         └──────────────────────────── standby status update (confirmed LSN) ◀── feedback ◀──────── flushed LSN (in commit order) ◀──────┘
//! ```
//!
//! ## The invariant
//!
//! **PostgreSQL is told an LSN is flushed only when every message produced by every change at
//! or before it has been acknowledged by JetStream.** Everything else serves it: the ack window
//! ([`ack`]) releases a transaction's end LSN only after all earlier acks; after any failure the
//! pipeline resumes from the slot's confirmed LSN; replayed changes carry the same
//! deterministic `Nats-Msg-Id` ([`event::event_id`]) so JetStream stores each change once.
//!
//! Modules, in data-flow order: [`source`] (the replication connection, setup SQL, what
//! PostgreSQL has for us), [`decode`] (pgoutput bytes → messages), [`event`] (messages →
//! [`event::ChangeEvent`]s), [`transform`] (decode → event → script as function calls),
//! [`script`] (Lua routing and `scripts.onError`), [`publish`] (NATS, the stream, the publish
//! stage), [`ack`] (ordered acknowledgements), wired together by [`app`], the composition
//! root. [`error`] is the one error vocabulary and says, in one place, what the session loop
//! does about each failure. Operations: [`health`] and [`metrics`] collect what [`http`]
//! serves (`/healthz`, `/ready`, `/metrics`); [`telemetry`] sets up logging; [`check`] is
//! `check --connect`.

pub(crate) mod ack;
pub mod app;
pub mod backfill;
pub mod check;
pub mod config;
pub mod decode;
pub mod error;
pub mod event;
pub mod health;
pub mod http;
pub mod lsn;
pub(crate) mod metrics;
pub(crate) mod pg_time;
pub mod publish;
pub mod script;
pub(crate) mod source;
pub mod telemetry;
pub(crate) mod transform;
