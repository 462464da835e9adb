//! Transactional messaging without an outbox table: `pg_logical_emit_message` becomes a
//! `MESSAGE` event, published in commit order with the transaction's row changes.

use serde_json::json;

use super::expect::{DEADLINE, blocking};
use crate::support::service::{Service, Setup, wait_streaming};
use crate::support::{NatsServer, PgCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_messages_are_published_in_commit_order_and_only_when_committed() {
    let (pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    pg.psql("CREATE TABLE orders (id int8 PRIMARY KEY)");
    let mut setup = Setup::new("msgs");
    setup.listener_extra = "  filter:\n    messages: [outbox, audit, bin, 'a.b c*>']\n".into();
    let mut service = Service::start(&setup.yaml(&pg, &nats));
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));

    // A: rows and a message in one transaction.
    let mut client = pg.client().await;
    let tx = client.transaction().await.expect("begin");
    tx.execute("INSERT INTO orders VALUES (1)", &[]).await.expect("insert");
    tx.execute(
        "SELECT pg_logical_emit_message(true, 'outbox', '{\"order\": 1, \"big\": 9007199254740993}')",
        &[],
    )
    .await
    .expect("emit");
    tx.execute("INSERT INTO orders VALUES (2)", &[]).await.expect("insert");
    let xid: i64 = tx
        .query_one("SELECT pg_current_xact_id()::text::int8", &[])
        .await
        .expect("xid")
        .get(0);
    tx.commit().await.expect("commit");

    // B: rolled back — its row and transactional message vanish; a non-transactional message
    // was published the moment it was written.
    pg.psql(
        "BEGIN;
         INSERT INTO orders VALUES (3);
         SELECT pg_logical_emit_message(true, 'outbox', 'rolled back');
         SELECT pg_logical_emit_message(false, 'audit', 'kept');
         ROLLBACK;",
    );
    // C: binary content outside a transaction; D: a prefix that needs sanitizing, plain-text
    // content, and a prefix listener.filter.messages does not list.
    pg.psql(r"SELECT pg_logical_emit_message(false, 'bin', '\x00ff'::bytea)");
    pg.psql(
        "BEGIN;
         SELECT pg_logical_emit_message(true, 'a.b c*>', 'plain text');
         SELECT pg_logical_emit_message(true, 'ignored', '{}');
         COMMIT;",
    );
    pg.psql("INSERT INTO orders VALUES (99)");

    let all = nats.wait_for_messages(&setup.topic, 7, DEADLINE).await;
    let topic = &setup.topic;
    let got: Vec<(String, serde_json::Value)> = all
        .iter()
        .map(|m| {
            let mut p = m.json();
            let o = p.as_object_mut().expect("object");
            let time = o.remove("commitTime");
            assert!(
                time.as_ref().and_then(|t| t.as_str()).is_some_and(|t| t.ends_with('Z')),
                "{time:?}"
            );
            o.remove("id");
            (m.subject.clone(), p)
        })
        .collect();
    let row =
        |id: i64| json!({"schema": "public", "table": "orders", "action": "INSERT", "data": {"id": id}, "dataOld": {}});
    let message = |prefix: &str, transactional: bool, content: serde_json::Value| json!({"schema": "", "table": "", "action": "MESSAGE", "prefix": prefix, "transactional": transactional, "content": content});
    let mut binary = message("bin", false, json!("\\x00ff"));
    binary["binary"] = json!(true);
    assert_eq!(
        got,
        [
            (format!("{topic}.public_orders"), row(1)),
            (
                format!("{topic}.message_outbox"),
                message("outbox", true, json!({"order": 1, "big": 9007199254740993u64}))
            ),
            (format!("{topic}.public_orders"), row(2)),
            (format!("{topic}.message_audit"), message("audit", false, json!("kept"))),
            (format!("{topic}.message_bin"), binary),
            (
                format!("{topic}.message_a_b_c__"),
                message("a.b c*>", true, json!("plain text"))
            ),
            (format!("{topic}.public_orders"), row(99)),
        ],
        "log:\n{}",
        service.log()
    );

    // The message carries its transaction's identity: commit LSN, xid, commit time; its own
    // position in the transaction gives it its own id.
    let (a, m, b) = (&all[0], &all[1], &all[2]);
    for h in ["Wal-Lsn", "Wal-Xid"] {
        assert_eq!(m.header(h), a.header(h), "{h}");
        assert_eq!(m.header(h), b.header(h), "{h}");
    }
    assert_eq!(m.header("Wal-Xid"), Some((xid & 0xFFFF_FFFF).to_string().as_str()));
    assert_eq!(m.header("Wal-Action"), Some("MESSAGE"));
    assert_eq!(m.json()["commitTime"], a.json()["commitTime"]);
    let ids: std::collections::HashSet<_> = [a, m, b].iter().filter_map(|x| x.header("Nats-Msg-Id")).collect();
    assert_eq!(ids.len(), 3);
    assert!(
        m.payload_str().contains("9007199254740993"),
        "content is embedded verbatim: {}",
        m.payload_str()
    );
    blocking(|| service.terminate());
}
