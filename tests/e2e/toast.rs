//! TOAST and replica identity: what `data`, `dataOld` and `unchangedToast` hold for UPDATE and
//! DELETE under REPLICA IDENTITY DEFAULT, FULL, USING INDEX and NOTHING (README, "Replica
//! identity"), with a value large and random enough to be stored out of line.

use serde_json::json;

use super::expect::{DEADLINE, blocking, on_subject};
use crate::support::service::{Service, Setup, wait_streaming};
use crate::support::{NatsServer, PgCluster, StoredMessage};

/// 12,000 characters from a 64-letter alphabet, pseudo-random: pglz cannot shrink it below
/// the 2 kB TOAST threshold, so it is moved out of line.
fn incompressible(seed: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut x = seed | 1;
    (0..12_000)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(ALPHABET[usize::try_from(x % 64).unwrap_or(0)])
        })
        .collect()
}

/// (action, data, dataOld, unchangedToast) of each message, in order.
fn summary(messages: &[&StoredMessage]) -> Vec<serde_json::Value> {
    messages
        .iter()
        .map(|m| {
            let p = m.json();
            json!([p["action"], p["data"], p["dataOld"], p.get("unchangedToast")])
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_is_never_faked_under_each_replica_identity() {
    let (pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    pg.psql(
        "CREATE TABLE t_default (id int8 PRIMARY KEY, note text, big text);
         CREATE TABLE t_full (id int8 PRIMARY KEY, note text, big text);
         ALTER TABLE t_full REPLICA IDENTITY FULL;
         CREATE TABLE t_index (id int8 NOT NULL, code text NOT NULL, note text, big text);
         CREATE UNIQUE INDEX t_index_code ON t_index (code);
         ALTER TABLE t_index REPLICA IDENTITY USING INDEX t_index_code;
         CREATE TABLE t_nothing (id int8, note text);
         ALTER TABLE t_nothing REPLICA IDENTITY NOTHING;",
    );
    let setup = Setup::new("toast");
    let mut service = Service::start(&setup.yaml(&pg, &nats));
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));

    let big = incompressible(7);
    pg.psql(&format!(
        "INSERT INTO t_default VALUES (1, 'a', '{big}');
         UPDATE t_default SET note = 'b' WHERE id = 1;
         UPDATE t_default SET id = 2, note = 'c' WHERE id = 1;
         UPDATE t_default SET big = 'small' WHERE id = 2;
         UPDATE t_default SET big = NULL WHERE id = 2;
         DELETE FROM t_default WHERE id = 2;
         INSERT INTO t_full VALUES (1, 'a', '{big}');
         UPDATE t_full SET note = 'b' WHERE id = 1;
         DELETE FROM t_full WHERE id = 1;
         INSERT INTO t_index VALUES (1, 'k1', 'a', '{big}');
         UPDATE t_index SET note = 'b' WHERE code = 'k1';
         UPDATE t_index SET code = 'k2' WHERE code = 'k1';
         DELETE FROM t_index WHERE code = 'k2';
         INSERT INTO t_nothing VALUES (1, 'a');"
    ));
    // The value really was stored out of line (TOAST), not inline or compressed.
    let toasted = pg.psql(
        "SELECT count(*) FROM pg_class c WHERE c.relname IN ('t_default', 't_full', 't_index') AND c.reltoastrelid <> 0",
    );
    assert_eq!(toasted, "3");
    pg.psql(&format!("INSERT INTO t_full VALUES (9, 'probe', '{big}')"));
    let stored = pg.psql("SELECT pg_column_size(big) >= 12000 AND length(big) = 12000 FROM t_full WHERE id = 9");
    assert_eq!(stored, "t", "the value is stored uncompressed");

    // NOTHING: PostgreSQL itself refuses UPDATE and DELETE of a table that publishes them
    // without a replica identity, so no such event can exist.
    let refused = std::process::Command::new(crate::support::pg::pg_bindir().join("psql"))
        .args([
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port().to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .args(["-c", "UPDATE t_nothing SET note = 'b'"])
        .output()
        .expect("run psql");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("does not have a replica identity and publishes updates"),
        "{stderr}"
    );

    let all = nats.wait_for_messages(&setup.topic, 15, DEADLINE).await;
    let subject = |table: &str| format!("{}.public_{table}", setup.topic);

    assert_eq!(
        summary(&on_subject(&all, &subject("t_default"))),
        [
            json!(["INSERT", {"id": 1, "note": "a", "big": big}, {}, null]),
            // No old tuple: the key is taken from the new row; big was not sent.
            json!(["UPDATE", {"id": 1, "note": "b"}, {"id": 1}, ["big"]]),
            // Key changed: the old key arrives as a K tuple; big still was not sent.
            json!(["UPDATE", {"id": 2, "note": "c"}, {"id": 1}, ["big"]]),
            json!(["UPDATE", {"id": 2, "note": "c", "big": "small"}, {"id": 2}, null]),
            json!(["UPDATE", {"id": 2, "note": "c", "big": null}, {"id": 2}, null]),
            json!(["DELETE", {}, {"id": 2}, null]),
        ]
    );
    assert_eq!(
        summary(&on_subject(&all, &subject("t_full"))),
        [
            json!(["INSERT", {"id": 1, "note": "a", "big": big}, {}, null]),
            // FULL: the old row holds big, so it is copied into data.
            json!(["UPDATE", {"id": 1, "note": "b", "big": big}, {"id": 1, "note": "a", "big": big}, null]),
            json!(["DELETE", {}, {"id": 1, "note": "b", "big": big}, null]),
            json!(["INSERT", {"id": 9, "note": "probe", "big": big}, {}, null]),
        ]
    );
    assert_eq!(
        summary(&on_subject(&all, &subject("t_index"))),
        [
            json!(["INSERT", {"id": 1, "code": "k1", "note": "a", "big": big}, {}, null]),
            json!(["UPDATE", {"id": 1, "code": "k1", "note": "b"}, {"code": "k1"}, ["big"]]),
            json!(["UPDATE", {"id": 1, "code": "k2", "note": "b"}, {"code": "k1"}, ["big"]]),
            json!(["DELETE", {}, {"code": "k2"}, null]),
        ]
    );
    assert_eq!(
        summary(&on_subject(&all, &subject("t_nothing"))),
        [json!(["INSERT", {"id": 1, "note": "a"}, {}, null])]
    );
    blocking(|| service.terminate());
}
