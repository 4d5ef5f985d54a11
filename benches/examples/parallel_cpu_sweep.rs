//! The `Cpu` strategy beyond the issue's cells: `map_reduce` and `collect`
//! over item counts from 10² to 10⁶ and per-item costs from about 1 ns to
//! 10 µs, against rayon (`par_iter().map().reduce()`, `.collect()`) and the
//! sequential loops, all in one run. A strategy tuned on the issue's sizes (10², 10³, 10⁴ and 10⁶
//! cheap items, 10³ items of 1 ms) must not fall behind between them.
//!
//! ```text
//! cargo run --release -p torque-benches --example parallel_cpu_sweep
//! ```
//!
//! Each cell times the three contenders in turn, `ROUNDS` times (each round
//! starting with the next contender), and prints the median times and the
//! medians of the per-round ratios (ours ÷ peer, lower is faster), so that
//! a slow stretch of a shared machine falls on all three alike. One `Processor` serves every call, as in a service: it
//! runs on the costs it has learned.

use std::hint::black_box;
use std::time::{Duration, Instant};

#[path = "../benches/common/spin.rs"]
mod spin;

use rayon::prelude::*;
use spin::{iters_for, work};
use torque_parallel::Processor;

const ROUNDS: usize = 15;
/// Each contender's calls in a round, at least this long.
const AT_LEAST: Duration = Duration::from_millis(20);
/// Calls of ours before a cell is timed, at least this long.
const WARM_UP: Duration = Duration::from_millis(50);

/// Times one call of `f`, after enough calls that the total took at least
/// `at_least` (so that tiny batches are timed over many calls).
fn time_per_call(at_least: Duration, mut f: impl FnMut() -> u64) -> f64 {
    let mut calls = 0u64;
    let start = Instant::now();
    loop {
        black_box(f());
        calls += 1;
        let elapsed = start.elapsed();
        if elapsed >= at_least {
            return elapsed.as_secs_f64() / calls as f64;
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let p = Processor::builder().build().expect("processor");
    println!(
        "| call | items | cost per item | ours | rayon | sequential | ours ÷ rayon | ours ÷ sequential |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (cost_ns, label) in [
        (0u64, "~1 ns"),
        (100, "~100 ns"),
        (1_000, "~1 µs"),
        (10_000, "~10 µs"),
    ] {
        let iters = if cost_ns == 0 { 1 } else { iters_for(cost_ns) };
        for n in [100usize, 1_000, 3_000, 10_000, 30_000, 100_000, 1_000_000] {
            // At most about 0.2 s of sequential work per call.
            if n as u64 * cost_ns.max(1) > 200_000_000 {
                continue;
            }
            let items: Vec<u64> = (0..n as u64).collect();
            let f = |x: &u64| work(iters, *x);
            // Warm-up: the processor learns the cost (the closure's cost
            // from the cell before is a few calls out of date).
            time_per_call(WARM_UP, || {
                p.map_reduce(&items, f, || 0, u64::wrapping_add).value
            });
            let [ours, ray, seq] = rounds(&mut [
                &mut || {
                    p.map_reduce(black_box(&items), f, || 0, u64::wrapping_add)
                        .value
                },
                &mut || {
                    black_box(&items)
                        .par_iter()
                        .map(f)
                        .reduce(|| 0, u64::wrapping_add)
                },
                &mut || black_box(&items).iter().map(f).fold(0, u64::wrapping_add),
            ]);
            row("map_reduce", n, label, ours, ray, seq);
            // `collect`, with a closure of its own (a closure's cost is
            // learned per closure).
            let g = |x: &u64| work(iters, *x);
            time_per_call(WARM_UP, || {
                black_box(p.collect(&items, g)).map_or(0, |v| v.len() as u64)
            });
            // The vectors are kept from the optimizer: the loops would
            // otherwise be dropped, only their lengths used.
            let [ours, ray, seq] = rounds(&mut [
                &mut || black_box(p.collect(black_box(&items), g)).map_or(0, |v| v.len() as u64),
                &mut || {
                    let v: Vec<u64> = black_box(&items).par_iter().map(g).collect();
                    black_box(v).len() as u64
                },
                &mut || {
                    let v: Vec<u64> = black_box(&items).iter().map(g).collect();
                    black_box(v).len() as u64
                },
            ]);
            row("collect", n, label, ours, ray, seq);
        }
    }
}

/// `ROUNDS` rounds of the three contenders (ours, rayon, sequential), each
/// timed for [`AT_LEAST`]; each round starts with the next one in turn.
/// Whichever runs right after the sequential loop finds rayon's workers
/// asleep: in a fixed order, that one lost 20–40 % on batches of about
/// 100 µs (ours, first measured so, or rayon, when put there instead).
fn rounds(contenders: &mut [&mut dyn FnMut() -> u64; 3]) -> [Vec<f64>; 3] {
    let mut times: [Vec<f64>; 3] = Default::default();
    for round in 0..ROUNDS {
        for k in 0..3 {
            let i = (round + k) % 3;
            times[i].push(time_per_call(AT_LEAST, &mut *contenders[i]));
        }
    }
    times
}

/// Prints one cell: the median times and the medians of the per-round
/// ratios.
fn row(call: &str, n: usize, label: &str, ours: Vec<f64>, ray: Vec<f64>, seq: Vec<f64>) {
    let vs_rayon = median(ours.iter().zip(&ray).map(|(a, b)| a / b).collect());
    let vs_seq = median(ours.iter().zip(&seq).map(|(a, b)| a / b).collect());
    println!(
        "| {call} | {n} | {label} | {:.1} µs | {:.1} µs | {:.1} µs | {vs_rayon:.2} | {vs_seq:.2} |",
        median(ours) * 1e6,
        median(ray) * 1e6,
        median(seq) * 1e6,
    );
}
