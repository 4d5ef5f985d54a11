//! Calibrated CPU work for the `Cpu` strategy's examples (included with
//! `#[path]` by `parallel_cpu_sweep` and `parallel_cpu_gaps`): an item that
//! makes an opaque call, as real closures do, and costs a chosen time.

use std::hint::black_box;
use std::time::{Duration, Instant};

/// `iters` dependent multiply-adds (about 0.3–1 ns each), never folded.
#[inline]
pub(crate) fn work(iters: u64, x: u64) -> u64 {
    let mut x = black_box(x);
    for _ in 0..iters {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
    }
    x
}

/// The [`work`] iterations that take about `nanos` (the fastest of several
/// tries: the others were slowed by whatever else shares the machine).
pub(crate) fn iters_for(nanos: u64) -> u64 {
    let probe = 4_000_000u64;
    let best = (0..5)
        .map(|_| {
            let t = Instant::now();
            black_box(work(probe, 1));
            t.elapsed()
        })
        .min()
        .unwrap_or(Duration::from_millis(1));
    ((probe as f64 * nanos as f64 / best.as_nanos() as f64) as u64).max(1)
}
