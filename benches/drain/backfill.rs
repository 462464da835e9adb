//! The drain bench's backfill case (`BENCH_ONLY=backfill`, or after the other cases):
//! `BACKFILL_ROWS` (default 1,000,000) narrow rows, read three ways in one invocation:
//! - `COPY (SELECT * FROM t ORDER BY id) TO STDOUT` into /dev/null: the physical limit of
//!   reading the table;
//! - a backlog drain of the same rows as INSERT events (100-row transactions), from a slot
//!   created before they were written;
//! - a backfill of the table (`wal-listener backfill --table`), from a fresh slot.
//!
//! Prints rows/s of each, the backfill's ratio to the INSERT drain (target ≥ 0.8) and to COPY,
//! and the backfilling process's peak RSS (target ≤ 64 MiB).

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::service::{Service, Setup};
use crate::support::{NatsServer, PgCluster};

pub async fn backfill_case(pg: &PgCluster, nats: &NatsServer) {
    let rows: u64 = std::env::var("BACKFILL_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    pg.psql(
        "CREATE TABLE bf (id int8 PRIMARY KEY, note text, at timestamptz DEFAULT now()); \
         CREATE PUBLICATION pub_bf FOR TABLE bf;",
    );
    let inserts = Setup::new("bf_insert");
    pg.psql(&format!(
        "SELECT pg_create_logical_replication_slot('{}', 'pgoutput')",
        inserts.slot
    ));
    let started = Instant::now();
    pg.psql(&format!(
        "DO $$ BEGIN FOR t IN 0..{} LOOP
           INSERT INTO bf (id, note) SELECT t * 100 + g, repeat('n', 200) FROM generate_series(1, 100) g;
           COMMIT;
         END LOOP; END $$;",
        rows / 100 - 1
    ));
    pg.psql("VACUUM ANALYZE bf");
    println!("backfill case: {rows} rows written in {:.1?}", started.elapsed());

    // COPY into /dev/null.
    let started = Instant::now();
    let out = Command::new(crate::support::pg::pg_bindir().join("psql"))
        .args(["-X", "-q", "-d", &pg.conn_string("postgres"), "-c"])
        .arg("\\copy (SELECT * FROM bf ORDER BY id) TO '/dev/null'")
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "COPY failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copy = rows as f64 / started.elapsed().as_secs_f64();

    // The INSERT drain.
    let script = std::env::var("BENCH_SCRIPT").ok();
    let took = crate::drain(
        pg,
        nats,
        &inserts,
        "pub_bf",
        crate::DEFAULT_WINDOW,
        rows,
        script.as_deref(),
    )
    .await
    .took;
    let drain = rows as f64 / took.as_secs_f64();
    let _ = nats.jetstream().await.delete_stream(&inserts.topic).await;

    // The backfill, from a fresh slot (no backlog).
    let mut setup = Setup::new("bf_read");
    setup.publication = "pub_bf".into();
    let yaml = setup.yaml(pg, nats).replace("level: debug", "level: warn");
    let mut service = Service::start(&yaml);
    let slot = setup.slot.clone();
    crate::support::wait_until_sync("the backfill service to stream", Duration::from_secs(60), || {
        pg.psql(&format!(
            "SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'"
        )) == "t"
    });
    let cpu_before = crate::cpu_seconds(service.pid());
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_wal-listener"))
        .args(["backfill", "-c"])
        .arg(service.config_path())
        .args(["--table", "public.bf"])
        .output()
        .expect("run wal-listener backfill");
    assert!(
        out.status.success(),
        "backfill request failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let topic = setup.topic.as_str();
    crate::wait_stored(&mut service, started, rows, || async move {
        nats.stream_len(topic).await.unwrap_or(0)
    })
    .await;
    let took = started.elapsed();
    let backfill = rows as f64 / took.as_secs_f64();
    let peak = crate::peak_rss_kib(service.pid());
    let cpu = (crate::cpu_seconds(service.pid()) - cpu_before) * 1e6 / rows as f64;
    tokio::task::block_in_place(|| service.terminate());
    let _ = nats.jetstream().await.delete_stream(&setup.topic).await;
    println!("COPY … TO /dev/null:          {copy:>9.0} rows/s");
    println!("INSERT backlog drain:         {drain:>9.0} rows/s");
    println!(
        "backfill:                     {backfill:>9.0} rows/s  ratio {:.2} to the INSERT drain (target ≥ 0.80), {:.2} to COPY; peak RSS {:.1} MiB (target ≤ 64); CPU {cpu:.2} µs/row",
        backfill / drain,
        backfill / copy,
        peak as f64 / 1024.0
    );
}
