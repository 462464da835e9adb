//! A throwaway PostgreSQL cluster per test: own temp dir, own port,
//! `wal_level=logical`, trust auth for user `postgres`.
//!
//! Binaries: `$PG_BIN` if set, else `pg_config --bindir`, else the highest
//! `/usr/lib/postgresql/*/bin`, else `initdb` on `$PATH`.
//! When the tests run as root (initdb refuses root), the server-side commands
//! (`initdb`, `pg_ctl`) run as the `postgres` OS user via `runuser` (or `su`).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{find_in_path, free_port, is_file, read_log};

/// How long (seconds) `pg_ctl` waits for a start or stop.
const PG_CTL_TIMEOUT_SECS: &str = "60";
/// How long `start_again` keeps retrying while its port is taken.
const REBIND_DEADLINE: Duration = Duration::from_secs(20);
/// How many fresh ports `start` tries when the bind fails.
const START_PORT_ATTEMPTS: usize = 5;

/// How server-side commands are run.
#[derive(Clone, Debug)]
enum RunAs {
    /// Not root: run directly.
    Me,
    /// Root: `runuser -u postgres -- cmd args…`.
    Runuser(PathBuf),
    /// Root without runuser: `su postgres -s /bin/sh -c 'cmd args…'`.
    Su(PathBuf),
}

pub struct PgCluster {
    bin: PathBuf,
    run_as: RunAs,
    port: u16,
    running: bool,
    // Dropped (deleted) after `Drop::drop` stopped the server.
    dir: tempfile::TempDir,
}

impl PgCluster {
    /// initdb + start a fresh cluster. Panics (with the server log) on failure.
    pub fn start() -> PgCluster {
        let mut pg = PgCluster::unstarted();
        let data = path_str(&pg.data_dir()).to_owned();
        pg.run_ok(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );

        let socket_dir = path_str(pg.socket_dir()).to_owned();
        pg.append_conf(&format!(
            "\n# --- integration-test harness ---\n\
             wal_level = logical\n\
             max_replication_slots = 20\n\
             max_wal_senders = 20\n\
             max_connections = 50\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{socket_dir}'\n\
             fsync = off\n\
             full_page_writes = off\n\
             wal_sender_timeout = 30s\n\
             log_min_messages = warning\n"
        ));
        pg.start_on_a_free_port();
        pg
    }

    /// A hot standby of `primary` (pg_basebackup, streaming replication), started: a server
    /// in recovery, as after a failover before promotion. [`promote`](Self::promote) ends it.
    pub fn standby_of(primary: &PgCluster) -> PgCluster {
        let mut pg = PgCluster::unstarted();
        let data = path_str(&pg.data_dir()).to_owned();
        let port = primary.port.to_string();
        pg.run_ok(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                &data,
                "-R",
                "-X",
                "stream",
                "--no-sync",
            ],
        );
        let socket_dir = path_str(pg.socket_dir()).to_owned();
        pg.append_conf(&format!(
            "\n# --- standby ---\nunix_socket_directories = '{socket_dir}'\nhot_standby = on\n"
        ));
        pg.start_on_a_free_port();
        pg
    }

    /// A standby of `primary` set up for PostgreSQL 17+ failover slots: `pg_basebackup -R -C -S
    /// <physical_slot>` with a `dbname` in `primary_conninfo`, `sync_replication_slots`,
    /// `hot_standby_feedback`; and the primary's `synchronized_standby_slots` set to the
    /// physical slot, so logical decoding never gets ahead of this standby.
    pub fn failover_standby_of(primary: &PgCluster, physical_slot: &str) -> PgCluster {
        let mut pg = PgCluster::unstarted();
        let data = path_str(&pg.data_dir()).to_owned();
        let conninfo = format!("host=127.0.0.1 port={} user=postgres dbname=postgres", primary.port);
        pg.run_ok(
            "pg_basebackup",
            &[
                "-d",
                &conninfo,
                "-D",
                &data,
                "-R",
                "-C",
                "-S",
                physical_slot,
                "-X",
                "stream",
                "--no-sync",
            ],
        );
        let socket_dir = path_str(pg.socket_dir()).to_owned();
        pg.append_conf(&format!(
            "\n# --- failover standby ---\nunix_socket_directories = '{socket_dir}'\nhot_standby = on\nhot_standby_feedback = on\nsync_replication_slots = on\n"
        ));
        pg.start_on_a_free_port();
        primary.psql(&format!(
            "ALTER SYSTEM SET synchronized_standby_slots = '{physical_slot}'"
        ));
        primary.psql("SELECT pg_reload_conf()");
        pg
    }

    /// `server_version_num` (e.g. 180006).
    pub fn version_num(&self) -> u32 {
        let text = self.psql("SHOW server_version_num");
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("server_version_num {text:?}"))
    }

    /// End recovery (`pg_ctl promote -w`): the standby becomes a primary.
    pub fn promote(&self) {
        let data = path_str(&self.data_dir()).to_owned();
        self.run_ok("pg_ctl", &["-D", &data, "-w", "-t", PG_CTL_TIMEOUT_SECS, "promote"]);
    }

    /// A temp dir the server's OS user owns, nothing in it yet.
    fn unstarted() -> PgCluster {
        let bin = pg_bindir().to_path_buf();
        let run_as = run_as();
        // As root the postgres user must be able to reach the dir: use /tmp,
        // not a possibly private $TMPDIR.
        let base = match run_as {
            RunAs::Me => std::env::temp_dir(),
            _ => PathBuf::from("/tmp"),
        };
        let dir = tempfile::Builder::new()
            .prefix("walh-pg-")
            .tempdir_in(&base)
            .unwrap_or_else(|e| panic!("cannot create a temp dir in {}: {e}", base.display()));
        if !matches!(run_as, RunAs::Me) {
            let out = Command::new("chown")
                .arg("-R")
                .arg("postgres:")
                .arg(dir.path())
                .output()
                .expect("run chown");
            assert!(
                out.status.success(),
                "chown -R postgres: {} failed: {}",
                dir.path().display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        PgCluster {
            bin,
            run_as,
            port: 0,
            running: false,
            dir,
        }
    }

    fn start_on_a_free_port(&mut self) {
        for attempt in 1..=START_PORT_ATTEMPTS {
            self.port = free_port();
            self.append_conf(&format!("port = {}\n", self.port));
            let log_mark = self.log_len();
            match self.try_pg_ctl_start() {
                Ok(()) => {
                    self.running = true;
                    return;
                }
                Err(msg) if attempt < START_PORT_ATTEMPTS && self.port_taken_since(log_mark) => {
                    eprintln!("PgCluster: port {} taken, retrying: {msg}", self.port);
                }
                Err(msg) => self.fail(&msg),
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// Directory holding the server's unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// The server log so far (for assertions or panic messages).
    pub fn log(&self) -> String {
        read_log(&self.log_path())
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Key/value connection string (libpq / `tokio_postgres::connect`), e.g.
    /// `host=127.0.0.1 port=5433 user=postgres dbname=postgres`; `db` is
    /// quoted when needed.
    pub fn conn_string(&self, db: &str) -> String {
        let plain = !db.is_empty() && db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let db = if plain {
            db.to_owned()
        } else {
            format!("'{}'", db.replace('\\', "\\\\").replace('\'', "\\'"))
        };
        format!("host=127.0.0.1 port={} user=postgres dbname={db}", self.port)
    }

    /// The same as a URL: `postgres://postgres@127.0.0.1:<port>/<db>` (`db`
    /// is percent-encoded where needed).
    pub fn conn_url(&self, db: &str) -> String {
        let mut enc = String::new();
        for b in db.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                enc.push(char::from(b));
            } else {
                enc.push_str(&format!("%{b:02X}"));
            }
        }
        format!("postgres://postgres@127.0.0.1:{}/{enc}", self.port)
    }

    /// A client on database `postgres` (connection task spawned on the
    /// current tokio runtime).
    pub async fn client(&self) -> tokio_postgres::Client {
        self.client_db("postgres").await
    }

    /// A client on database `db`.
    pub async fn client_db(&self, db: &str) -> tokio_postgres::Client {
        let conn = self.conn_string(db);
        let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to {conn}: {e}"));
        tokio::spawn(async move {
            // Errors here surface as errors on the client's queries.
            let _ = connection.await;
        });
        client
    }

    /// `CREATE DATABASE "<name>"` (sync, via psql).
    pub fn create_database(&self, name: &str) {
        self.psql(&format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\"")));
    }

    /// Runs `sql` with psql on database `postgres`; returns stdout with
    /// trailing whitespace trimmed (unaligned, tuples only: one row per line,
    /// columns separated by `|`). Panics with psql's stderr on failure.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_db("postgres", sql)
    }

    /// [`psql`](Self::psql) on database `db`.
    pub fn psql_db(&self, db: &str, sql: &str) -> String {
        let port = self.port.to_string();
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args(["-p", &port, "-U", "postgres", "-d", db, "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGOPTIONS")
            .env_remove("PGSERVICE")
            .env_remove("PGPASSWORD")
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        if !out.status.success() {
            panic!(
                "psql -d {db} -c {sql:?} failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    }

    /// Appends `text` to `postgresql.conf` (takes effect on the next start or reload).
    pub fn append_config(&self, text: &str) {
        self.append_conf(text);
    }

    /// Writes `contents` as `name` in the data directory, owned by the server's OS user and
    /// readable by it alone (PostgreSQL insists on that for private keys).
    pub fn write_data_file(&self, name: &str, contents: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.data_dir().join(name);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        if !matches!(self.run_as, RunAs::Me) {
            let out = Command::new("chown")
                .arg("postgres:")
                .arg(&path)
                .output()
                .expect("run chown");
            assert!(
                out.status.success(),
                "chown {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// TLS on: `server.crt`/`server.key` as the server's certificate, `ca.crt` to verify client
    /// certificates. Takes effect on the next (re)start.
    pub fn configure_ssl(&self, cert_pem: &str, key_pem: &str, ca_pem: &str) {
        self.write_data_file("server.crt", cert_pem);
        self.write_data_file("server.key", key_pem);
        self.write_data_file("ca.crt", ca_pem);
        self.append_conf(
            "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'ca.crt'\n",
        );
    }

    /// Replaces `pg_hba.conf` (takes effect on the next start or reload). Keep a `trust` line
    /// for `postgres` on 127.0.0.1: the harness's own psql connects that way.
    pub fn set_hba(&self, text: &str) {
        self.write_data_file("pg_hba.conf", text);
    }

    /// Clean shutdown (`pg_ctl stop -m fast`).
    pub fn stop(&mut self) {
        self.pg_ctl_stop("fast");
    }

    /// Crash-like shutdown (`pg_ctl stop -m immediate`): no checkpoint, WAL
    /// replay on next start.
    pub fn stop_immediate(&mut self) {
        self.pg_ctl_stop("immediate");
    }

    /// Starts the stopped cluster again: same data dir, same port. Retries for
    /// up to 20 s while the port is briefly taken.
    pub fn start_again(&mut self) {
        assert!(!self.running, "PgCluster::start_again: server is already running");
        let start = Instant::now();
        loop {
            let log_mark = self.log_len();
            match self.try_pg_ctl_start() {
                Ok(()) => {
                    self.running = true;
                    return;
                }
                Err(_) if start.elapsed() < REBIND_DEADLINE && self.port_taken_since(log_mark) => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(msg) => self.fail(&msg),
            }
        }
    }

    /// Fast restart: `stop -m fast` then [`start_again`](Self::start_again)
    /// (equivalent to `pg_ctl restart -m fast -w`, plus the port retry).
    pub fn restart_fast(&mut self) {
        self.stop();
        self.start_again();
    }

    // ---- internals ----

    fn pg_ctl_stop(&mut self, mode: &str) {
        assert!(self.running, "PgCluster: stop on a server that is not running");
        let data = path_str(&self.data_dir()).to_owned();
        self.run_ok(
            "pg_ctl",
            &["-D", &data, "-m", mode, "-w", "-t", PG_CTL_TIMEOUT_SECS, "stop"],
        );
        self.running = false;
    }

    fn try_pg_ctl_start(&self) -> Result<(), String> {
        let data = path_str(&self.data_dir()).to_owned();
        let log = path_str(&self.log_path()).to_owned();
        let out = self.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-w", "-t", PG_CTL_TIMEOUT_SECS, "start"],
        );
        if out.status.success() {
            Ok(())
        } else {
            Err(describe("pg_ctl start", &out))
        }
    }

    fn log_len(&self) -> u64 {
        std::fs::metadata(self.log_path()).map(|m| m.len()).unwrap_or(0)
    }

    /// Did the server log, after byte `mark`, that it could not bind its port?
    fn port_taken_since(&self, mark: u64) -> bool {
        let log = std::fs::read(self.log_path()).unwrap_or_default();
        let new = usize::try_from(mark)
            .ok()
            .and_then(|m| log.get(m..))
            .unwrap_or_default();
        let new = String::from_utf8_lossy(new);
        new.contains("Address already in use") || new.contains("could not bind")
    }

    fn append_conf(&self, text: &str) {
        let path = self.data_dir().join("postgresql.conf");
        let mut f = OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        f.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    fn fail(&self, msg: &str) -> ! {
        panic!(
            "PgCluster ({}, port {}): {msg}\n--- server log {} ---\n{}",
            self.dir.path().display(),
            self.port,
            self.log_path().display(),
            self.log()
        )
    }

    /// A PostgreSQL server-side program, run as the right OS user.
    fn command(&self, prog: &str, args: &[&str]) -> Command {
        let exe = self.bin.join(prog);
        let mut cmd = match &self.run_as {
            RunAs::Me => {
                let mut c = Command::new(&exe);
                c.args(args);
                c
            }
            RunAs::Runuser(runuser) => {
                let mut c = Command::new(runuser);
                c.args(["-u", "postgres", "--"]).arg(&exe).args(args);
                c
            }
            RunAs::Su(su) => {
                let mut line = shell_quote(path_str(&exe));
                for a in args {
                    line.push(' ');
                    line.push_str(&shell_quote(a));
                }
                let mut c = Command::new(su);
                c.args(["postgres", "-s", "/bin/sh", "-c", &line]);
                c
            }
        };
        // Run from a dir the postgres user can enter (PG tools dislike an
        // unreadable cwd), English messages, no stray libpq settings.
        cmd.current_dir(self.dir.path())
            .env("LC_ALL", "C")
            .env("LANG", "C")
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST")
            .env_remove("PGOPTIONS")
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, prog: &str, args: &[&str]) -> Output {
        self.command(prog, args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {prog} ({:?}): {e}", self.run_as))
    }

    fn run_ok(&self, prog: &str, args: &[&str]) -> Output {
        let out = self.run(prog, args);
        if !out.status.success() {
            self.fail(&describe(&format!("{prog} {}", args.join(" ")), &out));
        }
        out
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        let data = path_str(&self.data_dir()).to_owned();
        let stopped = self
            .command("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "-t", "20", "stop"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !stopped {
            // Last resort: kill the postmaster named in postmaster.pid.
            let pid_file = self.data_dir().join("postmaster.pid");
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.lines().next().map(|l| l.trim().to_owned()))
                .filter(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
            {
                let _ = Command::new("kill").args(["-9", &pid]).status();
            }
        }
        // `self.dir` (TempDir) is removed when the fields drop.
    }
}

fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or_else(|| panic!("non-UTF-8 path {}", p.display()))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The directory with initdb/pg_ctl/psql (cached per process).
pub fn pg_bindir() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let has_initdb = |d: &Path| is_file(&d.join("initdb"));
        if let Some(dir) = std::env::var_os("PG_BIN") {
            let dir = PathBuf::from(dir);
            assert!(has_initdb(&dir), "PG_BIN={} has no initdb", dir.display());
            return dir;
        }
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
            && out.status.success()
        {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if has_initdb(&dir) {
                return dir;
            }
        }
        let mut versioned: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let version: Vec<u32> = name.split('.').map(|p| p.parse().ok()).collect::<Option<_>>()?;
                let bin = e.path().join("bin");
                has_initdb(&bin).then_some((version, bin))
            })
            .collect();
        versioned.sort();
        if let Some((_, bin)) = versioned.pop() {
            return bin;
        }
        if let Some(initdb) = find_in_path("initdb")
            && let Some(dir) = initdb.parent()
        {
            return dir.to_path_buf();
        }
        panic!(
            "no PostgreSQL server binaries found: set PG_BIN, or install them \
             (pg_config --bindir, /usr/lib/postgresql/*/bin, or initdb on PATH)"
        )
    })
}

fn run_as() -> RunAs {
    if !is_root() {
        return RunAs::Me;
    }
    if let Some(runuser) = find_in_path("runuser") {
        return RunAs::Runuser(runuser);
    }
    if let Some(su) = find_in_path("su") {
        return RunAs::Su(su);
    }
    panic!("running as root, but neither runuser nor su is available to run initdb as postgres")
}

/// Effective uid 0? From /proc/self/status (`Uid: real effective saved fs`),
/// falling back to `id -u`.
fn is_root() -> bool {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(line) = status.lines().find(|l| l.starts_with("Uid:"))
        && let Some(euid) = line.split_whitespace().nth(2)
    {
        return euid == "0";
    }
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
