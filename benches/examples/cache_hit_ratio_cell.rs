//! One cell of the hit-ratio table, repeated: Adaptive (default shards) and
//! quick_cache on one trace and capacity, each run with freshly seeded
//! hashers, miss ratios to four decimals. For deciding whether a policy
//! change keeps a close cell, faster than the whole bench:
//!
//! ```text
//! cargo run --release -p torque-benches --example cache_hit_ratio_cell -- scan 1000 5
//! ```
//!
//! Arguments: trace (`zipf0.8`, `zipf1.0`, `scan`, or beyond the issue's
//! cells `recency`, `shifting`, `twice`), capacity, runs, and
//! optionally `lru` to compare our `Lru` (default shards) with
//! `lru::LruCache` instead.

#[path = "../benches/cache_traces/mod.rs"]
mod cache_traces;

use std::num::NonZeroUsize;

use cache_traces::{
    double_touch_scan_trace, recency_trace, scan_loop_trace, shifting_zipf_trace, zipf_trace,
};
use torque_cache::{LocalCache, Policy};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let trace = match args.get(1).map_or("scan", String::as_str) {
        "zipf0.8" => zipf_trace(100_000, 0.8, 1_000_000, 0x7f4a_7c15),
        "zipf1.0" => zipf_trace(100_000, 1.0, 1_000_000, 0x9e37_79b9),
        "recency" => recency_trace(1_000_000, 0.8, 50_000, 2.0, 0x0bad_5eed),
        "shifting" => shifting_zipf_trace(100_000, 0.9, 1_000_000, 100_000, 0x5eed_0001),
        "twice" => double_touch_scan_trace(1_000_000, 500, 0x5eed_0002),
        _ => scan_loop_trace(1_000_000, 0x1234_5678),
    };
    let capacity: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1_000);
    let runs: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(3);
    if args.get(4).is_some_and(|a| a == "lru") {
        for run in 1..=runs {
            let ours: LocalCache<u64, u64> = LocalCache::builder()
                .max_capacity(capacity as u64)
                .policy(Policy::Lru)
                .build()
                .expect("valid config");
            let mut peer = lru::LruCache::new(NonZeroUsize::new(capacity).expect("non-zero"));
            let (mut a, mut p) = (0usize, 0usize);
            for &k in &trace {
                if ours.get(&k).is_none() {
                    a += 1;
                    ours.insert(k, k);
                }
                if peer.get(&k).is_none() {
                    p += 1;
                    peer.put(k, k);
                }
            }
            let n = trace.len() as f64;
            println!(
                "run {run}: Lru {:.4}  lru::LruCache {:.4}",
                a as f64 / n,
                p as f64 / n
            );
        }
        return;
    }
    for run in 1..=runs {
        let ours: LocalCache<u64, u64> = LocalCache::new(capacity as u64);
        let quick = quick_cache::sync::Cache::<u64, u64>::new(capacity);
        let (mut a, mut q) = (0usize, 0usize);
        for &k in &trace {
            if ours.get(&k).is_none() {
                a += 1;
                ours.insert(k, k);
            }
            if quick.get(&k).is_none() {
                q += 1;
                quick.insert(k, k);
            }
        }
        let n = trace.len() as f64;
        let (a, q) = (a as f64 / n, q as f64 / n);
        let verdict = if a <= q { "ok" } else { "LOST" };
        println!("run {run}: Adaptive {a:.4}  quick_cache {q:.4}  {verdict}");
    }
}
