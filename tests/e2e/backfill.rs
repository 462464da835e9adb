//! Backfills (README "Backfill"): existing rows as READ events merged into the live stream —
//! under concurrent writes the replayed stream equals the table, and no key goes back in
//! time; kill -9 resumes without duplicates; any key type; clear refusals.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::support::nats::StoredMessage;
use crate::support::service::{Service, Setup, wait_streaming};
use crate::support::{NatsServer, PgCluster, blocking, wait_until};

const DEADLINE: Duration = Duration::from_secs(240);

/// `wal-listener backfill -c <the service's config> args…`: exit code and output.
fn backfill(service: &Service, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wal-listener"))
        .arg("backfill")
        .arg("-c")
        .arg(service.config_path())
        .args(args)
        .output()
        .expect("run wal-listener backfill");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The id a request printed (`backfill b… requested: …`).
fn requested_id(output: &str) -> String {
    output
        .lines()
        .find_map(|l| {
            l.strip_prefix("backfill ")
                .and_then(|r| r.split_once(" requested"))
                .map(|(id, _)| id.to_owned())
        })
        .unwrap_or_else(|| panic!("no backfill id in {output:?}"))
}

fn action(m: &StoredMessage) -> String {
    m.header("Wal-Action").unwrap_or_default().to_owned()
}

async fn backfill_record(nats: &NatsServer, slot: &str, id: &str) -> Option<Value> {
    let js = nats.jetstream().await;
    let kv = js.get_key_value(format!("wal_listener_backfill_{slot}")).await.ok()?;
    let bytes = kv.get(id).await.ok()??;
    serde_json::from_slice(&bytes).ok()
}

async fn wait_backfill_status(nats: &NatsServer, slot: &str, id: &str, status: &str) -> Value {
    crate::support::wait_for(&format!("backfill {id} {status}"), DEADLINE, || async move {
        backfill_record(nats, slot, id).await.filter(|r| r["status"] == status)
    })
    .await
}

/// A new table and its rows exist before the slot: `listener.snapshot: initial` publishes
/// them as READ events (exact payload and headers, key order), then the live changes; a
/// table without a key is skipped with the reason; a restart does not snapshot again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_initial_publishes_existing_rows_once_then_the_stream() {
    let (pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    pg.psql(
        "CREATE TABLE items (id int8 PRIMARY KEY, v text, n numeric, at timestamptz); \
         INSERT INTO items SELECT g, 'v' || g, g / 4.0, '2024-05-01 12:00:00+00'::timestamptz + g * interval '1 s' FROM generate_series(1, 2000) g; \
         CREATE TABLE nokey (x int); INSERT INTO nokey VALUES (1);",
    );
    let mut setup = Setup::new("bfsnap");
    setup.listener_extra = "  snapshot: initial\n  backfillChunkSize: 300\n".into();
    let mut service = Service::start(&setup.yaml(&pg, &nats));
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));
    let messages = nats.wait_for_messages(&setup.topic, 2000, DEADLINE).await;
    let reads: Vec<&StoredMessage> = messages.iter().filter(|m| action(m) == "READ").collect();
    assert_eq!(reads.len(), 2000, "every existing row once");
    let ids: Vec<i64> = reads
        .iter()
        .map(|m| m.json()["data"]["id"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(ids, (1..=2000).collect::<Vec<_>>(), "in key order");
    let first = reads[0].json();
    assert_eq!(first["action"], "READ");
    assert_eq!(first["schema"], "public");
    assert_eq!(first["table"], "items");
    assert_eq!(
        first["data"],
        serde_json::json!({"id": 1, "v": "v1", "n": "0.25000000000000000000", "at": "2024-05-01T12:00:01.000000Z"})
    );
    assert_eq!(first["dataOld"], serde_json::json!({}));
    assert_eq!(reads[0].subject, format!("{}.public_items", setup.topic));
    let backfill_id = reads[0].header("Wal-Backfill").expect("Wal-Backfill header").to_owned();
    assert!(
        reads
            .iter()
            .all(|m| m.header("Wal-Backfill") == Some(backfill_id.as_str()))
    );
    let msg_ids: HashSet<&str> = reads.iter().filter_map(|m| m.header("Nats-Msg-Id")).collect();
    assert_eq!(msg_ids.len(), 2000);
    let log = service.log();
    assert!(log.contains("nokey") && log.contains("no primary key"), "log:\n{log}");

    // Live changes follow; an INSERT of the same values maps them exactly as the READ did.
    pg.psql("INSERT INTO items SELECT 5000, v, n, at FROM items WHERE id = 1");
    let messages = nats.wait_for_messages(&setup.topic, 2001, DEADLINE).await;
    let last = messages.last().expect("a message");
    assert_eq!(action(last), "INSERT");
    let mut inserted = last.json()["data"].clone();
    inserted["id"] = Value::from(1);
    assert_eq!(inserted, first["data"], "READ and INSERT map values alike");
    let record = wait_backfill_status(&nats, &setup.slot, &backfill_id, "done").await;
    assert_eq!(record["tables"][0]["rows"].as_u64(), Some(2000), "{record}");

    // A restart streams on; no second snapshot.
    assert!(blocking(|| service.terminate()).success());
    blocking(|| service.start_again());
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));
    pg.psql("INSERT INTO items VALUES (5001, 'after restart', 1, now())");
    let messages = nats.wait_for_messages(&setup.topic, 2002, DEADLINE).await;
    assert_eq!(messages.len(), 2002, "nothing read again");
    assert_eq!(
        messages.last().map(|m| m.json()["data"]["id"].clone()),
        Some(Value::from(5001))
    );
    let (code, status) = backfill(&service, &["--status"]);
    assert_eq!(code, 0, "{status}");
    assert!(status.contains(&format!("{backfill_id} done: 2000 rows")), "{status}");
    assert!(
        status.contains("public.nokey") && status.contains("skipped"),
        "{status}"
    );
    assert!(blocking(|| service.terminate()).success());
}

/// Writes random updates, deletes and inserts in small transactions until stopped; every
/// written row carries `ver`, a number that grows with every write.
struct Writer {
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(pg: &PgCluster, rows: i64) -> Writer {
        let conn = pg.conn_string("postgres");
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let (stop2, writes2) = (stop.clone(), writes.clone());
        let task = tokio::spawn(async move {
            let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
                .await
                .expect("writer connects");
            tokio::spawn(connection);
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            let mut next_new = rows + 1;
            // A steady writer (about 500 transactions/s at most, for at most 3 minutes): the
            // service in a debug build keeps up with it on a loaded 2-core machine, so the
            // backfill's watermarks are reached and the test ends.
            let started = std::time::Instant::now();
            while !stop2.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(180) {
                // xorshift: a key spread over the whole table.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = (x % rows as u64) as i64 + 1;
                let sql = match x % 10 {
                    0..=5 => format!("UPDATE big SET ver = nextval('ver_seq'), v = 'u' || {key} WHERE id = {key}"),
                    6 | 7 => format!("DELETE FROM big WHERE id = {key}"),
                    _ => {
                        next_new += 1;
                        format!(
                            "INSERT INTO big VALUES ({key}, nextval('ver_seq'), 'again') ON CONFLICT (id) DO UPDATE SET ver = nextval('ver_seq'); \
                             INSERT INTO big VALUES ({}, nextval('ver_seq'), 'new')",
                            next_new
                        )
                    }
                };
                if client.batch_execute(&format!("BEGIN; {sql}; COMMIT")).await.is_ok() {
                    writes2.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        Writer { stop, writes, task }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.writes.load(Ordering::Relaxed)
    }
}

/// Replay the stream: the last event per key wins, DELETE removes. Also checks that the
/// versions seen for one key never go back.
fn replay(messages: &[StoredMessage]) -> BTreeMap<i64, (i64, String)> {
    let mut state = BTreeMap::new();
    let mut seen: HashMap<i64, i64> = HashMap::new();
    for m in messages {
        let json = m.json();
        let (row, deleted) = match json["action"].as_str() {
            Some("READ" | "INSERT" | "UPDATE") => (&json["data"], false),
            Some("DELETE") => (&json["dataOld"], true),
            other => panic!("unexpected action {other:?}"),
        };
        let id = row["id"].as_i64().unwrap_or_else(|| panic!("no id in {json}"));
        if deleted {
            state.remove(&id);
            continue;
        }
        let ver = row["ver"].as_i64().unwrap_or_else(|| panic!("no ver in {json}"));
        if let Some(before) = seen.insert(id, ver) {
            assert!(
                ver >= before,
                "key {id} went back in time: version {ver} after {before} (seq {}, {})",
                m.seq,
                json["action"]
            );
        }
        state.insert(id, (ver, row["v"].as_str().unwrap_or_default().to_owned()));
    }
    state
}

/// Rows backfilled while a writer updates, deletes and inserts random rows: replaying the
/// stream gives exactly the table, and no key's versions go back in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_under_concurrent_writes_converges_to_the_table() {
    let rows: i64 = std::env::var("BACKFILL_TEST_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    let (pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    pg.psql(&format!(
        "CREATE SEQUENCE ver_seq; CREATE TABLE big (id int8 PRIMARY KEY, ver int8 NOT NULL, v text); \
         INSERT INTO big SELECT g, nextval('ver_seq'), 'v' || g FROM generate_series(1, {rows}) g;"
    ));
    let setup = Setup::new("bfconc");
    let mut service = Service::start(&setup.yaml(&pg, &nats));
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));
    let writer = Writer::start(&pg, rows);
    let (code, out) = backfill(&service, &["--table", "public.big", "--chunk-size", "5000", "--wait"]);
    assert_eq!(code, 0, "{out}\n{}", service.log());
    assert!(out.contains("done"), "{out}");
    let writes = writer.finish().await;
    assert!(writes > 100, "the writer barely ran ({writes} writes)");
    // Everything the writer committed is in the stream once a later sentinel is.
    pg.psql("INSERT INTO big VALUES (-1, nextval('ver_seq'), 'sentinel')");
    let (topic, nats_ref) = (setup.topic.as_str(), &nats);
    wait_until("the sentinel in the stream", DEADLINE, || async move {
        let nats = nats_ref;
        let Some(len) = nats.stream_len(topic).await else {
            return false;
        };
        let js = nats.jetstream().await;
        let Ok(stream) = js.get_stream(topic).await else {
            return false;
        };
        stream
            .get_raw_message(len)
            .await
            .ok()
            .is_some_and(|m| String::from_utf8_lossy(&m.payload).contains("sentinel"))
    })
    .await;
    let messages = nats.stream_messages_fast(&setup.topic).await;
    let reads = messages.iter().filter(|m| action(m) == "READ").count();
    assert!(reads as i64 > rows / 2, "only {reads} READ events for {rows} rows");
    let replayed = replay(&messages);
    let table: BTreeMap<i64, (i64, String)> = pg
        .psql("SELECT id, ver, v FROM big ORDER BY id")
        .lines()
        .map(|l| {
            let mut parts = l.split('|');
            let id = parts.next().and_then(|p| p.trim().parse().ok()).expect("id");
            let ver = parts.next().and_then(|p| p.trim().parse().ok()).expect("ver");
            (id, (ver, parts.next().unwrap_or_default().trim().to_owned()))
        })
        .collect();
    assert_eq!(replayed.len(), table.len(), "keys: stream replay vs SELECT");
    let differ: Vec<_> = table
        .iter()
        .filter(|(k, v)| replayed.get(k) != Some(v))
        .take(5)
        .collect();
    assert!(differ.is_empty(), "rows differ, e.g. {differ:?}");
    assert!(blocking(|| service.terminate()).success());
}

/// kill -9 twice during a backfill: it resumes after the last acknowledged chunk (at most one
/// chunk read again), every row arrives, and none is stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_twice_during_a_backfill_resumes_without_duplicates() {
    let (pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    let rows = 40_000u64;
    let chunk = 1000u64;
    numbered_rows(&pg, rows);
    let setup = Setup::new("bfkill");
    let mut service = Service::start(&setup.yaml(&pg, &nats));
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));
    let (code, out) = backfill(&service, &["--table", "t", "--chunk-size", &chunk.to_string()]);
    assert_eq!(code, 0, "{out}");
    let id = requested_id(&out);
    for at_least in [6_000, 20_000] {
        let (topic, nats_ref) = (setup.topic.as_str(), &nats);
        wait_until("backfilled rows to arrive", DEADLINE, || async move {
            nats_ref.stream_len(topic).await.unwrap_or(0) >= at_least
        })
        .await;
        blocking(|| service.kill());
        let stored = nats.stream_len(&setup.topic).await.unwrap_or(0);
        let saved = backfill_record(&nats, &setup.slot, &id)
            .await
            .and_then(|r| r["tables"][0]["rows"].as_u64())
            .unwrap_or(0);
        assert!(
            stored <= saved + chunk,
            "more than one chunk beyond the saved progress: {stored} stored, {saved} saved"
        );
        blocking(|| service.start_again());
    }
    let record = wait_backfill_status(&nats, &setup.slot, &id, "done").await;
    assert_every_row_once_in_order(&nats, &setup.topic, rows).await;
    assert_eq!(record["tables"][0]["rows"].as_u64(), Some(rows), "{record}");
    let log = service.log();
    assert_eq!(log.matches("backfill resumed").count(), 2, "log:\n{log}");
    assert!(blocking(|| service.terminate()).success());
}

/// Composite (text with a collation + int), enum and uuid keys page in PostgreSQL's order;
/// `--where` reads a subset; a table without a key and a table outside the publication are
/// refused with the fix; `--cancel` stops a backfill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_key_type_where_cancel_and_clear_refusals() {
    let (pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    let mut setup = Setup::new("bfkeys");
    setup.server_port = crate::support::free_port();
    pg.psql(&format!(
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy'); \
         CREATE TABLE comp (name text COLLATE \"C\", n int, v text, PRIMARY KEY (name, n)); \
         INSERT INTO comp SELECT s, g, s || g FROM unnest(ARRAY['it''s', 'Zed', 'ärger', 'a b', '\\x', 'a']) s, generate_series(1, 5) g; \
         CREATE TABLE moods (m mood PRIMARY KEY, v int); INSERT INTO moods VALUES ('happy', 3), ('sad', 1), ('ok', 2); \
         CREATE TABLE uu (id uuid PRIMARY KEY, v int); INSERT INTO uu SELECT md5(g::text)::uuid, g FROM generate_series(1, 50) g; \
         CREATE TABLE nokey (x int); \
         CREATE TABLE outside (id int PRIMARY KEY); \
         CREATE TABLE slow (id int PRIMARY KEY); INSERT INTO slow SELECT generate_series(1, 20000); \
         CREATE PUBLICATION {} FOR TABLE comp, moods, uu, nokey, slow;",
        setup.publication
    ));
    let yaml = setup.yaml(&pg, &nats);
    let mut service = Service::start(&yaml);
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));
    let (_, checked) = blocking(|| crate::support::service::check_connect(&yaml, &[]));
    assert!(
        checked.contains("ok: backfill: 4 of 5 selected table(s) can be backfilled")
            && checked.contains("warning: backfill: table public.nokey has no primary key"),
        "{checked}"
    );

    let (code, out) = backfill(&service, &["--table", "nokey"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("public.nokey has no primary key") && out.contains("add a primary key"),
        "{out}"
    );
    let (code, out) = backfill(&service, &["--table", "outside"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("not in publication") && out.contains("ALTER PUBLICATION"),
        "{out}"
    );
    let (code, out) = backfill(&service, &["--table", "nosuch"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does not exist"), "{out}");
    let (code, out) = backfill(&service, &["--table", "comp", "--where", "n >>> 2"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("--where"), "{out}");

    let (code, out) = backfill(
        &service,
        &[
            "--table",
            "comp",
            "--table",
            "moods",
            "--table",
            "uu",
            "--chunk-size",
            "4",
            "--wait",
        ],
    );
    assert_eq!(code, 0, "{out}\n{}", service.log());
    let (code, out) = backfill(&service, &["--table", "comp", "--where", "n > 3", "--wait"]);
    assert_eq!(code, 0, "{out}");
    let messages = nats.wait_for_messages(&setup.topic, 30 + 3 + 50 + 12, DEADLINE).await;
    let of = |table: &str| -> Vec<Value> {
        messages
            .iter()
            .map(StoredMessage::json)
            .filter(|j| j["table"] == table)
            .map(|j| j["data"].clone())
            .collect()
    };
    let comp = of("comp");
    assert_eq!(comp.len(), 30 + 12);
    let expected: Vec<(String, i64)> = pg
        .psql("SELECT name, n FROM comp ORDER BY name, n")
        .lines()
        .map(|l| {
            let (name, n) = l.rsplit_once('|').expect("row");
            (name.to_owned(), n.trim().parse().expect("n"))
        })
        .collect();
    let first: Vec<(String, i64)> = comp[..30]
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap_or_default().to_owned(),
                d["n"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(first, expected, "composite key in the collation's order");
    assert!(
        comp[30..].iter().all(|d| d["n"].as_i64().is_some_and(|n| n > 3)),
        "--where subset"
    );
    let moods: Vec<Value> = of("moods").iter().map(|d| d["m"].clone()).collect();
    assert_eq!(
        moods,
        vec![Value::from("sad"), Value::from("ok"), Value::from("happy")],
        "enum order"
    );
    let uu = of("uu");
    assert_eq!(uu.len(), 50);
    let uuids: Vec<String> = pg
        .psql("SELECT id FROM uu ORDER BY id")
        .lines()
        .map(|l| l.trim().to_owned())
        .collect();
    let got: Vec<String> = uu
        .iter()
        .map(|d| d["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(got, uuids);
    let port = setup.server_port;
    let (_, metrics) = blocking(|| crate::support::http::get(port, "/metrics")).expect("metrics");
    assert_eq!(
        crate::support::http::sample(
            &metrics,
            "wal_listener_backfill_rows_total{app=\"wal-listener\",table=\"public.comp\"}"
        ),
        Some(42.0),
        "{metrics}"
    );

    // Cancel a slow one (2,000 chunks of 10 rows) while it runs.
    let (code, out) = backfill(&service, &["--table", "slow", "--chunk-size", "10"]);
    assert_eq!(code, 0, "{out}");
    let id = requested_id(&out);
    wait_backfill_status(&nats, &setup.slot, &id, "running").await;
    let (code, out) = backfill(&service, &["--cancel", &id]);
    assert_eq!(code, 0, "{out}");
    let record = wait_backfill_status(&nats, &setup.slot, &id, "cancelled").await;
    let done = record["tables"][0]["rows"].as_u64().unwrap_or(0);
    assert!(done < 20_000, "cancelled after {done} rows");
    let (code, status) = backfill(&service, &["--status"]);
    assert_eq!(code, 0, "{status}");
    assert!(status.contains(&format!("{id} cancelled")), "{status}");
    assert!(blocking(|| service.terminate()).success());
}

/// Two instances on one slot: the one streaming is killed in the middle of a backfill, the
/// standby takes over and finishes it from the saved progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_that_takes_over_finishes_the_backfill() {
    let (pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    let rows = 30_000u64;
    numbered_rows(&pg, rows);
    let setup = Setup::new("bfstandby");
    let yaml = setup.yaml(&pg, &nats);
    let mut first = Service::start(&yaml);
    blocking(|| wait_streaming(&pg, &setup.slot, &mut first));
    let mut second = Service::start(&yaml);
    let (code, out) = backfill(&first, &["--table", "t", "--chunk-size", "1000"]);
    assert_eq!(code, 0, "{out}");
    let id = requested_id(&out);
    let (topic, nats_ref) = (setup.topic.as_str(), &nats);
    wait_until("part of the backfill", DEADLINE, || async move {
        nats_ref.stream_len(topic).await.unwrap_or(0) >= 8_000
    })
    .await;
    blocking(|| first.kill());
    wait_backfill_status(&nats, &setup.slot, &id, "done").await;
    assert_every_row_once_in_order(&nats, &setup.topic, rows).await;
    assert!(second.log().contains("backfill resumed"), "log:\n{}", second.log());
    assert!(blocking(|| second.terminate()).success());
}

/// A NATS restart (graceful) and a PostgreSQL restart (immediate: a crash) in the middle of a
/// backfill: the service reconnects, the backfill resumes from its saved progress and
/// finishes, every row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_survives_nats_and_postgres_restarts() {
    let (mut pg, mut nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    let rows = 30_000u64;
    numbered_rows(&pg, rows);
    let setup = Setup::new("bfrestart");
    let mut service = Service::start(&setup.yaml(&pg, &nats));
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));
    let (code, out) = backfill(&service, &["--table", "t", "--chunk-size", "500"]);
    assert_eq!(code, 0, "{out}");
    let id = requested_id(&out);
    wait_len(&nats, &setup.topic, 5_000).await;
    blocking(|| {
        nats.stop();
        std::thread::sleep(Duration::from_secs(2));
        nats.start_again();
    });
    wait_len(&nats, &setup.topic, 12_000).await;
    blocking(|| {
        pg.stop_immediate();
        pg.start_again();
    });
    wait_backfill_status(&nats, &setup.slot, &id, "done").await;
    assert_every_row_once_in_order(&nats, &setup.topic, rows).await;
    assert!(service.is_running(), "log:\n{}", service.log());
    let log = service.log();
    assert!(log.contains("backfill resumed"), "log:\n{log}");
    assert!(blocking(|| service.terminate()).success());
}

async fn wait_len(nats: &NatsServer, topic: &str, n: u64) {
    wait_until("backfilled rows to arrive", DEADLINE, || async move {
        nats.stream_len(topic).await.unwrap_or(0) >= n
    })
    .await;
}

/// Table `t` with rows 1..=`rows`.
fn numbered_rows(pg: &PgCluster, rows: u64) {
    pg.psql(&format!(
        "CREATE TABLE t (id int8 PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, {rows}) g;"
    ));
}

/// The stream holds table `t`'s rows 1..=`rows` once each (a chunk published again is
/// dropped by `Nats-Msg-Id`), in key order.
async fn assert_every_row_once_in_order(nats: &NatsServer, topic: &str, rows: u64) {
    let messages = nats.stream_messages_fast(topic).await;
    let keys: Vec<i64> = messages
        .iter()
        .map(|m| m.json()["data"]["id"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(keys.len() as u64, rows, "every row once");
    assert_eq!(keys, (1..=rows as i64).collect::<Vec<_>>(), "in key order");
}
