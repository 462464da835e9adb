//! Integration-test harness: real, throwaway PostgreSQL, NATS and RabbitMQ servers.
//!
//! Include it from an integration test with `mod support;`. Every test starts
//! its own servers (own temp dir, own free TCP port), so tests run in
//! parallel; everything is stopped and deleted on `Drop`, also when the test
//! panics.
//!
//! Not every test uses every helper, hence the `allow`s.
#![allow(dead_code, unused_imports)]

pub mod certs;
pub mod http;
pub mod nats;
pub mod pg;
pub mod rabbit;
pub mod service;
pub mod wait;

pub use nats::{NatsCluster, NatsServer, StoredMessage};
pub use pg::PgCluster;
pub use rabbit::{RabbitMessage, RabbitServer};
pub use wait::{wait_for, wait_for_sync, wait_until, wait_until_sync};

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Run blocking harness calls (starting, stopping servers) from a multi-threaded tokio test
/// without stalling the runtime.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read
/// the port, drop the listener). Never hands out the same port twice within
/// one test process, so parallel tests in one binary cannot collide; the
/// servers additionally retry with a new port if the bind fails anyway.
pub fn free_port() -> u16 {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(|| Mutex::new(HashSet::new()));
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port");
        let port = listener.local_addr().expect("local_addr of a bound listener").port();
        drop(listener);
        let mut set = handed_out.lock().unwrap_or_else(|e| e.into_inner());
        if set.insert(port) {
            return port;
        }
    }
}

/// `name` as found in `$PATH` (plus `/usr/sbin` and `/sbin`, which are often
/// missing from a non-login root PATH), if it is there.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| is_file(p))
}

fn is_file(p: &Path) -> bool {
    p.metadata().map(|m| m.is_file()).unwrap_or(false)
}

/// Text of a (log) file, or a note that it could not be read; for panic messages.
pub fn read_log(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) if s.is_empty() => format!("<{} is empty>", path.display()),
        Ok(s) => s,
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}
