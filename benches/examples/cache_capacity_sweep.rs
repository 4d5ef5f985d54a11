//! Miss ratios at capacities between and around the issue's cells (1k and
//! 10k entries), unweighted, `Adaptive` (default shards) against
//! quick_cache, moka and `lru::LruCache`: a policy tuned on two capacities
//! must not fall behind at the others.
//!
//! ```text
//! cargo run --release -p torque-benches --example cache_capacity_sweep
//! ```

#[path = "../benches/cache_traces/mod.rs"]
mod cache_traces;

use std::num::NonZeroUsize;

use cache_traces::{recency_trace, scan_loop_trace, zipf_trace};
use torque_cache::LocalCache;

/// Miss ratio of `trace` through `get`, inserting on a miss.
fn misses(trace: &[u64], mut get_or_insert: impl FnMut(u64) -> bool) -> f64 {
    let missed = trace.iter().filter(|&&k| !get_or_insert(k)).count();
    missed as f64 / trace.len() as f64
}

fn main() {
    let len = 1_000_000;
    let traces = [
        ("Zipf 0.8", zipf_trace(100_000, 0.8, len, 0x7f4a_7c15)),
        ("Zipf 1.0", zipf_trace(100_000, 1.0, len, 0x9e37_79b9)),
        ("scan/loop", scan_loop_trace(len, 0x1234_5678)),
        ("recency", recency_trace(len, 0.8, 50_000, 2.0, 0x0bad_5eed)),
    ];
    println!("| trace | capacity | Adaptive | quick_cache | moka | LRU | best peer | verdict |");
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for (name, trace) in &traces {
        for capacity in [300usize, 2_000, 3_000, 5_000, 20_000, 50_000] {
            let ours: LocalCache<u64, u64> = LocalCache::new(capacity as u64);
            let a = misses(trace, |k| {
                let hit = ours.get(&k).is_some();
                if !hit {
                    ours.insert(k, k);
                }
                hit
            });
            let quick = quick_cache::sync::Cache::<u64, u64>::new(capacity);
            let q = misses(trace, |k| {
                let hit = quick.get(&k).is_some();
                if !hit {
                    quick.insert(k, k);
                }
                hit
            });
            let moka = moka::sync::Cache::<u64, u64>::new(capacity as u64);
            let m = misses(trace, |k| {
                let hit = moka.get(&k).is_some();
                if !hit {
                    moka.insert(k, k);
                    moka.run_pending_tasks();
                }
                hit
            });
            let mut lru = lru::LruCache::new(NonZeroUsize::new(capacity).expect("non-zero"));
            let l = misses(trace, |k| {
                let hit = lru.get(&k).is_some();
                if !hit {
                    lru.put(k, k);
                }
                hit
            });
            let best = q.min(m).min(l);
            let verdict = if a <= best + 0.0005 { "ok" } else { "behind" };
            println!(
                "| {name} | {capacity} | {a:.3} | {q:.3} | {m:.3} | {l:.3} | {best:.3} | {verdict} |"
            );
        }
    }
}
