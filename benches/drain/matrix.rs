//! `BENCH_ONLY=matrix`: the drain across workload shapes, for the built-in default script and a
//! typical user script, each next to `pg_recvlogical` draining the same WAL.
//!
//! For every workload: its table is created (and, for updates, filled) before the slots, then
//! for each script and each of `BENCH_REPEAT` runs one slot for wal-listener and one for
//! `pg_recvlogical`, then the workload's WAL is written once. Each pair is drained back to
//! back (baseline first), and the median ratio, the median CPU µs/event and the largest peak
//! RSS (VmHWM) are reported. `BENCH_WORKLOADS=narrow,wide,…` picks workloads (default: all).
//! `BENCH_BEFORE=/path/to/wal-listener` runs an older build too, interleaved with this one.
//!
//! | workload | rows | what |
//! |---|---|---|
//! | `narrow` | `BENCH_ROWS` (200,000) | inserts of (int8, 200-char text, timestamptz), 100-row transactions |
//! | `update` | 100,000 | updates, REPLICA IDENTITY DEFAULT, 100-row transactions |
//! | `update_full` | 100,000 | the same with REPLICA IDENTITY FULL (`dataOld` is the whole row) |
//! | `wide` | 50,000 | inserts of 30 columns (int8, numeric, timestamptz, text, bool, uuid, jsonb), ~1 kB, 100-row transactions |
//! | `single` | 50,000 | one-row insert transactions |
//! | `text10k` | 10,000 | a 10 kB compressible text (stored compressed inline), 10-row transactions |
//! | `text100k` | 1,000 | a 100 kB incompressible text (stored in TOAST), 10-row transactions |
//!
//! The heavy shapes have fewer rows so that the whole matrix runs in a few minutes. Every count
//! scales with `BENCH_ROWS` (e.g. `BENCH_ROWS=20000` for a tenth, as under a profiler).
//!
//! Two more columns say how much of the drain's time is the broker's: nats-server's own CPU per
//! event during the drain, and **JetStream alone** — the rate at which this machine's
//! nats-server stores the same messages (the first one wal-listener published, copied with a
//! fresh `Nats-Msg-Id` each) when a bare async-nats publisher sends them the way the service
//! does (one ack inbox, the same window). On 2 cores shared by the walsender, nats-server and
//! the service, that rate — not pg_recvlogical's — is the ceiling for any JetStream publisher.
//! `BENCH_ALONE=msg-id-only|no-msg-id` takes parts away from that publisher's messages (the
//! other headers, deduplication) to show what the broker's cost is made of.

use std::time::Duration;

use std::time::Instant;

use futures::StreamExt;

use super::support::service::Setup;
use super::support::{NatsServer, PgCluster, StoredMessage};
use super::{DEFAULT_WINDOW, Drained, cpu_seconds, drain, time_pg_recvlogical};

/// The user script of issue 14: route by a column value into one of 16 subjects, add a
/// header, publish the event as it is.
pub const USER_SCRIPT: &str = r#"function route(event)
  local row = event.data
  return config.publisher.topic .. ".bench." .. (row.id % 16), event, { Shard = row.id % 16 }
end
"#;

struct Workload {
    name: &'static str,
    rows: u64,
    /// Before the slots exist: the table, and rows to update.
    prepare: String,
    /// The WAL the slots drain.
    write: String,
}

/// The workloads, with row counts scaled by `narrow_rows` / 200,000.
fn workloads(narrow_rows: u64) -> Vec<Workload> {
    let scaled = |rows: u64| (rows * narrow_rows / 200_000).max(100) / 100 * 100;
    let narrow_rows = scaled(200_000);
    let txs = |rows: u64, per: u64| rows / per - 1;
    let update = |name: &'static str, identity: &str| {
        let rows = scaled(100_000);
        Workload {
            name,
            rows,
            prepare: format!(
                "CREATE TABLE {name} (id int8 PRIMARY KEY, note text, n int8, at timestamptz DEFAULT now());
                 ALTER TABLE {name} REPLICA IDENTITY {identity};
                 INSERT INTO {name} (id, note, n) SELECT g, repeat('u', 100), g FROM generate_series(1, {rows}) g;"
            ),
            write: format!(
                "DO $$ BEGIN FOR t IN 0..{} LOOP
                   UPDATE {name} SET n = n + 1, note = repeat('v', 100) WHERE id > t * 100 AND id <= t * 100 + 100;
                   COMMIT;
                 END LOOP; END $$;",
                txs(rows, 100)
            ),
        }
    };
    vec![
        Workload {
            name: "narrow",
            rows: narrow_rows,
            prepare: "CREATE TABLE narrow (id int8 PRIMARY KEY, note text, at timestamptz DEFAULT now())".into(),
            write: format!(
                "DO $$ BEGIN FOR t IN 0..{} LOOP
                   INSERT INTO narrow (id, note) SELECT t * 100 + g, repeat('n', 200) FROM generate_series(1, 100) g;
                   COMMIT;
                 END LOOP; END $$;",
                txs(narrow_rows, 100)
            ),
        },
        update("update", "DEFAULT"),
        update("update_full", "FULL"),
        Workload {
            name: "wide",
            rows: scaled(50_000),
            prepare: "CREATE TABLE wide (id int8 PRIMARY KEY,
                 i1 int8, i2 int8, i3 int8, i4 int8, i5 int8, i6 int8,
                 n1 numeric, n2 numeric, n3 numeric, n4 numeric, n5 numeric,
                 t1 timestamptz, t2 timestamptz, t3 timestamptz, t4 timestamptz,
                 s1 text, s2 text, s3 text, s4 text, s5 text, s6 text,
                 b1 bool, b2 bool, b3 bool, u1 uuid, u2 uuid, u3 uuid, j1 jsonb, j2 jsonb)"
                .into(),
            write: format!(
                "DO $$ BEGIN FOR t IN 0..{} LOOP
                   INSERT INTO wide SELECT t * 100 + g,
                     g, g * 7, g * 13, -g, g * 1000003, t,
                     g * 1.25, g / 3.0, 12345678901234567890.123, -g * 0.5, t + 0.001,
                     now(), now() - interval '1 day', '2024-01-01 10:00:00+00', now() + g * interval '1 s',
                     'name ' || g, repeat('s', 40), md5(g::text), 'x', repeat('long text ', 12), 'ünïcødé ✓',
                     g % 2 = 0, true, false,
                     md5(g::text)::uuid, md5((g + 1)::text)::uuid, md5((g + 2)::text)::uuid,
                     jsonb_build_object('id', g, 'name', repeat('j', 60), 'tags', jsonb_build_array('a', 'b', 'c', g),
                       'nested', jsonb_build_object('x', g * 1.5, 'y', true, 'z', null), 'text', md5(g::text) || md5(t::text)),
                     jsonb_build_object('list', (SELECT jsonb_agg(i) FROM generate_series(1, 40) i), 'note', repeat('k', 80))
                   FROM generate_series(1, 100) g;
                   COMMIT;
                 END LOOP; END $$;",
                txs(scaled(50_000), 100)
            ),
        },
        Workload {
            name: "single",
            rows: scaled(50_000),
            prepare: "CREATE TABLE single (id int8 PRIMARY KEY, note text, at timestamptz DEFAULT now())".into(),
            write: format!(
                "DO $$ BEGIN FOR t IN 1..{} LOOP
                   INSERT INTO single (id, note) VALUES (t, repeat('n', 200));
                   COMMIT;
                 END LOOP; END $$;",
                scaled(50_000)
            ),
        },
        Workload {
            name: "text10k",
            rows: scaled(10_000),
            prepare: "CREATE TABLE text10k (id int8 PRIMARY KEY, body text)".into(),
            write: format!(
                "DO $$ BEGIN FOR t IN 0..{} LOOP
                   INSERT INTO text10k SELECT t * 10 + g, repeat(md5(g::text), 320) FROM generate_series(1, 10) g;
                   COMMIT;
                 END LOOP; END $$;",
                txs(scaled(10_000), 10)
            ),
        },
        Workload {
            name: "text100k",
            rows: scaled(1_000),
            prepare: "CREATE TABLE text100k (id int8 PRIMARY KEY, body text)".into(),
            // Hex of md5s of random numbers: compresses poorly, so the value goes to TOAST.
            write: format!(
                "DO $$ BEGIN FOR t IN 0..{} LOOP
                   INSERT INTO text100k SELECT t * 10 + g,
                     (SELECT string_agg(md5(random()::text || i), '') FROM generate_series(1, 3200) i WHERE g > 0)
                   FROM generate_series(1, 10) g;
                   COMMIT;
                 END LOOP; END $$;",
                txs(scaled(1_000), 10)
            ),
        },
    ]
}

/// One cell of the table.
struct Cell {
    ratio: f64,
    rate: f64,
    baseline: f64,
    cpu_us: f64,
    /// nats-server's CPU µs per event during the drain.
    broker_us: f64,
    rss_mib: f64,
    /// Instructions per event (start-up included), when the service ran under callgrind.
    instructions: Option<f64>,
}

pub async fn run(pg: &PgCluster, nats: &NatsServer, narrow_rows: u64, repeat: usize) {
    let chosen: Option<Vec<String>> = std::env::var("BENCH_WORKLOADS")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    let script_dir = tempfile::tempdir().expect("temp dir");
    let user_script = script_dir.path().join("route.lua");
    std::fs::write(&user_script, USER_SCRIPT).expect("write the user script");
    let user_script = user_script.to_string_lossy().into_owned();
    // BENCH_BEFORE=/path/to/an/older/wal-listener: the same runs with that build too,
    // interleaved, so that a change is compared under the same load.
    let before = std::env::var("BENCH_BEFORE").ok().map(std::path::PathBuf::from);
    let mut scripts: Vec<(&str, Option<&str>, Option<std::path::PathBuf>)> =
        vec![("default", None, None), ("user", Some(user_script.as_str()), None)];
    if let Some(before) = &before {
        scripts.insert(0, ("default-before", None, Some(before.clone())));
        scripts.insert(2, ("user-before", Some(user_script.as_str()), Some(before.clone())));
    }

    let mut table = Vec::new();
    for w in workloads(narrow_rows) {
        if chosen.as_ref().is_some_and(|c| !c.iter().any(|n| n == w.name)) {
            continue;
        }
        pg.psql(&w.prepare);
        let mut pairs = Vec::new();
        for (script, ..) in &scripts {
            for r in 0..repeat {
                let tag = script.replace('-', "_");
                let ours = Setup::new(&format!("m_{}_{tag}_{r}", w.name));
                let baseline = format!("mb_{}_{tag}_{r}", w.name);
                for slot in [ours.slot.as_str(), baseline.as_str()] {
                    pg.psql(&format!(
                        "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
                    ));
                }
                pairs.push((*script, ours, baseline));
            }
        }
        let started = std::time::Instant::now();
        pg.psql(&w.write);
        let end_lsn = pg.psql("SELECT pg_current_wal_lsn()");
        println!("{}: {} rows written in {:.1?}", w.name, w.rows, started.elapsed());
        let mut cells: Vec<Vec<Cell>> = scripts.iter().map(|_| Vec::new()).collect();
        let mut alone = Vec::new();
        for r in 0..repeat {
            for (i, (script, path, program)) in scripts.iter().enumerate() {
                let Some((_, ours, baseline)) = pairs.iter().filter(|p| p.0 == *script).nth(r) else {
                    continue;
                };
                super::support::service::set_program(program.clone());
                let took = time_pg_recvlogical(pg, baseline, &end_lsn);
                let drained = drain(pg, nats, ours, "pub_bench", DEFAULT_WINDOW, w.rows, *path).await;
                let cell = cell(w.rows, took, &drained);
                println!(
                    "  {script:<7} pg_recvlogical {:>7.0} rows/s, wal-listener {:>7.0} rows/s, ratio {:.2}, CPU {:.2} µs/event ({:.2} system), nats-server {:.2} µs/event, peak RSS {:.1} MiB{}",
                    cell.baseline,
                    cell.rate,
                    cell.ratio,
                    cell.cpu_us,
                    drained.system * 1e6 / w.rows as f64,
                    cell.broker_us,
                    cell.rss_mib,
                    cell.instructions
                        .map(|n| format!(", {n:.0} instructions/event"))
                        .unwrap_or_default()
                );
                cells[i].push(cell);
                if *script == "default" {
                    let template = first_message(nats, &ours.topic).await;
                    let (took, broker) =
                        jetstream_alone(nats, &template, w.rows, DEFAULT_WINDOW, &format!("{}_{r}", w.name)).await;
                    let rate = w.rows as f64 / took.as_secs_f64();
                    println!(
                        "  JetStream alone {rate:>7.0} rows/s, nats-server {:.2} µs/event",
                        broker * 1e6 / w.rows as f64
                    );
                    alone.push(rate);
                }
                let _ = nats.jetstream().await.delete_stream(&ours.topic).await;
                for slot in [ours.slot.as_str(), baseline.as_str()] {
                    pg.psql(&format!("SELECT pg_drop_replication_slot('{slot}')"));
                }
            }
        }
        super::support::service::set_program(None);
        alone.sort_by(f64::total_cmp);
        let alone = alone.get(alone.len() / 2).copied().unwrap_or(f64::NAN);
        for ((script, ..), cells) in scripts.iter().zip(cells) {
            table.push((w.name, w.rows, *script, median(cells), alone));
        }
    }
    // Under callgrind (see the bench's header) a last column: instructions per event.
    let profiled = table.iter().any(|(.., c, _)| c.instructions.is_some());
    println!(
        "\n| workload | rows | script | pg_recvlogical rows/s | wal-listener rows/s | ratio | CPU µs/event | nats-server µs/event | JetStream alone rows/s | ratio to it | peak RSS MiB |{}",
        if profiled { " instructions/event |" } else { "" }
    );
    println!(
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|{}",
        if profiled { "---:|" } else { "" }
    );
    for (name, rows, script, c, alone) in table {
        let instructions = match (profiled, c.instructions) {
            (false, _) => String::new(),
            (true, Some(n)) => format!(" {n:.0} |"),
            (true, None) => " |".to_string(),
        };
        println!(
            "| {name} | {rows} | {script} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {alone:.0} | {:.2} | {:.1} |{instructions}",
            c.baseline,
            c.rate,
            c.ratio,
            c.cpu_us,
            c.broker_us,
            c.rate / alone,
            c.rss_mib
        );
    }
    println!("(median of {repeat} runs each; peak RSS the largest)");
}

/// The first message of `stream`, as the service stored it.
async fn first_message(nats: &NatsServer, stream: &str) -> StoredMessage {
    let js = nats.jetstream().await;
    let stream = js
        .get_stream(stream)
        .await
        .unwrap_or_else(|e| panic!("the drain's stream {stream}: {e}"));
    stream
        .get_raw_message(1)
        .await
        .unwrap_or_else(|e| panic!("the drain's first message: {e}"))
        .into()
}

/// The broker's ceiling for one workload: `rows` copies of `template` (its headers, a fresh
/// `Nats-Msg-Id` each, subjects spread over 16) published into a stream of their own the way
/// the service publishes — replies on one inbox subscription, at most `window` unacknowledged
/// — and timed until the last PubAck. Returns the time and nats-server's CPU seconds in it.
async fn jetstream_alone(
    nats: &NatsServer,
    template: &StoredMessage,
    rows: u64,
    window: usize,
    tag: &str,
) -> (std::time::Duration, f64) {
    let stream = format!("alone_{tag}");
    nats.create_stream(&stream, &[&format!("{stream}.>")]).await;
    let client = nats.client().await;
    let inbox = client.new_inbox();
    let mut acks = client
        .subscribe(format!("{inbox}.*"))
        .await
        .expect("subscribe to the ack inbox");
    // BENCH_ALONE: what the broker's cost per message is made of. `msg-id-only`: no other
    // headers; `no-msg-id`: no deduplication. (A variant without reply subjects, so without
    // PubAcks, was tried: twice the stream never held every message, so it cannot be timed.)
    let variant = std::env::var("BENCH_ALONE").unwrap_or_default();
    let msg_id = variant != "no-msg-id";
    let mut headers = async_nats::HeaderMap::new();
    if variant != "msg-id-only" {
        for (name, value) in template.headers.iter().filter(|(n, _)| n != "Nats-Msg-Id") {
            headers.append(name.as_str(), value.as_str());
        }
    }
    let payload = bytes::Bytes::from(template.payload.clone());
    let broker_before = nats.pid().map_or(0.0, cpu_seconds);
    let started = Instant::now();
    let message = |sent: u64| {
        let mut h = headers.clone();
        if msg_id {
            h.insert("Nats-Msg-Id", format!("alone-{sent}").as_str());
        }
        (format!("{stream}.bench.{}", sent % 16), h)
    };
    let (mut sent, mut acked) = (0u64, 0u64);
    while acked < rows {
        while sent < rows && sent - acked < window as u64 {
            let (subject, h) = message(sent);
            client
                .publish_with_reply_and_headers(subject, format!("{inbox}.{sent}"), h, payload.clone())
                .await
                .expect("publish");
            sent += 1;
        }
        let ack = acks.next().await.expect("the ack inbox closed");
        assert!(
            ack.status.is_none() && !ack.payload.windows(7).any(|w| w == b"\"error\""),
            "JetStream did not store a message: {ack:?}"
        );
        acked += 1;
    }
    let took = started.elapsed();
    let broker = nats.pid().map_or(0.0, cpu_seconds) - broker_before;
    let _ = nats.jetstream().await.delete_stream(&stream).await;
    (took, broker)
}

fn cell(rows: u64, baseline: Duration, ours: &Drained) -> Cell {
    let rate = rows as f64 / ours.took.as_secs_f64();
    let baseline = rows as f64 / baseline.as_secs_f64();
    Cell {
        ratio: rate / baseline,
        rate,
        baseline,
        cpu_us: ours.cpu * 1e6 / rows as f64,
        broker_us: ours.broker_cpu * 1e6 / rows as f64,
        rss_mib: ours.peak_kib as f64 / 1024.0,
        instructions: ours.instructions.map(|n| n as f64 / rows as f64),
    }
}

/// The run with the median ratio, with the median CPU and the largest RSS of all runs.
fn median(mut cells: Vec<Cell>) -> Cell {
    let mut cpus: Vec<f64> = cells.iter().map(|c| c.cpu_us).collect();
    cpus.sort_by(f64::total_cmp);
    let mut brokers: Vec<f64> = cells.iter().map(|c| c.broker_us).collect();
    brokers.sort_by(f64::total_cmp);
    let rss = cells.iter().map(|c| c.rss_mib).fold(0.0, f64::max);
    let mut instructions: Vec<f64> = cells.iter().filter_map(|c| c.instructions).collect();
    instructions.sort_by(f64::total_cmp);
    cells.sort_by(|a, b| a.ratio.total_cmp(&b.ratio));
    let mid = cells.len() / 2;
    let mut c = cells.swap_remove(mid);
    c.cpu_us = cpus[cpus.len() / 2];
    c.broker_us = brokers[brokers.len() / 2];
    c.rss_mib = rss;
    c.instructions = instructions.get(instructions.len() / 2).copied();
    c
}
