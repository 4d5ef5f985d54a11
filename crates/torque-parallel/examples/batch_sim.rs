//! The adaptive batch sizer against the best static (size, linger) grid
//! point, in the open-loop cells: sink cost `(overhead + n × 10 µs) ×
//! U(0.8, 1.2)` with overhead 1 ms or 10 µs, Poisson arrivals at 0.2 / 0.5 /
//! 0.9 of the capacity at 1000 items per batch. Deterministic
//! (discrete-event model in `tests/batch_sim/mod.rs`, seeded).
//!
//! `cargo run --release -p torque-parallel --example batch_sim -- --seeds 1,2,3 --items 100000`
//!
//! `--held-out` runs cells the sizer was not designed on instead — sinks of
//! overhead 1 ms, 10 µs, 100 µs, 300 µs and 2 µs (per item 10, 10, 5, 2 and
//! 10 µs) at loads 0.2 / 0.5 / 0.7 / 0.9 — and prints one line of p99 ratios
//! per cell, one per seed.
//!
//! `--adaptive-linger-us N` gives the adaptive batcher a `max_linger` of N
//! µs (default 0, the adaptive `Batcher`'s default; 5000 was its default
//! before 2026-12-05, when it inherited the fixed-size 5 ms).

#[path = "../tests/batch_sim/mod.rs"]
mod batch_sim;

use batch_sim::{Grid, Policy, SinkModel, cell, sizes};
use torque_parallel::batch::BatchSizer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut seeds = vec![1u64, 2, 3];
    let mut items = 100_000usize;
    let mut held_out = false;
    let mut adaptive_linger = 0.0;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seeds" => {
                seeds = args
                    .next()
                    .ok_or("--seeds needs a list")?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--items" => items = args.next().ok_or("--items needs a number")?.parse()?,
            "--held-out" => held_out = true,
            "--adaptive-linger-us" => {
                let us: f64 = args
                    .next()
                    .ok_or("--adaptive-linger-us needs a number")?
                    .parse()?;
                adaptive_linger = us * 1e-6;
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let grid_sizes = sizes(1_000, 1.25);
    let lingers = [0.0, 20e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3];
    if held_out {
        return run_held_out(&seeds, items, adaptive_linger, &grid_sizes, &lingers);
    }
    println!(
        "| overhead | load | seed | best static size / linger µs | best items/s | best p99 µs | adaptive items/s × | adaptive p99 × | adaptive mean batch |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for overhead in [1e-3, 10e-6] {
        let sink = SinkModel {
            overhead,
            per_item: 10e-6,
        };
        for load in [0.2, 0.5, 0.9] {
            for &seed in &seeds {
                let adaptive = Policy::Adaptive {
                    sizer: BatchSizer::builder().max_size(1_000).build()?,
                    linger: adaptive_linger,
                };
                let grid = Grid {
                    sizes: &grid_sizes,
                    lingers: &lingers,
                };
                let c = cell(sink, load, 1_000, grid, adaptive, items, seed);
                println!(
                    "| {:.0} µs | {load} | {seed} | {} / {:.0} | {:.0} | {:.0} | {:.3} | {:.3} | {:.0} |",
                    overhead * 1e6,
                    c.best_size,
                    c.best_linger * 1e6,
                    c.best.throughput,
                    c.best.p99 * 1e6,
                    c.adaptive.throughput / c.best.throughput,
                    c.adaptive.p99 / c.best.p99,
                    c.adaptive.mean_batch,
                );
            }
        }
    }
    Ok(())
}

/// One line per (sink, load): the adaptive p99 ÷ the best grid point's, per
/// seed; the lowest throughput ratio; how many runs miss a goal.
fn run_held_out(
    seeds: &[u64],
    items: usize,
    adaptive_linger: f64,
    grid_sizes: &[usize],
    lingers: &[f64],
) -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "| overhead | per item | load | adaptive p99 × (per seed) | lowest throughput × | runs missing a goal |"
    );
    println!("|---|---|---|---|---|---|");
    let (mut runs, mut misses, mut worst) = (0, 0, 0.0f64);
    for (overhead, per_item) in [
        (1e-3, 10e-6),
        (10e-6, 10e-6),
        (100e-6, 5e-6),
        (300e-6, 2e-6),
        (2e-6, 10e-6),
    ] {
        let sink = SinkModel { overhead, per_item };
        for load in [0.2, 0.5, 0.7, 0.9] {
            let (mut p99s, mut lowest, mut missed) = (Vec::new(), f64::INFINITY, 0);
            for &seed in seeds {
                let adaptive = Policy::Adaptive {
                    sizer: BatchSizer::builder().max_size(1_000).build()?,
                    linger: adaptive_linger,
                };
                let grid = Grid {
                    sizes: grid_sizes,
                    lingers,
                };
                let c = cell(sink, load, 1_000, grid, adaptive, items, seed);
                let (t, p) = (
                    c.adaptive.throughput / c.best.throughput,
                    c.adaptive.p99 / c.best.p99,
                );
                if t < 0.95 || p > 1.2 {
                    missed += 1;
                }
                lowest = lowest.min(t);
                worst = worst.max(p);
                p99s.push(format!("{p:.2}"));
            }
            runs += seeds.len();
            misses += missed;
            println!(
                "| {:.0} µs | {:.0} µs | {load} | {} | {lowest:.3} | {missed} |",
                overhead * 1e6,
                per_item * 1e6,
                p99s.join(" · "),
            );
        }
    }
    println!("\n{misses} of {runs} runs miss a goal; worst p99 ratio {worst:.2}");
    Ok(())
}
