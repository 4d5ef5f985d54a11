//! Heap bytes per entry of a full cache of `u64` keys and values: ours
//! (each policy) against quick_cache, moka and `lru::LruCache`, at several
//! capacities. A global allocator counts the bytes live; each cache is
//! built, filled past its capacity with distinct keys (so every structure
//! reaches its steady size: tables, arenas, sketches, ghosts, timers), and
//! measured while alive, minus what was live before it was built.
//!
//! ```text
//! cargo run --release -p torque-benches --example cache_memory
//! ```
//!
//! Deterministic for a given build and CPU count (no timing; the default
//! shard count, and so each shard's share, depends on the CPUs): the
//! figures move only with the data structures' sizes. The keys and values
//! themselves are 16 of the bytes per entry.

use std::alloc::System;
use std::num::NonZeroUsize;

use foldhash::fast::FixedState;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use torque_cache::{LocalCache, Policy};

/// The system allocator, counting what is allocated and freed.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Live heap bytes per entry held after `fill` builds and fills a cache of
/// `capacity` entries (returning it, and the entries it holds).
fn per_entry<C>(fill: impl FnOnce() -> (C, usize)) -> (f64, usize) {
    let region = Region::new(GLOBAL);
    let (cache, held) = fill();
    let change = region.change();
    // A reallocation adds its growth to `bytes_allocated` (or its
    // shrinkage to `bytes_deallocated`) already.
    let bytes = change.bytes_allocated as isize - change.bytes_deallocated as isize;
    drop(cache);
    (bytes.max(0) as f64 / held.max(1) as f64, held)
}

/// Distinct keys, three times the capacity: every structure reaches the
/// size it keeps for a full cache, evictions and ghosts included.
fn keys(capacity: usize) -> impl Iterator<Item = u64> {
    (0..capacity as u64 * 3).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn ours(capacity: usize, policy: Policy, ttl: bool) -> (LocalCache<u64, u64, FixedState>, usize) {
    // The default hasher's seed is random, and which shard a key lands in
    // (so how far each shard's arrays grow) with it: a fixed seed makes the
    // figures repeatable.
    let mut builder = LocalCache::<u64, u64>::builder()
        .hasher(FixedState::with_seed(7))
        .max_capacity(capacity as u64)
        .policy(policy);
    if ttl {
        // Long enough that nothing expires while the cache is measured.
        builder = builder.time_to_live(std::time::Duration::from_secs(3600));
    }
    let cache = builder.build().expect("valid config");
    for k in keys(capacity) {
        cache.insert(k, k);
    }
    let held = cache.len();
    (cache, held)
}

fn main() {
    println!(
        "| capacity | Adaptive | Adaptive, TTL | Lru | Fifo | Lfu | Ttl | quick_cache | moka | lru::LruCache |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for capacity in [1_000usize, 10_000, 100_000, 1_000_000] {
        let mut row = format!("| {capacity} |");
        for (policy, ttl) in [
            (Policy::Adaptive, false),
            (Policy::Adaptive, true),
            (Policy::Lru, false),
            (Policy::Fifo, false),
            (Policy::Lfu, false),
            (Policy::Ttl, false),
        ] {
            let (b, _) = per_entry(|| ours(capacity, policy, ttl));
            row += &format!(" {b:.0} |");
        }
        let (b, _) = per_entry(|| {
            let cache = quick_cache::sync::Cache::<u64, u64>::new(capacity);
            for k in keys(capacity) {
                cache.insert(k, k);
            }
            let held = cache.len();
            (cache, held)
        });
        row += &format!(" {b:.0} |");
        let (b, _) = per_entry(|| {
            let cache = moka::sync::Cache::<u64, u64>::new(capacity as u64);
            for k in keys(capacity) {
                cache.insert(k, k);
            }
            cache.run_pending_tasks();
            let held = cache.entry_count() as usize;
            (cache, held)
        });
        row += &format!(" {b:.0} |");
        let (b, _) = per_entry(|| {
            let mut cache =
                lru::LruCache::<u64, u64>::new(NonZeroUsize::new(capacity).expect("non-zero"));
            for k in keys(capacity) {
                cache.put(k, k);
            }
            let held = cache.len();
            (cache, held)
        });
        row += &format!(" {b:.0} |");
        println!("{row}");
    }
}
