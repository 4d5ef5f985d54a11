//! Deterministic simulation: the adaptive batch sizer against a sweep of
//! static batch sizes, on a sink that costs `(overhead + n × per_item) ×
//! U(0.8, 1.2)` and runs on tokio's paused clock.
//!
//! The producer is saturated (always an item waiting), so every batch fills
//! and the linger never fires; throughput then grows with the batch size and
//! the best static size is the biggest one whose mean write latency meets
//! the target. The sizer knows only the target, never the sink's costs.
//! Run with `--nocapture` to see the tables.
//!
//! The costs are the (overhead 1 ms or 10 µs, 10 µs per item) scaled
//! up 100×, because tokio's timers tick in whole milliseconds: at the real
//! scale the rounding, not the sink, would decide the latencies.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;
use torque_parallel::batch::{BatchSizer, Batcher};

/// SplitMix64 (Steele, Lea & Flood, OOPSLA 2014): a seeded, dependency-free
/// source of noise.
struct SplitMix(u64);

impl SplitMix {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug, Clone, Copy)]
struct Sink {
    overhead: Duration,
    per_item: Duration,
    target: Duration,
    max_size: usize,
}

#[derive(Debug, Clone, Copy)]
struct Run {
    items_per_sec: f64,
    mean_write: Duration,
    final_size: usize,
}

async fn run(sink: Sink, sizer: Option<BatchSizer>, fixed: usize, items: u32, seed: u64) -> Run {
    let writes: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let rng = Arc::new(Mutex::new(SplitMix(seed)));
    let sink_writes = Arc::clone(&writes);
    let write = move |batch: Vec<u32>| {
        let n = u32::try_from(batch.len()).expect("small batch");
        let noise = 0.8 + 0.4 * rng.lock().next_f64();
        let cost = (sink.overhead + sink.per_item * n).mul_f64(noise);
        sink_writes.lock().push(cost);
        async move {
            tokio::time::sleep(cost).await;
            Ok::<(), String>(())
        }
    };
    let builder = Batcher::builder()
        .max_size(fixed)
        .max_linger(Duration::from_millis(100));
    let builder = match sizer {
        Some(sizer) => builder.adaptive(sizer),
        None => builder,
    };
    let (batcher, driver) = builder.build(write).expect("valid");
    let started = Instant::now();
    let driver = tokio::spawn(driver.run());
    for i in 0..items {
        drop(batcher.send(i).await.expect("open"));
    }
    drop(batcher);
    let stats = driver.await.expect("driver");
    assert_eq!(stats.items, u64::from(items), "nothing lost");
    let elapsed = started.elapsed();
    let writes = writes.lock();
    let mean_write = writes.iter().sum::<Duration>() / u32::try_from(writes.len()).expect("few");
    Run {
        items_per_sec: f64::from(items) / elapsed.as_secs_f64(),
        mean_write,
        final_size: stats.size,
    }
}

/// Static sizes from 1 to `max`, each about 1.25× the previous.
fn grid(max: usize) -> Vec<usize> {
    let mut sizes = vec![1];
    while *sizes.last().unwrap() < max {
        let last = *sizes.last().unwrap();
        sizes.push(((last as f64 * 1.25).ceil() as usize).min(max));
    }
    sizes
}

async fn adaptive_against_static_sweep(sink: Sink) {
    let mut best: Option<(usize, Run)> = None;
    println!(
        "sink: overhead {:?}, per item {:?}, target {:?}",
        sink.overhead, sink.per_item, sink.target
    );
    for size in grid(sink.max_size) {
        // Enough batches at every size for the noise to average out.
        let items = u32::try_from((60 * size).max(2_000)).expect("small");
        let r = run(sink, None, size, items, 7).await;
        let meets = r.mean_write <= sink.target;
        if meets && best.is_none_or(|(_, b)| r.items_per_sec > b.items_per_sec) {
            best = Some((size, r));
        }
    }
    let (best_size, best) = best.expect("some static size meets the target");
    let sizer = BatchSizer::builder()
        .max_size(sink.max_size)
        .latency_target(sink.target)
        .build()
        .expect("valid");
    let adaptive = run(sink, Some(sizer), 0, 40_000, 11).await;
    let ratio = adaptive.items_per_sec / best.items_per_sec;
    println!(
        "  best static: size {best_size}, {:.0} items/s, mean write {:?}",
        best.items_per_sec, best.mean_write
    );
    println!(
        "  adaptive:    size {} at the end, {:.0} items/s ({ratio:.3}x), mean write {:?}",
        adaptive.final_size, adaptive.items_per_sec, adaptive.mean_write
    );
    assert!(
        ratio >= 0.9,
        "adaptive throughput {ratio:.3}x the best static size's"
    );
    assert!(
        adaptive.mean_write <= sink.target.mul_f64(1.05),
        "adaptive mean write {:?} over the target {:?}",
        adaptive.mean_write,
        sink.target
    );
}

#[tokio::test(start_paused = true)]
async fn adaptive_size_nears_the_best_static_size_when_overhead_dominates() {
    adaptive_against_static_sweep(Sink {
        overhead: Duration::from_millis(100),
        per_item: Duration::from_millis(1),
        target: Duration::from_millis(500),
        max_size: 1_000,
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn adaptive_size_nears_the_best_static_size_when_items_dominate() {
    adaptive_against_static_sweep(Sink {
        overhead: Duration::from_millis(1),
        per_item: Duration::from_millis(1),
        target: Duration::from_millis(200),
        max_size: 1_000,
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn adaptive_size_grows_to_the_maximum_when_the_target_never_binds() {
    adaptive_against_static_sweep(Sink {
        overhead: Duration::from_millis(100),
        per_item: Duration::from_micros(100),
        target: Duration::from_secs(1),
        max_size: 500,
    })
    .await;
}

#[path = "batch_sim/mod.rs"]
mod batch_sim;

/// The open-loop cells: overhead 1 ms or 10 µs, 10 µs per item,
/// Poisson arrivals at 0.2 / 0.5 / 0.9 of the capacity at 1000 items per
/// batch. One adaptive configuration (the sizer's defaults, linger 0) for
/// every cell, against the best static (size, linger) of a grid per cell.
#[test]
fn open_loop_adaptive_batching_matches_the_best_static_grid_point() {
    use batch_sim::{Grid, Policy, SinkModel, cell};
    let sizes = batch_sim::sizes(1_000, 1.5);
    let lingers = [0.0, 50e-6, 200e-6, 1e-3, 5e-3];
    let mut failures = Vec::new();
    for overhead in [1e-3, 10e-6] {
        let sink = SinkModel {
            overhead,
            per_item: 10e-6,
        };
        for load in [0.2, 0.5, 0.9] {
            let adaptive = Policy::Adaptive {
                sizer: BatchSizer::builder()
                    .max_size(1_000)
                    .build()
                    .expect("valid"),
                linger: 0.0,
            };
            let grid = Grid {
                sizes: &sizes,
                lingers: &lingers,
            };
            let c = cell(sink, load, 1_000, grid, adaptive, 10_000, 5);
            let (tput, p99) = (
                c.adaptive.throughput / c.best.throughput,
                c.adaptive.p99 / c.best.p99,
            );
            println!(
                "overhead {:>6.0} µs load {load}: best static size {} linger {} µs: {:.0}/s p99 {:.0} µs; \
                 adaptive {:.3}x throughput, {:.3}x p99 (mean batch {:.0})",
                overhead * 1e6,
                c.best_size,
                c.best_linger * 1e6,
                c.best.throughput,
                c.best.p99 * 1e6,
                tput,
                p99,
                c.adaptive.mean_batch,
            );
            if tput < 0.95 || p99 > 1.2 {
                failures.push(format!(
                    "overhead {overhead} load {load}: {tput:.3}x, p99 {p99:.3}x"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Regression: the 1 ms + 10 µs sink at 0.9 load on seed 1 (`batch_sim`,
/// 100 000 items) missed the p99 goal at 1.202 × the best static grid point
/// (710 items, 5 ms linger). Its long-run fit, young (the whole run is ~230
/// batches), put the per-item cost at 8.6 µs instead of 10, so the cap sat
/// at 540–650 when a backlog needed ~700 to drain. The cap now plans for the
/// fit's upper bound of the write time: 1.191 ×.
#[test]
fn regression_a_young_fit_that_underestimates_the_write_does_not_cap_too_low() {
    use batch_sim::{Policy, SinkModel, run};
    let sink = SinkModel {
        overhead: 1e-3,
        per_item: 10e-6,
    };
    let rate = 0.9 * sink.capacity(1_000);
    let best = run(
        sink,
        &mut Policy::Static {
            size: 710,
            linger: 5e-3,
        },
        rate,
        100_000,
        1,
    );
    let adaptive = run(
        sink,
        &mut Policy::Adaptive {
            sizer: BatchSizer::builder()
                .max_size(1_000)
                .build()
                .expect("valid"),
            linger: 0.0,
        },
        rate,
        100_000,
        1,
    );
    let (tput, p99) = (
        adaptive.throughput / best.throughput,
        adaptive.p99 / best.p99,
    );
    assert!(tput >= 0.95, "throughput {tput:.3}x");
    assert!(p99 <= 1.2, "p99 {p99:.3}x the best static point");
}
