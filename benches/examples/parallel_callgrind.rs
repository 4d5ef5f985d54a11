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
//! Wall-clock modes, not for callgrind (under valgrind a parallel run's
//! learned cost, hence its probing, is not the native one): `rayon` and
//! `rayon-collect` (rayon's reduce and collect, to time against `torque` and
//! `torque-collect` with `time`), and `race-collect N CALLS`: alternating
//! rounds of CALLS calls of ours, rayon's and the sequential collect in one
//! process, printing the median per-call times and their ratios.

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

/// `race-collect N CALLS`: alternating rounds of CALLS calls of ours,
/// rayon's and the sequential collect in one process (same allocator
/// state, same load), the median per-call time of each over 15 rounds.
fn race(p: &Processor, items: &[u64], calls: usize) {
    use rayon::prelude::*;
    let time = |f: &dyn Fn() -> usize| {
        let start = Instant::now();
        for _ in 0..calls {
            black_box(f());
        }
        start.elapsed() / calls as u32
    };
    let (mut ours, mut theirs, mut seq) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..15 {
        // Each result goes through `black_box`, or the compiler drops the
        // sequential one's allocation and loop altogether.
        ours.push(time(&|| {
            black_box(p.collect(black_box(items), cheap)).map_or(0, |v| v.len())
        }));
        theirs.push(time(&|| {
            black_box(black_box(items).par_iter().map(cheap).collect::<Vec<u64>>()).len()
        }));
        seq.push(time(&|| {
            black_box(black_box(items).iter().map(cheap).collect::<Vec<u64>>()).len()
        }));
    }
    ours.sort();
    theirs.sort();
    seq.sort();
    println!(
        "n={} median per call: ours {:?}, rayon {:?}, sequential {:?}; ours/rayon {:.3}, ours/sequential {:.3}",
        items.len(),
        ours[7],
        theirs[7],
        seq[7],
        ours[7].as_secs_f64() / theirs[7].as_secs_f64(),
        ours[7].as_secs_f64() / seq[7].as_secs_f64()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map_or("torque", String::as_str);
    let n: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100);
    let calls: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let items: Vec<u64> = (0..n).collect();
    let p = Processor::builder().build().expect("processor");
    if mode == "race-collect" {
        race(&p, &items, calls);
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
