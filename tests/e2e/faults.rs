//! Delivery guarantees under load and failure (SPEC §6): kill -9, NATS restart, PostgreSQL
//! restart, two instances on one slot, SIGTERM under load, oversize messages. After each, the
//! stream holds every committed change exactly once, in commit order.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::blocking;
use crate::support::service::{Service, Setup, wait_streaming};
use crate::support::{NatsServer, PgCluster, wait_until};

const DEADLINE: Duration = Duration::from_secs(90);

/// Inserts single-row transactions into `load(id)` until stopped, reconnecting when PostgreSQL
/// goes away. What committed is read back from the table afterwards (a commit whose answer was
/// lost in a restart may or may not have happened).
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    attempts: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    pub(crate) fn create_table(pg: &PgCluster) {
        pg.psql("CREATE TABLE load (id int8 PRIMARY KEY, at timestamptz DEFAULT now())");
    }

    /// Start inserting; call once the service streams, so every row is after the slot's start.
    pub(crate) fn start(pg: &PgCluster) -> Load {
        Load::start_on(vec![pg.conn_string("postgres")])
    }

    /// [`Load::start`] against the first of `conns` that takes writes: after a failure the
    /// next one is tried (a failover's new primary).
    pub(crate) fn start_on(conns: Vec<String>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(AtomicU64::new(0));
        let (stop2, attempts2) = (stop.clone(), attempts.clone());
        let task = tokio::spawn(async move {
            let mut next: i64 = 1;
            let mut turn = 0usize;
            while !stop2.load(Ordering::Relaxed) {
                let conn = &conns[turn % conns.len()];
                turn += 1;
                let Ok((client, connection)) = tokio_postgres::connect(conn, tokio_postgres::NoTls).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                tokio::spawn(connection);
                while !stop2.load(Ordering::Relaxed) {
                    attempts2.fetch_add(1, Ordering::Relaxed);
                    // A failed insert retries the same id: ids stay dense and ascending.
                    match client
                        .execute("INSERT INTO load (id) VALUES ($1) ON CONFLICT DO NOTHING", &[&next])
                        .await
                    {
                        Ok(_) => next += 1,
                        Err(_) => break,
                    }
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            }
        });
        Load { stop, attempts, task }
    }

    pub(crate) async fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        assert!(
            self.attempts.load(Ordering::Relaxed) > 50,
            "the load generator barely ran"
        );
    }
}

/// Fresh servers, the service streaming from its own slot, and an insert load started once it
/// streams (so every row is after the slot's start).
fn under_load(name: &str) -> (PgCluster, NatsServer, Setup, Service, Load) {
    let (pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    let setup = Setup::new(name);
    Load::create_table(&pg);
    let mut service = Service::start(&setup.yaml(&pg, &nats));
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));
    let load = Load::start(&pg);
    (pg, nats, setup, service, load)
}

/// Wait until the stream holds every committed row, then check: exactly once, in order.
pub(crate) async fn assert_exactly_once(pg: &PgCluster, nats: &NatsServer, setup: &Setup) -> usize {
    let committed: Vec<i64> = pg
        .psql("SELECT id FROM load ORDER BY id")
        .lines()
        .map(|l| l.trim().parse().unwrap_or_else(|_| panic!("id {l:?}")))
        .collect();
    assert!(!committed.is_empty());
    let (stream, want) = (setup.topic.as_str(), committed.len() as u64);
    wait_until("every committed row in the stream", DEADLINE, || async move {
        nats.stream_len(stream).await.unwrap_or(0) >= want
    })
    .await;
    let messages = nats.stream_messages(&setup.topic).await;
    let ids: HashSet<&str> = messages.iter().filter_map(|m| m.header("Nats-Msg-Id")).collect();
    assert_eq!(ids.len(), messages.len(), "a Nats-Msg-Id was stored twice");
    let published: Vec<i64> = messages
        .iter()
        .map(|m| m.json()["data"]["id"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(
        published.len(),
        committed.len(),
        "stream has {} messages for {} committed rows",
        published.len(),
        committed.len()
    );
    assert_eq!(
        published, committed,
        "the stream must hold each committed row once, in commit order"
    );
    committed.len()
}

/// Some milliseconds that differ from run to run (no RNG crate needed).
fn jitter(max_ms: u64) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    Duration::from_millis(u64::from(nanos) % max_ms)
}

pub(crate) async fn wait_for_growth(nats: &NatsServer, topic: &str, at_least: u64) {
    wait_until("the stream to grow", DEADLINE, || async move {
        nats.stream_len(topic).await.unwrap_or(0) >= at_least
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_twice_under_load_loses_and_duplicates_nothing() {
    let (pg, nats, setup, mut service, load) = under_load("kill9");
    for round in 1..=2u64 {
        wait_for_growth(&nats, &setup.topic, round * 200).await;
        tokio::time::sleep(jitter(300)).await;
        blocking(|| service.kill());
        tokio::time::sleep(jitter(500)).await;
        blocking(|| service.start_again());
    }
    let before = nats.stream_len(&setup.topic).await.unwrap_or(0);
    wait_for_growth(&nats, &setup.topic, before + 100).await;
    load.finish().await;
    assert_exactly_once(&pg, &nats, &setup).await;
    assert!(service.is_running());
    blocking(|| service.terminate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_outage_under_load_loses_and_duplicates_nothing() {
    let (pg, mut nats, setup, mut service, load) = under_load("natsdown");
    wait_for_growth(&nats, &setup.topic, 200).await;
    blocking(|| nats.kill());
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(4) {
        assert!(
            service.is_running(),
            "a NATS outage must not end the process; log:\n{}",
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    blocking(|| nats.start_again());
    let before = nats.stream_len(&setup.topic).await.unwrap_or(0);
    wait_for_growth(&nats, &setup.topic, before + 200).await;
    load.finish().await;
    assert_exactly_once(&pg, &nats, &setup).await;
    blocking(|| service.terminate());
}

/// A server that keeps the connection open but answers nothing (SIGSTOP: a hung broker, a
/// partition the TCP stack does not notice) must not stall the pipeline forever: after the ack
/// timeout the session is abandoned and replayed, and once the server answers again every row
/// arrives exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_nats_server_is_given_up_on_and_replayed_exactly_once() {
    let (pg, nats, setup, mut service, load) = under_load("natsfrozen");
    wait_for_growth(&nats, &setup.topic, 200).await;
    nats.signal("STOP");
    let frozen = Instant::now();
    let gave_up = loop {
        let log = service.log();
        if log.contains("JetStream acknowledged nothing for 10s") {
            break frozen.elapsed();
        }
        assert!(
            service.is_running(),
            "a frozen NATS must not end the process; log:\n{log}"
        );
        assert!(
            frozen.elapsed() < DEADLINE,
            "never gave up on the frozen server; log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(gave_up >= Duration::from_secs(9), "gave up after {gave_up:?}");
    nats.signal("CONT");
    let before = nats.stream_len(&setup.topic).await.unwrap_or(0);
    wait_for_growth(&nats, &setup.topic, before + 200).await;
    load.finish().await;
    assert_exactly_once(&pg, &nats, &setup).await;
    assert!(service.is_running());
    blocking(|| service.terminate());
}

/// Pointed at a server in recovery (a standby, or a failover not yet promoted), the service
/// keeps retrying instead of failing; once the server is promoted it sets up and streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_in_recovery_is_waited_for_until_promoted() {
    let (mut primary, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    primary.psql("CREATE TABLE t (id int4 PRIMARY KEY)");
    let standby = blocking(|| PgCluster::standby_of(&primary));
    let setup = Setup::new("recovery");
    let mut service = Service::start(&setup.yaml(&standby, &nats));
    wait_until("the service to notice recovery", DEADLINE, || {
        let log = service.log();
        async move { log.contains("is in recovery") }
    })
    .await;
    assert!(service.is_running(), "log:\n{}", service.log());
    // Failover: the primary goes away, the standby is promoted.
    blocking(|| {
        primary.stop();
        standby.promote();
    });
    blocking(|| wait_streaming(&standby, &setup.slot, &mut service));
    standby.psql("INSERT INTO t VALUES (1)");
    let messages = nats.wait_for_messages(&setup.topic, 1, DEADLINE).await;
    assert_eq!(messages[0].json()["data"]["id"], 1);
    blocking(|| service.terminate());
}

/// A slot dropped by someone while the service runs took the changes it held with it: the
/// service must not paper over that by creating a new slot on its next reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_dropped_while_running_is_a_fatal_error_not_a_new_slot() {
    let (pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    let setup = Setup::new("dropped");
    let mut service = Service::start(&setup.yaml(&pg, &nats));
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));
    let slot = &setup.slot;
    // End the service's walsender and drop the slot before its reconnect takes it again.
    pg.psql(&format!(
        "DO $$ BEGIN FOR i IN 1..100 LOOP
           PERFORM pg_terminate_backend(active_pid, 5000) FROM pg_replication_slots
             WHERE slot_name = '{slot}' AND active_pid IS NOT NULL;
           BEGIN
             PERFORM pg_drop_replication_slot('{slot}');
             RETURN;
           EXCEPTION WHEN object_in_use THEN PERFORM pg_sleep(0.01);
           END;
         END LOOP; RAISE 'the slot stayed in use'; END $$"
    ));
    let last = blocking(|| service.fatal_line(DEADLINE));
    assert!(
        last.starts_with(&format!(
            "wal-listener: replication slot \"{slot}\" disappeared while wal-listener was running"
        )),
        "{last}"
    );
    let recreated = pg.psql(&format!(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ));
    assert_eq!(
        recreated, "0",
        "the slot must not be recreated behind the operator's back"
    );
}

/// The same for the publication: recreating it FOR ALL TABLES could publish more than the
/// dropped one did, so the service stops and says what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_dropped_while_running_is_a_fatal_error() {
    let (pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    pg.psql("CREATE TABLE t (id int4 PRIMARY KEY)");
    let setup = Setup::new("droppub");
    let mut service = Service::start(&setup.yaml(&pg, &nats));
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));
    pg.psql(&format!("DROP PUBLICATION \"{}\"", setup.publication));
    pg.psql("INSERT INTO t VALUES (1)");
    let last = blocking(|| service.fatal_line(DEADLINE));
    // The same words whether PostgreSQL ends the stream (15–17) or the slot watch finds the
    // publication gone (18 streams on without it).
    assert!(
        last.starts_with(&format!(
            "wal-listener: publication \"{}\" disappeared while wal-listener was running",
            setup.publication
        )) && last.contains("recreate it with the tables it should publish"),
        "{last}"
    );
    let recreated = pg.psql(&format!(
        "SELECT count(*) FROM pg_publication WHERE pubname = '{}'",
        setup.publication
    ));
    assert_eq!(
        recreated, "0",
        "the publication must not be recreated behind the operator's back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_under_load_loses_and_duplicates_nothing() {
    let (mut pg, nats, setup, mut service, load) = under_load("pgrestart");
    wait_for_growth(&nats, &setup.topic, 200).await;
    blocking(|| pg.restart_fast());
    let before = nats.stream_len(&setup.topic).await.unwrap_or(0);
    wait_for_growth(&nats, &setup.topic, before + 200).await;
    assert!(
        service.is_running(),
        "a PostgreSQL restart must not end the process; log:\n{}",
        service.log()
    );
    load.finish().await;
    assert_exactly_once(&pg, &nats, &setup).await;
    blocking(|| service.terminate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_waits_as_standby_and_takes_over() {
    let (pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    let setup = Setup::new("standby");
    let yaml = setup.yaml(&pg, &nats);
    Load::create_table(&pg);
    let mut first = Service::start(&yaml);
    blocking(|| wait_streaming(&pg, &setup.slot, &mut first));
    let load = Load::start(&pg);
    let mut second = Service::start(&yaml);
    let logged = || second.log().contains("waiting as standby");
    blocking(|| crate::support::wait_until_sync("the second instance to report standby", DEADLINE, logged));
    assert!(second.is_running());
    wait_for_growth(&nats, &setup.topic, 200).await;
    assert_eq!(
        second.log().matches("waiting as standby").count(),
        1,
        "standby is logged once"
    );

    blocking(|| first.kill());
    let before = nats.stream_len(&setup.topic).await.unwrap_or(0);
    wait_for_growth(&nats, &setup.topic, before + 200).await;
    assert!(
        second.log().contains("streaming changes"),
        "the standby took over; log:\n{}",
        second.log()
    );
    load.finish().await;
    assert_exactly_once(&pg, &nats, &setup).await;
    blocking(|| second.terminate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_0_and_a_restart_resumes() {
    let (pg, nats, setup, mut service, load) = under_load("sigterm");
    wait_for_growth(&nats, &setup.topic, 300).await;
    let started = Instant::now();
    let status = blocking(|| service.terminate());
    assert!(
        status.success(),
        "SIGTERM exits 0 ({status:?}); log:\n{}",
        service.log()
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert!(service.log().contains("stopped"), "log:\n{}", service.log());
    blocking(|| service.start_again());
    let before = nats.stream_len(&setup.topic).await.unwrap_or(0);
    wait_for_growth(&nats, &setup.topic, before + 100).await;
    load.finish().await;
    assert_exactly_once(&pg, &nats, &setup).await;
    blocking(|| service.terminate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_message_goes_to_the_dead_letter_subject_and_the_stream_goes_on() {
    let (pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    pg.psql("CREATE TABLE docs (id int4 PRIMARY KEY, body text)");
    let setup = Setup::new("oversize");
    let mut service = Service::start(&setup.yaml(&pg, &nats));
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));
    // nats-server's default max_payload is 1 MiB.
    pg.psql("INSERT INTO docs VALUES (1, 'small'); INSERT INTO docs VALUES (2, repeat('x', 2000000)); INSERT INTO docs VALUES (3, 'after')");
    let messages = nats.wait_for_messages(&setup.topic, 3, DEADLINE).await;
    assert_eq!(messages[0].json()["data"]["id"], 1);
    assert_eq!(messages[1].subject, format!("{}.dead_letter", setup.topic));
    let error = messages[1].header("Wal-Error").unwrap_or_default();
    assert!(
        error.contains("max_payload") && error.contains("payload omitted"),
        "{error}"
    );
    assert_eq!(messages[1].header("Wal-Table"), Some("docs"));
    assert!(messages[1].payload.is_empty());
    assert_eq!(messages[2].json()["data"]["id"], 3);
    assert!(service.is_running());
    blocking(|| service.terminate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_larger_than_the_ack_window_streams_through() {
    let (pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    pg.psql("CREATE TABLE wide (id int4 PRIMARY KEY)");
    let setup = Setup::new("window");
    let yaml = setup
        .yaml(&pg, &nats)
        .replace("  type: nats\n", "  type: nats\n  maxInFlight: 4\n");
    let mut service = Service::start(&yaml);
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));
    pg.psql("INSERT INTO wide SELECT generate_series(1, 1000)");
    let messages = nats.wait_for_messages(&setup.topic, 1000, DEADLINE).await;
    let ids: Vec<i64> = messages
        .iter()
        .map(|m| m.json()["data"]["id"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(ids, (1..=1000).collect::<Vec<i64>>());
    blocking(|| service.terminate());
}
