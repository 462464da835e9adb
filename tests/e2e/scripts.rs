//! Lua routing against real servers: custom routes, hot reload under load, error policies.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::blocking;
use crate::support::service::{Service, Setup, wait_streaming};
use crate::support::{NatsServer, PgCluster, StoredMessage, wait_until, wait_until_sync};

const DEADLINE: Duration = Duration::from_secs(60);

/// Fresh servers, a table made by `table_sql`, and the service streaming with `script` as
/// `route.lua` under `scripts.onError: on_error`; `__TOPIC__` in the script is the test's topic.
fn start_scripted(
    name: &str,
    on_error: &str,
    table_sql: &str,
    script: &str,
) -> (PgCluster, NatsServer, Setup, Service) {
    let (pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    pg.psql(table_sql);
    let mut setup = Setup::new(name);
    setup.extra = format!("scripts:\n  path: route.lua\n  onError: {on_error}\n");
    let script = script.replace("__TOPIC__", &setup.topic);
    let mut service = Service::start_with_files(&setup.yaml(&pg, &nats), &[("route.lua", &script)]);
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));
    (pg, nats, setup, service)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_routes_by_column_fans_out_adds_headers_and_sends_raw_payloads() {
    let script = r#"function route(e)
             if e.table ~= "orders" then return nil end
             return {
               { subject = "__TOPIC__.orders." .. e.data.region, headers = { Tenant = e.data.tenant } },
               { subject = "__TOPIC__.notes", payload = e.data.note },
             }
           end"#;
    let table = "CREATE TABLE orders (id int4 PRIMARY KEY, region text, tenant int4, note text)";
    let (pg, nats, setup, mut service) = start_scripted("custom", "deadLetter", table, script);
    let topic = setup.topic.clone();
    pg.psql("INSERT INTO orders VALUES (1, 'eu', 42, 'plain text, not JSON')");
    let messages = nats.wait_for_messages(&topic, 2, DEADLINE).await;
    assert_eq!(messages[0].subject, format!("{topic}.orders.eu"));
    assert_eq!(messages[0].header("Tenant"), Some("42"));
    assert_eq!(messages[0].json()["data"]["region"], "eu");
    let id = messages[0].header("Nats-Msg-Id").unwrap_or_default().to_string();
    assert_eq!(messages[1].subject, format!("{topic}.notes"));
    assert_eq!(messages[1].payload_str(), "plain text, not JSON");
    assert_eq!(messages[1].header("Nats-Msg-Id"), Some(format!("{id}-1").as_str()));
    assert_eq!(
        messages[1].header("Content-Type"),
        None,
        "raw payloads are not labelled JSON"
    );
    blocking(|| service.terminate());
}

/// Two-row transactions until stopped; ids ascend, each transaction `2k+1, 2k+2`.
fn start_pair_load(pg: &PgCluster) -> (Arc<AtomicBool>, tokio::task::JoinHandle<()>) {
    let conn = pg.conn_string("postgres");
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let task = tokio::spawn(async move {
        let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        let mut next: i32 = 1;
        while !stop2.load(Ordering::Relaxed) {
            client
                .execute("INSERT INTO pairs VALUES ($1), ($1 + 1)", &[&next])
                .await
                .expect("insert a pair");
            next += 2;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    (stop, task)
}

fn version_of(m: &StoredMessage) -> &str {
    m.subject.rsplit('.').next().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_load_switches_between_transactions_and_loses_nothing() {
    let script = |v: &str| format!("function route(e) return '__TOPIC__.pairs.{v}' end");
    let table = "CREATE TABLE pairs (id int4 PRIMARY KEY)";
    let (pg, nats, setup, mut service) = start_scripted("reload", "halt", table, &script("v1"));
    let topic = setup.topic.clone();
    let (stop, load) = start_pair_load(&pg);
    nats.wait_for_messages(&topic, 100, DEADLINE).await;

    service.replace_file("route.lua", &script("v2").replace("__TOPIC__", &topic));
    let (topic_ref, nats_ref) = (topic.as_str(), &nats);
    wait_until("messages routed by the new version", DEADLINE, || async move {
        nats_ref
            .stream_messages(topic_ref)
            .await
            .iter()
            .any(|m| version_of(m) == "v2")
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let _ = load.await;

    let rows: usize = pg.psql("SELECT count(*) FROM pairs").parse().unwrap_or(0);
    let messages = nats.wait_for_messages(&topic, rows as u64, DEADLINE).await;
    assert_eq!(messages.len(), rows, "each row exactly once");
    let ids: Vec<i64> = messages
        .iter()
        .map(|m| m.json()["data"]["id"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(
        ids,
        (1..=rows as i64).collect::<Vec<_>>(),
        "commit order kept across the reload"
    );
    // The switch lands between transactions: both rows of a pair share a version, and every
    // v1 message comes before every v2 message.
    for pair in messages.chunks(2) {
        assert_eq!(
            version_of(&pair[0]),
            version_of(&pair[1]),
            "a transaction was split across versions"
        );
    }
    let first_v2 = messages.iter().position(|m| version_of(m) == "v2").unwrap_or(0);
    assert!(messages[first_v2..].iter().all(|m| version_of(m) == "v2"));
    assert!(service.log().contains("script reloaded"), "log:\n{}", service.log());
    blocking(|| service.terminate());
}

/// JetStream answers "no responders" for a subject no stream captures: that is a routing
/// mistake an operator must fix, so the process stops with a message saying so — and the
/// change is not confirmed, so nothing is lost once the script is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_outside_every_stream_stops_the_process_without_confirming_the_change() {
    let script = "function route(e) if e.data.id == 2 then return 'elsewhere.x' end return '__TOPIC__.t' end";
    let (pg, nats, setup, mut service) = start_scripted("nostream", "deadLetter", TABLE_T, script);
    let topic = setup.topic.clone();
    pg.psql("INSERT INTO t VALUES (1)");
    nats.wait_for_messages(&topic, 1, Duration::from_secs(60)).await;
    let before = crate::support::service::insert_before_commit(&pg, "INSERT INTO t VALUES (2)");
    let last = blocking(|| service.fatal_line(Duration::from_secs(60)));
    assert!(
        last.starts_with("wal-listener: no JetStream stream captures the subject of a published message"),
        "{last}"
    );
    let confirmed = blocking(|| crate::support::service::confirmed_flush(&pg, &setup.slot));
    assert!(
        confirmed <= before,
        "the unpublished change was confirmed: {confirmed:X} > {before:X}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_that_does_not_compile_is_rejected_and_the_old_one_keeps_running() {
    let good = "function route(e) return '__TOPIC__.good' end";
    let (pg, nats, setup, mut service) = start_scripted("syntax", "halt", TABLE_T, good);
    let topic = setup.topic.clone();
    service.replace_file("route.lua", "function route(e) return 'x' ennd");
    wait_until("the rejection to be logged", DEADLINE, || {
        let log = service.log();
        async move { log.contains("script reload rejected") }
    })
    .await;
    let log = service.log();
    assert!(log.contains("route.lua:1:"), "the error names file and line:\n{log}");
    pg.psql("INSERT INTO t VALUES (1)");
    let messages = nats.wait_for_messages(&topic, 1, DEADLINE).await;
    assert_eq!(messages[0].subject, format!("{topic}.good"));
    blocking(|| service.terminate());
}

const TABLE_T: &str = "CREATE TABLE t (id int4 PRIMARY KEY)";

const FAILING: &str =
    "function route(e) if e.data.id == 2 then error('cannot route row 2') end return '__TOPIC__.ok' end";

async fn run_policy(policy: &str) -> (PgCluster, NatsServer, Service, Setup) {
    let name = format!("policy_{}", policy.to_lowercase());
    let (pg, nats, setup, service) = start_scripted(&name, policy, TABLE_T, FAILING);
    pg.psql("INSERT INTO t VALUES (1); INSERT INTO t VALUES (2); INSERT INTO t VALUES (3);");
    (pg, nats, service, setup)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_publishes_the_original_event_with_the_error() {
    let (_pg, nats, mut service, setup) = run_policy("deadLetter").await;
    let messages = nats.wait_for_messages(&setup.topic, 3, DEADLINE).await;
    assert_eq!(messages[1].subject, format!("{}.dead_letter", setup.topic));
    assert_eq!(messages[1].json()["data"]["id"], 2, "the original event");
    let error = messages[1].header("Wal-Error").unwrap_or_default();
    assert!(error.contains("route.lua:1: cannot route row 2"), "{error}");
    assert_eq!(messages[2].json()["data"]["id"], 3, "and the stream goes on");
    blocking(|| service.terminate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_drops_the_failed_event_and_goes_on() {
    let (pg, nats, mut service, setup) = run_policy("skip").await;
    pg.psql("INSERT INTO t VALUES (4)");
    let messages = nats.wait_for_messages(&setup.topic, 3, DEADLINE).await;
    let ids: Vec<i64> = messages
        .iter()
        .map(|m| m.json()["data"]["id"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(ids, [1, 3, 4]);
    assert_eq!(
        service.log().matches("event not publishable; skipped").count(),
        1,
        "logged once per version and table"
    );
    blocking(|| service.terminate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halt_stops_at_the_failed_change_and_a_fixed_script_resumes_it() {
    let (_pg, nats, mut service, setup) = run_policy("halt").await;
    nats.wait_for_messages(&setup.topic, 1, DEADLINE).await;
    blocking(|| {
        wait_until_sync("the halt to be logged", DEADLINE, || {
            service.log().contains("publishing halted")
        })
    });
    assert!(service.is_running());
    assert_eq!(
        nats.stream_len(&setup.topic).await,
        Some(1),
        "nothing after the failed change"
    );

    service.replace_file(
        "route.lua",
        &format!("function route(e) return '{}.ok' end", setup.topic),
    );
    let messages = nats.wait_for_messages(&setup.topic, 3, DEADLINE).await;
    let ids: Vec<i64> = messages
        .iter()
        .map(|m| m.json()["data"]["id"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(
        ids,
        [1, 2, 3],
        "the failed change and everything after it, once, in order"
    );
    let unique: HashSet<&str> = messages.iter().filter_map(|m| m.header("Nats-Msg-Id")).collect();
    assert_eq!(unique.len(), 3);
    blocking(|| service.terminate());
}
