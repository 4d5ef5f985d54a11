//! Per-call instruction counts of the `Cpu` strategy's cutoff designs on
//! tiny batches, for callgrind (repeatable on a shared machine, unlike time):
//!
//! ```text
//! cargo build --release -p torque-benches --example parallel_callgrind
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/parallel_callgrind MODE N CALLS
//! ```
//!
//! MODE: `torque` (learned cost, `map_reduce`), `prefix` (the alternative
//! design: every call runs a sequential prefix that reads the clock at
//! 1, 2, 4, ... items, no memory between calls), `sequential` (the plain
//! loop); `torque-map` / `torque-collect` / `sequential-collect` for `map`
//! and `collect` against `collect::<Vec<u64>>()`. Divide the difference in
//! instructions by CALLS.
//!
//! The `Blocking` strategy's per-item path (2 blocking threads):
//! `blocking` (`blocking().map` of N items, no budget: the feeder waits
//! only for queue room) and `blocking-weighted`
//! (`map_weighted`, weight 1 each, under a memory budget of 4, so the
//! feeder waits for room on most items). Divide the difference in
//! instructions between CALLS and 0 calls by CALLS × N; thread wake-ups
//! make these counts vary by a few per cent from run to run.
//!
//! Wall-clock modes, not for callgrind (under valgrind a parallel run's
//! learned cost, hence its probing, is not the native one): `rayon` and
//! `rayon-collect` (rayon's reduce and collect, to time against `torque` and
//! `torque-collect` with `time`), and `race-collect N CALLS` / `race-sum N CALLS`:
//! alternating rounds of CALLS calls of ours, rayon's and the sequential
//! collect (sum) in one process, printing the median per-call times and their ratios.

use std::hint::black_box;
use std::time::Instant;

use torque_parallel::Processor;

fn cheap(x: &u64) -> u64 {
    let x = x.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^ (x >> 29)
}

/// The timed-prefix-only design, as cheap as it can be: the work plus one
/// clock read per doubling (the decision itself is left out).
fn prefix_sum(items: &[u64]) -> u64 {
    let start = Instant::now();
    let (mut done, mut next, mut acc) = (0, 1, 0u64);
    while done < items.len() {
        acc = items[done..next]
            .iter()
            .map(cheap)
            .fold(acc, u64::wrapping_add);
        done = next;
        black_box(start.elapsed());
        next = (done * 2).min(items.len());
    }
    acc
}

/// `race-collect N CALLS` / `race-sum N CALLS`: alternating rounds of CALLS
/// calls of ours, rayon's and the sequential collect (or sum) in one
/// process (same allocator state, same load), the median per-call time of
/// each over 15 rounds.
fn race(p: &Processor, items: &[u64], calls: usize, sum: bool) {
    use rayon::prelude::*;
    let time = |f: &dyn Fn() -> u64| {
        let start = Instant::now();
        for _ in 0..calls {
            black_box(f());
        }
        start.elapsed() / calls as u32
    };
    // Each result goes through `black_box`, or the compiler drops the
    // sequential collect's allocation and loop altogether.
    let ours = |items: &[u64]| -> u64 {
        if sum {
            p.map_reduce(items, cheap, || 0, u64::wrapping_add).value
        } else {
            black_box(p.collect(items, cheap)).map_or(0, |v| v.len() as u64)
        }
    };
    let rayon = |items: &[u64]| -> u64 {
        if sum {
            items.par_iter().map(cheap).reduce(|| 0, u64::wrapping_add)
        } else {
            black_box(items.par_iter().map(cheap).collect::<Vec<u64>>()).len() as u64
        }
    };
    let sequential = |items: &[u64]| -> u64 {
        if sum {
            items.iter().map(cheap).fold(0, u64::wrapping_add)
        } else {
            black_box(items.iter().map(cheap).collect::<Vec<u64>>()).len() as u64
        }
    };
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..15 {
        a.push(time(&|| ours(black_box(items))));
        b.push(time(&|| rayon(black_box(items))));
        c.push(time(&|| sequential(black_box(items))));
    }
    for v in [&mut a, &mut b, &mut c] {
        v.sort();
    }
    println!(
        "{} n={} median per call: ours {:?}, rayon {:?}, sequential {:?}; ours/rayon {:.3}, ours/sequential {:.3}",
        if sum { "sum" } else { "collect" },
        items.len(),
        a[7],
        b[7],
        c[7],
        a[7].as_secs_f64() / b[7].as_secs_f64(),
        a[7].as_secs_f64() / c[7].as_secs_f64()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map_or("torque", String::as_str);
    let n: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100);
    let calls: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let items: Vec<u64> = (0..n).collect();
    let p = match mode {
        "blocking" => Processor::builder().blocking_threads(2).build(),
        "blocking-weighted" => Processor::builder()
            .blocking_threads(2)
            .memory_budget(4)
            .build(),
        _ => Processor::builder().build(),
    }
    .expect("processor");
    if mode == "race-collect" || mode == "race-sum" {
        race(&p, &items, calls, mode == "race-sum");
        return;
    }
    let mut sink = 0u64;
    for _ in 0..calls {
        let items = black_box(&items[..]);
        sink = sink.wrapping_add(match mode {
            "torque" => p.map_reduce(items, cheap, || 0, u64::wrapping_add).value,
            "prefix" => prefix_sum(items),
            "sequential" => items.iter().map(cheap).fold(0, u64::wrapping_add),
            "torque-map" => black_box(p.map(items, cheap)).len() as u64,
            "torque-collect" => black_box(p.collect(items, cheap).unwrap_or_default()).len() as u64,
            "rayon" => {
                use rayon::prelude::*;
                items.par_iter().map(cheap).reduce(|| 0, u64::wrapping_add)
            }
            "rayon-collect" => {
                use rayon::prelude::*;
                black_box(items.par_iter().map(cheap).collect::<Vec<u64>>()).len() as u64
            }
            "blocking" => black_box(p.blocking().map(items.to_vec(), |x| cheap(&x))).len() as u64,
            "blocking-weighted" => black_box(p.blocking().map_weighted(
                items.to_vec(),
                |_| 1,
                |x| cheap(&x),
            ))
            .len() as u64,
            "sequential-collect" => {
                black_box(items.iter().map(cheap).collect::<Vec<u64>>()).len() as u64
            }
            other => panic!("unknown mode {other}"),
        });
    }
    println!(
        "{mode} n={n} calls={calls} sink={sink} cost={:?} stats={:?}",
        p.learned_cost(&cheap),
        p.stats()
    );
}
