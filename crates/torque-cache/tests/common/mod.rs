//! Helpers shared by the test files that `mod common;` them.
// Each test file compiles its own copy and uses only some of it.
#![allow(dead_code)]

use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Spins (yielding) until `done` holds, for at most 10 s of real time: a
/// bounded wait for a condition another thread brings about, never a sleep.
pub(crate) fn eventually(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not within 10 s: {what}"
        );
        std::thread::yield_now();
    }
}

/// Runs `op` on a thread of its own and returns its result; fails the test
/// if it does not finish within 10 s (a deadlock: user code, a drop or a
/// clock read, ran under a cache lock), and passes on its panic.
pub(crate) fn bounded<T: Send + 'static>(what: &str, op: impl FnOnce() -> T + Send + 'static) -> T {
    let (done_tx, done) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let out = op();
        done_tx.send(()).expect("test alive");
        out
    });
    match done.recv_timeout(Duration::from_secs(10)) {
        Ok(()) => worker.join().expect("finished"),
        // The sender went without sending: the operation panicked.
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Ok(out) => out,
            Err(panic) => std::panic::resume_unwind(panic),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what} deadlocked: user code ran under a cache lock")
        }
    }
}

/// Every policy, for tests that hold for all of them.
pub(crate) const POLICIES: [torque_cache::Policy; 5] = [
    torque_cache::Policy::Lru,
    torque_cache::Policy::Lfu,
    torque_cache::Policy::Fifo,
    torque_cache::Policy::Ttl,
    torque_cache::Policy::Adaptive,
];

/// Starts `get_or_load(key)` on a thread of its own, with a loader that
/// returns `value` once the returned sender sends (or is dropped); returns
/// when the loader has started, so that the load is in flight.
pub(crate) fn load_held_in_flight<K, V, S>(
    cache: &torque_cache::LocalCache<K, V, S>,
    key: K,
    value: V,
) -> (
    std::thread::JoinHandle<Result<V, std::sync::Arc<()>>>,
    mpsc::Sender<()>,
)
where
    K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: std::hash::BuildHasher + Clone + Send + Sync + 'static,
{
    let (started_tx, started) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let cache = cache.clone();
    let loader = std::thread::spawn(move || {
        cache.get_or_load(key, move || {
            started_tx.send(()).expect("test alive");
            let _ = release_rx.recv();
            Ok::<_, ()>(value)
        })
    });
    started
        .recv_timeout(Duration::from_secs(60))
        .expect("the load started");
    (loader, release)
}
