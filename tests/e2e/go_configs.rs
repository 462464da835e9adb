//! The Go wal-listener's own config files, unchanged (tests/fixtures/go): `check` accepts them
//! with warnings that say what changed, `check --print-config` migrates them, and the service
//! runs with them against real servers — events arrive on the subjects the warnings announce.
//! Only the addresses of the throwaway servers come from `WAL_*` variables.

use std::process::Command;
use std::time::Duration;

use crate::support::service::{Service, Setup, wait_streaming};
use crate::support::{NatsServer, PgCluster, blocking, free_port, wait_for_sync, wait_until_sync};

const DEADLINE: Duration = Duration::from_secs(60);

const GO_V1: &str = include_str!("../fixtures/go/v1.2.0-config.yml");
const GO_V1_README: &str = include_str!("../fixtures/go/v1-readme-filter.yml");
const GO_V2_11: &str = include_str!("../fixtures/go/v2.11-config_example.yml");

/// `wal-listener ARGS -c <yaml in a file>` with `env`: exit code, stdout, stderr.
fn run(args: &[&str], yaml: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.yml");
    std::fs::write(&path, yaml).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_wal-listener"))
        .args(args)
        .arg("-c")
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .expect("run wal-listener");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `check` exits 0, prints a warning line starting with each of `warnings`, and its printed v2
/// config passes `check` without any warning.
fn check_migrates(yaml: &str, warnings: &[&str]) {
    let (code, out, err) = run(&["check"], yaml, &[]);
    assert_eq!(code, 0, "{out}{err}");
    for w in warnings {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("warning: {w}"))),
            "no warning {w:?} in:\n{out}"
        );
    }
    assert!(out.ends_with("ok: configuration is valid\n"), "{out}");

    let (code, printed, report) = run(&["check", "--print-config"], yaml, &[]);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("warning: "), "the check's lines go to stderr: {report}");
    let (code, out, err) = run(&["check"], &printed, &[("WAL_DATABASE_PASSWORD", "pass")]);
    assert_eq!(code, 0, "{out}{err}\nprinted:\n{printed}");
    assert!(
        !out.contains("warning:"),
        "the printed config needs no migration:\n{out}\nprinted:\n{printed}"
    );
}

/// The servers' addresses, overriding the file's localhost defaults.
fn server_env(pg: &PgCluster, nats: &NatsServer) -> Vec<(String, String)> {
    vec![
        ("WAL_DATABASE_HOST".into(), "127.0.0.1".into()),
        ("WAL_DATABASE_PORT".into(), pg.port().to_string()),
        ("WAL_PUBLISHER_ADDRESS".into(), nats.url()),
    ]
}

fn start(yaml: &str, env: &[(String, String)]) -> Service {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Service::start_with_env(yaml, &env)
}

#[test]
fn check_accepts_the_go_v1_2_0_file_and_explains_the_changes() {
    check_migrates(
        GO_V1,
        &[
            "database.filter is read as listener.filter",
            "nats.address is read as publisher.address: localhost:4222",
            "nats.topicPrefix is read as publisher.topicPrefix: pre",
            "nats.clusterID is accepted for compatibility with the Go wal-listener but ignored: a NATS Streaming setting",
            "nats.clientID is accepted",
            "logger.humanReadable is read as logger.fmt: text",
            "logger.caller is accepted",
            "database.debug is accepted",
            "nats: is the Go v1 section for NATS Streaming (end-of-life); it is read as publisher: with type: nats, which is JetStream. Subjects change: v1 published each change to the channel <topicPrefix><schema>_<table> (prepublic_users for public.users); now it goes to <topic>.<topicPrefix><schema>_<table> (wal_listener.prepublic_users)",
        ],
    );
}

#[test]
fn check_accepts_the_go_v1_readme_filter() {
    check_migrates(GO_V1_README, &["databases.filter is read as listener.filter"]);
}

#[test]
fn check_accepts_the_go_v2_11_example() {
    check_migrates(
        GO_V2_11,
        &[
            "database.enableTLS is false and database.sslMode is require: as in the Go wal-listener, TLS to PostgreSQL is off",
            "publisher.messageKeyFrom is accepted",
            "publisher.enable_tls is accepted",
            "publisher.client_cert is accepted",
            "publisher.client_key is accepted",
            "publisher.ca_cert is accepted",
        ],
    );
    let (_, out, _) = run(&["check"], GO_V2_11, &[]);
    assert!(!out.contains("did you mean"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_go_v1_2_0_file_runs_and_publishes_to_the_announced_subject() {
    let (pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    // The file's database and user, as a v1 installation has them.
    pg.psql("CREATE ROLE back LOGIN SUPERUSER PASSWORD 'pass'");
    pg.create_database("test_db");
    pg.psql_db(
        "test_db",
        "CREATE TABLE users (id int PRIMARY KEY, name text); CREATE TABLE orders (id int PRIMARY KEY)",
    );
    let mut env = server_env(&pg, &nats);
    // The file sets no serverPort: keep the default 8080 free for the other tests.
    env.push(("WAL_LISTENER_SERVERPORT".into(), "0".into()));
    let mut service = start(GO_V1, &env);
    blocking(|| wait_streaming(&pg, "myslot_1", &mut service));

    pg.psql_db(
        "test_db",
        "INSERT INTO users VALUES (1, 'a'); INSERT INTO orders VALUES (1);
         UPDATE users SET name = 'b' WHERE id = 1; DELETE FROM users WHERE id = 1;
         INSERT INTO users VALUES (2, 'c');",
    );
    // v1's filter (users: insert, update) applies; the subject is the one the warning names.
    let messages = nats.wait_for_messages("wal_listener", 3, DEADLINE).await;
    let got: Vec<(String, String)> = messages
        .iter()
        .map(|m| {
            (
                m.subject.clone(),
                m.json()["action"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let subject = "wal_listener.prepublic_users".to_string();
    assert_eq!(
        got,
        [
            (subject.clone(), "INSERT".to_string()),
            (subject.clone(), "UPDATE".to_string()),
            (subject, "INSERT".to_string())
        ]
    );
    let log = service.log();
    assert!(
        log.contains("nats: is the Go v1 section"),
        "the warnings are logged:\n{log}"
    );
    // humanReadable: true is the text format: no JSON log lines.
    assert!(!log.lines().any(|l| l.starts_with('{')), "{log}");
    let status = blocking(|| service.terminate());
    assert!(status.success(), "{status:?}\n{}", service.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_go_v1_readme_filter_runs_as_the_listener_filter() {
    let (pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    pg.psql("CREATE TABLE users (id int PRIMARY KEY); CREATE TABLE orders (id int PRIMARY KEY)");
    let port = free_port();
    let mut env = server_env(&pg, &nats);
    env.push(("WAL_LISTENER_SERVERPORT".into(), port.to_string()));
    let mut service = start(GO_V1_README, &env);
    blocking(|| wait_streaming(&pg, "wal_listener", &mut service));

    pg.psql("INSERT INTO orders VALUES (1); INSERT INTO users VALUES (1); DELETE FROM users");
    pg.psql("INSERT INTO users VALUES (2)");
    let messages = nats.wait_for_messages("wal_listener", 2, DEADLINE).await;
    let ids: Vec<(&str, serde_json::Value)> = messages
        .iter()
        .map(|m| (m.subject.as_str(), m.json()["data"]["id"].clone()))
        .collect();
    assert_eq!(
        ids,
        [
            ("wal_listener.public_users", serde_json::json!(1)),
            ("wal_listener.public_users", serde_json::json!(2))
        ]
    );

    // The health probe finds the port the same way the service did.
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    blocking(|| {
        wait_until_sync("wal-listener health answers 0", DEADLINE, || {
            run(&["health"], GO_V1_README, &env).0 == 0
        })
    });
    let status = blocking(|| service.terminate());
    assert!(status.success(), "{status:?}\n{}", service.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_go_v2_11_example_runs_without_tls_as_in_go() {
    // The server offers no TLS: the file's sslMode: require would fail the handshake, but its
    // enableTLS: false turns TLS off, as in Go.
    let (pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    pg.create_database("my_db");
    pg.psql_db(
        "my_db",
        "CREATE TABLE seasons (id int PRIMARY KEY); CREATE TABLE other (id int PRIMARY KEY)",
    );
    let (port, prom) = (free_port(), free_port());
    let mut env = server_env(&pg, &nats);
    // serverPort: 80 and promAddr :2112 of the file: free ports here (tests run in parallel).
    env.push(("WAL_LISTENER_SERVERPORT".into(), port.to_string()));
    env.push(("WAL_MONITORING_PROMADDR".into(), format!("127.0.0.1:{prom}")));
    let mut service = start(GO_V2_11, &env);
    blocking(|| wait_streaming(&pg, "myslot_1", &mut service));

    pg.psql_db(
        "my_db",
        "INSERT INTO other VALUES (1); INSERT INTO seasons VALUES (1); UPDATE seasons SET id = 2; DELETE FROM seasons",
    );
    pg.psql_db("my_db", "INSERT INTO seasons VALUES (3)");
    let messages = nats.wait_for_messages("wal_listener", 3, DEADLINE).await;
    let got: Vec<(&str, String)> = messages
        .iter()
        .map(|m| {
            (
                m.subject.as_str(),
                m.json()["action"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("wal_listener.public_seasons", "INSERT".to_string()),
            ("wal_listener.public_seasons", "UPDATE".to_string()),
            ("wal_listener.public_seasons", "INSERT".to_string())
        ]
    );
    let log = service.log();
    assert!(log.contains("database.enableTLS is false"), "{log}");
    let status = blocking(|| service.terminate());
    assert!(status.success(), "{status:?}\n{}", service.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_asks_the_port_the_config_file_names() {
    let (pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    let mut setup = Setup::new("health");
    setup.server_port = free_port();
    let yaml = setup.yaml(&pg, &nats);
    let mut service = Service::start(&yaml);
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));
    let out = blocking(|| {
        wait_for_sync("wal-listener health answers 0", DEADLINE, || {
            let (code, out, _) = run(&["health"], &yaml, &[]);
            (code == 0).then_some(out)
        })
    });
    assert!(
        out.contains(&format!("http://127.0.0.1:{}/healthz", setup.server_port)) && out.contains(": 200"),
        "{out}"
    );
    let status = blocking(|| service.terminate());
    assert!(status.success(), "{status:?}");
    // Nothing listens any more: unhealthy, saying where it asked.
    let (code, out, _) = run(&["health"], &yaml, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("127.0.0.1:{}", setup.server_port)), "{out}");
}
