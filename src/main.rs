//! The `wal-listener` command: `run` (the default), `check`, `route` and `health`.
//!
//! Configuration and logging are set up before the runtime starts; any failure prints one
//! readable line and exits non-zero (1: the service failed, 2: bad configuration or usage).

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use wal_listener::config::Config;

// glibc's malloc was a quarter of the CPU time in profiles of a backlog drain (many small,
// short-lived allocations across threads); mimalloc handles that pattern far better.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use wal_listener::event::{self, ChangeEvent};
use wal_listener::publish;
use wal_listener::script::Router;
use wal_listener::{app, check, health, http, telemetry};

#[derive(Parser)]
#[command(
    name = "wal-listener",
    version,
    about = "PostgreSQL changes → NATS JetStream, routed by Lua scripts"
)]
struct Cli {
    /// Configuration file.
    #[arg(short, long, global = true, default_value = "config.yml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Run,
    /// Validate the configuration and compile the routing script.
    Check {
        /// Also reach PostgreSQL and NATS.
        #[arg(long)]
        connect: bool,
        /// Print the file as an equivalent v2 config on standard output (Go v1 keys moved,
        /// ignored keys left out, secrets not printed); the check's lines go to standard error.
        #[arg(long)]
        print_config: bool,
    },
    /// Run the routing script on events (a JSON object or JSON lines) and print the messages.
    Route {
        /// File with events, or - for standard input.
        #[arg(long)]
        event: String,
    },
    /// Backfill existing rows as READ events: ask the service streaming from this config's slot
    /// to read the tables (through the WAL), or show or cancel backfills.
    Backfill(wal_listener::backfill::cli::Args),
    /// Ask the running service's /healthz (on listener.serverHost/serverPort of this config);
    /// exit 0 when it answers 200. The Docker image's HEALTHCHECK.
    Health,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (config, warnings) = match Config::load(&cli.config) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("wal-listener: {e}");
            // For a HEALTHCHECK, 1 is "unhealthy" and 2 is reserved.
            let code = if matches!(cli.command, Some(Command::Health)) {
                1
            } else {
                2
            };
            return ExitCode::from(code);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(config, &warnings),
        Command::Check { connect, print_config } => {
            let code = check(&config, &warnings, connect, print_config);
            if print_config {
                match std::fs::read_to_string(&cli.config)
                    .map_err(|e| e.to_string())
                    .and_then(|text| Config::v2_yaml(&text).map_err(|e| e.to_string()))
                {
                    Ok(yaml) => print!("{yaml}"),
                    Err(e) => {
                        eprintln!("wal-listener: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            code
        }
        Command::Route { event } => route(&config, &event),
        Command::Health => health_probe(&config),
        Command::Backfill(args) => backfill(&config, args),
    }
}

/// The transform loop (decode → event → script) runs on the main thread, inside `block_on`;
/// every I/O task — the replication connection, the publisher, the NATS connection, HTTP — on
/// one runtime worker. With two workers the drain benchmark was 5–10% slower: tasks and the
/// memory they allocate moved between threads, and each hop woke another thread.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
}

fn run(config: Config, warnings: &[String]) -> ExitCode {
    telemetry::init(&config.logger);
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    app::log_start(&config);
    let rt = match started_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = rt.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));
        // Served until the process exits, so /ready says 503 while SIGTERM drains.
        http::start(&config, CancellationToken::new())
            .await
            .map_err(|e| wal_listener::error::Error::new(wal_listener::error::Kind::Http, e))?;
        app::run(config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, no backtrace: what failed and what to do about it.
            eprintln!("wal-listener: {e}");
            ExitCode::FAILURE
        }
    }
}

/// [`runtime`], or the exit code after saying why there is none.
fn started_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    runtime().map_err(|e| {
        eprintln!("wal-listener: cannot start the async runtime: {e}");
        ExitCode::FAILURE
    })
}

/// `backfill`: request, watch, list or cancel backfills.
fn backfill(config: &Config, args: wal_listener::backfill::cli::Args) -> ExitCode {
    let rt = match started_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(wal_listener::backfill::cli::run(config, args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wal-listener: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM and SIGINT cancel `shutdown`.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop the process with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    health::stopping();
    shutdown.cancel();
}

/// `check`: one line per finding on standard output, or on standard error when standard
/// output carries the printed config.
fn check(config: &Config, warnings: &[String], connect: bool, print_config: bool) -> ExitCode {
    // Log lines of scripts run by their test cases go to stderr.
    telemetry::init(&config.logger);
    let say = |line: String| {
        if print_config {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    for warning in warnings {
        say(format!("warning: {warning}"));
    }
    let mut ok = true;
    match Router::from_config(config) {
        Ok(router) => say(format!(
            "ok: script {} compiles and defines route(event)",
            router.name()
        )),
        Err(e) => {
            say(format!("error: scripts.path: {e}"));
            ok = false;
        }
    }
    if let Some(dir) = wal_listener::script::reload::scripts_dir(config) {
        let files = wal_listener::script::cases::case_files(&dir);
        if !files.is_empty() {
            let report = wal_listener::script::cases::run(config, &files);
            for failure in &report.failures {
                say(format!("error: script test case: {failure}"));
            }
            if report.failures.is_empty() {
                say(format!(
                    "ok: {} script test cases passed ({})",
                    report.passed,
                    dir.join("cases").display()
                ));
            } else {
                ok = false;
            }
        }
    }
    if connect {
        match runtime() {
            Ok(rt) => ok &= rt.block_on(check_connections(config, &say)),
            Err(e) => {
                say(format!("error: cannot start the async runtime: {e}"));
                ok = false;
            }
        }
    }
    if ok {
        say("ok: configuration is valid".into());
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn check_connections(config: &Config, say: &impl Fn(String)) -> bool {
    let report = check::connections(config).await;
    for line in report.lines() {
        say(line.clone());
    }
    report.passed()
}

/// `health`: GET /healthz on this config's HTTP endpoint, as a container HEALTHCHECK does.
/// Plain blocking I/O with short timeouts: no runtime, nothing else started.
fn health_probe(config: &Config) -> ExitCode {
    use std::io::Write;
    use std::net::{TcpStream, ToSocketAddrs};
    use std::time::Duration;

    let port = config.listener.server_port;
    if port == 0 {
        println!("health: listener.serverPort is 0, so there is no HTTP endpoint to ask");
        return ExitCode::SUCCESS;
    }
    // Listening on every interface: ask over loopback.
    let host = match config.listener.server_host.trim() {
        "" | "0.0.0.0" | "::" | "[::]" => "127.0.0.1",
        host => host.trim_start_matches('[').trim_end_matches(']'),
    };
    let timeout = Duration::from_secs(3);
    let answer = (|| -> Result<String, String> {
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| e.to_string())?
            .next()
            .ok_or("no address")?;
        let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        stream
            .write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut text = String::new();
        stream
            .take(64 * 1024)
            .read_to_string(&mut text)
            .map_err(|e| e.to_string())?;
        Ok(text)
    })();
    let url = format!("http://{host}:{port}/healthz (listener.serverHost/serverPort)");
    match answer {
        Ok(text) if text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200") => {
            println!("health: {url}: 200");
            ExitCode::SUCCESS
        }
        Ok(text) => {
            let status = text.lines().next().unwrap_or_default();
            let body = text.split_once("\r\n\r\n").map(|(_, b)| b.trim()).unwrap_or_default();
            println!("health: {url}: {status} {body}");
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("health: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn route(config: &Config, source: &str) -> ExitCode {
    // A script's log.* and print lines go to stderr, the messages to stdout.
    telemetry::init(&config.logger);
    let router = match Router::from_config(config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wal-listener: {e}");
            return ExitCode::from(2);
        }
    };
    let events = match read_events(source) {
        Ok(events) => events,
        Err(e) => {
            eprintln!("wal-listener: {e}");
            return ExitCode::from(2);
        }
    };
    let mut failed = false;
    for (n, event) in events.into_iter().enumerate() {
        let event: Arc<ChangeEvent> = Arc::new(event);
        match router.route(&event) {
            Ok(messages) => {
                let mut default_payload = None;
                for (index, routed) in messages.into_iter().enumerate() {
                    let msg = publish::envelope(&event, routed, index, &mut default_payload);
                    println!("{}", msg.to_json());
                }
            }
            Err(e) => {
                eprintln!("event {}: script error: {e}", n + 1);
                failed = true;
            }
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// One JSON object, a JSON array of objects, or JSON lines.
fn read_events(source: &str) -> Result<Vec<ChangeEvent>, String> {
    let mut text = String::new();
    if source == "-" {
        std::io::stdin()
            .lock()
            .read_to_string(&mut text)
            .map_err(|e| format!("reading standard input: {e}"))?;
    } else {
        let path = Path::new(source);
        let file = std::fs::File::open(path).map_err(|e| format!("cannot read {source}: {e}"))?;
        for line in std::io::BufReader::new(file).lines() {
            text.push_str(&line.map_err(|e| format!("cannot read {source}: {e}"))?);
            text.push('\n');
        }
    }
    let values: Vec<serde_json::Value> = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Array(items)) => items,
        Ok(single) => vec![single],
        Err(_) => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: not JSON: {e}", i + 1)))
            .collect::<Result<_, _>>()?,
    };
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            event::from_json(v, u32::try_from(i).unwrap_or(u32::MAX)).map_err(|e| format!("event {}: {e}", i + 1))
        })
        .collect()
}
