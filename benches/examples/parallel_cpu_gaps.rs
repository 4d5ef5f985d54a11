//! The `Cpu` strategy called now and then, as a service calls it per
//! request, rather than in a tight loop: batches of 100 items of about
//! 0.3–3 µs (30–300 µs of work), each call after a pause, `map_reduce`
//! against rayon (`par_iter().map().reduce()`) and the sequential fold.
//! After a pause rayon's workers are asleep, and waking them is the
//! dispatch's main cost; a tight loop (the criterion benches, the sweep)
//! never pays it.
//!
//! ```text
//! cargo run --release -p torque-benches --example parallel_cpu_gaps
//! ```
//!
//! Prints, per batch and pause, the median time of each contender's call
//! over 300 calls (the three take turns, each call after its own pause),
//! and how many of ours ran on rayon.

use std::hint::black_box;
use std::time::{Duration, Instant};

#[path = "../benches/common/spin.rs"]
mod spin;

use rayon::prelude::*;
use spin::{iters_for, work};
use torque_parallel::Processor;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    const CALLS: usize = 300;
    println!(
        "| work per batch | pause | sequential | rayon | ours | ours on rayon | ours ÷ sequential | ours ÷ rayon |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for item_ns in [300u64, 600, 1_000, 3_000] {
        let iters = iters_for(item_ns);
        let items: Vec<u64> = (0..100).collect();
        for pause_us in [0u64, 100, 1_000] {
            // A processor per cell: what it learned in one cell must not
            // decide the next.
            let p = Processor::builder().build().expect("processor");
            let f = |x: &u64| work(iters, *x);
            let pause = Duration::from_micros(pause_us);
            let timed = |g: &mut dyn FnMut() -> u64| {
                // The pause is the workload (a service's gap between
                // requests, in which rayon's workers fall asleep), not a
                // wait for anything: it is outside the timed call.
                std::thread::sleep(pause);
                let t = Instant::now();
                black_box(g());
                t.elapsed().as_secs_f64() * 1e6
            };
            let (mut seq, mut ray, mut ours) = (vec![], vec![], vec![]);
            let before = p.stats();
            for call in 0..CALLS {
                // Each call of the three takes its turn first.
                for k in 0..3 {
                    match (call + k) % 3 {
                        0 => seq.push(timed(&mut || {
                            items.iter().map(f).fold(0, u64::wrapping_add)
                        })),
                        1 => ray.push(timed(&mut || {
                            items.par_iter().map(f).reduce(|| 0, u64::wrapping_add)
                        })),
                        _ => ours.push(timed(&mut || {
                            p.map_reduce(&items, f, || 0, u64::wrapping_add).value
                        })),
                    }
                }
            }
            let parallel = p.stats().parallel_runs - before.parallel_runs;
            let (s, r, o) = (median(seq), median(ray), median(ours));
            println!(
                "| {} µs | {pause_us} µs | {s:.1} µs | {r:.1} µs | {o:.1} µs | {parallel} of {CALLS} | {:.2} | {:.2} |",
                item_ns / 10,
                o / s,
                o / r,
            );
        }
    }
}
