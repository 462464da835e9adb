//! The composition root: builds the stages of a session, wires the one bounded channel, owns
//! shutdown and the session loop (backoff, standby).
//!
//! ```text
//! source ──Frame──▶ transform: decode → event → script ──Outbound──▶ publish stage ──PubAck──▶ ack window
//!   ▲                (crate::transform, plain calls)      (bounded mpsc)   (crate::publish::stage)        │
//!   └────────── confirm(flushed LSN) ◀── watch ◀── flushed LSN, in commit order ◀─────────────────────┘
//! ```
//!
//! A *session* is one replication connection plus one NATS connection, from the slot's
//! confirmed LSN until shutdown or a failure: [`start`] sets the stages up, [`stream`] moves
//! frames from the source through the transform to the publish stage and confirms what comes
//! back, [`drain`] lets in-flight acknowledgements in and confirms the final position.
//!
//! What a failure means is decided in one place ([`crate::error`]): a transient one ends the
//! session — everything in flight is abandoned, and the next session resumes from the slot's
//! confirmed LSN after a capped exponential backoff, its replayed changes carrying the same
//! `Nats-Msg-Id` so JetStream stores each once; a slot held by another instance makes this one
//! a standby; a fatal one ends the process with a message saying what to fix.
//! `scripts.onError: halt` ends a session like a shutdown does: what came before the failed
//! change is published and confirmed, then the session is retried at that change.
//!
//! With JetStream, a session also runs the backfill runner ([`crate::backfill`]) beside the
//! stream: its chunks reach the transform through a handoff and its watermarks through the
//! WAL, so backfilled rows join the stream at the right place and follow the same window.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::backfill::merge::{Handoff, Merge};
use crate::backfill::runner::Runner;
use crate::backfill::store::Lazy;
use crate::config::Config;
use crate::error::{Disposition, Error, Kind, Result};
use crate::lsn::Lsn;
use crate::publish::Sink;
use crate::publish::stage::PublishStage;
use crate::script::reload;
use crate::source::slot_watch::SlotWatch;
use crate::source::{Catalog, Frame, PgwireReplication, Replication, setup};
use crate::transform::{BackfillHooks, Backfills, Outbound, Transform};
use crate::{health, metrics};

/// Batches buffered between the transform and the publish stage.
const CHANNEL: usize = 16;
/// Replication frames taken in one go (when they have already arrived).
const BATCH: usize = 256;
/// How long SIGTERM waits for in-flight acks before giving up on them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often a standby checks whether the slot became free.
const STANDBY_POLL: Duration = Duration::from_secs(1);

/// What the session loop carries from one session to the next.
#[derive(Default)]
struct Carried {
    /// This process has set up before: a missing slot or publication was dropped by someone.
    slot_seen: bool,
    /// A subject JetStream answered "no responders" for, to be asked about once it answers.
    unanswered: Option<String>,
}

/// Run until `shutdown` is cancelled (Ok) or a fatal error (Err).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let watch_scripts = reload::Watch::start(&config);
    let router = reload::build(&config).map_err(|e| Error::new(Kind::Script, e))?;
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
    let mut carried = Carried::default();
    loop {
        let started = Instant::now();
        let error = match session(&config, versions.clone(), &shutdown, &mut carried).await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        match error.disposition() {
            Disposition::Fatal => return Err(error),
            Disposition::Standby => {
                if !standby {
                    tracing::info!(slot = %config.listener.slot_name, reason = %error, "another instance streams from the slot; waiting as standby");
                    standby = true;
                }
                health::standby(&config.listener.slot_name);
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(STANDBY_POLL) => {}
                }
            }
            Disposition::Transient => {
                if let Some(subject) = error.subject() {
                    carried.unanswered = Some(subject.to_string());
                }
                if started.elapsed() > BACKOFF_MAX * 2 {
                    backoff = BACKOFF_MIN;
                }
                tracing::warn!(error = %error, retry_in = ?backoff, "pipeline interrupted; reconnecting");
                versions.mark_unchanged();
                metrics::reconnect();
                health::reconnecting(&error);
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                    // A new script version (say, one fixing what halted the stream) is tried at once.
                    Ok(()) = versions.changed() => backoff = BACKOFF_MIN,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// One session, in data order: set up, stream, drain.
async fn session(
    config: &Config,
    versions: watch::Receiver<Arc<reload::Version>>,
    shutdown: &CancellationToken,
    carried: &mut Carried,
) -> Result<()> {
    let mut session = start(config, versions, carried).await?;
    let ended = stream(&mut session, shutdown).await;
    drain(session, ended).await
}

/// A session's stages, wired.
struct Session {
    repl: PgwireReplication,
    catalog: Catalog,
    transform: Transform,
    /// To the publish stage.
    tx: mpsc::Sender<Vec<Outbound>>,
    publisher: AbortOnDropHandle<Result<()>>,
    /// Polls the slot: safety metrics, invalidation, stalls ([`crate::source::slot_watch`]).
    slot_watch: AbortOnDropHandle<Result<()>>,
    /// Reads backfills ([`crate::backfill::runner`]); JetStream only.
    _backfill: Option<AbortOnDropHandle<()>>,
    /// Set by the publish stage: every message up to here is acknowledged.
    flushed: watch::Receiver<Lsn>,
    /// Items for the next send (the first is the script version in effect).
    items: Vec<Outbound>,
    /// Frames taken from the source, not yet transformed.
    frames: Vec<Result<Option<Frame>>>,
}

/// Source, publish stage, transform: connect, check, and wire them.
async fn start(
    config: &Config,
    versions: watch::Receiver<Arc<reload::Version>>,
    carried: &mut Carried,
) -> Result<Session> {
    // `pg`: the config pinned to the primary chosen from `database.host`.
    let setup::Prepared { slot, config: pg } = setup::prepare(config, carried.slot_seen).await?;
    carried.slot_seen = true;
    // Keeps the replication-lag metric honest while the stream is down (NATS away, standby).
    if let Some(wal_end) = slot.server_wal_end {
        metrics::server_wal_end(wal_end);
    }
    if slot.active {
        return Err(Error::new(Kind::SlotBusy, "the slot is active on another connection"));
    }
    let (sink, replies) = Sink::connect(config).await?;
    let nats = sink.jetstream_client().cloned();
    if let Some(subject) = carried.unanswered.as_deref() {
        // Only JetStream, up and answering, can tell that no stream captures the subject.
        sink.captures(subject, &config.publisher.topic).await?;
        carried.unanswered = None;
    }
    let repl = PgwireReplication::start(&pg, slot.confirmed_flush, slot.make_failover).await?;
    tracing::info!(slot = %config.listener.slot_name, from = %slot.confirmed_flush, server = %pg.database.address(), "streaming changes");
    health::streaming();
    metrics::confirmed(slot.confirmed_flush);

    // Domains, arrays and user types need pg_type; new ones are looked up while streaming.
    let catalog = Catalog::connect(&pg).await?;
    let slot_watch = AbortOnDropHandle::new(tokio::spawn(watch_slot(SlotWatch::connect(pg.clone()).await?)));
    let types = catalog.registry().await?;
    let (tx, rx) = mpsc::channel(CHANNEL);
    let (flushed_tx, flushed) = watch::channel(slot.confirmed_flush);
    let publisher = AbortOnDropHandle::new(tokio::spawn(
        PublishStage::new(config, sink, replies, flushed_tx).run(rx),
    ));
    // Backfills keep their progress in a KV bucket beside the stream: JetStream only.
    let (hooks, backfill) = match nats {
        Some(client) => {
            let store = Arc::new(Lazy::new(client, &config.listener.slot_name, config.publisher.replicas));
            let handoff = Handoff::default();
            let wake = Arc::new(tokio::sync::Notify::new());
            let runner = Runner::new(pg.clone(), store.clone(), handoff.clone(), wake.clone());
            let hooks = BackfillHooks {
                merge: Merge::new(handoff),
                store,
                wake,
            };
            (Some(hooks), Some(AbortOnDropHandle::new(tokio::spawn(runner.run()))))
        }
        None => (None, None),
    };
    let backfills = Backfills {
        slot: config.listener.slot_name.clone(),
        hooks,
    };
    let mut items = Vec::new();
    let transform = Transform::new(config, versions, slot.confirmed_flush, types, backfills, &mut items);
    Ok(Session {
        repl,
        catalog,
        transform,
        tx,
        publisher,
        slot_watch,
        _backfill: backfill,
        flushed,
        items,
        frames: Vec::with_capacity(BATCH),
    })
}

/// Look at the slot every `heartbeatInterval` while the session streams: report its safety
/// (metrics) and progress (`/healthz`), and end the session when the slot or the publication
/// is gone or invalidated ([`crate::source::slot_watch`]). Never returns `Ok`.
async fn watch_slot(watch: SlotWatch) -> Result<()> {
    // Process-wide, so that sessions ending and starting do not hide a stall.
    static PROGRESS: std::sync::Mutex<Option<health::Progress>> = std::sync::Mutex::new(None);
    let mut ticks = tokio::time::interval(watch.config().listener.heartbeat_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stall_timeout = watch.config().listener.stall_timeout;
    loop {
        ticks.tick().await;
        let report = watch.poll().await?;
        metrics::slot(
            report.retained_bytes,
            report.safe_wal_size,
            report.wal_status.as_deref(),
        );
        let (Some(confirmed), Some(wal_end)) = (report.confirmed, report.wal_end) else {
            continue;
        };
        metrics::server_wal_end(wal_end);
        let now = Instant::now();
        let verdict = PROGRESS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(|| health::Progress::new(confirmed, wal_end, now))
            .observe(confirmed, wal_end, now, stall_timeout);
        match verdict {
            health::Verdict::Fine => {
                metrics::slot_stalled(Duration::ZERO);
                health::stalled(None);
            }
            health::Verdict::Pending(waited) => {
                metrics::slot_stalled(waited);
                health::stalled(None);
            }
            health::Verdict::Stalled(waited, why) => {
                metrics::slot_stalled(waited);
                health::stalled(Some(why));
            }
        }
    }
}

/// How streaming ended.
enum Ended {
    /// Shutdown was requested.
    Shutdown,
    /// The source or the transform failed.
    Failed(Error),
    /// The publish stage ended by itself (a failure, or a halt after its acks were in).
    Publisher(Result<()>),
}

/// Frames from the source through the transform to the publish stage, until shutdown or a
/// failure; flushed positions are confirmed to PostgreSQL as they come back.
async fn stream(s: &mut Session, shutdown: &CancellationToken) -> Ended {
    loop {
        let frame = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ended::Shutdown,
            done = &mut s.publisher => return Ended::Publisher(joined(done)),
            done = &mut s.slot_watch => return Ended::Failed(joined(done).err().unwrap_or_else(|| {
                Error::new(Kind::PgUnavailable, "the slot watch ended; reconnecting")
            })),
            Ok(()) = s.flushed.changed() => {
                confirm(&s.repl, *s.flushed.borrow_and_update());
                continue;
            }
            frame = s.repl.recv() => frame,
        };
        // Take what has already arrived (up to a batch) before handing it on: one channel send
        // and one wake-up of the publish stage per batch instead of per change. The frames are
        // taken off the source's channel first and transformed afterwards: when the script is
        // slower than the source (a backlog), the channel is full, and taking one frame at a
        // time between transforms woke the source's reader for every frame to put one more in
        // (a context switch per event in the drain benchmark with a custom script).
        s.frames.push(frame);
        while s.frames.len() < BATCH {
            match s.repl.recv().now_or_never() {
                Some(frame) => s.frames.push(frame),
                None => break,
            }
        }
        let mut frames = std::mem::take(&mut s.frames);
        for frame in frames.drain(..) {
            let frame = match frame {
                Ok(Some(frame)) => {
                    if let Some(wal_end) = frame.wal_end() {
                        metrics::server_wal_end(wal_end);
                    }
                    frame
                }
                Ok(None) => {
                    return Ended::Failed(Error::new(
                        Kind::PgUnavailable,
                        "the replication stream ended; reconnecting",
                    ));
                }
                Err(e) => return Ended::Failed(e),
            };
            if let Err(e) = s.transform.frame(frame, &mut s.items) {
                return Ended::Failed(e);
            }
            while !s.transform.missing_types().is_empty() {
                let missing = s.transform.missing_types().to_vec();
                match s.catalog.find(&missing).await {
                    Ok(found) => s.transform.found_types(found),
                    Err(e) => return Ended::Failed(e),
                }
            }
        }
        s.frames = frames;
        let batch = std::mem::take(&mut s.items);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ended::Shutdown,
            sent = s.tx.send(batch) => if sent.is_err() {
                return Ended::Publisher(joined((&mut s.publisher).await));
            },
        }
    }
}

/// End the session. After a shutdown: stop reading, let in-flight acks drain (up to
/// [`DRAIN_TIMEOUT`]), confirm the final flushed LSN. After a halt, whose acks the publish
/// stage has already let in: confirm. After a failure: nothing more is waited for — the next
/// session resumes from the confirmed LSN.
async fn drain(s: Session, ended: Ended) -> Result<()> {
    let Session {
        repl,
        tx,
        mut publisher,
        mut flushed,
        ..
    } = s;
    let halted = match ended {
        Ended::Failed(error) => return Err(error),
        Ended::Publisher(Ok(())) => {
            return Err(Error::new(
                Kind::NatsUnavailable,
                "the publish stage stopped; reconnecting",
            ));
        }
        Ended::Publisher(Err(error)) if error.kind() != Kind::Halted => return Err(error),
        Ended::Publisher(Err(halted)) => Some(halted),
        Ended::Shutdown => {
            drop(tx);
            match tokio::time::timeout(DRAIN_TIMEOUT, &mut publisher).await {
                Ok(done) => {
                    if let Err(e) = joined(done) {
                        tracing::warn!(error = %e, "publisher stopped with an error during shutdown");
                    }
                }
                Err(_) => tracing::warn!("in-flight acknowledgements did not drain within {DRAIN_TIMEOUT:?}"),
            }
            None
        }
    };
    let last = *flushed.borrow_and_update();
    confirm(&repl, last);
    repl.flush_confirmation(Duration::from_secs(5)).await;
    match halted {
        Some(error) => Err(error),
        None => {
            tracing::info!(confirmed = %last, "stopped");
            Ok(())
        }
    }
}

fn confirm(repl: &PgwireReplication, lsn: Lsn) {
    repl.confirm(lsn);
    metrics::confirmed(lsn);
}

/// A stage task's result, a panic in it as an error.
fn joined(done: std::result::Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    done.unwrap_or_else(|e| {
        Err(Error::new(
            Kind::NatsUnavailable,
            format!("a pipeline task failed: {e}"),
        ))
    })
}

/// The start line: versions and the effective settings, without secrets (passwords and tokens
/// are only said to be set; URL credentials are masked).
pub fn log_start(config: &Config) {
    let db = &config.database;
    let p = &config.publisher;
    let auth = if p.creds_file.is_some() {
        "credsFile"
    } else if p.nkey_seed_file.is_some() {
        "nkeySeedFile"
    } else if p.user.is_some() {
        "user/password"
    } else if p.token.is_some() {
        "token"
    } else {
        "none"
    };
    let http = match config.listener.server_port {
        0 => "off".to_string(),
        port if config.listener.server_host.is_empty() => format!("*:{port}"),
        port => format!("{}:{port}", config.listener.server_host),
    };
    let script = config
        .scripts
        .path
        .as_ref()
        .map_or_else(|| "built-in default".to_string(), |p| p.display().to_string());
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        slot = %config.listener.slot_name,
        publication = %config.listener.publication,
        database = %format!("{}@{}/{}", db.user, db.address(), db.name),
        ssl_mode = crate::source::tls::effective_mode(db).as_str(),
        database_password = if db.password.is_some() { "set" } else { "none" },
        publisher = ?p.kind,
        broker = %crate::publish::display_address(&p.address),
        broker_auth = auth,
        broker_tls = p.enable_tls || p.tls_ca_file.is_some() || p.address.contains("tls://") || p.address.starts_with("amqps://"),
        topic = %p.topic,
        script = %script,
        on_error = ?config.scripts.on_error,
        http = %http,
        "starting wal-listener"
    );
}
