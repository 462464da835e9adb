//! `cargo bench --bench drain` — throughput, memory and latency against real servers.
//!
//! In one invocation, on throwaway PostgreSQL and nats-server instances:
//! 1. drains a backlog of 200,000 inserts (100-row transactions) from one slot into JetStream,
//!    and times `pg_recvlogical` draining a second slot created at the same point (the
//!    baseline: PostgreSQL's own client writing to /dev/null); prints both rates and the ratio.
//!    Both share two cores with PostgreSQL and nats-server, so single runs vary by ±10%: the
//!    pair is run `BENCH_REPEAT` times (default 3), interleaved, and the median ratio reported;
//!    Then the same backlog from a third slot into RabbitMQ (`publisher.type: rabbitmq`, a
//!    durable topic exchange bound to one durable queue, publisher confirms, persistent
//!    messages), once with the default window and once with `maxInFlight: 1` over the first
//!    20,000 rows (the Go version's one-at-a-time pattern, which had no confirms at all);
//!    `BENCH_RABBIT=0` skips it (it needs `rabbitmq-server`);
//! 2. the same with `publisher.maxInFlight: 1` (one message at a time, the Go version's
//!    pattern), over the first 20,000 rows;
//! 3. peak RSS while publishing one 1,000,000-row transaction;
//! 4. commit → delivery latency p50/p99 under a steady 5,000 rows/s insert load (measured by a
//!    subscriber: commitTime in the payload vs arrival, which follows the PubAck by a hair);
//! 5. a backfill of 1,000,000 rows against `COPY … TO /dev/null` and the INSERT drain of the
//!    same rows (`drain/backfill.rs`; `BENCH_ONLY=backfill` runs only this one).
//!
//! Set `BENCH_ROWS` to change the backlog size (default 200000), `BENCH_ONLY=drain` to stop after
//! the first comparison, `BENCH_WINDOW` for another `publisher.maxInFlight` (default: the
//! config default), `BENCH_SCRIPT=/path/route.lua` to route with another script.
//!
//! `BENCH_ONLY=matrix` runs only the workload matrix instead (`drain/matrix.rs`): narrow
//! inserts, updates with REPLICA IDENTITY DEFAULT and FULL, wide rows, single-row transactions
//! and large text, each for the built-in default script and a typical user script, as ratios
//! to `pg_recvlogical` with CPU µs/event and peak RSS, beside nats-server's CPU µs/event and
//! the rate of the same messages from a bare publisher ("JetStream alone", the broker's
//! ceiling), printed as one markdown table; `BENCH_WORKLOADS=narrow,update,…` picks workloads,
//! `BENCH_ALONE=msg-id-only|no-msg-id` varies the bare publisher's messages.
//!
//! `WAL_LISTENER_WRAP="valgrind --tool=callgrind …"` runs the service under a profiler; with
//! `--callgrind-out-file=/dir/cg.%p` in it, the matrix also reports the service's instructions
//! per event (start-up and shutdown included, ~6 million instructions: use `BENCH_ROWS=20000`
//! or so, callgrind is ~50× slower);
//! `BENCH_SWITCHES=1` prints its context switches per event after each drain.

/// `publisher.maxInFlight`'s default.
const DEFAULT_WINDOW: usize = 1024;

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "drain/backfill.rs"]
mod drain_backfill;
#[path = "drain/matrix.rs"]
mod matrix;

use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use support::service::{Service, Setup};
use support::{NatsServer, PgCluster, RabbitServer};

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let rows: u64 = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let pg = PgCluster::start();
    let nats = NatsServer::start();
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "backfill") {
        return drain_backfill::backfill_case(&pg, &nats).await;
    }
    pg.psql("CREATE TABLE bench (id int8 PRIMARY KEY, note text, at timestamptz DEFAULT now()); CREATE PUBLICATION pub_bench FOR ALL TABLES;");
    let repeat: usize = std::env::var("BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "matrix") {
        // Two slots per run, script and build.
        let mut pg = pg;
        pg.append_config("max_replication_slots = 64\nmax_wal_senders = 64\n");
        tokio::task::block_in_place(|| pg.restart_fast());
        return matrix::run(&pg, &nats, rows, repeat).await;
    }

    // 1 + 2: slots created before the backlog is written.
    let runs: Vec<Setup> = (0..repeat).map(|i| Setup::new(&format!("drain{i}"))).collect();
    let single = Setup::new("single");
    let with_rabbit = std::env::var("BENCH_RABBIT").map_or(true, |v| v != "0");
    let rabbit_runs = [Setup::new("rabbit"), Setup::new("rabbit_single")];
    let mut slots: Vec<String> = runs.iter().map(|r| r.slot.clone()).collect();
    slots.push(single.slot.clone());
    if with_rabbit {
        slots.extend(rabbit_runs.iter().map(|r| r.slot.clone()));
    }
    slots.extend((0..repeat).map(|i| format!("baseline{i}")));
    for slot in &slots {
        pg.psql(&format!(
            "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
        ));
    }
    let started = Instant::now();
    pg.psql(&format!(
        "DO $$ BEGIN FOR t IN 0..{} LOOP
           INSERT INTO bench (id, note) SELECT t * 100 + g, repeat('n', 200) FROM generate_series(1, 100) g;
           COMMIT;
         END LOOP; END $$;",
        rows / 100 - 1
    ));
    let end_lsn = pg.psql("SELECT pg_current_wal_lsn()");
    println!(
        "backlog: {rows} rows in {} transactions written in {:.1?}",
        rows / 100,
        started.elapsed()
    );

    let only_big = std::env::var("BENCH_ONLY").is_ok_and(|v| v == "bigtx");
    if only_big {
        return big_transaction(&pg, &nats).await;
    }
    // BENCH_SCRIPT=/path/to/route.lua measures with another routing script.
    let script = std::env::var("BENCH_SCRIPT").ok();
    let window: usize = std::env::var("BENCH_WINDOW")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_WINDOW);
    // (ratio, ours, baseline) per run, and our CPU µs per event.
    let mut results = Vec::new();
    let mut cpus = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let baseline = time_pg_recvlogical(&pg, &format!("baseline{i}"), &end_lsn);
        let baseline_rate = rows as f64 / baseline.as_secs_f64();
        let Drained { took: drained, cpu, .. } =
            drain(&pg, &nats, run, "pub_bench", window, rows, script.as_deref()).await;
        let rate = rows as f64 / drained.as_secs_f64();
        let cpu_us = cpu * 1e6 / rows as f64;
        println!(
            "run {}: pg_recvlogical {baseline_rate:>7.0} rows/s ({baseline:.2?}), wal-listener with {window} in flight {rate:>7.0} rows/s ({drained:.2?}), ratio {:.2}, wal-listener CPU {cpu_us:.2} µs/event",
            i + 1,
            rate / baseline_rate
        );
        results.push((rate / baseline_rate, rate, baseline_rate));
        cpus.push(cpu_us);
        // Each run starts with a server as fresh as the first one had (no stored messages, no
        // dedup entries from earlier runs).
        let _ = nats.jetstream().await.delete_stream(&run.topic).await;
    }
    results.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (ratio, rate, baseline_rate) = results[results.len() / 2];
    println!("pg_recvlogical (baseline):   {baseline_rate:>9.0} rows/s  (median run of {repeat})");
    println!("wal-listener, {window} in flight: {rate:>9.0} rows/s  ratio {ratio:.2} (target ≥ 0.70)");
    cpus.sort_by(f64::total_cmp);
    println!(
        "wal-listener CPU (user + system): {:.2} µs/event (median run)",
        cpus[cpus.len() / 2]
    );
    if with_rabbit {
        let rabbit = tokio::task::block_in_place(RabbitServer::start);
        let [full, one] = &rabbit_runs;
        let took = drain_rabbit(&pg, &rabbit, full, window, rows).await;
        let rabbit_rate = rows as f64 / took.as_secs_f64();
        println!(
            "RabbitMQ, {window} in flight:     {rabbit_rate:>9.0} rows/s  ({took:.2?}) ratio {:.2} to pg_recvlogical, {:.2} to JetStream",
            rabbit_rate / baseline_rate,
            rabbit_rate / rate
        );
        let sample = rows.min(20_000);
        let took = drain_rabbit(&pg, &rabbit, one, 1, sample).await;
        let one_rate = sample as f64 / took.as_secs_f64();
        println!(
            "RabbitMQ, 1 in flight:        {one_rate:>9.0} rows/s  (first {sample} rows); pipelining gains {:.1}x",
            rabbit_rate / one_rate
        );
    }

    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "drain") {
        return;
    }
    let sample = rows.min(20_000);
    let one = drain(&pg, &nats, &single, "pub_bench", 1, sample, script.as_deref())
        .await
        .took;
    let one_rate = sample as f64 / one.as_secs_f64();
    println!(
        "wal-listener, 1 in flight:    {one_rate:>9.0} rows/s  (first {sample} rows)  ratio {:.2}; pipelining gains {:.1}x",
        one_rate / baseline_rate,
        rate / one_rate
    );

    big_transaction(&pg, &nats).await;

    // 4: latency under a steady load.
    latency(&pg, &nats).await;

    // 5: a backfill against COPY and the INSERT drain.
    drain_backfill::backfill_case(&pg, &nats).await;
}

/// 3: peak RSS while publishing one 1,000,000-row transaction.
async fn big_transaction(pg: &PgCluster, nats: &NatsServer) {
    let big = Setup::new("bigtx");
    pg.psql(&format!(
        "SELECT pg_create_logical_replication_slot('{}', 'pgoutput')",
        big.slot
    ));
    pg.psql("CREATE TABLE big (id int8 PRIMARY KEY, note text)");
    let started = Instant::now();
    pg.psql("INSERT INTO big SELECT g, repeat('b', 200) FROM generate_series(1, 1000000) g");
    println!("one transaction of 1,000,000 rows written in {:.1?}", started.elapsed());
    let mut big_setup = big;
    big_setup.listener_extra = "  filter:\n    tables:\n      big: [insert]\n".into();
    let Drained { took, peak_kib, .. } =
        drain(pg, nats, &big_setup, "pub_bench", DEFAULT_WINDOW, 1_000_000, None).await;
    println!(
        "1,000,000-row transaction: published in {took:.1?}, peak RSS {:.1} MiB",
        peak_kib as f64 / 1024.0
    );
}

fn time_pg_recvlogical(pg: &PgCluster, slot: &str, end_lsn: &str) -> Duration {
    let bin = support::pg::pg_bindir().join("pg_recvlogical");
    let started = Instant::now();
    let out = Command::new(bin)
        .args([
            "-d",
            &pg.conn_string("postgres"),
            "--slot",
            slot,
            "--start",
            "--no-loop",
            "-f",
            "/dev/null",
        ])
        .args([
            "--endpos",
            end_lsn,
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=pub_bench",
        ])
        .output()
        .expect("run pg_recvlogical");
    assert!(
        out.status.success(),
        "pg_recvlogical failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

/// What one drain took.
struct Drained {
    took: Duration,
    /// The service's peak RSS (VmHWM).
    peak_kib: u64,
    /// The service's CPU seconds (user + system), and the system part of them.
    cpu: f64,
    system: f64,
    /// nats-server's CPU seconds over the same time: on this 2-core machine the broker, the
    /// walsender and the service share the cores, so the broker's cost per message bounds the
    /// drain as much as ours.
    broker_cpu: f64,
    /// The service's instructions, start-up included, when it ran under callgrind with
    /// `--callgrind-out-file` in `WAL_LISTENER_WRAP` (repeatable where timings are not).
    instructions: Option<u64>,
}

/// Start the service on a pre-created slot and time it until `count` messages are stored,
/// routing with the script at `script` (`None`: the built-in default).
async fn drain(
    pg: &PgCluster,
    nats: &NatsServer,
    setup: &Setup,
    publication: &str,
    window: usize,
    count: u64,
    script: Option<&str>,
) -> Drained {
    let mut setup = Setup {
        publication: publication.into(),
        ..clone_setup(setup)
    };
    let script = script.map(|p| format!("  path: {p}\n")).unwrap_or_default();
    setup.extra = format!("scripts:\n  onError: halt\n{script}{}", setup.extra);
    let yaml = setup.yaml(pg, nats).replace("level: debug", "level: warn").replace(
        "  type: nats\n",
        &format!(
            "  type: {}\n  maxInFlight: {window}\n",
            std::env::var("BENCH_TYPE").unwrap_or_else(|_| "nats".into())
        ),
    );
    let broker_before = nats.pid().map_or(0.0, cpu_seconds);
    let started = Instant::now();
    let mut service = Service::start(&yaml);
    let topic = setup.topic.as_str();
    wait_stored(&mut service, started, count, || async move {
        nats.stream_len(topic).await.unwrap_or(0)
    })
    .await;
    let took = started.elapsed();
    let broker_cpu = nats.pid().map_or(0.0, cpu_seconds) - broker_before;
    let peak = peak_rss_kib(service.pid());
    let (user, system) = cpu_split(service.pid());
    if std::env::var("BENCH_SWITCHES").is_ok_and(|v| v == "1") {
        println!(
            "    context switches: {:.2} per event",
            context_switches(service.pid()) as f64 / count as f64
        );
    }
    let pid = service.pid();
    tokio::task::block_in_place(|| service.terminate());
    Drained {
        took,
        peak_kib: peak,
        cpu: user + system,
        system,
        broker_cpu,
        instructions: callgrind_instructions(pid),
    }
}

/// The instruction count callgrind wrote for the process `pid` when it ended, if the service ran
/// under `WAL_LISTENER_WRAP="valgrind --tool=callgrind --callgrind-out-file=/dir/cg.%p"`.
fn callgrind_instructions(pid: u32) -> Option<u64> {
    let wrap = std::env::var("WAL_LISTENER_WRAP").ok()?;
    let file = wrap
        .split_whitespace()
        .find_map(|a| a.strip_prefix("--callgrind-out-file="))?
        .replace("%p", &pid.to_string());
    let text = std::fs::read_to_string(&file).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("totals:").or_else(|| l.strip_prefix("summary:")))
        .and_then(|n| n.split_whitespace().next()?.parse().ok())
}

/// The process's CPU time so far (user + system), from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let (user, system) = cpu_split(pid);
    user + system
}

/// The process's user and system CPU seconds so far, from /proc: robust against the machine's
/// other load, unlike throughput.
fn cpu_split(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let hz = clock_ticks();
    (ticks(11) / hz, ticks(12) / hz)
}

/// Voluntary and involuntary context switches of all the process's threads so far.
fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok()))
                .collect::<Vec<_>>()
        })
        .sum()
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Start the service on a pre-created slot publishing to RabbitMQ, and time it until `count`
/// messages are in the bound queue (a message is queued before it is confirmed).
async fn drain_rabbit(pg: &PgCluster, rabbit: &RabbitServer, setup: &Setup, window: usize, count: u64) -> Duration {
    use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
    let queue = format!("q_{}", setup.topic);
    rabbit
        .bind_queue(
            &setup.topic,
            lapin::ExchangeKind::Topic,
            &queue,
            &format!("{}.#", setup.topic),
        )
        .await;
    let conn = rabbit.client().await;
    let ch = conn.create_channel().await.expect("channel");
    let setup = Setup {
        publication: "pub_bench".into(),
        extra: "scripts:\n  onError: halt\n".into(),
        ..clone_setup(setup)
    };
    let yaml = setup
        .rabbit_yaml_at(
            pg,
            &rabbit.url(),
            &format!("  exchangeKind: topic\n  maxInFlight: {window}\n"),
        )
        .replace("level: debug", "level: warn");
    let started = Instant::now();
    let mut service = Service::start(&yaml);
    let (ch, queue_name) = (&ch, queue.as_str());
    wait_stored(&mut service, started, count, || async move {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        ch.queue_declare(queue_name.into(), passive, lapin::types::FieldTable::default())
            .await
            .map(|q| u64::from(q.message_count()))
            .unwrap_or(0)
    })
    .await;
    let took = started.elapsed();
    tokio::task::block_in_place(|| service.terminate());
    let _ = ch
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    took
}

/// Poll `stored` until it reports `count` messages; the service must keep running, and it
/// gets ten minutes.
async fn wait_stored<F, Fut>(service: &mut Service, started: Instant, count: u64, mut stored: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    loop {
        let now = stored().await;
        if now >= count {
            return;
        }
        assert!(service.is_running(), "wal-listener stopped; log:\n{}", service.log());
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "only {now}/{count} after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn clone_setup(s: &Setup) -> Setup {
    Setup {
        slot: s.slot.clone(),
        publication: s.publication.clone(),
        topic: s.topic.clone(),
        extra: s.extra.clone(),
        listener_extra: s.listener_extra.clone(),
        server_port: s.server_port,
    }
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

async fn latency(pg: &PgCluster, nats: &NatsServer) {
    let setup = Setup::new("latency");
    pg.psql("CREATE TABLE steady (id int8 PRIMARY KEY, note text)");
    let mut setup = setup;
    setup.listener_extra = "  filter:\n    tables:\n      steady: [insert]\n".into();
    let yaml = setup.yaml(pg, nats).replace("level: debug", "level: warn");
    let mut service = Service::start(&yaml);
    tokio::task::block_in_place(|| support::service::wait_streaming(pg, &setup.slot, &mut service));
    let client = nats.client().await;
    let mut sub = client.subscribe(format!("{}.>", setup.topic)).await.expect("subscribe");

    let conn = pg.conn_string("postgres");
    let seconds = 10u64;
    let loader = tokio::spawn(async move {
        let (db, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        // 50 rows every 10 ms = 5,000 rows/s.
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for batch in 0..(seconds * 100) as i64 {
            tick.tick().await;
            db.execute(
                "INSERT INTO steady SELECT $1::int8 * 50 + g, 'x' FROM generate_series(1, 50) g",
                &[&batch],
            )
            .await
            .expect("insert");
        }
    });
    let expected = seconds * 5_000;
    let mut latencies = Vec::with_capacity(expected as usize);
    let deadline = Instant::now() + Duration::from_secs(seconds + 60);
    while (latencies.len() as u64) < expected && Instant::now() < deadline {
        let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(5), sub.next()).await else {
            break;
        };
        let arrived = std::time::SystemTime::now();
        let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap_or_default();
        if let Some(committed) = v["commitTime"].as_str().and_then(parse_time)
            && let Ok(d) = arrived.duration_since(committed)
        {
            latencies.push(d);
        }
    }
    let _ = loader.await;
    tokio::task::block_in_place(|| service.terminate());
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "commit → delivery at 5,000 rows/s: {} messages, p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        latencies.len(),
        pct(0.50),
        pct(0.99),
        latencies.last().copied().unwrap_or_default()
    );
}

/// `2026-11-26T10:20:30.123456Z` → SystemTime.
fn parse_time(text: &str) -> Option<std::time::SystemTime> {
    let num = |a: usize, b: usize| text.get(a..b)?.parse::<i64>().ok();
    let (y, m, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (h, mi, sec, micros) = (num(11, 13)?, num(14, 16)?, num(17, 19)?, num(20, 26)?);
    let yy = if m <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let unix_micros = (days * 86_400 + h * 3600 + mi * 60 + sec) * 1_000_000 + micros;
    Some(std::time::UNIX_EPOCH + Duration::from_micros(u64::try_from(unix_micros).ok()?))
}
