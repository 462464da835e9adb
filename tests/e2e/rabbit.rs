//! RabbitMQ (`publisher.type: rabbitmq`): the pipeline's essentials, publisher confirms under
//! failures (kill -9 of the service, RabbitMQ stopped gracefully and killed), the slot held
//! while RabbitMQ is away, and clear errors for what only an operator can fix.

use std::collections::HashSet;
use std::time::Duration;

use lapin::ExchangeKind;

use crate::support::blocking;
use crate::support::certs::TestCa;
use crate::support::service::{
    Service, Setup, check_connect, confirmed_flush, insert_before_commit, parse_lsn, wait_streaming,
};
use crate::support::{PgCluster, RabbitMessage, RabbitServer, wait_until, wait_until_sync};

const DEADLINE: Duration = Duration::from_secs(90);

/// The `id` column of a row's message.
fn row_id(m: &RabbitMessage) -> i64 {
    m.json()["data"]["id"].as_i64().expect("data.id is an integer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbit_exact_payload_headers_routing_key_filter_and_exact_restart() {
    let (pg, rabbit) = blocking(|| (PgCluster::start(), RabbitServer::start()));
    pg.psql(
        "CREATE TABLE users (id int8 PRIMARY KEY, email text);
         CREATE TABLE orders (id int8 PRIMARY KEY);",
    );
    let mut setup = Setup::new("rmq_pipe");
    setup.listener_extra = "  filter:\n    tables:\n      users: [insert, update, delete]\n".into();
    let queue = "q_pipe";
    rabbit
        .bind_queue(&setup.topic, ExchangeKind::Topic, queue, &format!("{}.#", setup.topic))
        .await;
    let mut service = Service::start(&setup.rabbit_yaml(&pg, &rabbit));
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));

    pg.psql(
        "INSERT INTO users VALUES (9007199254740993, 'a@b.c');
         INSERT INTO orders VALUES (1);
         UPDATE users SET email = 'new@b.c' WHERE id = 9007199254740993;
         BEGIN; DELETE FROM users; INSERT INTO orders VALUES (2); COMMIT;",
    );
    let messages = rabbit.take(queue, 3, DEADLINE).await;
    let actions: Vec<String> = messages
        .iter()
        .map(|m| m.json()["action"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(actions, ["INSERT", "UPDATE", "DELETE"]);
    let first = &messages[0];
    let text = String::from_utf8_lossy(&first.payload).into_owned();
    assert!(text.contains("\"id\":9007199254740993,"), "{text}");
    assert_eq!(first.json()["data"]["email"], "a@b.c");
    assert_eq!(messages[1].json()["dataOld"]["id"].as_i64(), Some(9007199254740993));
    for m in &messages {
        assert_eq!(
            m.routing_key,
            format!("{}.public_users", setup.topic),
            "routing key = subject"
        );
        assert_eq!(
            m.message_id.as_deref(),
            m.json()["id"].as_str(),
            "message_id = event id"
        );
        assert_eq!(m.content_type.as_deref(), Some("application/json"));
        assert_eq!(m.delivery_mode, Some(2), "persistent");
        assert!(
            m.timestamp.is_some_and(|t| t > 1_700_000_000),
            "commit time as timestamp"
        );
        assert_eq!(m.header("Wal-Table"), Some("users"));
        assert_eq!(m.header("Wal-Schema"), Some("public"));
        assert_eq!(m.header("Wal-Action"), m.json()["action"].as_str());
        assert!(m.header("Wal-Xid").and_then(|x| x.parse::<u32>().ok()).is_some());
        parse_lsn(m.header("Wal-Lsn").expect("Wal-Lsn header"));
        assert_eq!(m.header("Nats-Msg-Id"), None, "the id is the message_id, not a header");
        assert_eq!(m.header("Content-Type"), None, "content type is a property");
    }
    let ids: HashSet<&str> = messages.iter().filter_map(|m| m.message_id.as_deref()).collect();
    assert_eq!(ids.len(), 3);

    // SIGTERM drains and confirms; rows written while stopped arrive after a restart, once.
    let status = blocking(|| service.terminate());
    assert!(status.success(), "SIGTERM exits 0; log:\n{}", service.log());
    pg.psql("INSERT INTO users SELECT g, 'later' FROM generate_series(1, 20) g");
    blocking(|| service.start_again());
    let later = rabbit.take(queue, 20, DEADLINE).await;
    let got: Vec<i64> = later.iter().map(row_id).collect();
    assert_eq!(got, (1..=20).collect::<Vec<_>>());
    let end = parse_lsn(&pg.psql("SELECT pg_current_wal_lsn()"));
    blocking(|| {
        wait_until_sync("the slot to confirm past the last insert", DEADLINE, || {
            confirmed_flush(&pg, &setup.slot) >= end
        })
    });
    assert_eq!(
        rabbit.queue_depth(queue),
        Some(0),
        "nothing replayed after a clean restart"
    );
}

/// Inserts `rows` rows (ids 1..=rows) into `load` in transactions of 100, on its own task.
fn insert_in_background(pg: &PgCluster, rows: i64) -> tokio::task::JoinHandle<()> {
    let url = pg.conn_string("postgres");
    tokio::spawn(async move {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect for inserts");
        tokio::spawn(conn);
        let mut next = 1;
        while next <= rows {
            let last = (next + 99).min(rows);
            client
                .execute(
                    "INSERT INTO load SELECT g, 'x' FROM generate_series($1::int8, $2::int8) g",
                    &[&next, &last],
                )
                .await
                .expect("insert");
            next = last + 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

/// Every row at least once, first occurrences in row order, and exactly once after
/// deduplicating by `message_id`.
fn assert_every_row_in_order(messages: &[RabbitMessage], rows: i64) {
    let mut seen = HashSet::new();
    let mut next = 1;
    let mut duplicates = 0;
    for m in messages {
        let id = m.message_id.clone().expect("message_id");
        let row = row_id(m);
        if seen.insert(id) {
            assert_eq!(row, next, "first occurrences in commit order");
            next += 1;
        } else {
            assert!(row < next, "a duplicate is a replay of an earlier row");
            duplicates += 1;
        }
    }
    assert_eq!(next - 1, rows, "every row once after dedup by message_id");
    eprintln!("{} messages, {duplicates} duplicates (replays)", messages.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbit_kill9_and_broker_restarts_under_load_lose_nothing() {
    let (pg, mut rabbit) = blocking(|| (PgCluster::start(), RabbitServer::start()));
    pg.psql("CREATE TABLE load (id int8 PRIMARY KEY, note text)");
    let setup = Setup::new("rmq_faults");
    let queue = "q_faults";
    rabbit
        .bind_queue(&setup.topic, ExchangeKind::Topic, queue, &format!("{}.#", setup.topic))
        .await;
    let mut service = Service::start(&setup.rabbit_yaml(&pg, &rabbit));
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));
    let depth = |rabbit: &RabbitServer| rabbit.queue_depth(queue).unwrap_or(0);

    // kill -9 of the service while it publishes.
    let rows = 6000;
    let inserts = insert_in_background(&pg, rows);
    blocking(|| wait_until_sync("messages flowing", DEADLINE, || depth(&rabbit) >= 500));
    blocking(|| service.kill());
    blocking(|| service.start_again());
    inserts.await.expect("inserts");

    // A graceful RabbitMQ stop while the service publishes.
    pg.psql("INSERT INTO load SELECT g, 'y' FROM generate_series(6001, 9000) g");
    blocking(|| wait_until_sync("more messages flowing", DEADLINE, || depth(&rabbit) >= 6100));
    blocking(|| rabbit.stop());
    pg.psql("INSERT INTO load SELECT g, 'z' FROM generate_series(9001, 10000) g");
    blocking(|| rabbit.start_again());

    // A hard RabbitMQ crash while the service publishes.
    wait_until("the service to publish again", DEADLINE, || async {
        depth(&rabbit) >= 9100
    })
    .await;
    pg.psql("INSERT INTO load SELECT g, 'w' FROM generate_series(10001, 14000) g");
    blocking(|| wait_until_sync("messages flowing after restart", DEADLINE, || depth(&rabbit) >= 10100));
    blocking(|| rabbit.kill());
    blocking(|| rabbit.start_again());

    let end = parse_lsn(&pg.psql("SELECT pg_current_wal_lsn()"));
    blocking(|| {
        wait_until_sync("the slot to confirm every row", Duration::from_secs(180), || {
            confirmed_flush(&pg, &setup.slot) >= end
        })
    });
    let n = rabbit.queue_depth(queue).expect("queue exists") as usize;
    let messages = rabbit.take(queue, n, DEADLINE).await;
    assert_every_row_in_order(&messages, 14000);
    let status = blocking(|| service.terminate());
    assert!(status.success(), "log:\n{}", service.log());
    let log = service.log();
    assert!(log.contains("RabbitMQ"), "reconnects were logged:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbit_away_holds_the_slot_position_until_confirms_come() {
    let (pg, mut rabbit) = blocking(|| (PgCluster::start(), RabbitServer::start()));
    pg.psql("CREATE TABLE items (id int8 PRIMARY KEY)");
    let setup = Setup::new("rmq_hold");
    let queue = "q_hold";
    rabbit
        .bind_queue(&setup.topic, ExchangeKind::Topic, queue, &format!("{}.#", setup.topic))
        .await;
    let mut service = Service::start(&setup.rabbit_yaml(&pg, &rabbit));
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));
    pg.psql("INSERT INTO items SELECT generate_series(1, 10)");
    rabbit.take(queue, 10, DEADLINE).await;
    let before_end = parse_lsn(&pg.psql("SELECT pg_current_wal_lsn()"));
    blocking(|| {
        wait_until_sync("the first rows confirmed", DEADLINE, || {
            confirmed_flush(&pg, &setup.slot) >= before_end
        })
    });

    blocking(|| rabbit.stop());
    let before_commit = insert_before_commit(&pg, "INSERT INTO items SELECT generate_series(11, 20)");
    // The session ends with the connection; reconnecting fails while RabbitMQ is away.
    blocking(|| {
        wait_until_sync("two failed reconnects", DEADLINE, || {
            service.log().matches("cannot connect to RabbitMQ").count() >= 2
        })
    });
    assert!(
        service.is_running(),
        "RabbitMQ away is transient; log:\n{}",
        service.log()
    );
    let confirmed = confirmed_flush(&pg, &setup.slot);
    assert!(
        confirmed <= before_commit,
        "the transaction was confirmed while RabbitMQ is away: slot at {confirmed:X}, \
         its commit after {before_commit:X}"
    );
    blocking(|| rabbit.start_again());
    let rest = rabbit.take(queue, 10, DEADLINE).await;
    let mut ids: Vec<i64> = rest.iter().map(row_id).collect();
    ids.dedup();
    assert_eq!(ids, (11..=20).collect::<Vec<_>>());
    let end = parse_lsn(&pg.psql("SELECT pg_current_wal_lsn()"));
    blocking(|| {
        wait_until_sync("confirmed after RabbitMQ is back", DEADLINE, || {
            confirmed_flush(&pg, &setup.slot) >= end
        })
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbit_unroutable_stops_unconfirmed_or_is_dropped_when_asked() {
    let (pg, rabbit) = blocking(|| (PgCluster::start(), RabbitServer::start()));
    pg.psql("CREATE TABLE users (id int8 PRIMARY KEY); CREATE TABLE orders (id int8 PRIMARY KEY);");

    // Only users is bound: an orders change has no queue.
    let setup = Setup::new("rmq_unroutable");
    let queue = "q_unroutable";
    let users = format!("{}.public_users", setup.topic);
    rabbit
        .bind_queue(&setup.topic, ExchangeKind::Topic, queue, &users)
        .await;
    let mut service = Service::start(&setup.rabbit_yaml(&pg, &rabbit));
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));
    pg.psql("INSERT INTO users VALUES (1)");
    rabbit.take(queue, 1, DEADLINE).await;
    let end = parse_lsn(&pg.psql("SELECT pg_current_wal_lsn()"));
    blocking(|| wait_until_sync("users confirmed", DEADLINE, || confirmed_flush(&pg, &setup.slot) >= end));
    pg.psql("INSERT INTO orders VALUES (1)");
    let line = blocking(|| service.fatal_line(DEADLINE));
    assert!(
        line.contains("routed a message to no queue")
            && line.contains(&format!("{}.public_orders", setup.topic))
            && line.contains("publisher.unroutable: drop"),
        "{line}"
    );
    let after = parse_lsn(&pg.psql("SELECT pg_current_wal_lsn()"));
    assert!(
        confirmed_flush(&pg, &setup.slot) < after,
        "the unroutable change stays unconfirmed"
    );

    // publisher.unroutable: drop counts and goes on.
    let mut setup = Setup::new("rmq_drop");
    setup.server_port = crate::support::free_port();
    let queue = "q_drop";
    let users = format!("{}.public_users", setup.topic);
    rabbit
        .bind_queue(&setup.topic, ExchangeKind::Topic, queue, &users)
        .await;
    let yaml = setup.rabbit_yaml_at(&pg, &rabbit.url(), "  exchangeKind: topic\n  unroutable: drop\n");
    let mut service = Service::start(&yaml);
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));
    pg.psql("INSERT INTO orders VALUES (2); INSERT INTO users VALUES (2);");
    let got = rabbit.take(queue, 1, DEADLINE).await;
    assert_eq!(row_id(&got[0]), 2);
    let port = setup.server_port;
    blocking(|| {
        wait_until_sync("the drop counted", DEADLINE, || {
            crate::support::http::get(port, "/metrics").is_some_and(|(_, body)| {
                crate::support::http::sample(&body, "wal_listener_unroutable_dropped_total") == Some(1.0)
            })
        })
    });
    assert!(blocking(|| service.terminate()).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbit_misconfigurations_fail_with_the_key_to_change() {
    let (pg, rabbit) = blocking(|| (PgCluster::start(), RabbitServer::start()));
    rabbit.ctl(&["add_vhost", "other"]);
    rabbit.ctl(&["set_permissions", "-p", "other", "guest", ".*", ".*", ".*"]);

    // An existing exchange of another kind.
    let setup = Setup::new("rmq_kind");
    rabbit
        .bind_queue(&setup.topic, ExchangeKind::Direct, "q_kind", "x")
        .await;
    let yaml = setup.rabbit_yaml(&pg, &rabbit);
    let (code, out) = blocking(|| check_connect(&yaml, &[]));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("error: publisher.exchangeKind")
            && out.contains("exists as a direct exchange, but publisher.exchangeKind is topic"),
        "{out}"
    );
    let mut service = Service::start(&yaml);
    let line = blocking(|| service.fatal_line(DEADLINE));
    assert!(line.contains("set publisher.exchangeKind: direct"), "{line}");

    // Bad credentials.
    let setup = Setup::new("rmq_creds");
    let yaml = setup.rabbit_yaml_at(
        &pg,
        &rabbit.url_with("guest", "wrong", "%2f"),
        "  exchangeKind: topic\n",
    );
    let (code, out) = blocking(|| check_connect(&yaml, &[]));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("refused the login") && !out.contains("wrong"), "{out}");
    let mut service = Service::start(&yaml);
    let line = blocking(|| service.fatal_line(DEADLINE));
    assert!(
        line.contains("refused the login") && line.contains("publisher.address"),
        "{line}"
    );

    // A virtual host that does not exist.
    let yaml = setup.rabbit_yaml_at(
        &pg,
        &rabbit.url_with("guest", "guest", "nope"),
        "  exchangeKind: topic\n",
    );
    let mut service = Service::start(&yaml);
    let line = blocking(|| service.fatal_line(DEADLINE));
    assert!(line.contains("virtual host \"nope\""), "{line}");

    // All well: a missing exchange is declared by the service, and check says so.
    let setup = Setup::new("rmq_ok");
    let yaml = setup.rabbit_yaml_at(
        &pg,
        &rabbit.url_with("guest", "guest", "other"),
        "  exchangeKind: fanout\n",
    );
    let (code, out) = blocking(|| check_connect(&yaml, &[]));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("virtual host \"other\"") && out.contains("wal-listener declares it (fanout, durable)"),
        "{out}"
    );
    assert!(!out.contains("guest:guest"), "no credentials printed: {out}");

    // exchangeKind is required with type: rabbitmq.
    let yaml = setup.rabbit_yaml_at(&pg, &rabbit.url(), "");
    let (code, out) = blocking(|| check_connect(&yaml, &[]));
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("publisher.exchangeKind is required"), "{out}");
}

/// `amqps://` with `publisher.tlsCaFile`: the service verifies the broker against that CA and
/// publishes over TLS; with a CA that did not sign the broker's certificate it stops with a
/// message naming the key, instead of retrying a handshake that cannot succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbit_over_tls_verifies_the_broker_with_tls_ca_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("wal-test-ca");
    let ca_file = ca.write(dir.path(), "ca.crt");
    let (cert, key) = ca.server().write(dir.path(), "server");
    let (pg, (rabbit, tls_port)) =
        blocking(|| (PgCluster::start(), RabbitServer::start_with_tls(&cert, &key, &ca_file)));
    pg.psql("CREATE TABLE t (id int4 PRIMARY KEY)");
    let setup = Setup::new("rmq_tls");
    rabbit
        .bind_queue(
            &setup.topic,
            ExchangeKind::Topic,
            "q_tls",
            &format!("{}.#", setup.topic),
        )
        .await;
    let address = format!("amqps://guest:guest@localhost:{tls_port}/%2f");
    let publisher = |ca: &std::path::Path| format!("  exchangeKind: topic\n  tlsCaFile: {}\n", ca.display());
    let mut service = Service::start(&setup.rabbit_yaml_at(&pg, &address, &publisher(&ca_file)));
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));
    pg.psql("INSERT INTO t VALUES (1)");
    let messages = rabbit.take("q_tls", 1, DEADLINE).await;
    assert_eq!(row_id(&messages[0]), 1);
    assert!(blocking(|| service.terminate()).success(), "{}", service.log());

    let other = TestCa::new("another-ca").write(dir.path(), "other.crt");
    let mut refused = Service::start(&setup.rabbit_yaml_at(&pg, &address, &publisher(&other)));
    let last = blocking(|| refused.fatal_line(DEADLINE));
    assert!(
        last.contains("TLS to RabbitMQ failed") && last.contains("publisher.tlsCaFile"),
        "{last}"
    );
}
