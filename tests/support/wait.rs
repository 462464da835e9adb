//! Poll a condition until it holds or a deadline passes (no sleep-then-assert).

use std::future::Future;
use std::time::{Duration, Instant};

/// How often conditions are re-checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Polls `f` every 50 ms until it returns `true`; panics mentioning `what`
/// when `deadline` (counted from the call) passes first. A single call of `f`
/// that hangs past the deadline also panics instead of hanging the test.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(what, deadline, move || {
        let fut = f();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// Like [`wait_until`], but the condition yields a value: polls `f` every
/// 50 ms until it returns `Some(v)` and returns `v`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    let mut attempts: u64 = 0;
    loop {
        attempts += 1;
        let remaining = deadline.saturating_sub(start.elapsed()).max(Duration::from_millis(100));
        match tokio::time::timeout(remaining, f()).await {
            Ok(Some(v)) => return v,
            Ok(None) => {}
            Err(_) => panic!(
                "timed out after {:?} waiting for {what} (a check hung; {attempts} attempts)",
                start.elapsed()
            ),
        }
        if start.elapsed() >= deadline {
            panic!("timed out after {deadline:?} waiting for {what} ({attempts} attempts)");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Synchronous twin of [`wait_until`] (blocks the thread between checks).
pub fn wait_until_sync<F>(what: &str, deadline: Duration, mut f: F)
where
    F: FnMut() -> bool,
{
    wait_for_sync(what, deadline, move || f().then_some(()))
}

/// Synchronous twin of [`wait_for`].
pub fn wait_for_sync<T, F>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Option<T>,
{
    let start = Instant::now();
    let mut attempts: u64 = 0;
    loop {
        attempts += 1;
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() >= deadline {
            panic!("timed out after {deadline:?} waiting for {what} ({attempts} attempts)");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}
