//! What an operator meets on the ordinary paths (issue 10): a NATS restart — graceful, hard,
//! or lame duck — is an outage to wait out, never a verdict about the stream; a server without
//! JetStream is reported and retried; a password the server asks for and nobody configured is
//! a fatal error that names the method and the keys, at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::faults::assert_exactly_once;
use crate::support::http::{get, sample};
use crate::support::service::{Service, Setup, check_connect, wait_streaming};
use crate::support::{NatsServer, PgCluster, blocking, free_port, wait_until};

const DEADLINE: Duration = Duration::from_secs(90);

/// Transactions of `ROWS` rows into `load(id)`, one after another, until stopped or
/// `MAX_TRANSACTIONS` are written.
const ROWS: i64 = 100;
const MAX_TRANSACTIONS: u64 = 100;
/// Transactions of `ROWS` rows committed while the service is stopped: draining them keeps
/// `maxInFlight` publishes in flight when the server goes away, which is when a graceful stop
/// answers "no responders" (the reproduction: 100 transactions of 100 rows).
const BACKLOG: i64 = 100;

struct Writer {
    stop: Arc<AtomicBool>,
    transactions: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Start writing ids from `first` on.
    fn start(pg: &PgCluster, first: i64) -> Writer {
        let conn = pg.conn_string("postgres");
        let stop = Arc::new(AtomicBool::new(false));
        let transactions = Arc::new(AtomicU64::new(0));
        let (stop2, done) = (stop.clone(), transactions.clone());
        let task = tokio::spawn(async move {
            let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
                .await
                .expect("writer connects");
            tokio::spawn(connection);
            let mut next = first;
            while !stop2.load(Ordering::Relaxed) && done.load(Ordering::Relaxed) < MAX_TRANSACTIONS {
                client
                    .execute(
                        "INSERT INTO load SELECT generate_series($1::int8, $1::int8 + $2::int8 - 1)",
                        &[&next, &ROWS],
                    )
                    .await
                    .expect("insert a transaction");
                next += ROWS;
                done.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Writer {
            stop,
            transactions,
            task,
        }
    }

    /// Stop; returns how many rows it wrote.
    async fn finish(self) -> i64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("writer task");
        let n = self.transactions.load(Ordering::Relaxed);
        assert!(n > 20, "the writer barely ran ({n} transactions)");
        i64::try_from(n).unwrap_or(0) * ROWS
    }
}

fn ready(port: u16) -> bool {
    get(port, "/ready").is_some_and(|(status, _)| status == 200)
}

/// How the NATS server goes away.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// SIGTERM: JetStream shuts down before client connections close, so publishes in that
    /// window are answered "no responders".
    Graceful,
    /// SIGKILL.
    Hard,
    /// `--signal ldm`: no new clients, existing ones closed over the lame duck duration.
    LameDuck,
}

/// Under continuous load, the NATS server goes away, stays down 5 s and comes back on the same
/// store: the service keeps running, reports not-ready meanwhile, and the stream ends up with
/// every row exactly once, in commit order.
async fn nats_goes_away_under_load(name: &str, stop: Stop) {
    let (pg, nats) = blocking(|| {
        let nats = match stop {
            // The lame duck period is over in a few seconds instead of the default 2 minutes.
            Stop::LameDuck => NatsServer::start_with(&["-c", &lame_duck_config()]),
            _ => NatsServer::start(),
        };
        (PgCluster::start(), nats)
    });
    let mut nats = nats;
    pg.psql("CREATE TABLE load (id int8 PRIMARY KEY)");
    let mut setup = Setup::new(name);
    setup.server_port = free_port();
    // An existing stream, as an operator would have it.
    nats.create_stream(&setup.topic, &[&format!("{}.>", setup.topic)]).await;
    // The slot is created, then a backlog is committed while the service is stopped.
    let mut service = Service::start(&setup.yaml(&pg, &nats));
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));
    assert!(blocking(|| service.terminate()).success(), "log:\n{}", service.log());
    pg.psql(&format!(
        "DO $$ BEGIN FOR i IN 0..{} LOOP
           INSERT INTO load SELECT generate_series(i * {ROWS} + 1, (i + 1) * {ROWS});
           COMMIT;
         END LOOP; END $$",
        BACKLOG - 1
    ));
    blocking(|| service.start_again());
    let writer = Writer::start(&pg, BACKLOG * ROWS + 1);
    let port = setup.server_port;
    let topic = setup.topic.clone();
    wait_until("30 transactions in the stream", DEADLINE, || {
        let (nats, topic) = (&nats, &topic);
        async move { nats.stream_len(topic).await.unwrap_or(0) >= 30 * ROWS as u64 }
    })
    .await;

    match stop {
        Stop::Graceful => blocking(|| nats.stop()),
        Stop::Hard => blocking(|| nats.kill()),
        Stop::LameDuck => {
            nats.signal_command("ldm");
            blocking(|| nats.wait_stopped(Duration::from_secs(60)));
        }
    }
    let down = Instant::now();
    let mut saw_not_ready = false;
    while down.elapsed() < Duration::from_secs(5) {
        assert!(
            service.is_running(),
            "a NATS restart ({stop:?}) must not end the process; log:\n{}",
            service.log()
        );
        saw_not_ready |= blocking(|| !ready(port));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(saw_not_ready, "/ready stayed 200 while NATS was down");
    blocking(|| nats.start_again());

    let before = nats.stream_len(&setup.topic).await.unwrap_or(0);
    wait_until("the stream to grow after the restart", DEADLINE, || {
        let (nats, topic) = (&nats, &topic);
        async move { nats.stream_len(topic).await.unwrap_or(0) >= before + 10 * ROWS as u64 }
    })
    .await;
    let rows = BACKLOG * ROWS + writer.finish().await;
    let stored = assert_exactly_once(&pg, &nats, &setup).await;
    assert_eq!(
        stored,
        usize::try_from(rows).unwrap_or(0),
        "every row the writers committed"
    );
    assert!(service.is_running(), "log:\n{}", service.log());
    wait_until(
        "/ready back to 200",
        DEADLINE,
        || async move { blocking(|| ready(port)) },
    )
    .await;
    assert!(
        !service.log().contains("no JetStream stream captures"),
        "log:\n{}",
        service.log()
    );
    let status = blocking(|| service.terminate());
    assert!(status.success(), "SIGTERM exits 0; log:\n{}", service.log());
}

fn lame_duck_config() -> String {
    let dir = std::env::temp_dir().join(format!("walh-ldm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("config dir");
    let path = dir.join("ldm.conf");
    std::fs::write(&path, "lame_duck_duration: \"30s\"\nlame_duck_grace_period: \"1s\"\n").expect("write ldm.conf");
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_nats_restart_under_load_is_waited_out() {
    nats_goes_away_under_load("natsterm", Stop::Graceful).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_nats_restart_under_load_is_waited_out() {
    nats_goes_away_under_load("natskill", Stop::Hard).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lame_duck_nats_restart_under_load_is_waited_out() {
    nats_goes_away_under_load("natsldm", Stop::LameDuck).await;
}

/// A server without JetStream: said clearly, retried (the operator may be fixing it), and the
/// service streams once JetStream is on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_jetstream_is_reported_and_retried() {
    let (pg, mut nats) = blocking(|| (PgCluster::start(), NatsServer::start_without_jetstream()));
    pg.psql("CREATE TABLE t (id int4 PRIMARY KEY)");
    let mut setup = Setup::new("nojs");
    setup.server_port = free_port();
    let mut service = Service::start(&setup.yaml(&pg, &nats));
    wait_until("the missing JetStream to be reported", DEADLINE, || {
        let log = service.log();
        async move { log.contains("does not have JetStream enabled: start nats-server with -js") }
    })
    .await;
    assert!(service.is_running(), "log:\n{}", service.log());
    let port = setup.server_port;
    let (status, body) = blocking(|| get(port, "/ready")).expect("/ready answers");
    assert_eq!(status, 503, "{body}");
    let metrics = blocking(|| get(port, "/metrics")).expect("/metrics answers").1;
    assert!(
        sample(&metrics, "wal_listener_jetstream_unavailable_total").unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );
    let (code, out) = blocking(|| check_connect(&setup.yaml(&pg, &nats), &[]));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("error: publisher: JetStream is not enabled"), "{out}");

    // The operator turns JetStream on: the service streams without a restart.
    blocking(|| {
        nats.stop();
        nats.start_again_with_jetstream();
    });
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));
    pg.psql("INSERT INTO t VALUES (1)");
    let messages = nats.wait_for_messages(&setup.topic, 1, DEADLINE).await;
    assert_eq!(messages[0].json()["data"]["id"], 1);
    blocking(|| service.terminate());
}

/// The server asks for a password (SCRAM, md5) and none is configured: exit 1 within seconds,
/// naming the method and every way to configure one — no retry loop — and `check --connect`
/// says the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_password_is_fatal_at_once_and_names_the_method() {
    let (mut pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    pg.set_hba(
        "local all all trust\n\
         host all postgres 127.0.0.1/32 trust\n\
         host all scram_user 127.0.0.1/32 scram-sha-256\n\
         host all md5_user 127.0.0.1/32 md5\n",
    );
    blocking(|| pg.restart_fast());
    pg.psql(
        "SET password_encryption = 'scram-sha-256';
         CREATE ROLE scram_user LOGIN SUPERUSER PASSWORD 's3cret-scram';
         SET password_encryption = 'md5';
         CREATE ROLE md5_user LOGIN SUPERUSER PASSWORD 's3cret-md5';",
    );
    for (user, method) in [("scram_user", "SCRAM-SHA-256"), ("md5_user", "md5")] {
        let setup = Setup::new(user);
        let yaml = setup
            .yaml(&pg, &nats)
            .replace("  user: postgres\n", &format!("  user: {user}\n"));
        let started = Instant::now();
        let mut service = Service::start(&yaml);
        let last = blocking(|| service.fatal_line(Duration::from_secs(30)));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
        let wanted =
            format!("asks for a password ({method} authentication) for user \"{user}\", and none is configured");
        assert!(last.contains(&wanted), "{last}");
        for key in ["database.password", "database.passwordFile", "WAL_DATABASE_PASSWORD"] {
            assert!(last.contains(key), "{last}");
        }
        let log = service.log();
        assert!(!log.contains("reconnecting"), "no retry loop:\n{log}");
        assert!(!log.contains("invalid configuration"), "{log}");

        let (code, out) = blocking(|| check_connect(&yaml, &[]));
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("error: database:") && out.contains(&wanted), "{out}");
        assert!(!out.contains("s3cret"), "{out}");

        // With the password, both connections (setup and replication) authenticate that way.
        let password = if method == "md5" { "s3cret-md5" } else { "s3cret-scram" };
        let mut service = Service::start_with_env(&yaml, &[("WAL_DATABASE_PASSWORD", password)]);
        blocking(|| wait_streaming(&pg, &setup.slot, &mut service));
        assert!(!service.log().contains("s3cret"), "{}", service.log());
        blocking(|| service.terminate());
    }
}

/// What the PostgreSQL client reports as a bare library message reaches the operator with the
/// cause and the key to check: nothing listening is retried and names database.host/port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_postgres_is_retried_with_the_address_and_the_keys() {
    let nats = blocking(NatsServer::start);
    let pg = blocking(PgCluster::start);
    let setup = Setup::new("nopg");
    let closed = free_port();
    let yaml = setup
        .yaml(&pg, &nats)
        .replace(&format!("  port: {}\n", pg.port()), &format!("  port: {closed}\n"));
    let mut service = Service::start(&yaml);
    wait_until("the unreachable server to be reported", DEADLINE, || {
        let log = service.log();
        async move { log.contains(&format!("cannot connect to PostgreSQL at 127.0.0.1:{closed}")) }
    })
    .await;
    let log = service.log();
    assert!(
        log.contains("check database.host and database.port") && log.contains("onnection refused"),
        "{log}"
    );
    assert!(
        service.is_running(),
        "a transient failure must not end the process:\n{log}"
    );
    blocking(|| service.terminate());
}

/// Host names that do not resolve (a typo, or a DNS record not there yet) are retried, and the
/// log names the key to check — for PostgreSQL and for NATS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresolvable_host_is_retried_naming_the_key() {
    let (pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    let setup = Setup::new("nodns");
    let yaml = setup.yaml(&pg, &nats);
    let bad_pg = yaml.replace("  host: 127.0.0.1\n", "  host: no-such-host.invalid\n");
    let mut service = Service::start(&bad_pg);
    wait_until("the unresolvable database.host to be reported", DEADLINE, || {
        let log = service.log();
        async move { log.contains("cannot resolve database.host \"no-such-host.invalid\"") }
    })
    .await;
    assert!(service.is_running(), "log:\n{}", service.log());
    blocking(|| service.terminate());

    let bad_nats = yaml.replace(&nats.url(), "nats://no-such-host.invalid:4222");
    let mut service = Service::start(&bad_nats);
    wait_until("the unresolvable publisher.address to be reported", DEADLINE, || {
        let log = service.log();
        async move {
            log.contains("cannot connect to NATS at nats://no-such-host.invalid:4222: cannot resolve the host name")
                && log.contains("check publisher.address")
        }
    })
    .await;
    assert!(service.is_running(), "log:\n{}", service.log());
    blocking(|| service.terminate());
}
