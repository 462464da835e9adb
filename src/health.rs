//! What `/healthz` and `/ready` report ([`crate::http`]): the pipeline's phase and whether the
//! NATS client is connected.
//!
//! | phase | `/healthz` | `/ready` |
//! |---|---|---|
//! | starting (before the first session streams) | 200 | 503 |
//! | standby (another connection holds the slot) | 200 | 503 |
//! | streaming, NATS connected | 200 | 200 |
//! | streaming, NATS disconnected (the session ends and reconnects) | 503 | 503 |
//! | reconnecting (a session failed; retrying with backoff) | 503 | 503 |
//! | stopping (SIGTERM: draining in-flight acks) | 200 | 503 |
//! | streaming, but stalled (below) | 503 | 503 |
//!
//! *Stalled*: the slot's confirmed position has not moved for `listener.stallTimeout` while
//! the server's WAL grew past it — changes are pending and nothing gets through (the Go
//! version's "active for days with nothing published"). [`Progress`] decides it from the
//! slot polls ([`crate::source::slot_watch`]); a liveness probe on `/healthz` then restarts
//! the process.
//!
//! `/healthz` is "alive, and the connections are up" (SPEC §7); a standby is healthy — waiting
//! is its job. `/ready` is "streaming and publishing". The pipeline reports through the free
//! functions below; the state is process-wide, like the metrics.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::lsn::Lsn;

use crate::error::{Error, Kind};

/// Where the pipeline is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Standby,
    Streaming,
    Reconnecting,
    Stopping,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            1 => Phase::Standby,
            2 => Phase::Streaming,
            3 => Phase::Reconnecting,
            4 => Phase::Stopping,
            _ => Phase::Starting,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            Phase::Starting => 0,
            Phase::Standby => 1,
            Phase::Streaming => 2,
            Phase::Reconnecting => 3,
            Phase::Stopping => 4,
        }
    }
}

struct State {
    phase: AtomicU8,
    nats: AtomicBool,
    /// Which NATS client the connection flag belongs to: events of a dropped client that
    /// arrive late must not overwrite the current one's.
    nats_generation: AtomicU64,
    /// Why the pipeline is not streaming (the last transient failure), for the probe bodies.
    reason: Mutex<String>,
    /// Why the stream counts as stalled, if it does.
    stalled: Mutex<Option<String>>,
}

static STATE: State = State {
    phase: AtomicU8::new(0),
    nats: AtomicBool::new(false),
    nats_generation: AtomicU64::new(0),
    reason: Mutex::new(String::new()),
    stalled: Mutex::new(None),
};

/// Whether the slot's confirmed position keeps up: fed each slot poll, process-wide so that
/// sessions ending and starting do not hide a stall.
#[derive(Debug)]
pub struct Progress {
    confirmed: Lsn,
    /// When `confirmed` last moved, or changes stopped being pending.
    since: Instant,
    /// The server's WAL end at that moment.
    wal_end_then: Lsn,
    stalled: bool,
}

/// What one poll concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Moving, or nothing pending.
    Fine,
    /// Changes pending without progress for this long (below the timeout).
    Pending(Duration),
    /// Stalled: the reason for the probe body and the log.
    Stalled(Duration, String),
}

impl Progress {
    pub fn new(confirmed: Lsn, wal_end: Lsn, now: Instant) -> Progress {
        Progress {
            confirmed,
            since: now,
            wal_end_then: wal_end,
            stalled: false,
        }
    }

    /// One poll: the slot's `confirmed_flush_lsn` and the server's WAL end.
    pub fn observe(&mut self, confirmed: Lsn, wal_end: Lsn, now: Instant, timeout: Duration) -> Verdict {
        let pending = wal_end > confirmed;
        if confirmed != self.confirmed || !pending {
            *self = Progress::new(confirmed, wal_end, now);
            return Verdict::Fine;
        }
        let waited = now.saturating_duration_since(self.since);
        if !timeout.is_zero() && waited >= timeout && wal_end > self.wal_end_then {
            self.stalled = true;
            return Verdict::Stalled(
                waited,
                format!(
                    "stalled: the slot's confirmed position {confirmed} has not moved for {}s while the server's WAL grew to {wal_end} ({} bytes pending; listener.stallTimeout {}s)",
                    waited.as_secs(),
                    wal_end.0.saturating_sub(confirmed.0),
                    timeout.as_secs()
                ),
            );
        }
        Verdict::Pending(waited)
    }
}

/// The stream is stalled (`Some(reason)`), or moving again (`None`). Logged on each change.
pub fn stalled(reason: Option<String>) {
    let mut stalled = STATE.stalled.lock().unwrap_or_else(|e| e.into_inner());
    match (&*stalled, &reason) {
        (None, Some(why)) => tracing::error!(reason = %why, "replication stalled: /healthz reports unhealthy"),
        (Some(_), None) => tracing::info!("replication moves again: /healthz healthy"),
        _ => {}
    }
    *stalled = reason;
}

fn set_phase(phase: Phase) {
    // Stopping is final: a session failing while the process drains does not undo it.
    let _ = STATE
        .phase
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
            (Phase::from_u8(current) != Phase::Stopping).then_some(phase.as_u8())
        });
}

fn set_reason(text: &str) {
    let mut reason = STATE.reason.lock().unwrap_or_else(|e| e.into_inner());
    reason.clear();
    reason.push_str(text);
}

/// The current phase.
pub fn phase() -> Phase {
    Phase::from_u8(STATE.phase.load(Ordering::Acquire))
}

/// Another connection holds the slot; this instance waits to take over.
pub fn standby(slot: &str) {
    set_reason(&format!(
        "standby: replication slot {slot} is in use by another connection"
    ));
    set_phase(Phase::Standby);
}

/// The replication stream started.
pub fn streaming() {
    set_reason("");
    set_phase(Phase::Streaming);
}

/// A session failed with a transient error and will be retried.
pub fn reconnecting(cause: &Error) {
    // A standby's failing attempts to take the slot keep it a standby.
    if phase() == Phase::Standby && cause.kind() == Kind::SlotBusy {
        return;
    }
    set_reason(&format!("reconnecting: {cause}"));
    set_phase(Phase::Reconnecting);
}

/// Shutdown started: not ready any more, still healthy while draining.
pub fn stopping() {
    set_phase(Phase::Stopping);
}

/// A new NATS client is being connected; its connection events report through the returned
/// handle.
pub fn nats_client() -> NatsHandle {
    let generation = STATE.nats_generation.fetch_add(1, Ordering::AcqRel) + 1;
    STATE.nats.store(false, Ordering::Release);
    NatsHandle { generation }
}

/// Reports one NATS client's connection state.
#[derive(Debug, Clone, Copy)]
pub struct NatsHandle {
    generation: u64,
}

impl NatsHandle {
    /// The client (re)connected (`true`) or lost its connection (`false`).
    pub fn connected(&self, up: bool) {
        if STATE.nats_generation.load(Ordering::Acquire) == self.generation {
            STATE.nats.store(up, Ordering::Release);
        }
    }
}

/// Whether the current NATS client is connected.
pub fn nats_connected() -> bool {
    STATE.nats.load(Ordering::Acquire)
}

/// What the probes answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub healthy: bool,
    pub ready: bool,
    /// One line for the response body: `ok`, or why not.
    pub detail: String,
}

/// The probes' view of the current state.
pub fn report() -> Report {
    let phase = phase();
    let nats = nats_connected();
    let reason = STATE.reason.lock().map(|r| r.clone()).unwrap_or_default();
    let stalled = STATE.stalled.lock().map(|s| s.clone()).unwrap_or_default();
    let (healthy, ready, detail) = match phase {
        Phase::Streaming if stalled.is_some() => (false, false, stalled.unwrap_or_default()),
        Phase::Starting => (true, false, "starting: connecting to PostgreSQL and NATS".to_string()),
        Phase::Standby => (true, false, reason),
        Phase::Streaming if nats => (true, true, "ok: streaming".to_string()),
        Phase::Streaming => (
            false,
            false,
            "NATS disconnected: the client is reconnecting".to_string(),
        ),
        Phase::Reconnecting => (false, false, reason),
        Phase::Stopping => (true, false, "stopping: draining in-flight acknowledgements".to_string()),
    };
    Report { healthy, ready, detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_is_no_progress_while_wal_grows() {
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut p = Progress::new(Lsn(100), Lsn(100), t0);
        // Idle: nothing pending, however long.
        assert_eq!(p.observe(Lsn(100), Lsn(100), at(600), minute), Verdict::Fine);
        // Pending and growing, but moving: fine.
        assert_eq!(
            p.observe(Lsn(100), Lsn(200), at(610), minute),
            Verdict::Pending(Duration::from_secs(10))
        );
        assert_eq!(p.observe(Lsn(150), Lsn(300), at(620), minute), Verdict::Fine);
        // Stuck at 150 while WAL grows: stalled once the timeout has passed.
        assert_eq!(
            p.observe(Lsn(150), Lsn(400), at(650), minute),
            Verdict::Pending(Duration::from_secs(30))
        );
        match p.observe(Lsn(150), Lsn(500), at(681), minute) {
            Verdict::Stalled(waited, why) => {
                assert_eq!(waited, Duration::from_secs(61));
                assert!(
                    why.contains("stallTimeout") && why.contains("350 bytes pending"),
                    "{why}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Zero turns the check off.
        assert_eq!(
            p.observe(Lsn(150), Lsn(600), at(900), Duration::ZERO),
            Verdict::Pending(Duration::from_secs(280))
        );
        // Moving again.
        assert_eq!(p.observe(Lsn(600), Lsn(600), at(901), minute), Verdict::Fine);
    }

    /// The state is process-wide; this one test walks it through every transition in order.
    #[test]
    fn probes_follow_the_pipeline() {
        assert!(!report().ready);
        let nats = nats_client();
        nats.connected(true);
        streaming();
        assert_eq!(
            report(),
            Report {
                healthy: true,
                ready: true,
                detail: "ok: streaming".into()
            }
        );

        nats.connected(false);
        let r = report();
        assert!(!r.healthy && !r.ready && r.detail.contains("NATS"), "{r:?}");

        // A late event from an old client does not count once a new one exists.
        let newer = nats_client();
        nats.connected(true);
        assert!(!nats_connected());
        newer.connected(true);
        assert!(report().ready);

        reconnecting(&Error::new(Kind::PgUnavailable, "PostgreSQL: connection refused"));
        let r = report();
        assert!(
            !r.healthy && !r.ready && r.detail == "reconnecting: PostgreSQL: connection refused",
            "{r:?}"
        );

        standby("s1");
        reconnecting(&Error::new(
            Kind::SlotBusy,
            "replication slot \"s1\" is active for PID 42",
        ));
        let r = report();
        assert!(r.healthy && !r.ready && r.detail.contains("standby"), "{r:?}");

        streaming();
        stalled(Some("stalled: nothing moves".into()));
        let r = report();
        assert!(!r.healthy && !r.ready && r.detail == "stalled: nothing moves", "{r:?}");
        stalled(None);
        assert!(report().healthy);

        stopping();
        streaming();
        reconnecting(&Error::new(Kind::NatsUnavailable, "late failure"));
        let r = report();
        assert_eq!(phase(), Phase::Stopping);
        assert!(r.healthy && !r.ready, "{r:?}");
    }
}
