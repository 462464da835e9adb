//! The README's quick start (`./quickstart.sh`) run as a newcomer would, so it cannot rot:
//! throwaway PostgreSQL and NATS, the example config and script, writes, events printed, and
//! everything cleaned up afterwards — and what a newcomer sees when something goes wrong: the
//! binary cargo built wherever its target dir is, a service that exits at start, an HTTP port
//! that never answers, and `--keep` following the stream.

use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{pg::pg_bindir, wait_for_sync, wait_until_sync};

/// The whole demo on a loaded machine: start PostgreSQL and NATS, stream, list.
const RUN_DEADLINE: Duration = Duration::from_secs(240);

/// `quickstart.sh` running as a child, its stdout and stderr collected line by line as they
/// arrive (so a test can react to a line while the script runs). Dropping it stops the script
/// with SIGTERM, which makes it clean up, so a failed test leaves no servers behind.
struct Quickstart {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers_done: Arc<Mutex<usize>>,
}

impl Quickstart {
    /// Run `script` (a quickstart.sh) with `args`; `env` is added to the test's environment
    /// (`None` removes the variable).
    fn start(script: &Path, args: &[&str], env: &[(&str, Option<&str>)]) -> Quickstart {
        let mut cmd = Command::new("bash");
        cmd.arg(script)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in env {
            match value {
                Some(v) => cmd.env(name, v),
                None => cmd.env_remove(name),
            };
        }
        let mut child = cmd.spawn().expect("run quickstart.sh with bash");
        let readers_done = Arc::new(Mutex::new(0));
        let stdout = collect(child.stdout.take().expect("piped stdout"), &readers_done);
        let stderr = collect(child.stderr.take().expect("piped stderr"), &readers_done);
        Quickstart {
            child,
            stdout,
            stderr,
            readers_done,
        }
    }

    /// The repository's own script, with the binary the suite built.
    fn start_default(args: &[&str], env: &[(&str, Option<&str>)]) -> Quickstart {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("quickstart.sh");
        let mut all = vec![("WAL_LISTENER_BIN", Some(env!("CARGO_BIN_EXE_wal-listener")))];
        all.extend_from_slice(env);
        Quickstart::start(&script, args, &all)
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap_or_else(|e| e.into_inner()).join("\n")
    }

    /// stdout and stderr, for assertion messages and for looking for a message on either.
    fn text(&self) -> String {
        let stderr = self.stderr.lock().unwrap_or_else(|e| e.into_inner()).join("\n");
        format!("{}\n--- stderr ---\n{stderr}", self.stdout())
    }

    /// Waits until a line of stdout satisfies `f`; returns it.
    fn wait_for_line(&mut self, what: &str, deadline: Duration, f: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            if let Some(line) = self
                .stdout
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|l| f(l))
            {
                return line.clone();
            }
            if let Some(status) = self.child.try_wait().expect("poll quickstart.sh") {
                self.wait_for_readers();
                panic!("quickstart.sh ended ({status}) before {what}:\n{}", self.text());
            }
            if start.elapsed() > deadline {
                panic!("timed out after {deadline:?} waiting for {what}:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the script to end (SIGTERM and a panic with its output when it does not).
    fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("poll quickstart.sh") {
                self.wait_for_readers();
                return status;
            }
            if start.elapsed() > deadline {
                self.stop();
                panic!("quickstart.sh still running after {deadline:?}:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Both pipes read to their end (the script's servers write to log files, not to them).
    fn wait_for_readers(&self) {
        wait_until_sync(
            "the end of quickstart.sh's stdout and stderr",
            Duration::from_secs(10),
            || *self.readers_done.lock().unwrap_or_else(|e| e.into_inner()) == 2,
        );
    }

    /// Sends a signal to the script (not to its servers: they get what the script does).
    fn signal(&self, signal: &str) -> bool {
        Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// SIGTERM (the script cleans up), then SIGKILL if it is still there after 30 s.
    fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = self.signal("-TERM");
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        self.stop();
    }
}

fn collect(pipe: impl Read + Send + 'static, done: &Arc<Mutex<usize>>) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (sink, done) = (lines.clone(), done.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
        *done.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    });
    lines
}

/// The "subject  {json}" lines the script prints for stream messages.
fn events(stdout: &str) -> Vec<(String, serde_json::Value)> {
    stdout
        .lines()
        .filter_map(|l| l.split_once("  {"))
        .map(|(subject, json)| {
            let event = serde_json::from_str(&format!("{{{json}")).expect("event JSON");
            (subject.to_string(), event)
        })
        .collect()
}

/// The five demo events, in commit order, on the subjects the example script chose.
fn assert_demo_events(stdout: &str, text: &str) {
    let events = events(stdout);
    let summary: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|(subject, e)| {
            (
                subject.as_str(),
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
}

fn write_executable(path: &Path, content: &str) {
    std::fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod 755");
}

fn port_is_closed(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_err()
}

#[test]
fn the_quick_start_shows_the_events_and_cleans_up() {
    // WAL_* settings in the user's shell (meant for another wal-listener) must not reach the
    // demo's service: this level would stop it at start, this topic would change every subject.
    let mut run = Quickstart::start_default(
        &[],
        &[
            ("WAL_LOGGER_LEVEL", Some("bogus")),
            ("WAL_PUBLISHER_TOPIC", Some("elsewhere")),
        ],
    );
    let status = run.wait_exit(RUN_DEADLINE);
    let (stdout, text) = (run.stdout(), run.text());
    assert!(status.success(), "{text}");

    assert_demo_events(&stdout, &text);
    assert!(stdout.contains("GET /ready: ok: streaming"), "{text}");
    assert!(stdout.contains("wal_listener_replication_lag_bytes "), "{text}");

    // Nothing left behind.
    let work = stdout
        .lines()
        .last()
        .and_then(|l| l.rsplit(' ').next())
        .filter(|w| w.starts_with("/tmp/wal-quickstart."))
        .unwrap_or_else(|| panic!("no work directory named in:\n{text}"));
    assert!(!Path::new(work).exists(), "{work} was not removed");
}

/// The script runs the executable cargo reports, wherever the target dir is.
///
/// Why a stand-in `cargo` and not a real build: a real `cargo build` into a fresh target dir
/// compiles every dependency again (minutes of CPU on a 2-core CI machine), and pointing it at
/// the suite's own target dir would rewrite `target/debug/wal-listener` under the tests that
/// are running it. What this test must prove is the script's part: it asks cargo (no
/// `--quiet`, so progress shows), honours `CARGO_TARGET_DIR` by taking the path from cargo's
/// JSON messages (the lines below are copied from real cargo output), and never looks in
/// `./target`. The copy of the sources it runs from has no `target/` at all; the binary cargo
/// "built" is the suite's, reached through `$CARGO_TARGET_DIR/debug/wal-listener`.
#[test]
fn the_quick_start_runs_the_binary_cargo_reports_in_its_target_dir() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = dir.path().join("clone");
    std::fs::create_dir_all(src.join("examples")).expect("mkdir clone/examples");
    for file in ["quickstart.sh", "config.yml", "examples/route.lua"] {
        std::fs::copy(root.join(file), src.join(file)).unwrap_or_else(|e| panic!("copy {file}: {e}"));
    }

    let target_dir = dir.path().join("elsewhere");
    std::fs::create_dir_all(target_dir.join("debug")).expect("mkdir target dir");
    let built = target_dir.join("debug/wal-listener");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_wal-listener"), &built).expect("symlink the binary");

    let bin_dir = dir.path().join("bin");
    std::fs::create_dir_all(&bin_dir).expect("mkdir bin");
    let calls = dir.path().join("cargo-calls");
    let manifest = src.join("Cargo.toml");
    let (src_s, manifest_s) = (src.display(), manifest.display());
    write_executable(
        &bin_dir.join("cargo"),
        &format!(
            r#"#!/bin/sh
# Stand-in for cargo: notes how it was called, shows progress on stderr as cargo does, and
# reports what it "built" on stdout in cargo's JSON message format.
printf 'args: %s\nCARGO_TARGET_DIR=%s\n' "$*" "$CARGO_TARGET_DIR" >>'{calls}'
echo '   Compiling wal-listener v0.1.0 ({src_s})' >&2
t=$CARGO_TARGET_DIR
echo '{{"reason":"compiler-artifact","package_id":"path+file://{src_s}#wal-listener@0.1.0","manifest_path":"{manifest_s}","target":{{"kind":["lib"],"crate_types":["lib"],"name":"wal_listener","src_path":"{src_s}/src/lib.rs","edition":"2024","doc":true,"doctest":true,"test":true}},"profile":{{"opt_level":"0","debuginfo":2,"debug_assertions":true,"overflow_checks":true,"test":false}},"features":[],"filenames":["'"$t"'/debug/deps/libwal_listener-d42409e352c4696f.rlib"],"executable":null,"fresh":false}}'
echo '{{"reason":"compiler-artifact","package_id":"path+file://{src_s}#wal-listener@0.1.0","manifest_path":"{manifest_s}","target":{{"kind":["bin"],"crate_types":["bin"],"name":"wal-listener","src_path":"{src_s}/src/main.rs","edition":"2024","doc":true,"doctest":false,"test":true}},"profile":{{"opt_level":"0","debuginfo":2,"debug_assertions":true,"overflow_checks":true,"test":false}},"features":[],"filenames":["'"$t"'/debug/wal-listener"],"executable":"'"$t"'/debug/wal-listener","fresh":false}}'
echo '{{"reason":"build-finished","success":true}}'
"#,
            calls = calls.display(),
        ),
    );
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());

    let mut run = Quickstart::start(
        &src.join("quickstart.sh"),
        &[],
        &[
            ("WAL_LISTENER_BIN", None),
            ("PATH", Some(&path)),
            ("CARGO_TARGET_DIR", Some(&target_dir.display().to_string())),
        ],
    );
    let status = run.wait_exit(RUN_DEADLINE);
    let (stdout, text) = (run.stdout(), run.text());
    assert!(status.success(), "{text}");

    let calls = std::fs::read_to_string(&calls).unwrap_or_else(|e| panic!("cargo was not called ({e}):\n{text}"));
    let args = calls.lines().find_map(|l| l.strip_prefix("args: ")).unwrap_or("");
    let words: Vec<&str> = args.split(' ').collect();
    assert!(words.contains(&"build") && words.contains(&"--locked"), "{calls}");
    assert!(
        !words.contains(&"--quiet") && !words.contains(&"-q"),
        "the build must show progress: {calls}"
    );
    assert!(
        calls.contains(&format!("CARGO_TARGET_DIR={}", target_dir.display())),
        "{calls}"
    );
    assert!(
        text.contains("Compiling wal-listener"),
        "cargo's progress is shown:\n{text}"
    );
    assert!(stdout.contains(&format!("built {}", built.display())), "{text}");
    assert!(!src.join("target").exists(), "nothing looked in or made ./target");
    assert_demo_events(&stdout, &text);
}

/// A service that stops at start: its own message is on the screen and its exit status is the
/// script's. (The script removes WAL_* variables from the environment, so the bogus setting
/// comes through a wrapper given as WAL_LISTENER_BIN, as a broken build or config would.)
#[test]
fn a_service_that_exits_at_start_shows_its_message_and_its_status() {
    let dir = tempfile::tempdir().expect("temp dir");
    let wrapper = dir.path().join("wal-listener");
    write_executable(
        &wrapper,
        &format!(
            "#!/bin/sh\nWAL_LOGGER_LEVEL=bogus exec '{}' \"$@\"\n",
            env!("CARGO_BIN_EXE_wal-listener")
        ),
    );
    let mut run = Quickstart::start_default(&[], &[("WAL_LISTENER_BIN", Some(&wrapper.display().to_string()))]);
    let status = run.wait_exit(RUN_DEADLINE);
    let text = run.text();
    assert_eq!(status.code(), Some(2), "the service's exit status:\n{text}");
    assert!(
        text.contains(r#"config: WAL_LOGGER_LEVEL is "bogus"; use one of: debug, info, warn, error"#),
        "the service's own message:\n{text}"
    );
    assert!(text.contains("wal-listener exited with status 2 at start"), "{text}");
}

#[test]
fn a_missing_binary_is_named() {
    let mut run = Quickstart::start_default(&[], &[("WAL_LISTENER_BIN", Some("/nonexistent/wal-listener"))]);
    let status = run.wait_exit(RUN_DEADLINE);
    let text = run.text();
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("WAL_LISTENER_BIN=/nonexistent/wal-listener is not an executable file"),
        "{text}"
    );
}

/// An HTTP port that accepts connections and never answers (a wedged service, or another
/// program on the port) ends the script with a timeout that names what it waited for.
/// The stand-in service tells the test which port the script gave it, stays alive, and the
/// test holds that port with a listener that accepts and never replies.
#[test]
fn a_stalled_http_port_times_out_naming_what_it_waited_for() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port_file = dir.path().join("port");
    let stand_in = dir.path().join("wal-listener");
    write_executable(
        &stand_in,
        &format!(
            "#!/bin/sh\necho \"$WAL_LISTENER_SERVERPORT\" >'{0}.tmp' && mv '{0}.tmp' '{0}'\nexec sleep 600\n",
            port_file.display()
        ),
    );
    let mut run = Quickstart::start_default(&[], &[("WAL_LISTENER_BIN", Some(&stand_in.display().to_string()))]);

    let port: u16 = wait_for_sync("the stand-in service to be started", RUN_DEADLINE, || {
        std::fs::read_to_string(&port_file).ok()?.trim().parse().ok()
    });
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("hold the service's port");
    let held = Arc::new(Mutex::new(Vec::new()));
    let sink = held.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            sink.lock().unwrap_or_else(|e| e.into_inner()).push(conn); // accepted, never answered
        }
    });

    // The script's bound is 5 s per request; a hang would hit this deadline instead.
    let status = run.wait_exit(Duration::from_secs(60));
    let text = run.text();
    assert!(!status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "timed out after 5 s waiting for an answer to GET http://127.0.0.1:{port}/ready"
        )),
        "{text}"
    );
    assert!(
        !held.lock().unwrap_or_else(|e| e.into_inner()).is_empty(),
        "the script connected"
    );
}

/// `--keep` follows the stream: a row the user inserts shows up as "subject  payload", and
/// Ctrl-C stops and removes everything.
#[test]
fn keep_prints_the_users_own_writes_until_ctrl_c() {
    let mut run = Quickstart::start_default(&["--keep"], &[]);
    run.wait_for_line("the script to follow the stream", RUN_DEADLINE, |l| {
        l.starts_with("==> following stream wal_listener")
    });
    let stdout = run.stdout();
    let port_of = |prefix: &str| -> u16 {
        stdout
            .split(prefix)
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix:?} in:\n{stdout}"))
    };
    let (pg_port, nats_port) = (port_of("psql -h 127.0.0.1 -p "), port_of("nats://127.0.0.1:"));
    let http_port = port_of("metrics on http://127.0.0.1:");
    let work: PathBuf = stdout
        .split("log: ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .and_then(|log| Path::new(log).parent().map(Path::to_path_buf))
        .unwrap_or_else(|| panic!("no log path in:\n{stdout}"));

    let psql = Command::new(pg_bindir().join("psql"))
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .args(["-p", &pg_port.to_string()])
        .args(["-c", "CREATE TABLE my_notes (id int PRIMARY KEY, body text)"])
        .args(["-c", "INSERT INTO my_notes VALUES (7, 'written by the user')"])
        .output()
        .expect("run psql");
    assert!(psql.status.success(), "psql: {}", String::from_utf8_lossy(&psql.stderr));

    let line = run.wait_for_line("the user's insert on the screen", Duration::from_secs(60), |l| {
        l.starts_with("wal_listener.public_my_notes  {")
    });
    let (_, event) = events(&line).pop().expect("one event");
    assert_eq!(event["action"], "INSERT", "{line}");
    assert_eq!(event["data"]["body"], "written by the user", "{line}");

    assert!(run.signal("-INT"), "send SIGINT to quickstart.sh");
    let status = run.wait_exit(Duration::from_secs(60));
    let text = run.text();
    assert_eq!(status.code(), Some(130), "Ctrl-C:\n{text}");
    assert!(text.contains(&format!("stopped; removed {}", work.display())), "{text}");
    assert!(!work.exists(), "{} was not removed", work.display());
    for (what, port) in [
        ("PostgreSQL", pg_port),
        ("nats-server", nats_port),
        ("wal-listener", http_port),
    ] {
        assert!(port_is_closed(port), "{what} still listens on {port} after Ctrl-C");
    }
}
