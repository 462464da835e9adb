//! A throwaway NATS server (JetStream, file store) per test.
//!
//! Binary: `$NATS_SERVER` if set, else `nats-server` on `$PATH` (or
//! `/usr/sbin`, `/sbin`).

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;

use super::{find_in_path, free_port, read_log};

/// How long a start waits for the server to accept clients.
const READY_DEADLINE: Duration = Duration::from_secs(20);
/// How many fresh ports `start` tries when the bind fails.
const START_PORT_ATTEMPTS: usize = 5;
/// How long a graceful `stop` waits before killing.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// One message as stored in a JetStream stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    /// Stream sequence number.
    pub seq: u64,
    pub subject: String,
    /// All headers, sorted by name (values of one name keep their order).
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl StoredMessage {
    /// First value of header `name` (exact, case-sensitive match).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Payload as UTF-8 (panics if it is not).
    pub fn payload_str(&self) -> &str {
        std::str::from_utf8(&self.payload).unwrap_or_else(|e| panic!("payload of seq {} is not UTF-8: {e}", self.seq))
    }

    /// Payload parsed as JSON (panics if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "payload of seq {} is not JSON ({e}): {:?}",
                self.seq,
                String::from_utf8_lossy(&self.payload)
            )
        })
    }
}

impl From<jetstream::message::StreamMessage> for StoredMessage {
    fn from(m: jetstream::message::StreamMessage) -> Self {
        let mut headers: Vec<(String, String)> = m
            .headers
            .iter()
            .flat_map(|(name, values)| values.iter().map(move |v| (name.to_string(), v.as_str().to_owned())))
            .collect();
        // Stable sort: the values of one name keep their order.
        headers.sort_by(|a, b| a.0.cmp(&b.0));
        StoredMessage {
            seq: m.sequence,
            subject: m.subject.to_string(),
            headers,
            payload: m.payload.to_vec(),
        }
    }
}

pub struct NatsServer {
    bin: PathBuf,
    port: u16,
    /// `server_name`, unique per server: tells our server from any other
    /// that might answer on the port.
    name: String,
    child: Option<Child>,
    /// Extra command-line arguments (auth, `-c config`), given on every start.
    extra_args: Vec<String>,
    /// Whether the server runs with `-js`.
    jetstream: bool,
    // Dropped (deleted) after `Drop::drop` killed the server.
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts `nats-server -js` on a free port with a fresh file store; returns
    /// once it accepts clients. Panics (with the server log) on failure.
    pub fn start() -> NatsServer {
        NatsServer::start_with(&[])
    }

    /// [`NatsServer::start`] with extra arguments, e.g. `["--user", "u", "--pass", "p"]` or
    /// `["-c", "/path/server.conf"]` (command-line flags override the file).
    pub fn start_with(extra_args: &[&str]) -> NatsServer {
        NatsServer::start_inner(extra_args, true)
    }

    /// A server without JetStream (no `-js`), as an operator may have started one by mistake.
    pub fn start_without_jetstream() -> NatsServer {
        NatsServer::start_inner(&[], false)
    }

    /// The server's `server_name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn start_inner(extra_args: &[&str], jetstream: bool) -> NatsServer {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let bin = nats_server_bin();
        let dir = tempfile::Builder::new()
            .prefix("walh-nats-")
            .tempdir()
            .expect("create a temp dir for nats-server");
        let name = format!(
            "walh-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut server = NatsServer {
            bin,
            port: 0,
            name,
            child: None,
            extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
            jetstream,
            dir,
        };
        for attempt in 1..=START_PORT_ATTEMPTS {
            server.port = free_port();
            match server.try_spawn() {
                Ok(()) => return server,
                Err(msg) if attempt < START_PORT_ATTEMPTS && server.port_taken(&msg) => {
                    eprintln!("NatsServer: port {} taken, retrying", server.port);
                }
                Err(msg) => server.fail(&msg),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The JetStream store directory (`-sd`).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    /// Server output so far (stdout and stderr of every start).
    pub fn log(&self) -> String {
        read_log(&self.log_path())
    }

    /// The server process's id while it runs (the benches read its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Graceful stop (SIGTERM, so the file store is flushed; SIGKILL after
    /// 10 s), then waits for the process to exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            panic!("NatsServer::stop: server is not running");
        };
        let term = Command::new("kill")
            .args(["-s", "TERM", &child.id().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if term {
            let start = Instant::now();
            while start.elapsed() < STOP_GRACE {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Send a signal (`"STOP"`, `"CONT"`) to the running server: SIGSTOP makes a server that
    /// keeps its connections open and answers nothing.
    pub fn signal(&self, signal: &str) {
        let Some(child) = &self.child else {
            panic!("NatsServer::signal: server is not running");
        };
        let sent = Command::new("kill")
            .args(["-s", signal, &child.id().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(sent, "kill -s {signal} nats-server failed");
    }

    /// `nats-server --signal <command>=<pid>` (`ldm`: lame duck mode, `stop`, `quit`).
    pub fn signal_command(&self, command: &str) {
        let Some(child) = &self.child else {
            panic!("NatsServer::signal_command: server is not running");
        };
        let status = Command::new(&self.bin)
            .arg("--signal")
            .arg(format!("{command}={}", child.id()))
            .status()
            .unwrap_or_else(|e| panic!("nats-server --signal {command}: {e}"));
        assert!(status.success(), "nats-server --signal {command} failed: {status}");
    }

    /// Wait until the server exits by itself (after a `--signal`); kill it after `deadline`.
    pub fn wait_stopped(&mut self, deadline: Duration) {
        let Some(mut child) = self.child.take() else {
            panic!("NatsServer::wait_stopped: server is not running");
        };
        let start = Instant::now();
        while start.elapsed() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("nats-server did not exit within {deadline:?}; log:\n{}", self.log());
    }

    /// [`NatsServer::start_again`], this time with JetStream on.
    pub fn start_again_with_jetstream(&mut self) {
        self.jetstream = true;
        self.start_again();
    }

    /// Hard crash: SIGKILL and wait (messages not yet flushed may be lost).
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            panic!("NatsServer::kill: server is not running");
        };
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the stopped server again with the same port and store. Retries
    /// for up to 20 s while the port is briefly taken.
    pub fn start_again(&mut self) {
        assert!(
            self.child.is_none(),
            "NatsServer::start_again: server is already running"
        );
        let start = Instant::now();
        loop {
            match self.try_spawn() {
                Ok(()) => return,
                Err(msg) if start.elapsed() < READY_DEADLINE && self.port_taken(&msg) => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(msg) => self.fail(&msg),
            }
        }
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url()))
    }

    pub async fn jetstream(&self) -> jetstream::Context {
        jetstream::new(self.client().await)
    }

    /// Creates a file-stored stream `name` capturing `subjects`.
    pub async fn create_stream(&self, name: &str, subjects: &[&str]) -> jetstream::stream::Stream {
        self.jetstream()
            .await
            .create_stream(jetstream::stream::Config {
                name: name.to_owned(),
                subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("create stream {name} {subjects:?}: {e}"))
    }

    /// Number of messages in `stream` now, or `None` if it does not exist.
    pub async fn stream_len(&self, stream: &str) -> Option<u64> {
        let js = self.jetstream().await;
        stream_len(&js, stream).await
    }

    /// All messages currently in `stream`, in sequence order (read one by one
    /// with the STREAM.MSG.GET API; deleted sequences are skipped). Panics if
    /// the stream does not exist.
    pub async fn stream_messages(&self, stream: &str) -> Vec<StoredMessage> {
        let js = self.jetstream().await;
        read_stream(&js, stream).await
    }

    /// All messages of `stream`, read with one ordered consumer (fast, for large streams;
    /// [`NatsServer::stream_messages`] reads one by one). Panics if it does not exist.
    #[allow(dead_code)]
    pub async fn stream_messages_fast(&self, stream: &str) -> Vec<StoredMessage> {
        use futures::StreamExt;
        let js = self.jetstream().await;
        let want = stream_len(&js, stream).await.unwrap_or(0);
        let mut out = Vec::with_capacity(usize::try_from(want).unwrap_or(0));
        if want == 0 {
            return out;
        }
        let s = js
            .get_stream(stream)
            .await
            .unwrap_or_else(|e| panic!("get stream {stream:?}: {e}"));
        let consumer = s
            .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
            .await
            .unwrap_or_else(|e| panic!("consumer on {stream:?}: {e}"));
        let mut messages = consumer
            .messages()
            .await
            .unwrap_or_else(|e| panic!("messages of {stream:?}: {e}"));
        while (out.len() as u64) < want {
            let next = tokio::time::timeout(Duration::from_secs(30), messages.next())
                .await
                .unwrap_or_else(|_| panic!("reading {stream:?} stalled after {} of {want}", out.len()));
            let Some(Ok(m)) = next else {
                panic!("reading {stream:?} ended after {} of {want}", out.len());
            };
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
            let mut headers: Vec<(String, String)> = m
                .headers
                .iter()
                .flat_map(|h| h.iter())
                .flat_map(|(name, values)| values.iter().map(move |v| (name.to_string(), v.as_str().to_owned())))
                .collect();
            headers.sort_by(|a, b| a.0.cmp(&b.0));
            out.push(StoredMessage {
                seq,
                subject: m.subject.to_string(),
                headers,
                payload: m.payload.to_vec(),
            });
        }
        out
    }

    /// Polls until `stream` exists and holds at least `n` messages, then
    /// returns all its messages (may be more than `n`). Panics with the count
    /// seen when `deadline` passes first.
    pub async fn wait_for_messages(&self, stream: &str, n: u64, deadline: Duration) -> Vec<StoredMessage> {
        let js = self.jetstream().await;
        let start = Instant::now();
        loop {
            let seen = stream_len(&js, stream).await;
            if seen.is_some_and(|count| count >= n) {
                return read_stream(&js, stream).await;
            }
            if start.elapsed() >= deadline {
                let seen = match seen {
                    Some(count) => format!("{count} message(s)"),
                    None => "no such stream".to_owned(),
                };
                panic!(
                    "timed out after {deadline:?} waiting for {n} message(s) in stream \
                     {stream:?}: saw {seen}"
                );
            }
            tokio::time::sleep(super::wait::POLL_INTERVAL).await;
        }
    }

    // ---- internals ----

    /// Spawns the server on `self.port` and waits until it is ready; on
    /// failure the process is gone and the error holds its log.
    fn try_spawn(&mut self) -> Result<(), String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open nats log");
        let log_mark = log.metadata().map(|m| m.len()).unwrap_or(0);
        let stderr = log.try_clone().expect("clone nats log handle");
        let mut child = Command::new(&self.bin)
            .args(self.jetstream.then_some("-js"))
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-sd")
            .arg(self.store_dir())
            .args(["-n", &self.name])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));

        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    return Err(format!(
                        "nats-server exited ({status}) during start:\n{}",
                        log_since(&self.log_path(), log_mark)
                    ));
                }
                Ok(None) => {}
                Err(e) => panic!("try_wait on nats-server: {e}"),
            }
            if server_name_at(addr).as_deref() == Some(self.name.as_str()) {
                self.child = Some(child);
                return Ok(());
            }
            if start.elapsed() >= READY_DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "nats-server not ready on {addr} after {READY_DEADLINE:?}:\n{}",
                    log_since(&self.log_path(), log_mark)
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn port_taken(&self, msg: &str) -> bool {
        msg.contains("address already in use")
    }

    fn fail(&self, msg: &str) -> ! {
        panic!("NatsServer ({}, port {}): {msg}", self.dir.path().display(), self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // `self.dir` (TempDir) is removed when the fields drop.
    }
}

/// Connects to `addr` and reads the server's INFO line; returns its
/// `server_name`.
fn server_name_at(addr: SocketAddr) -> Option<String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    let json = line.strip_prefix("INFO ")?;
    let info: serde_json::Value = serde_json::from_str(json.trim()).ok()?;
    info.get("server_name")?.as_str().map(str::to_owned)
}

fn log_since(path: &Path, mark: u64) -> String {
    let all = std::fs::read(path).unwrap_or_default();
    let new = usize::try_from(mark)
        .ok()
        .and_then(|m| all.get(m..))
        .unwrap_or_default();
    String::from_utf8_lossy(new).into_owned()
}

async fn stream_len(js: &jetstream::Context, stream: &str) -> Option<u64> {
    let mut s = js.get_stream(stream).await.ok()?;
    s.info().await.ok().map(|info| info.state.messages)
}

/// Reads every message of `stream`. In a cluster that just regained quorum a replica may
/// answer "JetStream system temporarily unavailable" (503) for a while: such answers are
/// retried until a deadline; any other error panics at once.
async fn read_stream(js: &jetstream::Context, stream: &str) -> Vec<StoredMessage> {
    const PATIENCE: Duration = Duration::from_secs(30);
    let start = Instant::now();
    let retry = |what: String| {
        if start.elapsed() >= PATIENCE {
            panic!("{what} (still failing after {PATIENCE:?})");
        }
    };
    let mut s = loop {
        match js.get_stream(stream).await {
            Ok(s) => break s,
            Err(e) if is_unavailable(&e) => retry(format!("get stream {stream:?}: {e}")),
            Err(e) => panic!("get stream {stream:?}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let state = loop {
        match s.info().await {
            Ok(info) => break info.state.clone(),
            Err(e) if is_unavailable(&e) => retry(format!("info of stream {stream:?}: {e}")),
            Err(e) => panic!("info of stream {stream:?}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    let mut seq = state.first_sequence;
    while seq <= state.last_sequence {
        match s.get_raw_message(seq).await {
            Ok(m) => out.push(StoredMessage::from(m)),
            Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {}
            Err(e) if is_unavailable(&e) => {
                retry(format!("read seq {seq} of stream {stream:?}: {e}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => panic!("read seq {seq} of stream {stream:?}: {e}"),
        }
        seq += 1;
    }
    out
}

/// A JetStream answer that says "try again": the system or a stream's leader is not there yet
/// (503 / error code 10008), or the request timed out during an election.
fn is_unavailable(e: &dyn std::fmt::Display) -> bool {
    let text = e.to_string();
    text.contains("temporarily unavailable") || text.contains("code 503") || text.contains("timed out")
}

fn nats_server_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(bin);
    }
    find_in_path("nats-server").unwrap_or_else(|| panic!("nats-server not found: set NATS_SERVER or put it on PATH"))
}

/// A JetStream cluster of three `nats-server -js --cluster …` processes on loopback, each
/// with its own client port, cluster port, store and server name; routes to each other.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Start three nodes and wait until JetStream has a meta leader.
    pub fn start() -> NatsCluster {
        static CLUSTERS: AtomicU64 = AtomicU64::new(0);
        let cluster_name = format!(
            "walh-c{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        );
        let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes = cluster_ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = cluster_ports
            .iter()
            .map(|port| {
                NatsServer::start_with(&[
                    "--cluster",
                    &format!("nats://127.0.0.1:{port}"),
                    "--cluster_name",
                    &cluster_name,
                    "--routes",
                    &routes,
                ])
            })
            .collect();
        NatsCluster { nodes }
    }

    /// Every node's URL, comma-separated (what `publisher.address` takes).
    pub fn urls(&self) -> String {
        self.nodes.iter().map(NatsServer::url).collect::<Vec<_>>().join(",")
    }

    /// A running node.
    pub fn any(&self) -> &NatsServer {
        self.nodes.iter().find(|n| n.is_running()).expect("a running node")
    }

    /// Wait until JetStream answers API requests (a meta leader is elected).
    pub async fn wait_ready(&self, deadline: Duration) {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < deadline {
            // The raw API request: async-nats' typed account info does not parse 2.9's answer.
            match async_nats::connect(self.any().url()).await {
                Ok(client) => match client.request("$JS.API.INFO", bytes::Bytes::new()).await {
                    Ok(reply) => {
                        let text = String::from_utf8_lossy(&reply.payload).into_owned();
                        if text.contains("account_info_response") && !text.contains("\"error\"") {
                            return;
                        }
                        last = text;
                    }
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(super::wait::POLL_INTERVAL).await;
        }
        let logs: Vec<String> = self.nodes.iter().map(NatsServer::log).collect();
        panic!(
            "no JetStream meta leader after {deadline:?} ({last}); logs:\n{}",
            logs.join("\n---\n")
        );
    }

    /// The index of the node leading `stream`, once it has a leader with all replicas current.
    pub async fn stream_leader(&self, stream: &str, deadline: Duration) -> usize {
        super::wait_for(&format!("a leader for stream {stream}"), deadline, || async {
            let client = async_nats::connect(self.any().url()).await.ok()?;
            let mut s = jetstream::new(client).get_stream(stream).await.ok()?;
            let info = s.info().await.ok()?;
            let cluster = info.cluster.clone()?;
            let leader = cluster.leader?;
            if cluster.replicas.len() + 1 < info.config.num_replicas || cluster.replicas.iter().any(|r| !r.current) {
                return None;
            }
            self.nodes.iter().position(|n| n.name() == leader)
        })
        .await
    }
}
