//! torque-parallel's `Cpu` strategy against rayon and a plain sequential loop,
//! side by side in one group per case (issue #5's goals):
//! - `cheap_sum/N` (`map_reduce`), `cheap_collect/N` (`collect`) for
//!   N = 10², 10³, 10⁴: goal ours ≤ 0.5× rayon and ≤ 1.1× sequential;
//!   N = 10⁶: goal ours ≤ 1.05× rayon; `cheap_map_results/N` (`map`, one
//!   `Result` per item) against the same peers and against their
//!   like-for-like forms (`*_results`: a `catch_unwind` and a
//!   `std::thread::Result` per item), for reference;
//! - `ms_items/uniform`, `ms_items/skewed`: 10³ items of ~1 ms of calibrated
//!   spinning (skewed: the first tenth costs 5.5×, the rest 0.5×, mean 1 ms):
//!   goal ours ≤ 1.05× rayon.
//!
//! One `Processor` serves every iteration, so after criterion's warm-up it
//! runs on its learned costs, as it would in a service.

use std::hint::black_box;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rayon::prelude::*;
use torque_parallel::Processor;

/// About 1–2 ns of work that the compiler cannot fold away.
#[inline]
fn cheap(x: &u64) -> u64 {
    let x = x.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^ (x >> 29)
}

/// A deterministic spin: `iters` dependent multiply-adds.
#[inline(never)]
fn spin(iters: u64) -> u64 {
    let mut x = black_box(iters);
    for _ in 0..iters {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
    }
    x
}

/// Spin iterations per millisecond, the fastest of several tries (the others
/// were slowed by whatever else shares the machine).
fn spins_per_ms() -> u64 {
    let probe = 2_000_000;
    let best = (0..7)
        .map(|_| {
            let t = Instant::now();
            black_box(spin(probe));
            t.elapsed()
        })
        .min()
        .unwrap_or(Duration::from_millis(1));
    (probe as f64 / (best.as_secs_f64() * 1e3)) as u64
}

fn cheap_items(c: &mut Criterion) {
    let p = Processor::builder().build().expect("processor");
    for n in [100usize, 1_000, 10_000, 1_000_000] {
        let items: Vec<u64> = (0..n as u64).collect();

        let mut group = c.benchmark_group("cheap_sum");
        group.bench_with_input(BenchmarkId::new("torque", n), &items, |b, items| {
            b.iter(|| {
                p.map_reduce(black_box(items), cheap, || 0, u64::wrapping_add)
                    .value
            })
        });
        group.bench_with_input(BenchmarkId::new("rayon", n), &items, |b, items| {
            b.iter(|| {
                black_box(items)
                    .par_iter()
                    .map(cheap)
                    .reduce(|| 0, u64::wrapping_add)
            })
        });
        group.bench_with_input(BenchmarkId::new("sequential", n), &items, |b, items| {
            b.iter(|| {
                black_box(items)
                    .iter()
                    .map(cheap)
                    .fold(0, u64::wrapping_add)
            })
        });
        group.finish();

        // `collect` (all-or-nothing, a plain `Vec<u64>`) is the like-for-like
        // peer of rayon's and the loop's `collect`; `map`'s per-item results
        // are in `cheap_map_results`.
        let mut group = c.benchmark_group("cheap_collect");
        group.bench_with_input(BenchmarkId::new("torque", n), &items, |b, items| {
            b.iter(|| p.collect(black_box(items), cheap))
        });
        group.bench_with_input(BenchmarkId::new("rayon", n), &items, |b, items| {
            b.iter(|| black_box(items).par_iter().map(cheap).collect::<Vec<u64>>())
        });
        group.bench_with_input(BenchmarkId::new("sequential", n), &items, |b, items| {
            b.iter(|| black_box(items).iter().map(cheap).collect::<Vec<u64>>())
        });
        group.finish();

        // `map`: one `Result<u64, ItemError>` per item, against the same
        // peers (what isolating each item's outcome costs).
        let mut group = c.benchmark_group("cheap_map_results");
        group.bench_with_input(BenchmarkId::new("torque", n), &items, |b, items| {
            b.iter(|| p.map(black_box(items), cheap))
        });
        group.bench_with_input(BenchmarkId::new("rayon", n), &items, |b, items| {
            b.iter(|| black_box(items).par_iter().map(cheap).collect::<Vec<u64>>())
        });
        group.bench_with_input(BenchmarkId::new("sequential", n), &items, |b, items| {
            b.iter(|| black_box(items).iter().map(cheap).collect::<Vec<u64>>())
        });
        // The like-for-like peers: each item's outcome isolated the way a
        // rayon or loop user would write it, a `catch_unwind` per item and
        // a 16-byte `std::thread::Result<u64>` (with drop glue) per item.
        group.bench_with_input(BenchmarkId::new("rayon_results", n), &items, |b, items| {
            b.iter(|| {
                black_box(items)
                    .par_iter()
                    .map(|x| catch_unwind(AssertUnwindSafe(|| cheap(x))))
                    .collect::<Vec<std::thread::Result<u64>>>()
            })
        });
        group.bench_with_input(
            BenchmarkId::new("sequential_results", n),
            &items,
            |b, items| {
                b.iter(|| {
                    black_box(items)
                        .iter()
                        .map(|x| catch_unwind(AssertUnwindSafe(|| cheap(x))))
                        .collect::<Vec<std::thread::Result<u64>>>()
                })
            },
        );
        group.finish();
    }
}

fn millisecond_items(c: &mut Criterion) {
    let p = Processor::builder().build().expect("processor");
    let per_ms = spins_per_ms();
    let n = 1_000u64;
    let uniform: Vec<u64> = vec![per_ms; n as usize];
    // Mean 1 ms; the expensive tenth comes first, so a static split would
    // give one thread most of the work and work stealing has to fix it.
    let skewed: Vec<u64> = (0..n)
        .map(|i| {
            if i < n / 10 {
                per_ms * 11 / 2
            } else {
                per_ms / 2
            }
        })
        .collect();
    let mut group = c.benchmark_group("ms_items");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(5));
    for (case, items) in [("uniform", &uniform), ("skewed", &skewed)] {
        let work = |k: &u64| spin(*k);
        group.bench_with_input(BenchmarkId::new("torque", case), items, |b, items| {
            b.iter(|| p.map_reduce(items, work, || 0, u64::wrapping_add).value)
        });
        group.bench_with_input(BenchmarkId::new("rayon", case), items, |b, items| {
            b.iter(|| items.par_iter().map(work).reduce(|| 0, u64::wrapping_add))
        });
        group.bench_with_input(BenchmarkId::new("sequential", case), items, |b, items| {
            b.iter(|| items.iter().map(work).fold(0, u64::wrapping_add))
        });
    }
    group.finish();
}

criterion_group!(benches, cheap_items, millisecond_items);
criterion_main!(benches);
