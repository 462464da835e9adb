//! The composition root: builds each stage, wires the bounded channels, owns shutdown.
//!
//! ```text
//! source ──Frame──▶ decode ─▶ event ─▶ script ──Outbound──▶ publish ──PubAck──▶ ack window
//!   ▲                  (one task: plain function calls)      (bounded mpsc)   (inbox)  │
//!   └──────────── confirm(flushed LSN) ◀── watch ◀── flushed LSN, in commit order ◀────┘
//! ```
//!
//! Decoding, event assembly and routing are synchronous, microsecond-sized steps, so they run
//! as function calls in one task (the *transform* loop) rather than as tasks joined by
//! channels: a channel hop would cost more than the work. The loop takes the frames that have
//! already arrived (up to [`BATCH`]) and hands the routed events on as one batch. Publishing
//! runs in its own task — building each message's headers and JSON payload there, off the
//! transform loop's thread — so acks are awaited while the next changes are decoded. At most
//! `publisher.maxInFlight` messages are unacknowledged at any time.
//!
//! `scripts.onError: halt` ends a session like a shutdown does: what came before the failed
//! change is published and confirmed, then the session stops at that change and is retried.
//!
//! A *session* is one replication connection plus one NATS connection. Any transient failure
//! — PostgreSQL or NATS unreachable, restarted, a lost ack — ends the session; everything in
//! flight is abandoned, and the next session resumes from the slot's confirmed LSN after a
//! capped exponential backoff. Replayed changes carry the same `Nats-Msg-Id`, so JetStream
//! stores each once. Fatal failures (bad credentials, a dropped slot, an unusable stream)
//! end the process with a message saying what to fix.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::ack::AckWindow;
use crate::catalog::Catalog;
use crate::config::{Config, PublisherKind};
use crate::decode;
use crate::event::{Assembler, ChangeEvent, Item};
use crate::lsn::Lsn;
use crate::publish::{ACK_TIMEOUT, Ack, AckReplies, OutMessage, PublishError, Sent, Sink};
use crate::script::{Routed, reload};
use crate::source::{Frame, PgwireReplication, Replication, SourceError, setup};
use crate::unpublishable::{ScriptVersion, Unpublishable};
use crate::{health, metrics};

/// Batches buffered between the transform loop and the publisher.
const CHANNEL: usize = 16;
/// Replication frames taken in one go (when they have already arrived).
const BATCH: usize = 256;
/// How long SIGTERM waits for in-flight acks before giving up on them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often a standby checks whether the slot became free.
const STANDBY_POLL: Duration = Duration::from_secs(1);

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
    /// JetStream answered "no responders" to a publish to this subject: transient, and the
    /// next session asks JetStream whether a stream captures the subject before streaming.
    Unanswered(String),
    Fatal(String),
    /// The slot is streamed by another instance.
    Standby(String),
}

impl From<SourceError> for SessionError {
    fn from(e: SourceError) -> Self {
        match e {
            SourceError::Transient(m) => SessionError::Transient(m),
            SourceError::Fatal(m) => SessionError::Fatal(m),
            SourceError::SlotBusy(m) => SessionError::Standby(m),
        }
    }
}

impl From<PublishError> for SessionError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::Transient(m) => SessionError::Transient(m),
            PublishError::NoResponders => SessionError::Transient(PublishError::NoResponders.to_string()),
            PublishError::Rejected(m) | PublishError::Fatal(m) => SessionError::Fatal(m),
        }
    }
}

/// Items from the transform loop to the publisher.
enum Outbound {
    /// A routed event; the publisher builds its messages (off the transform loop's thread).
    Route {
        event: Arc<ChangeEvent>,
        routed: Vec<Routed>,
    },
    /// The script version that routed the events that follow (for logging what it got wrong).
    Script(ScriptVersion),
    /// A ready message (a dead letter for a script error).
    Publish(OutMessage),
    /// Confirmable once everything before it is acknowledged.
    Checkpoint(Lsn),
}

/// Run until `shutdown` is cancelled (Ok) or a fatal error (Err).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AppError> {
    let watch_scripts = reload::Watch::start(&config);
    let router = reload::build(&config).map_err(AppError::Fatal)?;
    tracing::info!(script = %router.name(), "routing script loaded");
    let (versions_tx, mut versions) = watch::channel(Arc::new(reload::Version { router, number: 1 }));
    let config = Arc::new(config);
    let _reloader = AbortOnDropHandle::new(tokio::spawn(reload::run(
        config.clone(),
        watch_scripts,
        versions_tx,
        shutdown.clone(),
    )));
    let mut backoff = BACKOFF_MIN;
    let mut standby = false;
    let mut slot_seen = false;
    // A subject JetStream answered "no responders" for, to be asked about once it answers.
    let mut unanswered = None;
    loop {
        let started = Instant::now();
        let message = match session(&config, versions.clone(), &shutdown, &mut slot_seen, &mut unanswered).await {
            Ok(()) => return Ok(()),
            Err(SessionError::Fatal(message)) => return Err(AppError::Fatal(message)),
            Err(SessionError::Standby(message)) => {
                if !standby {
                    tracing::info!(slot = %config.listener.slot_name, reason = %message, "another instance streams from the slot; waiting as standby");
                    standby = true;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(STANDBY_POLL) => {}
                }
                continue;
            }
            Err(SessionError::Unanswered(subject)) => {
                let message = format!(
                    "JetStream answered \"no responders\" to a publish to {subject:?}: it is stopping, starting or electing a leader, or no stream captures the subject; replaying from the last confirmed position once JetStream answers"
                );
                unanswered = Some(subject);
                message
            }
            Err(SessionError::Transient(message)) => message,
        };
        if started.elapsed() > BACKOFF_MAX * 2 {
            backoff = BACKOFF_MIN;
        }
        tracing::warn!(error = %message, retry_in = ?backoff, "pipeline interrupted; reconnecting");
        versions.mark_unchanged();
        health::reconnecting(&message);
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(backoff) => {}
            // A new script version (say, one fixing what halted the stream) is tried at once.
            Ok(()) = versions.changed() => backoff = BACKOFF_MIN,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One replication + NATS connection, from the slot's confirmed LSN until shutdown or failure.
async fn session(
    config: &Config,
    versions: watch::Receiver<Arc<reload::Version>>,
    shutdown: &CancellationToken,
    slot_seen: &mut bool,
    unanswered: &mut Option<String>,
) -> Result<(), SessionError> {
    let slot = setup::prepare(config, *slot_seen).await?;
    *slot_seen = true;
    if slot.active {
        health::standby(&config.listener.slot_name);
        return Err(SessionError::Standby("the slot is active on another connection".into()));
    }
    let (sink, replies) = Sink::connect(config).await?;
    if let Some(subject) = unanswered.as_deref() {
        // Only JetStream, up and answering, can tell that no stream captures the subject.
        sink.captures(subject, &config.publisher.topic).await?;
        *unanswered = None;
    }
    let max_payload = sink.max_payload();
    let mut repl = PgwireReplication::start(config, slot.confirmed_flush).await?;
    tracing::info!(slot = %config.listener.slot_name, from = %slot.confirmed_flush, "streaming changes");
    health::streaming();
    metrics::confirmed(slot.confirmed_flush);

    let (tx, rx) = mpsc::channel(CHANNEL);
    let (flushed_tx, mut flushed_rx) = watch::channel(slot.confirmed_flush);
    let window = config.publisher.max_in_flight;
    let unpublishable = Unpublishable::new(config, max_payload);
    let mut transform = Transform::new(config, versions, slot.confirmed_flush, max_payload);
    let publisher = Publisher::new(sink, replies, flushed_tx, window);
    let mut publisher = AbortOnDropHandle::new(tokio::spawn(publish_loop(
        publisher,
        rx,
        unpublishable,
        transform.script.clone(),
    )));

    // Domains, arrays and user types need pg_type (crate::catalog); new ones are looked up
    // between two messages, below.
    let catalog = Catalog::connect(config).await?;
    transform.assembler.set_types(catalog.registry().await?);
    let mut items = Vec::new();
    let mut halted = None;
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
        let mut next = Some(frame);
        let mut frames = 0;
        // Take what has already arrived (up to a batch) before handing it on: one channel send
        // and one wake-up of the publisher per batch instead of per change.
        while let Some(frame) = next.take() {
            let Some(frame) = frame else {
                return Err(SessionError::Transient("the replication stream ended".into()));
            };
            if let Err(e) = transform.frame(frame, &mut items) {
                // A change that cannot be handled (scripts.onError: halt): what came before it
                // is still published and confirmed, then the session ends at that change.
                halted = Some(e);
                break;
            }
            catalog.resolve(&mut transform.assembler).await?;
            frames += 1;
            if frames < BATCH {
                next = repl.recv().now_or_never().transpose()?;
            }
        }
        let batch = std::mem::take(&mut items);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break 'stream,
            sent = tx.send(batch) => if sent.is_err() {
                return Err(publisher_ended((&mut publisher).await));
            },
        }
        if halted.is_some() {
            break 'stream;
        }
    }

    // Shutdown (or a halt): stop reading, let in-flight acks drain, confirm the final LSN.
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
    if let Some(error) = halted {
        return Err(error);
    }
    tracing::info!(confirmed = %last, "stopped");
    Ok(())
}

fn describe_end(done: Result<Result<(), SessionError>, tokio::task::JoinError>) -> String {
    match done {
        Ok(Ok(())) => "the publisher stopped".into(),
        Ok(Err(
            SessionError::Transient(m)
            | SessionError::Fatal(m)
            | SessionError::Standby(m)
            | SessionError::Unanswered(m),
        )) => m,
        Err(e) => format!("the publisher task failed: {e}"),
    }
}

fn publisher_ended(done: Result<Result<(), SessionError>, tokio::task::JoinError>) -> SessionError {
    match done {
        Ok(Err(e)) => e,
        other => SessionError::Transient(describe_end(other)),
    }
}

fn script_version(version: &reload::Version) -> ScriptVersion {
    ScriptVersion {
        name: Arc::from(version.router.name()),
        number: version.number,
    }
}

/// Publish what the transform loop sends, track acks in order, report flushed LSNs.
async fn publish_loop(
    mut publisher: Publisher,
    mut rx: mpsc::Receiver<Vec<Outbound>>,
    mut unpublishable: Unpublishable,
    mut script: ScriptVersion,
) -> Result<(), SessionError> {
    let mut messages = Vec::new();
    let mut open = true;
    while open || !publisher.window.is_empty() {
        tokio::select! {
            biased;
            waited = publisher.wait() => waited?,
            batch = rx.recv(), if open && !publisher.window.is_full() => match batch {
                Some(batch) => {
                    for item in batch {
                        match item {
                            Outbound::Route { event, routed } => {
                                unpublishable
                                    .envelopes(&event, routed, &script, &mut messages)
                                    .map_err(SessionError::Transient)?;
                                for message in messages.drain(..) {
                                    publisher.send(message, &event.table).await?;
                                }
                            }
                            Outbound::Publish(message) => {
                                let table = message.headers.get("Wal-Table").map(|v| v.to_string()).unwrap_or_default();
                                publisher.send(message, &table).await?;
                            }
                            Outbound::Checkpoint(lsn) => publisher.window.push_checkpoint(lsn),
                            Outbound::Script(version) => script = version,
                        }
                    }
                    publisher.release();
                }
                None => open = false,
            },
        }
    }
    publisher.sink.flush().await?;
    Ok(())
}

/// The sending end of a session: the sink, its acknowledgements, and the window that turns
/// them into flushed LSNs.
struct Publisher {
    sink: Sink,
    replies: AckReplies,
    window: AckWindow<metrics::Delivery>,
    counters: metrics::PublishedCounters,
    flushed: watch::Sender<Lsn>,
    /// When the window last moved (or started to wait): no ack for [`ACK_TIMEOUT`] while
    /// messages are in flight means the connection is not working.
    progress: Instant,
    stall_check: tokio::time::Interval,
}

impl Publisher {
    fn new(sink: Sink, replies: AckReplies, flushed: watch::Sender<Lsn>, window: usize) -> Self {
        Publisher {
            sink,
            replies,
            window: AckWindow::new(window),
            counters: metrics::PublishedCounters::default(),
            flushed,
            progress: Instant::now(),
            stall_check: tokio::time::interval(Duration::from_secs(1)),
        }
    }

    /// Send one message, first waiting for acknowledgements while the window is full, so that
    /// at most `maxInFlight` messages are ever unacknowledged — also inside a batch.
    async fn send(&mut self, message: OutMessage, table: &str) -> Result<(), SessionError> {
        while self.window.is_full() {
            self.wait().await?;
        }
        if self.window.is_empty() {
            self.progress = Instant::now();
        }
        let delivery = self.counters.start(&message.subject, table, message.commit_time);
        let seq = self.window.push_message(delivery);
        if self.sink.send(message, seq).await? == Sent::Done {
            self.window.ack(seq);
            self.release();
        }
        Ok(())
    }

    /// Wait for acknowledgements (taking every one that has arrived) or a failure: a lost
    /// connection, a refused message, or no ack for [`ACK_TIMEOUT`] while messages wait.
    async fn wait(&mut self) -> Result<(), SessionError> {
        tokio::select! {
            biased;
            _ = self.sink.lost() => return Err(connection_lost()),
            ack = self.replies.next() => {
                self.ack(ack)?;
                while let Some(ack) = self.replies.try_next() {
                    self.ack(ack)?;
                }
                self.progress = Instant::now();
                self.release();
            }
            _ = self.stall_check.tick() => {
                if !self.window.is_empty() && self.progress.elapsed() > ACK_TIMEOUT {
                    return Err(SessionError::Transient(format!(
                        "JetStream acknowledged nothing for {ACK_TIMEOUT:?} with {} messages in flight; replaying from the last confirmed position",
                        self.window.in_flight()
                    )));
                }
            }
        }
        Ok(())
    }

    fn ack(&mut self, ack: Result<Ack, PublishError>) -> Result<(), SessionError> {
        let ack = ack?;
        if let Err(e) = ack.outcome {
            metrics::problem("publish");
            if let PublishError::NoResponders = e {
                // A reply for a message no longer in flight is stray: it changes nothing.
                let Some(delivery) = self.window.get(ack.seq) else {
                    return Ok(());
                };
                metrics::jetstream_unavailable();
                return Err(SessionError::Unanswered(delivery.subject().to_string()));
            }
            return Err(e.into());
        }
        self.window.ack(ack.seq);
        Ok(())
    }

    /// Count what is acknowledged in order and move the flushed LSN forward.
    fn release(&mut self) {
        let Some(lsn) = self.window.release(metrics::Delivery::acknowledged) else {
            return;
        };
        self.flushed.send_if_modified(|current| {
            let advanced = lsn > *current;
            if advanced {
                *current = lsn;
            }
            advanced
        });
    }
}

fn connection_lost() -> SessionError {
    SessionError::Transient("the NATS connection was lost; replaying from the last confirmed position".into())
}

/// decode → event → script, as plain function calls.
struct Transform {
    /// The script version in use, and where new ones arrive (swapped between transactions).
    version: Arc<reload::Version>,
    versions: watch::Receiver<Arc<reload::Version>>,
    /// `version` as carried with each routed event.
    script: ScriptVersion,
    /// What `scripts.onError` makes of script errors.
    unpublishable: Unpublishable,
    assembler: Assembler,
    events: Vec<Item>,
    /// The newest LSN handed on as a checkpoint (checkpoints only move forward).
    checkpoint: Lsn,
    /// Whether positions are confirmed at all (not for a stdout dry run, unless asked).
    confirm: bool,
}

impl Transform {
    fn new(
        config: &Config,
        mut versions: watch::Receiver<Arc<reload::Version>>,
        start: Lsn,
        max_payload: Option<usize>,
    ) -> Self {
        let version = versions.borrow_and_update().clone();
        Transform {
            script: script_version(&version),
            version,
            versions,
            unpublishable: Unpublishable::new(config, max_payload),
            assembler: Assembler::new(),
            events: Vec::new(),
            checkpoint: start,
            confirm: config.publisher.kind != PublisherKind::Stdout || config.publisher.confirm_stdout,
        }
    }

    /// Hand on a position that becomes confirmable after everything before it.
    fn checkpoint(&mut self, lsn: Lsn, out: &mut Vec<Outbound>) {
        if lsn > self.checkpoint {
            self.checkpoint = lsn;
            if self.confirm {
                out.push(Outbound::Checkpoint(lsn));
            }
        }
    }

    fn frame(&mut self, frame: Frame, out: &mut Vec<Outbound>) -> Result<(), SessionError> {
        if !self.assembler.in_transaction() && self.versions.has_changed().unwrap_or(false) {
            // Between transactions: a new script version takes over here, so every
            // transaction is routed by exactly one version.
            self.version = self.versions.borrow_and_update().clone();
            self.script = script_version(&self.version);
            out.push(Outbound::Script(self.script.clone()));
            tracing::info!(version = self.version.number, script = %self.version.router.name(), "new script version in effect");
        }
        let message = match frame {
            Frame::KeepAlive(wal_end) => {
                // Idle: nothing of an open transaction is pending, so the server's WAL end
                // may be confirmed once earlier acks are in — the slot does not hold WAL back.
                if !self.assembler.in_transaction() {
                    self.checkpoint(wal_end, out);
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
                Item::TxEnd(end_lsn) => self.checkpoint(end_lsn, out),
            }
        }
        Ok(())
    }

    fn route(&mut self, event: Arc<ChangeEvent>, out: &mut Vec<Outbound>) -> Result<(), SessionError> {
        match self.version.router.route(&event) {
            Ok(routed) if routed.is_empty() => metrics::filtered(&event.table),
            Ok(routed) => out.push(Outbound::Route { event, routed }),
            Err(error) => {
                if let Some(letter) = self
                    .unpublishable
                    .handle(&event, &error, &self.script)
                    .map_err(SessionError::Transient)?
                {
                    out.push(Outbound::Publish(letter));
                }
            }
        }
        Ok(())
    }
}
