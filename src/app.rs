//! The composition root: builds each stage, wires the bounded channels, owns shutdown.
//!
//! ```text
//! source ──Frame──▶ decode ─▶ event ─▶ script ──Outbound──▶ publish ──ack future──▶ ack window
//!   ▲                  (one task: plain function calls)      (bounded mpsc)          │
//!   └──────────── confirm(flushed LSN) ◀── watch ◀── flushed LSN, in commit order ◀───┘
//! ```
//!
//! Decoding, event assembly and routing are synchronous, microsecond-sized steps, so they run
//! as function calls in one task (the *transform* loop) rather than as tasks joined by
//! channels: a channel hop would cost more than the work. Publishing runs in its own task so
//! acks can be awaited while the next changes are decoded.
//!
//! A *session* is one replication connection plus one NATS connection. Any transient failure
//! — PostgreSQL or NATS unreachable, restarted, a lost ack — ends the session; everything in
//! flight is abandoned, and the next session resumes from the slot's confirmed LSN after a
//! capped exponential backoff. Replayed changes carry the same `Nats-Msg-Id`, so JetStream
//! stores each once. Fatal failures (bad credentials, a dropped slot, an unusable stream)
//! end the process with a message saying what to fix.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::ack::AckWindow;
use crate::config::{Config, OnError};
use crate::decode;
use crate::event::{Assembler, ChangeEvent, Item};
use crate::lsn::Lsn;
use crate::publish::{self, OutMessage, PublishError, Sink};
use crate::script::{RouteError, Router};
use crate::source::{Frame, PgwireReplication, Replication, SourceError, setup};
use crate::{health, metrics};

/// Messages a session may have in flight before waiting for acks (measured best of
/// 256/1024/4096 on 2 cores, FACTS.md).
const ACK_WINDOW: usize = 1024;
/// Items buffered between the transform loop and the publisher.
const CHANNEL: usize = 1024;
/// How long SIGTERM waits for in-flight acks before giving up on them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Why the service stopped.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Fatal(String),
}

/// What ends a session.
#[derive(Debug)]
enum SessionError {
    Transient(String),
    Fatal(String),
}

impl From<SourceError> for SessionError {
    fn from(e: SourceError) -> Self {
        match e {
            SourceError::Transient(m) => SessionError::Transient(m),
            SourceError::Fatal(m) => SessionError::Fatal(m),
        }
    }
}

impl From<PublishError> for SessionError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::Transient(m) => SessionError::Transient(m),
            PublishError::Rejected(m) | PublishError::Fatal(m) => SessionError::Fatal(m),
        }
    }
}

/// Items from the transform loop to the publisher.
enum Outbound {
    Publish(OutMessage),
    /// Confirmable once everything before it is acknowledged.
    Checkpoint(Lsn),
}

/// Run until `shutdown` is cancelled (Ok) or a fatal error (Err).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AppError> {
    let mut router = Router::from_config(&config).map_err(|e| AppError::Fatal(e.to_string()))?;
    tracing::info!(script = %router.name(), "routing script loaded");
    let mut backoff = BACKOFF_MIN;
    loop {
        let started = Instant::now();
        match session(&config, &router, &shutdown).await {
            Ok(()) => return Ok(()),
            Err(SessionError::Fatal(message)) => return Err(AppError::Fatal(message)),
            Err(SessionError::Transient(message)) => {
                if started.elapsed() > BACKOFF_MAX * 2 {
                    backoff = BACKOFF_MIN;
                }
                tracing::warn!(error = %message, retry_in = ?backoff, "pipeline interrupted; reconnecting");
                health::reconnecting(&message);
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                // A script fixed on disk while we waited takes effect on the retry; a broken
                // one leaves the running version in place.
                match Router::from_config(&config) {
                    Ok(fresh) => router = fresh,
                    Err(e) => {
                        metrics::script_reload(false);
                        tracing::error!(error = %e, "script does not load; keeping the previous version")
                    }
                }
            }
        }
    }
}

/// One replication + NATS connection, from the slot's confirmed LSN until shutdown or failure.
async fn session(config: &Config, router: &Router, shutdown: &CancellationToken) -> Result<(), SessionError> {
    let sink = Sink::connect(config).await?;
    let slot = setup::prepare(config).await?;
    if slot.active {
        tracing::info!(slot = %config.listener.slot_name, "slot is in use by another connection; waiting as standby");
        health::standby(&config.listener.slot_name);
    }
    let mut repl = PgwireReplication::start(config, slot.confirmed_flush).await?;
    tracing::info!(slot = %config.listener.slot_name, from = %slot.confirmed_flush, "streaming changes");
    health::streaming();
    metrics::confirmed(slot.confirmed_flush);

    let (tx, rx) = mpsc::channel(CHANNEL);
    let (flushed_tx, mut flushed_rx) = watch::channel(slot.confirmed_flush);
    let mut publisher = AbortOnDropHandle::new(tokio::spawn(publish_loop(sink, rx, flushed_tx, ACK_WINDOW)));

    let mut transform = Transform::new(config, router, slot.confirmed_flush);
    let mut items = Vec::new();
    'stream: loop {
        let frame = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break 'stream,
            done = &mut publisher => return Err(publisher_ended(done)),
            Ok(()) = flushed_rx.changed() => {
                repl.confirm(*flushed_rx.borrow_and_update());
                metrics::confirmed(*flushed_rx.borrow());
                continue;
            }
            frame = repl.recv() => frame?,
        };
        let Some(frame) = frame else {
            return Err(SessionError::Transient("the replication stream ended".into()));
        };
        transform.frame(frame, &mut items)?;
        for item in items.drain(..) {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break 'stream,
                sent = tx.send(item) => if sent.is_err() {
                    return Err(publisher_ended((&mut publisher).await));
                },
            }
        }
    }

    // Shutdown: stop reading, let in-flight acks drain, confirm the final LSN.
    drop(tx);
    match tokio::time::timeout(DRAIN_TIMEOUT, &mut publisher).await {
        Ok(Ok(Ok(()))) => {}
        Ok(done) => tracing::warn!(error = %describe_end(done), "publisher stopped with an error during shutdown"),
        Err(_) => tracing::warn!("in-flight acknowledgements did not drain within {DRAIN_TIMEOUT:?}"),
    }
    let last = *flushed_rx.borrow_and_update();
    repl.confirm(last);
    metrics::confirmed(last);
    repl.flush_confirmation(Duration::from_secs(5)).await;
    tracing::info!(confirmed = %last, "stopped");
    Ok(())
}

fn describe_end(done: Result<Result<(), SessionError>, tokio::task::JoinError>) -> String {
    match done {
        Ok(Ok(())) => "the publisher stopped".into(),
        Ok(Err(SessionError::Transient(m) | SessionError::Fatal(m))) => m,
        Err(e) => format!("the publisher task failed: {e}"),
    }
}

fn publisher_ended(done: Result<Result<(), SessionError>, tokio::task::JoinError>) -> SessionError {
    match done {
        Ok(Err(e)) => e,
        other => SessionError::Transient(describe_end(other)),
    }
}

/// Publish what the transform loop sends, track acks in order, report flushed LSNs.
async fn publish_loop(
    sink: Sink,
    mut rx: mpsc::Receiver<Outbound>,
    flushed: watch::Sender<Lsn>,
    window: usize,
) -> Result<(), SessionError> {
    let mut acks = AckWindow::<PublishError>::new(window);
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            Some(done) = acks.next_flushed(), if !acks.is_empty() => {
                let lsn = done?;
                flushed.send_if_modified(|current| {
                    let advanced = lsn > *current;
                    if advanced {
                        *current = lsn;
                    }
                    advanced
                });
            }
            item = rx.recv(), if open && !acks.is_full() => match item {
                Some(Outbound::Publish(message)) => acks.push_message(sink.send(message).await?),
                Some(Outbound::Checkpoint(lsn)) => acks.push_checkpoint(lsn),
                None => open = false,
            },
            else => break,
        }
    }
    sink.flush().await?;
    Ok(())
}

/// decode → event → script, as plain function calls.
struct Transform<'a> {
    config: &'a Config,
    router: &'a Router,
    assembler: Assembler,
    events: Vec<Item>,
    /// The newest LSN handed on as a checkpoint (checkpoints only move forward).
    checkpoint: Lsn,
    dead_letter_subject: String,
}

impl<'a> Transform<'a> {
    fn new(config: &'a Config, router: &'a Router, start: Lsn) -> Self {
        Transform {
            config,
            router,
            assembler: Assembler::new(),
            events: Vec::new(),
            checkpoint: start,
            dead_letter_subject: config.dead_letter_subject(),
        }
    }

    fn frame(&mut self, frame: Frame, out: &mut Vec<Outbound>) -> Result<(), SessionError> {
        let message = match frame {
            Frame::KeepAlive(wal_end) => {
                // Idle: nothing of an open transaction is pending, so the server's WAL end
                // may be confirmed once earlier acks are in — the slot does not hold WAL back.
                if !self.assembler.in_transaction() && wal_end > self.checkpoint {
                    self.checkpoint = wal_end;
                    out.push(Outbound::Checkpoint(wal_end));
                }
                return Ok(());
            }
            Frame::Decoded(message) => message,
            Frame::Data(bytes) => decode::decode(&bytes).map_err(|e| {
                SessionError::Fatal(format!(
                    "cannot decode a pgoutput message: {e}; please report this with the PostgreSQL version"
                ))
            })?,
        };
        self.assembler
            .apply(message, &mut self.events)
            .map_err(|e| SessionError::Fatal(format!("replication stream out of protocol: {e}")))?;
        for bad in self.assembler.take_bad_values() {
            tracing::warn!(table = %bad.table, column = %bad.column, type_oid = bad.type_oid, "value does not parse as its type; published as text");
            metrics::problem("value");
        }
        for item in std::mem::take(&mut self.events) {
            match item {
                Item::Change(event) => self.route(Arc::new(event), out)?,
                Item::TxEnd(end_lsn) => {
                    if end_lsn > self.checkpoint {
                        self.checkpoint = end_lsn;
                        out.push(Outbound::Checkpoint(end_lsn));
                    }
                }
            }
        }
        Ok(())
    }

    fn route(&mut self, event: Arc<ChangeEvent>, out: &mut Vec<Outbound>) -> Result<(), SessionError> {
        match self.router.route(&event) {
            Ok(routed) => {
                if routed.is_empty() {
                    metrics::filtered(&event.table);
                }
                let mut default_payload: Option<Bytes> = None;
                for (index, message) in routed.into_iter().enumerate() {
                    out.push(Outbound::Publish(publish::envelope(
                        &event,
                        message,
                        index,
                        &mut default_payload,
                    )));
                }
                Ok(())
            }
            Err(error) => self.script_failed(&event, &error, out),
        }
    }

    fn script_failed(
        &mut self,
        event: &ChangeEvent,
        error: &RouteError,
        out: &mut Vec<Outbound>,
    ) -> Result<(), SessionError> {
        let table = format!("{}.{}", event.schema, event.table);
        metrics::script_error();
        match self.config.scripts.on_error {
            OnError::DeadLetter => {
                tracing::warn!(script = %self.router.name(), %table, lsn = %event.commit_lsn, error = %error, subject = %self.dead_letter_subject, "script error; event sent to the dead-letter subject");
                out.push(Outbound::Publish(publish::dead_letter(
                    event,
                    &self.dead_letter_subject,
                    &error.to_string(),
                )));
                Ok(())
            }
            OnError::Skip => {
                tracing::warn!(script = %self.router.name(), %table, lsn = %event.commit_lsn, error = %error, "script error; event skipped");
                Ok(())
            }
            OnError::Halt => Err(SessionError::Transient(format!(
                "script error at {table} (commit {}, change {}): {error}; publishing halted until the script handles it (scripts.onError: halt)",
                event.commit_lsn, event.ordinal
            ))),
        }
    }
}
