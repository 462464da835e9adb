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
        err("publisher:\n  type: kafka\n").contains("publisher.type is \"kafka\"; use one of: nats, nats-core, stdout")
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
