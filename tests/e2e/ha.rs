//! High availability (issue 13): a JetStream R3 cluster losing nodes, a PostgreSQL failover
//! with a failover slot (PostgreSQL 17+), and slot safety — invalidation, stalls, and a slot
//! that keeps up while tables outside the publication are written. Each fault test runs under
//! continuous load and ends with every committed row in the stream exactly once, in commit
//! order, and the service still running.

use std::time::{Duration, Instant};

use crate::faults::{Load, assert_exactly_once, wait_for_growth};
use crate::support::http::{get, sample};
use crate::support::service::{Service, Setup, check_connect, confirmed_flush, parse_lsn, wait_streaming};
use crate::support::{NatsCluster, NatsServer, PgCluster, blocking, free_port, wait_until};

const DEADLINE: Duration = Duration::from_secs(90);

/// A 3-node cluster, the service publishing to an R3 stream it created, and a load running.
async fn cluster_under_load(name: &str) -> (PgCluster, NatsCluster, Setup, Service, Load) {
    let (pg, cluster) = blocking(|| (PgCluster::start(), NatsCluster::start()));
    cluster.wait_ready(DEADLINE).await;
    let setup = Setup::new(name);
    Load::create_table(&pg);
    let yaml = setup.yaml(&pg, cluster.any()).replace(
        &format!("  address: {}\n", cluster.any().url()),
        &format!("  address: {}\n  replicas: 3\n", cluster.urls()),
    );
    assert!(yaml.contains("replicas: 3"), "{yaml}");
    let mut service = Service::start(&yaml);
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));
    let load = Load::start(&pg);
    wait_for_growth(cluster.any(), &setup.topic, 100).await;
    (pg, cluster, setup, service, load)
}

fn assert_running(service: &mut Service) {
    assert!(
        service.is_running(),
        "the service must survive the cluster's trouble; log:\n{}",
        service.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_r3_leader_killed_and_restarted_under_load() {
    let (pg, mut cluster, setup, mut service, load) = cluster_under_load("r3leader").await;
    let leader = cluster.stream_leader(&setup.topic, DEADLINE).await;
    // check --connect reports the replicas and where they are.
    let yaml = std::fs::read_to_string(service.config_path()).expect("config");
    let (code, out) = blocking(|| check_connect(&yaml, &[]));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("has 3 replica(s)") && out.contains(&format!("leader {}", cluster.nodes[leader].name())),
        "{out}"
    );
    blocking(|| cluster.nodes[leader].kill());
    let before = cluster.any().stream_len(&setup.topic).await.unwrap_or(0);
    wait_for_growth(cluster.any(), &setup.topic, before + 200).await;
    assert_running(&mut service);
    blocking(|| cluster.nodes[leader].start_again());
    cluster.stream_leader(&setup.topic, DEADLINE).await;
    let before = cluster.any().stream_len(&setup.topic).await.unwrap_or(0);
    wait_for_growth(cluster.any(), &setup.topic, before + 200).await;
    load.finish().await;
    assert_exactly_once(&pg, cluster.any(), &setup).await;
    assert_running(&mut service);
    blocking(|| service.terminate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_r3_follower_killed_under_load() {
    let (pg, mut cluster, setup, mut service, load) = cluster_under_load("r3follower").await;
    let leader = cluster.stream_leader(&setup.topic, DEADLINE).await;
    let follower = (leader + 1) % 3;
    blocking(|| cluster.nodes[follower].kill());
    let before = cluster.any().stream_len(&setup.topic).await.unwrap_or(0);
    wait_for_growth(cluster.any(), &setup.topic, before + 300).await;
    assert_running(&mut service);
    blocking(|| cluster.nodes[follower].start_again());
    load.finish().await;
    assert_exactly_once(&pg, cluster.any(), &setup).await;
    assert_running(&mut service);
    blocking(|| service.terminate());
}

/// Two of three nodes stopped (one gracefully, one with SIGKILL): no quorum, nothing can be
/// stored; the service waits, and once quorum is back it resumes without loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_r3_without_quorum_waits_and_resumes() {
    let (pg, mut cluster, setup, mut service, load) = cluster_under_load("r3quorum").await;
    let leader = cluster.stream_leader(&setup.topic, DEADLINE).await;
    let other = (leader + 1) % 3;
    blocking(|| {
        cluster.nodes[leader].signal_command("quit");
        cluster.nodes[leader].wait_stopped(Duration::from_secs(20));
        cluster.nodes[other].kill();
    });
    // Nothing can be stored: the session ends as a transient failure and is retried. How soon
    // depends on the node the client is connected to: a stopped one ends the connection at
    // once, the surviving one may leave publishes unanswered until the ack timeout
    // (`publish::ACK_TIMEOUT`, 10 s). The service keeps running throughout.
    let down = Instant::now();
    loop {
        assert_running(&mut service);
        if service.log().contains("pipeline interrupted; reconnecting") {
            break;
        }
        assert!(
            down.elapsed() < Duration::from_secs(40),
            "no session ended within 40 s of losing quorum; log:\n{}",
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And it stays up while quorum is still missing.
    let waiting = Instant::now();
    while waiting.elapsed() < Duration::from_secs(3) {
        assert_running(&mut service);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    blocking(|| {
        cluster.nodes[leader].start_again();
        cluster.nodes[other].start_again();
    });
    cluster.stream_leader(&setup.topic, DEADLINE).await;
    let before = cluster.any().stream_len(&setup.topic).await.unwrap_or(0);
    wait_for_growth(cluster.any(), &setup.topic, before + 200).await;
    load.finish().await;
    assert_exactly_once(&pg, cluster.any(), &setup).await;
    assert_running(&mut service);
    blocking(|| service.terminate());
}

/// PostgreSQL 17+: primary and a physical standby with slot synchronisation; the service uses a
/// failover slot and a host list. Under load the primary stops and the standby is promoted:
/// the service continues on the new primary from the synchronised slot, and every row committed
/// there (all that reached the standby, and all after) is in the stream once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_failover_continues_from_the_synchronised_slot() {
    let (mut primary, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    if primary.version_num() < 170_000 {
        eprintln!("skipped: failover slots need PostgreSQL 17+ (set PG_BIN to a PostgreSQL 18 bin directory)");
        return;
    }
    let standby = blocking(|| PgCluster::failover_standby_of(&primary, "standby1"));
    Load::create_table(&primary);
    let mut setup = Setup::new("pgfailover");
    setup.listener_extra = "  failoverSlot: true\n".into();
    let yaml = setup.yaml(&primary, &nats).replace(
        "  host: 127.0.0.1\n",
        &format!("  host: 127.0.0.1:{},127.0.0.1:{}\n", primary.port(), standby.port()),
    );
    let mut service = Service::start(&yaml);
    blocking(|| wait_streaming(&primary, &setup.slot, &mut service));
    assert_eq!(
        primary.psql(&format!(
            "SELECT failover FROM pg_replication_slots WHERE slot_name = '{}'",
            setup.slot
        )),
        "t"
    );
    let load = Load::start_on(vec![primary.conn_string("postgres"), standby.conn_string("postgres")]);
    wait_for_growth(&nats, &setup.topic, 300).await;
    // The standby holds a persistent, synchronised copy of the slot.
    let slot = setup.slot.clone();
    let standby_ref = &standby;
    wait_until("a synchronised copy of the slot on the standby", DEADLINE, || {
        let slot = slot.clone();
        async move {
            blocking(|| {
                standby_ref.psql(&format!(
                    "SELECT synced AND NOT temporary AND confirmed_flush_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = '{slot}'"
                ))
            }) == "t"
        }
    })
    .await;
    wait_for_growth(
        &nats,
        &setup.topic,
        nats.stream_len(&setup.topic).await.unwrap_or(0) + 200,
    )
    .await;
    blocking(|| {
        primary.stop();
        standby.promote();
    });
    let before = nats.stream_len(&setup.topic).await.unwrap_or(0);
    wait_for_growth(&nats, &setup.topic, before + 300).await;
    assert!(service.is_running(), "log:\n{}", service.log());
    load.finish().await;
    assert_exactly_once(&standby, &nats, &setup).await;
    let log = service.log();
    assert!(log.contains("PostgreSQL primary changed (failover)"), "log:\n{log}");
    assert_eq!(
        log.matches("created logical replication slot").count(),
        1,
        "the slot must be taken over, not recreated; log:\n{log}"
    );
    blocking(|| service.terminate());
}

/// A slot invalidated by `max_slot_wal_keep_size` while the service runs (NATS frozen, so it
/// cannot confirm) stops the service with the operator's options; it is never recreated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_slot_stops_the_service_with_the_options() {
    let (pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    pg.psql("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'");
    pg.psql("SELECT pg_reload_conf()");
    pg.psql("CREATE TABLE filler (id serial PRIMARY KEY, pad text)");
    let setup = Setup::new("invalidated");
    let mut service = Service::start(&setup.yaml(&pg, &nats));
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));
    pg.psql("INSERT INTO filler (pad) VALUES ('x')");
    wait_for_growth(&nats, &setup.topic, 1).await;
    nats.signal("STOP");
    let slot = setup.slot.clone();
    let pg_ref = &pg;
    wait_until("the slot to be invalidated", DEADLINE, || {
        let slot = slot.clone();
        async move {
            blocking(|| {
                pg_ref.psql("INSERT INTO filler (pad) SELECT repeat('y', 1000) FROM generate_series(1, 2000)");
                pg_ref.psql("SELECT pg_switch_wal()");
                pg_ref.psql("CHECKPOINT");
                pg_ref.psql(&format!(
                    "SELECT wal_status FROM pg_replication_slots WHERE slot_name = '{slot}'"
                )) == "lost"
            })
        }
    })
    .await;
    let line = blocking(|| service.fatal_line(DEADLINE));
    nats.signal("CONT");
    assert!(
        line.contains("is invalidated")
            && line.contains("pg_drop_replication_slot")
            && line.contains("max_slot_wal_keep_size"),
        "{line}"
    );
    assert_eq!(
        pg.psql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}'",
            setup.slot
        )),
        "1",
        "the invalidated slot must be left for the operator"
    );
}

/// No progress while WAL grows (NATS frozen with messages in flight) turns `/healthz`
/// unhealthy with the reason, within `listener.stallTimeout`; once NATS answers again the
/// service is healthy and every row arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_turns_healthz_unhealthy_with_the_reason() {
    let (pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    Load::create_table(&pg);
    let mut setup = Setup::new("stall");
    setup.server_port = free_port();
    setup.listener_extra = "  stallTimeout: 2s\n".into();
    let port = setup.server_port;
    let mut service = Service::start(&setup.yaml(&pg, &nats));
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));
    let load = Load::start(&pg);
    wait_for_growth(&nats, &setup.topic, 100).await;
    nats.signal("STOP");
    wait_until("/healthz to report the stall", DEADLINE, || async move {
        blocking(|| get(port, "/healthz"))
            .is_some_and(|(status, body)| status == 503 && body.contains("stalled") && body.contains("stallTimeout"))
    })
    .await;
    let metrics = blocking(|| get(port, "/metrics"))
        .map(|(_, body)| body)
        .unwrap_or_default();
    assert!(
        sample(&metrics, "wal_listener_slot_stalled_seconds").is_some_and(|s| s >= 2.0),
        "{metrics}"
    );
    assert!(service.log().contains("replication stalled"), "log:\n{}", service.log());
    nats.signal("CONT");
    wait_until("/healthz healthy again", DEADLINE, || async move {
        blocking(|| get(port, "/healthz")).is_some_and(|(status, _)| status == 200)
    })
    .await;
    let before = nats.stream_len(&setup.topic).await.unwrap_or(0);
    wait_for_growth(&nats, &setup.topic, before + 100).await;
    load.finish().await;
    assert_exactly_once(&pg, &nats, &setup).await;
    blocking(|| service.terminate());
}

/// A publication that covers one table while another is written heavily: the slot's confirmed
/// position keeps up with the server's WAL and the WAL it retains stays bounded; the slot
/// metrics show it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrow_publication_keeps_the_slot_moving_and_retained_wal_bounded() {
    let (pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    pg.psql("CREATE TABLE watched (id int PRIMARY KEY)");
    pg.psql("CREATE TABLE busy (id serial PRIMARY KEY, pad text)");
    let mut setup = Setup::new("narrow");
    setup.server_port = free_port();
    let port = setup.server_port;
    pg.psql(&format!("CREATE PUBLICATION {} FOR TABLE watched", setup.publication));
    let mut service = Service::start(&setup.yaml(&pg, &nats));
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));
    pg.psql("INSERT INTO watched VALUES (1)");
    wait_for_growth(&nats, &setup.topic, 1).await;
    let start = parse_lsn(&pg.psql("SELECT pg_current_wal_lsn()"));
    // About 100 MB of WAL the publication does not cover, in many transactions.
    for _ in 0..10 {
        pg.psql("INSERT INTO busy (pad) SELECT repeat('z', 400) FROM generate_series(1, 20000)");
    }
    let end = parse_lsn(&pg.psql("SELECT pg_current_wal_lsn()"));
    assert!(end - start > 50 << 20, "only {} bytes of WAL written", end - start);
    let (slot, pg_ref) = (setup.slot.clone(), &pg);
    wait_until("the slot to confirm past the busy table's WAL", DEADLINE, || {
        let slot = slot.clone();
        async move { blocking(|| confirmed_flush(pg_ref, &slot)) >= end }
    })
    .await;
    wait_until("the retained WAL to shrink below 32 MB", DEADLINE, || {
        let slot = slot.clone();
        async move {
            blocking(|| {
                pg_ref.psql("CHECKPOINT");
                let retained: i64 = pg_ref
                    .psql(&format!(
                        "SELECT pg_current_wal_lsn() - restart_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
                    ))
                    .parse()
                    .unwrap_or(i64::MAX);
                retained < 32 << 20
            })
        }
    })
    .await;
    wait_until("the slot metrics", DEADLINE, || async move {
        let metrics = blocking(|| get(port, "/metrics")).map(|(_, b)| b).unwrap_or_default();
        sample(&metrics, "wal_listener_slot_retained_wal_bytes").is_some_and(|b| b > 0.0 && b < f64::from(32u32 << 20))
            && metrics.contains("wal_listener_slot_wal_status{status=\"reserved\"} 1")
    })
    .await;
    pg.psql("INSERT INTO watched VALUES (2)");
    wait_for_growth(&nats, &setup.topic, 2).await;
    assert!(service.is_running());
    blocking(|| service.terminate());
}

/// `listener.failoverSlot` on a server without failover slots (PostgreSQL 16 or older) is a
/// start-up error naming the key; `check --connect` says the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_slot_on_an_old_server_is_a_clear_startup_error() {
    let (pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    if pg.version_num() >= 170_000 {
        eprintln!("skipped: PostgreSQL 17+ has failover slots");
        return;
    }
    let mut setup = Setup::new("oldfailover");
    setup.listener_extra = "  failoverSlot: true\n".into();
    let yaml = setup.yaml(&pg, &nats);
    let (code, out) = blocking(|| check_connect(&yaml, &[]));
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("error: listener.failoverSlot") && out.contains("PostgreSQL 17"),
        "{out}"
    );
    let mut service = Service::start(&yaml);
    let line = blocking(|| service.fatal_line(DEADLINE));
    assert!(
        line.contains("listener.failoverSlot")
            && line.contains("PostgreSQL 17")
            && line.contains("failoverSlot: false"),
        "{line}"
    );
}

/// Without `synchronized_standby_slots` on the primary, `check --connect` warns what is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_warns_when_the_primary_does_not_wait_for_standbys() {
    let (pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    if pg.version_num() < 170_000 {
        eprintln!("skipped: failover slots need PostgreSQL 17+");
        return;
    }
    let mut setup = Setup::new("nosyncslots");
    setup.listener_extra = "  failoverSlot: true\n".into();
    let (code, out) = blocking(|| check_connect(&setup.yaml(&pg, &nats), &[]));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warning: listener.failoverSlot: synchronized_standby_slots is empty") && out.contains("lost"),
        "{out}"
    );
}
