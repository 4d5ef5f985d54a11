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
