//! Helpers shared by the test files that `mod common;` them.

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
