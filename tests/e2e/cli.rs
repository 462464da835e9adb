//! The command line: exit codes and error messages a user (or a CI pipeline) relies on.

use std::process::Command;

fn wal_listener(args: &[&str], config: Option<&str>) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.yml");
    if let Some(yaml) = config {
        std::fs::write(&path, yaml).expect("write config");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_wal-listener"))
        .args(args)
        .arg("-c")
        .arg(&path)
        .output()
        .expect("run wal-listener");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_config_is_one_clear_line_and_exit_2() {
    let (code, _, err) = wal_listener(&[], Some("listener:\n  slotNmae: x\n"));
    assert_eq!(code, 2);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("unknown key listener.slotNmae (did you mean listener.slotName?)"),
        "{err}"
    );

    let (code, _, err) = wal_listener(&[], None);
    assert_eq!(code, 2);
    assert!(
        err.contains("cannot read config file") && err.contains("-c/--config"),
        "{err}"
    );
}

#[test]
fn check_connect_reports_each_unreachable_server() {
    let (code, out, _) = wal_listener(
        &["check", "--connect"],
        Some("database:\n  host: 127.0.0.1\n  port: 1\npublisher:\n  address: nats://127.0.0.1:1\n"),
    );
    assert_eq!(code, 1);
    assert!(out.contains("error: database:"), "{out}");
    assert!(out.contains("error: publisher:"), "{out}");
}

#[test]
fn check_compiles_the_script() {
    let (code, out, _) = wal_listener(&["check"], Some(""));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok: script default.lua compiles"), "{out}");
}

#[test]
fn route_prints_the_messages_a_script_produces() {
    let dir = tempfile::tempdir().expect("temp dir");
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &events,
        "{\"schema\":\"public\",\"table\":\"users\",\"action\":\"INSERT\",\"data\":{\"id\":1}}\n{\"schema\":\"public\",\"table\":\"orders\",\"action\":\"INSERT\",\"data\":{\"id\":2}}\n",
    )
    .expect("write events");
    let config = "listener:\n  filter:\n    tables:\n      users: [insert]\n";
    let (code, out, err) = wal_listener(&["route", "--event", events.to_str().unwrap_or_default()], Some(config));
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert_eq!(lines[0]["subject"], "wal_listener.public_users");
    assert_eq!(lines[0]["payload"]["data"]["id"], 1);
    assert_eq!(lines[0]["headers"]["Wal-Action"], "INSERT");
}

/// `route` is the tool for editing scripts: their log lines (and `print`, which goes to the log)
/// must show on stderr, and must not mix into the messages on stdout.
#[test]
fn route_shows_script_log_and_print_lines_on_stderr() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("route.lua"),
        "function route(e) log.info('routing ' .. e.table); print('printed', 42, nil); return 'a.' .. e.table end",
    )
    .expect("write script");
    let config = dir.path().join("config.yml");
    std::fs::write(&config, "scripts:\n  path: route.lua\nlogger:\n  fmt: text\n").expect("write config");
    let events = dir.path().join("event.json");
    std::fs::write(
        &events,
        r#"{"schema":"public","table":"users","action":"INSERT","data":{"id":1}}"#,
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_wal-listener"))
        .args(["route", "--event"])
        .arg(&events)
        .arg("-c")
        .arg(&config)
        .output()
        .expect("run wal-listener");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout.lines().count(), 1, "only the message on stdout: {stdout}");
    assert!(stdout.contains("\"subject\":\"a.users\""), "{stdout}");
    assert!(stderr.contains("routing users"), "{stderr}");
    assert!(stderr.contains("printed\t42\tnil"), "{stderr}");
}

#[test]
fn check_runs_the_script_test_cases_and_fails_on_a_wrong_expectation() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("cases")).expect("mkdir");
    std::fs::write(
        dir.path().join("route.lua"),
        "function route(e) return 'a.' .. e.table end",
    )
    .expect("write");
    let case = |subject: &str| {
        format!(
            r#"{{"cases": [{{"name": "users", "event": {{"schema": "public", "table": "users", "action": "INSERT"}}, "expect": [{{"subject": "{subject}"}}]}}]}}"#
        )
    };
    std::fs::write(dir.path().join("cases/users.json"), case("a.users")).expect("write");
    let config = dir.path().join("config.yml");
    std::fs::write(&config, "scripts:\n  path: route.lua\n").expect("write");
    let run = || check_file(&config);
    let (code, out) = run();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("ok: 1 script test cases passed"), "{out}");

    std::fs::write(dir.path().join("cases/users.json"), case("a.wrong")).expect("write");
    let (code, out) = run();
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("case \"users\": message 1: subject \"a.users\", expected \"a.wrong\""),
        "{out}"
    );
}

#[test]
fn every_shipped_example_passes_check() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&root).expect("examples/") {
        let dir = entry.expect("entry").path();
        if !dir.is_dir() {
            continue;
        }
        let config = dir.join("config.yml");
        let (code, stdout) = check_file(&config);
        assert_eq!(code, Some(0), "{}: {stdout}", config.display());
        checked += 1;
    }
    assert!(checked >= 7, "only {checked} examples");
}

/// `wal-listener check -c <config>`: exit code and standard output.
fn check_file(config: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wal-listener"))
        .arg("check")
        .arg("-c")
        .arg(config)
        .output()
        .expect("run");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}
