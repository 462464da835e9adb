//! Operations: `/healthz`, `/ready` and `/metrics` over HTTP while the pipeline runs, while
//! NATS is away, and on a standby; `check --connect` against good and broken setups.

use std::process::Command;
use std::time::Duration;

use crate::support::blocking;
use crate::support::http::{get, sample};
use crate::support::service::{Service, Setup, check_connect, confirmed_flush, wait_streaming};
use crate::support::{NatsServer, PgCluster, free_port, wait_for_sync, wait_until_sync};

const DEADLINE: Duration = Duration::from_secs(60);

/// Wait until `path` answers with `status`; returns the body.
fn wait_status(port: u16, path: &str, status: u16, service: &mut Service) -> String {
    wait_for_sync(&format!("GET {path} = {status}"), DEADLINE, || {
        assert!(service.is_running(), "wal-listener exited; log:\n{}", service.log());
        get(port, path).and_then(|(code, body)| (code == status).then_some(body))
    })
}

fn metrics(port: u16) -> String {
    match get(port, "/metrics") {
        Some((200, body)) => body,
        other => panic!("GET /metrics: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_metrics_follow_the_pipeline_through_a_nats_outage() {
    let (pg, mut nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    pg.psql("CREATE TABLE items (id int4 PRIMARY KEY); CREATE TABLE noise (id int4 PRIMARY KEY);");
    let mut setup = Setup::new("ops");
    setup.server_port = free_port();
    setup.listener_extra = "  filter:\n    tables:\n      items: [insert]\n".into();
    let port = setup.server_port;
    let mut service = Service::start(&setup.yaml(&pg, &nats));
    blocking(|| {
        wait_streaming(&pg, &setup.slot, &mut service);
        wait_status(port, "/ready", 200, &mut service);
    });
    assert_eq!(get(port, "/healthz"), Some((200, "ok: streaming\n".into())));

    pg.psql("INSERT INTO items SELECT generate_series(1, 5); INSERT INTO noise VALUES (1), (2);");
    nats.wait_for_messages(&setup.topic, 5, DEADLINE).await;
    let subject = format!(
        "published_events_total{{app=\"wal-listener\",subject=\"{}.public_items\",table=\"items\"}}",
        setup.topic
    );
    let text = blocking(|| {
        wait_for_sync("5 published and 2 filtered events in /metrics", DEADLINE, || {
            let text = metrics(port);
            let done = sample(&text, &subject) == Some(5.0)
                && sample(
                    &text,
                    "filter_skipped_events_total{app=\"wal-listener\",table=\"noise\"}",
                ) == Some(2.0);
            done.then_some(text)
        })
    });
    assert!(
        sample(&text, "wal_listener_publish_latency_seconds_count").is_some_and(|n| n >= 5.0),
        "{text}"
    );
    assert_eq!(sample(&text, "wal_listener_events_in_flight"), Some(0.0), "{text}");
    assert_eq!(sample(&text, "wal_listener_ready"), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "problematic_events_total{app=\"wal-listener\",kind=\"script\"}"),
        Some(0.0)
    );
    // The confirmed LSN follows the slot, and the lag closes once everything is confirmed.
    blocking(|| {
        wait_until_sync("confirmed LSN = the slot's, lag 0", DEADLINE, || {
            let text = metrics(port);
            let slot = confirmed_flush(&pg, &setup.slot) as f64;
            sample(&text, "wal_listener_confirmed_lsn") == Some(slot)
                && slot > 0.0
                && sample(&text, "wal_listener_replication_lag_bytes") == Some(0.0)
        })
    });

    // NATS goes away: not ready, not healthy (a connection is down), still running.
    blocking(|| nats.stop());
    let body = blocking(|| wait_status(port, "/ready", 503, &mut service));
    assert!(body.contains("NATS"), "{body}");
    let (code, _) = get(port, "/healthz").expect("healthz answers");
    assert_eq!(code, 503);
    pg.psql("INSERT INTO items VALUES (6)");
    // Unacknowledged, so the lag grows while NATS is down.
    blocking(|| {
        wait_until_sync("replication lag > 0 while NATS is down", DEADLINE, || {
            sample(&metrics(port), "wal_listener_replication_lag_bytes").is_some_and(|lag| lag > 0.0)
        })
    });

    // Back: ready again, the held change arrives, and nothing was lost.
    blocking(|| nats.start_again());
    blocking(|| wait_status(port, "/ready", 200, &mut service));
    let all = nats.wait_for_messages(&setup.topic, 6, DEADLINE).await;
    assert_eq!(all.len(), 6);
    let log = service.log();
    assert!(
        log.contains("NATS connection lost") || log.contains("pipeline interrupted"),
        "{log}"
    );
    // Never one line per published event at info.
    let info_lines = log.lines().filter(|l| l.contains(" INFO ")).count();
    assert!(info_lines < 20, "{info_lines} info lines:\n{log}");

    let status = blocking(|| service.terminate());
    assert!(status.success(), "log:\n{}", service.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_is_healthy_but_not_ready_until_it_takes_over() {
    let (pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    pg.psql("CREATE TABLE t (id int4 PRIMARY KEY)");
    let mut first_setup = Setup::new("standby");
    first_setup.server_port = free_port();
    let mut first = Service::start(&first_setup.yaml(&pg, &nats));
    blocking(|| {
        wait_streaming(&pg, &first_setup.slot, &mut first);
        wait_status(first_setup.server_port, "/ready", 200, &mut first);
    });

    let mut second_setup = Setup::new("standby");
    second_setup.server_port = free_port();
    let port = second_setup.server_port;
    let mut second = Service::start(&second_setup.yaml(&pg, &nats));
    let body = blocking(|| wait_status(port, "/ready", 503, &mut second));
    let body = if body.contains("standby") {
        body
    } else {
        blocking(|| {
            wait_for_sync("/ready says standby", DEADLINE, || {
                get(port, "/ready").and_then(|(c, b)| (c == 503 && b.contains("standby")).then_some(b))
            })
        })
    };
    assert!(body.contains("standby"), "{body}");
    assert_eq!(get(port, "/healthz").map(|(c, _)| c), Some(200), "waiting is healthy");

    first.kill();
    blocking(|| wait_status(port, "/ready", 200, &mut second));
    pg.psql("INSERT INTO t VALUES (1)");
    nats.wait_for_messages(&second_setup.topic, 1, DEADLINE).await;
    blocking(|| second.terminate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_connect_reports_a_good_setup_and_every_broken_part_with_its_fix() {
    let (mut pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    let good = format!(
        "listener:\n  slotName: chk\n  publication: chk\ndatabase:\n  host: 127.0.0.1\n  port: {}\n  user: postgres\n  password: s3cret-never-shown\npublisher:\n  address: {}\n  topic: chk\n",
        pg.port(),
        nats.url()
    );
    let (code, out) = blocking(|| check_connect(&good, &[]));
    assert_eq!(code, 0, "{out}");
    for expected in [
        "ok: database: PostgreSQL ",
        "ok: database: wal_level=logical",
        "ok: database: user postgres may replicate (REPLICATION)",
        "ok: listener.slotName: slot chk does not exist yet; wal-listener creates it",
        "ok: listener.publication: chk does not exist; wal-listener creates it FOR ALL TABLES",
        "ok: publisher: NATS ",
        "ok: publisher.topic: stream chk does not exist; wal-listener creates it",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(expected)),
            "missing {expected:?} in:\n{out}"
        );
    }
    assert!(!out.contains("s3cret"), "{out}");

    // Break everything: wal_level, a slot of another plugin, a plain user, a stream that does
    // not capture our subjects, a table nobody can UPDATE while published.
    pg.psql("ALTER SYSTEM SET wal_level = replica");
    blocking(|| pg.restart_fast());
    pg.psql(
        "CREATE ROLE plain LOGIN; CREATE TABLE nokey (v int); CREATE PUBLICATION chk FOR TABLE nokey;
         SELECT pg_create_physical_replication_slot('other_plugin');",
    );
    nats.create_stream("chk", &["elsewhere.>"]).await;
    let broken = good
        .replace("user: postgres", "user: plain")
        .replace("slotName: chk", "slotName: other_plugin");
    let (code, out) = blocking(|| check_connect(&broken, &[]));
    assert_eq!(code, 1, "{out}");
    for expected in [
        "error: database: wal_level=replica; logical decoding needs wal_level=logical: ALTER SYSTEM SET wal_level = logical;",
        "error: database.user: \"plain\" lacks the REPLICATION attribute: ALTER ROLE \"plain\" WITH REPLICATION;",
        "error: listener.slotName: slot other_plugin uses plugin none (a physical slot), not pgoutput",
        "warning: listener.publication: tables without a primary key or replica identity (public.nokey)",
        "error: publisher.topic: stream chk captures [\"elsewhere.>\"], not chk.>: events would not be stored; nats stream edit chk --subjects 'chk.>'",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(expected)),
            "missing {expected:?} in:\n{out}"
        );
    }

    // Nothing reachable: one error per end, each naming what it tried.
    let nowhere = "database:\n  host: 127.0.0.1\n  port: 1\npublisher:\n  address: nats://u:pw-in-url@127.0.0.1:1\n";
    let (code, out) = blocking(|| check_connect(nowhere, &[]));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("error: database: cannot connect to 127.0.0.1:1 as postgres"),
        "{out}"
    );
    assert!(out.contains("error: publisher: cannot connect to NATS"), "{out}");
    assert!(!out.contains("pw-in-url"), "{out}");
}

#[test]
fn the_docker_image_configuration_is_valid() {
    // docker/config.yml becomes /app/config.yml in the image, docker-compose.yml points
    // WAL_SCRIPTS_PATH at the mounted scripts; both must pass `check` (no engine needed).
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(env!("CARGO_BIN_EXE_wal-listener"))
        .args(["check", "-c", &format!("{root}/docker/config.yml")])
        .env("WAL_SCRIPTS_PATH", format!("{root}/scripts/default.lua"))
        .output()
        .expect("run wal-listener check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("ok: script default.lua compiles"), "{text}");
    let dockerfile = std::fs::read_to_string(format!("{root}/Dockerfile")).expect("Dockerfile");
    for needed in [
        "COPY docker/config.yml /app/config.yml",
        "COPY scripts /app/scripts",
        "USER 10001",
        "HEALTHCHECK",
        // The probe reads listener.serverPort from the (mounted) config.
        "CMD [\"wal-listener\", \"health\"]",
    ] {
        assert!(dockerfile.contains(needed), "Dockerfile lacks {needed:?}");
    }
}
