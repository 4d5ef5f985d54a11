//! Miss ratios of a weighted cache on the held-out traces of the hit-ratio
//! bench (Zipf 0.9, recency, a shifting Zipf, a twice-touched scan, the
//! scan/loop mix), `Adaptive` (default shards) against quick_cache and
//! moka with the same weigher: weights 1–100 units drawn from a hash of the
//! key (so unrelated to popularity, average about 50), capacities of about
//! 1,000, 5,000 and 20,000 average entries (50 units each).
//!
//! ```text
//! cargo run --release -p torque-benches --example cache_weighted_traces
//! ```
//!
//! An optional argument runs one trace only (`zipf0.9`, `recency`,
//! `shifting`, `twice`, `scan`). The issue's hit-ratio cells are unweighted;
//! this is where a weighted cache's window, which does not adapt, shows
//! (docs/benchmarks.md, 2026-12-06, thirteenth session).

#[path = "../benches/cache_traces/mod.rs"]
mod cache_traces;

use cache_traces::{
    double_touch_scan_trace, recency_trace, scan_loop_trace, shifting_zipf_trace, zipf_trace,
};
use torque_cache::LocalCache;

/// Miss ratio of `trace` through `f` (get, inserting on a miss).
fn misses(trace: &[u64], mut f: impl FnMut(u64) -> bool) -> f64 {
    trace.iter().filter(|&&k| !f(k)).count() as f64 / trace.len() as f64
}

/// 1–100 units from a hash of the key (splitmix64's finaliser).
fn weight(key: u64) -> u32 {
    let m = (key ^ (key >> 31)).wrapping_mul(0xd6e8_feb8_6659_fd93);
    1 + ((m ^ (m >> 32)) % 100) as u32
}

/// A named trace, built when its turn comes (five at once would hold 40 MB).
type Trace = (&'static str, fn() -> Vec<u64>);

/// quick_cache's weighter: the same weights.
#[derive(Clone)]
struct Weights;

impl quick_cache::Weighter<u64, u64> for Weights {
    fn weight(&self, key: &u64, _: &u64) -> u64 {
        u64::from(weight(*key))
    }
}

fn main() {
    let len = 1_000_000;
    let only = std::env::args().nth(1);
    let traces: [Trace; 5] = [
        ("zipf0.9", || zipf_trace(100_000, 0.9, 1_000_000, 9)),
        ("recency", || {
            recency_trace(1_000_000, 0.8, 50_000, 2.0, 0x0bad_5eed)
        }),
        ("shifting", || {
            shifting_zipf_trace(100_000, 0.9, 1_000_000, 100_000, 0x5eed_0001)
        }),
        ("twice", || {
            double_touch_scan_trace(1_000_000, 500, 0x5eed_0002)
        }),
        ("scan", || scan_loop_trace(1_000_000, 0x1234_5678)),
    ];
    println!(
        "| trace | entries (avg) | units | Adaptive | quick_cache | moka | best peer | verdict |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for (name, make) in traces {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let trace = make();
        assert_eq!(trace.len(), len);
        for entries in [1_000u64, 5_000, 20_000] {
            let units = entries * 50;
            let ours: LocalCache<u64, u64> = LocalCache::builder()
                .max_capacity(units)
                .weigher(|k: &u64, _: &u64| weight(*k))
                .build()
                .expect("valid config");
            let a = misses(&trace, |k| {
                let hit = ours.get(&k).is_some();
                if !hit {
                    ours.insert(k, k);
                }
                hit
            });
            let qc = quick_cache::sync::Cache::<u64, u64, Weights>::with_weighter(
                entries as usize,
                units,
                Weights,
            );
            let q = misses(&trace, |k| {
                let hit = qc.get(&k).is_some();
                if !hit {
                    qc.insert(k, k);
                }
                hit
            });
            let moka = moka::sync::Cache::<u64, u64>::builder()
                .max_capacity(units)
                .weigher(|k: &u64, _: &u64| weight(*k))
                .build();
            let m = misses(&trace, |k| {
                let hit = moka.get(&k).is_some();
                if !hit {
                    moka.insert(k, k);
                    moka.run_pending_tasks();
                }
                hit
            });
            let best = q.min(m);
            let verdict = if a <= best { "ok" } else { "behind" };
            println!(
                "| {name} | {entries} | {units} | {a:.3} | {q:.3} | {m:.3} | {best:.3} | {verdict} |"
            );
        }
    }
}
