//! Hot reload: watch the scripts directory, recompile off the hot path, swap atomically.
//!
//! The *directory* of the entry script is watched (recursively), not the file: editors that
//! save by writing a new file and renaming it over the old one, and Kubernetes ConfigMap
//! updates (which swap a `..data` symlink), replace inodes, and a watch on the old inode would
//! go quiet. Events are debounced with a trailing quiet period (five writes 30 ms apart were
//! measured to arrive as several batches), and a reload is skipped when the content of the
//! directory did not change. SIGHUP forces a reload.
//!
//! A new version is compiled and its test cases (`cases/*.json`, see [`super::cases`]) are run
//! on a blocking thread; only a version that passes replaces the running one, through a
//! `watch` channel the transform loop reads **between transactions**, so a transaction is
//! always routed by one version. A version that fails is logged with file and line and the
//! previous one keeps running; a deleted entry script keeps the last good version.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{Router, cases};
use crate::config::Config;

/// Quiet time after the last file event before a reload.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// A compiled script and its version number (1 = the one loaded at start).
pub struct Version {
    pub router: Router,
    pub number: u64,
}

impl Version {
    /// How events routed by this version are labelled in logs.
    pub fn script_version(&self) -> super::ScriptVersion {
        super::ScriptVersion {
            name: std::sync::Arc::from(self.router.name()),
            number: self.number,
        }
    }
}

/// Compile the configured script and run its cases; the reason on failure.
pub fn build(config: &Config) -> Result<Router, String> {
    let router = Router::from_config(config).map_err(|e| e.to_string())?;
    if let Some(dir) = scripts_dir(config) {
        let report = cases::run(config, &cases::case_files(&dir));
        if !report.failures.is_empty() {
            return Err(format!("script test cases failed: {}", report.failures.join("; ")));
        }
    }
    Ok(router)
}

/// The directory holding the entry script (and its modules and cases).
pub fn scripts_dir(config: &Config) -> Option<PathBuf> {
    config
        .script_path()
        .map(|p| p.parent().map(Path::to_path_buf).unwrap_or_default())
}

/// File watching started *before* the first version is compiled, so no change can slip in
/// between the compile and the watch.
pub struct Watch {
    _watcher: Option<notify::RecommendedWatcher>,
    events: mpsc::Receiver<()>,
    fingerprint: Option<u64>,
}

impl Watch {
    /// Start watching the scripts directory (when `scripts.watch` is on) and take its
    /// fingerprint; call before [`build`] for the first version.
    pub fn start(config: &Config) -> Watch {
        let (events_tx, events) = mpsc::channel::<()>(1);
        let watcher = match (scripts_dir(config), config.scripts.watch) {
            (Some(dir), true) => match watch_dir(&dir, events_tx) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::error!(dir = %dir.display(), error = %e, "cannot watch the scripts directory; reload with SIGHUP");
                    None
                }
            },
            _ => None,
        };
        Watch {
            _watcher: watcher,
            events,
            fingerprint: scripts_dir(config).map(|d| fingerprint(&d)),
        }
    }
}

/// Watch for changes (and SIGHUP) until `shutdown`, publishing each good new version.
pub async fn run(
    config: Arc<Config>,
    watch: Watch,
    versions: watch::Sender<Arc<Version>>,
    shutdown: CancellationToken,
) {
    let Watch {
        _watcher,
        mut events,
        fingerprint: mut last_print,
    } = watch;
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP");
            None
        }
    };
    let mut due: Option<tokio::time::Instant> = None;
    let mut forced = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(()) = events.recv() => due = Some(tokio::time::Instant::now() + DEBOUNCE),
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                tracing::info!("SIGHUP: reloading the script");
                forced = true;
                due = Some(tokio::time::Instant::now());
            }
            _ = async { match due { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => {
                due = None;
                let dir = scripts_dir(&config);
                let now = dir.as_deref().map(fingerprint);
                if !std::mem::take(&mut forced) && now == last_print {
                    continue;
                }
                last_print = now;
                if let Some(path) = config.script_path()
                    && !path.exists()
                {
                    tracing::warn!(script = %path.display(), "the entry script is gone; keeping the running version");
                    continue;
                }
                let cfg = config.clone();
                let built = tokio::task::spawn_blocking(move || build(&cfg)).await;
                let number = versions.borrow().number + 1;
                match built {
                    Ok(Ok(router)) => {
                        crate::metrics::script_reload(true);
                        tracing::info!(script = %router.name(), version = number, "script reloaded; it takes effect at the next transaction");
                        versions.send_replace(Arc::new(Version { router, number }));
                    }
                    Ok(Err(e)) => {
                        crate::metrics::script_reload(false);
                        tracing::error!(error = %e, "script reload rejected; the previous version keeps running");
                    }
                    Err(e) => {
                        crate::metrics::script_reload(false);
                        tracing::error!(error = %e, "script reload failed; the previous version keeps running");
                    }
                }
            }
        }
    }
}

fn watch_dir(dir: &Path, events: mpsc::Sender<()>) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reads (ours included) change nothing; other files in the directory (a log file,
        // say) are not the script's business.
        if let Ok(event) = event
            && !matches!(event.kind, notify::EventKind::Access(_))
            && event.paths.iter().any(|p| is_script_file(p) || is_configmap_link(p))
        {
            // A full channel already means "something changed".
            let _ = events.try_send(());
        }
    })?;
    watcher.watch(dir, RecursiveMode::Recursive)?;
    Ok(watcher)
}

/// Lua sources and case files: what a version is made of.
fn is_script_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "lua" || e == "json")
}

/// Kubernetes swaps a ConfigMap by renaming its `..data` symlink.
fn is_configmap_link(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".."))
}

/// A hash of the path and content of every script and case file under `dir` (following
/// symlinks, as a ConfigMap mount needs), to skip reloads that change nothing.
fn fingerprint(dir: &Path) -> u64 {
    let mut files = Vec::new();
    collect(dir, dir, 0, &mut files);
    files.sort();
    let mut hasher = DefaultHasher::new();
    for (path, content) in files {
        path.hash(&mut hasher);
        content.hash(&mut hasher);
    }
    hasher.finish()
}

fn collect(root: &Path, dir: &Path, depth: usize, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let name = entry.file_name();
        // Kubernetes' timestamped data directories are reached through `..data`; reading both
        // would hash each file twice.
        if name.to_string_lossy().starts_with("..") && name != "..data" {
            continue;
        }
        if path.is_dir() {
            if depth < 8 {
                collect(root, &path, depth + 1, out);
            }
        } else if is_script_file(&path)
            && let Ok(content) = std::fs::read(&path)
        {
            out.push((path.strip_prefix(root).unwrap_or(&path).to_path_buf(), content));
        }
    }
}
