//! Helpers shared by the integration tests (each test binary uses some).
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// Waits for `cond`, failing the test after `limit` rather than hanging.
pub(crate) fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "condition not reached in {limit:?}"
        );
        std::thread::yield_now();
    }
}

/// [`wait_until`] from a task: yields to the runtime between looks (so
/// the batch under test makes progress on the same thread) instead of
/// sleeping, and fails the test after `limit` of real time.
pub(crate) async fn wait_until_async(limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "condition not reached in {limit:?}"
        );
        tokio::task::yield_now().await;
    }
}

/// Keeps this thread busy for `d`: an item of a known cost. (A sleeping item
/// gives its core away, so other work runs meanwhile and a parallel run's
/// timing measures the sleep, not the work.)
pub(crate) fn spin(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// Holds the only blocking thread of `processor` with another batch's job
/// (weight 1) until the returned sender is used (or dropped).
pub(crate) fn hold_the_only_worker(
    processor: &torque_parallel::Processor,
) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = std::sync::Arc::new(std::sync::Mutex::new(release_rx));
    let other = processor.clone();
    let holder = std::thread::spawn(move || {
        other.blocking().map(vec![()], move |()| {
            started_tx.send(()).unwrap();
            let _ = release_rx.lock().unwrap().recv();
        });
    });
    started_rx.recv().unwrap();
    (release_tx, holder)
}

/// The message of every panic a test provokes on purpose with
/// [`quiet_bad_items`] in place.
pub(crate) const BAD: &str = "bad item";

/// Keeps the panic hook quiet for panics with the message [`BAD`]
/// (thousands of them in some tests, each a backtrace under
/// `RUST_BACKTRACE`); any other panic is reported as usual.
pub(crate) fn quiet_bad_items() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload_as_str() != Some(BAD) {
                default(info);
            }
        }));
    });
}
