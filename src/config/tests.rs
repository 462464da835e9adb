use super::*;

fn load(yaml: &str) -> Result<(Config, Warnings), ConfigError> {
    Config::from_yaml(yaml, &[], PathBuf::new())
}

fn load_env(yaml: &str, env: &[(&str, &str)]) -> Result<(Config, Warnings), ConfigError> {
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Config::from_yaml(yaml, &env, PathBuf::new())
}

fn err(yaml: &str) -> String {
    match load(yaml) {
        Ok(_) => panic!("expected an error for {yaml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn empty_file_gives_defaults() {
    let (c, w) = load("").expect("defaults");
    assert!(w.is_empty());
    assert_eq!(c.listener.slot_name, "wal_listener");
    assert_eq!(c.listener.publication, "wal-listener");
    assert_eq!(c.listener.server_port, 8080);
    assert_eq!(c.listener.heartbeat_interval, Duration::from_secs(10));
    assert_eq!(c.database.port, 5432);
    assert_eq!(c.publisher.kind, PublisherKind::Nats);
    assert_eq!(c.publisher.topic, "wal_listener");
    assert_eq!(c.scripts.on_error, OnError::DeadLetter);
    assert_eq!(c.dead_letter_subject(), "wal_listener.dead_letter");
}

#[test]
fn reads_a_go_config() {
    let yaml = r#"
listener:
  slotName: myslot_1
  refreshConnection: 30s
  heartbeatInterval: 10s
  filter:
    tables:
      seasons:
        - insert
        - update
  topicsMap:
    main_users: "notifier"
logger:
  level: info
  fmt: json
database:
  host: localhost
  port: 5432
  name: my_db
  user: postgres
  password: postgres
  debug: false
publisher:
  type: nats
  address: localhost:4222
  topic: "wal_listener"
  topicPrefix: ""
monitoring:
  sentryDSN: "dsn string"
  promAddr: ":2112"
"#;
    let (c, warnings) = load(yaml).expect("Go config loads");
    assert_eq!(c.listener.slot_name, "myslot_1");
    assert_eq!(c.listener.filter.tables["seasons"], vec!["insert", "update"]);
    assert_eq!(c.listener.topics_map["main_users"], "notifier");
    assert_eq!(c.database.password.as_ref().map(Secret::expose), Some("postgres"));
    assert_eq!(c.monitoring.prom_addr.as_deref(), Some(":2112"));
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(warnings.iter().any(|w| w.starts_with("listener.refreshConnection")));
    assert!(warnings.iter().any(|w| w.starts_with("monitoring.sentryDSN")));
}

#[test]
fn keys_match_case_insensitively_like_viper() {
    let (c, _) = load("LISTENER:\n  slotname: abc\npublisher:\n  TopicPrefix: pre.\n").expect("loads");
    assert_eq!(c.listener.slot_name, "abc");
    assert_eq!(c.publisher.topic_prefix, "pre.");
}

#[test]
fn unknown_keys_are_named_with_a_suggestion() {
    let e = err("listener:\n  slotNmae: x\n");
    assert!(e.contains("unknown key listener.slotNmae"), "{e}");
    assert!(e.contains("did you mean listener.slotName?"), "{e}");
    let e = err("databse:\n  host: x\n");
    assert!(
        e.contains("unknown key databse") && e.contains("did you mean database?"),
        "{e}"
    );
    let e = err("publisher:\n  zzz: 1\n");
    assert!(
        e.contains("unknown key publisher.zzz;") && !e.contains("did you mean"),
        "{e}"
    );
}

#[test]
fn wrong_types_name_the_key() {
    assert!(err("database:\n  port: abc\n").contains("database.port must be a non-negative whole number"));
    assert!(err("listener:\n  heartbeatInterval: 10\n").contains("listener.heartbeatInterval must be a duration"));
    assert!(
        err("listener:\n  heartbeatInterval: ten\n").contains("listener.heartbeatInterval: \"ten\" is not a duration")
    );
    assert!(
        err("listener:\n  filter:\n    tables:\n      users: insert\n")
            .contains("listener.filter.tables.users must be a list")
    );
    assert!(err("listener: [1]\n").contains("listener must be a mapping"));
    assert!(err("listener:\n  filter:\n    tables:\n      users: [upsert]\n").contains("unknown action \"upsert\""));
    assert!(
        err("publisher:\n  type: kafka\n")
            .contains("publisher.type is \"kafka\"; use one of: nats, nats-core, rabbitmq, stdout")
    );
    assert!(err("scripts:\n  onError: retry\n").contains("retry"));
}

#[test]
fn invalid_values_are_explained() {
    assert!(
        err("listener:\n  slotName: My-Slot\n")
            .contains("listener.slotName \"My-Slot\" is not a valid replication slot name")
    );
    assert!(err("publisher:\n  topic: a.b\n").contains("publisher.topic \"a.b\" must be a single NATS subject token"));
    assert!(err("listener:\n  heartbeatInterval: 0s\n").contains("greater than zero"));
}

#[test]
fn malformed_yaml_is_an_error_not_a_panic() {
    assert!(matches!(load("listener: [\n"), Err(ConfigError::Yaml { .. })));
    assert!(err("- a\n- b\n").contains("must be a YAML mapping"));
}

#[test]
fn env_overrides_apply_even_when_the_key_is_absent() {
    let (c, _) = load_env(
        "listener:\n  slotName: from_file\n",
        &[
            ("WAL_LISTENER_SLOTNAME", "from_env"),
            ("WAL_DATABASE_PASSWORD", "s3cret"),
            ("WAL_DATABASE_PORT", "6543"),
            ("WAL_SCRIPTS_WATCH", "false"),
            ("WAL_LISTENER_HEARTBEATINTERVAL", "2s"),
            ("WAL_LISTENER_FILTER_TABLES", "{users: [insert]}"),
            ("WAL_SOMETHING_ELSE", "ignored"),
        ],
    )
    .expect("loads");
    assert_eq!(c.listener.slot_name, "from_env");
    assert_eq!(c.database.password.as_ref().map(Secret::expose), Some("s3cret"));
    assert_eq!(c.database.port, 6543);
    assert!(!c.scripts.watch);
    assert_eq!(c.listener.heartbeat_interval, Duration::from_secs(2));
    assert_eq!(c.listener.filter.tables["users"], vec!["insert"]);
}

#[test]
fn bad_env_values_name_the_variable() {
    let e = load_env("", &[("WAL_DATABASE_PORT", "x")])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("WAL_DATABASE_PORT"), "{e}");
}

#[test]
fn numeric_passwords_stay_text() {
    let (c, _) = load("database:\n  password: 001234\n").expect("loads");
    assert!(c.database.password.is_some());
    let (c, _) = load("database:\n  password: '001234'\n").expect("loads");
    assert_eq!(c.database.password.as_ref().map(Secret::expose), Some("001234"));
}

#[test]
fn secrets_do_not_print() {
    let (c, _) = load("database:\n  password: hunter2\n").expect("loads");
    let printed = format!("{c:?}");
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(printed.contains("***"));
}

#[test]
fn durations() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    for bad in ["", "10", "s", "10x", "-1s", "1e400s"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
}

#[test]
fn message_filter_distinguishes_absent_empty_and_listed() {
    let (c, _) = load("").expect("loads");
    assert_eq!(c.listener.filter.messages, None, "absent: every message");
    let (c, _) = load("listener:\n  filter:\n    messages: []\n").expect("loads");
    assert_eq!(c.listener.filter.messages, Some(vec![]), "empty: none");
    let (c, _) = load("listener:\n  filter:\n    messages: [outbox, 'a.b']\n").expect("loads");
    assert_eq!(c.listener.filter.messages, Some(vec!["outbox".into(), "a.b".into()]));
    assert!(
        err("listener:\n  filter:\n    messages: outbox\n").contains("listener.filter.messages must be a list"),
        "{}",
        err("listener:\n  filter:\n    messages: outbox\n")
    );
    let (c, _) = load_env("", &[("WAL_LISTENER_FILTER_MESSAGES", "outbox, audit")]).expect("loads");
    assert_eq!(c.listener.filter.messages, Some(vec!["outbox".into(), "audit".into()]));
    let (c, _) = load_env("", &[("WAL_LISTENER_FILTER_MESSAGES", "[outbox]")]).expect("loads");
    assert_eq!(c.listener.filter.messages, Some(vec!["outbox".into()]));
}

#[test]
fn go_tls_keys_configure_nats_tls() {
    let yaml = "publisher:\n  enableTLS: true\n  caCert: ca.pem\n  clientCert: c.pem\n  clientKey: k.pem\n";
    let (c, w) = load(yaml).expect("Go TLS keys");
    assert!(w.is_empty(), "{w:?}");
    assert!(c.publisher.enable_tls);
    assert_eq!(c.publisher.tls_ca_file, Some(PathBuf::from("ca.pem")));
    assert_eq!(c.publisher.tls_cert_file, Some(PathBuf::from("c.pem")));
    assert_eq!(c.publisher.tls_key_file, Some(PathBuf::from("k.pem")));
    // The environment knows the Go names too.
    let (c, _) = load_env("", &[("WAL_PUBLISHER_CACERT", "/etc/ca.pem")]).expect("env alias");
    assert_eq!(c.publisher.tls_ca_file, Some(PathBuf::from("/etc/ca.pem")));
    assert!(err("publisher:\n  caCert: a.pem\n  tlsCaFile: b.pem\n").contains("publisher.tlsCaFile is given twice"));
}

#[test]
fn secrets_come_from_files_and_never_appear_in_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("pg"), "s3cret-pg\n").expect("write");
    std::fs::write(dir.path().join("token"), "s3cret-token").expect("write");
    let yaml = "database:\n  passwordFile: pg\npublisher:\n  tokenFile: token\n";
    let (c, _) = Config::from_yaml(yaml, &[], dir.path().to_path_buf()).expect("secret files");
    assert_eq!(c.database.password.as_ref().map(Secret::expose), Some("s3cret-pg"));
    assert_eq!(c.publisher.token.as_ref().map(Secret::expose), Some("s3cret-token"));
    assert!(!format!("{c:?}").contains("s3cret"), "Debug shows no secret");

    let both = "database:\n  password: x\n  passwordFile: pg\n";
    let e = Config::from_yaml(both, &[], dir.path().to_path_buf()).expect_err("both");
    assert!(
        e.to_string()
            .contains("database.password and database.passwordFile are both set"),
        "{e}"
    );
    let missing = "publisher:\n  passwordFile: nope\n  user: u\n";
    let e = Config::from_yaml(missing, &[], dir.path().to_path_buf()).expect_err("missing file");
    assert!(
        e.to_string().contains("publisher.passwordFile: cannot read nope"),
        "{e}"
    );
}

#[test]
fn tls_and_auth_settings_that_cannot_work_are_refused() {
    assert!(err("database:\n  sslCert: c.pem\n").contains("database.sslCert and database.sslKey go together"));
    assert!(err("publisher:\n  tlsKeyFile: k.pem\n").contains("publisher.tlsCertFile and publisher.tlsKeyFile"));
    assert!(err("publisher:\n  user: u\n").contains("publisher.user and publisher.password go together"));
    assert!(
        err("publisher:\n  token: t\n  user: u\n  password: p\n")
            .contains("choose one NATS authentication method, not user/password and token")
    );
    assert!(err("database:\n  host: 10.0.0.1\n  sslMode: verify-full\n").contains("verify-full checks the host name"));
    let (c, _) = load("database:\n  host: db.example\n  sslMode: verify-full\nlistener:\n  serverHost: 127.0.0.1\n")
        .expect("valid");
    assert_eq!(c.database.ssl_mode, SslMode::VerifyFull);
    assert_eq!(c.listener.server_host, "127.0.0.1");
}

const GO_V1: &str = include_str!("../../tests/fixtures/go/v1.2.0-config.yml");
const GO_V1_README: &str = include_str!("../../tests/fixtures/go/v1-readme-filter.yml");
const GO_V2_11: &str = include_str!("../../tests/fixtures/go/v2.11-config_example.yml");

fn warning<'a>(warnings: &'a [String], start: &str) -> &'a str {
    warnings
        .iter()
        .find(|w| w.starts_with(start))
        .unwrap_or_else(|| panic!("no warning starting with {start:?} in {warnings:#?}"))
}

#[test]
fn the_go_v1_2_0_file_loads_with_its_v1_meaning() {
    let (c, w) = load(GO_V1).expect("the v1.2.0 config.yml loads");
    assert_eq!(c.listener.slot_name, "myslot_1");
    assert_eq!(c.listener.filter.tables["users"], vec!["insert", "update"]);
    assert_eq!(c.publisher.kind, PublisherKind::Nats);
    assert_eq!(c.publisher.address, "localhost:4222");
    assert_eq!(c.publisher.topic_prefix, "pre");
    assert_eq!(c.publisher.topic, "wal_listener");
    assert_eq!(c.logger.fmt, LogFormat::Text);
    assert_eq!(c.database.name, "test_db");
    assert_eq!(c.database.password.as_ref().map(Secret::expose), Some("pass"));

    assert!(warning(&w, "database.filter is read as listener.filter").contains("moved the table filter"));
    assert!(warning(&w, "logger.humanReadable is read as logger.fmt: text").contains("write logger.fmt: text instead"));
    assert!(warning(&w, "nats.address is read as publisher.address: localhost:4222").contains("write"));
    warning(&w, "nats.topicPrefix is read as publisher.topicPrefix: pre");
    for key in ["nats.clusterID", "nats.clientID"] {
        assert!(warning(&w, key).contains("NATS Streaming"), "{w:#?}");
    }
    warning(&w, "logger.caller");
    warning(&w, "database.debug");
    warning(&w, "listener.refreshConnection");
    let subjects = warning(&w, "nats: is the Go v1 section");
    assert!(subjects.contains("JetStream"), "{subjects}");
    assert!(
        subjects.contains("(prepublic_users for public.users)")
            && subjects.contains("(wal_listener.prepublic_users)")
            && subjects.contains("topicsMap"),
        "{subjects}"
    );
    assert_eq!(w.len(), 10, "{w:#?}");
}

#[test]
fn the_go_v1_readme_filter_under_databases_is_the_listener_filter() {
    let (c, w) = load(GO_V1_README).expect("the README snippet loads");
    assert_eq!(c.listener.filter.tables["users"], vec!["insert", "update"]);
    let text = warning(&w, "databases.filter is read as listener.filter");
    assert!(text.contains("misspelling of `database:`"), "{text}");
    assert_eq!(w.len(), 1, "{w:#?}");
    let e = err("databases:\n  host: x\n");
    assert!(
        e.contains("unknown key databases.host (only databases.filter is read, as listener.filter; did you mean database.host?)"),
        "{e}"
    );
}

#[test]
fn a_filter_in_two_places_is_an_error_naming_both() {
    let e = err("database:\n  filter:\n    tables: {a: [insert]}\nlistener:\n  filter:\n    tables: {b: [insert]}\n");
    assert!(e.contains("database.filter and listener.filter are both set"), "{e}");
    let e = err("database:\n  filter:\n    tables: {a: [insert]}\ndatabases:\n  filter:\n    tables: {b: [insert]}\n");
    assert!(
        e.contains("database.filter and databases.filter are both set and both mean listener.filter"),
        "{e}"
    );
    let e = err("nats:\n  address: a:4222\npublisher:\n  address: b:4222\n");
    assert!(e.contains("nats.address and publisher.address are both set"), "{e}");
    let e = err("logger:\n  humanReadable: true\n  fmt: json\n");
    assert!(e.contains("logger.humanReadable and logger.fmt are both set"), "{e}");
}

#[test]
fn every_unknown_key_is_reported_in_one_run() {
    let e = err("listener:\n  slotNmae: x\ndatabase:\n  hots: y\n  zzz: 1\npublisher:\n  port: abc\nfoo: 1\n");
    assert!(e.starts_with("config: 5 problems:\n"), "{e}");
    for part in [
        "unknown key listener.slotNmae (did you mean listener.slotName?)",
        "unknown key database.hots (did you mean database.host?)",
        "unknown key database.zzz;",
        "unknown key publisher.port",
        "unknown key foo;",
    ] {
        assert!(e.contains(part), "{part} missing from:\n{e}");
    }
    assert_eq!(e.lines().count(), 6, "{e}");
    // Type errors are collected with them.
    let e = err("database:\n  port: abc\n  hots: y\n");
    assert!(
        e.contains("2 problems") && e.contains("database.port must be") && e.contains("database.hots"),
        "{e}"
    );
}

#[test]
fn the_go_v2_11_example_loads_with_gos_meaning() {
    let (c, w) = load(GO_V2_11).expect("config_example.yml (type: nats) loads");
    // enableTLS: false wins over sslMode: require, as in Go.
    assert_eq!(c.database.ssl_mode, SslMode::Disable);
    let tls = warning(&w, "database.enableTLS is false and database.sslMode is require");
    assert!(
        tls.contains("TLS to PostgreSQL is off") && tls.contains("write sslMode: disable and delete enableTLS"),
        "{tls}"
    );
    assert!(warning(&w, "publisher.messageKeyFrom").contains("Kafka"));
    // The snake_case keys Go never read stay without effect, and nobody suggests enableTLS.
    for key in ["enable_tls", "client_cert", "client_key", "ca_cert"] {
        let text = warning(&w, &format!("publisher.{key} is accepted"));
        assert!(text.contains("never read it"), "{text}");
        assert!(!text.contains("did you mean"), "{text}");
    }
    assert!(!c.publisher.enable_tls);
    assert_eq!(c.publisher.tls_ca_file, None);
    assert_eq!(c.publisher.tls_cert_file, None);
    assert_eq!(c.listener.server_port, 80);
    assert_eq!(c.listener.topics_map["schema_table_name"], "notifier");
    assert_eq!(c.monitoring.prom_addr.as_deref(), Some(":2112"));
}

#[test]
fn database_enable_tls_has_gos_meaning() {
    let mode = |yaml: &str, env: &[(&str, &str)]| {
        let (c, w) = load_env(yaml, env).expect("loads");
        (c.database.ssl_mode, w.join("\n"))
    };
    let (m, w) = mode("database:\n  enableTLS: true\n  sslMode: verify-ca\n", &[]);
    assert_eq!(m, SslMode::VerifyCa);
    assert!(w.contains("verify-ca") && w.contains("delete enableTLS"), "{w}");
    let (m, w) = mode("database:\n  enableTLS: true\n", &[]);
    assert_eq!(m, SslMode::Require, "Go's default mode");
    assert!(w.contains("write sslMode: require instead"), "{w}");
    let (m, _) = mode("database:\n  enableTLS: false\n", &[]);
    assert_eq!(m, SslMode::Disable);
    let (m, _) = mode(
        "database:\n  sslMode: require\n",
        &[("WAL_DATABASE_ENABLETLS", "false")],
    );
    assert_eq!(m, SslMode::Disable, "the environment has Go's meaning too");
    let (m, w) = mode("database:\n  sslMode: require\n", &[]);
    assert_eq!(m, SslMode::Require);
    assert!(w.is_empty(), "{w}");
}

#[test]
fn print_config_gives_an_equivalent_v2_file_without_secrets() {
    for (name, old) in [("v1", GO_V1), ("v1 README", GO_V1_README), ("v2.11", GO_V2_11)] {
        let printed = Config::v2_yaml(old).expect("prints");
        let body: String = printed
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        for gone in [
            "password:",
            "nats:",
            "humanReadable",
            "enableTLS",
            "enable_tls",
            "debug",
            "databases",
        ] {
            assert!(!body.contains(gone), "{name}: {gone} in\n{printed}");
        }
        // Loading the printed file gives the same settings, without a warning.
        let secrets = [("WAL_DATABASE_PASSWORD", "pass")];
        let (new, w) = load_env(&printed, &secrets).unwrap_or_else(|e| panic!("{name}: {e}\n{printed}"));
        assert!(w.is_empty(), "{name}: {w:#?}\n{printed}");
        let (old, _) = load_env(old, &secrets).expect("old loads");
        assert_eq!(format!("{new:?}"), format!("{old:?}"), "{name}:\n{printed}");
    }
    let printed = Config::v2_yaml(GO_V1).expect("prints");
    assert!(printed.contains("\n# - nats: is the Go v1 section"), "{printed}");
    assert!(
        printed.contains(
            "  # password: not printed (a secret): copy it from the old file, or use passwordFile or WAL_DATABASE_PASSWORD\n"
        ),
        "{printed}"
    );
    assert!(
        printed.contains("publisher:\n  address: localhost:4222\n  topicPrefix: pre\n  type: nats\n"),
        "{printed}"
    );
    assert!(printed.contains("logger:\n  level: info\n  fmt: text\n"), "{printed}");
    let printed = Config::v2_yaml("publisher:\n  token: t0k3n\n  user: u\n").expect("prints");
    assert!(
        !printed.contains("t0k3n") && printed.contains("# token: not printed"),
        "{printed}"
    );
}

#[test]
fn a_host_list_is_tried_in_order() {
    let (c, _) = load("database:\n  host: primary:5433, standby ,[::1]:5434,/run/pg\n  port: 5432\n").expect("loads");
    assert_eq!(
        c.database.servers().expect("parses"),
        vec![
            ("primary".to_string(), 5433),
            ("standby".to_string(), 5432),
            ("::1".to_string(), 5434),
            ("/run/pg".to_string(), 5432),
        ]
    );
    assert!(c.database.is_list());
    let (c, _) = load("database:\n  host: \"::1\"\n").expect("loads");
    assert_eq!(c.database.servers().expect("parses"), vec![("::1".to_string(), 5432)]);
    for bad in ["a:5432,,b", "a:x", "a:0"] {
        let e = load(&format!("database:\n  host: \"{bad}\"\n"))
            .expect_err(bad)
            .to_string();
        assert!(e.contains("database.host"), "{bad}: {e}");
    }
}

#[test]
fn failover_and_cluster_keys_have_defaults_and_limits() {
    let (c, _) = load("").expect("loads");
    assert_eq!(c.listener.stall_timeout, std::time::Duration::from_secs(300));
    assert!(!c.listener.failover_slot);
    assert_eq!(c.publisher.replicas, 1);
    let (c, _) = load_env(
        "listener:\n  stallTimeout: 30s\n  failoverSlot: true\n",
        &[("WAL_PUBLISHER_REPLICAS", "3")],
    )
    .expect("loads");
    assert_eq!(c.listener.stall_timeout, std::time::Duration::from_secs(30));
    assert!(c.listener.failover_slot);
    assert_eq!(c.publisher.replicas, 3);
    let e = load("publisher:\n  replicas: 7\n").expect_err("7 replicas").to_string();
    assert!(e.contains("publisher.replicas"), "{e}");
}

#[test]
fn a_go_rabbitmq_config_loads_and_its_mistakes_name_the_key() {
    let go = "publisher:\n  type: rabbitmq\n  address: amqp://guest:guest@localhost:5672/\n  topic: wal_listener\n  ExchangeKind: topic\n";
    let (c, w) = load(go).expect("a Go v2.11 RabbitMQ config");
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(c.publisher.kind, PublisherKind::Rabbitmq);
    assert_eq!(c.publisher.exchange_kind, Some(ExchangeKind::Topic));
    assert_eq!(c.publisher.unroutable, Unroutable::Fail);
    let (c, _) = load_env(go, &[("WAL_PUBLISHER_UNROUTABLE", "drop")]).expect("env");
    assert_eq!(c.publisher.unroutable, Unroutable::Drop);

    let missing = "publisher:\n  type: rabbitmq\n  address: amqp://localhost\n";
    assert!(err(missing).contains("publisher.exchangeKind is required with publisher.type: rabbitmq"));
    assert!(
        err("publisher:\n  type: rabbitmq\n  exchangeKind: topic\n").contains("publisher.address must be one AMQP URI"),
        "the NATS default address is not taken for an AMQP one"
    );
    assert!(err("publisher:\n  exchangeKind: queue\n").contains("use one of: topic, direct, fanout, headers"));
    assert!(
        err("publisher:\n  type: rabbitmq\n  address: amqp://h\n  exchangeKind: topic\n  token: t\n")
            .contains("publisher.token is a NATS setting")
    );
    assert!(err("publisher:\n  unroutable: ignore\n").contains("use one of: fail, drop"));

    let (_, w) = load("publisher:\n  exchangeKind: topic\n").expect("warned");
    assert!(
        w.iter().any(
            |w| w.contains("publisher.exchangeKind is a RabbitMQ setting and is ignored with publisher.type: nats")
        ),
        "{w:?}"
    );
}
