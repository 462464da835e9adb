//! Prometheus metrics, served as text on `/metrics` ([`crate::http`]).
//!
//! The pipeline reports through the free functions below — one call at each point where
//! something worth counting happens — into one process-wide registry, so no stage has to carry
//! a handle. What is exported:
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `published_events_total` | counter | `app`, `subject`, `table` | messages JetStream acknowledged (Go name) |
//! | `filter_skipped_events_total` | counter | `app`, `table` | events the script dropped (Go name) |
//! | `problematic_events_total` | counter | `app`, `kind` | `script` errors, `publish` failures, unparsable `value`s (Go name) |
//! | `wal_listener_replication_lag_bytes` | gauge | | server WAL end − confirmed LSN |
//! | `wal_listener_confirmed_lsn` | gauge | | last LSN confirmed to PostgreSQL, as a number |
//! | `wal_listener_server_wal_end_lsn` | gauge | | newest server WAL end seen (keepalives and data) |
//! | `wal_listener_events_in_flight` | gauge | | messages sent and not yet acknowledged |
//! | `wal_listener_publish_latency_seconds` | histogram | | commit time → PubAck |
//! | `wal_listener_script_errors_total` | counter | `app`, `table` | events the script failed on (or too large to publish), per table |
//! | `wal_listener_script_reloads_total` | counter | `result` (`ok`, `error`) | script reloads |
//! | `wal_listener_reconnects_total` | counter | | sessions ended by a transient failure |
//! | `wal_listener_jetstream_unavailable_total` | counter | | publishes and JetStream requests answered "no responders" (JetStream stopping, starting, electing a leader, or not enabled) |
//! | `wal_listener_unroutable_dropped_total` | counter | | RabbitMQ messages routed to no queue and dropped (`publisher.unroutable: drop`) |
//! | `wal_listener_ready`, `wal_listener_nats_connected` | gauge | | 1 or 0, as `/ready` and the broker client (NATS, or RabbitMQ with `type: rabbitmq`) see it |
//! | `wal_listener_slot_retained_wal_bytes` | gauge | | WAL the slot holds on the server: its `restart_lsn` to the current WAL end (polled every `heartbeatInterval`) |
//! | `wal_listener_slot_safe_wal_size_bytes` | gauge | | `safe_wal_size`: WAL that may still be written before `max_slot_wal_keep_size` invalidates the slot; −1 without a limit |
//! | `wal_listener_slot_wal_status` | gauge | `status` | 1 for the slot's `wal_status` (`reserved`, `extended`, `unreserved`, `lost`), 0 for the others |
//! | `wal_listener_slot_stalled_seconds` | gauge | | time since the slot's confirmed position last moved while changes are pending (0 when it moves or nothing is pending) |
//! | `wal_listener_backfill_rows_total` | counter | `table` | READ events of backfills, acknowledged |
//! | `wal_listener_backfill_chunks_total` | counter | `table` | backfill chunks done |
//! | `wal_listener_backfills_running` | gauge | | backfills being read now (0 or 1) |
//! | `wal_listener_backfill_rows_left` | gauge | | rows the running backfill still has to read (estimate from `pg_class.reltuples`) |
//!
//! Label cardinality is bounded: subjects are chosen by scripts and could be unbounded (a
//! subject per customer), so each labelled family keeps at most [`MAX_SERIES`] label sets;
//! further ones are counted under `_other` (and that is logged once).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use rustc_hash::FxHashMap;

use crate::lsn::Lsn;

/// Label sets per family beyond which new ones are folded into `_other`.
pub const MAX_SERIES: usize = 1000;
/// The Go wal-listener's `app` label value, kept so existing dashboards match.
const APP: &str = "wal-listener";
const OTHER: &str = "_other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PublishedLabels {
    app: &'static str,
    subject: String,
    table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    app: &'static str,
    table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    app: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

/// The values `pg_replication_slots.wal_status` takes.
const WAL_STATUSES: [&str; 4] = ["reserved", "extended", "unreserved", "lost"];

struct Metrics {
    registry: Registry,
    published: Family<PublishedLabels, Counter>,
    filtered: Family<TableLabels, Counter>,
    problematic: Family<KindLabels, Counter>,
    lag_bytes: Gauge,
    confirmed_lsn: Gauge,
    server_wal_end: Gauge,
    in_flight: Gauge,
    latency: Histogram,
    script_errors: Family<TableLabels, Counter>,
    script_reloads: Family<ResultLabels, Counter>,
    reconnects: Counter,
    jetstream_unavailable: Counter,
    unroutable_dropped: Counter,
    ready: Gauge,
    nats_connected: Gauge,
    slot_retained: Gauge,
    slot_safe_wal_size: Gauge,
    slot_wal_status: Family<StatusLabels, Gauge>,
    slot_stalled: Gauge,
    backfill_rows: Family<TableLabels, Counter>,
    backfill_chunks: Family<TableLabels, Counter>,
    backfills_running: Gauge,
    backfill_rows_left: Gauge,
    /// Raw LSNs (u64) behind the gauges, so the lag is computed without float rounding.
    confirmed_raw: AtomicU64,
    wal_end_raw: AtomicU64,
    published_series: AtomicUsize,
    filtered_series: AtomicUsize,
    script_error_series: AtomicUsize,
    overflow_logged: AtomicBool,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            published: Family::default(),
            filtered: Family::default(),
            problematic: Family::default(),
            lag_bytes: Gauge::default(),
            confirmed_lsn: Gauge::default(),
            server_wal_end: Gauge::default(),
            in_flight: Gauge::default(),
            // 1 ms … ~65 s.
            latency: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            script_errors: Family::default(),
            script_reloads: Family::default(),
            reconnects: Counter::default(),
            jetstream_unavailable: Counter::default(),
            unroutable_dropped: Counter::default(),
            ready: Gauge::default(),
            nats_connected: Gauge::default(),
            slot_retained: Gauge::default(),
            slot_safe_wal_size: Gauge::default(),
            slot_wal_status: Family::default(),
            slot_stalled: Gauge::default(),
            backfill_rows: Family::default(),
            backfill_chunks: Family::default(),
            backfills_running: Gauge::default(),
            backfill_rows_left: Gauge::default(),
            confirmed_raw: AtomicU64::new(0),
            wal_end_raw: AtomicU64::new(0),
            published_series: AtomicUsize::new(0),
            filtered_series: AtomicUsize::new(0),
            script_error_series: AtomicUsize::new(0),
            overflow_logged: AtomicBool::new(false),
        };
        // Counters get `_total` appended by the encoder.
        registry.register(
            "published_events",
            "Messages acknowledged by JetStream",
            m.published.clone(),
        );
        registry.register(
            "filter_skipped_events",
            "Events the routing script dropped",
            m.filtered.clone(),
        );
        registry.register(
            "problematic_events",
            "Events that failed: script errors, publish failures, unparsable values",
            m.problematic.clone(),
        );
        registry.register(
            "wal_listener_replication_lag_bytes",
            "Server WAL end minus the confirmed LSN: WAL the slot still holds",
            m.lag_bytes.clone(),
        );
        registry.register(
            "wal_listener_confirmed_lsn",
            "Last LSN confirmed (flushed) to PostgreSQL",
            m.confirmed_lsn.clone(),
        );
        registry.register(
            "wal_listener_server_wal_end_lsn",
            "Newest server WAL end reported by the replication stream",
            m.server_wal_end.clone(),
        );
        registry.register(
            "wal_listener_events_in_flight",
            "Messages sent to NATS and not yet acknowledged",
            m.in_flight.clone(),
        );
        registry.register(
            "wal_listener_publish_latency_seconds",
            "Time from the transaction's commit to the JetStream acknowledgement",
            m.latency.clone(),
        );
        registry.register(
            "wal_listener_script_errors",
            "Routing script calls that failed",
            m.script_errors.clone(),
        );
        registry.register(
            "wal_listener_script_reloads",
            "Routing script reloads, by result",
            m.script_reloads.clone(),
        );
        registry.register(
            "wal_listener_reconnects",
            "Sessions ended by a transient failure and retried",
            m.reconnects.clone(),
        );
        registry.register(
            "wal_listener_jetstream_unavailable",
            "Publishes and JetStream requests answered no responders (JetStream stopping, starting, electing a leader, or not enabled)",
            m.jetstream_unavailable.clone(),
        );
        registry.register(
            "wal_listener_unroutable_dropped",
            "RabbitMQ messages routed to no queue and dropped (publisher.unroutable: drop)",
            m.unroutable_dropped.clone(),
        );
        registry.register(
            "wal_listener_ready",
            "1 while streaming and publishing (as /ready)",
            m.ready.clone(),
        );
        registry.register(
            "wal_listener_nats_connected",
            "1 while the NATS client is connected",
            m.nats_connected.clone(),
        );
        registry.register(
            "wal_listener_slot_retained_wal_bytes",
            "WAL the replication slot holds on the server: restart_lsn to the current WAL end",
            m.slot_retained.clone(),
        );
        registry.register(
            "wal_listener_slot_safe_wal_size_bytes",
            "safe_wal_size of the slot: WAL that may be written before max_slot_wal_keep_size invalidates it (-1: no limit)",
            m.slot_safe_wal_size.clone(),
        );
        registry.register(
            "wal_listener_slot_wal_status",
            "1 for the slot's wal_status (reserved, extended, unreserved, lost)",
            m.slot_wal_status.clone(),
        );
        registry.register(
            "wal_listener_slot_stalled_seconds",
            "Seconds since the slot's confirmed position last moved while changes are pending",
            m.slot_stalled.clone(),
        );
        registry.register(
            "wal_listener_backfill_rows",
            "READ events of backfills, acknowledged",
            m.backfill_rows.clone(),
        );
        registry.register(
            "wal_listener_backfill_chunks",
            "Backfill chunks done",
            m.backfill_chunks.clone(),
        );
        registry.register(
            "wal_listener_backfills_running",
            "Backfills being read now",
            m.backfills_running.clone(),
        );
        registry.register(
            "wal_listener_backfill_rows_left",
            "Rows the running backfill still has to read (estimate)",
            m.backfill_rows_left.clone(),
        );
        m.slot_safe_wal_size.set(-1);
        // Series that alerts refer to exist from the start, at 0.
        for kind in ["script", "publish", "value"] {
            drop(m.problematic.get_or_create(&KindLabels { app: APP, kind }));
        }
        for result in ["ok", "error"] {
            drop(m.script_reloads.get_or_create(&ResultLabels { result }));
        }
        Metrics { registry, ..m }
    }

    /// Increment `labels`' counter in `family` (see [`Metrics::bounded_counter`]).
    fn inc_bounded<S: Clone + std::hash::Hash + Eq>(
        &self,
        family: &Family<S, Counter>,
        series: &AtomicUsize,
        labels: &S,
        other: impl FnOnce() -> S,
    ) {
        self.bounded_counter(family, series, labels, other).inc();
    }

    /// `labels`' counter in `family`, or the `_other` one once the family holds
    /// [`MAX_SERIES`] label sets (`series` counts them; a race may let it overshoot by a few).
    fn bounded_counter<S: Clone + std::hash::Hash + Eq>(
        &self,
        family: &Family<S, Counter>,
        series: &AtomicUsize,
        labels: &S,
        other: impl FnOnce() -> S,
    ) -> Counter {
        if let Some(counter) = family.get(labels) {
            return counter.clone();
        }
        if series.fetch_add(1, Ordering::Relaxed) < MAX_SERIES {
            return family.get_or_create(labels).clone();
        }
        if !self.overflow_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                limit = MAX_SERIES,
                "a metric has more label values than the limit; further ones are counted as {OTHER:?} (do scripts put ids in subjects?)"
            );
        }
        family.get_or_create(&other()).clone()
    }
}

/// The metrics in Prometheus text format, with the probes' state (`ready`, as `/ready`
/// answers, and whether the NATS client is connected) for the two gauges that show it.
pub fn render(ready: bool, nats_connected: bool) -> String {
    let m = &*METRICS;
    let confirmed = m.confirmed_raw.load(Ordering::Relaxed);
    let wal_end = m.wal_end_raw.load(Ordering::Relaxed);
    m.lag_bytes.set(gauge_value(wal_end.saturating_sub(confirmed)));
    m.ready.set(i64::from(ready));
    m.nats_connected.set(i64::from(nats_connected));
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &m.registry).is_err() {
        out.clear();
    }
    out
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// PostgreSQL was told everything up to `lsn` is flushed.
pub fn confirmed(lsn: Lsn) {
    let m = &*METRICS;
    m.confirmed_raw.store(lsn.0, Ordering::Relaxed);
    m.confirmed_lsn.set(gauge_value(lsn.0));
}

/// The server reported its WAL end (keepalive or data message); only moves forward.
pub fn server_wal_end(lsn: Lsn) {
    let m = &*METRICS;
    let previous = m.wal_end_raw.fetch_max(lsn.0, Ordering::Relaxed);
    if lsn.0 > previous {
        m.server_wal_end.set(gauge_value(lsn.0));
    }
}

/// What a poll of `pg_replication_slots` found.
pub fn slot(retained_bytes: Option<i64>, safe_wal_size: Option<i64>, wal_status: Option<&str>) {
    let m = &*METRICS;
    m.slot_retained.set(retained_bytes.unwrap_or(0).max(0));
    m.slot_safe_wal_size.set(safe_wal_size.unwrap_or(-1));
    for status in WAL_STATUSES {
        m.slot_wal_status
            .get_or_create(&StatusLabels { status })
            .set(i64::from(wal_status == Some(status)));
    }
}

/// How long the slot has not moved while changes are pending.
pub fn slot_stalled(waited: std::time::Duration) {
    METRICS.slot_stalled.set(gauge_value(waited.as_secs()));
}

/// The routing script dropped an event of `table`.
pub fn filtered(table: &str) {
    let m = &*METRICS;
    inc_table(&m.filtered, &m.filtered_series, table);
}

/// Count one event of `table` in a per-table family, folding tables past the cap into `_other`.
fn inc_table(family: &Family<TableLabels, Counter>, series: &AtomicUsize, table: &str) {
    let labels = TableLabels {
        app: APP,
        table: table.to_string(),
    };
    METRICS.inc_bounded(family, series, &labels, || TableLabels {
        app: APP,
        table: OTHER.into(),
    });
}

/// Something went wrong with one event: `script`, `publish`, `value`.
pub fn problem(kind: &'static str) {
    problems(kind, 1);
}

/// `n` problems of one kind (none: nothing to do).
pub fn problems(kind: &'static str, n: u64) {
    if n > 0 {
        METRICS
            .problematic
            .get_or_create(&KindLabels { app: APP, kind })
            .inc_by(n);
    }
}

/// An event of `table` could not be published as routed — the script failed on it or a message
/// was too large — whatever `scripts.onError` then does.
pub fn script_error(table: &str) {
    let m = &*METRICS;
    inc_table(&m.script_errors, &m.script_error_series, table);
    problem("script");
}

/// A new script version was loaded (`ok`) or rejected (`!ok`).
pub fn script_reload(ok: bool) {
    let result = if ok { "ok" } else { "error" };
    METRICS.script_reloads.get_or_create(&ResultLabels { result }).inc();
}

/// A session ended by a transient failure and will be retried.
pub fn reconnect() {
    METRICS.reconnects.inc();
}

/// JetStream answered "no responders": to a publish, or to an API request.
pub fn jetstream_unavailable() {
    METRICS.jetstream_unavailable.inc();
}

/// A backfill chunk of `table` is done: `rows` READ events acknowledged.
pub fn backfill_chunk(table: &str, rows: usize) {
    let labels = TableLabels {
        app: APP,
        table: table.to_string(),
    };
    METRICS.backfill_chunks.get_or_create(&labels).inc();
    METRICS.backfill_rows.get_or_create(&labels).inc_by(rows as u64);
}

/// Whether a backfill is being read, and how many rows it has left (estimate).
pub fn backfill_running(running: bool, rows_left: u64) {
    METRICS.backfills_running.set(i64::from(running));
    METRICS
        .backfill_rows_left
        .set(i64::try_from(rows_left).unwrap_or(i64::MAX));
}

/// RabbitMQ routed a message to no queue and `publisher.unroutable: drop` dropped it.
pub fn unroutable_dropped() {
    METRICS.unroutable_dropped.inc();
}

/// Handles on `published_events_total`'s counters by subject and table, so counting a
/// published message needs no label strings and no family lookup. One per publisher; bounded
/// like the family (a script that puts ids in subjects would otherwise grow it forever).
#[derive(Default)]
pub struct PublishedCounters {
    /// FxHash: with SipHash, looking up subject and table cost 860 instructions a message
    /// (callgrind, messages spread over 16 subjects, where the last-subject shortcut misses);
    /// now about 390.
    by_subject: FxHashMap<Arc<str>, FxHashMap<String, Counter>>,
    entries: usize,
    /// The last subject and table and their counter: runs of messages to one subject are the
    /// rule, and comparing two short strings is cheaper than hashing them.
    last: Option<(Arc<str>, String, Counter)>,
}

impl PublishedCounters {
    /// Start tracking a message to `subject` from a change of `table` committed at
    /// `commit_time` (PostgreSQL epoch microseconds): in flight until acknowledged or dropped.
    pub fn start(&mut self, subject: &str, table: &str, commit_time: i64) -> Delivery {
        METRICS.in_flight.inc();
        if let Some((s, t, counter)) = &self.last
            && **s == *subject
            && t == table
        {
            return Delivery {
                counter: counter.clone(),
                subject: s.clone(),
                commit_time,
                _in_flight: InFlight,
            };
        }
        if self.entries >= 2 * MAX_SERIES {
            self.by_subject.clear();
            self.last = None;
            self.entries = 0;
        }
        let (subject, counter) = match self.by_subject.get_key_value(subject) {
            Some((key, tables)) if tables.contains_key(table) => (key.clone(), tables[table].clone()),
            found => {
                let key = found.map_or_else(|| Arc::<str>::from(subject), |(key, _)| key.clone());
                let m = &*METRICS;
                let labels = PublishedLabels {
                    app: APP,
                    subject: subject.to_string(),
                    table: table.to_string(),
                };
                let counter = m.bounded_counter(&m.published, &m.published_series, &labels, || PublishedLabels {
                    app: APP,
                    subject: OTHER.into(),
                    table: OTHER.into(),
                });
                self.entries += 1;
                self.by_subject
                    .entry(key.clone())
                    .or_default()
                    .insert(table.to_string(), counter.clone());
                (key, counter)
            }
        };
        match &mut self.last {
            // Reuse the table's buffer: alternating subjects must not allocate each time.
            Some((s, t, c)) => {
                *s = subject.clone();
                t.clear();
                t.push_str(table);
                *c = counter.clone();
            }
            None => self.last = Some((subject.clone(), table.to_string(), counter.clone())),
        }
        Delivery {
            counter,
            subject,
            commit_time,
            _in_flight: InFlight,
        }
    }
}

/// One message on its way: in flight from [`PublishedCounters::start`] until
/// [`Delivery::acknowledged`] counts it, or until it is dropped (abandoned, not counted).
pub struct Delivery {
    counter: Counter,
    subject: Arc<str>,
    /// Commit time, microseconds since 2000-01-01 UTC.
    commit_time: i64,
    _in_flight: InFlight,
}

impl Delivery {
    /// The message was stored: count it and its commit → ack latency.
    pub fn acknowledged(self) {
        self.counter.inc();
        if let Some(seconds) = seconds_since_commit(self.commit_time) {
            METRICS.latency.observe(seconds);
        }
    }

    /// The subject the message was published to.
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

/// Decrements the in-flight gauge when the tracked message is done with, however that ends.
struct InFlight;

impl Drop for InFlight {
    fn drop(&mut self) {
        METRICS.in_flight.dec();
    }
}

fn seconds_since_commit(commit_time: i64) -> Option<f64> {
    // A clock behind the server's gives a negative age: count it as immediate.
    let micros = crate::pg_time::now().saturating_sub(commit_time).max(0);
    Some(micros as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now_pg_micros() -> i64 {
        crate::pg_time::now()
    }

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn an_acknowledged_message_is_counted_with_its_labels_and_latency() {
        let mut counters = PublishedCounters::default();
        let tracked = counters.start("unit.acked_subject", "acked_table", now_pg_micros() - 250_000);
        let text = render(false, false);
        assert!(
            line(&text, "wal_listener_events_in_flight ").is_some_and(|l| l != "wal_listener_events_in_flight 0"),
            "{text}"
        );
        tracked.acknowledged();
        let text = render(false, false);
        assert_eq!(
            line(
                &text,
                "published_events_total{app=\"wal-listener\",subject=\"unit.acked_subject\""
            ),
            Some("published_events_total{app=\"wal-listener\",subject=\"unit.acked_subject\",table=\"acked_table\"} 1"),
            "{text}"
        );
        // Only this test observes a latency: its 250 ms lands above the 0.128 s bucket.
        let bucket = |le: &str| {
            line(
                &text,
                &format!("wal_listener_publish_latency_seconds_bucket{{le=\"{le}\"}} "),
            )
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
        };
        assert!(bucket("0.512") > bucket("0.128"), "{text}");
    }

    #[test]
    fn an_abandoned_message_is_not_counted_as_published() {
        let mut counters = PublishedCounters::default();
        drop(counters.start("unit.abandoned_subject", "t", 0));
        let text = render(false, false);
        assert!(
            line(
                &text,
                "published_events_total{app=\"wal-listener\",subject=\"unit.abandoned_subject\""
            )
            .is_some_and(|l| l.ends_with(" 0")),
            "{text}"
        );
    }

    #[test]
    fn counters_are_shared_between_publishers_and_cached() {
        let mut a = PublishedCounters::default();
        let mut b = PublishedCounters::default();
        a.start("unit.shared", "t1", 0).acknowledged();
        a.start("unit.shared", "t1", 0).acknowledged();
        b.start("unit.shared", "t1", 0).acknowledged();
        a.start("unit.shared", "t2", 0).acknowledged();
        assert_eq!(a.entries, 2);
        let text = render(false, false);
        assert_eq!(
            line(
                &text,
                "published_events_total{app=\"wal-listener\",subject=\"unit.shared\",table=\"t1\"}"
            ),
            Some("published_events_total{app=\"wal-listener\",subject=\"unit.shared\",table=\"t1\"} 3"),
            "{text}"
        );
    }

    #[test]
    fn lag_is_wal_end_minus_confirmed_and_wal_end_never_goes_back() {
        server_wal_end(Lsn(0x1_0000_0500));
        server_wal_end(Lsn(0x1_0000_0100));
        confirmed(Lsn(0x1_0000_0400));
        let text = render(false, false);
        // Other tests share the registry; these values are only ever set by this test.
        assert!(text.contains("wal_listener_server_wal_end_lsn 4294968576"), "{text}");
        assert!(text.contains("wal_listener_replication_lag_bytes 256"), "{text}");
        assert!(text.contains("wal_listener_confirmed_lsn 4294968320"), "{text}");
    }

    #[test]
    fn label_sets_are_bounded() {
        for n in 0..MAX_SERIES + 5 {
            filtered(&format!("bounded_{n}"));
        }
        let text = render(false, false);
        let series = text
            .lines()
            .filter(|l| l.starts_with("filter_skipped_events_total{"))
            .count();
        assert!(series <= MAX_SERIES + 1, "{series} series");
        assert!(
            text.contains("filter_skipped_events_total{app=\"wal-listener\",table=\"_other\"}"),
            "{text}"
        );
    }

    #[test]
    fn commit_age_is_never_negative() {
        assert_eq!(seconds_since_commit(now_pg_micros() + 10_000_000), Some(0.0));
        let age = seconds_since_commit(now_pg_micros() - 2_000_000).expect("age");
        assert!((1.9..10.0).contains(&age), "{age}");
    }

    #[test]
    fn script_errors_are_counted_per_table() {
        script_error("unit.failing_table");
        script_error("unit.failing_table");
        let text = render(false, false);
        assert_eq!(
            line(
                &text,
                "wal_listener_script_errors_total{app=\"wal-listener\",table=\"unit.failing_table\"}"
            ),
            Some("wal_listener_script_errors_total{app=\"wal-listener\",table=\"unit.failing_table\"} 2"),
            "{text}"
        );
    }
}
