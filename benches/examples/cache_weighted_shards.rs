//! Miss ratios of a weighted cache (a weigher, entries of 1 to 190 weight
//! units, 95 on average) at 1, 2, 4 and 8 shards, `Adaptive` and `Lru`, on
//! a Zipf(0.9) trace and the scan/loop mix: how much a weighted cache loses
//! to sharding when its capacity holds few entries per shard. Then `Adaptive`
//! with the default shard count against quick_cache and moka, each with the
//! same weights.
//!
//! ```text
//! cargo run --release -p torque-benches --example cache_weighted_shards
//! ```
//!
//! The default shard count ([`torque_cache::LocalCacheBuilder::shards`])
//! keeps about 128 weight units per shard, which is 128 entries for a cache
//! without a weigher but only about one entry here.

#[path = "../benches/cache_traces/mod.rs"]
mod cache_traces;

use cache_traces::{scan_loop_trace, zipf_trace};
use torque_cache::{LocalCache, Policy};

/// quick_cache's weighter: the same weights.
#[derive(Clone)]
struct Weights;

impl quick_cache::Weighter<u64, u64> for Weights {
    fn weight(&self, key: &u64, _: &u64) -> u64 {
        u64::from(weight(*key))
    }
}

/// Miss ratio of `trace` through `get`, inserting on a miss.
fn misses(trace: &[u64], mut get_or_insert: impl FnMut(u64) -> bool) -> f64 {
    let missed = trace.iter().filter(|&&k| !get_or_insert(k)).count();
    missed as f64 / trace.len() as f64
}

/// A fixed weight per key, 1 to 190.
fn weight(key: u64) -> u32 {
    ((key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as u32) * 3 + 1
}

fn main() {
    let len = 1_000_000;
    let traces = [
        ("Zipf 0.9", zipf_trace(100_000, 0.9, len, 1)),
        ("scan/loop", scan_loop_trace(len, 3)),
    ];
    println!("| policy | trace | capacity (about entries) | 1 shard | 2 | 4 | 8 |");
    println!("|---|---|---|---:|---:|---:|---:|");
    for policy in [Policy::Adaptive, Policy::Lru] {
        for capacity in [20_000u64, 200_000, 2_000_000] {
            for (name, trace) in &traces {
                let mut row = format!("| {policy:?} | {name} | {capacity} ({}) |", capacity / 95);
                for shards in [1usize, 2, 4, 8] {
                    let cache: LocalCache<u64, u64> = LocalCache::builder()
                        .max_capacity(capacity)
                        .weigher(|k: &u64, _v: &u64| weight(*k))
                        .policy(policy)
                        .shards(shards)
                        .build()
                        .expect("valid config");
                    let mut misses = 0usize;
                    for &k in trace {
                        if cache.get(&k).is_none() {
                            misses += 1;
                            cache.insert(k, k);
                        }
                    }
                    row.push_str(&format!(" {:.3} |", misses as f64 / len as f64));
                }
                println!("{row}");
            }
        }
    }
    println!();
    println!(
        "| trace | capacity (about entries) | Adaptive, default shards | quick_cache | moka |"
    );
    println!("|---|---|---:|---:|---:|");
    for capacity in [20_000u64, 200_000, 2_000_000] {
        for (name, trace) in &traces {
            let ours: LocalCache<u64, u64> = LocalCache::builder()
                .max_capacity(capacity)
                .weigher(|k: &u64, _v: &u64| weight(*k))
                .build()
                .expect("valid config");
            let a = misses(trace, |k| {
                let hit = ours.get(&k).is_some();
                if !hit {
                    ours.insert(k, k);
                }
                hit
            });
            // quick_cache asks for an estimate of the entry count.
            let quick = quick_cache::sync::Cache::<u64, u64, Weights>::with_weighter(
                (capacity / 95) as usize,
                capacity,
                Weights,
            );
            let q = misses(trace, |k| {
                let hit = quick.get(&k).is_some();
                if !hit {
                    quick.insert(k, k);
                }
                hit
            });
            let moka = moka::sync::Cache::<u64, u64>::builder()
                .max_capacity(capacity)
                .weigher(|k: &u64, _v: &u64| weight(*k))
                .build();
            let m = misses(trace, |k| {
                let hit = moka.get(&k).is_some();
                if !hit {
                    moka.insert(k, k);
                    moka.run_pending_tasks();
                }
                hit
            });
            println!(
                "| {name} | {capacity} ({}) | {a:.3} | {q:.3} | {m:.3} |",
                capacity / 95
            );
        }
    }
}
