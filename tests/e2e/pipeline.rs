//! The pipeline: PostgreSQL changes → default script → JetStream, acked; restarts lose nothing.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;

use crate::support::blocking;
use crate::support::service::{Service, Setup, confirmed_flush, parse_lsn, wait_streaming};
use crate::support::{NatsServer, PgCluster, StoredMessage, wait_until_sync};

const DEADLINE: Duration = Duration::from_secs(60);

/// Payload without the fields that vary per run (checked separately).
fn stable(m: &StoredMessage) -> serde_json::Value {
    let mut v = m.json();
    let obj = v.as_object_mut().expect("payload is an object");
    let id = obj.remove("id").expect("payload has an id");
    assert_eq!(
        Some(id.as_str().expect("id is a string")),
        m.header("Nats-Msg-Id"),
        "payload id = Nats-Msg-Id"
    );
    let time = obj.remove("commitTime").expect("payload has commitTime");
    let time = time.as_str().expect("commitTime is a string");
    assert!(
        time.len() == 27 && time.ends_with('Z') && &time[10..11] == "T",
        "commitTime {time} is RFC 3339 UTC with µs"
    );
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_changes_arrive_in_order_with_exact_json_and_headers() {
    let (pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    pg.psql(
        "CREATE TABLE users (id int8 PRIMARY KEY, email text, active bool, score int4, meta jsonb, uid uuid, seen timestamptz);
         CREATE TABLE orders (id int8 PRIMARY KEY);",
    );
    let mut setup = Setup::new("order");
    setup.listener_extra = "  filter:\n    tables:\n      users: [insert, update, delete, truncate]\n".into();
    let mut service = Service::start(&setup.yaml(&pg, &nats));
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));

    pg.psql(
        "INSERT INTO users VALUES (9007199254740993, 'a@b.c', true, -7, '{\"k\": [1, 2.5, null]}', '7d0c0c2e-1111-4000-8000-000000000001', '2026-11-26 10:20:30.123456+05:30');
         INSERT INTO orders VALUES (1);
         UPDATE users SET email = 'new@b.c', active = NULL WHERE id = 9007199254740993;
         BEGIN; DELETE FROM users; INSERT INTO orders VALUES (2); COMMIT;
         TRUNCATE users;",
    );
    let messages = nats.wait_for_messages(&setup.topic, 4, DEADLINE).await;
    let payloads: Vec<serde_json::Value> = messages.iter().map(stable).collect();
    assert_eq!(
        payloads,
        [
            json!({"schema": "public", "table": "users", "action": "INSERT",
                   "data": {"id": 9007199254740993u64, "email": "a@b.c", "active": true, "score": -7, "meta": {"k": [1, 2.5, null]},
                            "uid": "7d0c0c2e-1111-4000-8000-000000000001", "seen": "2026-11-26T04:50:30.123456Z"},
                   "dataOld": {}}),
            json!({"schema": "public", "table": "users", "action": "UPDATE",
                   "data": {"id": 9007199254740993u64, "email": "new@b.c", "active": null, "score": -7, "meta": {"k": [1, 2.5, null]},
                            "uid": "7d0c0c2e-1111-4000-8000-000000000001", "seen": "2026-11-26T04:50:30.123456Z"},
                   "dataOld": {"id": 9007199254740993u64}}),
            json!({"schema": "public", "table": "users", "action": "DELETE", "data": {}, "dataOld": {"id": 9007199254740993u64}}),
            json!({"schema": "public", "table": "users", "action": "TRUNCATE", "data": {}, "dataOld": {}}),
        ]
    );
    // The exact text, not just the value: the big integer must not pass through a float.
    assert!(
        messages[0].payload_str().contains("\"id\":9007199254740993,"),
        "{}",
        messages[0].payload_str()
    );
    for (m, action) in messages.iter().zip(["INSERT", "UPDATE", "DELETE", "TRUNCATE"]) {
        assert_eq!(m.subject, format!("{}.public_users", setup.topic));
        assert_eq!(m.header("Wal-Action"), Some(action));
        assert_eq!(m.header("Wal-Schema"), Some("public"));
        assert_eq!(m.header("Wal-Table"), Some("users"));
        assert_eq!(m.header("Content-Type"), Some("application/json"));
        assert!(m.header("Wal-Xid").and_then(|x| x.parse::<u32>().ok()).is_some());
        parse_lsn(m.header("Wal-Lsn").expect("Wal-Lsn header"));
    }
    // Commit order: commit LSNs never go back. Nothing from `orders` (filtered out), though it
    // was written between the users changes.
    let lsns: Vec<u64> = messages
        .iter()
        .map(|m| parse_lsn(m.header("Wal-Lsn").unwrap_or_default()))
        .collect();
    assert!(lsns.windows(2).all(|w| w[0] <= w[1]), "{lsns:?}");
    let ids: HashSet<&str> = messages.iter().filter_map(|m| m.header("Nats-Msg-Id")).collect();
    assert_eq!(ids.len(), 4, "each change has its own id");
    pg.psql("INSERT INTO users (id) VALUES (1)");
    let all = nats.wait_for_messages(&setup.topic, 5, DEADLINE).await;
    assert_eq!(all.len(), 5, "only the users changes were published");
    assert_eq!(all[4].json()["data"]["id"], 1);

    let status = blocking(|| service.terminate());
    assert!(
        status.success(),
        "SIGTERM exits 0, got {status:?}; log:\n{}",
        service.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_exactly_where_it_stopped() {
    let (pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    pg.psql("CREATE TABLE items (id int4 PRIMARY KEY, note text)");
    let setup = Setup::new("restart");
    let mut service = Service::start(&setup.yaml(&pg, &nats));
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));
    pg.psql("INSERT INTO items SELECT g, 'first' FROM generate_series(1, 50) g");
    nats.wait_for_messages(&setup.topic, 50, DEADLINE).await;
    let last_commit = nats
        .stream_messages(&setup.topic)
        .await
        .last()
        .and_then(|m| m.header("Wal-Lsn").map(parse_lsn));

    let status = blocking(|| service.terminate());
    assert!(status.success(), "SIGTERM exits 0; log:\n{}", service.log());
    // The final LSN was confirmed on the way out.
    let confirmed = confirmed_flush(&pg, &setup.slot);
    assert!(
        Some(confirmed) > last_commit,
        "confirmed {confirmed:X} must pass the last commit {last_commit:X?}"
    );

    // Written while the service is down…
    pg.psql("INSERT INTO items SELECT g, 'second' FROM generate_series(51, 80) g; UPDATE items SET note = 'x' WHERE id = 1;");
    blocking(|| service.start_again());
    let messages = nats.wait_for_messages(&setup.topic, 81, DEADLINE).await;
    // …arrive exactly once, after the first batch, in order.
    let ids: Vec<String> = messages
        .iter()
        .map(|m| m.header("Nats-Msg-Id").unwrap_or_default().to_string())
        .collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 81, "no duplicates");
    let keys: Vec<i64> = messages
        .iter()
        .map(|m| m.json()["data"]["id"].as_i64().unwrap_or(-1))
        .collect();
    let expected: Vec<i64> = (1..=80).chain([1]).collect();
    assert_eq!(keys, expected);
    // Nothing more arrives: the stream settles at 81 (give the server a moment to send more).
    pg.psql("INSERT INTO items VALUES (1000, 'marker')");
    let all = nats.wait_for_messages(&setup.topic, 82, DEADLINE).await;
    assert_eq!(all.len(), 82);
    blocking(|| service.terminate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_is_confirmed_only_after_jetstream_acks() {
    let (pg, mut nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    pg.psql("CREATE TABLE t (id int4 PRIMARY KEY)");
    let setup = Setup::new("acks");
    let mut service = Service::start(&setup.yaml(&pg, &nats));
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));
    pg.psql("INSERT INTO t VALUES (1)");
    nats.wait_for_messages(&setup.topic, 1, DEADLINE).await;

    // NATS goes away; a change committed now cannot be acknowledged.
    blocking(|| nats.stop());
    pg.psql("INSERT INTO t VALUES (2)");
    let after_commit = parse_lsn(&pg.psql("SELECT pg_current_wal_lsn()"));
    // For a few heartbeat intervals the slot must stay behind that commit (it would pass it
    // within a second if LSNs were confirmed without acks).
    let until = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < until {
        let confirmed = confirmed_flush(&pg, &setup.slot);
        assert!(
            confirmed < after_commit,
            "slot confirmed {confirmed:X} past an unacknowledged commit (< {after_commit:X})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        service.is_running(),
        "a NATS outage is not fatal; log:\n{}",
        service.log()
    );

    // NATS is back: the change arrives, then the slot moves past it.
    blocking(|| nats.start_again());
    let messages = nats.wait_for_messages(&setup.topic, 2, DEADLINE).await;
    assert_eq!(messages[1].json()["data"]["id"], 2);
    blocking(|| {
        wait_until_sync("slot confirmed past the acknowledged commit", DEADLINE, || {
            confirmed_flush(&pg, &setup.slot) >= after_commit
        })
    });
    assert_eq!(nats.stream_messages(&setup.topic).await.len(), 2, "nothing twice");
    blocking(|| service.terminate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_slot_advances_with_the_server() {
    let (pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    pg.psql("CREATE TABLE unpublished (id int4)");
    let mut setup = Setup::new("idle");
    setup.listener_extra = "  filter:\n    tables:\n      nothing_here: [insert]\n".into();
    let mut service = Service::start(&setup.yaml(&pg, &nats));
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));
    // Filtered-out traffic produces no messages but must not hold WAL back.
    pg.psql("INSERT INTO unpublished SELECT generate_series(1, 100)");
    let target = parse_lsn(&pg.psql("SELECT pg_current_wal_lsn()"));
    blocking(|| {
        wait_until_sync(
            "the slot follows the WAL although nothing was published",
            DEADLINE,
            || confirmed_flush(&pg, &setup.slot) >= target,
        )
    });
    assert_eq!(nats.stream_len(&setup.topic).await, Some(0));
    blocking(|| service.terminate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_does_not_capture_our_subjects_is_a_clear_fatal_error() {
    let (pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    let setup = Setup::new("mismatch");
    nats.create_stream(&setup.topic, &["something.else"]).await;
    let mut service = Service::start(&setup.yaml(&pg, &nats));
    let last = blocking(|| service.fatal_line(DEADLINE));
    assert!(
        last.starts_with("wal-listener: JetStream stream \"cdc_mismatch\" exists but captures [\"something.else\"], not \"cdc_mismatch.>\""),
        "{last}"
    );
    assert!(!service.log().contains("backtrace"), "{}", service.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_never_acknowledges_is_a_clear_fatal_error() {
    let (pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    let setup = Setup::new("noack");
    nats.jetstream()
        .await
        .create_stream(async_nats::jetstream::stream::Config {
            name: setup.topic.clone(),
            subjects: vec![format!("{}.>", setup.topic)],
            no_ack: true,
            ..Default::default()
        })
        .await
        .expect("create stream");
    let mut service = Service::start(&setup.yaml(&pg, &nats));
    let last = blocking(|| service.fatal_line(DEADLINE));
    assert!(
        last.starts_with("wal-listener: JetStream stream \"cdc_noack\" has no_ack set"),
        "{last}"
    );
}
