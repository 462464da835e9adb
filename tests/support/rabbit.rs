//! A throwaway RabbitMQ node per test: its own node name, AMQP and distribution ports, data,
//! log and home directories (so its own Erlang cookie, shared with `rabbitmqctl` through
//! `HOME`), no plugins, and none of `/etc/rabbitmq`. Never the machine's own RabbitMQ on 5672.
//!
//! Binary: `$RABBITMQ_SERVER` if set, else `/usr/lib/rabbitmq/bin/rabbitmq-server` (Debian's
//! package; `/usr/sbin/rabbitmq-server` is a wrapper that switches to the `rabbitmq` user),
//! else `rabbitmq-server` on `$PATH`. `rabbitmqctl` is looked up next to it. Starting takes
//! several seconds (Erlang boot): a node is started once per test.
//!
//! The node runs in its own process group, so a hard stop (`kill -9`) takes the whole Erlang
//! VM down like a crash; a graceful stop is `rabbitmqctl stop`. Dropping the value kills the
//! node and deletes its directories.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};

use super::{find_in_path, free_port, read_log};

/// How long a start waits for the node to boot.
const READY_DEADLINE: Duration = Duration::from_secs(120);

pub struct RabbitServer {
    bin: PathBuf,
    ctl: PathBuf,
    node: String,
    port: u16,
    dist_port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

/// One message as a consumer receives it.
#[derive(Debug, Clone)]
pub struct RabbitMessage {
    pub routing_key: String,
    pub message_id: Option<String>,
    pub content_type: Option<String>,
    pub delivery_mode: Option<u8>,
    pub timestamp: Option<u64>,
    /// Header names and values (long strings), sorted by name.
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
    pub redelivered: bool,
}

impl RabbitMessage {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "payload is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.payload)
            )
        })
    }
}

impl RabbitServer {
    /// Start a node and wait until it accepts clients. Panics with its log on failure.
    pub fn start() -> RabbitServer {
        RabbitServer::start_with_conf("")
    }

    /// A node that also listens for `amqps://` on [`RabbitServer::tls_port`], with the given
    /// PEM files (server certificate and key, CA), no client certificate required.
    pub fn start_with_tls(cert: &Path, key: &Path, ca: &Path) -> (RabbitServer, u16) {
        let tls_port = free_port();
        let conf = format!(
            "listeners.ssl.default = {tls_port}\nssl_options.cacertfile = {}\nssl_options.certfile = {}\nssl_options.keyfile = {}\nssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n",
            ca.display(),
            cert.display(),
            key.display()
        );
        (RabbitServer::start_with_conf(&conf), tls_port)
    }

    /// [`RabbitServer::start`] with extra `rabbitmq.conf` lines.
    fn start_with_conf(extra: &str) -> RabbitServer {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let bin = rabbitmq_server_bin();
        let ctl = bin.with_file_name("rabbitmqctl");
        let dir = tempfile::Builder::new()
            .prefix("walh-rabbit-")
            .tempdir()
            .expect("create a temp dir for rabbitmq-server");
        for sub in ["home", "mnesia", "log", "plugins-expand"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("create rabbitmq dirs");
        }
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").expect("write enabled_plugins");
        std::fs::write(dir.path().join("env.conf"), "").expect("write env.conf");
        std::fs::write(
            dir.path().join("rabbitmq.conf"),
            format!("loopback_users = none\n{extra}"),
        )
        .expect("write rabbitmq.conf");
        let node = format!(
            "walh-{}-{}@localhost",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut server = RabbitServer {
            bin,
            ctl,
            node,
            port: free_port(),
            dist_port: free_port(),
            child: None,
            dir,
        };
        server.spawn();
        server
    }

    fn env(&self, cmd: &mut Command) {
        let d = self.dir.path();
        cmd.env("HOME", d.join("home"))
            .env("RABBITMQ_CONF_ENV_FILE", d.join("env.conf"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", d.join("advanced.config"))
            .env("RABBITMQ_PLUGINS_EXPAND_DIR", d.join("plugins-expand"))
            .env_remove("ERL_FLAGS")
            .env_remove("RABBITMQ_ERLANG_COOKIE");
    }

    fn spawn(&mut self) {
        let stdout = std::fs::File::create(self.dir.path().join("stdout.log")).expect("create stdout.log");
        let stderr = stdout.try_clone().expect("clone log handle");
        let mut cmd = Command::new(&self.bin);
        self.env(&mut cmd);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.bin.display()));
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("rabbitmq-server exited during start ({status}); log:\n{}", self.log());
            }
            if self.ctl_ok(&["await_startup", "--timeout", "10"]) {
                return;
            }
            if started.elapsed() > READY_DEADLINE {
                panic!(
                    "rabbitmq-server did not start within {READY_DEADLINE:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn ctl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.ctl);
        self.env(&mut cmd);
        cmd.args(["-n", &self.node]).args(args);
        cmd
    }

    fn ctl_ok(&self, args: &[&str]) -> bool {
        self.ctl_command(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Run `rabbitmqctl` against this node; panics when it fails. Its output.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = self.ctl_command(args).output().expect("run rabbitmqctl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "rabbitmqctl {args:?} failed: {text}");
        text
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f` (the default virtual host).
    pub fn url(&self) -> String {
        self.url_with("guest", "guest", "%2f")
    }

    pub fn url_with(&self, user: &str, password: &str, vhost: &str) -> String {
        format!("amqp://{user}:{password}@127.0.0.1:{}/{vhost}", self.port)
    }

    pub fn log(&self) -> String {
        let log_dir = self.dir.path().join("log");
        let node_log = log_dir.join(format!("{}.log", self.node));
        format!(
            "{}\n--- stdout ---\n{}",
            read_log(&node_log),
            read_log(&self.dir.path().join("stdout.log"))
        )
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Graceful stop (`rabbitmqctl stop`): connections are closed by the broker.
    pub fn stop(&mut self) {
        self.ctl(&["stop"]);
        if let Some(mut child) = self.child.take() {
            let until = Instant::now() + Duration::from_secs(60);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(50));
            }
            self.kill_group(&mut child);
        }
    }

    /// Hard stop: SIGKILL to the node's process group (a crash; sockets just vanish).
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("RabbitServer::kill: not running");
        self.kill_group(&mut child);
    }

    fn kill_group(&self, child: &mut Child) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = child.kill();
        let _ = child.wait();
        // epmd may still list the node for a moment; the same name must be free to start again.
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until && self.ctl_ok(&["ping"]) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Start the stopped node again: same name, ports and data (durable exchanges, queues
    /// and persistent messages survive).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "RabbitServer::start_again: still running");
        self.spawn();
    }

    /// A test client.
    pub async fn client(&self) -> Connection {
        self.client_at(&self.url()).await
    }

    pub async fn client_at(&self, url: &str) -> Connection {
        Connection::connect(url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("connect to RabbitMQ at {url}: {e}"))
    }

    /// Declare a durable exchange `exchange` of `kind` and a durable queue `queue` bound to it
    /// with `binding` (a topic pattern such as `cdc.#`).
    pub async fn bind_queue(&self, exchange: &str, kind: ExchangeKind, queue: &str, binding: &str) {
        let conn = self.client().await;
        let ch = conn.create_channel().await.expect("channel");
        ch.exchange_declare(
            exchange.into(),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare exchange");
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare queue");
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            binding.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind queue");
        let _ = conn.close(200, "done".into()).await;
    }

    /// Messages in `queue` right now (`rabbitmqctl list_queues`).
    pub fn queue_depth(&self, queue: &str) -> Option<u64> {
        let out = self
            .ctl_command(&["list_queues", "-q", "--no-table-headers", "name", "messages"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).lines().find_map(|line| {
            let mut parts = line.split_whitespace();
            (parts.next()? == queue).then(|| parts.next()?.parse().ok())?
        })
    }

    /// Consume (and ack) messages from `queue` until `n` have arrived, or panic at `deadline`.
    pub async fn take(&self, queue: &str, n: usize, deadline: Duration) -> Vec<RabbitMessage> {
        let conn = self.client().await;
        let ch = conn.create_channel().await.expect("channel");
        let mut consumer = ch
            .basic_consume(
                queue.into(),
                "walh-test".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let mut out = Vec::with_capacity(n);
        let until = Instant::now() + deadline;
        while out.len() < n {
            let left = until.saturating_duration_since(Instant::now());
            let delivery = match tokio::time::timeout(left, consumer.next()).await {
                Ok(Some(Ok(delivery))) => delivery,
                Ok(Some(Err(e))) => panic!("consuming {queue}: {e}"),
                Ok(None) => panic!("consumer of {queue} ended"),
                Err(_) => panic!(
                    "timed out after {deadline:?} waiting for {n} messages in {queue}; got {}",
                    out.len()
                ),
            };
            delivery.ack(BasicAckOptions::default()).await.expect("ack");
            out.push(message(&delivery));
        }
        let _ = conn.close(200, "done".into()).await;
        out
    }
}

fn message(d: &lapin::message::Delivery) -> RabbitMessage {
    let p = &d.properties;
    let mut headers: Vec<(String, String)> = p
        .headers()
        .as_ref()
        .map(|t| {
            t.inner()
                .iter()
                .map(|(k, v)| {
                    let value = match v {
                        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                        AMQPValue::ShortString(s) => s.as_str().to_string(),
                        other => format!("{other:?}"),
                    };
                    (k.as_str().to_string(), value)
                })
                .collect()
        })
        .unwrap_or_default();
    headers.sort();
    RabbitMessage {
        routing_key: d.routing_key.as_str().to_string(),
        message_id: p.message_id().as_ref().map(|s| s.as_str().to_string()),
        content_type: p.content_type().as_ref().map(|s| s.as_str().to_string()),
        delivery_mode: *p.delivery_mode(),
        timestamp: *p.timestamp(),
        headers,
        payload: d.data.clone(),
        redelivered: d.redelivered,
    }
}

impl Drop for RabbitServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn rabbitmq_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("RABBITMQ_SERVER") {
        return PathBuf::from(p);
    }
    let debian = Path::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
    if debian.is_file() {
        return debian.to_path_buf();
    }
    find_in_path("rabbitmq-server").unwrap_or_else(|| {
        panic!("rabbitmq-server not found: apt-get install rabbitmq-server (.ci/run does), or set RABBITMQ_SERVER")
    })
}
