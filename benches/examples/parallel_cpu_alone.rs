//! One contender of the `Cpu` strategy's comparisons, alone in its process,
//! in a tight loop: no other contender's calls between its own, so rayon's
//! workers are as warm (or as asleep) as the contender itself leaves them.
//! The sweep (`parallel_cpu_sweep`) interleaves the three contenders; this
//! tells a contender's own steady state apart from that interleaving.
//!
//! ```text
//! cargo run --release -p torque-benches --example parallel_cpu_alone -- CONTENDER ITEMS NANOS
//! ```
//!
//! CONTENDER: `ours-reduce`, `rayon-reduce`, `seq-reduce` (`map_reduce` /
//! `par_iter().map().reduce()` / `iter().map().fold()`) or `ours-collect`,
//! `rayon-collect`, `seq-collect`; ITEMS items of about NANOS ns each (0:
//! one multiply-add, about 1 ns). Prints the median time per call over nine
//! 30 ms windows and, for ours, how many calls ran on rayon.

#[path = "../benches/common/spin.rs"]
mod spin;

use std::hint::black_box;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use spin::{iters_for, work};
use torque_parallel::Processor;

/// The median time per call of `f` over nine windows of 30 ms, in µs.
fn per_call(mut f: impl FnMut() -> u64) -> f64 {
    let mut times: Vec<f64> = (0..9)
        .map(|_| {
            let (mut calls, start) = (0u64, Instant::now());
            while start.elapsed() < Duration::from_millis(30) {
                black_box(f());
                calls += 1;
            }
            start.elapsed().as_secs_f64() * 1e6 / calls as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: parallel_cpu_alone CONTENDER ITEMS NANOS";
    let (Some(who), Some(Ok(n)), Some(Ok(nanos))) = (
        args.get(1),
        args.get(2).map(|s| s.parse::<usize>()),
        args.get(3).map(|s| s.parse::<u64>()),
    ) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let iters = if nanos == 0 { 1 } else { iters_for(nanos) };
    let items: Vec<u64> = (0..n as u64).collect();
    let f = |x: &u64| work(iters, *x);
    let p = Processor::builder().build().expect("processor");
    let t = match who.as_str() {
        "ours-reduce" => per_call(|| p.map_reduce(&items, f, || 0, u64::wrapping_add).value),
        "rayon-reduce" => per_call(|| items.par_iter().map(f).reduce(|| 0, u64::wrapping_add)),
        "seq-reduce" => per_call(|| items.iter().map(f).fold(0, u64::wrapping_add)),
        // The vectors are kept from the optimizer: the loops would
        // otherwise be dropped, only their lengths used.
        "ours-collect" => {
            per_call(|| black_box(p.collect(&items, f)).map_or(0, |v| v.len() as u64))
        }
        "rayon-collect" => per_call(|| {
            let v: Vec<u64> = items.par_iter().map(f).collect();
            black_box(v).len() as u64
        }),
        "seq-collect" => per_call(|| {
            let v: Vec<u64> = items.iter().map(f).collect();
            black_box(v).len() as u64
        }),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    let s = p.stats();
    if who.starts_with("ours") {
        println!(
            "{who} {n} items of ~{nanos} ns: {t:.1} µs per call ({} of {} calls on rayon)",
            s.parallel_runs,
            s.parallel_runs + s.sequential_runs
        );
    } else {
        println!("{who} {n} items of ~{nanos} ns: {t:.1} µs per call");
    }
}
