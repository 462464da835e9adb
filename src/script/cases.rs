//! Script test cases: event JSON in → expected messages out.
//!
//! A case file is JSON:
//!
//! ```json
//! {
//!   "config": "listener:\n  filter:\n    tables:\n      users: [insert]\n",
//!   "cases": [
//!     { "name": "users inserts are published",
//!       "event": {"schema": "public", "table": "users", "action": "INSERT", "data": {"id": 1}},
//!       "expect": [{"subject": "wal_listener.public_users", "payload": {"data": {"id": 1}}}] },
//!     { "name": "orders are dropped",
//!       "event": {"schema": "public", "table": "orders", "action": "INSERT"},
//!       "expect": [] },
//!     { "name": "bad rows fail", "event": {…}, "error": "region missing" }
//!   ]
//! }
//! ```
//!
//! `config` (optional) is YAML applied over the configuration being checked, so one file can
//! pin the settings its cases assume. `expect` lists the messages in order; a message's
//! `payload` (optional) must match the one produced — for objects, every key given must be
//! equal, other keys are not compared — and its `headers` (optional) must be present with those
//! values. `error` expects the script to fail with a message containing that text.
//!
//! Case files live in a `cases/` directory next to the entry script; `wal-listener check` and
//! every hot reload run them, and a reload whose cases fail is rejected.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::{Payload, Router};
use crate::config::Config;
use crate::event::{self, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    #[serde(default)]
    config: Option<String>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    event: serde_json::Value,
    #[serde(default)]
    expect: Vec<Expected>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    subject: String,
    #[serde(default)]
    payload: Option<serde_json::Value>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// What running the cases found.
#[derive(Debug, Default)]
pub struct Report {
    pub passed: usize,
    /// One line per failure: file, case name, what differed.
    pub failures: Vec<String>,
}

/// The case files in `<dir>/cases/*.json`, sorted.
pub fn case_files(scripts_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(scripts_dir.join("cases"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Run every case in `files` against the entry script `config` names (or the built-in one).
pub fn run(config: &Config, files: &[PathBuf]) -> Report {
    let mut report = Report::default();
    for file in files {
        let name = file.display();
        let parsed: CaseFile = match std::fs::read_to_string(file)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()))
        {
            Ok(parsed) => parsed,
            Err(e) => {
                report.failures.push(format!("{name}: not a case file: {e}"));
                continue;
            }
        };
        let config = match &parsed.config {
            Some(overlay) => match overlay_config(config, overlay) {
                Ok(c) => c,
                Err(e) => {
                    report
                        .failures
                        .push(format!("{name}: its \"config\" does not load: {e}"));
                    continue;
                }
            },
            None => config.clone(),
        };
        let router = match Router::from_config(&config) {
            Ok(r) => r,
            Err(e) => {
                report.failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        for (n, case) in parsed.cases.iter().enumerate() {
            match run_case(&router, case, n) {
                Ok(()) => report.passed += 1,
                Err(why) => report.failures.push(format!("{name}: case {:?}: {why}", case.name)),
            }
        }
    }
    report
}

/// The checked config with the case file's YAML laid over it (the file's values win).
fn overlay_config(base: &Config, overlay: &str) -> Result<Config, String> {
    let mut merged = base.clone();
    let (over, _) = Config::from_yaml(overlay, &[], base.base_dir.clone()).map_err(|e| e.to_string())?;
    let text: serde_yaml_ng::Value = serde_yaml_ng::from_str(overlay).map_err(|e| e.to_string())?;
    let has = |section: &str| text.get(section).is_some();
    if has("listener") {
        merged.listener = over.listener;
    }
    if has("publisher") {
        merged.publisher = over.publisher;
    }
    if has("scripts") {
        // The cases test the script being checked unless the file names another one.
        let path = over.scripts.path.clone().or_else(|| base.scripts.path.clone());
        merged.scripts = over.scripts;
        merged.scripts.path = path;
    }
    Ok(merged)
}

fn run_case(router: &Router, case: &Case, ordinal: usize) -> Result<(), String> {
    let event =
        event::from_json(&case.event, u32::try_from(ordinal).unwrap_or(0)).map_err(|e| format!("event: {e}"))?;
    let event = Arc::new(event);
    let routed = match (router.route(&event), &case.error) {
        (Err(e), Some(want)) if e.to_string().contains(want.as_str()) => return Ok(()),
        (Err(e), Some(want)) => return Err(format!("expected an error containing {want:?}, got: {e}")),
        (Err(e), None) => return Err(format!("script error: {e}")),
        (Ok(_), Some(want)) => {
            return Err(format!(
                "expected an error containing {want:?}, but the script succeeded"
            ));
        }
        (Ok(routed), None) => routed,
    };
    if routed.len() != case.expect.len() {
        let subjects: Vec<&str> = routed.iter().map(|r| r.subject.as_str()).collect();
        return Err(format!(
            "expected {} message(s), got {} {subjects:?}",
            case.expect.len(),
            routed.len()
        ));
    }
    for (i, (got, want)) in routed.iter().zip(&case.expect).enumerate() {
        if got.subject != want.subject {
            return Err(format!(
                "message {}: subject {:?}, expected {:?}",
                i + 1,
                got.subject,
                want.subject
            ));
        }
        for (name, value) in &want.headers {
            let found = got.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v);
            if found != Some(value) {
                return Err(format!(
                    "message {}: header {name} is {found:?}, expected {value:?}",
                    i + 1
                ));
            }
        }
        if let Some(want_payload) = &want.payload {
            let got_payload = match &got.payload {
                Payload::Event => serde_json::from_slice(&json::payload(&event)).unwrap_or_default(),
                Payload::Json(bytes) => serde_json::from_slice(bytes).unwrap_or_default(),
                Payload::Raw(bytes) => serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned()),
            };
            if !matches(&got_payload, want_payload) {
                return Err(format!(
                    "message {}: payload {got_payload}, expected {want_payload}",
                    i + 1
                ));
            }
        }
    }
    Ok(())
}

/// Objects match when every expected key matches; everything else must be equal.
fn matches(got: &serde_json::Value, want: &serde_json::Value) -> bool {
    match (got, want) {
        (serde_json::Value::Object(g), serde_json::Value::Object(w)) => {
            w.iter().all(|(k, wv)| g.get(k).is_some_and(|gv| matches(gv, wv)))
        }
        _ => got == want,
    }
}
