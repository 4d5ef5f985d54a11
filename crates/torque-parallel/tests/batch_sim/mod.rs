//! A discrete-event model of the `Batcher` in front of a sink that costs
//! `(overhead + n × per_item) × U(0.8, 1.2)`, fed by Poisson arrivals.
//!
//! It replays the batcher's policy exactly — one write at a time; a batch
//! closes when it has its target size or its first item was sent `linger`
//! ago, and never before the previous write ends; an item that waited behind
//! a write is taken at once if its linger has passed; the sizer is told each
//! batch's sends and its oldest item's wait — in `f64` seconds, so
//! microsecond costs are not rounded to tokio's millisecond timer. The
//! `BatchSizer` in it is the real one. Shared by `tests/batch_sizing.rs` and
//! `examples/batch_sim.rs`.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use torque_parallel::batch::BatchSizer;

/// SplitMix64 (Steele, Lea & Flood, OOPSLA 2014).
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The sink's cost, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct SinkModel {
    pub overhead: f64,
    pub per_item: f64,
}

impl SinkModel {
    /// Items per second with batches of `size`.
    pub fn capacity(&self, size: usize) -> f64 {
        size as f64 / (self.overhead + size as f64 * self.per_item)
    }
}

/// How batches are sized.
#[derive(Debug, Clone)]
// One per simulated run: the sizer's size does not matter here.
#[allow(clippy::large_enum_variant)]
pub enum Policy {
    Static { size: usize, linger: f64 },
    Adaptive { sizer: BatchSizer, linger: f64 },
}

/// What a run did.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// Items per second from the first arrival to the last write's end.
    pub throughput: f64,
    /// 99th percentile of send-to-written latency, seconds.
    pub p99: f64,
    pub mean_batch: f64,
}

/// Runs `items` Poisson arrivals at `rate` per second through the policy.
pub fn run(sink: SinkModel, policy: &mut Policy, rate: f64, items: usize, seed: u64) -> Outcome {
    let mut rng = SplitMix(seed);
    let mut arrivals = Vec::with_capacity(items);
    let mut t = 0.0;
    for _ in 0..items {
        t += -(1.0 - rng.next_f64()).ln() / rate;
        arrivals.push(t);
    }
    let mut noise = SplitMix(seed ^ 0x5EED);
    let mut latencies = Vec::with_capacity(items);
    let (mut next, mut sink_free, mut batches) = (0, 0.0f64, 0usize);
    let mut last_send: Option<f64> = None;
    while next < items {
        let first = arrivals[next];
        let taken_at = sink_free.max(first);
        // The batcher asks for a size once it holds the first item.
        let (target, linger) = match policy {
            Policy::Static { size, linger } => (*size, *linger),
            Policy::Adaptive { sizer, linger } => (
                sizer.next_size_after(Duration::from_secs_f64(taken_at - first)),
                *linger,
            ),
        };
        let target = target.max(1);
        let full_at = arrivals
            .get(next + target - 1)
            .copied()
            .unwrap_or(f64::INFINITY);
        let close = taken_at.max((first + linger).min(full_at));
        let mut end = next;
        while end < items && end - next < target && arrivals[end] <= close {
            end += 1;
        }
        let n = end - next;
        let write = (sink.overhead + n as f64 * sink.per_item) * (0.8 + 0.4 * noise.next_f64());
        sink_free = close + write;
        latencies.extend(arrivals[next..end].iter().map(|a| sink_free - a));
        if let Policy::Adaptive { sizer, .. } = policy {
            // The batch's sends, since the previous batch's last one.
            let last = arrivals[end - 1];
            if let Some(previous) = last_send {
                sizer.observe_arrivals(n, Duration::from_secs_f64(last - previous));
            }
            last_send = Some(last);
            sizer.observe(n, Duration::from_secs_f64(write));
        }
        next = end;
        batches += 1;
    }
    latencies.sort_by(f64::total_cmp);
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    Outcome {
        throughput: items as f64 / (sink_free - arrivals[0]),
        p99,
        mean_batch: items as f64 / batches as f64,
    }
}

/// One cell: a sink, a load, the best static (size, linger) from a grid and
/// the adaptive run.
#[derive(Debug, Clone, Copy)]
pub struct Cell {
    pub best_size: usize,
    pub best_linger: f64,
    pub best: Outcome,
    pub adaptive: Outcome,
}

/// Sizes 1..=max, each about `ratio` × the previous.
pub fn sizes(max: usize, ratio: f64) -> Vec<usize> {
    let mut sizes = vec![1];
    while *sizes.last().unwrap() < max {
        let last = *sizes.last().unwrap();
        sizes.push(((last as f64 * ratio).ceil() as usize).min(max));
    }
    sizes
}

/// The static (size, linger) points to sweep.
#[derive(Debug, Clone, Copy)]
pub struct Grid<'a> {
    pub sizes: &'a [usize],
    pub lingers: &'a [f64],
}

/// The best static grid point is the lowest p99 among the points within 1 %
/// of the highest throughput (open loop: every stable point carries the
/// offered load, so latency decides).
pub fn cell(
    sink: SinkModel,
    load: f64,
    max_size: usize,
    grid: Grid<'_>,
    adaptive: Policy,
    items: usize,
    seed: u64,
) -> Cell {
    let rate = load * sink.capacity(max_size);
    let mut runs = Vec::new();
    for &size in grid.sizes {
        for &linger in grid.lingers {
            let out = run(
                sink,
                &mut Policy::Static { size, linger },
                rate,
                items,
                seed,
            );
            runs.push((size, linger, out));
        }
    }
    let top = runs.iter().map(|r| r.2.throughput).fold(0.0, f64::max);
    let (best_size, best_linger, best) = runs
        .into_iter()
        .filter(|r| r.2.throughput >= 0.99 * top)
        .min_by(|a, b| a.2.p99.total_cmp(&b.2.p99))
        .expect("a grid point");
    let mut adaptive = adaptive;
    let adaptive = run(sink, &mut adaptive, rate, items, seed);
    Cell {
        best_size,
        best_linger,
        best,
        adaptive,
    }
}
