//! The wal-listener binary as a child process, with its config in a temp dir and its log
//! captured — so tests can stop it with SIGTERM, kill -9 it and restart it like an operator.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{NatsServer, PgCluster, RabbitServer, read_log};

/// Settings every test config shares, plus what the test adds.
pub struct Setup {
    pub slot: String,
    pub publication: String,
    pub topic: String,
    /// Extra YAML appended under the top level (e.g. a `scripts:` section).
    pub extra: String,
    /// Extra YAML lines under `listener:` (indented by two spaces).
    pub listener_extra: String,
    /// `listener.serverPort` (0 = no HTTP endpoint).
    pub server_port: u16,
}

impl Setup {
    pub fn new(name: &str) -> Setup {
        Setup {
            slot: format!("slot_{name}"),
            publication: format!("pub_{name}"),
            topic: format!("cdc_{name}"),
            extra: String::new(),
            listener_extra: String::new(),
            server_port: 0,
        }
    }

    pub fn yaml(&self, pg: &PgCluster, nats: &NatsServer) -> String {
        format!(
            "listener:\n  slotName: {}\n  publication: {}\n  heartbeatInterval: 1s\n  serverHost: 127.0.0.1\n  serverPort: {}\n{}\ndatabase:\n  host: 127.0.0.1\n  port: {}\n  name: postgres\n  user: postgres\npublisher:\n  type: nats\n  address: {}\n  topic: {}\nlogger:\n  level: debug\n  fmt: text\n{}\n",
            self.slot,
            self.publication,
            self.server_port,
            self.listener_extra,
            pg.port(),
            nats.url(),
            self.topic,
            self.extra
        )
    }
}

impl Setup {
    /// The same settings publishing to RabbitMQ at `address` (exchange = `topic`), with
    /// `publisher_extra` lines under `publisher:` (indented by two spaces).
    pub fn rabbit_yaml_at(&self, pg: &PgCluster, address: &str, publisher_extra: &str) -> String {
        format!(
            "listener:\n  slotName: {}\n  publication: {}\n  heartbeatInterval: 1s\n  serverHost: 127.0.0.1\n  serverPort: {}\n{}\ndatabase:\n  host: 127.0.0.1\n  port: {}\n  name: postgres\n  user: postgres\npublisher:\n  type: rabbitmq\n  address: {}\n  topic: {}\n{}\nlogger:\n  level: debug\n  fmt: text\n{}\n",
            self.slot,
            self.publication,
            self.server_port,
            self.listener_extra,
            pg.port(),
            address,
            self.topic,
            publisher_extra,
            self.extra
        )
    }

    /// [`Setup::rabbit_yaml_at`] the server's default virtual host, a topic exchange.
    pub fn rabbit_yaml(&self, pg: &PgCluster, rabbit: &RabbitServer) -> String {
        self.rabbit_yaml_at(pg, &rabbit.url(), "  exchangeKind: topic\n")
    }
}

/// Another wal-listener binary to start instead of this build's (benches compare builds).
static PROGRAM: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

/// Start `program` instead of this build's binary from now on (`None`: this build's).
#[allow(dead_code)]
pub fn set_program(program: Option<PathBuf>) {
    if let Ok(mut p) = PROGRAM.lock() {
        *p = program;
    }
}

/// A running (or stopped) wal-listener process.
pub struct Service {
    dir: tempfile::TempDir,
    child: Option<Child>,
    runs: usize,
    env: Vec<(String, String)>,
}

impl Service {
    /// Write `yaml` as the config and start the binary.
    pub fn start(yaml: &str) -> Service {
        Service::start_full(yaml, &[], &[])
    }

    /// Like [`Service::start`], with extra files (scripts) written next to the config first.
    pub fn start_with_files(yaml: &str, files: &[(&str, &str)]) -> Service {
        Service::start_full(yaml, files, &[])
    }

    /// [`Service::start`] with extra environment variables (e.g. `WAL_*` overrides).
    pub fn start_with_env(yaml: &str, env: &[(&str, &str)]) -> Service {
        Service::start_full(yaml, &[], env)
    }

    /// Files written next to the config, and environment variables, then start.
    pub fn start_full(yaml: &str, files: &[(&str, &str)], env: &[(&str, &str)]) -> Service {
        let dir = tempfile::tempdir().expect("temp dir for the service");
        std::fs::write(dir.path().join("config.yml"), yaml).expect("write config");
        for (name, content) in files {
            let path = dir.path().join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("create dirs");
            }
            std::fs::write(path, content).expect("write file");
        }
        let mut service = Service {
            dir,
            child: None,
            runs: 0,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        service.start_again();
        service
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Replace a file the way editors do: write a temporary file, then rename it over the old.
    pub fn replace_file(&self, name: &str, content: &str) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).expect("write temp file");
        std::fs::rename(&tmp, self.dir.path().join(name)).expect("rename over");
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yml")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("service-{}.log", self.runs))
    }

    /// Every log the process wrote, all runs.
    pub fn log(&self) -> String {
        (1..=self.runs)
            .map(|n| read_log(&self.dir.path().join(format!("service-{n}.log"))))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "service already running");
        self.runs += 1;
        let log = std::fs::File::create(self.log_path()).expect("create log");
        // WAL_LISTENER_WRAP="valgrind --tool=callgrind …" runs the binary under a profiler
        // (benches; the tests never set it).
        let binary = PROGRAM
            .lock()
            .ok()
            .and_then(|p| p.clone())
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_wal-listener")));
        let wrap = std::env::var("WAL_LISTENER_WRAP").unwrap_or_default();
        let mut wrap = wrap.split_whitespace();
        let mut command = match wrap.next() {
            Some(program) => {
                let mut c = Command::new(program);
                c.args(wrap).arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        let child = command
            .arg("-c")
            .arg(self.config_path())
            .current_dir(self.dir.path())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn wal-listener");
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("service is running")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGTERM, then wait (up to 60 s) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.pid();
        let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        self.wait_exit(Duration::from_secs(60))
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Wait for the process to stop on a fatal error: exit status 1, and the error as the last
    /// log line, which is returned.
    pub fn fatal_line(&mut self, deadline: Duration) -> String {
        let status = self.wait_exit(deadline);
        let log = self.log();
        assert_eq!(status.code(), Some(1), "log:\n{log}");
        assert!(!log.contains("panicked"), "log:\n{log}");
        log.lines().last().unwrap_or_default().to_string()
    }

    /// Wait for the process to exit on its own.
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("service is running");
        let until = Instant::now() + deadline;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    panic!("wal-listener did not exit within {deadline:?}; log:\n{}", self.log());
                }
            }
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Wait until the service holds its slot (so changes from now on are captured).
pub fn wait_streaming(pg: &PgCluster, slot: &str, service: &mut Service) {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let active = pg.psql(&format!(
            "SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ));
        if active == "t" {
            return;
        }
        if !service.is_running() || Instant::now() > until {
            panic!(
                "wal-listener did not start streaming from slot {slot}; log:\n{}",
                service.log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The slot's confirmed_flush_lsn as a number.
pub fn confirmed_flush(pg: &PgCluster, slot: &str) -> u64 {
    let text = pg.psql(&format!(
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ));
    parse_lsn(&text)
}

/// Runs `insert` (an `INSERT` without `RETURNING`) in its own transaction and returns the WAL
/// position after its rows and before its commit record. A slot confirmed past it would make
/// PostgreSQL skip the transaction on restart; a slot up to it has only WAL without changes
/// (an idle keepalive may confirm the checkpointer's running-xacts record, say), so a test
/// that checks "not confirmed" compares with this, not with the position before the insert.
pub fn insert_before_commit(pg: &PgCluster, insert: &str) -> u64 {
    parse_lsn(&pg.psql(&format!(
        "WITH ins AS ({insert} RETURNING 1) SELECT pg_current_wal_lsn() FROM (SELECT count(*) FROM ins) AS done"
    )))
}

pub fn parse_lsn(text: &str) -> u64 {
    let (hi, lo) = text
        .trim()
        .split_once('/')
        .unwrap_or_else(|| panic!("not an LSN: {text:?}"));
    let hi = u64::from_str_radix(hi, 16).unwrap_or_else(|_| panic!("not an LSN: {text:?}"));
    let lo = u64::from_str_radix(lo, 16).unwrap_or_else(|_| panic!("not an LSN: {text:?}"));
    (hi << 32) | lo
}

/// `wal-listener check --connect` with `yaml` as its config and extra environment variables:
/// the exit code and everything it printed.
pub fn check_connect(yaml: &str, env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.yml");
    std::fs::write(&path, yaml).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_wal-listener"))
        .args(["check", "--connect", "-c"])
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .expect("run wal-listener check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}
