//! The README's quick start (`./quickstart.sh`) run as a newcomer would, so it cannot rot:
//! throwaway PostgreSQL and NATS, the example config and script, writes, events printed, and
//! everything cleaned up afterwards.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn the_quick_start_shows_the_events_and_cleans_up() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut child = Command::new("bash")
        .arg(format!("{root}/quickstart.sh"))
        .env("WAL_LISTENER_BIN", env!("CARGO_BIN_EXE_wal-listener"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run quickstart.sh");
    let until = Instant::now() + Duration::from_secs(240);
    while child.try_wait().expect("poll quickstart.sh").is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("quickstart output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let text = format!("{stdout}\n--- stderr ---\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");

    // The five events, in commit order, on the subjects the example script chose.
    let events: Vec<(&str, serde_json::Value)> = stdout
        .lines()
        .filter_map(|l| l.split_once("  {"))
        .map(|(subject, json)| (subject, serde_json::from_str(&format!("{{{json}")).expect("event JSON")))
        .collect();
    let summary: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|(subject, e)| {
            (
                *subject,
                e["table"].as_str().unwrap_or(""),
                e["action"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("wal_listener.public_customers", "customers", "INSERT"),
            ("wal_listener.orders.eu", "orders", "INSERT"),
            ("wal_listener.orders.us", "orders", "INSERT"),
            ("wal_listener.public_customers", "customers", "UPDATE"),
            ("wal_listener.public_orders", "orders", "DELETE"),
        ],
        "{text}"
    );
    assert_eq!(events[3].1["data"]["email"], "ada@lovelace.dev");
    assert_eq!(events[1].1["data"]["total"], "42.50", "numeric stays an exact string");
    assert!(stdout.contains("GET /ready: ok: streaming"), "{text}");
    assert!(stdout.contains("wal_listener_replication_lag_bytes "), "{text}");

    // Nothing left behind.
    let work = stdout
        .lines()
        .last()
        .and_then(|l| l.rsplit(' ').next())
        .filter(|w| w.starts_with("/tmp/wal-quickstart."))
        .unwrap_or_else(|| panic!("no work directory named in:\n{text}"));
    assert!(!std::path::Path::new(work).exists(), "{work} was not removed");
}
